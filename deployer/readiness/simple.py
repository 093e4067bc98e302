"""Kinds whose readiness is one field: PersistentVolumeClaim (Bound), Service (LoadBalancer ingress),
CustomResourceDefinition (Established)."""
from __future__ import annotations

from typing import Any

from deployer.readiness.common import Status, condition, condition_is, describe, failed, progressing, ready


def pvc_status(pvc: dict[str, Any]) -> Status:
    phase = (pvc.get("status") or {}).get("phase")
    if phase == "Bound":
        return ready("bound")
    if phase == "Lost":
        return failed("claim lost its volume")
    return progressing(f"phase {phase or 'Pending'}")


def service_status(svc: dict[str, Any]) -> Status:
    spec = svc.get("spec") or {}
    if spec.get("type") != "LoadBalancer":
        return ready()
    ingress = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    if ingress:
        return ready("load balancer ready")
    if spec.get("externalIPs"):
        return ready(f"external IPs {', '.join(map(str, spec['externalIPs']))}")
    # as Helm's --wait (its ready checker waits for the ingress address too): a cluster without a load balancer
    # controller (kind, bare metal without MetalLB) never gives one, so the message says what to do
    return progressing("waiting for a load balancer address (none comes where no load balancer controller runs: "
                       "annotate the Service kade.io/track-termination-mode: NonBlocking not to wait for it)")


def crd_status(crd: dict[str, Any]) -> Status:
    names = condition(crd, "NamesAccepted")
    if names and names.get("status") == "False":
        return failed(describe(names) or "names not accepted")
    if condition_is(crd, "Established"):
        return ready("established")
    return progressing("waiting until Established")
