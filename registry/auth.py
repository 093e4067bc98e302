"""Registry authentication: where credentials come from, WWW-Authenticate challenges, and the
bearer token flow with a per-scope token cache.

Credential sources, first match wins: explicit credentials given to the client, then
$REGISTRY_AUTH_FILE, then $DOCKER_CONFIG/config.json (or ~/.docker/config.json). In a config
file: `credHelpers[host]`, then an `auths` entry, then `credsStore` — each helper run as
`docker-credential-<name> get`. Secrets never appear in messages: only where they came from.
"""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from registry.errors import RegistryError

DOCKER_HUB_CONFIG_KEY = "https://index.docker.io/v1/"
HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io"}


@dataclass(frozen=True)
class Credentials:
    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)  # an OAuth refresh token (Docker "identitytoken")
    source: str = "anonymous"  # where they came from, shown in errors; never the secret

    @property
    def anonymous(self) -> bool:
        return not (self.username or self.password or self.identity_token)


ANONYMOUS = Credentials()


@dataclass(frozen=True)
class Challenge:
    scheme: str  # "bearer" or "basic", lower case
    params: dict[str, str]


_PARAM_RE = re.compile(r'\s*([A-Za-z0-9_.-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)\s*(?:,|$)')


def parse_www_authenticate(header: str) -> list[Challenge]:
    """Parse a WWW-Authenticate header into challenges (`Bearer realm="…",service="…",scope="…"`).

    Tolerates several challenges in one header, quoted commas, and escaped quotes. Unparseable
    parts are skipped rather than guessed.
    """
    challenges: list[Challenge] = []
    rest = header.strip()
    while rest:
        m = re.match(r"([A-Za-z][A-Za-z0-9_-]*)\s*", rest)
        if not m:
            break
        scheme = m.group(1).lower()
        rest = rest[m.end():]
        params: dict[str, str] = {}
        while rest:
            pm = _PARAM_RE.match(rest)
            if not pm:
                break
            key, value = pm.group(1).lower(), pm.group(2)
            if value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            params[key] = value
            rest = rest[pm.end():]
        challenges.append(Challenge(scheme, params))
        rest = rest.lstrip(", ")
    return challenges


def config_keys_for(host: str) -> list[str]:
    """The keys a config.json may use for `host` (bare, with a scheme, Docker Hub's legacy URL)."""
    keys = [host, f"https://{host}", f"http://{host}", f"https://{host}/v1/", f"https://{host}/v2/"]
    if host in HUB_ALIASES:
        keys = [DOCKER_HUB_CONFIG_KEY, "docker.io", "index.docker.io", "https://index.docker.io", *keys]
    return keys


def _config_files(env: dict[str, str]) -> list[Path]:
    files = []
    if env.get("REGISTRY_AUTH_FILE"):
        files.append(Path(env["REGISTRY_AUTH_FILE"]))
    if env.get("DOCKER_CONFIG"):
        files.append(Path(env["DOCKER_CONFIG"]) / "config.json")
    elif env.get("HOME"):
        files.append(Path(env["HOME"]) / ".docker" / "config.json")
    return files


