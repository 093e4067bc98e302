"""Images of rendered manifests, which release revisions are kept, and kade's release records as
facts (through deployer.release, with hostile records bounded)."""
import base64
import gzip
from datetime import datetime, timedelta, timezone

import pytest

from deployer.errors import DeployError
from deployer.release import ReleaseRecord, record_secrets, records_from_secrets
from kade.cleanup_facts import revision_of
from registry.cleanup.manifests import images_in, images_in_yaml
from registry.cleanup.policy import Limit
from registry.cleanup.releases import ReleaseRevision, kept_revisions, rollback_targets

NOW = datetime(2026, 11, 26, 12, tzinfo=timezone.utc)
DIG = "sha256:" + "cd" * 32


def pod_spec(*images, init=(), ephemeral=()):
    return {"containers": [{"name": "c", "image": i} for i in images],
            "initContainers": [{"name": "i", "image": i} for i in init],
            "ephemeralContainers": [{"name": "e", "image": i} for i in ephemeral]}


@pytest.mark.parametrize("doc,images", [
    ({"kind": "Pod", "spec": pod_spec("a:1", init=["b:1"], ephemeral=["dbg:1"])}, ["a:1", "b:1", "dbg:1"]),
    ({"kind": "Deployment", "spec": {"template": {"spec": pod_spec("d:1")}}}, ["d:1"]),
    ({"kind": "CronJob", "spec": {"jobTemplate": {"spec": {"template": {"spec": pod_spec(f"cj@{DIG}")}}}}},
     [f"cj@{DIG}"]),
    ({"kind": "Rollout", "apiVersion": "argoproj.io/v1alpha1", "spec": {"template": {"spec": pod_spec("ro:2")}}},
     ["ro:2"]),
    ({"kind": "Cluster", "apiVersion": "postgresql.cnpg.io/v1", "spec": {"image": "pg:16"}}, ["pg:16"]),
    ({"kind": "X", "spec": {"image": {"repository": "reg/x", "tag": "v1", "digest": DIG}}}, ["reg/x:v1", f"reg/x@{DIG}"]),
    ({"kind": "ConfigMap", "data": {"image": 5, "images": "not-an-image-key"}}, []),
    ([{"spec": pod_spec("x:1")}, {"spec": pod_spec("x:1", "y:1")}], ["x:1", "y:1"]),
    ({"kind": "Pod", "spec": {"containers": [{"image": "  "}, "junk", None]}}, []),
])
def test_images_in_manifests(doc, images):
    assert sorted(images_in(doc)) == sorted(images)


def test_images_in_a_deep_or_shared_structure_are_found_iteratively():
    deep: dict = {"image": "bottom:1"}
    for _ in range(50_000):  # deeper than Python's recursion limit
        deep = {"spec": [deep]}
    assert images_in(deep) == ["bottom:1"]
    shared = {"image": "s:1"}
    wide = [shared] * 1000
    assert images_in([wide] * 1000) == ["s:1"]


def test_images_in_yaml_streams():
    text = "---\nkind: Pod\nspec: {containers: [{image: a:1}]}\n---\n---\nkind: Job\nspec: {template: {spec: " \
           "{containers: [{image: 'b:2'}]}}}\n"
    assert images_in_yaml(text, "x") == ["a:1", "b:2"]
    assert images_in_yaml("kind: ConfigMap\ndata: {a: b}\n", "x") == []


def rev(cluster, kind, name, revision, hours_ago, *images):
    return ReleaseRevision(cluster, kind, "shop", name, revision, None if hours_ago is None else
                           NOW - timedelta(hours=hours_ago), tuple(images))


def test_kept_revisions_per_release():
    history = [rev("c", "kade", "a", n, 10 - n, f"reg:5000/team/a:{n}") for n in range(1, 8)] + [rev("c", "helm", "a", 1, 500, "h:1")]
    kept = kept_revisions(history, Limit(last=3), NOW)
    assert [(r.kind, r.revision) for r in kept] == [("helm", 1), ("kade", 7), ("kade", 6), ("kade", 5)]
    kept = kept_revisions(history, Limit(last=1, within=timedelta(hours=4.5), operator="or"), NOW)
    assert sorted((r.kind, r.revision) for r in kept) == [("helm", 1), ("kade", 6), ("kade", 7)]
    table = rollback_targets(history, Limit(last=2), NOW)
    assert table.tag_users("other.host:5000/team/a", "7") == ["release shop/a revision 7 (cluster c)"]
    assert table.tag_users("other.host:5000/team/a", "5") == []


def record(revision, manifests, images=None, created="2026-11-25T10:00:00.000000Z"):
    return ReleaseRecord("prod", "shop", revision, "superseded", manifests, created=created, images=images or {})


def test_a_kade_release_record_is_a_revision_with_every_image():
    manifests = [{"kind": "Deployment", "spec": {"template": {"spec": pod_spec("reg/app:v3", init=["reg/init:v3"])}}},
                 {"kind": "Service", "spec": {"ports": []}}]
    r = revision_of("(current)", "shop", "prod", record(3, manifests, {"app": f"reg/app@{DIG}", "bad": 5}))
    assert (r.kind, r.namespace, r.name, r.revision) == ("kade", "shop", "prod", 3)
    assert r.images == ("reg/app:v3", "reg/init:v3", f"reg/app@{DIG}")
    assert r.deployed == datetime(2026, 11, 25, 10, tzinfo=timezone.utc)
    assert r.label() == "release shop/prod revision 3"
    with pytest.raises(ValueError):
        revision_of("(current)", "shop", "prod", record("3", manifests))


def test_a_kade_record_inflating_past_the_limit_is_an_error_not_a_gigabyte():
    secrets = record_secrets(record(1, [{"kind": "ConfigMap", "data": {"x": "0" * 5_000_000}}]))
    assert records_from_secrets(secrets)[0].revision == 1  # the deployer itself reads it whole
    with pytest.raises(DeployError, match="revision 1 is corrupt .*more than 1000000 bytes"):
        records_from_secrets(secrets, max_json=1_000_000)
    bomb = gzip.compress(b"{" + b" " * (300 << 20) + b"}", 9)  # 300 MiB of spaces
    secrets[0]["data"]["release"] = base64.b64encode(bomb).decode()
    with pytest.raises(DeployError, match="more than"):
        records_from_secrets(secrets, max_json=64 << 20)
