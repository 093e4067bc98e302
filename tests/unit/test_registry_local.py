"""BlobCache, OCI layout and credential lookup: local files only."""
import base64
import json
import multiprocessing
import os

import pytest

from registry import mediatypes as mt
from registry.auth import CredentialResolver, Credentials, credentials_from_config
from registry.cache import BlobCache
from registry.digest import sha256_digest
from registry.errors import DigestMismatch, LayoutError, RegistryError
from registry.layout import OCILayout, parse_layout_ref
from registry.model import Descriptor


def _write_same_blob(root: str, data: bytes, n: int) -> None:
    cache = BlobCache(root)
    for _ in range(n):
        cache.put_bytes(data, sha256_digest(data))


def test_blob_cache_atomic_and_concurrent(tmp_path):
    cache = BlobCache(tmp_path)
    data = os.urandom(1 << 20)
    digest = sha256_digest(data)
    procs = [multiprocessing.Process(target=_write_same_blob, args=(str(tmp_path), data, 5)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        assert p.exitcode == 0
    assert cache.has(digest) and cache.read(digest) == data
    assert os.listdir(tmp_path / "blobs" / "sha256") == [digest.split(":")[1]]  # no temp files left
    with pytest.raises(DigestMismatch):
        cache.put_bytes(b"other", digest)
    with pytest.raises(ZeroDivisionError):
        with cache.writer() as w:
            w.write(b"partial")
            raise ZeroDivisionError
    assert os.listdir(tmp_path / "blobs" / "sha256") == [digest.split(":")[1]]


@pytest.mark.parametrize("text, expected", [
    ("oci:/tmp/x:v1", ("/tmp/x", "v1")), ("oci:rel/dir", ("rel/dir", None)), ("oci:/a:", ("/a", None)),
    ("oci:/a:sha256:" + "a" * 64, ("/a", "sha256:" + "a" * 64)),
])
def test_parse_layout_ref(text, expected):
    assert parse_layout_ref(text) == expected


@pytest.mark.parametrize("text", ["docker://x", "oci:", "oci::tag"])
def test_parse_layout_ref_bad(text):
    with pytest.raises(LayoutError):
        parse_layout_ref(text)


def test_layout_tag_and_resolve(tmp_path):
    layout = OCILayout(tmp_path / "l", create=True)
    body = b'{"schemaVersion":2,"mediaType":"%s","manifests":[]}' % mt.OCI_INDEX.encode()
    with pytest.raises(LayoutError, match="not written"):
        layout.tag(Descriptor(mt.OCI_INDEX, sha256_digest(body), len(body)), "a")
    desc = layout.write_manifest(body, mt.OCI_INDEX)
    layout.tag(desc, "a")
    layout.tag(desc, "b")
    layout.tag(desc, "a")  # replaces, no duplicate
    names = [m.annotations[mt.ANNOTATION_REF_NAME] for m in layout.index().manifests]
    assert names == ["b", "a"]
    assert layout.resolve("a").digest == desc.digest
    with pytest.raises(LayoutError, match="it has: a, b"):
        layout.resolve("zzz")
    with pytest.raises(LayoutError, match="name one"):
        layout.resolve(None)
    with pytest.raises(LayoutError, match="not an OCI image layout"):
        OCILayout(tmp_path / "missing")


def _tag_many(root: str, prefix: str, n: int) -> None:
    layout = OCILayout(root, create=True)
    body = b'{"schemaVersion":2,"mediaType":"%s","manifests":[]}' % mt.OCI_INDEX.encode()
    desc = layout.write_manifest(body, mt.OCI_INDEX)
    for i in range(n):
        layout.tag(desc, f"{prefix}{i}")


def test_layout_tags_from_concurrent_processes_are_all_kept(tmp_path):
    """Builds into one cache tag one layout at once: none may drop another's tag (read, change, replace)."""
    procs = [multiprocessing.Process(target=_tag_many, args=(str(tmp_path), p, 40)) for p in "abcd"]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        assert p.exitcode == 0
    names = {m.annotations[mt.ANNOTATION_REF_NAME] for m in OCILayout(tmp_path).index().manifests}
    assert names == {f"{p}{i}" for p in "abcd" for i in range(40)}


def test_credentials_from_config_order_and_bad_files(tmp_path):
    path = tmp_path / "config.json"
    auth = base64.b64encode(b"u:p").decode()
    calls = []

    def helper(name, host):
        calls.append((name, host))
        return Credentials("h", "s", source=f"helper {name}") if name == "good" else None

    cases = [
        ({"auths": {"r:5000": {"auth": auth}}}, ("u", "p")),
        ({"auths": {"https://r:5000": {"auth": auth}}}, ("u", "p")),
        ({"credHelpers": {"r:5000": "good"}, "auths": {"r:5000": {"auth": auth}}}, ("h", "s")),
        ({"credsStore": "good"}, ("h", "s")),
        ({"credHelpers": {"r:5000": "none"}, "auths": {"r:5000": {"auth": auth}}}, ("u", "p")),
        ({"auths": {"other": {"auth": auth}}}, None),
        ({}, None),
    ]
    for doc, expected in cases:
        path.write_text(json.dumps(doc))
        found = credentials_from_config(path, "r:5000", helper)
        assert (found and (found.username, found.password)) == (expected or None), doc
    path.write_text("{broken")
    with pytest.raises(RegistryError, match="config.json"):
        credentials_from_config(path, "r:5000", helper)
    path.write_text(json.dumps({"auths": {"r:5000": {"auth": "!!notbase64"}}}))
    with pytest.raises(RegistryError, match="log in again"):
        credentials_from_config(path, "r:5000", helper)
    assert credentials_from_config(tmp_path / "absent.json", "r:5000", helper) is None


def test_resolver_prefers_explicit_then_auth_file_then_docker_config(tmp_path):
    def write(name, user):
        p = tmp_path / name
        p.write_text(json.dumps({"auths": {"h": {"auth": base64.b64encode(f"{user}:s3cr3t-pw".encode()).decode()}}}))
        return p

    write("auth.json", "from-auth-file")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "config.json").write_text(json.dumps({"auths": {"h": {"auth": base64.b64encode(b"from-docker:s3cr3t-pw").decode()}}}))
    env = {"REGISTRY_AUTH_FILE": str(tmp_path / "auth.json"), "DOCKER_CONFIG": str(tmp_path / "d")}
    assert CredentialResolver(env=env).get("h").username == "from-auth-file"
    assert CredentialResolver(env={"DOCKER_CONFIG": str(tmp_path / "d")}).get("h").username == "from-docker"
    assert CredentialResolver({"h": Credentials("e", "x")}, env=env).get("h").username == "e"
    assert CredentialResolver(env={}).get("h").anonymous
    assert "s3cr3t-pw" not in repr(CredentialResolver(env=env).get("h"))  # secrets not in repr
