"""Any other kind, as kstatus decides: terminating -> progressing; observedGeneration behind ->
progressing; Reconciling=True -> progressing; Stalled=True -> failed; a Ready condition decides
(unless it was written for an older generation); otherwise ready.

An object with no status is ready once it exists (kstatus and kubedog agree): ConfigMaps, RBAC, and
the many custom resources that no controller writes a status for (ServiceMonitor, PrometheusRule,
VirtualService, IngressRoute). A custom resource whose controller does write one can ask to be waited
for with `kade.io/wait-for-status: "true"`, or declare its rule with `kade.io/ready-when`."""
from __future__ import annotations

from typing import Any

from deployer.readiness.common import (Status, condition, condition_is, describe, failed, generation_pending,
                                       progressing, ready, stale)
from deployer.resources import annotation

WAIT_FOR_STATUS = "wait-for-status"


def generic_status(obj: dict[str, Any], group: str) -> Status:
    meta = obj.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return progressing("terminating")
    status = obj.get("status")
    if not status:
        wait = annotation((meta.get("annotations") or {}), WAIT_FOR_STATUS, "false")
        if str(wait).strip().lower() == "true":
            return progressing(f"waiting for a controller to write a status (kade.io/{WAIT_FOR_STATUS})")
        return ready()
    if not isinstance(status, dict):
        return progressing("status is not an object")
    pending = generation_pending(obj, required=False)
    if pending:
        return pending
    if condition_is(obj, "Reconciling"):
        return progressing(describe(condition(obj, "Reconciling")) or "reconciling")
    if condition_is(obj, "Stalled"):
        return failed(describe(condition(obj, "Stalled")) or "stalled")
    ready_cond = condition(obj, "Ready")
    if ready_cond is not None:
        if stale(obj, ready_cond):
            return progressing(f"Ready is for generation {ready_cond.get('observedGeneration')}, waiting for "
                               f"generation {meta.get('generation')}")
        if ready_cond.get("status") == "True":
            return ready(describe(ready_cond))
        return progressing(describe(ready_cond) or "Ready is not True")
    return ready()


__all__ = ["generic_status", "WAIT_FOR_STATUS"]
