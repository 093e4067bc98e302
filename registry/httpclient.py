"""A small HTTP/1.1 client on the standard library's http.client: what the registry client and URL
downloads need, and nothing else (importing requests and urllib3 took ~45 ms of every command).

- Connections are pooled per (scheme, host, port, TLS settings, proxy) and reused while the server
  keeps them open; an idle connection the server has closed is noticed before reuse.
- TLS verifies against the system's CA store (certifi's bundle where Python finds none), or a
  given CA bundle only, or not at all for insecure registries; a context is made once per setting.
- Proxies come from the environment as curl and requests read them (`https_proxy`, `http_proxy`,
  upper case too, `no_proxy` with names, domains, `host:port`, `*` and networks such as 10.96.0.0/12):
  plain HTTP through the proxy, HTTPS through a CONNECT tunnel. Loopback (`localhost`, 127.0.0.0/8,
  ::1) is never proxied, as Go's clients (skopeo, buildah, BuildKit, kubectl) have it: a proxy
  cannot reach this machine's loopback, and a local registry must work beside a corporate proxy.
- Redirects of GET and HEAD are followed (at most 10); an https URL never leads to plain http,
  and the Authorization header is not sent to another host.
- A request body is bytes, a file object (read in 1 MiB blocks; give Content-Length) or an
  iterator of bytes (sent chunked).
- `Accept-Encoding: identity` (http.client's own), so bodies arrive as stored and are read raw.

Failures to get an answer raise HttpError (ConnectTimeout, ReadTimeout, TLSFailure, ProxyError,
RedirectRefused): no status was received; every HTTP status is a Response.
"""
from __future__ import annotations

import base64
import http.client
import os
import select
import ssl
import threading
from typing import Any, Callable, Iterable, Iterator, Mapping
from urllib.parse import quote, unquote, urlencode, urljoin, urlsplit

BLOCK = 1 << 20
MAX_REDIRECTS = 10
MAX_IDLE_PER_KEY = 16
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_CLOSED_BY_SERVER = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


class HttpError(Exception):
    """No answer: the connection could not be made, broke, or timed out."""


class ConnectTimeout(HttpError):
    pass


class ReadTimeout(HttpError):
    pass


class TLSFailure(HttpError):
    pass


class ProxyError(HttpError):
    """The proxy is unusable or refused the tunnel (e.g. 407: it wants credentials); not worth a retry."""


class RedirectRefused(HttpError):
    """A redirect that would leave http(s) or drop from https to plain http."""


class BadURL(HttpError):
    """Not a well-formed http(s) URL (scheme, host, port 0-65535): no attempt can reach it."""


class Headers(Mapping[str, str]):
    """Response headers, case-insensitive; a header sent on several lines is joined with ", "."""

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        self._items: dict[str, str] = {}
        for name, value in pairs:
            key = name.lower()
            self._items[key] = f"{self._items[key]}, {value}" if key in self._items else value

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


