"""Following container logs during one deploy (thin I/O).

Each followed container gets a thread reading its `follow=true` log stream and putting
("log", target, pod, container, line) on the queue of the tracker attached at the time (in order with
its watch events, so "until the pod is ready" cuts at the right line), or on a queue of its own while
no tracker is attached (between stages), handed over to the next one. The tracker filters the lines by
the target's show-logs-until, skip-logs and log-regex. The followers belong to the deploy, not to one stage:
a tracker stops the streams of its targets when its stage ends, except those shown until
EndOfDeploy, which keep streaming while later stages are tracked and stop when the deploy closes them.
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Callable

from deployer.kube import Kube, KubeError, WatchStream, iter_lines
from deployer.signals import parse_time


class LogFollowers:
    def __init__(self, kube: Kube):
        self.kube = kube
        self.queue: queue.Queue[tuple] = queue.Queue()  # lines while no tracker is attached
        self.sink: queue.Queue[tuple] = self.queue
        self.followed: set[tuple] = set()
        self.lock = threading.Lock()
        self.streams: dict[int, tuple[Any, WatchStream]] = {}  # id(holder) -> (target, stream)
        # the targets whose streams were stopped, by id (holding them keeps their ids from being reused)
        self.stopped: dict[int, Any] = {}
        self.closed = threading.Event()
        self.ready_pods: dict[str, float] = {}  # pod uid -> when it first became Ready (show-logs-until PodIsReady)

    def follow(self, target: Any, namespace: str, pod: dict[str, Any], container: str, key: tuple) -> None:
        """Stream `container`'s log once per `key` (pod uid, container, restart count)."""
        with self.lock:
            if key in self.followed or self.closed.is_set() or id(target) in self.stopped:
                return
            self.followed.add(key)
        name = str((pod.get("metadata") or {}).get("name", ""))
        thread = threading.Thread(target=self._read, args=(target, namespace, name, pod, container), daemon=True,
                                  name=f"logs {name}/{container}")
        thread.start()

    def _read(self, target: Any, namespace: str, name: str, pod: dict[str, Any], container: str) -> None:
        path = f"/api/v1/namespaces/{namespace}/pods/{name}/log"
        try:
            resp = self.kube.open(path, {"container": container, "follow": "true", "timestamps": "true",
                                         "limitBytes": 16 << 20}, 3600)
        except KubeError:
            return
        holder = WatchStream(resp)
        with self.lock:
            if self.closed.is_set() or id(target) in self.stopped:
                holder.close()
                return
            self.streams[id(holder)] = (target, holder)
        try:
            for line in iter_lines(resp, 8192):
                if self.closed.is_set() or id(target) in self.stopped:
                    return
                stamp, text = split_timestamp(line.decode("utf-8", "replace").rstrip("\r"))
                item = ("log", target, pod, container, text, stamp)
                with self.lock:
                    self.sink.put(item)
        except Exception:  # the stream was interrupted at the end of tracking, or the pod went away
            return
        finally:
            with self.lock:
                self.streams.pop(id(holder), None)
            holder.close()

    def stop(self, targets: list[Any], keep: Callable[[Any], bool] = lambda t: False) -> None:
        """Stop the streams of `targets` except those `keep` says go on (shown until the end of the deploy)."""
        with self.lock:
            for t in targets:
                if not keep(t):
                    self.stopped[id(t)] = t
            doomed = [holder for target, holder in self.streams.values() if id(target) in self.stopped]
        for holder in doomed:
            holder.interrupt()

    def close(self) -> None:
        """The deploy is over: stop every stream."""
        self.closed.set()
        with self.lock:
            holders = [holder for _, holder in self.streams.values()]
        for holder in holders:
            holder.interrupt()

    def attach(self, sink: queue.Queue) -> None:
        """From now on put lines on `sink` (a tracker's queue), after those received while detached."""
        with self.lock:
            try:
                while True:
                    sink.put(self.queue.get_nowait())
            except queue.Empty:
                pass
            self.sink = sink

    def detach(self) -> None:
        """The tracker is done: keep the lines until the next one attaches."""
        with self.lock:
            self.sink = self.queue


def split_timestamp(line: str) -> tuple[float | None, str]:
    """A line of a log read with `timestamps=true` ("2026-11-26T10:00:00.123456789Z text") -> (epoch
    seconds, text); a line without a readable timestamp is (None, line)."""
    head, sep, rest = line.partition(" ")
    stamp = parse_time(head) if "T" in head else None
    if stamp is None:
        return None, line
    return stamp, rest if sep else ""
