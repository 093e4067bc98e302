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


def test_watch_lists_again_after_410_gone(kube_cluster, kube_namespace):
    """The real API server answers a watch from resourceVersion 1 with 410 Expired (compacted)."""
    import queue

    from deployer.tracker import _WatchSpec

    kube = Kube(kube_cluster.kubeconfig)
    tracker = Tracker(kube, lambda *a, **k: None, [], timeout=30)
    spec = _WatchSpec("obj:/configmaps", f"/api/v1/namespaces/{kube_namespace}/configmaps")
    thread = threading.Thread(target=tracker._watch, args=(spec, "1"), daemon=True)
    thread.start()
    try:
        item = tracker.queue.get(timeout=30)
    except queue.Empty:
        item = None
    tracker.stop.set()
    with tracker.streams_lock:
        for stream in list(tracker.streams):
            stream.interrupt()
    thread.join(15)
    assert item is not None and item[0] == "sync", f"expected a fresh list after 410, got {item!r}"
