"""Cluster reports: what one cluster publishes (only what concerns the repositories cleaned), read
back field by field, and hostile reports refused."""
import json
from datetime import datetime, timedelta, timezone

import pytest

from registry.cleanup.clusters import (MAX_REPORT_BYTES, MAX_USERS, ClusterReport, ReportEntry, ReportError,
                                       is_report_tag, make_report, merge_reports, parse_report, report_manifest,
                                       report_tag)
from registry.cleanup.inuse import InUse
from registry.cleanup.releases import ReleaseRevision

NOW = datetime(2026, 11, 26, 12, tzinfo=timezone.utc)
MINE = "sha256:" + "11" * 32
THEIRS = "sha256:" + "22" * 32


def scanned() -> InUse:
    u = InUse()
    u.add("reg:5000/team/app:v1", "(current)/shop/Deployment/web")
    u.add(f"mirror:5000/elsewhere/copy@{MINE}", "(current)/shop/Pod/web-1")  # our digest, another name
    u.add("reg:5000/other-team/secret-app:v1", "(current)/other/Deployment/x")  # not ours: not published
    u.add(f"reg:5000/other-team/secret-app@{THEIRS}", "(current)/other/Pod/x-1")
    for i in range(MAX_USERS + 3):
        u.add("reg:5000/team/app:busy", f"(current)/shop/Pod/busy-{i}")
    return u


RELEASES = [ReleaseRevision("(current)", "helm", "shop", "web", 3, NOW, ("reg:5000/team/app:v0", "nginx:1")),
            ReleaseRevision("(current)", "kade", "other", "x", 1, None, ("reg:5000/other-team/secret-app:v0",))]


def test_a_report_holds_only_what_concerns_the_repositories_cleaned():
    r = make_report("prod-eu", NOW, scanned(), RELEASES, ["a problem"], ["shop"], {"team/app", "team/app-stages"},
                    {MINE}, label="(current)")
    assert r.uses == (("tag", ("team/app", "busy"), tuple(f"shop/Pod/busy-{i}" for i in range(MAX_USERS - 1))
                       + ("... and 4 more",)),
                      ("tag", ("team/app", "v1"), ("shop/Deployment/web",)),
                      ("digest", MINE, ("shop/Pod/web-1",)))
    assert r.releases == (ReleaseRevision("prod-eu", "helm", "shop", "web", 3, NOW, ("reg:5000/team/app:v0",)),)
    assert "secret-app" not in r.to_bytes().decode() and "other" not in json.loads(r.to_bytes())["namespaces"]
    back = parse_report(r.to_bytes(), "t")
    assert back == r
    config, manifest = report_manifest(r)
    assert json.loads(manifest)["artifactType"] == "application/vnd.kade.cluster-report.v1+json"
    assert json.loads(manifest)["config"]["mediaType"] == "application/vnd.kade.cluster-report.v1+json"


def test_merged_reports_protect_under_the_clusters_name():
    r = make_report("b", NOW, scanned(), RELEASES, [], [], {"team/app"}, set(), label="(current)")
    merged = merge_reports([ReportEntry("cluster-b", "b", r)], own=(), now=NOW + timedelta(hours=1),
                           max_age=timedelta(hours=2))
    assert merged.blockers == [] and merged.used == ["b"]
    assert merged.in_use.tag_users("x:1/team/app", "v1") == ["cluster b: shop/Deployment/web"]
    assert merged.releases[0].label() == "helm release shop/web revision 3 (cluster b)"


def test_report_names_and_tags():
    assert report_tag("prod-eu") == "cluster-prod-eu" and is_report_tag("cluster-prod-eu")
    assert report_tag("0b7e3c9a-1f2d-4a1e-9b8c-5d6e7f8a9b0c")  # a kube-system UID
    for bad in ("", "-x", "a/b", "x" * 64, "a b", "../x"):
        with pytest.raises(ReportError):
            report_tag(bad)
    assert not is_report_tag("cluster-") and not is_report_tag("build-x")


def good(**over):
    doc = {"schemaVersion": 1, "cluster": "b", "created": "2026-11-26T11:00:00Z", "namespaces": [],
           "uses": [{"repository": "team/app", "tag": "v1", "users": ["ns/Pod/p"]}, {"digest": MINE, "users": []}],
           "releases": [{"kind": "kade", "namespace": "ns", "name": "r", "revision": 2, "deployed": None,
                         "images": ["reg/team/app:v1"]}], "problems": []}
    doc.update(over)
    return json.dumps(doc).encode()


@pytest.mark.parametrize("data,needle", [
    (b"not json", "not JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "not JSON"),
    (b"[]", "not a JSON object"),
    (good(schemaVersion=2), "unsupported schemaVersion 2"),
    (good(cluster="../x"), "cluster: not a cluster name"),
    (good(cluster=5), "cluster: expected a string"),
    (good(created="yesterday"), "not an RFC 3339 time"),
    (good(uses={"a": 1}), "uses: expected a list"),
    (good(uses=[5]), "uses[0]: expected an object"),
    (good(uses=[{"digest": "sha256:nothex", "users": []}]), "uses[0].digest: not a digest"),
    (good(uses=[{"repository": "team/app", "tag": "v1", "users": ["u"] * (MAX_USERS + 1)}]), "users: expected a list"),
    (good(uses=[{"repository": "x" * 2000, "tag": "v1", "users": []}]), "repository: expected a string"),
    (good(releases=[{"kind": "flux", "namespace": "n", "name": "r", "revision": 1, "images": []}]), "kind"),
    (good(releases=[{"kind": "kade", "namespace": "n", "name": "r", "revision": True, "images": []}]), "revision"),
    (good(releases=[{"kind": "kade", "namespace": "n", "name": "r", "revision": 1, "images": [1]}]), "images[0]"),
    (good(problems="x"), "problems: expected a list"),
    (b" " * (MAX_REPORT_BYTES + 1), "more than"),
])
def test_hostile_reports_are_refused_naming_the_field(data, needle):
    with pytest.raises(ReportError) as exc:
        parse_report(data, "reg/app-stages:cluster-b")
    assert needle in str(exc.value) and str(exc.value).startswith("reg/app-stages:cluster-b")


def test_a_good_report_parses():
    r = parse_report(good(), "t")
    assert r.cluster == "b" and r.uses[1] == ("digest", MINE, ()) and r.releases[0].revision == 2


def test_an_oversized_report_is_refused_before_publishing():
    huge = ClusterReport("b", NOW, problems=tuple("x" * 1000 for _ in range(9000)))
    with pytest.raises(ReportError, match="scan fewer namespaces"):
        report_manifest(huge)


def test_a_report_never_drops_an_entry_to_fit():
    many = ReleaseRevision("(current)", "kade", "shop", "web", 1, None,
                           tuple(f"reg:5000/team/app:t{i}" for i in range(1001)))
    with pytest.raises(ReportError, match="names 1001 images, more than a report holds"):
        make_report("b", NOW, InUse(), [many], [], [], {"team/app"}, set())
    r = make_report("b", NOW, InUse(), [], [f"p{i}" for i in range(150)], [], {"team/app"}, set())
    assert len(r.problems) == 100 and r.problems[-1] == "... and 51 more"
