"""deployer.verdict.judge: the tracking verdict as a pure function of observations, time and options,
table-driven over short sequences of observations (each step: seconds since start, what is seen)."""
import pytest

from deployer.options import TrackOptions
from deployer.resources import ResourceKey
from deployer.verdict import FAILED, READY, Memory, Observation, judge

T0 = 1_800_000_000.0
DEP = ResourceKey("apps", "Deployment", "ns", "web")
JOB = ResourceKey("batch", "Job", "ns", "migrate")
NODE = {"metadata": {"name": "n1", "labels": {}}, "status": {"allocatable": {"cpu": "2", "memory": "8Gi"}}}


def ts(offset):
    from datetime import datetime, timezone
    return datetime.fromtimestamp(T0 + offset, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def deployment(ready=0, replicas=1, rv="1", min_ready=None):
    spec = {"replicas": replicas, **({"minReadySeconds": min_ready} if min_ready else {})}
    return {"metadata": {"name": "web", "uid": "d1", "generation": 1, "resourceVersion": rv,
                         "annotations": {"deployment.kubernetes.io/revision": "1"}},
            "spec": spec,
            "status": {"observedGeneration": 1, "replicas": replicas, "updatedReplicas": replicas,
                       "readyReplicas": ready, "availableReplicas": ready}}


RS = {"metadata": {"name": "web-1", "uid": "rs1", "annotations": {"deployment.kubernetes.io/revision": "1"},
                   "ownerReferences": [{"uid": "d1"}]}, "status": {"readyReplicas": 1}}


def pod(state=None, rv="1", ready=False, restarts=0, last=None, scheduled=True, requests=None, uid="p1", started=None):
    cs = {"name": "app", "ready": ready, "restartCount": restarts, "state": state or {"running": {"startedAt": ts(0)}}}
    if last:
        cs["lastState"] = {"terminated": last}
    if started is not None:
        cs["started"] = started
    conditions = [] if scheduled else [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                        "message": "0/1 nodes are available: 1 Insufficient cpu."}]
    container = {"name": "app", **({"resources": {"requests": requests}} if requests else {})}
    return {"metadata": {"name": "web-1-a", "uid": uid, "resourceVersion": rv, "creationTimestamp": ts(0)},
            "spec": {"containers": [container]},
            "status": {"phase": "Running" if scheduled else "Pending", "conditions": conditions,
                       "containerStatuses": [cs] if scheduled else []}}


def event(reason, count, last, uid="p1", kind="Pod", type_="Warning"):
    return {"metadata": {"uid": f"e-{reason}"}, "type": type_, "reason": reason, "count": count, "message": f"{reason} happened",
            "lastTimestamp": ts(last), "involvedObject": {"kind": kind, "uid": uid, "name": "web-1-a"}}


def run(key, steps, options=None, settle=2.0):
    """Feed the steps in; the (second, outcome, reason) of the first decision, or the last one."""
    options = options or TrackOptions()
    memory = Memory.start(options, T0)
    decision = None
    for second, kwargs in steps:
        before = memory
        memory, decision = judge(Observation(key, **kwargs), memory, T0 + second, options, settle)
        assert before is not memory  # inputs are not mutated: a new memory comes back
        if decision.outcome:
            return second, decision.outcome, decision.reason
    return None, None, decision.status.message


CRASH = {"waiting": {"reason": "CrashLoopBackOff"}}
CONFIG = {"waiting": {"reason": "CreateContainerConfigError", "message": 'secret "db" not found'}}
READY_POD = dict(rv="9", ready=True)

