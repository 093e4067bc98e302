import json

import pytest

from registry import mediatypes as mt
from registry.digest import Hasher, is_digest, sha256_digest, validate_digest
from registry.errors import DigestMismatch, InvalidDigest, InvalidManifest
from registry.imageconfig import ImageConfig
from registry.model import Descriptor, Index, Manifest, parse_manifest

D1, D2, D3 = (sha256_digest(x) for x in (b"1", b"2", b"3"))


def test_digest_helpers():
    assert sha256_digest(b"") == "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    h = Hasher()
    for part in (b"a", b"bc"):
        h.update(part)
    assert h.digest() == sha256_digest(b"abc") and h.size == 3
    h.verify(sha256_digest(b"abc"), "x")
    with pytest.raises(DigestMismatch, match="blob y"):
        h.verify(D1, "blob y")
    for bad in ("sha256:xyz", "sha256:" + "A" * 64, "md5:" + "a" * 32, "sha256" + "a" * 64, "", "sha512:" + "a" * 64):
        assert not is_digest(bad)
        with pytest.raises(InvalidDigest):
            validate_digest(bad)
    assert is_digest("sha512:" + "a" * 128)


@pytest.mark.parametrize("obj", [
    Manifest(Descriptor(mt.OCI_CONFIG, D1, 10), [Descriptor(mt.OCI_LAYER_GZIP, D2, 20)]),
    Manifest(Descriptor(mt.DOCKER_CONFIG, D1, 10), [Descriptor(mt.DOCKER_LAYER_GZIP, D2, 20, urls=["https://x"])],
             media_type=mt.DOCKER_MANIFEST),
    Manifest(Descriptor(mt.OCI_EMPTY, mt.OCI_EMPTY_DIGEST, 2), [], annotations={"a": "b"},
             subject=Descriptor(mt.OCI_MANIFEST, D3, 5), artifact_type="application/x"),
    Index([Descriptor(mt.OCI_MANIFEST, D1, 1, platform={"os": "linux", "architecture": "arm64", "variant": "v8"}),
           Descriptor(mt.OCI_MANIFEST, D2, 2, annotations={"k": "v"})]),
    Index([Descriptor(mt.DOCKER_MANIFEST, D1, 1, platform={"os": "linux", "architecture": "amd64"})],
          media_type=mt.DOCKER_LIST),
])
def test_manifest_round_trip(obj):
    body = obj.to_bytes()
    parsed = parse_manifest(body, obj.media_type)
    assert parsed == obj
    assert parsed.to_bytes() == body  # stable serialisation
    assert parse_manifest(body) == obj  # mediaType from the body


@pytest.mark.parametrize("doc, declared, kind", [
    ({"schemaVersion": 2, "config": {"mediaType": mt.OCI_CONFIG, "digest": D1, "size": 1}, "layers": []}, None,
     Manifest),
    ({"schemaVersion": 2, "manifests": []}, None, Index),
    ({"schemaVersion": 2, "manifests": []}, mt.DOCKER_LIST, Index),
])
def test_media_type_detection_without_field(doc, declared, kind):
    parsed = parse_manifest(json.dumps(doc).encode(), declared)
    assert isinstance(parsed, kind)
    if declared:
        assert parsed.media_type == declared


@pytest.mark.parametrize("body, reason", [
    (b"not json", "not valid JSON"),
    (b"[]", "JSON object"),
    (b"{}", "neither"),
    (json.dumps({"schemaVersion": 1, "mediaType": mt.OCI_MANIFEST}).encode(), "schemaVersion"),
    (json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "config": {}, "layers": []}).encode(), "mediaType"),
    (json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
                 "config": {"mediaType": "x", "digest": "sha256:zz", "size": 1}, "layers": []}).encode(), "digest"),
    (json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
                 "config": {"mediaType": "x", "digest": D1, "size": -1}, "layers": []}).encode(), "size"),
    (json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
                 "config": {"mediaType": "x", "digest": D1, "size": True}, "layers": []}).encode(), "size"),
    (json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
                 "config": {"mediaType": "x", "digest": D1, "size": 1}, "layers": {}}).encode(), "layers"),
    (json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [{"mediaType": "x", "digest": D1,
                 "size": 1, "platform": {"os": 1}}]}).encode(), "platform"),
    (json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [],
                 "annotations": {"a": 1}}).encode(), "annotations"),
    (json.dumps({"schemaVersion": 2, "mediaType": "application/x-unknown"}).encode(), "unsupported"),
    (json.dumps({"schemaVersion": 1, "mediaType": mt.DOCKER_MANIFEST_V1_SIGNED}).encode(), "schema 1"),
])
def test_hostile_manifests(body, reason):
    with pytest.raises(InvalidManifest, match=reason):
        parse_manifest(body)


def test_declared_and_own_media_type_disagree():
    body = Index([]).to_bytes()
    with pytest.raises(InvalidManifest, match="served as"):
        parse_manifest(body, mt.OCI_MANIFEST)


