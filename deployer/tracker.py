"""Track resources until they are ready or fail, driven by watches.

For every (kind, namespace) that holds an unresolved target, a thread lists then watches it from the
list's resourceVersion, resuming from the last seen resourceVersion after a dropped connection and
listing again after 410 Gone. Workloads also watch their namespace's Pods (and ReplicaSets for
Deployments) and Events. Everything lands on one queue; the tracking loop applies it to a small
store and feeds each target's objects into the pure rules (deployer.readiness, deployer.signals),
looking only at the pods of the NEW revision. Container logs of those pods are followed too.
"""
from __future__ import annotations

import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from deployer import readiness
from deployer.durations import format_duration
from deployer.kube import Gone, Kube, KubeError, iter_lines
from deployer.logs import LogFollowers
from deployer.objects import involved_uid as _involved_uid, name as _name, namespace as _ns, uid as _uid
from deployer.options import (END_OF_DEPLOY, FAIL_FAST, HOPE, IGNORE, NON_BLOCKING, TrackOptions,
                              log_line_shown)
from deployer.readiness.common import condition, condition_is, generation_pending, owned_by
from deployer.resources import ApiResource, ResourceKey
from deployer.revision import new_revision_pods, watches_pods
from deployer.signals import FailureBudget, Signal, parse_time
from deployer.summary import Failure, clean, container_state
from deployer.verdict import HOPING, IGNORED, READY, Memory, Observation, judge, next_state

Report = Callable[..., None]
LOG_BUFFER = 30
# A workload must stay ready this long, with none of its new pods' containers exited, before the
# verdict: a container that crashes right after starting is Ready for a moment without a probe.
DEFAULT_SETTLE = 2.0
EVENT_SLACK = 5.0  # seconds: events older than the tracking start (minus this) are history
STILL_EVERY = 20.0  # seconds: a resource whose status has not changed is reported again (CI logs show progress)
NODES_EVERY = 10.0  # seconds between two lists of the nodes while a pod is unschedulable


@dataclass
class Target:
    key: ResourceKey
    api: ApiResource
    options: TrackOptions = field(default_factory=TrackOptions)
    obj: dict[str, Any] | None = None  # as returned by apply, then kept current by the watch
    status: readiness.Status = readiness.Status(readiness.PROGRESSING, "waiting")
    verdict: str | None = None  # "ready" | "failed" | "ignored"
    hoping: Failure | None = None
    failure: Failure | None = None
    memory: Memory = field(default_factory=lambda: Memory(FailureBudget(1), 0.0))
    ready_at: float | None = None
    last_shown: float = 0.0  # when its status was last reported (CI shows a stuck resource again)

    @property
    def blocking(self) -> bool:
        return self.options.termination_mode != NON_BLOCKING

    @property
    def done(self) -> bool:
        return self.verdict is not None


@dataclass
class TrackResult:
    ok: bool
    failures: list[Failure]
    elapsed: float
    targets: list[Target]
    ignored: list[Failure] = field(default_factory=list)  # failed, but fail-mode IgnoreAndContinueDeployProcess


@dataclass(frozen=True)
class _WatchSpec:
    store: str  # "obj:<group>/<kind>" | "pods" | "replicasets" | "events"
    path: str
    field_selector: str | None = None