CASES = [
    ("ready after settling", DEP, [(0, dict(obj=deployment(1), pods=[pod(**READY_POD)], replicasets=[RS])),
                                   (1, dict(obj=deployment(1), pods=[pod(**READY_POD)], replicasets=[RS])),
                                   (2.5, dict(obj=deployment(1), pods=[pod(**READY_POD)], replicasets=[RS])),
                                   (3.1, dict(obj=deployment(1), pods=[pod(**READY_POD)], replicasets=[RS]))],
     (3.1, READY, "")),
    ("a restart during settling starts it again", DEP,
     [(0, dict(obj=deployment(1), pods=[pod(**READY_POD)], replicasets=[RS])),
      (1.5, dict(obj=deployment(1), pods=[pod(rv="10", ready=True, restarts=1)], replicasets=[RS])),
      (3, dict(obj=deployment(1), pods=[pod(rv="10", ready=True, restarts=1)], replicasets=[RS])),
      (5.6, dict(obj=deployment(1), pods=[pod(rv="10", ready=True, restarts=1)], replicasets=[RS]))],
     (5.6, READY, "")),
    ("crash loop fails at the back-off", DEP,
     [(0, dict(obj=deployment(0), pods=[pod()], replicasets=[RS])),
      (3, dict(obj=deployment(0), pods=[pod(CRASH, rv="2", restarts=1, last={"exitCode": 1, "reason": "Error"})], replicasets=[RS]))],
     (3, FAILED, "CrashLoopBackOff")),
    ("Secret applied 10 s after the Deployment: no failure", DEP,
     [(0, dict(obj=deployment(0), pods=[pod(CONFIG)], replicasets=[RS])),
      (9, dict(obj=deployment(0), pods=[pod(CONFIG)], replicasets=[RS])),
      (12, dict(obj=deployment(1), pods=[pod(**READY_POD)], replicasets=[RS])),
      (13, dict(obj=deployment(1), pods=[pod(**READY_POD)], replicasets=[RS])),
      (15.5, dict(obj=deployment(1), pods=[pod(**READY_POD)], replicasets=[RS]))],
     (15.5, READY, "")),
    ("a Secret that never comes fails after the grace", DEP,
     [(s, dict(obj=deployment(0), pods=[pod(CONFIG)], replicasets=[RS])) for s in range(0, 60, 5)],
     (35, FAILED, "CreateContainerConfigError")),
    ("one FailedMount, not recurring, is no failure", DEP,
     [(s, dict(obj=deployment(0), pods=[pod({"waiting": {"reason": "ContainerCreating"}})], replicasets=[RS],
                events=[event("FailedMount", 1, 0)])) for s in range(0, 60, 5)],
     (None, None, "0/1 new replicas ready")),
    ("a recurring FailedMount fails after the grace", DEP,
     [(s, dict(obj=deployment(0), pods=[pod({"waiting": {"reason": "ContainerCreating"}})], replicasets=[RS],
                events=[event("FailedMount", 1 + s // 4, s)])) for s in range(0, 60, 5)],
     (40, FAILED, "FailedMount")),  # recurring from second 5 (count 2), counted at 35 and 40
    ("more cpu than any node: fails fast", DEP,
     [(s, dict(obj=deployment(0), pods=[pod(scheduled=False, requests={"cpu": "3"})], replicasets=[RS], nodes=[NODE]))
      for s in range(0, 30)],
     (5, FAILED, "Unschedulable")),
    ("more cpu than any node, autoscaler adding one: waits", DEP,
     [(s, dict(obj=deployment(0), pods=[pod(scheduled=False, requests={"cpu": "3"})], replicasets=[RS], nodes=[NODE],
                events=[event("TriggeredScaleUp", 1, 1, type_="Normal")])) for s in range(0, 30)],
     (None, None, "the cluster autoscaler is adding a node")),
    ("waiting for room: the scheduler's reason shown, no failure", DEP,
     [(s, dict(obj=deployment(0), pods=[pod(scheduled=False, requests={"cpu": "1"})], replicasets=[RS], nodes=[NODE]))
      for s in range(0, 60)],
     (None, None, "Insufficient cpu")),
    ("waiting for room ends in the no-activity timeout", DEP,
     [(s, dict(obj=deployment(0), pods=[pod(scheduled=False, requests={"cpu": "1"})], replicasets=[RS], nodes=[NODE]))
      for s in range(0, 300, 10)],
     (250, FAILED, "NoActivity")),
    ("nodes unknown: never judged never-fitting", DEP,
     [(s, dict(obj=deployment(0), pods=[pod(scheduled=False, requests={"cpu": "3"})], replicasets=[RS], nodes=None))
      for s in range(0, 30)],
     (None, None, "Insufficient cpu")),
    ("startupProbe not passed: readiness failures not counted", DEP,
     [(s, dict(obj=deployment(0), pods=[pod(started=False)], replicasets=[RS])) for s in range(0, 200, 10)],
     (None, None, "0/1 new replicas ready")),
    ("job failing is failed at once", JOB,
     [(0, dict(obj={"metadata": {"name": "migrate"}, "status": {"conditions": [
         {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]}}))],
     (0, FAILED, "BackoffLimitExceeded")),
    ("object not there yet", DEP, [(0, dict(obj=None))], (None, None, "waiting for the object to appear")),
    ("a controller writing nonsense numbers never crashes the verdict", DEP,
     [(0, dict(obj={**deployment(0), "spec": {"replicas": "many"},
                    "status": {"observedGeneration": "soon", "replicas": [], "readyReplicas": {}}},
                pods=[pod({"waiting": {"reason": "ContainerCreating"}}, restarts="x")], replicasets=[RS]))],
     (None, None, "")),
]


@pytest.mark.parametrize("name,key,steps,expected", CASES, ids=[c[0] for c in CASES])
def test_judge(name, key, steps, expected):
    second, outcome, reason = run(key, steps)
    if expected[1] is None:
        assert outcome is None and expected[2] in reason
    else:
        assert (second, outcome, reason) == expected


def test_failures_allowed_per_replica_from_options():
    steps = [(0, dict(obj=deployment(0), pods=[pod(CRASH, rv="2", restarts=1, last={"exitCode": 1, "reason": "Error"})],
                      replicasets=[RS])),
             (5, dict(obj=deployment(0), pods=[pod(CRASH, rv="3", restarts=2, last={"exitCode": 1, "reason": "Error"})],
                      replicasets=[RS]))]
    assert run(DEP, steps, TrackOptions(failures_allowed_per_replica=10))[1] is None
    assert run(DEP, steps)[1] == FAILED


def test_no_activity_timeout_from_options():
    steps = [(s, dict(obj=deployment(0), pods=[pod()], replicasets=[RS])) for s in range(0, 30, 5)]
    assert run(DEP, steps, TrackOptions(no_activity_timeout=12))[:2] == (15, FAILED)