class Response:
    """One answer. The body is read raw with read()/iter_content(), or whole with `content`; the
    connection goes back to the pool once the body has been read to its end, and is dropped by
    close() before that."""

    def __init__(self, raw: http.client.HTTPResponse, conn: http.client.HTTPConnection, method: str, url: str,
                 release: Callable[[http.client.HTTPConnection], None]) -> None:
        self._raw, self._release = raw, release
        self._conn: http.client.HTTPConnection | None = conn
        self.method, self.url = method, url
        self.status_code = raw.status
        self.reason = raw.reason
        self.headers = Headers(raw.getheaders())
        self._content: bytes | None = None
        if raw.length == 0 and not raw.chunked:   # HEAD, 204, 304, an empty body: nothing to wait for
            raw.read()
        self._settle()

    def read(self, n: int = -1) -> bytes:
        """Up to `n` bytes of the body (all that is left if n < 0); b"" at its end."""
        if self._conn is None:
            return b""
        try:
            data = self._raw.read(n) if n >= 0 else self._raw.read()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise _failure(exc, connecting=False) from None
        self._settle()
        return data

    def iter_content(self, size: int = BLOCK) -> Iterator[bytes]:
        if self._content is not None:
            yield self._content
            return
        while True:
            data = self.read(size)
            if not data:
                return
            yield data

    @property
    def content(self) -> bytes:
        if self._content is None:
            self._content = self.read()
        return self._content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def close(self) -> None:
        if self._conn is not None:
            self._raw.close()
            self._conn.close()
            self._conn = None

    def _settle(self) -> None:
        """Hand the connection back once the body is complete (a HEAD's or 204's at once)."""
        if self._conn is not None and self._raw.isclosed():
            conn, self._conn = self._conn, None
            if not self._raw.will_close and conn.sock is not None:
                self._release(conn)
            else:
                conn.close()

    def __enter__(self) -> "Response":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _failure(exc: BaseException, *, connecting: bool) -> HttpError:
    if isinstance(exc, HttpError):
        return exc
    if isinstance(exc, (ssl.SSLError, ssl.CertificateError)) and not isinstance(exc, ssl.SSLEOFError):
        return TLSFailure(str(exc))
    if isinstance(exc, TimeoutError):
        return ConnectTimeout(str(exc) or "timed out") if connecting else ReadTimeout(str(exc) or "timed out")
    if isinstance(exc, http.client.RemoteDisconnected):
        return HttpError("Remote end closed connection without response")
    return HttpError(str(exc) or type(exc).__name__)


def redirect_target(current: str, location: str | None) -> str:
    """Where a redirect from `current` leads; refused when it leaves http(s) or drops https."""
    if not location:
        raise RedirectRefused(f"{current}: a redirect without a Location header")
    target = urljoin(current, location)
    scheme, was = urlsplit(target).scheme, urlsplit(current).scheme
    if scheme not in ("http", "https"):
        raise RedirectRefused(f"{current}: redirected to {target}, which is not http(s); refused")
    if was == "https" and scheme != "https":
        raise RedirectRefused(f"{current}: redirected from https to plain http ({target}); refused: the answer "
                              "could be read and changed on the way")
    return target


def keeps_credentials(origin: str, url: str) -> bool:
    """Whether credentials made for `origin` may go with a request to `url`: the same host (any case)
    and the same scheme and port (the scheme's default when none is written), or plain http on port 80
    moving up to https on 443 (requests' rule for redirects); never to another host or down to http."""
    a, b = urlsplit(origin), urlsplit(url)
    default = {"http": 80, "https": 443}
    try:
        port_a, port_b = a.port or default.get(a.scheme.lower()), b.port or default.get(b.scheme.lower())
    except ValueError:   # a port that is not a number
        return False
    if (a.hostname or "") != (b.hostname or ""):
        return False
    upgrade = (a.scheme.lower(), port_a, b.scheme.lower(), port_b) == ("http", 80, "https", 443)
    return upgrade or (a.scheme.lower() == b.scheme.lower() and port_a == port_b)


def requote(url: str) -> str:
    """`url` with what may not stand in one percent-encoded (as requests does): a space, a control or a
    non-ASCII character from a registry's Location would otherwise break the request line."""
    return quote(url, safe="!#$%&'()*+,/:;=?@[]~")


def _with_params(url: str, params: Mapping[str, str] | Iterable[tuple[str, str]] | None) -> str:
    if not params:
        return url
    query = urlencode(list(params.items()) if isinstance(params, Mapping) else list(params))
    return f"{url}{'&' if '?' in url else '?'}{query}"


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def system_ca_file() -> str | None:
    """None where OpenSSL finds the system's CA store (or $SSL_CERT_FILE / $SSL_CERT_DIR) itself; else
    certifi's bundle if it is installed (the kubernetes client brings it): a Python built without the
    system's OpenSSL paths (python.org's macOS build, some minimal images) would otherwise trust
    nothing."""
    paths = ssl.get_default_verify_paths()
    if any(p and os.path.exists(p) for p in (paths.cafile, paths.capath)):
        return None
    try:
        import certifi
    except ImportError:
        return None
    return str(certifi.where())


