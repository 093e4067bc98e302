"""Record what the test cluster shows during real rollouts, as test data for the readiness rules.

    KUBECONFIG=/var/lib/kade-cluster/admin.kubeconfig .venv/bin/python tests/data/deploy/recorded/record.py IMAGE

For each scenario it applies a workload in a fresh namespace, changes it, and stores every distinct
state it observed (the object, its ReplicaSets and pods) in <scenario>.json, each labelled by an oracle
that looks only at the pods: "ready" when every pod of the current template is Ready for at least
minReadySeconds, no pod of an older template is left and the count is right. The table test
(tests/unit/test_deployer_recorded.py) asserts that the rules never call a state ready that the
oracle does not, and that the last state of each scenario is ready.
"""
from __future__ import annotations

import json
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[4]))

from deployer.kube import Kube  # noqa: E402

HERE = Path(__file__).resolve().parent
KEEP_META = ("name", "namespace", "uid", "generation", "resourceVersion", "annotations", "labels",
             "ownerReferences", "creationTimestamp", "deletionTimestamp")


def slim(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata") or {}
    out = {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"),
           "metadata": {k: meta[k] for k in KEEP_META if k in meta}, "spec": obj.get("spec"), "status": obj.get("status")}
    if out["kind"] == "Pod":
        out["spec"] = {"containers": [{"name": c["name"]} for c in (obj.get("spec") or {}).get("containers") or []]}
    else:
        template = ((obj.get("spec") or {}).get("template") or {}).get("spec") or {}
        out["spec"] = {**(obj.get("spec") or {}), "template": {"metadata": ((obj.get("spec") or {}).get("template") or {}).get("metadata"),
                                                               "spec": {"containers": [{"name": c["name"]} for c in template.get("containers") or []]}}}
    return out


def ts(value: str | None) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else 0.0


def oracle(kind: str, obj: dict[str, Any], pods: list[dict[str, Any]], replicasets: list[dict[str, Any]], now: float) -> str:
    """Ready or not, from the pods alone."""
    spec = obj.get("spec") or {}
    min_ready = int(spec.get("minReadySeconds") or 0)
    if kind == "Deployment":
        revision = (obj["metadata"].get("annotations") or {}).get("deployment.kubernetes.io/revision")
        current = {rs["metadata"]["uid"] for rs in replicasets
                   if (rs["metadata"].get("annotations") or {}).get("deployment.kubernetes.io/revision") == revision}
        mine = [p for p in pods if any(o["uid"] in current for o in p["metadata"].get("ownerReferences") or [])]
        wanted = int(spec.get("replicas", 1))
    else:  # DaemonSet: one pod per node, of the current template generation
        generation = str(obj["metadata"]["generation"])
        mine = [p for p in pods if (p["metadata"].get("labels") or {}).get("pod-template-generation") == generation]
        wanted = len({p["spec"].get("nodeName") for p in pods} or {None})
    # an old pod already terminating is on its way out: the rollout is done (kstatus, kubectl agree)
    others = [p for p in pods if p not in mine and not p["metadata"].get("deletionTimestamp")]
    if others or len(mine) != wanted or any(p["metadata"].get("deletionTimestamp") for p in mine):
        return "progressing"
    for pod in mine:
        cond = next((c for c in (pod.get("status") or {}).get("conditions") or [] if c["type"] == "Ready"), None)
        if not cond or cond["status"] != "True" or now - ts(cond.get("lastTransitionTime")) < min_ready:
            return "progressing"
    return "ready"


def record(kube: Kube, name: str, manifest: dict[str, Any], change: dict[str, Any], seconds: float) -> None:
    ns = f"kade-record-{uuid.uuid4().hex[:6]}"
    kube.request("POST", "/api/v1/namespaces", body={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    kind = manifest["kind"]
    plural = {"Deployment": "deployments", "DaemonSet": "daemonsets"}[kind]
    base = f"/apis/apps/v1/namespaces/{ns}/{plural}"
    try:
        kube.request("POST", base, body=manifest)
        states, seen, changed = [], set(), False
        start = time.time()
        while time.time() - start < seconds:
            obj = kube.request("GET", f"{base}/{manifest['metadata']['name']}")
            pods = kube.request("GET", f"/api/v1/namespaces/{ns}/pods")["items"]
            rss = kube.request("GET", f"/apis/apps/v1/namespaces/{ns}/replicasets")["items"] if kind == "Deployment" else []
            now = time.time()
            truth = oracle(kind, obj, pods, rss, now)
            fingerprint = (obj["metadata"]["resourceVersion"], tuple(sorted(p["metadata"]["resourceVersion"] for p in pods)),
                           tuple(sorted(r["metadata"]["resourceVersion"] for r in rss)), truth)
            if fingerprint not in seen:
                seen.add(fingerprint)
                states.append({"t": round(now - start, 2), "oracle": truth, "object": slim(obj),
                               "replicasets": [slim(r) for r in rss], "pods": [slim(p) for p in pods]})
            if truth == "ready" and not changed and now - start > 5:
                kube.request("PATCH", f"{base}/{manifest['metadata']['name']}", body=change,
                             content_type="application/strategic-merge-patch+json")
                changed = True
            time.sleep(0.3)
        (HERE / f"{name}.json").write_text(json.dumps({"scenario": name, "kind": kind, "states": states}, separators=(",", ":")) + "\n")
        print(f"{name}: {len(states)} states, last {states[-1]['oracle']}")
    finally:
        kube.request("DELETE", f"/api/v1/namespaces/{ns}")


def workload(kind: str, image: str, replicas: int = 2) -> dict[str, Any]:
    container = {"name": "app", "image": image, "command": ["sleep", "infinity"],
                 "readinessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 1, "timeoutSeconds": 5}}
    spec: dict[str, Any] = {"selector": {"matchLabels": {"app": "w"}}, "minReadySeconds": 3,
                            "template": {"metadata": {"labels": {"app": "w"}},
                                         "spec": {"terminationGracePeriodSeconds": 1, "containers": [container]}}}
    if kind == "Deployment":
        spec["replicas"] = replicas
    return {"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": "w"}, "spec": spec}


def main() -> None:
    image = sys.argv[1]
    kube = Kube()
    change = {"spec": {"template": {"metadata": {"annotations": {"rolled": "yes"}}}}}
    record(kube, "deployment-rollout", workload("Deployment", image), change, 45)
    record(kube, "daemonset-rollout", workload("DaemonSet", image), change, 40)


if __name__ == "__main__":
    main()
