"""DaemonSet (Helm's rule): every desired node runs the updated pod and numberReady >= desired -
maxUnavailable (percentages round up, default 1)."""
from __future__ import annotations

from typing import Any

from deployer.readiness.common import Status, generation_pending, progressing, ready, scaled


def daemonset_status(ds: dict[str, Any]) -> Status:
    pending = generation_pending(ds)
    if pending:
        return pending
    strategy = (ds.get("spec") or {}).get("updateStrategy") or {}
    if strategy.get("type") == "OnDelete":
        return ready("OnDelete update strategy: not tracked further")
    status = ds.get("status") or {}
    desired = int(status.get("desiredNumberScheduled") or 0)
    updated = int(status.get("updatedNumberScheduled") or 0)
    number_ready = int(status.get("numberReady") or 0)
    if updated < desired:
        return progressing(f"{updated}/{desired} nodes updated")
    unavailable = scaled((strategy.get("rollingUpdate") or {}).get("maxUnavailable"), desired, round_up=True, default=1)
    if number_ready < desired - unavailable:
        return progressing(f"{number_ready}/{desired} pods ready")
    return ready(f"{number_ready}/{desired} pods ready")
