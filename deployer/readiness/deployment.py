"""Deployment, as kstatus decides (stricter than Helm's ready >= replicas - maxUnavailable): the
controller saw the latest spec, every replica is updated, no old pod is left (status.replicas is not
above spec.replicas), and every replica is available (Ready for minReadySeconds). The NEW ReplicaSet
(the one whose revision equals the Deployment's) must exist: the tracker takes its pods as the new
revision's. ProgressDeadlineExceeded is a failure. A paused Deployment is ready."""
from __future__ import annotations

from typing import Any

from deployer.readiness.common import (Status, condition, count, describe, failed, generation_pending, owned_by,
                                       progressing, ready, spec_replicas)

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
    if replicas > 0 and new_replicaset(deployment, replicasets) is None:
        return progressing("waiting for the new ReplicaSet")
    updated, total = count(status, "updatedReplicas"), count(status, "replicas")
    available, ready_now = count(status, "availableReplicas"), count(status, "readyReplicas")
    if updated < replicas:
        return progressing(f"{updated}/{replicas} replicas updated")
    if total > replicas:
        return progressing(f"{total - replicas} old replica(s) still running")
    if ready_now < replicas:
        failure = condition(deployment, "ReplicaFailure")
        extra = f" ({describe(failure)})" if failure and failure.get("status") == "True" else ""
        return progressing(f"{ready_now}/{replicas} new replicas ready{extra}")
    if available < replicas:
        seconds = (deployment.get("spec") or {}).get("minReadySeconds")
        return progressing(f"{available}/{replicas} new replicas available"
                           + (f" (ready for minReadySeconds {seconds})" if seconds else ""))
    return ready(f"{available}/{replicas} new replicas available")
