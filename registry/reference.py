"""Image references in Docker's grammar, with Docker's defaults.

    reference  := name [ ":" tag ] [ "@" digest ]
    name       := [ domain "/" ] path
    domain     := host [ ":" port ]     (a first component with "." or ":", or "localhost",
                                         or with an uppercase letter)
    path       := component ( "/" component )*, component := [a-z0-9]+ ( ( [._] | __ | -+ ) [a-z0-9]+ )*
    tag        := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}

`debian` is `docker.io/library/debian:latest`; `index.docker.io` is `docker.io`; a reference
with a digest and no tag gets no default tag.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace

from registry.digest import InvalidDigest, validate_digest
from registry.errors import InvalidReference

DEFAULT_REGISTRY = "docker.io"
DOCKER_HUB_API_HOST = "registry-1.docker.io"
DEFAULT_TAG = "latest"
NAME_TOTAL_LENGTH_MAX = 255

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_PATH_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST_RE = re.compile(rf"^(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:.%]+\])(?::[0-9]+)?$")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$", re.ASCII)
_HEX64_RE = re.compile(r"^[a-f0-9]{64}$")


@dataclass(frozen=True)
class Reference:
    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, s: str, default_tag: str | None = DEFAULT_TAG) -> "Reference":
        """Parse `s` with Docker's normalisation; raise InvalidReference with the reason."""
        if not isinstance(s, str) or not s:
            raise InvalidReference("empty image reference: expected something like 'debian:12' or "
                                   "'registry.example.com:5000/team/app:v1'")
        if s != s.strip() or any(c.isspace() for c in s):
            raise InvalidReference(f"invalid image reference {s!r}: it contains whitespace")
        if _HEX64_RE.match(s):
            raise InvalidReference(f"invalid image reference {s!r}: a 64-character hex string is an "
                                   "image ID, not a repository name; use name@sha256:<hex>")
        rest, digest = s, None
        if "@" in rest:
            rest, digest = rest.split("@", 1)
            try:
                validate_digest(digest)
            except InvalidDigest as exc:
                raise InvalidReference(f"invalid image reference {s!r}: {exc}") from None
        name, tag = rest, None
        colon = rest.rfind(":")
        if colon > rest.rfind("/"):
            name, tag = rest[:colon], rest[colon + 1:]
            try:
                validate_tag(tag)
            except InvalidReference as exc:
                raise InvalidReference(f"{exc} (in {s!r})") from None
        registry, repository = _split_domain(name, s)
        if tag is None and digest is None and default_tag is not None:
            tag = default_tag
        return cls(registry, repository, tag, digest)

    @property
    def api_host(self) -> str:
        """The host:port the HTTP API is served on (Docker Hub's differs from its name)."""
        return DOCKER_HUB_API_HOST if self.registry == DEFAULT_REGISTRY else self.registry

    @property
    def name(self) -> str:
        """`registry/repository`, without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def identifier(self) -> str:
        """What to ask the registry for: the digest when there is one, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    def with_tag(self, tag: str) -> "Reference":
        return replace(self, tag=validate_tag(tag), digest=None)

    def with_digest(self, digest: str) -> "Reference":
        validate_digest(digest)
        return replace(self, digest=digest)

    def repo_ref(self) -> "Reference":
        return replace(self, tag=None, digest=None)

    def __str__(self) -> str:
        out = self.name
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


def validate_tag(tag: str) -> str:
    """Return `tag` if it is a valid tag, else raise InvalidReference saying what a tag may be."""
    if not isinstance(tag, str) or not _TAG_RE.match(tag):
        raise InvalidReference(f"invalid tag {tag!r}: a tag is 1-128 characters of letters, digits, '_', '.' "
                               "and '-', not starting with '.' or '-'")
    return tag


def validate_host(host: str) -> str:
    """Return `host` if it is a registry host (`name`, `name:port`, `[v6]:port`), else raise
    InvalidReference saying what a host may be."""
    if not isinstance(host, str) or not _HOST_RE.match(host):
        scheme = re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", host or "")
        hint = " without the scheme" if scheme else ""
        raise InvalidReference(f"invalid registry host {host!r}: expected HOST or HOST:PORT{hint}, "
                               "e.g. registry.example.com:5000")
    port = split_host_port(host)[1]
    if port is not None and not 0 < port < 65536:
        raise InvalidReference(f"invalid registry host {host!r}: port {port} is not between 1 and 65535")
    return host


def _split_domain(name: str, original: str) -> tuple[str, str]:
    first, sep, remainder = name.partition("/")
    if sep and (any(c in first for c in ".:") or first == "localhost" or first.lower() != first):
        domain, path = first, remainder
        if not _HOST_RE.match(domain):
            raise InvalidReference(f"invalid registry host {domain!r} in {original!r}: expected host or host:port")
    else:
        domain, path = DEFAULT_REGISTRY, name
    if domain == "index.docker.io":
        domain = DEFAULT_REGISTRY
    if domain == DEFAULT_REGISTRY and "/" not in path:
        path = f"library/{path}"
    if path.lower() != path:
        raise InvalidReference(f"invalid repository name {path!r} in {original!r}: repository names must be lowercase")
    if not _PATH_RE.match(path):
        raise InvalidReference(
            f"invalid repository name {path!r} in {original!r}: use lowercase letters, digits and "
            "separators ('.', '_', '__', '-') between them, components joined by '/'")
    if len(domain) + 1 + len(path) > NAME_TOTAL_LENGTH_MAX:
        raise InvalidReference(f"repository name in {original!r} is longer than {NAME_TOTAL_LENGTH_MAX} characters")
    return domain, path


def split_host_port(host: str) -> tuple[str, int | None]:
    """("name", port or None) of "name", "name:port", "[v6]:port", "[v6]" or a bare v6 address."""
    if host.startswith("[") and "]" in host:
        name, _, rest = host[1:].partition("]")
        return name, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    if host.count(":") == 1:
        name, _, port = host.partition(":")
        return name, int(port) if port.isdigit() else None
    return host, None


def host_without_port(host: str) -> str:
    return split_host_port(host)[0]


def is_loopback_host(host: str) -> bool:
    """True for localhost and loopback IPs (with or without a port): Docker talks plain HTTP to them."""
    bare = host_without_port(host).lower()
    if bare == "localhost" or bare.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(bare.split("%", 1)[0]).is_loopback
    except ValueError:
        return False
