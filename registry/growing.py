"""Upload a blob while it is still being written (a layer's compressed bytes go up as the tar is built):
the registry's chunked upload needs the digest only at the end (PUT ?digest=), so a streamed PATCH can
follow the file as it grows.

`GrowingBlob` is the meeting point: the writer says how far the file is written and when it is done
(or failed); readers opened at any offset (the upload's retries reopen it) block at the written end
until more arrives, and end only where the writer ended. `upload_while_written` runs the upload in a
thread of its own and starts it only once the blob is worth streaming: a small layer goes up in one
request after it is written, as before.
"""
from __future__ import annotations

import os
import threading
from typing import BinaryIO, Callable, cast

from registry.client import BlobInfo, Repository

STREAM_FROM = 8 << 20   # smaller blobs are faster in one PUT once written


class BlobNotFinished(Exception):
    """The writer of a growing blob gave up: the upload must not finish it. Not an OSError: the client
    would take it for a dropped connection and retry, with backoff, a blob that will never be whole."""


class GrowingBlob:
    def __init__(self, path: str | os.PathLike[str]):
        self.path = os.fspath(path)
        self._cond = threading.Condition()
        self.written = 0
        self.sent = 0      # the furthest any reader got: how far the upload is (its progress)
        self._done = False
        self._failed = False

    # writer side
    def wrote(self, count: int) -> None:
        with self._cond:
            self.written += count
            self._cond.notify_all()

    def finish(self, failed: bool = False) -> None:
        with self._cond:
            self._done, self._failed = True, failed
            self._cond.notify_all()

    # reader side
    def open_at(self, offset: int) -> BinaryIO:
        # _Tail has the read/close that the upload calls: a BinaryIO for it
        return cast(BinaryIO, _Tail(self, offset))

    def wait_past(self, offset: int) -> int:
        """How many bytes are written (more than `offset`, unless the writer is done)."""
        with self._cond:
            self._cond.wait_for(lambda: self.written > offset or self._done)
            if self._failed:
                raise BlobNotFinished(f"{self.path} was not finished by its writer")
            return self.written


class _Tail:
    """A reader of a GrowingBlob from an offset: `read` blocks until bytes past it are written."""

    def __init__(self, blob: GrowingBlob, offset: int):
        self._blob = blob
        self._pos = offset
        self._fd = os.open(blob.path, os.O_RDONLY | os.O_CLOEXEC)

    def read(self, n: int = -1) -> bytes:
        end = self._blob.wait_past(self._pos)
        want = end - self._pos if n is None or n < 0 else min(n, end - self._pos)
        data = os.pread(self._fd, want, self._pos) if want > 0 else b""
        self._pos += len(data)
        self._blob.sent = max(self._blob.sent, self._pos)
        return data

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class upload_while_written:
    """`with upload_while_written(repo, path) as blob:` write the file at `path`, calling blob.wrote(n)
    after each write; then `result()` is the upload's BlobInfo, or None when the blob was too small to
    stream or the upload failed (the caller pushes it the ordinary way then: streaming is only a head
    start, never the one chance)."""

    def __init__(self, repo: Repository, path: str | os.PathLike[str], *, repo_name: str = "",
                 on_error: Callable[[str], None] | None = None, stream_from: int = STREAM_FROM):
        self.blob = GrowingBlob(path)
        self._repo = repo
        self.repo_name = repo_name or repo.name
        self._stream_from = stream_from
        self._on_error = on_error
        self._thread: threading.Thread | None = None
        self._info: BlobInfo | None = None
        self._error: str | None = None

    def __enter__(self) -> "upload_while_written":
        return self

    def wrote(self, count: int) -> None:
        self.blob.wrote(count)
        if self._thread is None and self.blob.written >= self._stream_from:
            self._thread = threading.Thread(target=self._upload, name="kade-stream-upload", daemon=True)
            self._thread.start()

    def _upload(self) -> None:
        try:
            self._info = self._repo.upload_blob(self.blob.open_at, digest=None, size=None)
        except BlobNotFinished:
            pass   # the layer failed: nothing to report about the upload
        except Exception as exc:  # any failure falls back to the ordinary push
            self._error = str(exc)
        except KeyboardInterrupt:
            pass   # cancelled (registry/cancel.py): the command itself stops; the client closed the session

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.blob.finish(failed=exc_type is not None)
        if self._thread is not None:
            self._thread.join()
        if self._error and self._on_error is not None:
            self._on_error(self._error)

    def result(self) -> BlobInfo | None:
        return self._info
