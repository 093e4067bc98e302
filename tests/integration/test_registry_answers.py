"""A registry or token service that answers with gigabytes where a registry sends kB (a tag list, a
token): kade reads at most registry/transport.MAX_ANSWER_BYTES of it and says which host sent what.
A real registry cannot be made to do this, so the server here is a fake: a loopback HTTP server that
streams an endless JSON string (it never ends: without the cap, kade would fill its memory)."""
from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading

import pytest

from registry.transport import MAX_ANSWER_BYTES
from tests.fixtures.jsonserver import JsonHandler
from tests.fixtures.silent import ROOT


class Endless(JsonHandler):
    protocol_version = "HTTP/1.1"
    token_realm = ""

    def do_GET(self) -> None:   # noqa: N802 - http.server's name
        if self.token_realm and self.path.startswith("/v2/") and not self.headers.get("Authorization"):
            self.send_response(401)
            self.send_header("WWW-Authenticate", f'Bearer realm="{self.token_realm}",service="fake"')
            self.send_header("Content-Length", "0")
            return self.end_headers()
        if self.path == "/v2/":
            return self.send_json(200, {})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.write(b'8\r\n{"tags":\r\n')
        chunk = b'"' + b"x" * (1 << 20)
        try:
            while True:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                chunk = chunk[1:] if chunk.startswith(b'"') else chunk
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture
def endless():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Endless)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.parametrize("answer", ["tag list", "token"])
def test_an_endless_answer_is_cut_at_the_cap(endless, answer):
    """kade runs with 1.5 GB of address space: holding the answer (it did) ends in a MemoryError."""
    Endless.token_realm = f"http://{endless}/token" if answer == "token" else ""
    run = subprocess.run(["bash", "-c", 'ulimit -v 1500000; exec "$@"', "kade", sys.executable, "-m", "kade",
                          "image", "tags", "--insecure-registry", endless, f"{endless}/app"],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert f"sent more than {MAX_ANSWER_BYTES} bytes" in run.stderr, run.stderr[-2000:]
    assert ("token service" in run.stderr) == (answer == "token"), run.stderr


class BadNextPage(JsonHandler):
    """A tag list whose next page is on port 99999 (a URL no connection can be made to)."""
    asked = 0

    def do_GET(self) -> None:   # noqa: N802 - http.server's name
        if self.path == "/v2/":
            return self.send_json(200, {})
        BadNextPage.asked += 1
        self.send_response(200)
        body = b'{"name": "app", "tags": ["a"]}'
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Link", f'<http://{self.headers["Host"].split(":")[0]}:99999/v2/app/tags/list?last=a>; '
                                 'rel="next"')
        self.end_headers()
        self.wfile.write(body)


def test_a_next_page_on_an_impossible_port_is_a_clear_error_at_once():
    """A real registry cannot be made to name port 99999: the server is a fake. kade says which registry
    named what, once (no retries of a URL no attempt can reach), without a traceback."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), BadNextPage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host = f"127.0.0.1:{server.server_address[1]}"
    try:
        run = subprocess.run([sys.executable, "-m", "kade", "image", "tags", "--insecure-registry", host, f"{host}/app"],
                             capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    finally:
        server.shutdown()
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert f"registry {host} named a URL kade can't use: not a valid port in the URL: http://127.0.0.1:99999/" \
        in run.stderr, run.stderr[-2000:]
    assert BadNextPage.asked == 1
