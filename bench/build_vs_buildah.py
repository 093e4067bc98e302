"""kade build vs buildah on one workload, side by side, same registry, same base (medians of N runs).

Workload: a 100 MB asset tree, 300 Python sources, a RUN that writes 20,000 small files.
Scenarios:
  1. cold: empty local caches, empty registry repos -> build and push
  2. nothing changed, fresh machine (empty local cache, registry populated);
     buildah: --layers --cache-from/--cache-to the registry, empty storage
  3. one source file changed, fresh machine (same buildah flags)
  4. one source file changed, warm local cache (buildah: its own storage, --layers)

Usage: .venv/bin/python bench/build_vs_buildah.py [--runs 3] [--results bench/RESULTS.md]
Needs root, buildah, busybox-static and docker-registry (as the tests do).
"""
from __future__ import annotations

import argparse
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

from tests.fixtures.build import base_rootfs_tar, push_image  # noqa: E402
from tests.fixtures.registry import RegistryServer  # noqa: E402

DOCKERFILE = """\
FROM {base}
COPY assets/ /srv/assets/
RUN mkdir -p /data && cd /data && i=0; while [ $i -lt 20000 ]; do echo $i > f$i; i=$((i+1)); done
COPY src/ /app/src/
CMD ["ls", "/app/src"]
"""


def make_workload(ctx: Path, base: str) -> None:
    assets = ctx / "assets"
    for i in range(100):
        d = assets / f"group{i % 10}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"blob{i}.bin").write_bytes(os.urandom(1 << 20))  # 100 x 1 MiB, incompressible
    src = ctx / "src" / "pkg"
    for i in range(300):
        sub = src / f"mod{i % 15}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"m{i}.py").write_text("".join(f"def f{j}(x):\n    return x * {j}\n\n" for j in range(40)))
    (ctx / "Dockerfile").write_text(DOCKERFILE.format(base=base))


def timed(cmd: list[str], env: dict | None = None) -> float:
    t = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    elapsed = time.monotonic() - t
    if out.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{out.stderr[-3000:]}")
    return elapsed


def kade(ctx: Path, tag: str, cache: Path) -> float:
    return timed([sys.executable, "-m", "kade", "build", str(ctx), "--tag", tag, "--cache-dir", str(cache)])


def buildah(store: Path, ctx: Path, tag: str, cache_repo: str | None) -> float:
    base = ["buildah", "--root", str(store / "root"), "--runroot", str(store / "run"), "--storage-driver", "vfs"]
    extra = ["--cache-from", cache_repo, "--cache-to", cache_repo] if cache_repo else []
    t = timed([*base, "bud", "--layers", "--format", "docker", "--isolation", "chroot", "--tls-verify=false",
               "-q", *extra, "-t", tag, str(ctx)])
    return t + timed([*base, "push", "--tls-verify=false", tag])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--results", default=str(ROOT / "bench" / "RESULTS.md"))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kade-bench-"))
    reg = RegistryServer(workdir=work / "registry").start()
    rows: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in ("cold", "nochange-fresh",
                                                                             "onefile-fresh", "onefile-warm")}
    try:
        base = push_image(reg.host, "bench/base", "1", base_rootfs_tar()).ref
        for run in range(args.runs):
            ctx = work / f"ctx{run}"
            make_workload(ctx, base)
            h = reg.host
            k_tag, b_tag, b_cache = f"{h}/bench/kade{run}:v1", f"{h}/bench/buildah{run}:v1", f"{h}/bench/bcache{run}"
            # 1. cold
            rows["cold"][0].append(kade(ctx, k_tag, work / f"kc{run}-a"))
            rows["cold"][1].append(buildah(work / f"bs{run}-a", ctx, b_tag, b_cache))
            # 2. nothing changed, fresh machine
            rows["nochange-fresh"][0].append(kade(ctx, k_tag, work / f"kc{run}-b"))
            rows["nochange-fresh"][1].append(buildah(work / f"bs{run}-b", ctx, b_tag, b_cache))
            # 3. one source changed, fresh machine
            (ctx / "src" / "pkg" / "mod0" / "m0.py").write_text("changed = 1\n")
            rows["onefile-fresh"][0].append(kade(ctx, k_tag, work / f"kc{run}-c"))
            rows["onefile-fresh"][1].append(buildah(work / f"bs{run}-c", ctx, b_tag, b_cache))
            # 4. one source changed again, warm local cache (the cold run's cache / storage)
            (ctx / "src" / "pkg" / "mod1" / "m1.py").write_text("changed = 2\n")
            rows["onefile-warm"][0].append(kade(ctx, k_tag, work / f"kc{run}-a"))
            rows["onefile-warm"][1].append(buildah(work / f"bs{run}-a", ctx, b_tag, None))
            for d in work.glob(f"bs{run}-*"):
                subprocess.run(["buildah", "--root", str(d / "root"), "--runroot", str(d / "run"),
                                "--storage-driver", "vfs", "rm", "--all"], capture_output=True)
    finally:
        reg.stop()
        shutil.rmtree(work, ignore_errors=True)
    lines = [f"\n## kade build vs buildah — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n",
             f"Machine: {platform.node()}, {os.cpu_count()} cores (shared with other jobs), "
             f"Python {platform.python_version()}, buildah {_buildah_version()} (vfs, chroot isolation).\n",
             f"Command: `.venv/bin/python bench/build_vs_buildah.py --runs {args.runs}`. Workload: 100 MB of "
             "assets, 300 Python sources, a RUN writing 20,000 files. Median seconds of "
             f"{args.runs} runs (build + push).\n",
             "| scenario | kade s | buildah s | kade/buildah | goal |", "|---|---|---|---|---|"]
    goals = {"cold": "<= 1.0", "nochange-fresh": "<= 0.1 and < 2 s", "onefile-fresh": "<= 0.3",
             "onefile-warm": "<= 1.0"}
    for name, (k, b) in rows.items():
        km, bm = statistics.median(k), statistics.median(b)
        lines.append(f"| {name} | {km:.2f} | {bm:.2f} | {km / bm:.2f} | {goals[name]} |")
    text = "\n".join(lines) + "\n"
    print(text)
    with open(args.results, "a") as f:
        f.write(text)


def _buildah_version() -> str:
    out = subprocess.run(["buildah", "--version"], capture_output=True, text=True)
    return out.stdout.split()[2] if out.returncode == 0 else "?"


if __name__ == "__main__":
    main()
