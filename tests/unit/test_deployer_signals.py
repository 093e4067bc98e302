"""Failure signals from pod status and events, and the failure budget, table-driven."""
import pytest

from deployer.signals import (EVENT_GRACE, PERSIST_INTERVAL, FailureBudget, Signal, event_active, event_signal,
                              pod_signals, readiness_ignore_window)

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z
STARTED = "2027-01-15T07:59:00Z"  # 60 s before NOW


def pod(containers=(), init=(), conditions=(), phase="Pending", probe=None, reason=None, startup=None):
    spec = {"containers": [{"name": "app", **({"readinessProbe": probe} if probe else {}),
                            **({"startupProbe": startup} if startup else {})}]}
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


def running(ready=False, started=STARTED, passed_startup=None):
    out = {"name": "app", "ready": ready, "restartCount": 0, "state": {"running": {"startedAt": started}}}
    if passed_startup is not None:
        out["started"] = passed_startup
    return out


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
    ("unschedulable is judged by deployer.scheduling", pod(conditions=[UNSCHEDULABLE]), []),
    ("startup probe not passed yet: readiness not judged", pod([running(passed_startup=False)], phase="Running", probe=FAST_PROBE, startup={"periodSeconds": 10, "failureThreshold": 30}), []),
    ("startup probe passed long ago, readiness failing", pod([running(passed_startup=True)], phase="Running", probe=FAST_PROBE, startup={"periodSeconds": 1, "failureThreshold": 3}), ["ReadinessProbeFailed"]),
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


def test_startup_probe_window_counts_from_when_it_passed():
    obj = pod([running(passed_startup=True)], phase="Running", probe=FAST_PROBE, startup={"periodSeconds": 10, "failureThreshold": 30})
    assert pod_signals(obj, NOW, started_seen={("p1", "app"): NOW - 1}) == []
    assert [s.reason for s in pod_signals(obj, NOW, started_seen={("p1", "app"): NOW - 30})] == ["ReadinessProbeFailed"]


def test_startup_probe_window_kubedog():
    # kubedog's calculateRealInitialDelay: the startup probe may run longer than period + initialDelay,
    # then one readiness period is left; otherwise what is left of period + initialDelay
    readiness = {"periodSeconds": 5, "initialDelaySeconds": 0}
    long_startup = {"periodSeconds": 10, "failureThreshold": 30}
    assert readiness_ignore_window(readiness, long_startup) == pytest.approx(5 + 1 + 5 + 2.5 + 1)
    slow_readiness = {"periodSeconds": 5, "initialDelaySeconds": 100}
    short_startup = {"periodSeconds": 1, "failureThreshold": 1}
    startup_delay = 1 + 0 + (1 + 1 - 1) * 1 + 1 + 5
    assert readiness_ignore_window(slow_readiness, short_startup) == pytest.approx(105 - startup_delay + 1 + 5 + 2.5 + 1)


WINDOW_CASES = [
    ("defaults", {}, 10 + 1 + (3 + 1 - 3) * 10 + 5 + 1),
    ("fast probe", FAST_PROBE, 1 + 1 + (1 + 1 - 3) * 1 + 0.5 + 1),
    ("initial delay", {"initialDelaySeconds": 30, "periodSeconds": 2}, 32 + 1 + 2 + 1 + 1),
    ("never negative", {"failureThreshold": 1, "periodSeconds": 100, "timeoutSeconds": 1}, 100 + 1 - 100 + 50 + 1),
    ("nonsense values are defaults", {"periodSeconds": "x", "timeoutSeconds": -1}, 10 + 1 + (3 + 1 - 3) * 10 + 5 + 1),
]


@pytest.mark.parametrize("name,probe,expected", WINDOW_CASES, ids=[c[0] for c in WINDOW_CASES])
def test_readiness_ignore_window(name, probe, expected):
    assert readiness_ignore_window(probe) == pytest.approx(expected)


def event(reason, type_="Warning", count=1, kind="Pod", uid="e1"):
    return {"metadata": {"uid": uid}, "type": type_, "reason": reason, "count": count, "message": "m",
            "involvedObject": {"kind": kind, "name": "web-1", "uid": "p1"}}


