"""registry/download.py against a local HTTP server. The server is scripted only to show faults a
real web server won't on demand (a 503 with Retry-After before the real answer); it says so."""
import hashlib
import http.server
import threading

import pytest

from registry.download import DownloadError, download
from registry.transport import RetryPolicy

BODY = b"tool contents\n"
FAST = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.02, max_retry_after=0.05)


@pytest.fixture
def server():
    """A scripted server: answers /flaky with 503 once, then the body; /missing with 404."""
    hits = {"flaky": 0}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server API
            if self.path == "/missing":
                self.send_response(404)
                self.end_headers()
                return
            if self.path == "/flaky" and hits["flaky"] == 0:
                hits["flaky"] += 1
                self.send_response(503)
                self.send_header("Retry-After", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_port}", hits
    srv.shutdown()


def test_download_retries_a_503_and_verifies(server, tmp_path):
    base, hits = server
    good = "sha256:" + hashlib.sha256(BODY).hexdigest()
    path, digest = download(f"{base}/flaky", tmp_path / "dl", good, retry=FAST)
    assert (path.read_bytes(), digest, hits["flaky"]) == (BODY, good, 1)
    assert path.name == "flaky" and path.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("path, checksum, message", [
    ("/tool", "sha256:" + "0" * 64, "checksum mismatch"),
    ("/tool", "md5:abc", "only sha256"),
    ("/missing", None, "HTTP 404"),
])
def test_download_failures_leave_nothing(server, tmp_path, path, checksum, message):
    base, _ = server
    with pytest.raises(DownloadError, match=message):
        download(f"{base}{path}", tmp_path / "dl", checksum, retry=FAST)
    assert not list((tmp_path / "dl").glob("*"))  # no partial file, no temp file
