"""A big layer goes up to the registry while it is written (registry/growing.py), against the real
registry: the upload is under way before the writer is done, ends with the digest of everything
written, and a writer that fails leaves no blob; a small blob waits for the ordinary push."""
from __future__ import annotations

import hashlib
import os
import time

import pytest

from registry.client import RegistryClient
from registry.growing import upload_while_written

PIECE = 1 << 20


def write(path, stream, pieces: list[bytes], mode: str = "wb") -> None:
    with open(path, mode) as out:
        for piece in pieces:
            out.write(piece)
            out.flush()
            stream.wrote(len(piece))


def wait_until(check, seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return False


def test_the_upload_runs_while_the_blob_is_written(registry, tmp_path):
    pieces = [os.urandom(PIECE) for _ in range(24)]
    digest = "sha256:" + hashlib.sha256(b"".join(pieces)).hexdigest()
    path = tmp_path / "layer"
    with RegistryClient() as client:
        repo = client.repository(f"{registry.host}/stream/up")
        with upload_while_written(repo, path, stream_from=4 * PIECE) as stream:
            write(path, stream, pieces[:16])
            # the writer is not done, and the registry has already been sent most of what it wrote
            assert wait_until(lambda: stream.blob.sent >= 12 * PIECE), stream.blob.sent
            write(path, stream, pieces[16:], "ab")
        info = stream.result()
        assert info is not None and info.digest == digest and info.size == 24 * PIECE
        assert repo.head_blob(digest) == 24 * PIECE


def test_a_failed_writer_leaves_no_blob(registry, tmp_path):
    pieces = [os.urandom(PIECE) for _ in range(8)]
    path = tmp_path / "layer"
    with RegistryClient() as client:
        repo = client.repository(f"{registry.host}/stream/fail")
        reported: list[str] = []
        with pytest.raises(RuntimeError):
            with upload_while_written(repo, path, stream_from=2 * PIECE, on_error=reported.append) as stream:
                write(path, stream, pieces)
                assert wait_until(lambda: stream.blob.sent >= 6 * PIECE)   # under way...
                raise RuntimeError("the layer writer broke")               # ... when the writer fails
        # the writer's failure is the error: the upload stops and reports nothing of its own
        assert stream.result() is None and reported == []
        for written in (pieces, pieces[:6]):
            assert repo.head_blob("sha256:" + hashlib.sha256(b"".join(written)).hexdigest()) is None


def test_a_small_blob_is_left_to_the_ordinary_push(registry, tmp_path):
    path = tmp_path / "layer"
    with RegistryClient() as client:
        repo = client.repository(f"{registry.host}/stream/small")
        with upload_while_written(repo, path, stream_from=4 * PIECE) as stream:
            write(path, stream, [os.urandom(PIECE) for _ in range(3)])
        assert stream.result() is None and stream.blob.sent == 0
