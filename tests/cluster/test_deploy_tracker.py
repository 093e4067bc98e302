"""The tracker against the real cluster: watches resume after their connections drop, and one
tracked Deployment costs a handful of API requests (list + watch per kind, not polling)."""
from __future__ import annotations

import threading
import time

import pytest

from deployer.apply import apply
from deployer.kube import Kube
from deployer.options import track_options
from deployer.render import parse_documents
from deployer.tracker import Target, Tracker
from tests.fixtures.deploy import FAST_PROBE_OK, deployment

pytestmark = pytest.mark.cluster


def _apply_web(kube: Kube, ns: str, image: str, probe: dict) -> Target:
    import yaml

    [r] = parse_documents(yaml.safe_dump(deployment("web", image, replicas=2, probe=probe)), "test")
    r.namespace = ns
    api = kube.resource_for(r.api_version, r.kind)
    return Target(r.key, api, track_options(r), apply(kube, r, api).obj)


def test_watches_resume_after_dropped_connections(kube_cluster, kube_namespace):
    kube = Kube(kube_cluster.kubeconfig)
    target = _apply_web(kube, kube_namespace, kube_cluster.base_image, {**FAST_PROBE_OK, "initialDelaySeconds": 4})
    events: list[tuple[str, str]] = []
    tracker = Tracker(kube, lambda kind, message, **_: events.append((kind, message)), [target], timeout=120)
    result: list = []
    thread = threading.Thread(target=lambda: result.append(tracker.run()))
    thread.start()
    dropped = 0
    deadline = time.monotonic() + 60
    while dropped < 3 and time.monotonic() < deadline and thread.is_alive():
        time.sleep(1.0)
        with tracker.streams_lock:  # cut every open watch connection, as a network blip would
            streams = list(tracker.streams)
        for stream in streams:
            stream.interrupt()
        dropped += bool(streams)
    thread.join(120)
    assert result and result[0].ok, events
    assert dropped >= 1, "no watch connection was open to drop"
    assert any(kind == "warning" and "resuming" in message for kind, message in events), events


def test_api_requests_per_tracked_deployment(kube_cluster, kube_namespace, record_property):
    kube = Kube(kube_cluster.kubeconfig)
    target = _apply_web(kube, kube_namespace, kube_cluster.base_image, FAST_PROBE_OK)
    before = kube.request_count
    result = Tracker(kube, lambda *a, **k: None, [target], timeout=120).run()
    requests = kube.request_count - before
    record_property("api_requests", requests)
    assert result.ok
    # list+watch for deployments, replicasets, pods and events, plus log streams of 2 pods: never polling
    assert requests <= 4 * 2 + 2 * 2, requests


def test_watch_from_an_old_resource_version_catches_up(kube_cluster, kube_namespace):
    """A watch from resourceVersion 1: a server whose history was compacted answers 410 Gone (the
    tracker lists again), a young one replays its history (a fresh CI machine); either way the
    tracker's store ends up holding the namespace's objects. Which of the two happens depends on
    etcd's compaction, not on kade, so the 410 path itself is tested deterministically against a
    local server in tests/unit/test_deployer_kube.py."""
    import queue

    from kubernetes import client

    from deployer.tracker import _WatchSpec

    client.CoreV1Api(kube_cluster.api_client()).create_namespaced_config_map(
        kube_namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="marker"), data={"a": "1"}))
    kube = Kube(kube_cluster.kubeconfig)
    tracker = Tracker(kube, lambda *a, **k: None, [], timeout=30)
    spec = _WatchSpec("obj:/configmaps", f"/api/v1/namespaces/{kube_namespace}/configmaps")
    thread = threading.Thread(target=tracker._watch, args=(spec, "1"), daemon=True)
    thread.start()
    seen: list[str] = []
    deadline = time.monotonic() + 30
    try:
        while f"{kube_namespace}/marker" not in tracker.objects.get(spec.store, {}) and time.monotonic() < deadline:
            try:
                item = tracker.queue.get(timeout=1)
            except queue.Empty:
                continue
            seen.append(item[0])
            tracker._apply(item)
    finally:
        tracker.stop.set()
        with tracker.streams_lock:
            for stream in list(tracker.streams):
                stream.interrupt()
        thread.join(15)
    assert f"{kube_namespace}/marker" in tracker.objects.get(spec.store, {}), seen
    assert seen and set(seen) <= {"sync", "event", "warning"}, seen
