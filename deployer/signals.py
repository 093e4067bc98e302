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

PERSIST_INTERVAL = 5.0
# Problems that healthy clusters show for a moment (a kubelet's first configmap sync, a sandbox retry,
# a node not ready yet) count only once they have lasted this long while the pod is still not started.
EVENT_GRACE = 10.0
UNSCHEDULABLE_GRACE = 5.0

WAITING_FAILURES = frozenset({
    "CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError",
    "CreateContainerError", "InvalidImageName", "RunContainerError", "ErrImageNeverPull",
    "PreCreateHookError", "PreStartHookError", "PostStartHookError",
})
# Warning events that mean trouble by themselves; each new occurrence (event count) counts once.
EVENT_FAILURES = frozenset({"FailedMount", "FailedAttachVolume", "FailedCreate", "FailedCreatePodSandBox",
                            "FailedScheduling", "FailedPostStartHook", "FailedPreStopHook"})


@dataclass(frozen=True)
class Signal:
    reason: str
    message: str
    pod: str = ""
    container: str = ""
    key: tuple = ()
    persistent: bool = False
    grace: float = 0.0  # a persistent signal counts only after lasting this long

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


def readiness_ignore_window(probe: dict[str, Any] | None) -> float:
    """kubedog's window in which readiness probe failures are expected and ignored:
    initialDelay + timeout + (failureThreshold + successThreshold - 3) x period + period/2 + timeout."""
    probe = probe or {}
    initial = float(probe.get("initialDelaySeconds") or 0)
    period = float(probe.get("periodSeconds") or 10)
    timeout = float(probe.get("timeoutSeconds") or 1)
    failure = float(probe.get("failureThreshold") or 3)
    success = float(probe.get("successThreshold") or 1)
    return max(initial + timeout + (failure + success - 3) * period + period / 2 + timeout, 0.0)


def pod_signals(pod: dict[str, Any], now: float, *, count_exits: bool = True,
                probe_windows: dict[str, float] | None = None) -> list[Signal]:
    """Problems visible in one pod's status right now. `probe_windows` overrides the readiness
    ignore window per container (kade.io/ignore-readiness-probe-fails-for-<container>)."""
    meta = pod.get("metadata") or {}
    name, uid = str(meta.get("name", "")), str(meta.get("uid") or meta.get("name", ""))
    status = pod.get("status") or {}
    spec = pod.get("spec") or {}
    out: list[Signal] = []
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and cond.get("reason") == "Unschedulable":
            out.append(Signal("Unschedulable", str(cond.get("message") or ""), name, "", (uid, "Unschedulable"), True,
                              UNSCHEDULABLE_GRACE))
    if status.get("phase") == "Failed" and status.get("reason"):
        out.append(Signal(str(status["reason"]), str(status.get("message") or ""), name, "", (uid, "phase", status["reason"])))
    for cs in status.get("initContainerStatuses") or []:
        out += _container_signals(cs, name, uid, init=True, count_exits=True)
    probes = {c.get("name"): c.get("readinessProbe") for c in spec.get("containers") or []}
    windows = probe_windows or {}
    for cs in status.get("containerStatuses") or []:
        out += _container_signals(cs, name, uid, init=False, count_exits=count_exits)
        cname = str(cs.get("name", ""))
        running = (cs.get("state") or {}).get("running")
        if running and not cs.get("ready") and probes.get(cname) and status.get("phase") == "Running":
            started = parse_time(running.get("startedAt"))
            window = windows.get(cname, readiness_ignore_window(probes[cname]))
            if started is not None and now - started > window:
                restarts = int(cs.get("restartCount") or 0)
                out.append(Signal("ReadinessProbeFailed",
                                  f"not ready {now - started:.0f}s after start (ignore window {window:.0f}s)",
                                  name, cname, (uid, cname, "readiness", restarts), True))
    return out


def _container_signals(cs: dict[str, Any], pod: str, uid: str, init: bool, count_exits: bool) -> list[Signal]:
    out: list[Signal] = []
    cname = str(cs.get("name", ""))
    label = f"{cname} (init)" if init else cname
    restarts = int(cs.get("restartCount") or 0)
    state = cs.get("state") or {}
    waiting = state.get("waiting") or {}
    reason = waiting.get("reason")
    if reason in WAITING_FAILURES:
        out.append(Signal(str(reason), str(waiting.get("message") or ""), pod, label, (uid, cname, reason, restarts), True))
    if not count_exits:
        return out
    for terminated, index in ((state.get("terminated"), restarts), ((cs.get("lastState") or {}).get("terminated"), restarts - 1)):
        if not terminated or int(terminated.get("exitCode") or 0) == 0 and terminated.get("reason") != "OOMKilled":
            continue
        why = str(terminated.get("reason") or "Error")
        kind = "InitContainerFailed" if init else ("OOMKilled" if why == "OOMKilled" else "ContainerFailed")
        message = f"exited with code {terminated.get('exitCode')} ({why})"
        if terminated.get("message"):
            message += f": {terminated['message']}"
        out.append(Signal(kind, message, pod, label, (uid, cname, "exit", index)))
    return out


def event_signal(event: dict[str, Any]) -> Signal | None:
    """A Warning event that signals trouble: a persistent condition of its object (keyed by object
    and reason), counted after EVENT_GRACE while it stays active (see `event_active`)."""
    if event.get("type") != "Warning":
        return None
    reason = str(event.get("reason") or "")
    if reason not in EVENT_FAILURES:
        return None
    involved = event.get("involvedObject") or event.get("regarding") or {}
    name = str(involved.get("name", ""))
    pod = name if involved.get("kind") == "Pod" else ""
    message = str(event.get("message") or event.get("note") or "")
    if reason == "FailedScheduling":  # the same occurrence as the Unschedulable pod condition
        return Signal("Unschedulable", message, pod, "", (str(involved.get("uid", "")), "Unschedulable"), True,
                      UNSCHEDULABLE_GRACE)
    return Signal(reason, message, pod, "", (str(involved.get("uid", "")), "event", reason), True, EVENT_GRACE)


def event_active(event: dict[str, Any], pod: dict[str, Any] | None, now: float, window: float = 60.0) -> bool:
    """Does a warning event still describe the present? For a pod: while none of its containers
    has started and it is not done. For other objects: while the event recurred within `window`."""
    if pod is not None:
        status = pod.get("status") or {}
        if status.get("phase") in ("Succeeded", "Failed"):
            return False
        started = any((cs.get("state") or {}).get("running") or (cs.get("state") or {}).get("terminated")
                      for cs in status.get("containerStatuses") or [])
        return not started
    last = None
    for key in ("lastTimestamp", "eventTime", "firstTimestamp"):
        last = parse_time(event.get(key)) if last is None else last
    series_last = parse_time((event.get("series") or {}).get("lastObservedTime"))
    last = max(x for x in (last, series_last, 0.0) if x is not None)
    return now - last <= window


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

    @property
    def exceeded(self) -> bool:
        return self.count > self.allowed

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
        return new
