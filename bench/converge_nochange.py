"""`kade converge` (and `kade build`) of examples/shop with nothing changed: time to verdict.

Setup: the example in a temp git repository, converged once (warm registry, cluster at this commit).
Then N timed runs, each on a fresh machine's view: an empty local kade cache (KADE_CACHE_DIR in a new
temp folder), a populated registry, the cluster already at this commit. Reports the median and range.

Usage:
  .venv/bin/python bench/converge_nochange.py [--runs 5] [--results bench/RESULTS.md]
Needs the test cluster (tests/cluster/up) for converge; with --build-only it times `kade build`
against the cluster registry instead (no cluster API needed).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STATE = Path(os.environ.get("KADE_CLUSTER_STATE", "/var/lib/kade-cluster"))


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=bench", "-c", "user.email=bench@kade.invalid", *args],
                   check=True, capture_output=True)


def kade(args: list[str], env: dict[str, str]) -> float:
    start = time.monotonic()
    done = subprocess.run([str(ROOT / ".venv" / "bin" / "kade"), *args], capture_output=True, text=True, env=env)
    elapsed = time.monotonic() - start
    if done.returncode != 0:
        sys.exit(f"kade {args[0]} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--build-only", action="store_true")
    ap.add_argument("--results", type=Path)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="set_values",
                    help="passed to kade converge (e.g. web.replicas=0 to time the deploy path without pods)")
    a = ap.parse_args()
    info = json.loads((STATE / "cluster.json").read_text())
    work = Path(tempfile.mkdtemp(prefix="kade-bench-converge-"))
    try:
        project = work / "shop"
        shutil.copytree(ROOT / "examples" / "shop", project)
        git(project, "init", "-q", "-b", "main")
        git(project, "add", "-A")
        git(project, "commit", "-q", "-m", "bench")
        env_name = f"bench{secrets.token_hex(2)}"
        env = {**os.environ, "KADE_BASE_IMAGE": info["base_image"], "CI": "1"}
        common = ["--dir", str(project), "--env", env_name, "--repo", f"{info['registry']}/kade-bench/shop",
                  "--insecure-registry", info["registry"]]
        verb = ["build"] if a.build_only else ["converge", "--kubeconfig", info["kubeconfig"],
                                               *[x for kv in a.set_values for x in ("--set", kv)]]
        kade(verb + common, env)  # warm: images built and pushed, cluster at this commit
        times = []
        for _ in range(a.runs):
            cache = Path(tempfile.mkdtemp(prefix="cache-", dir=work))
            times.append(kade(verb + common, {**env, "KADE_CACHE_DIR": str(cache)}))
        if not a.build_only:
            from kubernetes import client, config

            api = client.CoreV1Api(config.new_client_from_config(config_file=info["kubeconfig"]))
            api.delete_namespace(f"shop-{env_name}", propagation_policy="Background")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    what = "kade build" if a.build_only else "kade converge"
    cmd = ("bench/converge_nochange.py" + (" --build-only" if a.build_only else "") + f" --runs {a.runs}"
           + "".join(f" --set {kv}" for kv in a.set_values))
    section = "\n".join([
        "",
        f"## {what} with nothing changed (examples/shop) — {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        "",
        f"- machine: {platform.node()}, {os.cpu_count()} cores; load average at the end: {os.getloadavg()[0]:.1f}",
        f"- command: `.venv/bin/python {cmd}`",
        "- setup: the example committed in a temp git repository and converged once (registry populated"
        + ("" if a.build_only else ", cluster at this commit") + "); each timed run starts with an empty local"
        " kade cache (a fresh machine's view); registry: the test cluster's, plain HTTP",
        "",
        "| what | median s | min s | max s | runs |",
        "|---|---|---|---|---|",
        f"| `{what}` (3 images: plan + 1 HEAD each" + ("" if a.build_only else "; apply, track, record") +
        f") | {statistics.median(times):.2f} | {min(times):.2f} | {max(times):.2f} | {a.runs} |",
        "",
    ])
    print(section)
    if a.results:
        with a.results.open("a") as f:
            f.write(section)


if __name__ == "__main__":
    main()
