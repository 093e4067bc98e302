"""A thin Kubernetes API layer over the `kubernetes` client's ApiClient (kubeconfig loading, auth,
TLS): JSON requests by path, streaming watches, and discovery of kinds -> plural names. Everything
above it works on plain dicts. It counts requests (for bench/)."""
from __future__ import annotations

import json
import os
import socket
import threading
from typing import Any, Iterator

from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from deployer.errors import DeployError
from deployer.resources import ApiResource, split_api_version


class KubeError(DeployError):
    """An API call failed; `status` is the HTTP status (0 for connection errors)."""

    def __init__(self, message: str, status: int = 0, reason: str = "", details: dict | None = None):
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.details = details or {}


class Gone(KubeError):
    """410: the watch's resourceVersion is too old; list again."""


class Kube:
    def __init__(self, kubeconfig: str | None = None, context: str | None = None):
        cfg = k8s_client.Configuration()
        path = kubeconfig or os.environ.get("KUBECONFIG")
        try:
            if path or os.path.exists(os.path.expanduser("~/.kube/config")):
                k8s_config.load_kube_config(config_file=path, context=context, client_configuration=cfg,
                                            persist_config=False)
            else:
                k8s_config.load_incluster_config(client_configuration=cfg)
        except (k8s_config.ConfigException, OSError, TypeError) as exc:
            raise DeployError(f"cannot load the Kubernetes config ({path or '~/.kube/config or in-cluster'}): {exc}; "
                              "set KUBECONFIG or pass --kubeconfig") from None
        cfg.connection_pool_maxsize = 64
        cfg.retries = 2
        self.host = cfg.host
        self.api = k8s_client.ApiClient(cfg)
        self._lock = threading.Lock()
        self.request_count = 0
        self._discovery: dict[str, list[ApiResource]] = {}

    # ---- plain requests -------------------------------------------------------------------------

    def _send(self, method: str, path: str, query: dict[str, Any] | None, body: Any, content_type: str | None,
              timeout: Any) -> Any:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        params = [(k, v) for k, v in (query or {}).items() if v is not None]
        with self._lock:
            self.request_count += 1
        request = self.api.param_serialize(method, path, query_params=params, header_params=headers, body=body,
                                           auth_settings=["BearerToken"])
        try:
            return self.api.call_api(*request, _request_timeout=timeout)
        except k8s_client.ApiException as exc:
            raise KubeError(f"{method} {path}: {exc.reason}", exc.status or 0, str(exc.reason)) from None
        except Exception as exc:  # urllib3 connection errors and the like
            raise KubeError(f"cannot reach the Kubernetes API at {self.host}: {exc}", 0, "ConnectionError") from None

    def request(self, method: str, path: str, query: dict[str, Any] | None = None, body: Any = None,
                content_type: str | None = None, timeout: float = 60) -> dict[str, Any]:
        return self.request_status(method, path, query, body, content_type, timeout)[1]

    def request_status(self, method: str, path: str, query: dict[str, Any] | None = None, body: Any = None,
                       content_type: str | None = None, timeout: float = 60) -> tuple[int, dict[str, Any]]:
        if content_type is None and body is not None:
            content_type = "application/json"
        resp = self._send(method, path, query, body, content_type, timeout)
        data = resp.read()
        if not 200 <= resp.status <= 299:
            raise _error(method, path, resp.status, data)
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
        """A streaming GET (watches, followed logs): the urllib3 response, status checked."""
        resp = self._send("GET", path, query, None, None, (10, timeout))
        if not 200 <= resp.status <= 299:
            raise _error("GET", path, resp.status, resp.read())
        return resp.response

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
        """Discovery for one kind; asks again once on a miss (a CRD may just have been established)."""
        for refresh in (False, True):
            for res in self._group_version(api_version, refresh):
                if res.kind == kind:
                    return res
        raise DeployError(f"the cluster does not know kind {kind} in {api_version}: is its CRD installed, "
                          f"or is the apiVersion wrong? (see `kubectl api-resources`)")

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


def _error(method: str, path: str, status: int, data: bytes) -> KubeError:
    try:
        body = json.loads(data)
    except (ValueError, TypeError):
        body = {}
    message = body.get("message") or (data[:300].decode(errors="replace") if data else "") or f"HTTP {status}"
    reason = body.get("reason") or ""
    cls = Gone if status == 410 else KubeError
    return cls(message, status, reason, body.get("details") or {})
