"""HTTP for the distribution API: one pooled HTTP client (registry/httpclient.py), the scheme and
TLS settings per registry host, authentication (basic and bearer, tokens cached per scope), and
retries with exponential backoff and jitter on connection errors, 5xx and 429 (honouring Retry-After).

Plain HTTP is used, as Docker does, for loopback registries and hosts listed as insecure (after
trying HTTPS without verification); every other host is HTTPS with verification (custom CA bundle
allowed).

Every wait is bounded: a connection must be accepted within `connect_timeout` (5 s) and one request,
retries included, gets `timeout` ($KADE_TIMEOUT, default 30 s) to be answered; a registry that accepts and never answers is
named with what was waited for. Every attempt checks the command's cancellation (registry/cancel.py)
first, and retry sleeps end when it is cancelled.
"""
from __future__ import annotations

import email.utils
import os
import random
import re
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Union
from urllib.parse import urlencode, urlparse, urlsplit

from common.timeouts import CONNECT_TIMEOUT, answer_timeout
from registry import auth, cancel
from registry.httpclient import (BadURL, ConnectTimeout, HttpClient, HttpError, ProxyError, ReadTimeout,
                                 Response, TLSFailure, keeps_credentials)
from registry.errors import RegistryError, RegistryUnavailable, Unauthorized
from registry.reference import host_without_port, is_loopback_host, split_host_port
from common import jsonsafe

Body = Union[None, bytes, Callable[[], Any]]  # a callable makes a fresh body for each attempt

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# What kade reads of an answer it takes whole (tag lists, tokens, error bodies): real ones are kB; a
# registry sending gigabytes would otherwise have them all in memory. Blobs and manifests are streamed
# and capped on their own.
MAX_ANSWER_BYTES = 64 << 20
USER_AGENT = "kade/0.1 (+registry client)"
_PROXY_HINT = ("; the proxy comes from $http_proxy / $https_proxy (with credentials: http://user:password@host:port), "
               "and $no_proxy lists the hosts reached directly")


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5  # total tries, including the first
    base_delay: float = 0.25  # seconds; doubled per attempt, capped at max_delay
    max_delay: float = 8.0
    max_retry_after: float = 60.0  # never wait longer than this for a Retry-After


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After value (delta seconds or an HTTP date); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def retry_delay(policy: RetryPolicy, attempt: int, retry_after: str | None = None,
                rand: Callable[[], float] = random.random) -> float:
    """Delay before retry number `attempt` (1-based): Retry-After if given (capped), else
    exponential backoff with jitter in [50%, 100%] of min(max_delay, base * 2**(attempt-1))."""
    honoured = parse_retry_after(retry_after)
    if honoured is not None:
        return min(honoured, policy.max_retry_after)
    ceiling = min(policy.max_delay, policy.base_delay * (2 ** max(0, attempt - 1)))
    return ceiling * (0.5 + rand() / 2)


def should_retry_status(status: int) -> bool:
    return status in RETRY_STATUSES


def parse_link_next(header: str | None) -> str | None:
    """The target of `rel="next"` in a Link header (`<url>; rel="next"`), or None."""
    if not header:
        return None
    for part in _split_links(header):
        url_part, _, params = part.partition(";")
        url_part = url_part.strip()
        if not (url_part.startswith("<") and url_part.endswith(">")):
            continue
        for param in params.split(";"):
            key, _, val = param.strip().partition("=")
            if key.strip().lower() == "rel" and "next" in val.strip().strip('"').lower().split():
                return url_part[1:-1]
    return None


def _split_links(header: str) -> Iterable[str]:
    depth, start = 0, 0
    for i, ch in enumerate(header):
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth = max(0, depth - 1)
        elif ch == "," and depth == 0:
            yield header[start:i]
            start = i + 1
    yield header[start:]


def unanswered(host: str, what: str, exc: HttpError, timeout: float,
               connect_timeout: float, attempts: int) -> str:
    """The message for a request that got no answer: what was waited for, how long, and what failed."""
    waited = f" for {what}" if what else ""
    if isinstance(exc, ConnectTimeout):
        return (f"registry {host} did not accept a connection within {connect_timeout:g} s (waiting to ask{waited}); "
                "check the address and that it is reachable from here")
    if isinstance(exc, ReadTimeout):
        return (f"registry {host} accepted the connection but did not answer within {timeout:g} s (waiting{waited}); "
                "check that it is healthy, or retry later")
    return (f"cannot reach registry {host}{waited} after {attempts} attempt(s): {_reason(exc)}; check that it is "
            "running and reachable")


