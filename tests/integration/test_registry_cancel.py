"""A cancelled command leaves the registry as it was: an upload cancelled between requests has its
session deleted; a cancelled download leaves no partial file; nothing is committed."""
from __future__ import annotations

import hashlib
import io
import os
import threading

import pytest

from registry import cancel
from registry.cancel import Cancelled
from registry.client import ClientOptions, RegistryClient

CHUNK = 4 << 20


class CancelsAt(io.BytesIO):
    """A blob source that cancels the command once `at` bytes were read (the end of a chunk)."""

    def __init__(self, data: bytes, at: int, token: cancel.Token) -> None:
        super().__init__(data)
        self.at, self.token = at, token

    def read(self, n: int = -1) -> bytes:
        data = super().read(n)
        if self.tell() >= self.at:
            self.token.cancel()
        return data


def live_sessions(registry, repository: str) -> list[str]:
    root = registry.storage / "docker/registry/v2/repositories" / repository
    return sorted(p.parent.name for p in root.rglob("_uploads/*/startedat"))


def test_an_upload_cancelled_between_chunks_deletes_its_session(registry):
    data = os.urandom(3 * CHUNK)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with cancel.scope() as token, RegistryClient(ClientOptions(chunk_size=CHUNK, monolithic_max=1 << 20)) as client:
        repo = client.repository(f"{registry.host}/cancel/up")
        with pytest.raises(Cancelled):
            repo.upload_blob(CancelsAt(data, CHUNK, token), digest, len(data))
    assert live_sessions(registry, "cancel/up") == []
    with RegistryClient() as client:  # (outside the cancelled command: its requests are refused)
        assert client.repository(f"{registry.host}/cancel/up").head_blob(digest) is None


class BlocksAt(io.BytesIO):
    """A blob source whose read blocks at byte `at` (a chunk boundary) until released: an upload thread
    stuck where the command cannot reach it."""

    def __init__(self, data: bytes, at: int) -> None:
        super().__init__(data)
        self.at, self.blocked, self.release = at, threading.Event(), threading.Event()

    def read(self, n: int = -1) -> bytes:
        if self.tell() >= self.at:
            self.blocked.set()
            self.release.wait(30)
        return super().read(n)


def test_closing_the_client_deletes_the_session_of_a_stuck_upload(registry):
    data = os.urandom(2 * CHUNK)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    source = BlocksAt(data, CHUNK)
    client = RegistryClient(ClientOptions(chunk_size=CHUNK, monolithic_max=1 << 20, upload_attempts=1))
    repo = client.repository(f"{registry.host}/cancel/stuck")
    errors: list[BaseException] = []
    worker = threading.Thread(target=lambda: _upload(repo, source, digest, errors), daemon=True)
    worker.start()
    assert source.blocked.wait(30), "the upload never reached its second chunk"
    assert len(live_sessions(registry, "cancel/stuck")) == 1
    client.close()  # what the CLI does after a cancelled command, whatever its threads do
    assert live_sessions(registry, "cancel/stuck") == []
    source.release.set()
    worker.join(30)
    assert errors  # its session is gone: the upload cannot complete


def _upload(repo, source: io.BytesIO, digest: str, errors: list[BaseException]) -> None:
    try:
        repo.upload_blob(source, digest, len(source.getvalue()))
    except BaseException as exc:  # noqa: BLE001 - the test looks at it
        errors.append(exc)


def test_a_cancelled_download_leaves_no_partial_file(registry, tmp_path):
    data = os.urandom(3 * CHUNK)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with RegistryClient() as client:
        client.repository(f"{registry.host}/cancel/down").upload_blob(io.BytesIO(data), digest, len(data))
    with cancel.scope() as token, RegistryClient() as client:
        repo = client.repository(f"{registry.host}/cancel/down")
        reads = 0
        original = repo.open_blob

        def open_blob(d, size=None):
            nonlocal reads
            reads += 1
            token.cancel()  # cancelled as the download starts: the first read stops it
            return original(d, size)

        repo.open_blob = open_blob  # type: ignore[method-assign]
        with pytest.raises(Cancelled):
            repo.download_blob(digest, tmp_path / "blob")
    assert reads == 1
    assert list(tmp_path.iterdir()) == []
