"""Layer blobs unpacked while they download.

On a machine with an empty cache, a step's rootfs needs every layer of its parent image: downloading
them one after the other and only then unpacking each puts the whole transfer on the critical path.
`start_fetch` downloads a blob into the local blob cache in a background thread (verified, atomic
rename, under the cache's per-digest lock as before) while `GrowingBlob.open()` hands the unpacker a
stream that follows the file as it grows — so all missing layers download at once and each is unpacked
as its bytes arrive. A failed or corrupt download (DigestMismatch at its end) surfaces from the
stream, and at the latest when the stream is closed, so a layer is never taken as applied before its
blob was verified.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from concurrent.futures import Executor
from pathlib import Path
from typing import BinaryIO, Callable, ContextManager, Iterator, Protocol

READ_BLOCK = 1 << 20


class GrowingBlob:
    """A blob file that one thread writes and others read while it grows (a `tail -f` that ends)."""

    def __init__(self, final: Path):
        self.final = final
        self._cond = threading.Condition()
        self._path: str | None = None      # what a reader opens: the temp file, then the final file
        self._written = 0
        self._done = False
        self._error: BaseException | None = None

    # -- writer side ---------------------------------------------------------------------------
    def started(self, tmp: str) -> None:
        with self._cond:
            self._path = tmp
            self._cond.notify_all()

    def wrote(self, n: int) -> None:
        with self._cond:
            self._written += n
            self._cond.notify_all()

    def finished(self, tmp: str | None) -> None:
        """The blob is complete and verified: rename the temp file into place (under the condition, so a
        reader never opens a path that is being renamed away)."""
        with self._cond:
            if tmp is not None:
                os.replace(tmp, self.final)
            else:  # it was in the cache already (another build or process downloaded it)
                self._written = self.final.stat().st_size
            self._path = str(self.final)
            self._done = True
            self._cond.notify_all()

    def failed(self, error: BaseException) -> None:
        with self._cond:
            self._error = error
            self._done = True
            self._cond.notify_all()

    # -- reader side ---------------------------------------------------------------------------
    def wait(self) -> None:
        """Until the download ended; raises its error."""
        with self._cond:
            while not self._done:
                self._cond.wait()
            if self._error is not None:
                raise self._error

    @contextlib.contextmanager
    def open(self) -> Iterator[BinaryIO]:
        with self._cond:
            while self._path is None and not self._done:
                self._cond.wait()
            if self._error is not None:
                raise self._error
            assert self._path is not None
            fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)   # stays valid across the rename
        try:
            yield _Follower(self, fd)  # type: ignore[misc]
            self.wait()   # the unpacker may stop before the blob's last bytes: its digest must still hold
        finally:
            os.close(fd)

    def _available(self, pos: int) -> int:
        """Bytes readable at `pos` (0 at the end), waiting for the writer when it is behind."""
        with self._cond:
            while pos >= self._written and not self._done:
                self._cond.wait()
            if self._error is not None:
                raise self._error
            return max(0, self._written - pos)


class _Follower:
    """A read-only stream over a GrowingBlob's file."""

    def __init__(self, blob: GrowingBlob, fd: int):
        self._blob, self._fd, self._pos = blob, fd, 0

    def readable(self) -> bool:
        return True

    def read(self, n: int | None = -1) -> bytes:
        want = READ_BLOCK if n is None or n < 0 else n
        if want == 0:
            return b""
        available = self._blob._available(self._pos)
        if not available:
            return b""
        data = os.pread(self._fd, min(want, available), self._pos)
        self._pos += len(data)
        return data

    def readinto(self, buf) -> int:
        data = self.read(len(buf))
        buf[:len(data)] = data
        return len(data)


class Readable(Protocol):
    """What a download reads from: a file, or the registry's BlobReader."""

    def read(self, n: int = -1, /) -> bytes: ...


OpenBlob = Callable[[], ContextManager[Readable]]   # opens a blob's verified stream from the registry


def start_fetch(pool: Executor, final: Path, lock: Callable[[], ContextManager[object]], open_remote: OpenBlob,
                on_download: Callable[[], None] | None = None) -> GrowingBlob:
    """Download a blob to `final` (unless it is there already) in `pool`; returns the GrowingBlob to read.
    `lock` is the cache's per-digest lock (no two downloads of one blob at once, across processes)."""
    blob = GrowingBlob(final)

    def run() -> None:
        tmp: str | None = None
        try:
            with lock():
                if final.is_file():
                    blob.finished(None)
                    return
                if on_download is not None:
                    on_download()
                final.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent)
                with os.fdopen(fd, "wb", buffering=0) as out, open_remote() as remote:
                    blob.started(tmp)
                    while block := remote.read(READ_BLOCK):
                        view = memoryview(block)
                        while view:
                            view = view[out.write(view):]
                        blob.wrote(len(block))
                blob.finished(tmp)   # the remote stream verified size and digest at its end
                tmp = None
        except BaseException as exc:  # handed to the reader, once the partial file is gone
            if tmp is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            blob.failed(exc)

    pool.submit(run)
    return blob