def _idle_connection_usable(conn: http.client.HTTPConnection) -> bool:
    """An idle keep-alive connection has nothing to read; readable means the server closed it (or
    sent junk): either way it is not reused."""
    sock = conn.sock
    if sock is None:
        return False
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLERR | select.POLLHUP)
    return not poller.poll(0)


class Proxies:
    """The proxy for a URL from the environment (None: connect directly)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._by_scheme = {scheme: (env.get(f"{scheme}_proxy") or env.get(f"{scheme.upper()}_PROXY") or "").strip()
                           for scheme in ("http", "https")}
        self._no_proxy = [entry.strip().lower() for entry in
                          (env.get("no_proxy") or env.get("NO_PROXY") or "").split(",") if entry.strip()]

    def for_url(self, scheme: str, host: str, port: int) -> tuple[str, int, str | None] | None:
        """(proxy host, proxy port, Proxy-Authorization or None) for a request to host:port."""
        value = self._by_scheme.get(scheme, "")
        if not value or self._bypassed(host, port):
            return None
        parts = urlsplit(value if "://" in value else f"http://{value}")
        if parts.scheme != "http" or not parts.hostname:
            shown = f"{parts.scheme}://{parts.hostname or ''}{':' + str(parts.port) if parts.port else ''}"
            raise ProxyError(f"proxy {shown} (${scheme}_proxy) is not an http:// proxy URL; kade talks to proxies "
                             "in plain HTTP (HTTPS goes through a CONNECT tunnel): set it as http://host:port")
        credentials = _basic(unquote(parts.username), unquote(parts.password or "")) if parts.username else None
        return parts.hostname, parts.port or 80, credentials

    def _bypassed(self, host: str, port: int) -> bool:
        host = host.lower().strip("[]")
        if _is_loopback(host):
            return True
        for entry in self._no_proxy:
            if entry == "*":
                return True
            if "/" in entry:   # a network (10.96.0.0/12: a cluster's services), as requests and Go read it
                if _in_network(host, entry):
                    return True
                continue
            name, _, entry_port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
            if entry_port and entry_port != str(port):
                continue
            name = name.lstrip(".")
            if host == name or host.endswith("." + name):
                return True
        return False


def _is_loopback(host: str) -> bool:
    """`localhost` or a loopback address (Go's httpproxy: useProxy)."""
    if host == "localhost":
        return True
    import ipaddress
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _in_network(host: str, network: str) -> bool:
    """Whether `host` is an IP address inside `network` (CIDR); a name or a malformed network is not."""
    import ipaddress
    try:
        return ipaddress.ip_address(host) in ipaddress.ip_network(network.strip("[]"), strict=False)
    except ValueError:
        return False


class HttpClient:
    """Pooled connections and one request at a time per connection; thread-safe."""

    def __init__(self, user_agent: str, proxies: Proxies | None = None) -> None:
        self.user_agent = user_agent
        self.proxies = proxies or Proxies()
        self._idle: dict[tuple, list[http.client.HTTPConnection]] = {}
        self._contexts: dict[bool | str, ssl.SSLContext] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()

    def request(self, method: str, url: str, *, headers: Mapping[str, str] | None = None, body: Any = None,
                params: Mapping[str, str] | Iterable[tuple[str, str]] | None = None, verify: bool | str = True,
                connect_timeout: float = 5.0, read_timeout: float = 30.0,
                follow_redirects: bool = False) -> Response:
        """Send one request (following GET/HEAD redirects if asked); the answer whatever its status."""
        url = _with_params(url, params)
        sent = dict(headers or {})
        for _ in range(MAX_REDIRECTS + 1):
            url = requote(url)
            resp = self._send(method, url, sent, body, verify, connect_timeout, read_timeout)
            if not (follow_redirects and resp.status_code in REDIRECT_STATUSES):
                return resp
            resp.close()
            target = redirect_target(url, resp.headers.get("Location"))
            if not keeps_credentials(url, target):
                sent = {k: v for k, v in sent.items() if k.lower() != "authorization"}
            url = target
        raise HttpError(f"more than {MAX_REDIRECTS} redirects from {url}")

    def speaks_tls(self, host: str, port: int, timeout: float) -> bool:
        """Whether host:port completes a TLS handshake (certificate not checked), through the proxy
        that HTTPS to it would take; the connection is kept for the requests that follow. A proxy
        that refuses the tunnel raises ProxyError (it says nothing about the host)."""
        host = host.strip("[]").lower()
        proxy = self.proxies.for_url("https", host, port)
        try:
            conn = self._connect("https", host, port, False, proxy, timeout)
        except ProxyError:
            raise
        except HttpError:
            return False
        self._give_back(("https", host, port, False, proxy), conn)
        return True

    def _send(self, method: str, url: str, headers: dict[str, str], body: Any, verify: bool | str,
              connect_timeout: float, read_timeout: float, fresh: bool = False) -> Response:
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:   # a port past 65535 or not a number
            raise BadURL(f"not a valid port in the URL: {url}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BadURL(f"not an http(s) URL: {url}")
        host, port = parts.hostname, port or (443 if parts.scheme == "https" else 80)
        proxy = self.proxies.for_url(parts.scheme, host, port)
        key = (parts.scheme, host, port, verify if parts.scheme == "https" else None, proxy)
        # through a proxy, plain HTTP asks for the whole URL; otherwise (and inside a tunnel) the path
        path = (parts.path or "/") + ("?" + parts.query if parts.query else "")
        target = url if proxy and parts.scheme == "http" else path
        all_headers = {"User-Agent": self.user_agent, **headers}
        if proxy and proxy[2] and parts.scheme == "http":
            all_headers["Proxy-Authorization"] = proxy[2]
        conn = None if fresh else self._take(key)
        reused = conn is not None
        if conn is None:
            conn = self._connect(parts.scheme, host, port, verify, proxy, connect_timeout)
        try:
            assert conn.sock is not None
            conn.sock.settimeout(read_timeout)
            conn.request(method, target, body=body, headers=all_headers)
            raw = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            if reused and isinstance(exc, _CLOSED_BY_SERVER) and (body is None or isinstance(body, bytes)):
                # a kept-alive connection the server closed just now: once more on a new one
                return self._send(method, url, headers, body, verify, connect_timeout, read_timeout, fresh=True)
            raise _failure(exc, connecting=False) from None
        return Response(raw, conn, method, url, lambda c: self._give_back(key, c))

    def _connect(self, scheme: str, host: str, port: int, verify: bool | str,
                 proxy: tuple[str, int, str | None] | None, timeout: float) -> http.client.HTTPConnection:
        where = (proxy[0], proxy[1]) if proxy else (host, port)
        conn: http.client.HTTPConnection
        if scheme == "https":
            conn = http.client.HTTPSConnection(*where, timeout=timeout, context=self._context(verify), blocksize=BLOCK)
            if proxy:
                conn.set_tunnel(host, port, headers={"Proxy-Authorization": proxy[2]} if proxy[2] else None)
        else:
            conn = http.client.HTTPConnection(*where, timeout=timeout, blocksize=BLOCK)
        try:
            conn.connect()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            if proxy and str(exc).startswith("Tunnel connection failed"):   # the proxy's answer to CONNECT
                raise ProxyError(f"proxy {proxy[0]}:{proxy[1]} refused a tunnel to {host}:{port}: {exc}") from None
            raise _failure(exc, connecting=True) from None
        return conn

    def _context(self, verify: bool | str) -> ssl.SSLContext:
        with self._lock:
            context = self._contexts.get(verify)
        if context is None:
            if verify is False:
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            else:
                context = ssl.create_default_context(cafile=verify if isinstance(verify, str) else system_ca_file())
            with self._lock:
                context = self._contexts.setdefault(verify, context)
        return context

    def _take(self, key: tuple) -> http.client.HTTPConnection | None:
        while True:
            with self._lock:
                idle = self._idle.get(key)
                conn = idle.pop() if idle else None
            if conn is None or _idle_connection_usable(conn):
                return conn
            conn.close()

    def _give_back(self, key: tuple, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if len(idle) < MAX_IDLE_PER_KEY:
                idle.append(conn)
                return
        conn.close()

