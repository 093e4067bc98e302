"""copy_image between OCI layouts and the real registry, checked with skopeo as the consumer."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from typing import Any
from urllib.parse import urlsplit

import pytest

from registry import mediatypes as mt
from registry.auth import CredentialResolver, Credentials
from registry.client import ClientOptions, RegistryClient
from registry.copy import copy_image
from registry.httpclient import Response
from registry.layout import OCILayout
from registry.model import Descriptor, Index
from tests.fixtures.registry import write_random_image

MiB = 1 << 20


def _client(**kw) -> RegistryClient:
    kw.setdefault("credentials", CredentialResolver(env={}))
    return RegistryClient(ClientOptions(**kw))


def _skopeo_inspect(ref: str) -> dict:
    if not shutil.which("skopeo"):
        pytest.skip("skopeo is not installed")
    out = subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--raw", ref], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_layout_to_registry_to_registry_to_layout(registry, sample_layout, tmp_path):
    layout_path, tag, digest = sample_layout
    client = _client(chunk_size=1 * MiB, monolithic_max=64 * 1024)
    a = f"{registry.host}/copy/{uuid.uuid4().hex[:8]}"
    b = f"{registry.host}/copy/{uuid.uuid4().hex[:8]}"
    events = []
    r1 = copy_image(client, f"oci:{layout_path}:{tag}", f"{a}:v1", lambda kind, msg, **f: events.append(f))
    assert r1.digest == digest and r1.blobs["copied"] == 4
    assert _skopeo_inspect(f"docker://{a}:v1")["config"]["mediaType"] == mt.OCI_CONFIG
    assert subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--format", "{{.Digest}}",
                           f"docker://{a}:v1"], capture_output=True, text=True).stdout.strip() == digest
    r2 = copy_image(client, f"{a}:v1", f"{b}:copied")  # same registry: every blob mounted
    assert r2.digest == digest and r2.blobs == {"copied": 0, "mounted": 4, "exists": 0}
    out = tmp_path / "out"
    r3 = copy_image(client, f"{b}:copied", f"oci:{out}:pulled")
    assert r3.digest == digest and r3.blobs["copied"] == 4
    check = subprocess.run(["skopeo", "inspect", "--format", "{{.Digest}}", f"oci:{out}:pulled"],
                           capture_output=True, text=True)
    assert check.stdout.strip() == digest, check.stderr
    again = copy_image(client, f"{b}:copied", f"oci:{out}:pulled")
    assert again.blobs == {"copied": 0, "mounted": 0, "exists": 4}
    # skopeo can read every blob back out of the layout kade wrote
    dirout = tmp_path / "dir"
    done = subprocess.run(["skopeo", "copy", f"oci:{out}:pulled", f"dir:{dirout}"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_skopeo_pushed_image_copies_to_other_registry_by_streaming(registry, registry_basic, sample_layout):
    layout_path, tag, digest = sample_layout
    src = f"{registry.host}/skopeo/{uuid.uuid4().hex[:8]}:v1"
    pushed = subprocess.run(["skopeo", "copy", "--dest-tls-verify=false", f"oci:{layout_path}:{tag}",
                             f"docker://{src}"], capture_output=True, text=True)
    assert pushed.returncode == 0, pushed.stderr
    creds = CredentialResolver({registry_basic.host: Credentials(registry_basic.username, registry_basic.password,
                                                                 source="test")}, env={})
    client = _client(credentials=creds, chunk_size=512 * 1024, monolithic_max=1024)
    dst = f"{registry_basic.host}/streamed/app:v1"
    result = copy_image(client, src, dst)
    assert result.blobs["copied"] == 4 and result.digest == client.repository(dst).head_manifest("v1").digest
    body, _ = client.repository(src).get_manifest("v1")
    assert client.repository(dst).get_manifest("v1")[0] == body  # byte for byte


def test_index_copied_with_all_children(registry, tmp_path):
    client = _client()
    layout = tmp_path / "multi"
    d1 = write_random_image(layout, "amd", [1000], seed=2)
    d2 = write_random_image(layout, "arm", [2000], seed=3)
    lay = OCILayout(layout)
    entries = {e.annotations[mt.ANNOTATION_REF_NAME]: e for e in lay.index().manifests}
    children = [Descriptor(mt.OCI_MANIFEST, d, entries[name].size, platform={"os": "linux", "architecture": arch})
                for d, name, arch in ((d1, "amd", "amd64"), (d2, "arm", "arm64"))]
    body = Index(children).to_bytes()
    lay.tag(lay.write_manifest(body, mt.OCI_INDEX), "multi")
    dst = f"{registry.host}/index/{uuid.uuid4().hex[:8]}:multi"
    result = copy_image(client, f"oci:{layout}:multi", dst)
    repo = client.repository(dst)
    assert repo.get_manifest("multi")[0] == body
    assert result.media_type == mt.OCI_INDEX and result.blobs["copied"] == 4
    for child in children:
        assert repo.head_manifest(child.digest).digest == child.digest
    back = tmp_path / "back"
    copy_image(client, dst, f"oci:{back}:multi")
    assert OCILayout(back).blobs.read(result.digest) == body
    assert sorted(os.listdir(back / "blobs" / "sha256")) == sorted(os.listdir(layout / "blobs" / "sha256"))
    # layout to layout, under another name
    again = copy_image(client, f"oci:{back}:multi", f"oci:{tmp_path / 'again'}:renamed")
    assert again.digest == result.digest and again.blobs["copied"] == 4
    check = subprocess.run(["skopeo", "inspect", "--raw", f"oci:{tmp_path / 'again'}:renamed"],
                           capture_output=True)
    assert check.returncode == 0 and check.stdout == body


def test_corrupt_blob_in_registry_storage_is_refused(registry, tmp_path):
    """Flip bytes of a layer inside the real registry's storage: the pull must fail with a digest
    mismatch and leave neither the blob nor the tag in the layout."""
    from registry.errors import DigestMismatch

    src = tmp_path / "src"
    digest = write_random_image(src, "v1", [300_000], seed=11, compressible=False)
    name = f"corrupt/{uuid.uuid4().hex[:8]}"
    client = _client()
    copy_image(client, f"oci:{src}:v1", f"{registry.host}/{name}:v1")
    layer = json.loads(OCILayout(src).blobs.read(digest))["layers"][0]["digest"]
    data_file = registry.storage / "docker/registry/v2/blobs/sha256" / layer[7:9] / layer[7:] / "data"
    content = bytearray(data_file.read_bytes())
    content[1000:1010] = bytes(10)
    data_file.write_bytes(bytes(content))
    out = tmp_path / "out"
    with pytest.raises(DigestMismatch, match=layer):
        copy_image(client, f"{registry.host}/{name}:v1", f"oci:{out}:v1")
    assert not OCILayout(out).blobs.has(layer)
    assert OCILayout(out).index().manifests == []
    assert not [p for p in (out / "blobs" / "sha256").iterdir() if p.name.startswith(".tmp-")]


def _count_requests(client: RegistryClient) -> list[str]:
    """Every HTTP request the client's transport sends from now on, as "METHOD path"."""
    sent: list[str] = []
    http = client.transport.http
    send = http.request

    def counted(method: str, url: str, **kw: Any) -> Response:
        sent.append(f"{method} {urlsplit(url).path}")
        return send(method, url, **kw)
    http.request = counted  # type: ignore[method-assign]
    return sent


