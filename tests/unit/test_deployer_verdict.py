"""deployer.verdict: `judge`, the tracking verdict as a pure function of observations, time and options,
table-driven over short sequences of observations (each step: seconds since start, what is seen); and
`next_state`, what a verdict makes of the resource by its fail mode."""
import copy

import pytest

from deployer.options import FAIL_FAST, HOPE, IGNORE, TrackOptions
from deployer.resources import ResourceKey
from deployer.verdict import FAILED, HOPING, IGNORED, READY, Memory, Observation, judge, next_state

T0 = 1_800_000_000.0
DEP = ResourceKey("apps", "Deployment", "ns", "web")
JOB = ResourceKey("batch", "Job", "ns", "migrate")
POD = ResourceKey("", "Pod", "ns", "web-1-a")
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
        before, snapshot = memory, copy.deepcopy(memory)
        memory, decision = judge(Observation(key, **kwargs), memory, T0 + second, options, settle)
        assert before == snapshot  # inputs are not mutated: a new memory comes back
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


def finished_pod():
    done = pod({"terminated": {"exitCode": 0, "reason": "Completed"}}, rv="3")
    done["status"]["phase"] = "Succeeded"
    return done


def running_pod():
    running = pod(**READY_POD)
    running["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    return running


def crashed(restarts=1, rv="2"):
    return pod(CRASH, rv=rv, restarts=restarts, last={"exitCode": 1, "reason": "Error"})


READY_DEP = dict(obj=deployment(1), pods=[pod(**READY_POD)], replicasets=[RS])
UNREADY_DEP = dict(obj=deployment(0), pods=[pod(rv="9")], replicasets=[RS])
EXITED = {"terminated": {"exitCode": 0, "reason": "Completed"}}
COMPLETE_JOB = {"metadata": {"name": "migrate"}, "status": {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}}

# name, key, steps, options, settle, expected: rows that need options or a settle time of their own
OPTION_CASES = [
    ("the first look at a ready Deployment is not yet the verdict", DEP, [(0, READY_DEP)], None, 2.0,
     (None, None, "confirming it stays ready for 2s")),
    ("settle 0: ready at the first look", DEP, [(0, READY_DEP)], None, 0.0, (0, READY, "")),
    ("ready, regressed, ready again: settling starts over", DEP,
     [(0, READY_DEP), (1, READY_DEP), (1.5, UNREADY_DEP), (2.5, READY_DEP), (3, READY_DEP), (4, READY_DEP),
      (4.6, READY_DEP)], None, 2.0, (4.6, READY, "")),
    ("an exited container holds the settling", DEP,
     [(s, dict(obj=deployment(1), pods=[pod(EXITED, rv="9", ready=True)], replicasets=[RS])) for s in range(0, 10)],
     None, 2.0, (None, None, "confirming it stays ready")),
    ("a running Pod settles", POD,
     [(s, dict(obj=running_pod(), pods=[running_pod()])) for s in (0, 1, 2.5, 3.1)], None, 2.0, (3.1, READY, "")),
    ("a finished Pod is ready at the first look", POD, [(0, dict(obj=finished_pod(), pods=[finished_pod()]))], None, 2.0,
     (0, READY, "")),
    ("a complete Job is ready at the first look", JOB, [(0, dict(obj=COMPLETE_JOB))], None, 2.0, (0, READY, "")),
    ("within the budget: a crash and its back-off, 2 allowed", DEP,
     [(0, dict(obj=deployment(0), pods=[crashed()], replicasets=[RS]))],
     TrackOptions(failures_allowed_per_replica=2), 2.0, (None, None, "0/1 new replicas ready")),
    ("over the budget: the back-off lasting 5 s is the third", DEP,
     [(s, dict(obj=deployment(0), pods=[crashed()], replicasets=[RS])) for s in (0, 5)],
     TrackOptions(failures_allowed_per_replica=2), 2.0, (5, FAILED, "CrashLoopBackOff")),
    ("the budget is per replica: 3 replicas allow 3", DEP,
     [(s, dict(obj=deployment(0, replicas=3), pods=[crashed()], replicasets=[RS])) for s in (0, 5, 10, 15)],
     None, 2.0, (10, FAILED, "CrashLoopBackOff")),
    ("a large budget holds a crash loop", DEP,
     [(0, dict(obj=deployment(0), pods=[crashed()], replicasets=[RS])),
      (5, dict(obj=deployment(0), pods=[crashed(2, rv="3")], replicasets=[RS]))],
     TrackOptions(failures_allowed_per_replica=10), 2.0, (None, None, "0/1 new replicas ready")),
    ("a fatal signal fails whatever the budget", DEP,
     [(s, dict(obj=deployment(0), pods=[pod(scheduled=False, requests={"cpu": "3"})], replicasets=[RS], nodes=[NODE]))
      for s in range(0, 30)], TrackOptions(failures_allowed_per_replica=10), 2.0, (5, FAILED, "Unschedulable")),
    ("no-activity timeout from the options", DEP,
     [(s, dict(obj=deployment(0), pods=[pod()], replicasets=[RS])) for s in range(0, 30, 5)],
     TrackOptions(no_activity_timeout=12), 2.0, (15, FAILED, "NoActivity")),
    ("a change restarts the no-activity clock", DEP,
     [(s, dict(obj=deployment(0, rv="2" if s >= 10 else "1"), pods=[pod()], replicasets=[RS])) for s in range(0, 40, 5)],
     TrackOptions(no_activity_timeout=12), 2.0, (25, FAILED, "NoActivity")),
]


@pytest.mark.parametrize("key,steps,options,settle,expected",
                         [pytest.param(key, steps, None, 2.0, expected, id=name) for name, key, steps, expected in CASES]
                         + [pytest.param(*row[1:], id=row[0]) for row in OPTION_CASES])
def test_judge(key, steps, options, settle, expected):
    second, outcome, reason = run(key, steps, options, settle)
    if expected[1] is None:
        assert outcome is None and expected[2] in reason
    else:
        assert (second, outcome, reason) == expected


@pytest.mark.parametrize("replicas,pods,expected", [
    (1, [pod()], ((), 0, 1)),
    (1, [crashed()], (("ContainerFailed", "CrashLoopBackOff"), 2, 1)),
    (3, [crashed()], (("ContainerFailed", "CrashLoopBackOff"), 2, 3)),
])
def test_decision_counts(replicas, pods, expected):
    options = TrackOptions()
    _, decision = judge(Observation(DEP, deployment(0, replicas=replicas), pods, [RS]), Memory.start(options, T0), T0,
                        options, 2.0)
    assert (tuple(s.reason for s in decision.counted), decision.occurrences, decision.allowed) == expected


@pytest.mark.parametrize("outcome,fail_mode,hoping,expected", [
    (READY, FAIL_FAST, False, READY),
    (READY, HOPE, True, READY),  # recovered while hoped for
    (FAILED, FAIL_FAST, False, FAILED),
    (FAILED, IGNORE, False, IGNORED),
    (FAILED, HOPE, False, HOPING),
    (FAILED, HOPE, True, None),  # already held: not held (or reported) again
    (None, FAIL_FAST, False, None),  # within the budget: watched on, whatever the mode
    (None, IGNORE, False, None),
    (None, HOPE, True, None),  # still hoping
])
def test_next_state(outcome, fail_mode, hoping, expected):
    assert next_state(outcome, fail_mode, hoping) == expected
