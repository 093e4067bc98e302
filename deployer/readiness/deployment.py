"""Deployment: ready when the controller saw the latest spec and the NEW ReplicaSet (the one whose
revision equals the Deployment's) has enough ready pods (Helm's rule: ready >= replicas - maxUnavailable)
with every replica updated. ProgressDeadlineExceeded is a failure. A paused Deployment is ready."""
from __future__ import annotations

from typing import Any

from deployer.readiness.common import (Status, condition, describe, failed, generation_pending, owned_by,
                                       progressing, ready, scaled, spec_replicas)

REVISION = "deployment.kubernetes.io/revision"


def new_replicaset(deployment: dict[str, Any], replicasets: list[dict[str, Any]]) -> dict[str, Any] | None:
    uid = (deployment.get("metadata") or {}).get("uid", "")
    revision = ((deployment.get("metadata") or {}).get("annotations") or {}).get(REVISION)
    if revision is None:
        return None
    for rs in replicasets:
        annotations = (rs.get("metadata") or {}).get("annotations") or {}
        if owned_by(rs, uid) and annotations.get(REVISION) == revision:
            return rs
    return None


def max_unavailable(deployment: dict[str, Any], replicas: int) -> int:
    strategy = (deployment.get("spec") or {}).get("strategy") or {}
    if strategy.get("type") == "Recreate":
        return 0
    rolling = strategy.get("rollingUpdate") or {}
    return scaled(rolling.get("maxUnavailable"), replicas, round_up=False, default="25%")


def deployment_status(deployment: dict[str, Any], replicasets: list[dict[str, Any]]) -> Status:
    pending = generation_pending(deployment)
    if pending:
        return pending
    if (deployment.get("spec") or {}).get("paused"):
        return ready("paused")
    progress = condition(deployment, "Progressing")
    if progress and progress.get("reason") == "ProgressDeadlineExceeded":
        return failed(f"ProgressDeadlineExceeded: {progress.get('message', '')}".rstrip(": "))
    replicas = spec_replicas(deployment)
    status = deployment.get("status") or {}
    rs = new_replicaset(deployment, replicasets)
    if rs is None:
        return progressing("waiting for the new ReplicaSet")
    rs_ready = int((rs.get("status") or {}).get("readyReplicas") or 0)
    updated = int(status.get("updatedReplicas") or 0)
    needed = max(replicas - max_unavailable(deployment, replicas), 0)
    if updated < replicas:
        return progressing(f"{updated}/{replicas} replicas updated")
    if rs_ready < needed:
        return progressing(f"{rs_ready}/{replicas} new replicas ready")
    replica_failure = condition(deployment, "ReplicaFailure")
    if replica_failure and replica_failure.get("status") == "True" and rs_ready < replicas:
        return progressing(describe(replica_failure))
    return ready(f"{rs_ready}/{replicas} new replicas ready")
