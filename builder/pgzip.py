"""gzip on every core, the way pigz does it: the uncompressed stream is cut into fixed 1 MiB blocks,
each block is deflated on its own (with the previous block's last 32 KiB as its dictionary, so the
ratio stays that of one stream) by a pool of worker threads, and the results are joined in order
into one ordinary gzip member that any gunzip reads.

The output depends only on the bytes, the level and the block size: never on how the bytes arrive,
how many workers there are or which finishes first, so a layer has the same digest on a laptop and
on a 64-core runner. Every block but the last ends with a sync flush (byte-aligned, not final); the
last ends the deflate stream. ISA-L (`isal`) deflates when installed (several times zlib's speed),
zlib otherwise; both release the GIL while they work.
"""
from __future__ import annotations

import os
import struct
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

try:
    from isal import isal_zlib as _zlib
    MAX_LEVEL = 3
except ImportError:  # pragma: no cover - isal is a dependency, zlib is the safety net
    import zlib as _zlib  # type: ignore[no-redef]  # the same API
    MAX_LEVEL = 9

BLOCK = 1 << 20
DICTIONARY = 32 << 10   # deflate's window: a block may refer this far back into the one before
# gzip header: no name, mtime 0, no extra flags, OS "unknown" (what isal writes for one stream)
HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


MAX_WORKERS = 8   # a pod with a CPU quota still sees every core of its node: bound the memory in flight


def workers() -> int:
    """The cores this process may run on (a pod's cpuset, not the node's core count), at most MAX_WORKERS."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_WORKERS))


def _shared_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=workers(), thread_name_prefix="kade-gzip")
        return _pool


def deflate_block(block: bytes | bytearray, dictionary: bytes, level: int, last: bool) -> bytes:
    """One block as raw deflate: primed with `dictionary`, ended by a sync flush or, if `last`, the
    stream's end."""
    if dictionary:
        comp = _zlib.compressobj(level, _zlib.DEFLATED, -15, zdict=dictionary)
    else:
        comp = _zlib.compressobj(level, _zlib.DEFLATED, -15)
    return comp.compress(block) + comp.flush(_zlib.Z_FINISH if last else _zlib.Z_SYNC_FLUSH)


class ParallelGzip:
    """A compressor object (`compress(data) -> bytes`, `flush() -> bytes`, as zlib's) whose blocks are
    deflated in parallel. At most `depth` blocks are in flight (memory stays bounded); `compress`
    returns the blocks that are done, in order, and waits only when the window is full."""

    def __init__(self, level: int = 1, depth: int | None = None):
        self._level = min(max(level, 0), MAX_LEVEL)
        self._pool = _shared_pool()
        self._depth = depth or 2 * workers() + 1
        self._pending = bytearray()
        self._held: bytes | bytearray | None = None   # a whole block, given as is: deflated once the next comes
        self._dictionary = b""
        self._crc = 0
        self._size = 0
        self._started = False
        self._in_flight: deque[Future[bytes]] = deque()

    def compress(self, data: bytes | bytearray) -> bytes:
        """`data` is the caller's no longer: a whole block given while none is pending is deflated as
        it is, not copied (builder/layer.py hands over 1 MiB blocks)."""
        self._crc = _zlib.crc32(data, self._crc)
        self._size += len(data)
        if len(data) == BLOCK and not self._pending:
            if self._held is not None:
                self._submit(self._held, last=False)
            self._held = data
        else:
            if self._held is not None:
                self._pending += self._held
                self._held = None
            self._pending += data
            while len(self._pending) > BLOCK:   # the block holding the stream's end is cut only by flush
                block = bytes(self._pending[:BLOCK])
                del self._pending[:BLOCK]
                self._submit(block, last=False)
        return self._collect(wait=len(self._in_flight) > self._depth)

    def flush(self) -> bytes:
        if self._held is not None:   # then nothing is pending: the held block ends the stream
            self._submit(self._held, last=True)
            self._held = None
        else:
            self._submit(bytes(self._pending), last=True)
            self._pending.clear()
        body = self._collect(wait=True, everything=True)
        return body + struct.pack("<II", self._crc, self._size & 0xFFFFFFFF)

    def _submit(self, block: bytes | bytearray, last: bool) -> None:
        self._in_flight.append(self._pool.submit(deflate_block, block, self._dictionary, self._level, last))
        self._dictionary = bytes(block[-DICTIONARY:])

    def _collect(self, wait: bool, everything: bool = False) -> bytes:
        out = [b""] if self._started else [HEADER]
        self._started = True
        while self._in_flight and (self._in_flight[0].done() or wait):
            out.append(self._in_flight.popleft().result())
            wait = everything or len(self._in_flight) > self._depth
        return b"".join(out)