class Tracker:
    def __init__(self, kube: Kube, report: Report, targets: list[Target], timeout: float, *,
                 tick: float = 0.2, watch_timeout: float = 55.0, settle: float = DEFAULT_SETTLE,
                 logs: LogFollowers | None = None):
        """`logs`: the deploy's log followers, shared by the trackers of its stages (show-logs-until
        EndOfDeploy streams outlive their stage); without it the tracker has its own."""
        self.kube, self.report, self.targets, self.timeout = kube, report, targets, timeout
        self.own_logs = logs is None
        self.followers = logs if logs is not None else LogFollowers(kube)
        self.settle = settle
        self.tick, self.watch_timeout = tick, watch_timeout
        self.queue: queue.Queue[tuple] = queue.Queue()
        self.stop = threading.Event()
        self.streams: set[Any] = set()
        self.streams_lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self.objects: dict[str, dict[str, dict[str, Any]]] = {}  # store -> "ns/name" -> obj
        self.delivered: dict[_WatchSpec, set[str]] = {}  # what each watch put into the stores
        self.pods: dict[str, dict[str, Any]] = {}  # "ns/name" -> pod
        self.replicasets: dict[str, dict[str, Any]] = {}
        self.events: dict[str, dict[str, Any]] = {}
        self.logs: dict[tuple[str, str], deque[str]] = {}
        self.reported_events: set[tuple] = set()
        self.nodes: list[dict[str, Any]] | None = None
        self.nodes_listed: float | None = None
        self.started = time.time()

    # ---- public --------------------------------------------------------------------------------

    def run(self) -> TrackResult:
        start = time.monotonic()
        now = time.time()
        self.followers.attach(self.queue)
        for t in self.targets:
            t.memory = Memory.start(t.options, now)
            t.last_shown = now
        self._evaluate_all(now, initial=True)
        if not self._finished():
            self._start_watches()
        try:
            while not self._finished():
                remaining = self.timeout - (time.monotonic() - start)
                if remaining <= 0:
                    self._time_out()
                    break
                self._drain(min(self.tick, remaining))
                self._evaluate_all(time.time())
            self._end_hope()
        finally:
            self._shutdown()
        failures = [t.failure for t in self.targets if t.verdict == "failed" and t.failure]
        if not failures:
            for t in self.targets:
                if not t.done:
                    self.report("info", f"{t.key.short}: not waited for (track-termination-mode {NON_BLOCKING}): "
                                        f"{t.status.message or t.status.state}", resource=str(t.key))
        ignored = [t.failure for t in self.targets if t.verdict == "ignored" and t.failure]
        return TrackResult(not failures, failures, time.monotonic() - start, self.targets, ignored)

    # ---- watches -------------------------------------------------------------------------------

    def _start_watches(self) -> None:
        specs: set[_WatchSpec] = set()
        by_kind: dict[tuple[str, str, str], list[Target]] = {}
        for t in self.targets:
            if t.done:
                continue
            by_kind.setdefault((t.api.api_version, t.api.plural, t.key.namespace), []).append(t)
        for (_, _, ns), group in by_kind.items():
            api = group[0].api
            selector = f"metadata.name={group[0].key.name}" if len(group) == 1 else None
            specs.add(_WatchSpec(_store_name(api), api.path(ns), selector))
            if any(watches_pods(t.key.group, t.key.kind) for t in group):
                specs.add(_WatchSpec("pods", f"/api/v1/namespaces/{ns}/pods"))
                specs.add(_WatchSpec("events", f"/api/v1/namespaces/{ns}/events"))
            if any((t.key.group, t.key.kind) == ("apps", "Deployment") for t in group):
                specs.add(_WatchSpec("replicasets", f"/apis/apps/v1/namespaces/{ns}/replicasets"))
        for spec in sorted(specs, key=lambda s: (s.store, s.path)):
            thread = threading.Thread(target=self._watch, args=(spec,), name=f"watch {spec.path}", daemon=True)
            thread.start()
            self.threads.append(thread)

    def _watch(self, spec: _WatchSpec, resource_version: str | None = None) -> None:
        """List (unless resuming from `resource_version`), then watch; resume after drops, list again after 410."""
        delay = 0.2
        while not self.stop.is_set():
            try:
                if resource_version is None:
                    listed = self.kube.request("GET", spec.path, {"fieldSelector": spec.field_selector})
                    resource_version = listed["metadata"]["resourceVersion"]
                    self.queue.put(("sync", spec, listed.get("items") or []))
                stream = self.kube.stream(spec.path, {"resourceVersion": resource_version, "allowWatchBookmarks": "true",
                                                      "timeoutSeconds": int(self.watch_timeout),
                                                      "fieldSelector": spec.field_selector}, self.watch_timeout + 10)
                with self.streams_lock:
                    self.streams.add(stream)
                try:
                    for event in stream:
                        if self.stop.is_set():
                            return
                        kind, obj = event.get("type"), event.get("object") or {}
                        if kind == "ERROR":
                            if obj.get("code") == 410:
                                raise Gone("watch expired", 410)
                            raise KubeError(obj.get("message", "watch error"), int(obj.get("code") or 0))
                        resource_version = (obj.get("metadata") or {}).get("resourceVersion", resource_version)
                        if kind != "BOOKMARK":
                            self.queue.put(("event", spec, kind, obj))
                    delay = 0.2
                finally:
                    with self.streams_lock:
                        self.streams.discard(stream)
                    stream.close()
            except Gone:
                resource_version = None  # too old: list again
            except Exception as exc:  # dropped connection, API restart: resume from resource_version
                if self.stop.is_set():
                    return
                self.queue.put(("warning", f"watch {spec.path} interrupted ({exc}); resuming"))
                self.stop.wait(delay)
                delay = min(delay * 2, 5.0)

    def _drain(self, wait: float) -> None:
        try:
            item = self.queue.get(timeout=wait)
        except queue.Empty:
            return
        while True:
            self._apply(item)
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                return

    def _apply(self, item: tuple) -> None:
        kind = item[0]
        if kind == "warning":
            self.report("warning", item[1])
        elif kind == "log":
            self._log_line(*item[1:])
        elif kind == "sync":  # a fresh list replaces what this watch had delivered before
            spec, items = item[1], item[2]
            target = self._store(spec.store)
            for key in self.delivered.pop(spec, set()):
                target.pop(key, None)
            for obj in items:
                target[_id(obj)] = obj
                if spec.store == "pods":
                    self._note_ready(obj)
            self.delivered[spec] = {_id(obj) for obj in items}
        elif kind == "event":
            spec, change, obj = item[1], item[2], item[3]
            store = spec.store
            if store == "pods":
                self._note_ready(obj)
            self.delivered.setdefault(spec, set()).add(_id(obj))
            target = self._store(store)
            if change == "DELETED":
                target.pop(_id(obj), None)
            else:
                target[_id(obj)] = obj

    def _note_ready(self, pod: dict) -> None:
        """Remember when a pod first became Ready (show-logs-until PodIsReady), once and for all."""
        cond = condition(pod, "Ready")
        if cond is not None and cond.get("status") == "True" and _uid(pod) not in self.followers.ready_pods:
            self.followers.ready_pods[_uid(pod)] = parse_time(cond.get("lastTransitionTime")) or time.time()

    def _store(self, store: str) -> dict[str, dict[str, Any]]:
        if store == "pods":
            return self.pods
        if store == "replicasets":
            return self.replicasets
        if store == "events":
            return self.events
        return self.objects.setdefault(store, {})

    # ---- evaluation ----------------------------------------------------------------------------

    def _evaluate_all(self, now: float, initial: bool = False) -> None:
        for t in self.targets:
            if t.verdict in ("ready", "failed", "ignored"):
                continue
            if not initial:
                live = self.objects.get(_store_name(t.api), {}).get(f"{t.key.namespace}/{t.key.name}")
                if live is not None:
                    t.obj = live
            self._evaluate(t, now, initial)

    def _related(self, t: Target) -> tuple[list[dict], list[dict], set[str]]:
        pods = [p for p in self.pods.values() if _ns(p) == t.key.namespace]
        rss = [r for r in self.replicasets.values() if _ns(r) == t.key.namespace]
        if t.key.group == "apps" and t.obj is not None and generation_pending(t.obj):
            # the controller has not caught up with the spec just applied: which pods are "new" is
            # not known yet (during a rollback the failing pods still look like the new revision)
            return [], rss, {_uid(t.obj)}
        mine = new_revision_pods(t.key.group, t.key.kind, t.obj, pods, rss)
        uids = {_uid(p) for p in mine}
        if t.obj is not None:
            uids.add(_uid(t.obj))
            if (t.key.group, t.key.kind) == ("apps", "Deployment"):
                rs = readiness.new_replicaset(t.obj, rss)
                if rs is not None:
                    uids.add(_uid(rs))
        return mine, rss, uids

    def _evaluate(self, t: Target, now: float, initial: bool) -> None:
        """Feed what the watches show into the pure verdict (deployer.verdict); report and act on it."""
        pods, rss, uids = self._related(t)
        events = [e for e in self.events.values() if _involved_uid(e) in uids and self._recent(e, pods)]
        observation = Observation(t.key, t.obj, pods, rss, events, self._nodes(pods, now))
        t.memory, decision = judge(observation, t.memory, now, t.options, self.settle)
        status = decision.status
        if status != t.status or initial:
            t.status, t.last_shown = status, now
            if not (initial and status.ready):
                self.report("status", f"{t.key.short}: {status.message or status.state}", resource=str(t.key),
                            state=status.state)
        elif now - t.last_shown >= STILL_EVERY and not initial:
            t.last_shown = now
            self.report("status", f"{t.key.short}: still {status.message or status.state} "
                                  f"(for {format_duration(now - t.memory.last_activity)})", resource=str(t.key),
                        state=status.state)
        self._show_events(t, events)
        if not initial:
            self._follow_logs(t, pods)
        for sig in decision.counted:
            self.report("warning", f"{t.key.short}: {clean(sig.describe())} "
                                   f"[{decision.occurrences}/{decision.allowed} failure(s) allowed]"
                                   + (" (fatal)" if sig.fatal else ""),
                        resource=str(t.key), reason=sig.reason, pod=sig.pod, container=sig.container)
        state = next_state(decision.outcome, t.options.fail_mode, hoping=t.hoping is not None)
        if state == READY:
            t.verdict, t.ready_at, t.hoping = "ready", now, None
            self.report("ready", f"{t.key.short} ready" + (f" ({status.message})" if status.message else ""),
                        resource=str(t.key))
        elif state is not None:
            self._fail(t, state, self._failure(t, decision.reason, decision.message, decision.signal, pods, events))

    def _nodes(self, pods: list[dict], now: float) -> list[dict] | None:
        """The cluster's nodes, listed when a pod is unschedulable (again at most every NODES_EVERY s);
        None when they cannot be listed (RBAC): then no pod is judged never to fit."""
        if not any(_unschedulable(p) for p in pods):
            return self.nodes
        if self.nodes_listed is None or now - self.nodes_listed >= NODES_EVERY:
            self.nodes_listed = now
            try:
                self.nodes = self.kube.request("GET", "/api/v1/nodes").get("items") or []
            except KubeError as exc:
                if self.nodes is None:
                    self.report("info", f"cannot list nodes ({exc}): unschedulable pods are waited for until the "
                                        "no-activity timeout")
        return self.nodes

    def _fail(self, t: Target, state: str, failure: Failure) -> None:
        """Act on a failure as `next_state` judged it (FAILED, IGNORED or HOPING)."""
        if state == IGNORED:
            t.verdict, t.failure = "ignored", failure
            self.report("warning", f"{t.key.short} failed but fail-mode {IGNORE} lets the deploy continue: "
                                   f"{failure.headline()}", resource=str(t.key), reason=failure.reason,
                        failure=failure.to_dict())
        elif state == HOPING:
            t.hoping = failure
            self.report("warning", f"{t.key.short}: {failure.reason}; fail-mode {HOPE}: still hoping it recovers "
                                   "before everything else is done", resource=str(t.key))
        else:
            t.verdict, t.failure = "failed", failure
            self.report("failed", failure.headline(), resource=str(t.key), reason=failure.reason)

    def _finished(self) -> bool:
        if any(t.verdict == "failed" for t in self.targets):
            return True
        waiting = [t for t in self.targets if t.blocking and not t.done]
        return all(t.hoping for t in waiting)

    def _end_hope(self) -> None:
        if any(t.verdict == "failed" for t in self.targets):
            return
        for t in self.targets:
            if t.hoping and not t.done:
                t.verdict, t.failure = "failed", t.hoping
                self.report("failed", f"{t.hoping.headline()} (still failing when everything else was done)",
                            resource=str(t.key), reason=t.hoping.reason)

    def _time_out(self) -> None:
        for t in self.targets:
            if t.done or not t.blocking:
                continue
            if t.hoping:
                t.verdict, t.failure = "failed", t.hoping
            else:
                pods, _, uids = self._related(t)
                events = [e for e in self.events.values() if _involved_uid(e) in uids and self._recent(e, pods)]
                t.verdict = "failed"
                t.failure = self._failure(t, "Timeout", f"not ready after {format_duration(self.timeout)}: "
                                          f"{t.status.message or t.status.state}", t.memory.budget.last, pods, events)
            self.report("failed", t.failure.headline(), resource=str(t.key), reason=t.failure.reason)

    # ---- failure details -----------------------------------------------------------------------

    def _failure(self, t: Target, reason: str, message: str, sig: Signal | None, pods: list[dict],
                 events: list[dict]) -> Failure:
        pod = next((p for p in pods if sig and _name(p) == sig.pod), None)
        if pod is None and sig is None:
            pod = next((p for p in pods if not condition_is(p, "Ready")), None)
        container = sig.container if sig else ""
        if pod is not None and not container:
            container = _first_unready_container(pod)
        failure = Failure(str(t.key), reason, message, _name(pod) if pod else (sig.pod if sig else ""), container)
        if pod is not None and container:
            failure.container_state = container_state(pod, container)
            failure.logs = self._last_logs(pod, container)
        pod_uid = _uid(pod) if pod else ""
        warnings = [e for e in events if e.get("type") == "Warning"]
        preferred = ([e for e in warnings if _event_matches(e, reason, container)]
                     or [e for e in warnings if _involved_uid(e) == pod_uid] or warnings)
        if preferred:
            latest = max(preferred, key=_event_time)
            failure.event = f"{latest.get('reason')}: {latest.get('message', '').strip()}"
        return failure

    def _last_logs(self, pod: dict, container: str) -> list[str]:
        name = container.replace(" (init)", "")
        buffered = self.logs.get((_uid(pod), name))
        if buffered:
            return list(buffered)
        restarts = 0
        for cs in ((pod.get("status") or {}).get("containerStatuses") or []) + ((pod.get("status") or {}).get("initContainerStatuses") or []):
            if cs.get("name") == name:
                restarts = int(cs.get("restartCount") or 0)
        path = f"/api/v1/namespaces/{_ns(pod)}/pods/{_name(pod)}/log"
        for previous in ([True, False] if restarts else [False]):
            try:
                resp = self.kube.open(path, {"container": name, "tailLines": 10, "previous": "true" if previous else None,
                                             "limitBytes": 65536}, 10)
                lines = [clean(line.decode("utf-8", "replace")) for line in iter_lines(resp, 4096)]
                resp.close()
                if lines:
                    return lines
            except KubeError:
                continue
        return []

    # ---- events, logs --------------------------------------------------------------------------

    def _recent(self, event: dict, pods: list[dict]) -> bool:
        if _involved_uid(event) in {_uid(p) for p in pods}:
            return True  # the new pods are new: all their events count
        return _event_time(event) >= self.started - EVENT_SLACK

    def _show_events(self, t: Target, events: list[dict]) -> None:
        for e in sorted(events, key=_event_time):
            key = (_uid(e),)  # once per event: its count goes up on every repeat (kubelet repeats many)
            if key in self.reported_events:
                continue
            self.reported_events.add(key)
            if e.get("type") == "Warning" or t.options.show_service_messages:
                involved = e.get("involvedObject") or {}
                self.report("event", f"{t.key.short}: {involved.get('kind', '').lower()}/{involved.get('name', '')}: "
                                     f"{e.get('reason')}: {clean(str(e.get('message', '')).strip())}",
                            resource=str(t.key), type=e.get("type"), reason=e.get("reason"))

    def _follow_logs(self, t: Target, pods: list[dict]) -> None:
        opts = t.options
        if opts.skip_logs:
            return
        for pod in pods:
            status = pod.get("status") or {}
            for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
                name = cs.get("name", "")
                state = cs.get("state") or {}
                if name in opts.skip_logs_for_containers or not (state.get("running") or state.get("terminated")):
                    continue
                self.followers.follow(t, _ns(pod), pod, name, (_uid(pod), name, int(cs.get("restartCount") or 0)))

    def _log_line(self, t: Target, pod: dict, container: str, line: str, stamp: float | None) -> None:
        text = clean(line)
        self.logs.setdefault((_uid(pod), container), deque(maxlen=LOG_BUFFER)).append(text)
        if not log_line_shown(t.options, text, controller_ready=t.verdict == "ready", stamp=stamp,
                              pod_ready_at=self.followers.ready_pods.get(_uid(pod))):
            return
        self.report("log", f"{_name(pod)}/{container}: {text}", resource=str(t.key), pod=_name(pod), container=container)

    # ---- shutdown ------------------------------------------------------------------------------

    def _shutdown(self) -> None:
        self.stop.set()
        with self.streams_lock:
            streams = list(self.streams)
        for stream in streams:
            stream.interrupt()
        failed = any(t.verdict == "failed" for t in self.targets)
        if self.own_logs or failed:
            self.followers.close()
        else:  # logs shown until EndOfDeploy go on streaming while the next stages are tracked
            self.followers.stop(self.targets, keep=lambda t: t.options.show_logs_until == END_OF_DEPLOY)
        self.followers.detach()
        # take the log lines already received so that the summary and the output are complete
        try:
            while True:
                item = self.queue.get_nowait()
                if item[0] == "log":
                    self._apply(item)
        except queue.Empty:
            pass


