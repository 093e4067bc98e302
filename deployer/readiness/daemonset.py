"""DaemonSet, as kstatus decides: the controller saw the latest spec, every desired node runs a pod,
all of them updated and available (Ready for minReadySeconds). OnDelete sets are ready once observed."""
from __future__ import annotations

from typing import Any

from deployer.readiness.common import Status, count, generation_pending, progressing, ready


def daemonset_status(ds: dict[str, Any]) -> Status:
    pending = generation_pending(ds)
    if pending:
        return pending
    strategy = (ds.get("spec") or {}).get("updateStrategy") or {}
    if strategy.get("type") == "OnDelete":
        return ready("OnDelete update strategy: not tracked further")
    status = ds.get("status") or {}
    desired = count(status, "desiredNumberScheduled")
    current, updated = count(status, "currentNumberScheduled"), count(status, "updatedNumberScheduled")
    available, number_ready = count(status, "numberAvailable"), count(status, "numberReady")
    if current < desired:
        return progressing(f"{current}/{desired} nodes run a pod")
    if updated < desired:
        return progressing(f"{updated}/{desired} nodes updated")
    if number_ready < desired:
        return progressing(f"{number_ready}/{desired} pods ready")
    if available < desired:
        return progressing(f"{available}/{desired} pods available")
    return ready(f"{available}/{desired} pods available")
