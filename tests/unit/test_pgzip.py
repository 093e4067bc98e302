"""builder/pgzip.py: gzip on every core must stay one ordinary gzip member whose bytes depend only on
the data (never on how it is fed, the number of workers, or which block finishes first)."""
from __future__ import annotations

import gzip
import os
import random
import zlib

import pytest

from builder import pgzip


def compress(data: bytes, cuts: list[int] | None = None, level: int = 1) -> bytes:
    pg = pgzip.ParallelGzip(level)
    out, at = [], 0
    for size in cuts or [len(data)]:
        out.append(pg.compress(data[at:at + size]))
        at += size
    out.append(pg.compress(data[at:]))
    out.append(pg.flush())
    return b"".join(out)


def mixed(size: int, seed: int = 3) -> bytes:
    rng = random.Random(seed)
    parts, total = [], 0
    while total < size:
        n = rng.randint(1, 300_000)
        parts.append(rng.randbytes(n) if rng.random() < 0.4 else (b"kade %d " % n) * (n // 8))
        total += len(parts[-1])
    return b"".join(parts)[:size]


@pytest.fixture
def fresh_pool(monkeypatch):
    """Set the number of cores the shared pool is made with."""
    def cores(n: int) -> None:
        monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(n)))
        monkeypatch.setattr(pgzip, "_pool", None)
    yield cores
    monkeypatch.setattr(pgzip, "_pool", None)


@pytest.mark.parametrize("size", [0, 1, pgzip.BLOCK - 1, pgzip.BLOCK, pgzip.BLOCK + 1, 3 * pgzip.BLOCK,
                                  5 * pgzip.BLOCK + 12_345])
def test_any_gunzip_reads_it_back(size):
    data = mixed(size)
    blob = compress(data)
    assert gzip.decompress(blob) == data            # one member: crc and length checked by gzip
    assert zlib.decompress(blob, 31) == data        # ... and nothing after it
    assert blob[:10] == pgzip.HEADER


def test_bytes_do_not_depend_on_how_the_data_arrives():
    data = mixed(4 * pgzip.BLOCK + 777)
    rng = random.Random(5)
    expected = compress(data)
    for _ in range(4):
        cuts = [rng.choice([1, 100, 65_536, pgzip.BLOCK, pgzip.BLOCK + 1, 3_000_000]) for _ in range(12)]
        assert compress(data, cuts) == expected


@pytest.mark.parametrize("blocks", [
    [1, 1, 1, 1],                 # whole blocks only: the last one held ends the stream
    [1, 1, 0.25, 1, 0.75, 1],     # a piece between whole blocks: the held block joins what is pending
    [0.5, 1, 1, 0.5, 1, 0.3],     # whole blocks arriving while something is pending
    [1, 1, 1, 0.001],             # a tiny end after whole blocks
])
def test_whole_blocks_handed_over_make_the_same_bytes(blocks):
    """builder/layer.py hands over 1 MiB bytearrays, kept as they are (no copy) when nothing is pending:
    the bytes are those of the same data fed in one piece."""
    sizes = [int(b * pgzip.BLOCK) for b in blocks]
    data = mixed(sum(sizes), seed=11)
    pg, out, at = pgzip.ParallelGzip(1), [], 0
    for size in sizes:
        out.append(pg.compress(bytearray(data[at:at + size])))
        at += size
    blob = b"".join(out) + pg.flush()
    assert blob == compress(data)
    assert gzip.decompress(blob) == data


def test_bytes_do_not_depend_on_the_number_of_cores(fresh_pool):
    data = mixed(6 * pgzip.BLOCK + 99)
    blobs = set()
    for cores in (1, 2, 3, 16):
        fresh_pool(cores)
        assert pgzip.workers() == min(cores, pgzip.MAX_WORKERS)
        blobs.add(compress(data, [pgzip.BLOCK // 3] * 40))
    assert len(blobs) == 1


def test_the_dictionary_keeps_the_ratio_of_one_stream():
    """Each block is primed with the tail of the one before, so data that repeats within deflate's
    window compresses as well as in one stream (unprimed, every block would start from scratch)."""
    data = random.Random(9).randbytes(20_000) * (8 * pgzip.BLOCK // 20_000)
    one = pgzip._zlib.compressobj(1, pgzip._zlib.DEFLATED, 31)
    one_stream = len(one.compress(data) + one.flush())
    unprimed = sum(len(pgzip.deflate_block(data[i:i + pgzip.BLOCK], b"", 1, False))
                   for i in range(0, len(data), pgzip.BLOCK))
    assert len(compress(data)) < one_stream + 1000 < unprimed


def test_memory_in_flight_is_bounded():
    pg = pgzip.ParallelGzip(1, depth=2)
    chunk = mixed(pgzip.BLOCK, seed=1)
    out = []
    for _ in range(12):
        out.append(pg.compress(chunk))
        assert len(pg._in_flight) <= 3   # the window, plus the block just submitted
    out.append(pg.flush())
    assert gzip.decompress(b"".join(out)) == chunk * 12


@pytest.mark.parametrize("level", [0, 1, 3, 9])
def test_levels_are_clamped_to_what_the_deflater_has(level):
    data = mixed(pgzip.BLOCK + 5)
    assert gzip.decompress(compress(data, level=level)) == data
