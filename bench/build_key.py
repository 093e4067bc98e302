"""The cost of a build key on a build where nothing changed: every step is found in the stages
repository and reused. Without a key that is one HEAD per step key; with one, one GET of the step's
manifest and one ECDSA P-256 verification of its embedded signature (registry/stagesig.py).

A Dockerfile of --steps RUN steps on the busybox base is built once with the key (signed steps), then
`Build(...).run()` (plan, lookup, publish, build record: what `kade build` does after start-up)
runs --rounds times per variant, the variants interleaved, with the load average. The registry is
Debian's docker-registry on loopback.

Usage: .venv/bin/python bench/build_key.py [--steps 40] [--rounds 15] [--results bench/RESULTS.md] [--no-append]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import benchlib  # noqa: E402  (bench/, the script's own folder)
from builder.build import Build  # noqa: E402
from builder.options import BuildOptions  # noqa: E402
from registry.sigkeys import generate  # noqa: E402
from tests.fixtures.build import base_rootfs_tar, push_image  # noqa: E402
from tests.fixtures.registry import RegistryServer  # noqa: E402


def build(ctx: Path, registry: str, cache: Path, key, tag: str) -> tuple[float, int, int]:
    started = time.monotonic()
    result = Build(BuildOptions(context=ctx, tags=[f"{registry}/bench/keyed:{tag}"], cache_dir=str(cache),
                                insecure=(registry,), build_key=key, epoch=1700000000),
                   lambda *a, **k: None).run()
    return time.monotonic() - started, result.built, result.cached


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=15)
    benchlib.add_result_args(ap)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kade-bench-key-"))
    server = RegistryServer(work / "registry").start()
    try:
        base = push_image(server.host, "bench/busybox", "1", base_rootfs_tar())
        (work / "ctx").mkdir()
        (work / "ctx" / "Dockerfile").write_text(f"FROM {base.ref}\n" + "".join(
            f"RUN echo {i} > /step-{i}.txt\n" for i in range(args.steps)))
        ctx, key = work / "ctx", generate()
        _, built, _ = build(ctx, server.host, work / "cache", key, "seed")
        assert built == args.steps
        variants = {"no key (HEAD per step)": None, "build key (GET + verify per step)": key}
        names = list(variants)
        times: dict[str, list[float]] = {n: [] for n in names}
        loads = []
        started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        for i in range(args.rounds):
            loads.append(os.getloadavg()[0])
            for name in names[i % 2:] + names[:i % 2]:
                took, built, cached = build(ctx, server.host, work / "cache", variants[name], f"r{i}")
                assert built == 0 and cached == args.steps, (name, built, cached)
                times[name].append(took)
    finally:
        server.stop()
    base_median = statistics.median(times[names[0]])
    lines = [f"\n## build key: a build with nothing changed, {args.steps} steps — {started}\n", benchlib.machine(loads),
             f"- command: `.venv/bin/python bench/build_key.py --steps {args.steps} --rounds {args.rounds}` "
             f"(commit {benchlib.commit()})",
             "- `Build.run()` in process (plan, one lookup per step key, publish the final image and the build "
             "record); every step found and reused; variants interleaved; registry on loopback",
             "", "| variant | median s | min s | max s | per step vs no key ms |", "|---|---:|---:|---:|---:|"]
    for name in names:
        t = times[name]
        extra = (statistics.median(t) - base_median) / args.steps * 1000
        lines.append(f"| {name} | {statistics.median(t):.3f} | {min(t):.3f} | {max(t):.3f} | {extra:+.2f} |")
    benchlib.publish("\n".join(lines) + "\n", args)


if __name__ == "__main__":
    main()
