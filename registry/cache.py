"""A content-addressed local blob store (`<root>/blobs/<algorithm>/<hex>`, the OCI layout's
shape). Writes go to a temporary file in the same folder and are renamed to their digest, so
readers never see partial content and concurrent writers (threads or processes) of the same blob
are safe: the last rename wins with identical bytes.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

from registry.digest import Hasher, validate_digest
from registry.errors import DigestMismatch, RegistryError

BLOCK = 1 << 20


class BlobWriter:
    """File-like sink that hashes what it is given; `digest`/`size` are final after close. With
    `trusted` (the caller's stream verifies itself, e.g. a BlobReader) it does not hash again."""

    def __init__(self, f: BinaryIO, algorithm: str, trusted: str | None = None) -> None:
        self._f = f
        self.hasher = Hasher(algorithm)
        self._trusted = trusted
        self._size = 0

    def write(self, data: bytes | memoryview) -> int:
        self._f.write(data)
        self._size += len(data)
        if not self._trusted:
            self.hasher.update(data)
        return len(data)

    @property
    def size(self) -> int:
        return self._size

    @property
    def digest(self) -> str:
        return self._trusted or self.hasher.digest()


class BlobCache:
    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def path(self, digest: str) -> Path:
        algorithm, hexpart = validate_digest(digest).split(":", 1)
        return self.root / "blobs" / algorithm / hexpart

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: str) -> int | None:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            return None

    def open(self, digest: str) -> BinaryIO:
        try:
            return open(self.path(digest), "rb")
        except FileNotFoundError:
            raise RegistryError(f"blob {digest} is not in {self.root}; copy the image there again") from None

    def read(self, digest: str) -> bytes:
        with self.open(digest) as f:
            return f.read()

    @contextlib.contextmanager
    def writer(self, expected: str | None = None, verified_by_source: bool = False) -> Iterator[BlobWriter]:
        """Write a blob: `with cache.writer(digest) as w: w.write(...)`. On success the file is
        renamed to its digest (checked against `expected` if given, unless the source stream
        verifies it itself and raises on mismatch); on error nothing is left."""
        algorithm = validate_digest(expected).split(":", 1)[0] if expected else "sha256"
        tmpdir = self.root / "blobs" / algorithm
        try:
            tmpdir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=tmpdir)
        except OSError as exc:
            raise RegistryError(f"cannot write blobs under {tmpdir}: {exc.strerror}; check the path and its "
                                "permissions") from None
        try:
            with os.fdopen(fd, "wb") as f:
                w = BlobWriter(f, algorithm, expected if verified_by_source and expected else None)
                yield w
            if expected and w.digest != expected:
                raise DigestMismatch(f"blob written to {self.root} hashes to {w.digest}, expected {expected}")
            os.replace(tmp, self.path(w.digest))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def put_bytes(self, data: bytes, expected: str | None = None) -> str:
        with self.writer(expected) as w:
            w.write(data)
        return w.digest

    def put_stream(self, stream: BinaryIO, expected: str | None = None,
                   verified_by_source: bool = False) -> tuple[str, int]:
        with self.writer(expected, verified_by_source) as w:
            shutil.copyfileobj(stream, w, BLOCK)
        return w.digest, w.size
