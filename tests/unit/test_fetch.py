"""builder/fetch.py: a blob read while another thread downloads it gives exactly its bytes, and a failed
download fails the reader — mid-stream, or at close when the reader stopped before the blob's end."""
import contextlib
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from builder.fetch import GrowingBlob, start_fetch


class SlowStream(io.RawIOBase):
    """Hands out `data` in small pieces with pauses (the registry's stream, slowed down so the reader
    catches up with the writer); raises `error` at its end when given — standing in for the
    DigestMismatch a real registry cannot be made to send."""

    def __init__(self, data: bytes, piece: int = 7000, error: Exception | None = None):
        self.data, self.piece, self.error, self.pos = data, piece, error, 0

    def read(self, n=-1):
        if self.pos >= len(self.data):
            if self.error is not None:
                raise self.error
            return b""
        time.sleep(0.001)
        chunk = self.data[self.pos:self.pos + min(self.piece, n if n and n > 0 else self.piece)]
        self.pos += len(chunk)
        return chunk


@pytest.fixture
def pool():
    with ThreadPoolExecutor(max_workers=2) as p:
        yield p


def opener(stream):
    return lambda: contextlib.nullcontext(stream)


def test_reader_follows_the_download_and_the_blob_lands_in_place(tmp_path, pool):
    data = bytes(range(256)) * 800
    final = tmp_path / "blobs" / "abc"
    downloads = []
    blob = start_fetch(pool, final, contextlib.nullcontext, opener(SlowStream(data)), lambda: downloads.append(1))
    got = b""
    with blob.open() as f:
        while chunk := f.read(5000):
            got += chunk
    assert got == data
    assert final.read_bytes() == data and downloads == [1]
    assert [p.name for p in final.parent.iterdir()] == ["abc"]   # no temp file left


def test_a_blob_in_the_cache_is_not_downloaded(tmp_path, pool):
    final = tmp_path / "abc"
    final.write_bytes(b"cached")
    blob = start_fetch(pool, final, contextlib.nullcontext, opener(SlowStream(b"other")), lambda: pytest.fail("no"))
    with blob.open() as f:
        assert f.read() == b"cached"


def corrupt_fetch(tmp_path, pool, data: bytes):
    """A download whose verification fails at the end of `data` (DigestMismatch's place)."""
    return start_fetch(pool, tmp_path / "abc", contextlib.nullcontext,
                       opener(SlowStream(data, error=ValueError("digest mismatch"))))


def test_a_failed_download_fails_the_reader_and_leaves_nothing(tmp_path, pool):
    blob = corrupt_fetch(tmp_path, pool, b"x" * 50000)
    with pytest.raises(ValueError, match="digest mismatch"):
        with blob.open() as f:
            while f.read(4096):
                pass
    assert list(tmp_path.iterdir()) == []


def test_a_reader_that_stops_early_still_gets_the_error_at_close(tmp_path, pool):
    blob = corrupt_fetch(tmp_path, pool, b"y" * 30000)
    with pytest.raises(ValueError, match="digest mismatch"):
        with blob.open() as f:
            assert f.read(100) == b"y" * 100   # e.g. the tar ended before the gzip trailer


def test_many_readers_of_one_blob(tmp_path, pool):
    data = b"z" * 100000
    blob = start_fetch(pool, tmp_path / "abc", contextlib.nullcontext, opener(SlowStream(data)))
    results = []

    def read_all():
        with blob.open() as f:
            results.append(b"".join(iter(lambda: f.read(3000), b"")))

    threads = [threading.Thread(target=read_all) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [data] * 3


def test_growing_blob_wait_raises_the_error(tmp_path):
    blob = GrowingBlob(tmp_path / "x")
    blob.failed(RuntimeError("gone"))
    with pytest.raises(RuntimeError, match="gone"):
        blob.wait()