def _reason(exc: BaseException) -> str:
    """The cause of a connection failure without its wrapping ("Connection refused", "Name or service
    not known"), else the whole text, shortened."""
    text = str(exc)
    for pattern in (r"\[Errno -?\d+\] [^'\")]+", r"Remote end closed connection without response"):
        found = re.search(pattern, text)
        if found:
            return found.group(0).strip()
    return _short(exc)


def check_ca_bundle(path: str) -> None:
    """A CA bundle must be a file holding at least one PEM certificate (said now, not at the first TLS
    connection, which a plain-HTTP registry never makes)."""
    if not os.path.isfile(path):
        raise RegistryError(f"CA bundle {path} does not exist or is not a file; pass a PEM file with the "
                            "registry's CA certificate(s)")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
    except (ssl.SSLError, ValueError, OSError) as exc:
        raise RegistryError(f"CA bundle {path} holds no usable PEM certificate ({exc}); pass a PEM file with "
                            "the registry's CA certificate(s)") from None


class Transport:
    def __init__(self, *, insecure: Iterable[str] = (), ca_file: str | None = None,
                 credentials: auth.CredentialResolver | None = None, retry: RetryPolicy | None = None,
                 timeout: float | None = None, connect_timeout: float = CONNECT_TIMEOUT,
                 sleep: Callable[[float], None] = cancel.sleep) -> None:
        self.insecure = {h.lower() for h in insecure}
        if ca_file is not None:
            check_ca_bundle(ca_file)
        self.ca_file = ca_file
        self.credentials = credentials or auth.CredentialResolver()
        self.retry = retry or RetryPolicy()
        self.timeout = timeout or answer_timeout()
        self.connect_timeout = connect_timeout
        self.sleep = sleep
        self.tokens = auth.TokenCache()
        self.http = HttpClient(USER_AGENT)
        self._schemes: dict[str, str] = {}
        self._auth_mode: dict[str, str] = {}  # host -> "basic" | "bearer"
        self._lock = threading.Lock()
        self._token_locks: dict[tuple[str, str], threading.Lock] = {}  # (host, scope): one token fetch at a time

    def close(self) -> None:
        self.http.close()

    # ---- scheme and TLS -------------------------------------------------------------------
    def is_insecure(self, host: str) -> bool:
        h = host.lower()
        return is_loopback_host(h) or h in self.insecure or host_without_port(h) in self.insecure

    def _verify(self, host: str) -> bool | str:
        if self.is_insecure(host):
            return False
        return self.ca_file or True

    def base_url(self, host: str) -> str:
        with self._lock:
            scheme = self._schemes.get(host)
        if scheme is None:
            scheme = self._probe_scheme(host) if self.is_insecure(host) else "https"
            with self._lock:
                self._schemes[host] = scheme
        return f"{scheme}://{host}"

    def _probe_scheme(self, host: str) -> str:
        """Docker's rule for insecure registries: HTTPS without verification if the host speaks
        TLS, else plain HTTP. A bare TLS handshake decides (no CA loading, no HTTP request)."""
        name, port = split_host_port(host)
        try:
            return "https" if self.http.speaks_tls(name, port or 443, self.connect_timeout) else "http"
        except ProxyError as exc:
            raise RegistryUnavailable(f"cannot reach registry {host}: {exc}{_PROXY_HINT}") from None

    def url(self, host: str, path_or_url: str) -> str:
        if path_or_url.startswith(("http://", "https://")):
            return path_or_url
        return self.base_url(host) + path_or_url

    # ---- requests -------------------------------------------------------------------------
    def request(self, method: str, host: str, path_or_url: str, *, scope: str | None = None,
                headers: dict[str, str] | None = None, body: Body = None, params: dict[str, str] | None = None,
                stream: bool = False, retry: bool = True, what: str = "", timeout: float | None = None,
                cancellable: bool = True) -> Response:
        """Send a request with auth and retries; return the final response whatever its status
        (the caller maps statuses to errors), except that auth failures raise Unauthorized.
        `timeout` (default: the transport's) bounds the wait for an answer, retries included; a
        request that is not `cancellable` (cleaning up after a cancellation) is sent even then."""
        budget = timeout or self.timeout
        deadline = time.monotonic() + budget
        url = self.url(host, path_or_url)
        # Credentials, tokens and TLS settings are the registry's on its own origin only: an upload
        # Location or a link on another host (object storage, another name of the registry) is
        # authenticated and verified as that host.
        auth_host = host
        if path_or_url.startswith(("http://", "https://")) and not keeps_credentials(self.base_url(host), url):
            auth_host = urlsplit(url).netloc
        attempt, renewed = 0, 0
        while True:
            attempt += 1
            if cancellable:
                cancel.check()
            hdrs = dict(headers or {})
            self._authorize(auth_host, scope, hdrs)
            data = body() if callable(body) else body
            try:
                resp = self.http.request(method, url, headers=hdrs, body=data, params=params,
                                         verify=self._verify(auth_host), connect_timeout=self.connect_timeout,
                                         read_timeout=max(1.0, deadline - time.monotonic()),
                                         follow_redirects=method in ("GET", "HEAD"))
                if not stream:   # read here: a read that fails is retried like the request
                    read_whole(resp, f"registry {host}", what or path_or_url)
            except TLSFailure as exc:
                raise RegistryUnavailable(
                    f"TLS failed talking to registry {host}: {_short(exc)}; pass --ca-file with the registry's "
                    f"CA, or --insecure-registry {host} if it is a test registry") from None
            except ProxyError as exc:
                raise RegistryUnavailable(f"cannot reach registry {host}: {exc}{_PROXY_HINT}") from None
            except BadURL as exc:   # e.g. a Location or Link with port 99999: no attempt would do better
                raise RegistryError(f"registry {host} named a URL kade can't use: {exc}") from None
            except HttpError as exc:
                delay = retry_delay(self.retry, attempt)
                if retry and attempt < self.retry.attempts and time.monotonic() + delay < deadline:
                    self.sleep(delay)
                    continue
                raise RegistryUnavailable(unanswered(host, what, exc, budget, self.connect_timeout, attempt)) from None
            if resp.status_code == 401 and renewed < 2:
                challenge = _pick_challenge(resp.headers.get("WWW-Authenticate", ""))
                resp.close()
                if challenge is None:
                    raise self._unauthorized(auth_host, 401, what)
                renewed += 1
                self._answer_challenge(auth_host, scope, challenge, sent=hdrs.get("Authorization", ""))
                attempt -= 1
                continue
            if resp.status_code in (401, 403):
                resp.close()
                raise self._unauthorized(auth_host, resp.status_code, what)
            if resp.status_code == 407:
                resp.close()
                raise RegistryUnavailable(f"the proxy between here and registry {host} asks for credentials "
                                          f"(HTTP 407){_PROXY_HINT}")
            if retry and should_retry_status(resp.status_code) and attempt < self.retry.attempts:
                delay = retry_delay(self.retry, attempt, resp.headers.get("Retry-After"))
                resp.close()
                self.sleep(delay)
                continue
            return resp

    def _authorize(self, host: str, scope: str | None, headers: dict[str, str]) -> None:
        mode = self._auth_mode.get(host)
        if mode == "basic":
            headers["Authorization"] = auth.basic_header(self.credentials.get(host))
        elif mode == "bearer":
            token = self.tokens.get(host, scope or "")
            if token:
                headers["Authorization"] = f"Bearer {token}"

    def _answer_challenge(self, host: str, scope: str | None, challenge: auth.Challenge, sent: str) -> None:
        """Prepare auth for the retry of a request that got 401 (`sent`: its Authorization)."""
        creds = self.credentials.get(host)
        if challenge.scheme == "basic":
            # Only a request that carried our basic credentials proves them wrong: another thread
            # may have switched this host to basic while this request was on its way without them.
            if creds.anonymous or not creds.username or sent.startswith("Basic "):
                raise self._unauthorized(host, 401, "")
            self._auth_mode[host] = "basic"
            return
        realm = challenge.params.get("realm")
        if not realm:
            raise Unauthorized(f"registry {host} sent a Bearer challenge without a realm; it is misconfigured")
        scopes = (challenge.params.get("scope") or "").split()
        scopes += [s for s in (scope or "").split() if s not in scopes]
        # Requests sent in parallel get their 401s together: one of them fetches the token, the others
        # wait for it and use it (not one token request each).
        with self._token_lock(host, scope or ""):
            cached = self.tokens.get(host, scope or "")
            if cached and sent != f"Bearer {cached}":  # another thread fetched one meanwhile
                self._auth_mode[host] = "bearer"
                return
            self.tokens.drop(host, scope or "")
            token, expires_in = self._fetch_token(host, realm, challenge.params.get("service"), scopes, creds)
            self.tokens.put(host, scope or "", token, expires_in)
            self._auth_mode[host] = "bearer"

    def _token_lock(self, host: str, scope: str) -> threading.Lock:
        with self._lock:
            return self._token_locks.setdefault((host, scope), threading.Lock())

    def _fetch_token(self, host: str, realm: str, service: str | None, scopes: list[str],
                     creds: auth.Credentials) -> tuple[str, float]:
        params: list[tuple[str, str]] = [("service", service)] if service else []
        params += [("scope", s) for s in scopes]
        realm_host = urlparse(realm).netloc
        verify: bool | str = False if self.is_insecure(realm_host) else (self.ca_file or True)
        try:
            if creds.identity_token:
                form = {"grant_type": "refresh_token", "refresh_token": creds.identity_token,
                        "client_id": "kade", "service": service or "", "scope": " ".join(scopes)}
                resp = self.http.request("POST", realm, body=urlencode(form).encode(), verify=verify,
                                         headers={"Content-Type": "application/x-www-form-urlencoded"},
                                         connect_timeout=self.connect_timeout, read_timeout=self.timeout)
            else:
                basic = {} if creds.anonymous else {"Authorization": auth.basic_header(creds)}
                resp = self.http.request("GET", realm, params=params, headers=basic, verify=verify,
                                         follow_redirects=True, connect_timeout=self.connect_timeout,
                                         read_timeout=self.timeout)
        except HttpError as exc:
            raise RegistryUnavailable(unanswered(host, f"a token from {realm}", exc, self.timeout,
                                                 self.connect_timeout, 1)) from None
        with resp:
            try:
                read_whole(resp, f"token service {realm} of registry {host}", "a token")
            except HttpError as exc:
                raise RegistryUnavailable(unanswered(host, f"a token from {realm}", exc, self.timeout,
                                                     self.connect_timeout, 1)) from None
            if resp.status_code in (401, 403):
                raise self._unauthorized(host, resp.status_code, "a token")
            if resp.status_code != 200:
                raise Unauthorized(f"token service {realm} of registry {host} answered HTTP {resp.status_code}; "
                                   "check the registry's auth configuration")
            try:
                return auth.token_from_response(jsonsafe.loads(resp.content))
            except ValueError as exc:
                raise Unauthorized(f"token service {realm} of registry {host} sent a bad answer: {exc}") from None

    def _unauthorized(self, host: str, status: int, what: str) -> Unauthorized:
        creds = self.credentials.get(host)
        tried = "no credentials (anonymous)" if creds.anonymous else f"credentials from {creds.source}"
        verb = "denied access" if status == 403 else "refused authentication"
        looked = ", ".join(self.credentials.sources()) or "no config file"
        return Unauthorized(
            f"registry {host} {verb}{' to ' + what if what else ''} (HTTP {status}); tried {tried} "
            f"(looked in: explicit options, {looked}); log in with `podman login {host}` or `docker login {host}`, "
            "or check the account's permissions")


def _pick_challenge(header: str) -> auth.Challenge | None:
    challenges = auth.parse_www_authenticate(header)
    for scheme in ("bearer", "basic"):
        for c in challenges:
            if c.scheme == scheme:
                return c
    return None


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) < 300 else text[:300] + "..."


def read_whole(resp: Response, who: str, what: str, limit: int = MAX_ANSWER_BYTES) -> None:
    """Load a streamed answer's body (then `resp.content`), refusing one of more than `limit` bytes."""
    chunks, size = [], 0
    for chunk in resp.iter_content(1 << 16):   # HttpError if the connection fails
        size += len(chunk)
        if size > limit:
            resp.close()
            raise RegistryError(f"{who} sent more than {limit} bytes for {what}; refusing it (a registry "
                                "sends kB here)")
        chunks.append(chunk)
    resp._content = b"".join(chunks)
