"""registry/httpclient.py: the pure parts (redirect rules, proxy choice, headers) as tables, and the
connection handling against a real HTTP/1.1 server on loopback (the standard library's
http.server: keep-alive, chunked request bodies, redirects, a server that closes idle connections)."""
from __future__ import annotations

import base64
import hashlib
import http.server
import io
import json
import socket
import threading
import time
from typing import Iterator

import pytest

from registry.httpclient import (BadURL, Headers, HttpClient, HttpError, ProxyError, Proxies, ReadTimeout,
                                 RedirectRefused, keeps_credentials, redirect_target)


@pytest.mark.parametrize("current, location, expected", [
    ("https://a/x", "/y", "https://a/y"),
    ("https://a/x", "https://b/y", "https://b/y"),
    ("http://a/x", "https://b/y", "https://b/y"),
    ("http://a/x", "http://b/y?q=1", "http://b/y?q=1"),
    ("https://a/x", "http://b/y", "refused"),
    ("https://a/x", "//b/y", "https://b/y"),
    ("http://a/x", "file:///etc/passwd", "not http"),
    ("https://a/x", "ftp://b/y", "not http"),
    ("https://a/x", None, "without a Location"),
    ("https://a/x", "", "without a Location"),
])
def test_redirect_target(current, location, expected):
    if expected.startswith("http"):
        assert redirect_target(current, location) == expected
    else:
        with pytest.raises(RedirectRefused, match=expected):
            redirect_target(current, location)


@pytest.mark.parametrize("origin, url, kept", [
    ("https://r.example", "https://r.example/v2/a", True),
    ("https://r.example", "https://R.Example:443/v2/uploads/1", True),   # case and the default port
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000/v2/x", True),
    ("http://r.example", "https://r.example/v2/", True),                 # moving up to https
    ("http://127.0.0.1:5000", "http://localhost:5000/v2/x", False),      # another name of the same server
    ("https://r.example", "https://r.example:5000/v2/", False),
    ("https://r.example", "http://r.example/v2/", False),                # down to plain http
    ("http://r.example:5000", "https://r.example/v2/", False),           # another port, not the upgrade
    ("https://r.example", "https://storage.example/blob?sig=1", False),
    ("https://r.example", "https://r.example:x/", False),                # a port that is not a number
])
def test_keeps_credentials(origin, url, kept):
    assert keeps_credentials(origin, url) is kept


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize("env, scheme, host, port, expected", [
    ({}, "https", "reg", 443, None),
    ({"https_proxy": "http://p:3128"}, "https", "reg", 443, ("p", 3128, None)),
    ({"HTTPS_PROXY": "p:3128"}, "https", "reg", 443, ("p", 3128, None)),   # no scheme: http
    ({"http_proxy": "http://p"}, "http", "reg", 80, ("p", 80, None)),
    ({"http_proxy": "http://p:1"}, "https", "reg", 443, None),              # only for plain http
    ({"https_proxy": "http://a:1", "HTTPS_PROXY": "http://b:2"}, "https", "reg", 443, ("a", 1, None)),
    ({"http_proxy": "http://u%40x:p%3Ass@p:8"}, "http", "reg", 80, ("p", 8, _basic("u@x", "p:ss"))),
    ({"http_proxy": "http://u@p:8"}, "http", "reg", 80, ("p", 8, _basic("u", ""))),
    ({"https_proxy": "http://p:1", "no_proxy": "example.com"}, "https", "reg.example.com", 443, None),
    ({"https_proxy": "http://p:1", "no_proxy": "example.com"}, "https", "example.com", 443, None),
    ({"https_proxy": "http://p:1", "no_proxy": "example.com"}, "https", "notexample.com", 443, ("p", 1, None)),
    ({"https_proxy": "http://p:1", "NO_PROXY": ".example.com"}, "https", "reg.example.com", 443, None),
    ({"https_proxy": "http://p:1", "no_proxy": " a , Reg "}, "https", "REG", 443, None),
    ({"https_proxy": "http://p:1", "no_proxy": "*"}, "https", "anything", 443, None),
    ({"https_proxy": "http://p:1", "no_proxy": "reg:5000"}, "https", "reg", 5000, None),
    ({"https_proxy": "http://p:1", "no_proxy": "reg:5000"}, "https", "reg", 443, ("p", 1, None)),
    ({"http_proxy": "http://p:1", "no_proxy": ""}, "http", "127.0.0.1", 5000, None),     # loopback: never (as Go)
    ({"http_proxy": "http://p:1"}, "http", "127.8.9.10", 5000, None),
    ({"http_proxy": "http://p:1"}, "http", "[::1]", 5000, None),
    ({"https_proxy": "http://p:1"}, "https", "LOCALHOST", 5000, None),
    ({"http_proxy": "http://p:1"}, "http", "localhost.example", 5000, ("p", 1, None)),   # a name, not loopback
    ({"http_proxy": "http://p:1"}, "http", "128.0.0.1", 5000, ("p", 1, None)),
    ({"http_proxy": "http://p:1"}, "http", "::2", 5000, ("p", 1, None)),
    ({"http_proxy": "http://p:1", "no_proxy": "10.96.0.0/12"}, "http", "10.96.4.2", 5000, None),   # a network
    ({"http_proxy": "http://p:1", "no_proxy": "10.96.0.0/12"}, "http", "10.112.0.1", 5000, ("p", 1, None)),
    ({"http_proxy": "http://p:1", "no_proxy": "10.96.0.0/12"}, "http", "reg.example", 5000, ("p", 1, None)),
    ({"http_proxy": "http://p:1", "no_proxy": "fd00::/8"}, "http", "fd00::5", 5000, None),
    ({"http_proxy": "http://p:1", "no_proxy": "10.0.0.0/99, reg"}, "http", "reg", 5000, None),   # a bad one skipped
])
def test_proxy_for_url(env, scheme, host, port, expected):
    assert Proxies(env).for_url(scheme, host, port) == expected


