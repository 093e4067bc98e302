"""A thin Kubernetes API layer over the `kubernetes` client's ApiClient (auth, TLS): JSON requests by
path, streaming watches, and discovery of kinds -> plural names. Everything above it works on plain
dicts. It counts requests (for bench/).

Every request has a connect timeout of a few seconds and a read timeout bounded by the command's own
deadline (`Kube.limit`), so an API server that never answers is named within the time the user gave.
Transient failures (429, 502/503/504, an admission webhook that is not up yet, a dropped connection)
are retried with a growing delay, each retry reported, for at most RETRY_WINDOW and never past the
deadline. The configuration comes from kube/ (kube.config), as everywhere else.
"""
from __future__ import annotations

import json
import re
import socket
import threading
import time
from typing import Any, Callable, Iterator

from kubernetes import client as k8s_client

from deployer.errors import DeployError
from deployer.resources import ApiResource, split_api_version
from kube.config import load_configuration

CONNECT_TIMEOUT = 5.0  # seconds to open a connection to the API server
READ_TIMEOUT = 30.0  # seconds one plain request may wait for its answer (less when the deadline is nearer)
RETRY_WINDOW = 60.0  # seconds transient failures of one request are retried (bounded by the deadline too)
RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 5.0)  # then 5 s between attempts
DISCOVERY_SETTLE = 30.0  # seconds a kind whose CRD the cluster has may take to appear in discovery
_CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
_TRANSIENT_500 = re.compile(r"failed calling webhook|webhook.*(refused|timeout|deadline)|etcdserver|"
                            r"the server is currently unable|try again later|context deadline exceeded", re.I)
MAX_MESSAGE = 600  # characters of an API server's message kept in an error
Report = Callable[..., None]


class KubeError(DeployError):
    """An API call failed; `status` is the HTTP status (0 for connection errors)."""

    def __init__(self, message: str, status: int = 0, reason: str = "", details: dict | None = None,
                 retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.details = details or {}
        self.retry_after = retry_after


class Gone(KubeError):
    """410: the watch's resourceVersion is too old; list again."""


def transient(exc: KubeError) -> str | None:
    """Why a failed request is worth trying again ("" is falsy: not transient)."""
    if exc.status == 429:
        return "the API server asks to slow down (429)"
    if exc.status in (502, 503, 504):
        return f"the API server is unavailable ({exc.status})"
    if exc.status == 500 and _TRANSIENT_500.search(str(exc)):
        return "an admission webhook or the API server's storage failed" if "webhook" in str(exc).lower() \
            else "the API server failed"
    if exc.status == 0 and exc.reason in ("ConnectionError", "Timeout"):
        return "the API server did not answer" if exc.reason == "Timeout" else "the connection failed"
    return None


def retry_delay(attempt: int, retry_after: float | None = None) -> float:
    """Seconds before attempt `attempt + 1` (attempt counts from 0); Retry-After wins, capped at 10 s."""
    if retry_after is not None and retry_after > 0:
        return min(retry_after, 10.0)
    return RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]


