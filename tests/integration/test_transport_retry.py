"""Retries on 429/5xx. A real registry can't be asked to answer 429 or 503 on demand, so this one
test uses a tiny HTTP server that only scripts those statuses (a fake of the fault, not of a
registry); everything else is tested against the real docker-registry."""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from registry.auth import CredentialResolver
from registry.client import ClientOptions, RegistryClient
from registry.errors import RegistryError
from registry.transport import RetryPolicy, Transport


@pytest.fixture
def scripted_server():
    script: list[tuple[int, dict[str, str]]] = []
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            hits.append(self.path)
            status, headers = script.pop(0) if script else (200, {})
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}", script, hits
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("statuses, expected_sleeps, final", [
    ([(429, {"Retry-After": "3"}), (503, {})], [3.0, "backoff"], 200),
    ([(500, {}), (502, {}), (504, {}), (503, {})], ["backoff"] * 3, 503),  # attempts exhausted
    ([(404, {})], [], 404),  # not retried
    ([(501, {})], [], 501),
])
def test_retry_statuses(scripted_server, statuses, expected_sleeps, final):
    host, script, hits = scripted_server
    script.extend(statuses)
    sleeps: list[float] = []
    transport = Transport(credentials=CredentialResolver(env={}), sleep=sleeps.append,
                          retry=RetryPolicy(attempts=4, base_delay=0.5, max_delay=1.0))
    resp = transport.request("GET", host, "/v2/")
    assert resp.status_code == final
    assert len(hits) == len(expected_sleeps) + 1
    for got, want in zip(sleeps, expected_sleeps):
        assert got == want if want != "backoff" else 0.25 <= got <= 1.0


def test_exhausted_retries_surface_as_registry_error(scripted_server):
    host, script, _ = scripted_server
    script.extend([(503, {})] * 10)
    client = RegistryClient(ClientOptions(credentials=CredentialResolver(env={}),
                                          retry=RetryPolicy(attempts=2, base_delay=0.001, max_delay=0.001)))
    with pytest.raises(RegistryError, match=rf"repository team/app on registry {host} failed: HTTP 503"):
        client.repository(f"{host}/team/app").get_manifest("v1")
