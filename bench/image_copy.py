#!/usr/bin/env python3
"""Benchmark: `kade image copy` against `skopeo copy` on the same ~200 MB image (4 tar+gzip layers,
half random, half repetitive data), on a local `docker-registry`, in one run:

  copy  registry repo -> another repo of the same registry
  inspect  the image's manifest and config (skopeo inspect --config: the same two fetches)
  pull  registry -> a local OCI layout
  push  OCI layout -> a fresh registry (every blob uploaded)
  startup: `copy --help` of each tool, the fixed cost inside every figure above

Each operation runs --runs times per tool (fresh targets each time); the median wall time and the
largest peak RSS (from /usr/bin/time) are reported, and appended to bench/RESULTS.md.

    .venv/bin/python bench/image_copy.py [--runs 3] [--size-mb 200] [--no-append]
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import benchlib  # noqa: E402  (bench/, the script's own folder)
from tests.fixtures.registry import RegistryServer, write_random_image  # noqa: E402

MiB = 1 << 20


def run(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of a command, measured by /usr/bin/time (a child's
    ru_maxrss seen from this process would start at this process's own high-water mark, which
    Linux carries across fork and exec)."""
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "KADE_BENCH_RSS %M", *cmd], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
    rss = [int(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("KADE_BENCH_RSS ")]
    return elapsed, rss[-1]


def kade_cmd(src: str, dst: str) -> list[str]:
    return [sys.executable, "-m", "kade", "image", "copy", src, dst]


def skopeo_cmd(src: str, dst: str) -> list[str]:
    return ["skopeo", "copy", "--quiet", "--src-tls-verify=false", "--dest-tls-verify=false", src, dst]


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {model or platform.processor()}, {platform.system()} {platform.release()}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--size-mb", type=int, default=200, help="approximate compressed image size")
    ap.add_argument("--no-append", action="store_true", help="do not append to bench/RESULTS.md")
    args = ap.parse_args()
    if not shutil.which("skopeo") or not os.path.exists("/usr/bin/time"):
        raise SystemExit("needs skopeo and /usr/bin/time (apt-get install skopeo time)")

    benchlib.compile_bytecode(ROOT)   # as installed: no run compiles the sources as part of its start-up
    work = Path(tempfile.mkdtemp(prefix="kade-bench-"))
    servers: list[RegistryServer] = []
    try:
        registry = RegistryServer(work / "registry").start()
        servers.append(registry)
        raw = args.size_mb * 2 * MiB  # half of it compresses to almost nothing
        sizes = [raw * 4 // 10, raw * 3 // 10, raw * 2 // 10, raw // 10]
        t0 = time.perf_counter()
        write_random_image(work / "layout", "v1", sizes, seed=42)
        blob_bytes = sum(p.stat().st_size for p in (work / "layout" / "blobs" / "sha256").iterdir())
        print(f"image: {blob_bytes / MiB:.0f} MiB in 4 layers, made in {time.perf_counter() - t0:.1f}s", flush=True)
        src = f"docker://{registry.host}/bench/src:v1"
        run(skopeo_cmd(f"oci:{work / 'layout'}:v1", src))
        src_ref = f"{registry.host}/bench/src:v1"

        results: dict[tuple[str, str], list[tuple[float, int]]] = {}
        for i in range(args.runs):
            for tool in ("skopeo", "kade"):
                # copy between two repositories of the same registry
                if tool == "kade":
                    cmd = kade_cmd(src_ref, f"{registry.host}/bench/copy-kade-{i}:v1")
                else:
                    cmd = skopeo_cmd(src, f"docker://{registry.host}/bench/copy-skopeo-{i}:v1")
                results.setdefault(("copy", tool), []).append(run(cmd))
                cmd = ([sys.executable, "-m", "kade", "image", "inspect", src_ref] if tool == "kade"
                       else ["skopeo", "inspect", "--config", "--tls-verify=false", src])
                results.setdefault(("inspect", tool), []).append(run(cmd))
                # pull into a fresh OCI layout
                out = work / f"pull-{tool}-{i}"
                cmd = kade_cmd(src_ref, f"oci:{out}:v1") if tool == "kade" else skopeo_cmd(src, f"oci:{out}:v1")
                results.setdefault(("pull", tool), []).append(run(cmd))
                shutil.rmtree(out)
                # push every blob to a fresh registry
                target = RegistryServer(work / f"push-{tool}-{i}").start()
                dst = f"{target.host}/bench/pushed:v1"
                cmd = (kade_cmd(f"oci:{work / 'layout'}:v1", dst) if tool == "kade"
                       else skopeo_cmd(f"oci:{work / 'layout'}:v1", f"docker://{dst}"))
                try:
                    results.setdefault(("push", tool), []).append(run(cmd))
                finally:
                    target.stop()
                    shutil.rmtree(target.workdir, ignore_errors=True)
            print(f"run {i + 1}/{args.runs} done", flush=True)

        # The fixed cost of starting each tool (interpreter and imports for kade), for reading the
        # "copy" and "inspect" rows, which move no data (every blob is mounted; two small fetches).
        for tool, cmd in (("kade", [sys.executable, "-m", "kade", "image", "copy", "--help"]),
                          ("skopeo", ["skopeo", "copy", "--help"])):
            for _ in range(args.runs):
                results.setdefault(("startup (--help)", tool), []).append(run(cmd))

        lines = ["| operation | skopeo s | kade s | ratio kade/skopeo | skopeo peak RSS MiB | kade peak RSS MiB |",
                 "|---|---|---|---|---|---|"]
        for op in ("copy", "inspect", "pull", "push", "startup (--help)"):
            sk = results[(op, "skopeo")]
            kd = results[(op, "kade")]
            st, kt = statistics.median(t for t, _ in sk), statistics.median(t for t, _ in kd)
            lines.append(f"| {op} | {st:.2f} | {kt:.2f} | {kt / st:.2f} | {max(r for _, r in sk) / 1024:.0f} | "
                         f"{max(r for _, r in kd) / 1024:.0f} |")
        skopeo_version = subprocess.run(["skopeo", "--version"], capture_output=True, text=True).stdout.strip()
        registry_version = subprocess.run([shutil.which("docker-registry") or "docker-registry", "--version"],
                                          capture_output=True, text=True).stdout.strip()
        header = [
            f"## image copy — {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
            "",
            f"- machine: {machine()}",
            f"- command: `.venv/bin/python bench/image_copy.py --runs {args.runs} --size-mb {args.size_mb}`",
            f"- image: {blob_bytes / MiB:.0f} MiB of blobs, 4 tar+gzip layers; {skopeo_version}; {registry_version}; "
            f"registry on loopback, plain HTTP",
            f"- median of {args.runs} runs; peak RSS is the largest of the runs",
            "",
        ]
        report = "\n".join(header + lines) + "\n"
        print(report)
        if not args.no_append:
            results_md = ROOT / "bench" / "RESULTS.md"
            if not results_md.exists():
                results_md.write_text("# Benchmark results\n\nFigures are appended by the scripts in bench/.\n\n")
            with results_md.open("a") as f:
                f.write(report + "\n")
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