@pytest.mark.parametrize("value", ["https://p:1", "socks5://user:secret@p:1080", "http://"])
def test_a_proxy_kade_cannot_use_is_refused_without_its_credentials(value):
    with pytest.raises(ProxyError, match="not an http:// proxy URL") as caught:
        Proxies({"https_proxy": value}).for_url("https", "reg", 443)
    assert "secret" not in str(caught.value)


def test_headers_are_case_insensitive_and_repeated_ones_joined():
    h = Headers([("Content-Type", "a"), ("www-authenticate", 'Bearer realm="x"'), ("WWW-Authenticate", "Basic")])
    assert h["content-type"] == h["CONTENT-TYPE"] == "a"
    assert h["Www-Authenticate"] == 'Bearer realm="x", Basic'
    assert h.get("Location") is None and len(h) == 2
    with pytest.raises(KeyError):
        h["Location"]


class Handler(http.server.BaseHTTPRequestHandler):
    """/data: 100 KiB; /close-after: answers, then closes the connection without saying so;
    /bad-chunk: a chunked body whose second chunk size is not hexadecimal; /odd-location: a redirect to
    a path with a space and a non-ASCII character;
    /echo: sha256 and length of the request body (Content-Length or chunked) and its Authorization;
    /to?u=URL: a 302 to URL; /loop: a redirect to itself; /slow: no answer."""
    protocol_version = "HTTP/1.1"
    DATA = bytes(range(256)) * 400

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        self.server.peers.append(self.client_address[1])  # type: ignore[attr-defined]
        if self.path == "/data":
            return self._send(200, self.DATA)
        if self.path == "/close-after":
            self._send(200, b"bye")
            self.close_connection = True
            return None
        if self.path.startswith("/to?u="):
            return self._redirect(302, self.path[len("/to?u="):])
        if self.path == "/odd-location":
            return self._redirect(302, "/echo?x=a b\u00e9")   # a space and a non-ASCII character, as sent
        if self.path == "/loop":
            return self._redirect(307, "/loop")
        if self.path == "/bad-chunk":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"3\r\nabc\r\nzz\r\n")
            self.close_connection = True
            return None
        if self.path == "/slow":
            self.server.release.wait(10)  # type: ignore[attr-defined]
            return None
        return self.do_PUT()

    def do_HEAD(self) -> None:  # noqa: N802
        self.server.peers.append(self.client_address[1])  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.DATA)))
        self.end_headers()

    def do_PUT(self) -> None:  # noqa: N802
        if self.headers.get("Transfer-Encoding") == "chunked":
            body = b""
            while True:
                size = int(self.rfile.readline().strip(), 16)
                body += self.rfile.read(size)
                self.rfile.readline()
                if size == 0:
                    break
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        answer = {"sha256": hashlib.sha256(body).hexdigest(), "length": len(body),
                  "chunked": self.headers.get("Transfer-Encoding") == "chunked",
                  "authorization": self.headers.get("Authorization")}
        self._send(200, json.dumps(answer).encode())

    def _redirect(self, status: int, location: str) -> None:
        self.send_response(status)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[http.server.ThreadingHTTPServer]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.peers = []  # type: ignore[attr-defined]
    srv.release = threading.Event()  # type: ignore[attr-defined]
    srv.daemon_threads = True
    srv.handle_error = lambda request, address: None  # type: ignore[method-assign]  # clients that gave up early
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.release.set()  # type: ignore[attr-defined]
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def client() -> Iterator[HttpClient]:
    c = HttpClient("kade-test", Proxies({}))
    yield c
    c.close()


def _url(server: http.server.ThreadingHTTPServer, path: str, host: str = "127.0.0.1") -> str:
    return f"http://{host}:{server.server_address[1]}{path}"


