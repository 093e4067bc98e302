"""deployer.kube: kubeconfig errors name the file, transient failures are retried (bounded and
reported), and an API server that never answers is given up on within the command's deadline.
The servers here are local listeners: a real API server cannot be made to hang or to answer 503
on demand (the end-to-end slow-webhook test covers the real retry path)."""
import http.server
import json
import socket
import threading
import time

import pytest

from deployer.errors import DeployError
from deployer.kube import Kube, KubeError, retry_delay, transient
from kube.config import kubeconfig_paths
from kube.errors import KubeConfigError
from tests.fixtures.jsonserver import JsonHandler

KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "http://127.0.0.1:%d"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"""


def test_paths_follow_kubectl():
    assert kubeconfig_paths("/a", {"KUBECONFIG": "/b"}) == ["/a"]
    assert kubeconfig_paths(None, {"KUBECONFIG": "/b::/c"}) == ["/b", "/c"]


@pytest.mark.parametrize("text,expected", [
    ("clusters: [a\nusers: {", "is not valid YAML at line"),
    ("just a string", "is not a kubeconfig"),
    ("- a\n- b\n", "is not a kubeconfig"),
])
def test_bad_kubeconfig_names_the_file(tmp_path, text, expected):
    path = tmp_path / "config"
    path.write_text(text)
    with pytest.raises(KubeConfigError) as err:
        Kube(str(path))
    assert str(path) in str(err.value) and expected in str(err.value)


def test_missing_kubeconfig_names_the_file(tmp_path):
    with pytest.raises(KubeConfigError, match="missing.yaml does not exist"):
        Kube(str(tmp_path / "missing.yaml"))


def test_unknown_context_names_the_file(tmp_path):
    path = tmp_path / "config"
    path.write_text(KUBECONFIG % 1)
    with pytest.raises(KubeConfigError) as err:
        Kube(str(path), context="nope")
    assert str(path) in str(err.value) and "nope" in str(err.value)


@pytest.mark.parametrize("status,message,reason,retried", [
    (429, "too many requests", "", True),
    (503, "unavailable", "", True),
    (504, "gateway timeout", "", True),
    (500, 'Internal error occurred: failed calling webhook "v.example.com": connection refused', "", True),
    (500, "etcdserver: request timed out", "", True),
    (500, "some other internal error", "", False),
    (0, "refused", "ConnectionError", True),
    (0, "did not answer", "Timeout", True),
    (0, "timeout ran out", "Deadline", False),
    (404, "not found", "", False),
    (409, "conflict", "Conflict", False),
    (422, "field is immutable", "Invalid", False),
])
def test_transient_errors(status, message, reason, retried):
    assert bool(transient(KubeError(message, status, reason))) == retried


def test_retry_delays_grow_and_respect_retry_after():
    assert [retry_delay(i) for i in range(7)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    assert retry_delay(0, 3.0) == 3.0 and retry_delay(0, 120.0) == 10.0


def _config(tmp_path, port):
    path = tmp_path / "config"
    path.write_text(KUBECONFIG % port)
    return str(path)


def test_a_server_that_never_answers_is_given_up_at_the_deadline(tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)  # accepts connections (the kernel does), never answers
    try:
        kube = Kube(_config(tmp_path, listener.getsockname()[1]), retry_window=60)
        kube.limit(3)
        start = time.monotonic()
        with pytest.raises(KubeError) as err:
            kube.request("GET", "/api/v1/namespaces/default")
        took = time.monotonic() - start
    finally:
        listener.close()
    assert took < 8, took
    assert "did not answer GET /api/v1/namespaces/default" in str(err.value) or "timeout ran out" in str(err.value)


class _Flaky(JsonHandler):
    failures = 2
    seen = 0

    def do_GET(self):  # noqa: N802
        type(self).seen += 1
        if type(self).seen <= type(self).failures:
            self.send_json(503, {"kind": "Status", "message": "the server is currently unable to handle the request",
                                 "code": 503})
        else:
            self.send_json(200, {"kind": "Namespace", "metadata": {"name": "default"}})


def test_transient_failures_are_retried_and_reported(tmp_path):
    server = http.server.HTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    reports = []
    try:
        kube = Kube(_config(tmp_path, server.server_address[1]),
                    report=lambda kind, message, **f: reports.append((kind, message)))
        assert kube.request("GET", "/api/v1/namespaces/default")["metadata"]["name"] == "default"
    finally:
        server.shutdown()
    assert [k for k, _ in reports] == ["retry", "retry"]
    assert "unavailable (503)" in reports[0][1] and "attempt 2" in reports[0][1]
    assert kube.retry_count == 2


class _Compacted(JsonHandler):
    """A watch from an old resourceVersion gets a 410 ERROR event (as a compacted API server sends);
    a list answers with one ConfigMap; a watch from that list's resourceVersion stays quiet."""
    requests: list = []

    def do_GET(self):  # noqa: N802
        type(self).requests.append(self.path)
        if "watch=true" in self.path and "resourceVersion=1&" in self.path + "&":
            body = json.dumps({"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired",
                                                           "message": "too old resource version: 1 (4360)"}}) + "\n"
        elif "watch=true" in self.path:
            body = ""
        else:
            body = json.dumps({"kind": "ConfigMapList", "metadata": {"resourceVersion": "4400"},
                               "items": [{"metadata": {"name": "marker", "namespace": "ns", "resourceVersion": "4399"}}]})
        self.send_json(200, body)


