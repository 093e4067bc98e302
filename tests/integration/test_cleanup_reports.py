"""Cluster reports on the real registry: published (tag replaced in one PUT, the previous manifest
dropped), read back, listed by `kade cleanup clusters`, forgotten; a fresh one protects, a stale or
forged one blocks every deletion."""
from __future__ import annotations

import io
import json
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from kade.cli import main
from registry import mediatypes as mt
from registry.cleanup.clusters import (REPORT_MEDIA_TYPE, ClusterReport, make_report, publish_report,
                                       read_reports)
from registry.cleanup.inuse import InUse
from registry.client import RegistryClient
from registry.digest import sha256_digest
from registry.model import Descriptor, Manifest
from registry.records import BuildRecord, RecordImage, push_record
from tests.fixtures.cleanup import GitHistory, push_image

NOW = datetime.now(timezone.utc).replace(microsecond=0)


@pytest.fixture
def repo(registry, tmp_path):
    client = RegistryClient()
    name = f"{registry.host}/rep-{uuid.uuid4().hex[:6]}/app"
    app, stages = client.repository(name), client.repository(name + "-stages")
    digests = {t: push_image(app, [t], f"image {t}") for t in ("used-by-b", "unused")}
    for i, (tag, digest) in enumerate(digests.items()):  # one record each (a record's tag has its time)
        push_record(stages, BuildRecord(None, None, NOW - timedelta(days=30, minutes=i),
                                        (RecordImage("d", name, (tag,), digest),)))
    git = GitHistory(tmp_path / "git")
    git.commit("a", "main", int(NOW.timestamp()))
    git.write()
    yield {"client": client, "name": name, "app": app, "stages": stages, "digests": digests, "git": str(git.path)}
    client.close()


def report_of_b(name: str, created: datetime) -> ClusterReport:
    u = InUse()
    u.add(f"{name}:used-by-b", "b-ctx/shop/Deployment/web")
    return make_report("b", created, u, [], [], ["shop"], {name.split("/", 1)[1]}, set(), label="b-ctx")


def cleanup(r, *extra):
    return ["cleanup", "--repo", r["name"], "--git", r["git"], "--without-kube", "--output", "json", *extra]


def test_a_report_is_replaced_in_place_and_protects_what_its_cluster_uses(repo, capsys):
    r = repo
    old = publish_report(r["stages"], report_of_b(r["name"], NOW - timedelta(hours=3)))
    first = r["stages"].head_manifest(old).digest
    assert publish_report(r["stages"], report_of_b(r["name"], NOW)) == "cluster-b"
    assert r["stages"].head_manifest(first) is None  # the previous report is gone, not left untagged
    [entry] = read_reports(r["stages"], r["stages"].list_tags())
    assert entry.report is not None and entry.report.created == NOW

    assert main(cleanup(r, "--dry-run")) == 0
    plan = json.loads(capsys.readouterr().out)
    items = {i["tag"]: i for i in plan["items"]}
    assert items["used-by-b"]["action"] == "keep"
    assert items["used-by-b"]["reasons"] == ["in use by tag: cluster b: shop/Deployment/web"]
    assert items["unused"]["action"] == "delete" and plan["clusterReports"] == ["b"]
    assert items["cluster-b"]["kind"] == "report" and items["cluster-b"]["action"] == "keep"

    assert main(["cleanup", "clusters", "--repo", r["name"], "--output", "json"]) == 0
    [row] = json.loads(capsys.readouterr().out)["clusters"]
    assert (row["cluster"], row["status"], row["imagesInUse"], row["namespaces"]) == ("b", "ok", 1, ["shop"])


def test_a_stale_report_blocks_deletion_until_the_cluster_is_forgotten(repo, capsys):
    r = repo
    publish_report(r["stages"], report_of_b(r["name"], NOW - timedelta(days=3)))
    assert main(cleanup(r)) == 0
    plan = json.loads(capsys.readouterr().out)
    assert [i for i in plan["items"] if i.get("status") == "deleted"] == []
    assert "cluster b is silent" in plan["blockers"][0]
    unused = next(i for i in plan["items"] if i["tag"] == "unused")
    assert unused["action"] == "keep" and unused["reasons"][-1].startswith("would be deleted otherwise")
    assert set(r["app"].list_tags()) == {"used-by-b", "unused"}

    assert main(["cleanup", "clusters", "--repo", r["name"]]) == 0
    text = capsys.readouterr().out
    assert "b " in text and "silent: cluster b is silent" in text
    assert main(["cleanup", "clusters", "--repo", r["name"], "--forget", "b"]) == 0
    assert "no cluster has reported" in capsys.readouterr().out
    assert main(cleanup(r)) == 0
    capsys.readouterr()
    assert set(r["app"].list_tags()) == set()  # both old images go once nobody speaks for b


def forge(stages, tag: str, config: bytes, media_type: str = REPORT_MEDIA_TYPE, claimed: int | None = None) -> None:
    stages.upload_blob(io.BytesIO(config), sha256_digest(config), len(config))
    stages.upload_blob(io.BytesIO(mt.OCI_EMPTY_BYTES), mt.OCI_EMPTY_DIGEST, len(mt.OCI_EMPTY_BYTES))
    body = Manifest(config=Descriptor(media_type, sha256_digest(config), claimed or len(config)),
                    layers=[Descriptor(mt.OCI_EMPTY, mt.OCI_EMPTY_DIGEST, len(mt.OCI_EMPTY_BYTES))]).to_bytes()
    stages.put_manifest(tag, body, mt.OCI_MANIFEST)


@pytest.mark.parametrize("tag,config,media_type,claimed,needle", [
    ("cluster-x", b"{not json", REPORT_MEDIA_TYPE, None, "not JSON"),
    ("cluster-x", b'{"schemaVersion": 1}', "application/vnd.oci.image.config.v1+json", None, "not a kade cluster report"),
    ("cluster-x", b"{}", REPORT_MEDIA_TYPE, 1 << 30, "more than"),
    ("cluster-x", ClusterReport("y", NOW).to_bytes(), REPORT_MEDIA_TYPE, None, "names cluster y"),
])
def test_a_forged_report_blocks_and_is_listed_as_unreadable(repo, capsys, tag, config, media_type, claimed, needle):
    r = repo
    forge(r["stages"], tag, config, media_type, claimed)
    assert main(cleanup(r, "--dry-run")) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["summary"]["delete"] == 0 and needle in plan["blockers"][0]
    assert main(["cleanup", "clusters", "--repo", r["name"], "--output", "json"]) == 0
    [row] = json.loads(capsys.readouterr().out)["clusters"]
    assert row["status"] in ("unreadable", "silent") and needle in row["problem"]
