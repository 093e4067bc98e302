"""ReplicaSet (and ReplicationController): observed and readyReplicas >= spec.replicas."""
from __future__ import annotations

from typing import Any

from deployer.readiness.common import Status, condition, count, describe, generation_pending, progressing, ready, spec_replicas


def replicaset_status(rs: dict[str, Any]) -> Status:
    pending = generation_pending(rs)
    if pending:
        return pending
    replicas = spec_replicas(rs)
    ready_replicas = count(rs.get("status") or {}, "readyReplicas")
    if ready_replicas < replicas:
        failure = condition(rs, "ReplicaFailure")
        extra = f" ({describe(failure)})" if failure and failure.get("status") == "True" else ""
        return progressing(f"{ready_replicas}/{replicas} replicas ready{extra}")
    return ready(f"{ready_replicas}/{replicas} replicas ready")
