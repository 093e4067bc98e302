"""Why a builder pod does not start, from what the cluster says about it (pure, table-tested).

A pending pod is judged from its status (container waiting reasons, the PodScheduled condition), the
events of the pod and of the cache PVC, and the PVC's phase, as `kubectl describe` shows them. Some
reasons never go away by waiting (a cache PVC no volume can bind, a missing Secret, an image that
can't be pulled): the build fails at once, saying what to do. Others may (not enough CPU right now):
the build says so within seconds and keeps waiting, and its timeout error repeats the reason.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FATAL_WAITING = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError",
                 "CreateContainerError"}


@dataclass(frozen=True)
class StartProblem:
    message: str
    hint: str
    fatal: bool   # waiting won't help


PVC_FAILURES = {"FailedBinding", "ProvisioningFailed"}   # the PV controller's and provisioners' reasons


def _events(events: list[dict[str, Any]], kind: str, name: str) -> list[dict[str, Any]]:
    """Events about `kind/name`, newest last."""
    found = [e for e in events if (e.get("involvedObject") or {}).get("kind") == kind
             and (e.get("involvedObject") or {}).get("name") == name]
    return sorted(found, key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))


def _pvc_problem(pvc_name: str, namespace: str, pvc: dict[str, Any] | None,
                 events: list[dict[str, Any]]) -> StartProblem | None:
    if pvc is None:
        return StartProblem(f"its cache PVC {namespace}/{pvc_name} does not exist",
                            "create it (kubectl apply -k k8s-manifests/builder, or a tenant overlay) or pass "
                            "--cache-pvc NAME of an existing one (--cache-pvc '' for an emptyDir: no cache "
                            "between builds)", True)
    phase = (pvc.get("status") or {}).get("phase")
    if phase == "Bound":
        return None
    said = _events(events, "PersistentVolumeClaim", pvc_name)
    if not said or said[-1].get("reason") not in PVC_FAILURES:
        return None   # being provisioned, or waiting for its first consumer: the scheduler tells more
    why = said[-1].get("message", "")
    storage_class = (pvc.get("spec") or {}).get("storageClassName")
    return StartProblem(
        f"its cache PVC {namespace}/{pvc_name} is not bound: {why}",
        ("the cluster has no default StorageClass: set spec.storageClassName of the PVC to one that exists "
         "(kubectl get storageclass), or create a PersistentVolume it can bind"
         if not storage_class else f"check StorageClass {storage_class} and its provisioner (kubectl describe "
                                   f"pvc -n {namespace} {pvc_name})")
        + "; or build with --cache-pvc '' (an emptyDir: no cache between builds)", True)


def start_problem(pod: dict[str, Any], events: list[dict[str, Any]], pvc_name: str | None,
                  pvc: dict[str, Any] | None, image: str) -> StartProblem | None:
    """Why the pending `pod` (a serialized V1Pod) does not start, or None when nothing says so yet.
    `events` are the namespace's events about the pod and the PVC; `pvc` the cache PVC (None when
    `pvc_name` names none that exists)."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    namespace, name = meta.get("namespace", ""), meta.get("name", "")
    for cs in status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in FATAL_WAITING:
            return StartProblem(f"{waiting['reason']}: {waiting.get('message') or ''}".strip(),
                                f"is the builder image {image} pushed and pullable by the node? (and the "
                                "Secrets the pod mounts there?)", True)
    said = [e for e in _events(events, "Pod", name) if e.get("type") == "Warning"]
    for event in said:
        message = str(event.get("message") or "")
        if event.get("reason") == "FailedMount" and "not found" in message:
            return StartProblem(f"a volume can't be mounted: {message}",
                                "create the Secret (or PVC) it names in the namespace, or drop the flag that "
                                "asks for it (--registry-secret, --build-key)", True)
    scheduled = next((c for c in status.get("conditions") or [] if c.get("type") == "PodScheduled"), None)
    unschedulable = scheduled is not None and scheduled.get("status") == "False" and \
        scheduled.get("reason") == "Unschedulable"
    reason = str((scheduled or {}).get("message") or (said[-1].get("message") if said else "") or "")
    if pvc_name and (unschedulable or pvc is None or (pvc.get("status") or {}).get("phase") != "Bound"):
        problem = _pvc_problem(pvc_name, namespace, pvc, events)
        if problem is not None:
            return problem
    if unschedulable:
        return StartProblem(f"the scheduler can't place it yet: {reason}",
                            f"kubectl -n {namespace} describe pod {name}; lower the pods' resource requests or "
                            "free the nodes", False)
    return None
