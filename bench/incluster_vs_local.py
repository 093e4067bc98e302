"""In-cluster (one pod per stage, warm cache PVC) vs local backend, on the builder benchmark's
workload (bench/build_vs_buildah.py: 100 MB of assets, 300 sources, a RUN writing 20,000 files).

Scenarios, each backend with its own stages repo and a warm cache (a first build done before):
  1. one source file changed: the last COPY (and the config step) rebuild
  2. full rebuild (--no-cache): every step runs again
Also: latency from pod creation to its first step (pod "started" report -> first step record), and from
the pod's start (its process started: the pod just turned Running) to its first step, with the pod's
own timeline (imports, plan fetched, rootfs ready, context ready).

Usage: .venv/bin/python bench/incluster_vs_local.py [--runs 3] [--results bench/RESULTS.md]
Needs root and the running test cluster (tests/cluster/up).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from build_vs_buildah import change_source, make_workload  # noqa: E402
from tests.fixtures.cluster import load_cluster, state_dir  # noqa: E402
from tests.fixtures.incluster import build_builder_image, builder_namespace  # noqa: E402


def kade(env, ctx: Path, tag: str, backend: str, cache: Path, *extra: str) -> tuple[float, list[dict]]:
    cmd = [sys.executable, "-m", "kade", "build", str(ctx), "-t", tag, "--insecure-registry", env.registry,
           "--output", "json", "--cache-dir", str(cache), *extra]
    if backend == "kubernetes":
        cmd += ["--backend", "kubernetes", "--namespace", env.namespace, "--cache-pvc", env.cache_pvc,
                "--builder-image", env.image, "--kubeconfig", env.kubeconfig]
    t0 = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    elapsed = time.monotonic() - t0
    if done.returncode != 0:
        raise SystemExit(f"{backend} build failed:\n{done.stderr[-3000:]}")
    recs = []
    for line in done.stderr.splitlines():
        if line.startswith("{"):
            try:
                recs.append(json.loads(line))
            except ValueError:
                pass
    return elapsed, recs


def pod_latency(recs: list[dict]) -> list[float]:
    """Seconds from each pod's creation (CLI record) to its first step record (pod's own clock)."""
    out, started = [], {}
    for r in recs:
        msg = r.get("message", "")
        prefix = msg.split(" ", 1)[0]
        if r["kind"] == "pod" and msg.endswith("started"):
            started[prefix] = r["time"]
        elif r["kind"] == "step" and prefix in started:
            out.append(r["time"] - started.pop(prefix))
    return out


def pod_startups(recs: list[dict]) -> list[dict[str, float]]:
    """Each pod's timeline, as offsets from its process start (the CLI's `pod ... first step` record)."""
    out = []
    for r in recs:
        timeline = r.get("timeline") if r["kind"] == "pod" else None
        if timeline and "process started" in timeline:
            start = timeline["process started"]
            out.append({name: at - start for name, at in timeline.items() if name != "process started"})
    return out


def node_runtime(kubeconfig: str) -> str:
    from kubernetes import client, config

    node = client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig)).list_node().items[0]
    return node.status.node_info.container_runtime_version


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--results", type=Path)
    args = ap.parse_args()
    cluster = load_cluster(state_dir() / "cluster.json", str(state_dir() / "admin.kubeconfig"))
    image = build_builder_image(cluster.registry, "bench")
    rows: dict[str, dict[str, list[float]]] = {}
    latencies: list[float] = []
    startups: list[dict[str, float]] = []
    with builder_namespace(cluster, image) as env, tempfile.TemporaryDirectory(prefix="kade-incl-bench-") as tmp:
        ctx = Path(tmp) / "ctx"
        ctx.mkdir()
        make_workload(ctx, cluster.base_image, seed=1)
        runtime = node_runtime(env.kubeconfig)
        load = os.getloadavg()[0]
        run_id = os.urandom(3).hex()
        for backend in ("local", "kubernetes"):
            tag = f"{env.registry}/bench/incl-{backend}-{run_id}:v1"
            cache = Path(tmp) / f"cache-{backend}"
            kade(env, ctx, tag, backend, cache)  # warm up: caches and stages repo
            for i in range(args.runs):
                change_source(ctx, i + (0 if backend == "local" else args.runs))  # a new change each time
                t, recs = kade(env, ctx, tag, backend, cache)
                rows.setdefault("one source file changed", {}).setdefault(backend, []).append(t)
                latencies += pod_latency(recs)
                startups += pod_startups(recs)
                t, recs = kade(env, ctx, tag, backend, cache, "--no-cache")
                rows.setdefault("full rebuild (--no-cache)", {}).setdefault(backend, []).append(t)
                latencies += pod_latency(recs)
                startups += pod_startups(recs)
    lines = [f"## in-cluster vs local build — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", "",
             f"Machine: {platform.node()}, {os.cpu_count()} cores (shared with other sessions), test cluster "
             f"(1 node, {runtime}), 1-min load {load:.1f} at the start. Command: `.venv/bin/python bench/incluster_vs_local.py "
             f"--runs {args.runs}`. Workload of bench/build_vs_buildah.py on the cluster's Debian base; warm local cache / warm PVC; medians.", "",
             "| scenario | local (s) | kubernetes (s) | ratio |", "|---|---|---|---|"]
    for name, by in rows.items():
        lo, ku = statistics.median(by["local"]), statistics.median(by["kubernetes"])
        lines.append(f"| {name} | {lo:.1f} | {ku:.1f} | {ku / lo:.2f} |")
    if latencies:
        lines += ["", f"Pod creation -> first step: median {statistics.median(latencies):.1f} s, "
                      f"max {max(latencies):.1f} s over {len(latencies)} pods."]
    if startups:
        points = sorted({p for s in startups for p in s}, key=lambda p: statistics.median(s[p] for s in startups if p in s))
        lines += ["", f"Pod start (its process started: Running) -> first step: median "
                      f"{statistics.median(s['first step'] for s in startups):.2f} s, max "
                      f"{max(s['first step'] for s in startups):.2f} s over {len(startups)} pods. Median timeline:", "",
                  "| point | seconds after the pod started |", "|---|---|"]
        lines += [f"| {p} | {statistics.median(s[p] for s in startups if p in s):.2f} |" for p in points]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.results:
        with open(args.results, "a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
