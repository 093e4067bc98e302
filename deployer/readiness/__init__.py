"""Readiness rules: pure functions from an object (and, for a Deployment, its ReplicaSets) to a
Status (ready / progressing / failed with a message). The tracker only feeds them."""
from __future__ import annotations

from typing import Any

from deployer.readiness.common import FAILED, PROGRESSING, READY, Status, failed, progressing, ready
from deployer.readiness.expressions import ExpressionError, holds
from deployer.readiness.daemonset import daemonset_status
from deployer.readiness.deployment import deployment_status, new_replicaset
from deployer.readiness.generic import generic_status
from deployer.readiness.job import job_status
from deployer.readiness.pod import pod_status
from deployer.readiness.replicaset import replicaset_status
from deployer.readiness.simple import crd_status, pvc_status, service_status
from deployer.readiness.statefulset import statefulset_status
from deployer.resources import annotation

READY_WHEN, FAILED_WHEN = "ready-when", "failed-when"

__all__ = ["Status", "READY", "PROGRESSING", "FAILED", "evaluate", "new_replicaset"]


def evaluate(obj: dict[str, Any] | None, group: str, kind: str,
             replicasets: list[dict[str, Any]] | None = None) -> Status:
    """The readiness of one object; `None` (not seen yet) is progressing. The object's own rules
    (`kade.io/failed-when`, `kade.io/ready-when`) come first; ready-when replaces the kind's rule."""
    if obj is None:
        return Status(PROGRESSING, "waiting for the object to appear")
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    failed_when, ready_when = annotation(annotations, FAILED_WHEN), annotation(annotations, READY_WHEN)
    try:
        if failed_when and holds(failed_when, obj):
            return failed(f"FailedWhen: {failed_when}")
        if ready_when:
            if (obj.get("metadata") or {}).get("deletionTimestamp"):
                return progressing("terminating")
            return ready(f"ready-when: {ready_when}") if holds(ready_when, obj) else \
                progressing(f"waiting until {ready_when}")
    except ExpressionError as exc:  # checked when the manifest is read; a live edit may still break it
        return failed(f"BadReadinessRule: {exc}")
    return kind_status(obj, group, kind, replicasets)


def kind_status(obj: dict[str, Any], group: str, kind: str,
                replicasets: list[dict[str, Any]] | None = None) -> Status:
    rule = (group, kind)
    if rule == ("apps", "Deployment"):
        return deployment_status(obj, replicasets or [])
    if rule == ("apps", "StatefulSet"):
        return statefulset_status(obj)
    if rule == ("apps", "DaemonSet"):
        return daemonset_status(obj)
    if rule in (("apps", "ReplicaSet"), ("", "ReplicationController")):
        return replicaset_status(obj)
    if rule == ("batch", "Job"):
        return job_status(obj)
    if rule == ("", "Pod"):
        return pod_status(obj)
    if rule == ("", "PersistentVolumeClaim"):
        return pvc_status(obj)
    if rule == ("", "Service"):
        return service_status(obj)
    if rule == ("apiextensions.k8s.io", "CustomResourceDefinition"):
        return crd_status(obj)
    return generic_status(obj, group)
