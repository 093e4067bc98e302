"""Failure signals from pods and events (pure), and the budget that turns them into a verdict.

A Signal is one observed problem. Its `key` identifies the occurrence: a container that crashes again
(new restart count) is a new occurrence; a condition that persists (CrashLoopBackOff, ImagePullBackOff,
Unschedulable, a readiness probe failing past its ignore window, ...) counts once more every
PERSIST_INTERVAL seconds it lasts. A resource fails when its occurrences exceed
failures-allowed-per-replica x replicas (default 1 per replica, 0 for Jobs), like kubedog.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from deployer.readiness.common import as_int

PERSIST_INTERVAL = 5.0
# Warning events that healthy rollouts show for a while (a FailedMount until a Secret applied after the
# Deployment exists, a FailedCreate until its ServiceAccount does, a sandbox retry) count only once they
# have gone on recurring this long (and only while they recur: see `event_active`).
EVENT_GRACE = 30.0
# A pod that can never fit (see deployer.scheduling) fails after this long, unless an autoscaler says
# it is adding a node meanwhile (cluster-autoscaler scans every 10 s; the grace is shorter: the
# scheduler's own verdict comes first and the check is against every node's allocatable).
NEVER_FITS_GRACE = 5.0
# Waiting reasons that only mean "something this pod needs is not there yet" (a Secret or ConfigMap
# applied in the same deploy): they count after EVENT_GRACE, not at once.
WAITING_FOR_INPUT = frozenset({"CreateContainerConfigError"})

WAITING_FAILURES = frozenset({
    "CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError",
    "CreateContainerError", "InvalidImageName", "RunContainerError", "ErrImageNeverPull",
    "PreCreateHookError", "PreStartHookError", "PostStartHookError",
})
# Warning events that mean trouble by themselves; each new occurrence (event count) counts once.
# FailedScheduling is not one: the pod's scheduling is judged by deployer.scheduling.
EVENT_FAILURES = frozenset({"FailedMount", "FailedAttachVolume", "FailedCreate", "FailedCreatePodSandBox",
                            "FailedPostStartHook", "FailedPreStopHook"})


@dataclass(frozen=True)
class Signal:
    reason: str
    message: str
    pod: str = ""
    container: str = ""
    key: tuple = ()
    persistent: bool = False
    grace: float = 0.0  # a persistent signal counts only after lasting this long
    fatal: bool = False  # once counted, the resource fails whatever its failure budget

    def describe(self) -> str:
        where = ", ".join(p for p in (f"pod {self.pod}" if self.pod else "",
                                       f"container {self.container}" if self.container else "") if p)
        return f"{self.reason}{f' ({where})' if where else ''}{f': {self.message}' if self.message else ''}"


def parse_time(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _probe(probe: dict[str, Any]) -> tuple[float, float, float, float, float]:
    """(initialDelay, period, timeout, failureThreshold, successThreshold) with Kubernetes' defaults."""
    def num(name: str, default: float) -> float:
        value = probe.get(name)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else default
    return (num("initialDelaySeconds", 0), num("periodSeconds", 10), num("timeoutSeconds", 1),
            num("failureThreshold", 3), num("successThreshold", 1))


def readiness_ignore_window(probe: dict[str, Any] | None, startup: dict[str, Any] | None = None) -> float:
    """kubedog's window in which readiness probe failures are expected and ignored, from the moment
    the container started (or, with a startupProbe, passed it: `started` true):
    realInitialDelay + timeout + (failureThreshold + successThreshold - 3) x period + period/2 + timeout,
    where realInitialDelay (calculateRealInitialDelay) is period + initialDelay, or with a startupProbe
    what is left of that after the startup probe's longest run, at least one period."""
    initial, period, timeout, failure, success = _probe(probe or {})
    real_initial = period + initial
    if startup is not None:
        s_initial, s_period, s_timeout, s_failure, s_success = _probe(startup)
        startup_delay = s_period + s_initial + (s_failure + s_success - 1) * s_period + s_timeout + period
        real_initial = period if startup_delay > real_initial else real_initial - startup_delay
    return max(real_initial + timeout + (failure + success - 3) * period + period / 2 + timeout, 0.0)


def pod_signals(pod: dict[str, Any], now: float, *, count_exits: bool = True,
                probe_windows: dict[str, float] | None = None,
                started_seen: dict[tuple[str, str], float] | None = None) -> list[Signal]:
    """Problems visible in one pod's status right now. `probe_windows` overrides the readiness
    ignore window per container (kade.io/ignore-readiness-probe-fails-for-<container>);
    `started_seen`: when each (pod uid, container) with a startupProbe was first seen `started`
    (the status does not say when it passed the probe). Scheduling is judged in deployer.scheduling."""
    meta = pod.get("metadata") or {}
    name, uid = str(meta.get("name", "")), str(meta.get("uid") or meta.get("name", ""))
    status = pod.get("status") or {}
    spec = pod.get("spec") or {}
    out: list[Signal] = []
    if status.get("phase") == "Failed" and status.get("reason"):
        out.append(Signal(str(status["reason"]), str(status.get("message") or ""), name, "", (uid, "phase", status["reason"])))
    for cs in status.get("initContainerStatuses") or []:
        out += _container_signals(cs, name, uid, init=True, count_exits=True)
    containers = {c.get("name"): c for c in spec.get("containers") or []}
    windows = probe_windows or {}
    for cs in status.get("containerStatuses") or []:
        out += _container_signals(cs, name, uid, init=False, count_exits=count_exits)
        cname = str(cs.get("name", ""))
        running = (cs.get("state") or {}).get("running")
        container = containers.get(cname) or {}
        probe, startup = container.get("readinessProbe"), container.get("startupProbe")
        if running and not cs.get("ready") and probe and status.get("phase") == "Running":
            started = parse_time(running.get("startedAt"))
            if startup:
                if not cs.get("started"):
                    continue  # still in its startup probe's budget: a failing startup probe restarts it
                started = max(started or 0.0, (started_seen or {}).get((uid, cname), started or 0.0))
            window = windows.get(cname, readiness_ignore_window(probe, startup))
            if started is not None and now - started > window:
                restarts = as_int(cs.get("restartCount")) or 0
                out.append(Signal("ReadinessProbeFailed",
                                  f"not ready {now - started:.0f}s after start (ignore window {window:.0f}s)",
                                  name, cname, (uid, cname, "readiness", restarts), True))
    return out


