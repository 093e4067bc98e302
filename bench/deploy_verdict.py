"""How fast `kade deploy` reaches its verdict after the decisive pod status change, on the real test
cluster, compared with `kubectl rollout status`; and how many API requests a tracked Deployment costs.

- healthy: a 1-replica Deployment with a 1 s readiness probe. The decisive change is the pod turning
  Ready, as seen by this script's own watch; kade's verdict is its JSON "ready" event; kubectl's is
  `kubectl rollout status` exiting (started right after kade applied).
- crashloop: a container that exits 1. Decisive changes: the first container exit and the first
  CrashLoopBackOff in the pod status (negative: kade decided before the kubelet reported it);
  kade's verdict is its "failed" event. (Helm --wait would only time out.)
kade's healthy verdict includes its settle period (--settle, default 2 s: a workload must stay ready
that long with no container exiting); the bench also runs with --settle 0 to show the raw tracking.

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
            if cs.state.terminated or (cs.last_state and cs.last_state.terminated):
                seen.setdefault("first_exit", now)
        if stop.is_set():
            w.stop()


def one_round(kind: str, image: str, kubeconfig: str, core: client.CoreV1Api, settle: str) -> dict[str, float]:
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
                                 "--timeout", "120s", "--output", "json", "--no-atomic", "--settle", settle],
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
        stdout, err = kade.communicate(timeout=200)
        api_requests = json.loads(stdout)["api_requests"]
        events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
        verdict = next(e["time"] for e in events if e["kind"] in ("ready", "failed") and "bench" in e.get("resource", ""))
        if kind == "healthy":
            out = {"kade_after_ready": verdict - seen["ready"], "api_requests_whole_deploy": api_requests}
        else:
            deadline = time.monotonic() + 40  # kade may decide before the kubelet even says CrashLoopBackOff
            while "crashloop" not in seen and time.monotonic() < deadline:
                time.sleep(0.1)
            out = {"kade_after_first_exit": verdict - seen["first_exit"],
                   "kade_after_crashloop": verdict - seen["crashloop"]}
        if kind == "healthy":
            kubectl_thread.join(150)
            out["kubectl_after_ready"] = kubectl_done["t"] - seen["ready"]
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
    for kind, settle in (("healthy", "2s"), ("healthy", "0"), ("crashloop", "2s")):
        rounds = [one_round(kind, info["base_image"], kubeconfig, core, settle) for _ in range(args.rounds)]
        for key in rounds[0]:
            values = [r[key] for r in rounds]
            unit = "" if key.startswith("api") else "s"
            print(f"{kind:<10} settle={settle:<3} {key:<26} median {statistics.median(values):6.2f}{unit}  "
                  f"min {min(values):6.2f}{unit}  max {max(values):6.2f}{unit}  (n={len(values)})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