EVENT_CASES = [
    ("failed mount, recurring", event("FailedMount", count=2), "FailedMount"),
    ("failed mount once is no signal", event("FailedMount"), None),
    ("failed scheduling is judged by deployer.scheduling", event("FailedScheduling", count=5), None),
    ("failed create on rs", event("FailedCreate", kind="ReplicaSet", count=3), "FailedCreate"),
    ("series count (events.k8s.io)", {**event("FailedMount"), "count": None, "series": {"count": 4}}, "FailedMount"),
    ("normal event", event("Scheduled", type_="Normal"), None),
    ("other warning", event("BackOff"), None),
]


@pytest.mark.parametrize("name,obj,reason", EVENT_CASES, ids=[c[0] for c in EVENT_CASES])
def test_event_signal(name, obj, reason):
    sig = event_signal(obj)
    assert (sig.reason if sig else None) == reason


def test_fatal_signal_fails_whatever_the_budget():
    budget = FailureBudget(allowed=10)
    sig = Signal("Unschedulable", "never fits", "web-1", key=("p1", "never"), persistent=True, grace=5, fatal=True)
    budget.observe([sig], NOW)
    assert not budget.exceeded
    budget.observe([sig], NOW + 5)
    assert budget.exceeded and budget.fatal == sig


def test_event_signals_wait_for_their_grace():
    budget = FailureBudget(allowed=0)
    sig = event_signal(event("FailedMount", count=2))
    budget.observe([sig], NOW)
    budget.observe([event_signal(event("FailedMount", count=5))], NOW + EVENT_GRACE - 1)
    assert budget.count == 0
    budget.observe([sig], NOW + EVENT_GRACE)
    assert budget.exceeded


def ts(offset):
    from datetime import datetime, timezone
    return datetime.fromtimestamp(NOW + offset, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


ACTIVE_CASES = [
    ("pod still creating", {**event("FailedMount"), "lastTimestamp": ts(-10)}, pod([waiting("ContainerCreating")]), None, True),
    ("pod still creating, event stopped recurring", {**event("FailedMount"), "lastTimestamp": ts(-600)}, pod([waiting("ContainerCreating")]), None, False),
    ("pod started since", {**event("FailedMount"), "lastTimestamp": ts(-10)}, pod([running(ready=True)], phase="Running"), None, False),
    ("pod finished", {**event("FailedMount"), "lastTimestamp": ts(-10)}, pod(phase="Succeeded"), None, False),
    ("rs event recent", {**event("FailedCreate", kind="ReplicaSet"), "lastTimestamp": ts(-10)}, None, None, True),
    ("rs event old", {**event("FailedCreate", kind="ReplicaSet"), "lastTimestamp": ts(-600)}, None, None, False),
    ("rs created a pod after it (ServiceAccount came)", {**event("FailedCreate", kind="ReplicaSet"), "lastTimestamp": ts(-10)}, None, NOW - 5, False),
    ("rs pods older than the failure", {**event("FailedCreate", kind="ReplicaSet"), "lastTimestamp": ts(-10)}, None, NOW - 50, True),
]


@pytest.mark.parametrize("name,ev,obj,newest,expected", ACTIVE_CASES, ids=[c[0] for c in ACTIVE_CASES])
def test_event_active(name, ev, obj, newest, expected):
    assert event_active(ev, obj, NOW, newest_pod=newest) is expected


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
    sigs = pod_signals(pod([waiting("ImagePullBackOff")]), NOW)
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


def test_missing_config_waits_for_its_grace():
    """A Secret applied after its Deployment: CreateContainerConfigError for a while is normal."""
    budget = FailureBudget(allowed=1)
    sigs = pod_signals(pod([waiting("CreateContainerConfigError", message='secret "s" not found')]), NOW)
    budget.observe(sigs, NOW)
    budget.observe(sigs, NOW + EVENT_GRACE - 1)
    assert budget.count == 0
    budget.observe(sigs, NOW + EVENT_GRACE + PERSIST_INTERVAL)
    assert budget.exceeded
