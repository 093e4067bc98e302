"""Any other kind, kstatus-style: terminating -> progressing; observedGeneration behind -> progressing;
Reconciling=True -> progressing; Stalled=True -> failed; Ready condition decides; otherwise ready.

Built-in kinds without a status (ConfigMap, Secret, RBAC, ...) are ready once they exist. For custom
resources an empty status means no controller has looked yet, so they are NEVER ready before one
writes a status (Helm 4's kstatus calls them ready at once, helm #32066)."""
from __future__ import annotations

from typing import Any

from deployer.readiness.common import (Status, condition, condition_is, describe, failed, generation_pending,
                                       progressing, ready)

BUILTIN_GROUPS = frozenset({
    "", "apps", "batch", "autoscaling", "policy", "rbac.authorization.k8s.io", "networking.k8s.io",
    "storage.k8s.io", "scheduling.k8s.io", "coordination.k8s.io", "discovery.k8s.io", "node.k8s.io",
    "admissionregistration.k8s.io", "apiextensions.k8s.io", "apiregistration.k8s.io",
    "certificates.k8s.io", "events.k8s.io", "flowcontrol.apiserver.k8s.io", "resource.k8s.io",
    "storagemigration.k8s.io", "internal.apiserver.k8s.io", "authentication.k8s.io", "authorization.k8s.io",
})


def generic_status(obj: dict[str, Any], group: str) -> Status:
    meta = obj.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return progressing("terminating")
    status = obj.get("status")
    if not status:
        if group in BUILTIN_GROUPS:
            return ready()
        return progressing("waiting for a controller to write a status")
    if not isinstance(status, dict):
        return progressing("status is not an object")
    generation = meta.get("generation")
    observed = status.get("observedGeneration")
    if observed is not None and generation is not None and int(observed) < int(generation):
        return progressing(f"waiting for the controller to observe generation {generation}")
    if condition_is(obj, "Reconciling"):
        return progressing(describe(condition(obj, "Reconciling")) or "reconciling")
    if condition_is(obj, "Stalled"):
        return failed(describe(condition(obj, "Stalled")) or "stalled")
    ready_cond = condition(obj, "Ready")
    if ready_cond is not None:
        if ready_cond.get("status") == "True":
            return ready(describe(ready_cond))
        return progressing(describe(ready_cond) or "Ready is not True")
    return ready()


__all__ = ["generic_status", "generation_pending", "BUILTIN_GROUPS"]
