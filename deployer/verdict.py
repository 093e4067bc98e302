"""The tracking verdict of one resource, a pure function of what was observed, the time and the
options (kstatus' shape): `judge(observation, memory, now, options, settle)` -> (memory, decision);
`next_state(outcome, fail_mode, hoping)` is what the resource becomes by its fail mode.

`Observation` is what the watches show now (the object, its new revision's pods, its ReplicaSets,
its recent events, the nodes); `Memory` is what earlier observations left (occurrences counted,
when something last changed, since when it has been ready). `judge` never mutates its inputs; the
tracker feeds it, reports what the decision says and acts on it (fail modes, logs, summaries).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from deployer import readiness
from deployer.durations import format_duration
from deployer.options import HOPE, IGNORE, TrackOptions
from deployer.readiness.common import Status
from deployer.objects import involved_uid as _involved_uid, name as _name, resource_version as _rv, uid as _uid
from deployer.resources import ResourceKey
from deployer.revision import expected_replicas
from deployer.scheduling import scheduling
from deployer.signals import (NEVER_FITS_GRACE, FailureBudget, Signal, event_active, event_signal, parse_time,
                              pod_signals)
from deployer.summary import split_reason

READY, FAILED = "ready", "failed"
IGNORED, HOPING = "ignored", "hoping"  # a failure under fail-mode IgnoreAndContinue… / HopeUntilEnd…


@dataclass(frozen=True)
class Observation:
    key: ResourceKey
    obj: dict[str, Any] | None
    pods: list[dict[str, Any]] = field(default_factory=list)  # the new revision's pods
    replicasets: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)  # events of the object and those pods
    nodes: list[dict[str, Any]] | None = None  # None: not known (not listed, or not allowed)


@dataclass
class Memory:
    budget: FailureBudget
    last_activity: float
    fingerprint: tuple = ()
    ready_since: float | None = None  # first moment of the current unbroken run of "ready"
    settle_restarts: int = -1  # container restarts of the new pods when that run started
    started_seen: dict[tuple[str, str], float] = field(default_factory=dict)  # (pod uid, container) -> passed startupProbe

    @classmethod
    def start(cls, options: TrackOptions, now: float) -> "Memory":
        return cls(FailureBudget(options.failures_allowed_per_replica), now)


@dataclass(frozen=True)
class Decision:
    status: Status  # what to show (a ready workload that is still settling is progressing)
    outcome: str | None = None  # READY | FAILED | None (keep watching)
    reason: str = ""  # of a failure
    message: str = ""
    signal: Signal | None = None  # the occurrence behind a failure, if one
    counted: tuple[Signal, ...] = ()  # occurrences that were added now (warnings to show)
    allowed: int = 0  # occurrences the resource may have
    occurrences: int = 0


def judge(obs: Observation, memory: Memory, now: float, options: TrackOptions, settle: float) -> tuple[Memory, Decision]:
    """The next memory and the decision for `obs` seen at `now` (seconds since the epoch)."""
    mem = copy.deepcopy(memory)
    group, kind = obs.key.group, obs.key.kind
    status = readiness.evaluate(obs.obj, group, kind, obs.replicasets)
    signals, waiting = _signals(obs, mem, now, options)
    if waiting and not status.ready:
        status = readiness.progressing(f"{status.message}; {waiting}" if status.message else waiting)
    fingerprint = (_rv(obs.obj), tuple(sorted(_rv(p) for p in obs.pods)), len(obs.events), status)
    if fingerprint != mem.fingerprint:
        mem.fingerprint, mem.last_activity = fingerprint, now
    allowed = options.failures_allowed_per_replica * expected_replicas(group, kind, obs.obj)
    mem.budget.allowed = allowed
    counted = tuple(mem.budget.observe(signals, now))
    base: dict[str, Any] = dict(counted=counted, allowed=allowed, occurrences=mem.budget.count)
    if not status.ready:
        mem.ready_since = None
    elif _settling(obs, mem, now, settle):
        status = readiness.progressing(f"ready; confirming it stays ready for {settle:g}s")
    if status.ready:
        return mem, Decision(status, READY, **base)
    if status.failed:
        reason, message = split_reason(status.message)
        return mem, Decision(status, FAILED, reason, message, **base)
    if mem.budget.exceeded and mem.budget.last is not None:
        sig = mem.budget.fatal or mem.budget.last
        return mem, Decision(status, FAILED, sig.reason, sig.message, sig, **base)
    idle = now - mem.last_activity
    if idle > options.no_activity_timeout:
        return mem, Decision(status, FAILED, "NoActivity", f"nothing changed for {format_duration(idle)} "
                             f"(no-activity-timeout); last status: {status.message}", **base)
    return mem, Decision(status, **base)


def next_state(outcome: str | None, fail_mode: str, hoping: bool) -> str | None:
    """What a resource becomes on `outcome`: READY (a held failure is dropped), a failure as its fail
    mode says (FAILED, IGNORED, or HOPING: held until everything else is done), or None: watched on
    (a failure already held is not held again)."""
    if outcome == READY:
        return READY
    if outcome != FAILED or hoping:
        return None
    return {IGNORE: IGNORED, HOPE: HOPING}.get(fail_mode, FAILED)


def _signals(obs: Observation, mem: Memory, now: float, options: TrackOptions) -> tuple[list[Signal], str]:
    """Occurrences visible now, and why a pod is waiting to be scheduled (shown, not counted)."""
    count_exits = (obs.key.group, obs.key.kind) != ("batch", "Job")
    signals: list[Signal] = []
    waiting = ""
    for pod in obs.pods:
        uid = _uid(pod)
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            if cs.get("started"):
                mem.started_seen.setdefault((uid, str(cs.get("name", ""))), now)
        signals += pod_signals(pod, now, count_exits=count_exits, started_seen=mem.started_seen,
                               probe_windows=options.ignore_readiness_probe_fails_for)
        placed = scheduling(pod, obs.nodes, obs.events)
        if placed is not None and placed.state == "never":
            signals.append(Signal("Unschedulable", f"can never be scheduled: {placed.message}", _name(pod), "",
                                  (uid, "never-fits"), persistent=True, grace=NEVER_FITS_GRACE, fatal=True))
        elif placed is not None and not waiting:
            waiting = f"pod {_name(pod)} {placed.message}"
    pods_by_uid = {_uid(p): p for p in obs.pods}
    created = [t for t in (parse_time((p.get("metadata") or {}).get("creationTimestamp")) for p in obs.pods) if t]
    newest = max(created) if created else None
    for event in obs.events:
        sig = event_signal(event)
        if sig is not None and event_active(event, pods_by_uid.get(_involved_uid(event)), now, newest_pod=newest):
            signals.append(sig)
    return signals, waiting


def _settling(obs: Observation, mem: Memory, now: float, settle: float) -> bool:
    """True while a ready workload has not yet stayed ready (with no exited container) for `settle`."""
    if settle <= 0 or not needs_settle(obs.key.group, obs.key.kind, obs.obj):
        return False
    restarts = sum(_restarts(p) for p in obs.pods)
    if any(_container_terminated(p) for p in obs.pods) or restarts != mem.settle_restarts:
        mem.ready_since, mem.settle_restarts = None, restarts
        return True
    if mem.ready_since is None:
        mem.ready_since = now
    return now - mem.ready_since < settle


def needs_settle(group: str, kind: str, obj: dict | None) -> bool:
    """Long-running workloads settle; finished ones (a completed Job, a Succeeded pod) do not."""
    if (group, kind) == ("", "Pod"):
        return ((obj or {}).get("status") or {}).get("phase") == "Running"
    return group == "apps" and kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet")


def _container_terminated(pod: dict) -> bool:
    return any((cs.get("state") or {}).get("terminated") for cs in (pod.get("status") or {}).get("containerStatuses") or [])


def _restarts(pod: dict) -> int:
    total = 0
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        value = cs.get("restartCount")
        total += value if isinstance(value, int) else 0
    return total