def test_a_connection_is_reused_once_its_body_is_read(server, client):
    assert client.request("GET", _url(server, "/data")).content == Handler.DATA
    head = client.request("HEAD", _url(server, "/data"))   # no body to read: released at once
    assert head.headers["Content-Length"] == str(len(Handler.DATA))
    streamed = client.request("GET", _url(server, "/data"))
    assert b"".join(streamed.iter_content(1000)) == Handler.DATA
    assert len(set(server.peers)) == 1, server.peers      # three requests, one connection
    half = client.request("GET", _url(server, "/data"))
    assert len(half.read(10)) == 10
    half.close()                                           # body left unread: the connection is dropped
    client.request("GET", _url(server, "/data")).close()
    assert len(set(server.peers)) == 2, server.peers


def test_an_idle_connection_the_server_closed_is_not_reused(server, client):
    assert client.request("GET", _url(server, "/close-after")).content == b"bye"
    time.sleep(0.2)   # the server's FIN has arrived: the pooled connection reads as closed
    assert client.request("GET", _url(server, "/data")).content == Handler.DATA
    assert len(set(server.peers)) == 2, server.peers


@pytest.mark.parametrize("make_body, chunked", [
    (lambda data: data, False),
    (lambda data: io.BytesIO(data), True),                           # a file object without a length: chunked
    (lambda data: iter([data[:1000], data[1000:70000], data[70000:]]), True),
])
def test_request_bodies(server, client, make_body, chunked):
    data = Handler.DATA * 30   # 3 MiB: several 1 MiB blocks
    answer = json.loads(client.request("PUT", _url(server, "/echo"), body=make_body(data)).content)
    assert answer["sha256"] == hashlib.sha256(data).hexdigest() and answer["length"] == len(data)
    assert answer["chunked"] is chunked


def test_a_file_body_with_its_length(server, client):
    data = Handler.DATA * 5
    resp = client.request("PUT", _url(server, "/echo"), body=io.BytesIO(data),
                          headers={"Content-Length": str(len(data))})
    answer = json.loads(resp.content)
    assert answer["length"] == len(data) and answer["chunked"] is False


def test_redirects_keep_credentials_with_their_host(server, client):
    auth = {"Authorization": "Bearer secret"}
    same = client.request("GET", _url(server, "/to?u=/echo"), headers=auth, follow_redirects=True)
    assert json.loads(same.content)["authorization"] == "Bearer secret"
    other = _url(server, "/echo", host="localhost")   # same server, another host name: another origin
    moved = client.request("GET", _url(server, f"/to?u={other}"), headers=auth, follow_redirects=True)
    assert moved.url == other and json.loads(moved.content)["authorization"] is None
    not_followed = client.request("GET", _url(server, "/to?u=/echo"), headers=auth)
    assert not_followed.status_code == 302 and not_followed.headers["Location"] == "/echo"
    odd = client.request("GET", _url(server, "/odd-location"), follow_redirects=True)
    assert odd.status_code == 200 and odd.url.endswith("/echo?x=a%20b%C3%A9")   # quoted, not a broken line
    with pytest.raises(HttpError, match="more than 10 redirects"):
        client.request("GET", _url(server, "/loop"), follow_redirects=True)


def test_no_answer_is_an_error_not_a_status(server, client):
    with pytest.raises(ReadTimeout):
        client.request("GET", _url(server, "/slow"), read_timeout=0.3)
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(HttpError, match="Connection refused"):
        client.request("GET", f"http://127.0.0.1:{port}/")
    with pytest.raises(HttpError, match="not an http"):
        client.request("GET", "ftp://127.0.0.1/")
    broken = client.request("GET", _url(server, "/bad-chunk"))   # a chunk size that is no number
    with pytest.raises(HttpError):
        broken.read()


def test_certifi_only_where_python_finds_no_system_ca_store(monkeypatch, tmp_path):
    import ssl

    import certifi

    from registry.httpclient import system_ca_file
    found = ssl.get_default_verify_paths()
    assert found.cafile or found.capath   # this machine has Debian's store: OpenSSL loads it itself
    assert system_ca_file() is None
    none_here = ssl.DefaultVerifyPaths(None, None, "SSL_CERT_FILE", str(tmp_path / "no.pem"), "SSL_CERT_DIR",
                                       str(tmp_path / "no-dir"))
    monkeypatch.setattr(ssl, "get_default_verify_paths", lambda: none_here)
    assert system_ca_file() == certifi.where()


@pytest.mark.parametrize("url", ["http://h:99999/x", "http://h:port/x", "ftp://h/x", "http:///x", "file:///etc/passwd"])
def test_a_url_no_attempt_can_reach_is_refused_before_connecting(url):
    with pytest.raises(BadURL):
        HttpClient("kade-test").request("GET", url)