def test_copy_that_moves_no_data_makes_few_requests(registry, sample_layout):
    layout_path, tag, digest = sample_layout
    client = _client()
    a = f"{registry.host}/copy/{uuid.uuid4().hex[:8]}"
    b = f"{registry.host}/copy/{uuid.uuid4().hex[:8]}"
    copy_image(client, f"oci:{layout_path}:{tag}", f"{a}:v1")
    sent = _count_requests(client)
    # into a fresh repository of the same registry: the source manifest, one HEAD, a mount per blob, the tag
    first = copy_image(client, f"{a}:v1", f"{b}:v1")
    assert first.blobs == {"copied": 0, "mounted": 4, "exists": 0}
    assert len(sent) == 3 + 4, sent
    # again: the HEAD by digest proves every blob there; no request per blob
    sent.clear()
    again = copy_image(client, f"{a}:v1", f"{b}:v1")
    name_a, name_b = a.split("/", 1)[1], b.split("/", 1)[1]
    assert sent == [f"GET /v2/{name_a}/manifests/v1", f"HEAD /v2/{name_b}/manifests/{digest}",
                    f"PUT /v2/{name_b}/manifests/v1"]
    assert again.digest == digest and again.blobs == {"copied": 0, "mounted": 0, "exists": 4}
    assert client.repository(f"{b}:v1").head_manifest("v1").digest == digest


def test_copy_asks_for_one_token_per_scope(registry_token, sample_layout):
    layout_path, tag, _ = sample_layout
    creds = CredentialResolver({registry_token.host: Credentials(registry_token.username, registry_token.password,
                                                                 source="test")}, env={})
    client = _client(credentials=creds)
    a = f"{registry_token.host}/copy/{uuid.uuid4().hex[:8]}"
    b = f"{registry_token.host}/copy/{uuid.uuid4().hex[:8]}"
    copy_image(client, f"oci:{layout_path}:{tag}", f"{a}:v1")
    before = len(registry_token.issuer.requests)
    result = copy_image(client, f"{a}:v1", f"{b}:v1")
    assert result.blobs["mounted"] == 4
    # a's pull token is cached already. One token for the four parallel mounts (b pull,push and a pull),
    # fetched once although all four got their 401 together; one for b pull,push, which the HEAD of
    # b's manifest asks for and the PUT of its tag reuses.
    issued = registry_token.issuer.requests[before:]
    assert len(issued) == 2, [r["scopes"] for r in issued]
