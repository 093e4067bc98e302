"""Readiness rules: pure functions from an object (and, for a Deployment, its ReplicaSets) to a
Status (ready / progressing / failed with a message). The tracker only feeds them."""
from __future__ import annotations

from typing import Any

from deployer.readiness.common import FAILED, PROGRESSING, READY, Status
from deployer.readiness.daemonset import daemonset_status
from deployer.readiness.deployment import deployment_status, new_replicaset
from deployer.readiness.generic import generic_status
from deployer.readiness.job import job_status
from deployer.readiness.pod import pod_status
from deployer.readiness.replicaset import replicaset_status
from deployer.readiness.simple import crd_status, pvc_status, service_status
from deployer.readiness.statefulset import statefulset_status

__all__ = ["Status", "READY", "PROGRESSING", "FAILED", "evaluate", "new_replicaset"]


def evaluate(obj: dict[str, Any] | None, group: str, kind: str,
             replicasets: list[dict[str, Any]] | None = None) -> Status:
    """The readiness of one object; `None` (not seen yet) is progressing."""
    if obj is None:
        return Status(PROGRESSING, "waiting for the object to appear")
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