def test_watch_lists_again_after_410_gone(tmp_path):
    """The fault a real server shows only after etcd compacted its history (so not on a fresh machine)."""
    import queue

    from deployer.tracker import Tracker, _WatchSpec

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Compacted)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    kube = Kube(_config(tmp_path, server.server_address[1]))
    tracker = Tracker(kube, lambda *a, **k: None, [], timeout=30, watch_timeout=1)
    spec = _WatchSpec("obj:/configmaps", "/api/v1/namespaces/ns/configmaps")
    thread = threading.Thread(target=tracker._watch, args=(spec, "1"), daemon=True)
    thread.start()
    try:
        item = tracker.queue.get(timeout=10)
    except queue.Empty:
        item = None
    finally:
        tracker.stop.set()
        server.shutdown()
    assert item is not None and item[0] == "sync" and item[2][0]["metadata"]["name"] == "marker", item
    assert any("watch=true" in p and "resourceVersion=1&" in p + "&" for p in _Compacted.requests)
    assert any("watch" not in p for p in _Compacted.requests), "listed again after the 410"


_WIDGET_CRD = {"metadata": {"name": "widgets.example.com"},
               "spec": {"group": "example.com", "names": {"kind": "Widget"},
                        "versions": [{"name": "v1", "served": True}, {"name": "v0", "served": False}]}}


class _LateDiscovery(JsonHandler):
    """Discovery of example.com/v1 answers 404 for the first `misses` asks, as an API server does for a
    moment after a CRD is Established (a race a real server shows only now and then)."""
    misses = 3
    crds: list = [_WIDGET_CRD]
    asks = 0

    def do_GET(self):  # noqa: N802
        if self.path.startswith("/apis/apiextensions.k8s.io/v1/customresourcedefinitions"):
            self.send_json(200, {"kind": "CustomResourceDefinitionList", "items": type(self).crds})
        elif self.path.startswith("/apis/example.com/"):
            type(self).asks += 1
            if type(self).asks <= type(self).misses or not self.path.startswith("/apis/example.com/v1"):
                self.send_json(404, {"kind": "Status", "code": 404, "message": "not found"})
            else:
                self.send_json(200, {"kind": "APIResourceList", "groupVersion": "example.com/v1", "resources": [
                    {"name": "widgets", "kind": "Widget", "namespaced": True, "verbs": ["get"]},
                    {"name": "widgets/status", "kind": "Widget", "namespaced": True, "verbs": ["get"]}]})
        else:
            self.send_json(404, {"kind": "Status", "code": 404, "message": "not found"})


@pytest.mark.parametrize("misses,crds,api_version,expected", [
    (3, [_WIDGET_CRD], "example.com/v1", "widgets"),  # served a moment after its CRD: waited for
    (0, [_WIDGET_CRD], "example.com/v1", "widgets"),
    (10**6, [_WIDGET_CRD], "example.com/v1", "CRD widgets.example.com defines kind Widget in example.com/v1, but"),
    (10**6, [], "example.com/v1", "the cluster does not know kind Widget in example.com/v1"),  # no CRD: at once
    (10**6, [_WIDGET_CRD], "example.com/v0", "the cluster does not know kind Widget"),  # a version not served
])
def test_a_kind_whose_crd_exists_is_waited_for(tmp_path, misses, crds, api_version, expected):
    _LateDiscovery.misses, _LateDiscovery.crds, _LateDiscovery.asks = misses, crds, 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _LateDiscovery)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        kube = Kube(_config(tmp_path, server.server_address[1]), discovery_settle=2.0)
        try:
            outcome = kube.resource_for(api_version, "Widget").plural
        except DeployError as exc:
            outcome = str(exc)
    finally:
        server.shutdown()
    assert outcome == expected if expected == "widgets" else expected in outcome, outcome
    if "does not know" in expected:
        assert _LateDiscovery.asks <= 2, _LateDiscovery.asks   # no wait without a CRD that serves the kind
    if "but" in expected:
        assert _LateDiscovery.asks > 3 and "within 2 s" in outcome, (_LateDiscovery.asks, outcome)  # asked on
