"""StatefulSet (Helm's rule): updated >= replicas - partition, ready == replicas, and with no partition
currentRevision == updateRevision. OnDelete sets are ready once observed (they update only by hand)."""
from __future__ import annotations

from typing import Any

from deployer.readiness.common import Status, as_int, count, generation_pending, progressing, ready, spec_replicas


def statefulset_status(sts: dict[str, Any]) -> Status:
    pending = generation_pending(sts)
    if pending:
        return pending
    spec = sts.get("spec") or {}
    strategy = spec.get("updateStrategy") or {}
    if strategy.get("type") == "OnDelete":
        return ready("OnDelete update strategy: not tracked further")
    replicas = spec_replicas(sts)
    partition = as_int((strategy.get("rollingUpdate") or {}).get("partition")) or 0
    status = sts.get("status") or {}
    updated, ready_replicas = count(status, "updatedReplicas"), count(status, "readyReplicas")
    expected = max(replicas - partition, 0)
    if updated < expected:
        return progressing(f"{updated}/{expected} replicas updated")
    if ready_replicas != replicas:
        return progressing(f"{ready_replicas}/{replicas} replicas ready")
    if partition == 0 and status.get("currentRevision") != status.get("updateRevision"):
        return progressing("waiting for the update revision to become current")
    return ready(f"{ready_replicas}/{replicas} replicas ready")
