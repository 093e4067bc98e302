"""Which pods belong to the NEW revision of a workload (pure): logs, signals and failures come only
from those, never from the old pods a rollout is replacing."""
from __future__ import annotations

from typing import Any

from deployer.readiness.common import as_int, owned_by
from deployer.readiness.deployment import new_replicaset


def _uid(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("uid") or "")


def _label(obj: dict[str, Any], name: str) -> str | None:
    return ((obj.get("metadata") or {}).get("labels") or {}).get(name)


def new_revision_pods(group: str, kind: str, obj: dict[str, Any] | None, pods: list[dict[str, Any]],
                      replicasets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if obj is None:
        return []
    uid = _uid(obj)
    rule = (group, kind)
    if rule == ("", "Pod"):
        return [obj]
    if rule == ("apps", "Deployment"):
        rs = new_replicaset(obj, [r for r in replicasets if owned_by(r, uid)])
        return [p for p in pods if rs is not None and owned_by(p, _uid(rs))]
    if rule == ("apps", "StatefulSet"):
        revision = (obj.get("status") or {}).get("updateRevision")
        return [p for p in pods if owned_by(p, uid) and revision and _label(p, "controller-revision-hash") == revision]
    if rule == ("apps", "DaemonSet"):
        generation = str((obj.get("metadata") or {}).get("generation", ""))
        return [p for p in pods if owned_by(p, uid) and _label(p, "pod-template-generation") == generation]
    if rule in (("apps", "ReplicaSet"), ("batch", "Job"), ("", "ReplicationController")):
        return [p for p in pods if owned_by(p, uid)]
    return []


def expected_replicas(group: str, kind: str, obj: dict[str, Any] | None) -> int:
    """How many pods the failure budget scales with."""
    if obj is None:
        return 1
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    if (group, kind) == ("apps", "DaemonSet"):
        return max(as_int(status.get("desiredNumberScheduled")) or 1, 1)
    if (group, kind) == ("batch", "Job"):
        return max(as_int(spec.get("parallelism")) or 1, 1)
    return max(as_int(spec.get("replicas")) or 1, 1)


def watches_pods(group: str, kind: str) -> bool:
    return (group, kind) in {("", "Pod"), ("apps", "Deployment"), ("apps", "StatefulSet"), ("apps", "DaemonSet"),
                             ("apps", "ReplicaSet"), ("batch", "Job"), ("", "ReplicationController")}