def _container_signals(cs: dict[str, Any], pod: str, uid: str, init: bool, count_exits: bool) -> list[Signal]:
    out: list[Signal] = []
    cname = str(cs.get("name", ""))
    label = f"{cname} (init)" if init else cname
    restarts = as_int(cs.get("restartCount")) or 0
    state = cs.get("state") or {}
    waiting = state.get("waiting") or {}
    reason = waiting.get("reason")
    if reason in WAITING_FAILURES:
        grace = EVENT_GRACE if reason in WAITING_FOR_INPUT else 0.0
        out.append(Signal(str(reason), str(waiting.get("message") or ""), pod, label, (uid, cname, reason, restarts),
                          True, grace))
    if not count_exits:
        return out
    for terminated, index in ((state.get("terminated"), restarts), ((cs.get("lastState") or {}).get("terminated"), restarts - 1)):
        if not terminated or (as_int(terminated.get("exitCode")) or 0) == 0 and terminated.get("reason") != "OOMKilled":
            continue
        why = str(terminated.get("reason") or "Error")
        kind = "InitContainerFailed" if init else ("OOMKilled" if why == "OOMKilled" else "ContainerFailed")
        message = f"exited with code {terminated.get('exitCode')} ({why})"
        if terminated.get("message"):
            message += f": {terminated['message']}"
        out.append(Signal(kind, message, pod, label, (uid, cname, "exit", index)))
    return out


def event_count(event: dict[str, Any]) -> int:
    """How often the event happened: its count, or its series' count (events.k8s.io/v1)."""
    for value in (event.get("count"), (event.get("series") or {}).get("count")):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return 1


def event_signal(event: dict[str, Any]) -> Signal | None:
    """A Warning event that signals trouble: a persistent condition of its object (keyed by object
    and reason), counted after EVENT_GRACE while it stays active (see `event_active`). An event seen
    once is not a signal: only one that recurs is."""
    if event.get("type") != "Warning":
        return None
    reason = str(event.get("reason") or "")
    if reason not in EVENT_FAILURES or event_count(event) < 2:
        return None
    involved = event.get("involvedObject") or event.get("regarding") or {}
    name = str(involved.get("name", ""))
    pod = name if involved.get("kind") == "Pod" else ""
    message = str(event.get("message") or event.get("note") or "")
    return Signal(reason, message, pod, "", (str(involved.get("uid", "")), "event", reason), True, EVENT_GRACE)


def event_last_seen(event: dict[str, Any]) -> float:
    last = None
    for key in ("lastTimestamp", "eventTime", "firstTimestamp"):
        last = parse_time(event.get(key)) if last is None else last
    series_last = parse_time((event.get("series") or {}).get("lastObservedTime"))
    return max(x for x in (last, series_last, 0.0) if x is not None)


def event_active(event: dict[str, Any], pod: dict[str, Any] | None, now: float, window: float = 60.0,
                 newest_pod: float | None = None) -> bool:
    """Does a warning event still describe the present? Only while it recurs: its last occurrence is
    within `window`. For a pod, also while none of its containers has started and it is not done;
    for a controller (a FailedCreate of a ReplicaSet), only while no pod of the new revision was
    created after it (`newest_pod`: the latest creation time)."""
    last = event_last_seen(event)
    if now - last > window:
        return False
    if pod is not None:
        status = pod.get("status") or {}
        if status.get("phase") in ("Succeeded", "Failed"):
            return False
        started = any((cs.get("state") or {}).get("running") or (cs.get("state") or {}).get("terminated")
                      for cs in status.get("containerStatuses") or [])
        return not started
    return newest_pod is None or newest_pod < last


@dataclass
class FailureBudget:
    """Counts signal occurrences; `exceeded` once they pass `allowed`."""

    allowed: int
    first_seen: dict[tuple, float] = field(default_factory=dict)
    counted: set[tuple] = field(default_factory=set)
    last: Signal | None = None

    @property
    def count(self) -> int:
        return len(self.counted)

    fatal: Signal | None = None

    @property
    def exceeded(self) -> bool:
        return self.fatal is not None or self.count > self.allowed

    def observe(self, signals: list[Signal], now: float) -> list[Signal]:
        """Record what is visible now; return the signals that added an occurrence."""
        new: list[Signal] = []
        # waiting reasons last: when a crash and its CrashLoopBackOff show up together, the summary
        # names the back-off.
        for sig in sorted(signals, key=lambda s: s.persistent):
            first = self.first_seen.setdefault(sig.key, now)
            if sig.persistent and now - first < sig.grace:
                continue
            index = int(math.floor((now - first - sig.grace) / PERSIST_INTERVAL)) if sig.persistent else 0
            occurrence = (sig.key, index)
            if occurrence in self.counted:
                continue
            # a persisting signal counts its first sighting and each full interval since then
            for i in range(index + 1):
                if (sig.key, i) not in self.counted:
                    self.counted.add((sig.key, i))
            new.append(sig)
            self.last = sig
            if sig.fatal and self.fatal is None:
                self.fatal = sig
        return new
