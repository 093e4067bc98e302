"""Failure signals from pod status and events, and the failure budget, table-driven."""
import pytest

from deployer.signals import (EVENT_GRACE, PERSIST_INTERVAL, UNSCHEDULABLE_GRACE, FailureBudget, event_active,
                              event_signal, pod_signals, readiness_ignore_window)

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z
STARTED = "2027-01-15T07:59:00Z"  # 60 s before NOW


def pod(containers=(), init=(), conditions=(), phase="Pending", probe=None, reason=None):
    spec = {"containers": [{"name": "app", **({"readinessProbe": probe} if probe else {})}]}
    status = {"phase": phase, "containerStatuses": list(containers), "initContainerStatuses": list(init),
              "conditions": list(conditions)}
    if reason:
        status["reason"] = reason
    return {"metadata": {"name": "web-1", "uid": "p1"}, "spec": spec, "status": status}


def waiting(reason, restarts=0, message=""):
    return {"name": "app", "restartCount": restarts, "state": {"waiting": {"reason": reason, "message": message}}}


def crashed(code=1, restarts=1, reason="Error", waiting_reason="CrashLoopBackOff"):
    return {"name": "app", "restartCount": restarts, "state": {"waiting": {"reason": waiting_reason}},
            "lastState": {"terminated": {"exitCode": code, "reason": reason}}}


def running(ready=False, started=STARTED):
    return {"name": "app", "ready": ready, "restartCount": 0, "state": {"running": {"startedAt": started}}}