def run_credential_helper(name: str, host: str, path: str | None = None) -> Credentials | None:
    """`docker-credential-<name> get` with the server on stdin; None when it has nothing for host.
    `path` is the PATH to find the helper in (default: the process's)."""
    import subprocess  # (here: only a configured helper needs it, not every start)

    program = f"docker-credential-{name}"
    found = shutil.which(program, path=path)
    if not found:
        raise RegistryError(f"credential helper {program} (configured for {host}) is not on PATH: install it "
                            "or remove it from credsStore/credHelpers in your Docker config")
    try:
        proc = subprocess.run([found, "get"], input=host, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        raise RegistryError(f"credential helper {program} did not answer for {host} within 30 s") from None
    if proc.returncode != 0:
        if "credentials not found" in (proc.stdout + proc.stderr).lower():
            return None
        raise RegistryError(f"credential helper {program} failed for {host} (exit {proc.returncode}); "
                            "run `{program} list` to check it".replace("{program}", program))
    try:
        doc = json.loads(proc.stdout)
    except ValueError:
        raise RegistryError(f"credential helper {program} returned invalid JSON for {host}") from None
    username, secret = doc.get("Username", ""), doc.get("Secret", "")
    source = f"credential helper {program}"
    if username == "<token>":
        return Credentials(identity_token=secret, source=source)
    return Credentials(username=username, password=secret, source=source)


def _from_auths_entry(entry: dict, source: str) -> Credentials | None:
    if not isinstance(entry, dict):
        return None
    if entry.get("identitytoken"):
        return Credentials(identity_token=entry["identitytoken"], source=source)
    if entry.get("auth"):
        try:
            user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            raise RegistryError(f"{source}: the 'auth' value is not base64 of user:password; log in again") from None
        return Credentials(username=user, password=password, source=source)
    if entry.get("username"):
        return Credentials(username=entry["username"], password=entry.get("password", ""), source=source)
    return None


def credentials_from_config(path: Path, host: str,
                            helper: Callable[[str, str], Credentials | None] = run_credential_helper) -> Credentials | None:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise RegistryError(f"cannot read registry credentials from {path}: {exc}; fix or remove the file") from None
    if not isinstance(doc, dict):
        raise RegistryError(f"{path} is not a JSON object; fix or remove the file")
    keys = config_keys_for(host)
    helpers = doc.get("credHelpers") or {}
    for key in keys:
        if isinstance(helpers, dict) and key in helpers:
            found = helper(helpers[key], key)
            if found:
                return found
    auths = doc.get("auths") or {}
    for key in keys:
        if isinstance(auths, dict) and key in auths:
            found = _from_auths_entry(auths[key], f"'auths' entry {key!r} in {path}")
            if found:
                return found
    if doc.get("credsStore"):
        for key in dict.fromkeys([host if host not in HUB_ALIASES else DOCKER_HUB_CONFIG_KEY]):
            found = helper(doc["credsStore"], key)
            if found:
                return found
    return None


class CredentialResolver:
    """Finds credentials for a registry host; cached per host."""

    def __init__(self, explicit: dict[str, Credentials] | None = None, env: dict[str, str] | None = None) -> None:
        self.explicit = dict(explicit or {})
        self.env = dict(os.environ if env is None else env)
        self._cache: dict[str, Credentials] = {}
        self._lock = threading.Lock()

    def sources(self) -> list[str]:
        return [str(p) for p in _config_files(self.env)]

    def get(self, host: str) -> Credentials:
        with self._lock:
            if host not in self._cache:
                self._cache[host] = self._lookup(host)
            return self._cache[host]

    def _lookup(self, host: str) -> Credentials:
        if host in self.explicit:
            return self.explicit[host]
        def helper(name: str, key: str) -> Credentials | None:
            return run_credential_helper(name, key, self.env.get("PATH"))

        for path in _config_files(self.env):
            found = credentials_from_config(path, host, helper)
            if found:
                return found
        return ANONYMOUS


def basic_header(creds: Credentials) -> str:
    return "Basic " + base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()


def scope_for(repository: str, actions: str) -> str:
    return f"repository:{repository}:{actions}"


@dataclass
class Token:
    value: str
    expires_at: float

    def valid(self, now: float) -> bool:
        return now < self.expires_at - 5


class TokenCache:
    """Bearer tokens keyed by (host, scope); thread-safe."""

    def __init__(self) -> None:
        self._tokens: dict[tuple[str, str], Token] = {}
        self._lock = threading.Lock()

    def get(self, host: str, scope: str, now: float | None = None) -> str | None:
        with self._lock:
            tok = self._tokens.get((host, scope))
        if tok and tok.valid(time.time() if now is None else now):
            return tok.value
        return None

    def put(self, host: str, scope: str, value: str, expires_in: float) -> None:
        with self._lock:
            self._tokens[(host, scope)] = Token(value, time.time() + max(expires_in, 10))

    def drop(self, host: str, scope: str) -> None:
        with self._lock:
            self._tokens.pop((host, scope), None)


_TOKEN_CHARS = re.compile(r"[\x21-\x7e]+")


def token_from_response(doc: object) -> tuple[str, float]:
    """(token, expires_in seconds) from a token endpoint's JSON (`token` or `access_token`)."""
    if not isinstance(doc, dict):
        raise ValueError("token response is not a JSON object")
    token = doc.get("token") or doc.get("access_token")
    if not isinstance(token, str) or not token:
        raise ValueError("token response has neither 'token' nor 'access_token'")
    if not _TOKEN_CHARS.fullmatch(token):   # it goes into a header: no space, control or non-ASCII byte
        raise ValueError("its token holds characters an Authorization header can't carry")
    expires_in = doc.get("expires_in", 60)
    if not isinstance(expires_in, (int, float)) or isinstance(expires_in, bool) or expires_in <= 0:
        expires_in = 60
    return token, float(expires_in)
