"""The sha256 of the build context's files, which every COPY/ADD key is made of: hashed on every core,
and the big ones kept between builds by what lstat says of each file.

A kept digest is used only while the file's device, inode, size, mtime and ctime are all as they were
when it was hashed: a write moves the ctime, which nothing can set back (git's index and BuildKit's
content hash cache trust the same). A write within the clock tick of the hashing could leave the times
as they were, so a file changed in the last `RACY_SECONDS` is never kept (git's "racily clean" rule).
Small files are hashed every time: that costs less than keeping them. The kept digests live in the
tenant's cache (`LocalCache.root`), as trusted as the layers there.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Iterable

from builder.errors import ContextError

KEEP_FROM = 64 << 10        # bytes: a smaller file is hashed every time
RACY_SECONDS = 2
MAX_KEPT = 200_000          # files; past it the kept digests start over
_PARALLEL_FROM = 8 << 20    # bytes to hash before threads pay off
_CHUNK = 1 << 20
_buffers = threading.local()   # one read buffer per hashing thread


def sha256_file(path: Path | str) -> str:
    """The sha256 hex of a regular file's content. The file is opened without following a final
    symlink (the context walk saw a file there) and read into one buffer per thread, reused: no
    allocation, and no fresh pages to fault in, per chunk."""
    view = getattr(_buffers, "view", None)
    if view is None:
        view = _buffers.view = memoryview(bytearray(_CHUNK))
    h = hashlib.sha256()
    # non-blocking: a fifo swapped in since the walk must not hang the build (checked right after)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ContextError(f"{path} is no longer a regular file (it changed during the build); build again")
        while n := os.readv(fd, [view]):
            h.update(view[:n])   # releases the GIL: files hash on every core
    finally:
        os.close(fd)
    return h.hexdigest()


def _stat_key(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


class FileDigests:
    """Digests of files by path; `store`: the JSON file the big ones are kept in (None: none kept)."""

    def __init__(self, store: Path | None = None):
        self.store = store
        self._kept: dict[str, list] = {}
        self._changed = False
        self._pool: ThreadPoolExecutor | None = None
        self._pending: dict[Path, Future[str]] = {}   # prefetched, not asked for yet: hashing, or hashed
        self._queued: list[tuple[Path, int]] = []       # prefetched, too little yet to start threads for
        if store is not None:
            try:
                loaded = json.loads(store.read_bytes())
                self._kept = loaded if isinstance(loaded, dict) else {}
            except (OSError, ValueError):
                pass   # none yet, or unreadable: hashed again

    def of(self, files: Iterable[tuple[Path, int]]) -> dict[Path, str]:
        """The sha256 hex of each (path, size) given: kept ones reused, the rest hashed (on every core
        when there is enough to hash)."""
        out: dict[Path, str] = {}
        todo: list[tuple[Path, int]] = []
        prefetched: list[tuple[Path, Future[str]]] = []
        for path, size in files:
            future = self._pending.pop(path, None)   # once: a later ask reads the file as it is then
            if future is not None:
                prefetched.append((path, future))
                continue
            found = self._reuse(path) if size >= KEEP_FROM else None
            if found is not None:
                out[path] = found
            else:
                todo.append((path, size))
        if sum(size for _, size in todo) >= _PARALLEL_FROM and len(todo) > 1:
            with ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="kade-hash") as pool:
                hashed = list(pool.map(self._hash, todo))
        else:
            hashed = [self._hash(item) for item in todo]
        out.update(zip((path for path, _ in todo), hashed))
        out.update((path, future.result()) for path, future in prefetched)
        return out

    def prefetch(self, files: Iterable[tuple[Path, int]]) -> None:
        """Start hashing these (path, size) in the background, for an `of` to come: planning waits on
        the network for base images meanwhile. Kept ones are left to `of`; below enough bytes to pay
        for the threads, nothing starts (`of` hashes them then, as it would have)."""
        self._queued += ((path, size) for path, size in files
                         if path not in self._pending and (size < KEEP_FROM or self._reuse(path) is None))
        if self._pool is None and (len(self._queued) < 2 or sum(size for _, size in self._queued) < _PARALLEL_FROM):
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="kade-hash")
        for item in self._queued:
            if item[0] not in self._pending:
                self._pending[item[0]] = self._pool.submit(self._hash, item)
        self._queued = []

    def close(self) -> None:
        """Stop prefetching and forget what was prefetched and not asked for (a prefetch is for the plan
        being made): what has not started is dropped, what has is waited for (at most one file per
        thread), so that no thread writes the kept digests while `save` reads them. The digests stay
        usable, and may prefetch again."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._pending = {}
        self._queued = []

    def _reuse(self, path: Path) -> str | None:
        kept = self._kept.get(str(path))
        if not isinstance(kept, list) or len(kept) != 6:
            return None
        try:
            st = os.lstat(path)
        except OSError:
            return None
        return kept[5] if kept[:5] == _stat_key(st) else None

    def _hash(self, item: tuple[Path, int]) -> str:
        path, size = item
        before = os.lstat(path) if size >= KEEP_FROM and self.store is not None else None
        digest = sha256_file(path)
        if before is not None and time.time() - before.st_ctime >= RACY_SECONDS:
            after = os.lstat(path)
            if _stat_key(after) == _stat_key(before):   # not written while it was read
                self._kept[str(path)] = [*_stat_key(before), digest]   # (a dict item set: atomic under the GIL)
                self._changed = True
        return digest

    def save(self) -> None:
        """Keep what was hashed for the next build (a failed write only costs hashing again)."""
        if self.store is None or not self._changed:
            return
        kept = self._kept if len(self._kept) <= MAX_KEPT else {}
        try:
            self.store.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".digests-", dir=self.store.parent)
            with os.fdopen(fd, "w") as f:
                json.dump(kept, f, separators=(",", ":"))
            os.replace(tmp, self.store)
        except OSError:
            pass
        self._changed = False
