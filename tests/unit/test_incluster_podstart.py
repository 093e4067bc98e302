"""Why a builder pod doesn't start (builder/backends/podstart.py), from pod, event and PVC objects as
the API serves them (the shapes below are the test cluster's own, copied from `kubectl get -o json`)."""
from __future__ import annotations

import pytest

from builder.backends.podstart import start_problem

IMAGE = "reg/kade/builder@sha256:" + "a" * 64


def pod(conditions=(), waiting=None):
    status = {"phase": "Pending", "conditions": list(conditions)}
    if waiting:
        status["containerStatuses"] = [{"name": "build", "state": {"waiting": waiting}}]
    return {"metadata": {"name": "kade-b1-0-1", "namespace": "ns"}, "status": status}


UNSCHEDULABLE_PVC = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                     "message": "0/1 nodes are available: pod has unbound immediate PersistentVolumeClaims. "
                                "preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."}
UNSCHEDULABLE_CPU = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                     "message": "0/1 nodes are available: 1 Insufficient cpu."}
PENDING_PVC = {"spec": {}, "status": {"phase": "Pending"}}
BOUND_PVC = {"spec": {}, "status": {"phase": "Bound"}}


def event(kind, name, reason, message, type_="Normal", at="2026-01-01T00:00:01Z"):
    return {"involvedObject": {"kind": kind, "name": name}, "reason": reason, "message": message, "type": type_,
            "lastTimestamp": at}


NO_CLASS = event("PersistentVolumeClaim", "cache", "FailedBinding",
                 "no persistent volumes available for this claim and no storage class is set")


@pytest.mark.parametrize("name, the_pod, events, pvc, fatal, says", [
    ("no storage class", pod([UNSCHEDULABLE_PVC]), [NO_CLASS], PENDING_PVC, True,
     "cache PVC ns/cache is not bound: no persistent volumes available for this claim and no storage class is set"),
    ("no storage class, before the scheduler spoke", pod(), [NO_CLASS], PENDING_PVC, True, "no storage class is set"),
    ("pvc missing", pod([UNSCHEDULABLE_PVC]), [], None, True, "cache PVC ns/cache does not exist"),
    ("being provisioned", pod(), [event("PersistentVolumeClaim", "cache", "ExternalProvisioning", "waiting")],
     PENDING_PVC, None, None),
    ("waiting for first consumer", pod(), [event("PersistentVolumeClaim", "cache", "WaitForFirstConsumer", "w")],
     PENDING_PVC, None, None),
    ("not enough cpu", pod([UNSCHEDULABLE_CPU]), [], BOUND_PVC, False, "Insufficient cpu"),
    ("image pull", pod(waiting={"reason": "ImagePullBackOff", "message": "Back-off pulling image"}), [], BOUND_PVC,
     True, "ImagePullBackOff: Back-off pulling image"),
    ("missing secret", pod(), [event("Pod", "kade-b1-0-1", "FailedMount",
                                     'MountVolume.SetUp failed for volume "build-key" : secret "kade-build-key" not found',
                                     "Warning")], BOUND_PVC, True, 'secret "kade-build-key" not found'),
    ("just created", pod(), [], BOUND_PVC, None, None),
    ("pod security", pod(), [], BOUND_PVC, None, None),   # refused at create: never a pending pod
])
def test_start_problem(name, the_pod, events, pvc, fatal, says):
    problem = start_problem(the_pod, events, "cache", pvc, IMAGE)
    if fatal is None:
        assert problem is None
        return
    assert problem is not None and problem.fatal is fatal and says in problem.message, problem
    assert problem.hint


def test_the_hint_for_an_unbound_pvc_says_what_to_do():
    problem = start_problem(pod([UNSCHEDULABLE_PVC]), [NO_CLASS], "cache", PENDING_PVC, IMAGE)
    assert "no default StorageClass" in problem.hint and "--cache-pvc ''" in problem.hint
    classed = {"spec": {"storageClassName": "fast"}, "status": {"phase": "Pending"}}
    failed = event("PersistentVolumeClaim", "cache", "ProvisioningFailed", "storageclass.storage.k8s.io \"fast\" "
                   "not found", "Warning")
    problem = start_problem(pod([UNSCHEDULABLE_PVC]), [failed], "cache", classed, IMAGE)
    assert problem.fatal and "StorageClass fast" in problem.hint
