"""The cost of SBOM, provenance and signing on the build bench (issue 17): the workload of
bench/build_vs_buildah.py (busybox base, ~100 MiB of assets, 300 sources, a RUN writing 20,000 files),
built with attestations off (`--sbom none --no-provenance`), on (SBOM + provenance, the default) and on
with signing (`--sign-key`), variants interleaved within each run.

Scenarios, per variant, each in its own repository:
  cold:       empty local cache, empty repository.
  noop:       the cold build again, same cache, SOURCE_DATE_EPOCH fixed: the same image digest, whose
              attestations are already there (goal: no extra cost).
  new-digest: nothing changed but SOURCE_DATE_EPOCH moved, empty local cache: a new image over known
              layers (the SBOM inventory comes from the stages repo, no layer is read).

Usage: python bench/supply_chain.py [--runs 3] [--results bench/RESULTS.md] [--no-append]
"""
from __future__ import annotations

import argparse
import json
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

from bench.build_vs_buildah import make_workload  # noqa: E402
from tests.fixtures.build import base_rootfs_tar, push_image  # noqa: E402
from tests.fixtures.registry import RegistryServer  # noqa: E402

VARIANTS = {"off": ["--sbom", "none", "--no-provenance"], "on": [], "signed": ["--sign-key", "{key}"]}
SCENARIOS = ("cold", "noop", "new-digest")


def build(ctx: Path, tag: str, cache: Path, extra: list[str], epoch: str, log: Path) -> tuple[float, float]:
    """(wall seconds of the build, seconds of its attestation phase: from the image's push to the build
    record's, read from the JSON progress events' timestamps)."""
    env = {**os.environ, "SOURCE_DATE_EPOCH": epoch, "KADE_SIGN_PASSWORD": "bench"}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "kade", "build", str(ctx), "--tag", tag, "--cache-dir", str(cache),
                           "--output", "json", *extra], capture_output=True, text=True, env=env)
    wall = time.monotonic() - start
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"build failed, see {log}")
    events = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    pushed = max(e["time"] for e in events if e["kind"] == "pushed")
    record = max(e["time"] for e in events if e["kind"] == "record")
    return wall, record - pushed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--results", default=str(ROOT / "bench" / "RESULTS.md"))
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()
    from registry import sigkeys

    work = Path(tempfile.mkdtemp(prefix="kade-bench-supply-"))
    server = RegistryServer(work / "registry").start()
    try:
        base = push_image(server.host, "bench/busybox", "1", base_rootfs_tar())
        key = work / "cosign.key"
        key.write_bytes(sigkeys.private_pem(sigkeys.generate(), b"bench"))
        samples: dict[tuple[str, str], list[float]] = {}
        phases: dict[tuple[str, str], list[float]] = {}
        loads: list[float] = []
        logs = work / "logs"
        logs.mkdir()
        for run in range(args.runs):
            ctx = work / f"ctx{run}"
            make_workload(ctx, base.ref, seed=run)
            order = list(VARIANTS)[run % 3:] + list(VARIANTS)[:run % 3]  # no variant always goes first
            for scenario in SCENARIOS:
                for variant in order:
                    flags = VARIANTS[variant]
                    extra = [f.format(key=key) for f in flags]
                    tag = f"{server.host}/bench/{variant}{run}:v1"
                    cache = work / f"cache-{variant}{run}"
                    if scenario == "new-digest":
                        cache = work / f"cache-{variant}{run}-fresh"
                    epoch = "1800000000" if scenario == "new-digest" else "1700000000"
                    loads.append(os.getloadavg()[0])
                    seconds, attest = build(ctx, tag, cache, extra, epoch, logs / f"{scenario}-{variant}-{run}.log")
                    samples.setdefault((scenario, variant), []).append(seconds)
                    phases.setdefault((scenario, variant), []).append(attest)
                    print(f"run {run} {scenario:10} {variant:6} {seconds:6.2f} s (push->record {attest:5.2f} s)  "
                          f"load {loads[-1]:.1f}", flush=True)
                    if scenario == "new-digest":
                        shutil.rmtree(cache, ignore_errors=True)
            shutil.rmtree(ctx, ignore_errors=True)
        report = render(samples, phases, loads, args.runs)
        print(report)
        if not args.no_append:
            with open(args.results, "a") as f:
                f.write("\n" + report)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def render(samples: dict[tuple[str, str], list[float]], phases: dict[tuple[str, str], list[float]],
           loads: list[float], runs: int) -> str:
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?")
    m = statistics.median
    lines = [f"## supply chain: cost of SBOM, provenance, signing on the build bench — "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", "",
             f"- machine: {os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}, "
             f"Python {platform.python_version()}; 1-min load average at each build min {min(loads):.1f} / "
             f"median {m(loads):.1f} / max {max(loads):.1f} (shared with other jobs)",
             f"- command: `python bench/supply_chain.py --runs {runs}` (kade commit {commit})",
             "- workload: bench/build_vs_buildah.py's (busybox base, ~100 MiB assets, 300 sources, RUN writing "
             "20,000 files); registry: Debian docker-registry on loopback (no referrers API: tag schema)",
             "- variants interleaved in every run (the first one rotates); wall = median seconds of `kade build`; "
             "phase = median seconds from the image's push to the build record's push (what attestations add, "
             "plus the record itself), from the JSON progress timestamps; share = median of phase/wall per build", "",
             "| scenario | variant | wall s | phase s | share | walls | phases |", "|---|---|---:|---:|---:|---|---|"]
    for scenario in SCENARIOS:
        for variant in VARIANTS:
            wall, phase = samples[(scenario, variant)], phases[(scenario, variant)]
            share = m([p / w for p, w in zip(phase, wall)])
            lines.append(f"| {scenario} | {variant} | {m(wall):.2f} | {m(phase):.2f} | {share:.1%} | "
                         f"{' '.join(f'{x:.2f}' for x in wall)} | {' '.join(f'{x:.2f}' for x in phase)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