# ---- small helpers over object dicts -------------------------------------------------------------

def _store_name(api: ApiResource) -> str:
    return f"obj:{api.group}/{api.plural}"


def _id(obj: dict) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def _event_time(event: dict) -> float:
    for key in ("lastTimestamp", "eventTime", "firstTimestamp"):
        value = parse_time(event.get(key))
        if value is not None:
            return value
    return parse_time((event.get("metadata") or {}).get("creationTimestamp")) or 0.0


_EVENT_FOR_REASON = {
    "CrashLoopBackOff": ("BackOff",), "ContainerFailed": ("BackOff",), "ImagePullBackOff": ("Failed", "BackOff"),
    "ErrImagePull": ("Failed",), "ReadinessProbeFailed": ("Unhealthy",), "Unschedulable": ("FailedScheduling",),
    "CreateContainerConfigError": ("Failed",), "CreateContainerError": ("Failed",), "InvalidImageName": ("InspectFailed", "Failed"),
    "RunContainerError": ("Failed",), "OOMKilled": ("BackOff", "OOMKilling"),
}


def _event_matches(event: dict, reason: str, container: str) -> bool:
    """Is this the event that explains a failure with `reason` (in `container`)?"""
    wanted = _EVENT_FOR_REASON.get(reason, (reason,))
    if event.get("reason") not in wanted:
        return False
    field_path = str((event.get("involvedObject") or {}).get("fieldPath") or "")
    name = container.replace(" (init)", "")
    return not field_path or not name or f"{{{name}}}" in field_path


def _unschedulable(pod: dict) -> bool:
    return any(c.get("type") == "PodScheduled" and c.get("reason") == "Unschedulable"
               for c in (pod.get("status") or {}).get("conditions") or [])


def _first_unready_container(pod: dict) -> str:
    status = pod.get("status") or {}
    for cs in status.get("initContainerStatuses") or []:
        if not (cs.get("state") or {}).get("terminated") or (cs["state"]["terminated"].get("exitCode") or 0) != 0:
            if not cs.get("ready"):
                return f"{cs.get('name')} (init)"
    for cs in status.get("containerStatuses") or []:
        if not cs.get("ready"):
            return str(cs.get("name", ""))
    return ""


__all__ = ["Tracker", "Target", "TrackResult", "Failure", "owned_by", "FAIL_FAST"]
