"""How fast `kade deploy` reaches its verdict after the decisive pod status change, on the real test
cluster, compared with `kubectl rollout status`; and how many API requests a tracked Deployment costs.

- healthy: a 1-replica Deployment with a 1 s readiness probe. The decisive change is the pod turning
  Ready, as seen by this script's own watch; kade's verdict is its JSON "ready" event; kubectl's is
  `kubectl rollout status` exiting (started right after kade applied).
- crashloop: a container that exits 1. The decisive change is the first CrashLoopBackOff in the pod
  status; kade's verdict is its "failed" event. (Helm --wait would only time out.)

Usage: KUBECONFIG=... .venv/bin/python bench/deploy_verdict.py [--rounds 3]
Needs the test cluster (tests/cluster/up) and writes nothing: paste the table into bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml
from kubernetes import client, config, watch

ROOT = Path(__file__).resolve().parents[1]


def manifest(image: str, script: str) -> str:
    return yaml.safe_dump({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "bench"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "bench"}},
                 "template": {"metadata": {"labels": {"app": "bench"}},
                              "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
                                  "name": "app", "image": image, "command": ["bash", "-c", script],
                                  "readinessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 1}}]}}}})


def watch_pods(core: client.CoreV1Api, ns: str, seen: dict[str, float], stop: threading.Event) -> None:
    w = watch.Watch()
    for event in w.stream(core.list_namespaced_pod, ns, timeout_seconds=120):
        pod = event["object"]
        now = time.time()
        for cond in pod.status.conditions or []:
            if cond.type == "Ready" and cond.status == "True":
                seen.setdefault("ready", now)
        for cs in pod.status.container_statuses or []:
            if cs.state.waiting and cs.state.waiting.reason == "CrashLoopBackOff":
                seen.setdefault("crashloop", now)
        if stop.is_set():
            w.stop()


def one_round(kind: str, image: str, kubeconfig: str, core: client.CoreV1Api) -> dict[str, float]:
    ns = f"kade-bench-{secrets.token_hex(3)}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                core.read_namespaced_service_account("default", ns)
                break
            except client.ApiException:
                time.sleep(0.2)
        seen: dict[str, float] = {}
        stop = threading.Event()
        watcher = threading.Thread(target=watch_pods, args=(core, ns, seen, stop), daemon=True)
        watcher.start()
        path = Path(f"/tmp/{ns}.yaml")
        path.write_text(manifest(image, "sleep infinity" if kind == "healthy" else "exit 1"))
        env = {**os.environ, "KUBECONFIG": kubeconfig, "CI": "1"}
        kade = subprocess.Popen([sys.executable, "-m", "kade", "deploy", "-f", str(path), "--release", "bench", "-n", ns,
                                 "--timeout", "120s", "--output", "json", "--no-atomic"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        kubectl_done: dict[str, float] = {}

        def run_kubectl() -> None:
            apps = client.AppsV1Api(core.api_client)
            while True:
                try:
                    apps.read_namespaced_deployment("bench", ns)
                    break
                except client.ApiException:
                    time.sleep(0.05)
            subprocess.run(["kubectl", "--kubeconfig", kubeconfig, "-n", ns, "rollout", "status", "deployment/bench",
                            "--timeout=120s"], capture_output=True)
            kubectl_done["t"] = time.time()

        kubectl_thread = threading.Thread(target=run_kubectl, daemon=True)
        if kind == "healthy":
            kubectl_thread.start()
        _, err = kade.communicate(timeout=200)
        events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
        verdict = next(e["time"] for e in events if e["kind"] in ("ready", "failed") and "bench" in e.get("resource", ""))
        out = {"kade_after_change": verdict - seen[("ready" if kind == "healthy" else "crashloop")]}
        if kind == "healthy":
            kubectl_thread.join(150)
            out["kubectl_after_change"] = kubectl_done["t"] - seen["ready"]
        stop.set()
        return out
    finally:
        core.delete_namespace(ns, propagation_policy="Background")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    kubeconfig = os.environ.get("KUBECONFIG", "/var/lib/kade-cluster/admin.kubeconfig")
    info = json.loads(Path("/var/lib/kade-cluster/cluster.json").read_text())
    core = client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig))
    for kind in ("healthy", "crashloop"):
        rounds = [one_round(kind, info["base_image"], kubeconfig, core) for _ in range(args.rounds)]
        for key in rounds[0]:
            values = [r[key] for r in rounds]
            print(f"{kind:<10} {key:<22} median {statistics.median(values):6.2f}s  "
                  f"min {min(values):6.2f}s  max {max(values):6.2f}s  (n={len(values)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