class Kube:
    def __init__(self, kubeconfig: str | None = None, context: str | None = None, *, report: Report | None = None,
                 connect_timeout: float = CONNECT_TIMEOUT, read_timeout: float = READ_TIMEOUT,
                 retry_window: float = RETRY_WINDOW, discovery_settle: float = DISCOVERY_SETTLE):
        cfg = load_configuration(kubeconfig, context)
        cfg.connection_pool_maxsize = 64
        cfg.retries = 0  # retries are ours: bounded by the deadline and reported
        self.host = cfg.host
        self.api = k8s_client.ApiClient(cfg)
        self.report = report
        self.connect_timeout, self.read_timeout, self.retry_window = connect_timeout, read_timeout, retry_window
        self.discovery_settle = discovery_settle
        self.deadline: float | None = None  # time.monotonic() past which nothing more is waited for
        self._lock = threading.Lock()
        self.request_count = 0
        self.retry_count = 0
        self._discovery: dict[str, list[ApiResource]] = {}

    def limit(self, seconds: float | None) -> None:
        """Bound every later wait to `seconds` from now (None: only the per-request timeouts)."""
        self.deadline = None if seconds is None else time.monotonic() + seconds

    def extend(self, seconds: float) -> None:
        """Leave at least `seconds` from now (recording an outcome after the deadline passed)."""
        if self.deadline is not None:
            self.deadline = max(self.deadline, time.monotonic() + seconds)

    def _remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    # ---- plain requests -------------------------------------------------------------------------

    def _send_once(self, method: str, path: str, query: dict[str, Any] | None, body: Any, content_type: str | None,
                   read_timeout: float) -> Any:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        params = [(k, v) for k, v in (query or {}).items() if v is not None]
        with self._lock:
            self.request_count += 1
        request = self.api.param_serialize(method, path, query_params=params, header_params=headers, body=body,
                                           auth_settings=["BearerToken"])
        try:
            return self.api.call_api(*request, _request_timeout=(self.connect_timeout, read_timeout))
        except k8s_client.ApiException as exc:
            raise KubeError(f"{method} {path}: {exc.reason}", exc.status or 0, str(exc.reason)) from None
        except Exception as exc:  # urllib3 connection errors and the like
            timed_out = "timed out" in str(exc).lower() or "timeout" in type(exc).__name__.lower()
            what = (f"did not answer {method} {path} within {read_timeout:.0f}s" if timed_out
                    else f"cannot be reached ({_short(exc)})")
            raise KubeError(f"the Kubernetes API server at {self.host} {what}", 0,
                            "Timeout" if timed_out else "ConnectionError") from None

    def _send(self, method: str, path: str, query: dict[str, Any] | None, body: Any, content_type: str | None,
              timeout: float, *, bounded: bool = True, retry: bool = True) -> Any:
        """One request, retried while its failure is transient (see `transient`); `bounded`: its wait
        ends at the deadline."""
        started = time.monotonic()
        attempt = 0
        while True:
            remaining = self._remaining() if bounded else None
            if remaining is not None and remaining <= 0:
                raise KubeError(f"the command's timeout ran out before {method} {path} could be sent to the "
                                f"Kubernetes API server at {self.host}", 0, "Deadline")
            read_timeout = timeout if remaining is None else max(min(timeout, remaining), 1.0)
            try:
                resp = self._send_once(method, path, query, body, content_type, read_timeout)
                if not 200 <= resp.status <= 299:
                    raise _error(method, path, resp.status, resp.read(), resp.getheader("Retry-After"))
                return resp
            except KubeError as exc:
                why = transient(exc)
                delay = retry_delay(attempt, exc.retry_after)
                remaining = self._remaining() if bounded else None
                spent = time.monotonic() - started
                if not retry or not why or spent + delay > self.retry_window or (remaining is not None and remaining <= delay):
                    if why and attempt and retry:
                        raise type(exc)(f"{exc} (gave up after {attempt + 1} attempts in {spent:.0f}s)", exc.status,
                                        exc.reason, exc.details) from None
                    raise
                attempt += 1
                with self._lock:
                    self.retry_count += 1
                if self.report is not None:
                    self.report("retry", f"{method} {path}: {why}: {_short(exc, 200)}; attempt {attempt + 1} in "
                                         f"{delay:.1f}s (retried for up to {self.retry_window:.0f}s)",
                                method=method, path=path, attempt=attempt + 1, status=exc.status)
                time.sleep(delay)

    def request(self, method: str, path: str, query: dict[str, Any] | None = None, body: Any = None,
                content_type: str | None = None, timeout: float | None = None) -> dict[str, Any]:
        return self.request_status(method, path, query, body, content_type, timeout)[1]

    def request_status(self, method: str, path: str, query: dict[str, Any] | None = None, body: Any = None,
                       content_type: str | None = None, timeout: float | None = None) -> tuple[int, dict[str, Any]]:
        if content_type is None and body is not None:
            content_type = "application/json"
        resp = self._send(method, path, query, body, content_type, timeout or self.read_timeout)
        data = resp.read()
        return resp.status, (json.loads(data) if data else {})

    def get(self, path: str, query: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """The object at `path`, or None when it does not exist."""
        try:
            return self.request("GET", path, query)
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    def stream(self, path: str, query: dict[str, Any], timeout: float) -> "WatchStream":
        """A watch: JSON events, one per line."""
        return WatchStream(self.open(path, {**query, "watch": "true"}, timeout))

    def open(self, path: str, query: dict[str, Any], timeout: float) -> Any:
        """A streaming GET (watches, followed logs): the urllib3 response, status checked. `timeout` is
        the longest silence between two chunks, not bounded by the deadline (the caller stops it)."""
        return self._send("GET", path, query, None, None, timeout, bounded=False, retry=False).response


    # ---- discovery -----------------------------------------------------------------------------

    def _group_version(self, api_version: str, refresh: bool = False) -> list[ApiResource]:
        if api_version in self._discovery and not refresh:
            return self._discovery[api_version]
        group, version = split_api_version(api_version)
        path = f"/apis/{group}/{version}" if group else f"/api/{version}"
        data = self.get(path)
        found: list[ApiResource] = []
        for item in (data or {}).get("resources") or []:
            if "/" in item.get("name", ""):
                continue  # subresources (status, scale, log ...)
            found.append(ApiResource(group, version, item["kind"], item["name"], bool(item.get("namespaced")),
                                     list(item.get("verbs") or []), list(item.get("shortNames") or []),
                                     item.get("singularName") or ""))
        self._discovery[api_version] = found
        return found

    def resource_for(self, api_version: str, kind: str) -> ApiResource:
        """Discovery for one kind. A miss asks again; when a CRD in the cluster defines the kind, it keeps
        asking for up to `discovery_settle` seconds: the API server serves a new CRD's kind a moment after
        the CRD is Established, and a kind applied in between would fail."""
        found = self._find(api_version, kind, refresh=False) or self._find(api_version, kind, refresh=True)
        if found:
            return found
        crd = self._crd_defining(api_version, kind)
        if crd is None:
            raise DeployError(f"the cluster does not know kind {kind} in {api_version}: is its CRD installed, "
                              f"or is the apiVersion wrong? (see `kubectl api-resources`)")
        remaining = self._remaining()
        settle = self.discovery_settle if remaining is None else max(0.0, min(self.discovery_settle, remaining))
        give_up, delay = time.monotonic() + settle, 0.1
        while time.monotonic() < give_up:
            time.sleep(min(delay, max(0.0, give_up - time.monotonic())))
            delay = min(delay * 2, 2.0)
            found = self._find(api_version, kind, refresh=True)
            if found:
                return found
        raise DeployError(f"CRD {crd} defines kind {kind} in {api_version}, but the API server did not serve it "
                          f"within {settle:.0f} s: see its conditions (`kubectl get crd {crd} -o yaml`)")

    def _find(self, api_version: str, kind: str, refresh: bool) -> ApiResource | None:
        return next((res for res in self._group_version(api_version, refresh) if res.kind == kind), None)

    def _crd_defining(self, api_version: str, kind: str) -> str | None:
        """The name of a CRD in the cluster that serves `kind` in `api_version` (None: none, or not allowed
        to list CRDs)."""
        group, version = split_api_version(api_version)
        if not group:
            return None
        try:
            crds = (self.get(_CRDS) or {}).get("items") or []
        except KubeError as exc:
            if exc.status in (401, 403):
                return None
            raise
        for crd in crds:
            spec = crd.get("spec") or {}
            served = {v.get("name") for v in spec.get("versions") or [] if v.get("served")}
            if spec.get("group") == group and (spec.get("names") or {}).get("kind") == kind and version in served:
                return str((crd.get("metadata") or {}).get("name", ""))
        return None

    def find_kind(self, text: str) -> ApiResource:
        """Resolve what a user types (`deploy`, `deployment`, `Deployment.apps`, `widgets.example.com`)."""
        name, _, group = text.partition(".")
        wanted = name.lower()
        core = self.get("/api") or {}
        versions = [v for v in core.get("versions") or ["v1"]]
        groups = (self.get("/apis") or {}).get("groups") or []
        candidates = [v for v in versions] + [g["preferredVersion"]["groupVersion"] for g in groups if g.get("preferredVersion")]
        for api_version in candidates:
            g = split_api_version(api_version)[0]
            if group and g != group:
                continue
            for res in self._group_version(api_version):
                if wanted in (res.kind.lower(), res.plural, res.singular, *res.short_names):
                    return res
        raise DeployError(f"unknown kind {text!r}: use a kind, plural or short name the cluster knows (kubectl api-resources)")


def iter_lines(response: Any, max_line: int = 1 << 20) -> Iterator[bytes]:
    """Lines of a streaming response as they arrive; overlong lines are cut at `max_line` bytes."""
    buffer = b""
    for chunk in response.stream(16384, decode_content=True):
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            yield line
        if len(buffer) > max_line:
            yield buffer[:max_line]
            buffer = b""
    if buffer:
        yield buffer


class WatchStream:
    """Iterates the JSON events of a watch response; `close()` from another thread ends it."""

    def __init__(self, response: Any):
        self.response = response

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for line in iter_lines(self.response, max_line=64 << 20):
            if line.strip():
                yield json.loads(line)

    def close(self) -> None:
        """Called by the reading thread when done."""
        try:
            self.response.close()
        except Exception:  # the connection may already be broken
            pass

    def interrupt(self) -> None:
        """Called from ANOTHER thread: shut the socket down so that a blocked read returns at once
        (closing the response there would wait for the reader's lock)."""
        conn = getattr(self.response, "connection", None) or getattr(self.response, "_connection", None)
        sock = getattr(conn, "sock", None)
        if sock is None:
            return
        try:
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:
            pass


def _short(exc: Exception, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + "…"


def _error(method: str, path: str, status: int, data: bytes, retry_after: str | None = None) -> KubeError:
    try:
        body = json.loads(data)
    except (ValueError, TypeError):
        body = {}
    message = body.get("message") or (data[:300].decode(errors="replace") if data else "") or f"HTTP {status}"
    if len(message) > MAX_MESSAGE:  # a 422 can quote a whole pod template
        message = f"{message[:MAX_MESSAGE // 2]} … {message[-MAX_MESSAGE // 2:]}"
    reason = body.get("reason") or ""
    cls = Gone if status == 410 else KubeError
    try:
        after = float(retry_after) if retry_after else None
    except ValueError:
        after = None
    return cls(message, status, reason, body.get("details") or {}, after)
