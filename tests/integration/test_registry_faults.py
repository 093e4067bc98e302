"""Dropped connections mid-upload and mid-download. The server is the real registry; only the
network fault is simulated, by the TCP proxy in tests/fixtures/faultproxy.py that cuts the
connection after a number of bytes (a fault a real registry can't be asked to show)."""
from __future__ import annotations

import io
import os
import uuid

import pytest

from registry.auth import CredentialResolver
from registry.client import ClientOptions, RegistryClient
from registry.copy import copy_image
from registry.digest import sha256_digest
from registry.errors import RegistryUnavailable
from registry.layout import OCILayout
from registry.transport import RetryPolicy

MiB = 1 << 20
FAST_RETRY = RetryPolicy(attempts=5, base_delay=0.01, max_delay=0.05)


def _client(**kw) -> RegistryClient:
    return RegistryClient(ClientOptions(credentials=CredentialResolver(env={}), retry=FAST_RETRY, **kw))


@pytest.mark.parametrize("monolithic_max", [64 * 1024, 8 * MiB], ids=["chunked", "monolithic"])
def test_upload_survives_cut_connections(registry, fault_proxy, monolithic_max):
    proxy = fault_proxy(registry.host)
    client = _client(chunk_size=1 * MiB, monolithic_max=monolithic_max)
    name = f"faults/{uuid.uuid4().hex[:8]}"
    data = os.urandom(3 * MiB + 123)
    proxy.cut(upstream_after=int(1.5 * MiB), times=2)
    info = client.repository(f"{proxy.host}/{name}").upload_blob(io.BytesIO(data))
    assert proxy.cuts_done == 2
    assert info.digest == sha256_digest(data)
    direct = _client().repository(f"{registry.host}/{name}")
    with direct.open_blob(info.digest) as r:
        assert b"".join(iter(lambda: r.read(MiB), b"")) == data


def test_download_resumes_with_range_after_cuts(registry, fault_proxy, tmp_path):
    name = f"faults/{uuid.uuid4().hex[:8]}"
    data = os.urandom(4 * MiB)
    digest = _client().repository(f"{registry.host}/{name}").upload_blob(io.BytesIO(data)).digest
    proxy = fault_proxy(registry.host)
    proxy.cut(downstream_after=int(1.2 * MiB), times=3)
    repo = _client().repository(f"{proxy.host}/{name}")
    assert repo.download_blob(digest, tmp_path / "blob") == len(data)
    assert proxy.cuts_done == 3
    assert (tmp_path / "blob").read_bytes() == data


def test_copy_through_cuts_completes_with_matching_digests(registry, fault_proxy, tmp_path):
    src = tmp_path / "src"
    from tests.fixtures.registry import write_random_image

    digest = write_random_image(src, "v1", [2 * MiB, 1 * MiB], seed=7, compressible=False)
    proxy = fault_proxy(registry.host)
    client = _client(chunk_size=1 * MiB, monolithic_max=256 * 1024)
    name = f"faults/{uuid.uuid4().hex[:8]}"
    proxy.cut(upstream_after=int(1.3 * MiB), times=2)
    assert copy_image(client, f"oci:{src}:v1", f"{proxy.host}/{name}:v1", workers=1).digest == digest
    proxy.cut(downstream_after=int(0.7 * MiB), times=2)
    out = tmp_path / "out"
    assert copy_image(client, f"{proxy.host}/{name}:v1", f"oci:{out}:v1", workers=1).digest == digest
    assert proxy.cuts_done == 4
    assert sorted(os.listdir(out / "blobs" / "sha256")) == sorted(os.listdir(src / "blobs" / "sha256"))
    assert _client().repository(f"{registry.host}/{name}").head_manifest("v1").digest == digest


def test_failed_copy_tags_nothing(registry, fault_proxy, tmp_path):
    from tests.fixtures.registry import write_random_image

    src = tmp_path / "src"
    write_random_image(src, "v1", [2 * MiB], seed=8, compressible=False)
    proxy = fault_proxy(registry.host)
    proxy.cut(upstream_after=512 * 1024, times=1000, whole_proxy=True)  # the network dies at 512 KiB
    name = f"faults/{uuid.uuid4().hex[:8]}"
    client = _client(chunk_size=1 * MiB, monolithic_max=64 * 1024)
    with pytest.raises(RegistryUnavailable, match=name):
        copy_image(client, f"oci:{src}:v1", f"{proxy.host}/{name}:v1")
    assert _client().repository(f"{registry.host}/{name}").head_manifest("v1") is None
    # and a pull that can't complete leaves no tag in the layout
    good = f"{registry.host}/{name}-ok:v1"
    copy_image(_client(), f"oci:{src}:v1", good)
    proxy.cut(downstream_after=256 * 1024, times=1000, whole_proxy=True)  # then nothing gets through
    out = tmp_path / "out"
    with pytest.raises(RegistryUnavailable):
        copy_image(client, f"{proxy.host}/{name}-ok:v1", f"oci:{out}:v1")
    assert OCILayout(out).index().manifests == []
    assert not [p for p in (out / "blobs" / "sha256").iterdir() if p.name.startswith(".tmp-")]


def test_chunked_upload_resumes_from_registry_range(registry):
    """The source fails at the start of the second chunk (after the PATCH headers went out, before
    any of its body): the real registry still holds exactly one chunk, reports it in `Range`, and
    the upload continues in the same session from there instead of starting again."""
    from registry.client import Repository

    data = os.urandom(3 * MiB)
    opened: list[int] = []

    class FailingOnce(io.BytesIO):
        def read(self, n: int = -1) -> bytes:
            raise OSError("source went away")

    def opener(offset: int) -> io.BytesIO:
        opened.append(offset)
        if offset == MiB and opened.count(MiB) == 1:
            return FailingOnce()
        return io.BytesIO(data[offset:])

    sessions: list[str] = []

    class Counting(Repository):
        def _start_upload(self):  # count upload sessions
            location = super()._start_upload()
            sessions.append(location[0])
            return location

    client = _client(chunk_size=1 * MiB, monolithic_max=1024)
    repo = Counting(client, client.repository(f"{registry.host}/faults/{uuid.uuid4().hex[:8]}").ref)
    info = repo.upload_blob(opener, size=len(data))
    assert info.digest == sha256_digest(data)
    assert len(sessions) == 1  # resumed, not restarted
    assert opened[:3] == [0, MiB, MiB] and opened[-1] == 2 * MiB
