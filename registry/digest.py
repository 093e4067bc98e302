"""Content digests: `sha256:<64 hex>` strings, one-shot and incremental."""
from __future__ import annotations

import hashlib
import re

from registry.errors import DigestMismatch, InvalidDigest

_ALGORITHMS = {"sha256": 64, "sha512": 128}
_DIGEST_RE = re.compile(r"^([a-z0-9]+(?:[.+_-][a-z0-9]+)*):([a-fA-F0-9]{32,})$")


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def validate_digest(s: str) -> str:
    """Return `s` if it is a well-formed digest of a supported algorithm, else raise InvalidDigest."""
    m = _DIGEST_RE.match(s) if isinstance(s, str) else None
    if not m:
        raise InvalidDigest(f"invalid digest {s!r}: expected 'sha256:' followed by 64 lowercase hex characters")
    algorithm, hexpart = m.groups()
    if algorithm not in _ALGORITHMS:
        raise InvalidDigest(f"unsupported digest algorithm {algorithm!r} in {s!r}: use sha256 or sha512")
    if len(hexpart) != _ALGORITHMS[algorithm] or hexpart != hexpart.lower():
        raise InvalidDigest(
            f"invalid digest {s!r}: {algorithm} needs {_ALGORITHMS[algorithm]} lowercase hex characters"
        )
    return s


def is_digest(s: str) -> bool:
    try:
        validate_digest(s)
    except InvalidDigest:
        return False
    return True


class Hasher:
    """Incremental digest of a stream, in the algorithm of an expected digest (sha256 by default)."""

    def __init__(self, algorithm: str = "sha256") -> None:
        if algorithm not in _ALGORITHMS:
            raise InvalidDigest(f"unsupported digest algorithm {algorithm!r}: use sha256 or sha512")
        self.algorithm = algorithm
        self._h = hashlib.new(algorithm)
        self.size = 0

    @classmethod
    def for_digest(cls, digest: str) -> "Hasher":
        return cls(validate_digest(digest).split(":", 1)[0])

    def update(self, data: bytes | memoryview) -> None:
        self._h.update(data)
        self.size += len(data)

    def copy(self) -> "Hasher":
        other = Hasher(self.algorithm)
        other._h = self._h.copy()
        other.size = self.size
        return other

    def digest(self) -> str:
        return f"{self.algorithm}:{self._h.hexdigest()}"

    def verify(self, expected: str, what: str) -> None:
        """Raise DigestMismatch naming `what` if the content seen so far is not `expected`."""
        got = self.digest()
        if got != expected:
            raise DigestMismatch(f"{what}: expected {expected}, got {got} ({self.size} bytes); "
                                 "the content was corrupted or changed — retry, and if it persists "
                                 "check the registry's storage")