UNSCHEDULABLE = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                 "message": "0/1 nodes are available: 1 Insufficient cpu."}
FAST_PROBE = {"periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 1}

CASES = [
    ("healthy", pod([running(ready=True)], phase="Running"), []),
    ("crash loop", pod([crashed()], phase="Running"), ["CrashLoopBackOff", "ContainerFailed"]),
    ("image pull backoff", pod([waiting("ImagePullBackOff")]), ["ImagePullBackOff"]),
    ("err image pull", pod([waiting("ErrImagePull")]), ["ErrImagePull"]),
    ("config error", pod([waiting("CreateContainerConfigError", message='configmap "x" not found')]), ["CreateContainerConfigError"]),
    ("invalid image", pod([waiting("InvalidImageName")]), ["InvalidImageName"]),
    ("create container error", pod([waiting("CreateContainerError")]), ["CreateContainerError"]),
    ("run container error", pod([waiting("RunContainerError")]), ["RunContainerError"]),
    ("container creating is fine", pod([waiting("ContainerCreating")]), []),
    ("oom killed", pod([crashed(code=137, reason="OOMKilled", waiting_reason="")], phase="Running"), ["OOMKilled"]),
    ("init container failed", pod(init=[{"name": "init", "restartCount": 0, "state": {"terminated": {"exitCode": 2, "reason": "Error"}}}]), ["InitContainerFailed"]),
    ("init container crash loop", pod(init=[waiting("CrashLoopBackOff", restarts=2)]), ["CrashLoopBackOff"]),
    ("unschedulable", pod(conditions=[UNSCHEDULABLE]), ["Unschedulable"]),
    ("evicted", pod(phase="Failed", reason="Evicted"), ["Evicted"]),
    ("probe failing past window", pod([running()], phase="Running", probe=FAST_PROBE), ["ReadinessProbeFailed"]),
    ("probe failing inside window", pod([running()], phase="Running", probe={"initialDelaySeconds": 120}), []),
    ("not ready without probe", pod([running()], phase="Running"), []),
    ("clean exit is no failure", pod([{"name": "app", "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]), []),
]


@pytest.mark.parametrize("name,obj,reasons", CASES, ids=[c[0] for c in CASES])
def test_pod_signals(name, obj, reasons):
    assert sorted(s.reason for s in pod_signals(obj, NOW)) == sorted(reasons)


def test_signals_name_pod_and_container():
    [sig] = pod_signals(pod([waiting("ImagePullBackOff", message="Back-off pulling image \"x\"")]), NOW)
    assert (sig.pod, sig.container) == ("web-1", "app")
    assert "ImagePullBackOff (pod web-1, container app): Back-off pulling" in sig.describe()


def test_exits_not_counted_for_jobs():
    reasons = [s.reason for s in pod_signals(pod([crashed()]), NOW, count_exits=False)]
    assert reasons == ["CrashLoopBackOff"]


def test_probe_window_override():
    obj = pod([running()], phase="Running", probe=FAST_PROBE)
    assert pod_signals(obj, NOW, probe_windows={"app": 300}) == []


WINDOW_CASES = [
    ("defaults", {}, 0 + 1 + (3 + 1 - 3) * 10 + 5 + 1),
    ("fast probe", FAST_PROBE, 0 + 1 + (1 + 1 - 3) * 1 + 0.5 + 1),
    ("initial delay", {"initialDelaySeconds": 30, "periodSeconds": 2}, 30 + 1 + 2 + 1 + 1),
    ("never negative", {"failureThreshold": 1, "periodSeconds": 100, "timeoutSeconds": 1}, 0.0),
]


@pytest.mark.parametrize("name,probe,expected", WINDOW_CASES, ids=[c[0] for c in WINDOW_CASES])
def test_readiness_ignore_window(name, probe, expected):
    assert readiness_ignore_window(probe) == pytest.approx(expected)


def event(reason, type_="Warning", count=1, kind="Pod", uid="e1"):
    return {"metadata": {"uid": uid}, "type": type_, "reason": reason, "count": count, "message": "m",
            "involvedObject": {"kind": kind, "name": "web-1", "uid": "p1"}}


EVENT_CASES = [
    ("failed mount", event("FailedMount"), "FailedMount"),
    ("failed scheduling", event("FailedScheduling"), "Unschedulable"),
    ("failed create on rs", event("FailedCreate", kind="ReplicaSet"), "FailedCreate"),
    ("normal event", event("Scheduled", type_="Normal"), None),
    ("other warning", event("BackOff"), None),
]


@pytest.mark.parametrize("name,obj,reason", EVENT_CASES, ids=[c[0] for c in EVENT_CASES])
def test_event_signal(name, obj, reason):
    sig = event_signal(obj)
    assert (sig.reason if sig else None) == reason


def test_scheduling_event_and_condition_are_one_occurrence_after_grace():
    budget = FailureBudget(allowed=1)
    budget.observe(pod_signals(pod(conditions=[UNSCHEDULABLE]), NOW), NOW)
    budget.observe([event_signal(event("FailedScheduling"))], NOW + 1)
    assert budget.count == 0, "a moment of Unschedulable is normal (node starting)"
    budget.observe([event_signal(event("FailedScheduling"))], NOW + UNSCHEDULABLE_GRACE)
    assert budget.count == 1 and not budget.exceeded
    budget.observe(pod_signals(pod(conditions=[UNSCHEDULABLE]), NOW), NOW + UNSCHEDULABLE_GRACE + PERSIST_INTERVAL)
    assert budget.exceeded


def test_event_signals_wait_for_their_grace():
    budget = FailureBudget(allowed=0)
    sig = event_signal(event("FailedMount", count=1))
    budget.observe([sig], NOW)
    budget.observe([event_signal(event("FailedMount", count=5))], NOW + EVENT_GRACE - 1)
    assert budget.count == 0
    budget.observe([sig], NOW + EVENT_GRACE)
    assert budget.exceeded


def ts(offset):
    from datetime import datetime, timezone
    return datetime.fromtimestamp(NOW + offset, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


ACTIVE_CASES = [
    ("pod still creating", event("FailedMount"), pod([waiting("ContainerCreating")]), True),
    ("pod started since", event("FailedMount"), pod([running(ready=True)], phase="Running"), False),
    ("pod finished", event("FailedMount"), pod(phase="Succeeded"), False),
    ("rs event recent", {**event("FailedCreate", kind="ReplicaSet"), "lastTimestamp": ts(-10)}, None, True),
    ("rs event old", {**event("FailedCreate", kind="ReplicaSet"), "lastTimestamp": ts(-600)}, None, False),
]


@pytest.mark.parametrize("name,ev,obj,expected", ACTIVE_CASES, ids=[c[0] for c in ACTIVE_CASES])
def test_event_active(name, ev, obj, expected):
    assert event_active(ev, obj, NOW) is expected


def test_budget_counts_each_crash_once():
    budget = FailureBudget(allowed=1)
    first = pod([{"name": "app", "restartCount": 0, "state": {"terminated": {"exitCode": 1, "reason": "Error"}}}], phase="Running")
    budget.observe(pod_signals(first, NOW), NOW)
    budget.observe(pod_signals(first, NOW), NOW)  # the same status seen again
    assert budget.count == 1 and not budget.exceeded
    # restarted, crashed again -> lastState carries the first crash (same occurrence), plus a back-off
    new = budget.observe(pod_signals(pod([crashed(restarts=1)], phase="Running"), NOW + 1), NOW + 1)
    assert budget.exceeded
    assert budget.last.reason == "CrashLoopBackOff"
    assert [s.reason for s in new] == ["CrashLoopBackOff"]
    # the second crash (restart 1 terminated) is one more occurrence, its new back-off another
    budget.observe(pod_signals(pod([crashed(restarts=2)], phase="Running"), NOW + 12), NOW + 12)
    assert budget.count == 4  # + the back-off of restart 2


def test_persistent_signal_counts_per_interval():
    budget = FailureBudget(allowed=2)
    sigs = pod_signals(pod([waiting("CreateContainerConfigError")]), NOW)
    budget.observe(sigs, NOW)
    assert budget.count == 1
    budget.observe(sigs, NOW + PERSIST_INTERVAL - 0.1)
    assert budget.count == 1
    budget.observe(sigs, NOW + 2 * PERSIST_INTERVAL)  # a tick skipped the middle interval: still counted
    assert budget.count == 3 and budget.exceeded


def test_image_pull_fails_on_backoff_with_default_budget():
    budget = FailureBudget(allowed=1)
    budget.observe(pod_signals(pod([waiting("ErrImagePull")]), NOW), NOW)
    assert not budget.exceeded
    budget.observe(pod_signals(pod([waiting("ImagePullBackOff")]), NOW + 1), NOW + 1)
    assert budget.exceeded