def test_image_config_round_trip_keeps_unknown_fields():
    doc = {"architecture": "arm64", "os": "linux", "variant": "v8", "created": "2024-01-01T00:00:00Z",
           "config": {"Env": ["A=1"], "Cmd": ["sh"], "Entrypoint": None, "Labels": {"x": "y"}},
           "rootfs": {"type": "layers", "diff_ids": [D1, D2]}, "history": [{"created_by": "RUN x"}],
           "author": "me", "os.features": ["f"]}
    cfg = ImageConfig.from_bytes(json.dumps(doc).encode())
    assert (cfg.architecture, cfg.variant, cfg.diff_ids, cfg.env, cfg.cmd) == ("arm64", "v8", (D1, D2), ["A=1"], ["sh"])
    assert json.loads(cfg.to_bytes()) == doc
    assert ImageConfig.from_bytes(cfg.to_bytes()).to_bytes() == cfg.to_bytes()


@pytest.mark.parametrize("body", [b"[]", b"{", b'{"rootfs": {"diff_ids": ["nope"]}}', b'{"config": []}',
                                  b'{"history": [1]}', b'{"architecture": 5}'])
def test_image_config_hostile(body):
    with pytest.raises(InvalidManifest):
        ImageConfig.from_bytes(body)


@pytest.mark.parametrize("runtime, field", [
    ({"Shell": 5}, "Shell"), ({"Shell": "bash"}, "Shell"), ({"Shell": [1]}, "Shell"), ({"Env": "A=1"}, "Env"),
    ({"Env": [1]}, "Env"), ({"Cmd": "sh"}, "Cmd"), ({"Entrypoint": {"a": 1}}, "Entrypoint"),
    ({"OnBuild": "RUN x"}, "OnBuild"), ({"Labels": ["a"]}, "Labels"), ({"Labels": {"a": 1}}, "Labels"),
    ({"ExposedPorts": ["80/tcp"]}, "ExposedPorts"), ({"ExposedPorts": {"80/tcp": 1}}, "ExposedPorts"),
    ({"Volumes": ["/v"]}, "Volumes"), ({"User": 5}, "User"), ({"WorkingDir": 5}, "WorkingDir"),
    ({"StopSignal": 9}, "StopSignal"), ({"Healthcheck": "x"}, "Healthcheck"),
    ({"Healthcheck": {"Test": "CMD x"}}, "Healthcheck"), ({"Healthcheck": {"Interval": "30s"}}, "Healthcheck"),
])
def test_image_config_runtime_fields_of_the_wrong_type_are_refused_by_name(runtime, field):
    """As Go's image-spec types unmarshal them in Docker and BuildKit; kade crashed on several."""
    with pytest.raises(InvalidManifest, match=f"config.{field} must be"):
        ImageConfig.from_dict({"architecture": "amd64", "os": "linux", "config": runtime})


def test_image_config_runtime_nulls_and_docker_shapes_are_kept():
    runtime = {"Env": None, "Cmd": None, "Entrypoint": None, "OnBuild": None, "Labels": None, "Volumes": {"/d": {}},
               "ExposedPorts": {"80/tcp": {}}, "User": "", "WorkingDir": "", "StopSignal": "SIGTERM",
               "Healthcheck": {"Test": ["CMD-SHELL", "true"], "Interval": 30000000000, "Retries": 3},
               "ArgsEscaped": True, "Image": "sha256:x", "Domainname": ""}
    assert ImageConfig.from_dict({"architecture": "amd64", "os": "linux", "config": runtime}).runtime == runtime


def _image(arch: str, variant: str = ""):
    from registry.image import Image

    return Image.assemble(ImageConfig.from_dict({"architecture": arch, "os": "linux", "variant": variant or None,
                                                 "rootfs": {"type": "layers", "diff_ids": []}}), [])


def test_image_index_lists_each_platform_once_with_stable_bytes():
    from registry.image import ImageIndex
    from registry.model import Platform

    amd, arm = _image("amd64"), _image("arm64", "v8")
    index = ImageIndex.assemble([amd, arm], {"org.opencontainers.image.created": "2026-01-01T00:00:00Z"})
    doc = json.loads(index.index_bytes)
    assert doc["mediaType"] == mt.OCI_INDEX and index.digest == sha256_digest(index.index_bytes)
    assert [(m["digest"], m["platform"]) for m in doc["manifests"]] == [
        (amd.digest, {"architecture": "amd64", "os": "linux"}),
        (arm.digest, {"architecture": "arm64", "os": "linux", "variant": "v8"})]
    built_for = ImageIndex.assemble([amd, arm], platforms=[Platform("linux", "amd64"), Platform("linux", "arm64")])
    assert json.loads(built_for.index_bytes)["manifests"][1]["platform"] == {"architecture": "arm64", "os": "linux"}
    assert ImageIndex.assemble([amd, arm]).digest == ImageIndex.assemble([amd, arm]).digest
    with pytest.raises(InvalidManifest, match="two images for platform linux/aarch64 in one index"):
        ImageIndex.assemble([amd, arm], platforms=[Platform("linux", "arm64"), Platform("linux", "aarch64")])
