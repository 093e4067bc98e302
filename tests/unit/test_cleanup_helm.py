"""Helm's release storage, decoded for the cleanup: the exact format Helm writes (Secrets and
ConfigMaps), and hostile values (bombs, bad encodings, bad JSON, huge or deep manifests) bounded."""
import base64
import gzip
import json
import time
import zlib

import pytest

from registry.cleanup.helm import (MAX_ENCODED, HelmReleaseError, decode_release, gunzip_bounded, parse_time,
                                   release_json)

DIG = "sha256:" + "ab" * 32
MANIFEST = """---
# Source: shop/templates/web.yaml
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  template:
    spec:
      initContainers: [{name: init, image: "reg:5000/team/init:v1"}]
      containers:
        - name: web
          image: reg:5000/team/app:v7
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly}
spec:
  jobTemplate:
    spec:
      template:
        spec:
          containers: [{name: job, image: "reg:5000/team/job@%s"}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cfg}
data: {a: "1"}
""" % DIG
HOOK = "apiVersion: batch/v1\nkind: Job\nmetadata: {name: migrate}\nspec: {template: {spec: {containers: [{name: m, image: reg:5000/team/migrate:v7}]}}}\n"


def helm_json(**over):
    doc = {"name": "shop", "namespace": "prod", "version": 7,
           "info": {"first_deployed": "2026-01-01T00:00:00Z", "last_deployed": "2026-11-25T10:11:12.123456789+01:00",
                    "status": "superseded"},
           "chart": {"metadata": {"name": "shop"}}, "config": {}, "manifest": MANIFEST,
           "hooks": [{"name": "migrate", "kind": "Job", "manifest": HOOK, "events": ["pre-upgrade"]}]}
    doc.update(over)
    return json.dumps(doc).encode()


def helm_value(payload: bytes, compress: bool = True) -> str:
    """Helm's encodeRelease: base64(gzip(JSON)) (plain base64 of JSON for pre-compression releases)."""
    return base64.b64encode(gzip.compress(payload, 9) if compress else payload).decode()


def secret(value: str) -> dict:
    """As the API returns a Helm Secret: data is base64 once more."""
    return {"kind": "Secret", "type": "helm.sh/release.v1",
            "metadata": {"name": "sh.helm.release.v1.shop.v7", "namespace": "prod",
                         "labels": {"owner": "helm", "name": "shop", "version": "7", "status": "superseded"}},
            "data": {"release": base64.b64encode(value.encode()).decode()}}


def configmap(value: str) -> dict:
    return {"kind": "ConfigMap", "metadata": {"name": "sh.helm.release.v1.shop.v7", "namespace": "prod",
                                              "labels": {"owner": "helm", "name": "shop", "version": "7"}},
            "data": {"release": value}}


EXPECTED = ("reg:5000/team/init:v1", "reg:5000/team/app:v7", f"reg:5000/team/job@{DIG}", "reg:5000/team/migrate:v7")


@pytest.mark.parametrize("obj,kind", [(secret(helm_value(helm_json())), "Secret"),
                                      (configmap(helm_value(helm_json())), "ConfigMap"),
                                      (secret(helm_value(helm_json(), compress=False)), "Secret")])
def test_a_release_in_helms_format_names_every_image_of_its_manifest_and_hooks(obj, kind):
    r = decode_release(obj, kind)
    assert (r.namespace, r.name, r.revision) == ("prod", "shop", 7)
    assert set(r.images) == set(EXPECTED) and len(r.images) == len(EXPECTED)
    assert r.deployed.isoformat() == "2026-11-25T09:11:12.123456+00:00"


def bomb(size: int) -> bytes:
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = b"\0" * (1 << 20)
    return b"".join(z.compress(chunk) for _ in range(size >> 20)) + z.flush()


