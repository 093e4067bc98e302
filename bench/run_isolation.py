"""The cost of RUN's isolation per step: a trivial RUN (`true`) through the real path of a RUN step
(snapshot.capture with the overlay mounted inside the sandbox, run_in_rootfs, the changes read back)
with and without the user namespace and with and without the private network namespace, interleaved
in one run (round i runs every variant once, in a rotating order), with the load average.

    userns+net     the default: subordinate range, idmapped mounts, its own network (veth, NAT)
    host+net       --userns host: no user namespace, its own network
    userns+shared  user namespace, the caller's network (as in a pod)
    host+shared    neither (what a RUN had before, plus seccomp, masks and a PID namespace)

Usage: sudo .venv/bin/python bench/run_isolation.py [--rounds 40] [--results bench/RESULTS.md] [--no-append]
"""
from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import benchlib  # noqa: E402  (bench/, the script's own folder)
from builder.sandbox import Isolation, run_in_rootfs  # noqa: E402
from builder.snapshot import capture  # noqa: E402
from tests.fixtures.build import base_rootfs_tar  # noqa: E402

VARIANTS = {
    "userns+net": Isolation(userns="auto", network="private"),
    "host+net": Isolation(userns="host", network="private"),
    "userns+shared": Isolation(userns="auto", network="shared"),
    "host+shared": Isolation(userns="host", network="shared"),
}


def one_run(rootfs: Path, scratch: Path, isolation: Isolation) -> float:
    started = time.monotonic()
    with capture(rootfs, scratch, in_sandbox=True) as cap:
        code = run_in_rootfs(cap.root, ["/bin/sh", "-c", "true"], overlay=cap.overlay, isolation=isolation)
        assert code == 0 and cap.changes() == []
        cap.commit()
    return time.monotonic() - started


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--results", default=str(ROOT / "bench" / "RESULTS.md"))
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (the default sandbox needs it)")
    work = Path(tempfile.mkdtemp(prefix="kade-bench-iso-"))
    rootfs = work / "rootfs"
    with tarfile.open(fileobj=io.BytesIO(base_rootfs_tar())) as tf:
        tf.extractall(rootfs)
    names = list(VARIANTS)
    times: dict[str, list[float]] = {n: [] for n in names}
    loads = []
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    for name in names:   # warm-up: first-use setup (bridge, firewall, uid range) is not per-RUN cost
        one_run(rootfs, work / "scratch", VARIANTS[name])
    for i in range(args.rounds):
        loads.append(os.getloadavg()[0])
        for name in names[i % len(names):] + names[:i % len(names)]:
            times[name].append(one_run(rootfs, work / "scratch", VARIANTS[name]))
    base = statistics.median(times["host+shared"])
    lines = [f"\n## RUN isolation cost per step — {started}\n", benchlib.machine(loads),
             f"- command: `sudo .venv/bin/python bench/run_isolation.py --rounds {args.rounds}` "
             f"(commit {benchlib.commit()})",
             "- one RUN of `true` on a busybox rootfs through snapshot.capture(in_sandbox=True) + run_in_rootfs + "
             "changes; the variants interleaved, rotating order; after one warm-up RUN each",
             "", "| variant | median s | p90 s | min s | vs host+shared s |", "|---|---:|---:|---:|---:|"]
    for name in names:
        t = sorted(times[name])
        lines.append(f"| {name} | {statistics.median(t):.3f} | {t[int(len(t) * 0.9) - 1]:.3f} | {t[0]:.3f} "
                     f"| {statistics.median(t) - base:+.3f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_append:
        with open(args.results, "a") as f:
            f.write(text)


if __name__ == "__main__":
    main()
