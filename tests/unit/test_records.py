import json
from datetime import datetime, timezone

import pytest

from registry.errors import InvalidManifest
from registry.records import (RECORD_MEDIA_TYPE, BuildRecord, RecordImage, is_record_tag, record_manifest,
                              record_tag_millis)

DIG = "sha256:" + "cd" * 32
KEY = "ef" * 32


def _record(commit="a" * 40):
    return BuildRecord(commit, "main", datetime(2026, 11, 26, 7, 30, 1, 250000, tzinfo=timezone.utc),
                       (RecordImage("default", "127.0.0.1:5000/team/app", ("v1", "latest"), DIG, (KEY,)),))


def test_round_trip_and_tag():
    r = _record()
    assert BuildRecord.from_config_bytes(r.to_config_bytes()) == r
    assert r.tag == "build-" + "a" * 40 + "-1795678201250"
    assert is_record_tag(r.tag) and record_tag_millis(r.tag) == 1795678201250
    doc = json.loads(r.to_config_bytes())
    assert doc["created"] == "2026-11-26T07:30:01.250Z" and doc["schemaVersion"] == 1
    assert _record(None).tag.startswith("build-nocommit-")


def test_manifest_shape():
    config, manifest = record_manifest(_record())
    m = json.loads(manifest)
    assert m["artifactType"] == RECORD_MEDIA_TYPE and m["config"]["mediaType"] == RECORD_MEDIA_TYPE
    assert m["layers"] == [{"mediaType": "application/vnd.oci.empty.v1+json", "size": 2,
                            "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"}]


@pytest.mark.parametrize("tag,ok", [
    ("build-" + "a" * 40 + "-1", True), ("build-nocommit-12", True), ("build-" + "A" * 40 + "-1", False),
    ("build-abc-1", False), ("build-nocommit-", False), ("v1", False), ("build-nocommit-1x", False),
])
def test_record_tags(tag, ok):
    assert is_record_tag(tag) is ok


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d.update(schemaVersion=2), "unsupported schemaVersion 2"),
    (lambda d: d.update(commit="xyz"), "commit must be 40 lowercase hex"),
    (lambda d: d.update(created="yesterday"), "created is not an RFC 3339 time"),
    (lambda d: d.update(created="2026-11-26T07:30:01"), "no time zone"),
    (lambda d: d.update(images={}), "images must be a list"),
    (lambda d: d["images"][0].update(digest="sha256:zz"), "images[0].digest: not a digest"),
    (lambda d: d["images"][0].update(steps=["../../etc"]), "images[0].steps"),
    (lambda d: d["images"][0].update(tags=[""]), "images[0].tags"),
    (lambda d: d["images"][0].pop("repository"), "images[0].repository"),
])
def test_hostile_records_are_rejected(mutate, message):
    doc = json.loads(_record().to_config_bytes())
    mutate(doc)
    with pytest.raises(InvalidManifest) as exc:
        BuildRecord.from_config_bytes(json.dumps(doc).encode(), "reg/app-stages:build-x")
    assert message in str(exc.value) and "reg/app-stages:build-x" in str(exc.value)


def test_not_json():
    with pytest.raises(InvalidManifest, match="not JSON"):
        BuildRecord.from_config_bytes(b"\xff\x00", "rec")