def test_a_gzip_bomb_is_refused_without_inflating_it():
    blob = bomb(256 << 20)  # 256 MiB of zeros in ~250 KiB
    assert len(blob) < 300_000
    started = time.monotonic()
    with pytest.raises(HelmReleaseError, match="inflates to more than 67108864 bytes"):
        decode_release(secret(base64.b64encode(blob).decode()), "Secret")
    assert time.monotonic() - started < 10  # bounded work; the real bound is memory, never 256 MiB


@pytest.mark.parametrize("obj,needle", [
    ({"data": {}}, "has no data.release"),
    (secret("!!!not base64"), "not base64"),
    ({"kind": "Secret", "metadata": {}, "data": {"release": "x" * (MAX_ENCODED + 1)}}, "more than any real release"),
    (secret(helm_value(b"{not json")), "not JSON"),
    (secret(helm_value(b"[1, 2]")), "not a JSON object"),
    (secret(helm_value(helm_json(name=""))), "has no name"),
    (secret(helm_value(helm_json(version=True))), "not a revision number"),
    (secret(helm_value(helm_json(version="7"))), "not a revision number"),
    (secret(helm_value(helm_json(hooks={"a": 1}))), "hooks is not a list"),
    (secret(helm_value(helm_json(manifest=["x"]))), "a manifest is not a string"),
    (secret(helm_value(helm_json(manifest="image: [unclosed"))), "not valid YAML"),
    (secret(helm_value(helm_json(manifest="image:\n" + "- " * 1 + "[" * 100_000))), "manifest"),
    (secret(helm_value(b"[" * 100_000 + b"]" * 100_000)), "nested deeper"),
    (secret(base64.b64encode(gzip.compress(helm_json())[:-20]).decode()), "truncated"),
    (secret(base64.b64encode(gzip.compress(helm_json()) + b"junk").decode()), "bytes after the gzip stream"),
])
def test_hostile_release_objects_are_errors_naming_the_object(obj, needle):
    with pytest.raises(HelmReleaseError) as exc:
        decode_release(obj, "Secret")
    assert needle in str(exc.value)
    assert str(exc.value).startswith("Helm release Secret ")


def test_the_json_limit_is_a_parameter_and_plain_json_is_bounded_too():
    with pytest.raises(HelmReleaseError, match="more than 100 bytes"):
        release_json(secret(helm_value(helm_json())), "Secret", max_json=100)
    with pytest.raises(HelmReleaseError, match="more than 100 bytes"):
        release_json(secret(helm_value(helm_json(), compress=False)), "Secret", max_json=100)
    assert gunzip_bounded(gzip.compress(b"abc"), 3) == b"abc"
    with pytest.raises(ValueError):
        gunzip_bounded(gzip.compress(b"abcd"), 3)


def test_a_billion_laughs_manifest_costs_its_size_not_its_expansion():
    levels = ["a0: &a0 {image: reg/team/app:lol}"]
    for i in range(1, 30):
        levels.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    started = time.monotonic()
    r = decode_release(secret(helm_value(helm_json(manifest="\n".join(levels), hooks=[]))), "Secret")
    assert r.images == ("reg/team/app:lol",)
    assert time.monotonic() - started < 5


def test_a_huge_manifest_without_images_is_not_parsed():
    big = "---\n".join(f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c{i}}}\ndata: {{k: '{'x' * 1000}'}}\n"
                       for i in range(20_000))  # ~20 MiB of YAML
    started = time.monotonic()
    assert decode_release(secret(helm_value(helm_json(manifest=big, hooks=[]))), "Secret").images == ()
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("text,iso", [
    ("2026-11-25T10:11:12Z", "2026-11-25T10:11:12+00:00"),
    ("2026-11-25T10:11:12.123456789-02:00", "2026-11-25T12:11:12.123456+00:00"),
    ("2026-11-25T10:11:12.5Z", "2026-11-25T10:11:12.500000+00:00"),
    ("2026-11-25T10:11:12", None),  # no zone: unknown
    ("yesterday", None), ("", None), (None, None), (5, None),
])
def test_parse_time(text, iso):
    t = parse_time(text)
    assert (t.isoformat() if t else None) == iso
