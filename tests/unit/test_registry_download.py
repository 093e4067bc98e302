"""registry/download.py against a local HTTP(S) server. The server is scripted only to show what a
real web server won't do on demand (a 503 with Retry-After before the real answer, other bytes on a
second request, a redirect to plain http, an endless body); each path below says so."""
import hashlib
import http.server
import ssl
import subprocess
import threading

import pytest

from registry.download import DownloadError, download
from registry.transport import RetryPolicy

BODY = b"tool contents\n"
FAST = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.02, max_retry_after=0.05)


class Handler(http.server.BaseHTTPRequestHandler):
    """/flaky: 503 once, then the body; /missing: 404; /changing: other bytes each time; /huge: an
    undeclared 4 MiB body; /big: a declared 1 TiB; /to-*: a redirect to the server's `redirect_to`."""

    def do_GET(self):  # noqa: N802 - http.server API
        hits = self.server.hits  # type: ignore[attr-defined]
        if self.path == "/missing":
            return self._answer(404)
        if self.path == "/changing":
            hits["changing"] += 1
            return self._answer(200, f"version {hits['changing']}\n".encode())
        if self.path == "/huge":
            self.send_response(200)
            self.end_headers()
            for _ in range(64):
                self.wfile.write(b"z" * 65536)
            return
        if self.path == "/big":
            self.send_response(200)
            self.send_header("Content-Length", str(1 << 40))
            self.end_headers()
            return
        if self.path.startswith("/to-"):
            self.send_response(302)
            self.send_header("Location", self.server.redirect_to)  # type: ignore[attr-defined]
            self.end_headers()
            return
        if self.path == "/flaky" and hits["flaky"] == 0:
            hits["flaky"] += 1
            self.send_response(503)
            self.send_header("Retry-After", "0")
            self.end_headers()
            return
        self._answer(200, BODY)

    def _answer(self, code: int, body: bytes = b"") -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _serve(tls: tuple[str, str] | None = None) -> http.server.ThreadingHTTPServer:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.hits = {"flaky": 0, "changing": 0}  # type: ignore[attr-defined]
    if tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*tls)
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


@pytest.fixture
def server():
    srv = _serve()
    yield f"http://127.0.0.1:{srv.server_port}", srv.hits  # type: ignore[attr-defined]
    srv.shutdown()


@pytest.fixture
def tls_pair(tmp_path):
    """An HTTPS server (self-signed for 127.0.0.1; its certificate's path) and a plain HTTP one."""
    key, cert = tmp_path / "tls.key", tmp_path / "tls.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-keyout", str(key),
                    "-out", str(cert), "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    secure, plain = _serve((str(cert), str(key))), _serve()
    yield secure, plain, str(cert)
    secure.shutdown()
    plain.shutdown()


def test_download_retries_a_503_and_verifies(server, tmp_path):
    base, hits = server
    good = "sha256:" + hashlib.sha256(BODY).hexdigest()
    path, digest = download(f"{base}/flaky", tmp_path / "dl", good, retry=FAST)
    assert (path.read_bytes(), digest, hits["flaky"]) == (BODY, good, 1)
    assert path.name == "flaky" and path.stat().st_mode & 0o777 == 0o600
    assert path.parent.name == digest.split(":")[1]


@pytest.mark.parametrize("path, checksum, message", [
    ("/tool", "sha256:" + "0" * 64, "checksum mismatch"),
    ("/tool", "md5:abc", "only sha256"),
    ("/missing", None, "HTTP 404"),
    ("/huge", None, "more than 1000000 bytes arrived, over the download limit; raise \\$KADE_DOWNLOAD_MAX_BYTES"),
    ("/big", None, "it declares 1099511627776 bytes, over the download limit"),
])
def test_download_failures_leave_nothing(server, tmp_path, path, checksum, message):
    base, _ = server
    with pytest.raises(DownloadError, match=message):
        download(f"{base}{path}", tmp_path / "dl", checksum, retry=FAST, max_bytes=1_000_000)
    assert not list((tmp_path / "dl").rglob("*"))  # no partial file, no temp file


def test_the_size_limit_comes_from_the_environment(server, tmp_path, monkeypatch):
    base, _ = server
    monkeypatch.setenv("KADE_DOWNLOAD_MAX_BYTES", "5")
    with pytest.raises(DownloadError, match="over the download limit"):
        download(f"{base}/tool", tmp_path / "dl", retry=FAST)
    monkeypatch.setenv("KADE_DOWNLOAD_MAX_BYTES", "lots")
    with pytest.raises(DownloadError, match="not a positive whole number"):
        download(f"{base}/tool", tmp_path / "dl", retry=FAST)


def test_a_second_download_with_other_bytes_never_replaces_the_first(server, tmp_path):
    base, _ = server
    first, d1 = download(f"{base}/changing", tmp_path / "dl", retry=FAST)
    second, d2 = download(f"{base}/changing", tmp_path / "dl", retry=FAST)
    assert d1 != d2 and first != second
    assert first.read_bytes() == b"version 1\n" and second.read_bytes() == b"version 2\n"
    again, d3 = download(f"{base}/tool", tmp_path / "dl", retry=FAST)
    twice, d4 = download(f"{base}/tool", tmp_path / "dl", retry=FAST)
    assert (again, d3) == (twice, d4) and again.read_bytes() == BODY


def test_a_redirect_from_https_to_http_is_refused(tls_pair, tmp_path):
    secure, plain, cert = tls_pair
    secure.redirect_to = f"http://127.0.0.1:{plain.server_port}/tool"
    with pytest.raises(DownloadError, match="redirected from https to plain http"):
        download(f"https://127.0.0.1:{secure.server_port}/to-http", tmp_path / "dl", ca_file=cert, retry=FAST)
    assert not list((tmp_path / "dl").rglob("*"))
    secure.redirect_to = "/tool"   # within https: followed
    path, _ = download(f"https://127.0.0.1:{secure.server_port}/to-same", tmp_path / "dl", ca_file=cert, retry=FAST)
    assert path.read_bytes() == BODY
    plain.redirect_to = f"https://127.0.0.1:{secure.server_port}/tool"   # http up to https: fine
    path, _ = download(f"http://127.0.0.1:{plain.server_port}/to-https", tmp_path / "dl2", ca_file=cert, retry=FAST)
    assert path.read_bytes() == BODY
