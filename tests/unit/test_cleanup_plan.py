from datetime import datetime, timedelta, timezone

import pytest

from registry.cleanup.gitwalk import GitFacts
from registry.cleanup.inuse import InUse
from registry.cleanup.plan import Facts, make_plan
from registry.cleanup.policy import GitRef, KeepPolicy, Limit, NamePattern, Policy
from registry.records import BuildRecord, RecordImage

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)
APP = "reg.test:5000/team/app"
STAGES = "reg.test:5000/team/app-stages"


def C(n: int) -> str:
    return f"{n:040x}"


def D(n: int) -> str:
    return f"sha256:{n:064x}"


def K(n: int) -> str:
    return f"{n:064x}"


def at(hours_ago: float) -> datetime:
    return NOW - timedelta(hours=hours_ago)


def rec(commit: int | None, hours_ago: float, images: list[tuple[list[str], int, list[int]]]) -> tuple[str, BuildRecord]:
    r = BuildRecord(C(commit) if commit is not None else None, None, at(hours_ago),
                    tuple(RecordImage("default", APP, tuple(tags), D(d), tuple(K(s) for s in steps))
                          for tags, d, steps in images))
    return r.tag, r


# git: main: c1 <- c2 <- c3; feature: c1 <- c4; v1 tag at c1; c9 exists nowhere.
GIT = GitFacts(
    refs=(GitRef("branch", "main", C(3), at(30)), GitRef("branch", "feature", C(4), at(20)),
          GitRef("tag", "v1", C(1), at(100))),
    commit_times={C(1): at(100), C(2): at(50), C(3): at(30), C(4): at(20)},
    contains={("branch", "main"): frozenset({C(1), C(2), C(3)}), ("branch", "feature"): frozenset({C(1), C(4)}),
              ("tag", "v1"): frozenset({C(1)})},
)
MAIN_LAST_2 = Policy((KeepPolicy("branch", NamePattern("main"), images=Limit(last=2)),))


def facts(records, app_tags, stage_extra=None, in_use=None, step_created=None):
    stages = {t: D(1000 + i) for i, (t, _) in enumerate(records)}
    for _, r in records:
        for img in r.images:
            for s in img.steps:
                stages[s] = D(int(s, 16) + 5000)
    stages.update(stage_extra or {})
    return Facts(now=NOW, stages_repo=STAGES, records=records, tags={APP: app_tags, STAGES: stages}, git=GIT,
                 in_use=in_use, step_created=step_created or {})


def decisions(plan):
    return {(i.repository.rsplit("/", 1)[1], i.tag): (i.action, i.method) for i in plan.items}


def reasons(plan, tag):
    return next(i.reasons for i in plan.items if i.tag == tag)


def test_last_n_images_per_reference():
    records = [rec(1, 100, [(["c1"], 1, [])]), rec(2, 50, [(["c2"], 2, [])]), rec(3, 30, [(["c3"], 3, [])])]
    plan = make_plan(facts(records, {"c1": D(1), "c2": D(2), "c3": D(3)}), MAIN_LAST_2)
    d = decisions(plan)
    assert d[("app", "c3")] == ("keep", None)
    assert d[("app", "c2")] == ("keep", None)
    assert d[("app", "c1")] == ("delete", "manifest")
    assert "branch main: newest image" in reasons(plan, "c3")[0]
    assert "branch main: 2nd newest image" in reasons(plan, "c2")[0]
    assert reasons(plan, "c1") == (f"commit {C(1)[:10]} is older than the images kept for branch main",)


def test_the_same_digest_counts_once_per_reference():
    # c2 and c3 produced the same image: main's two newest *images* are D(3) and D(1).
    records = [rec(1, 100, [(["c1"], 1, [])]), rec(2, 50, [(["c2"], 3, [])]), rec(3, 30, [(["c3"], 3, [])])]
    plan = make_plan(facts(records, {"c1": D(1), "c2": D(3), "c3": D(3)}), MAIN_LAST_2)
    assert {t: a for (_, t), (a, _) in decisions(plan).items() if not t.startswith("build")} == {
        "c1": "keep", "c2": "keep", "c3": "keep"}


@pytest.mark.parametrize("policy,kept", [
    (Policy((KeepPolicy("branch", NamePattern("/.*/"), images=Limit(last=1)),)), {"c3", "c4"}),
    (Policy((KeepPolicy("branch", NamePattern("/.*/"), Limit(last=1), Limit(last=1)),)), {"c4"}),
    (Policy((KeepPolicy("branch", NamePattern("/.*/"), images=Limit(within=timedelta(hours=40))),)), {"c3", "c4"}),
    (Policy((KeepPolicy("branch", NamePattern("/.*/"), images=Limit(last=1, within=timedelta(hours=40),
                                                                     operator="or")),)), {"c3", "c4"}),
    (Policy((KeepPolicy("branch", NamePattern("main"), images=Limit(last=3, within=timedelta(hours=60))),)),
     {"c2", "c3"}),
    (Policy((KeepPolicy("tag", NamePattern("/.*/")),)), {"c1"}),
    (Policy(()), set()),
])
def test_policies_table(policy, kept):
    records = [rec(n, h, [([f"c{n}"], n, [])]) for n, h in [(1, 100), (2, 50), (3, 30), (4, 20)]]
    plan = make_plan(facts(records, {f"c{n}": D(n) for n in (1, 2, 3, 4)}), policy)
    assert {t for (_, t), (a, _) in decisions(plan).items() if a == "keep" and t.startswith("c")} == kept


def test_shared_digest_removes_only_the_tag():
    # One build pushed two tags of one digest; another build later moved "latest"... the c1 build is
    # deleted but its digest is also tagged "release" by a kept build: delete c1 by tag only.
    records = [rec(1, 100, [(["c1"], 7, [])]), rec(3, 30, [(["c3", "release"], 7, [])])]
    policy = Policy((KeepPolicy("branch", NamePattern("main"), images=Limit(last=1)),))
    plan = make_plan(facts(records, {"c1": D(7), "c3": D(7), "release": D(7)}), policy)
    d = decisions(plan)
    # D(7) is main's newest image, so the c1 build's tag is kept too (same image).
    assert d[("app", "c1")][0] == "keep"
    # Now the old build's digest differs but a foreign tag shares the digest.
    records = [rec(1, 100, [(["c1"], 1, [])]), rec(3, 30, [(["c3"], 3, [])])]
    plan = make_plan(facts(records, {"c1": D(1), "c3": D(3), "mine": D(1)}), policy)
    d = decisions(plan)
    assert d[("app", "c1")] == ("delete", "tag")
    assert d[("app", "mine")] == ("keep", None)
    assert reasons(plan, "mine") == ("not pushed by kade (no build record names this tag)",)


def test_in_use_by_digest_and_by_tag():
    records = [rec(9, 100, [(["old"], 1, [])]), rec(9, 90, [(["older"], 2, [])]), rec(9, 80, [(["x"], 3, [])])]
    in_use = InUse()
    in_use.add(f"other-host:5000/team/app@{D(1)}", "ctx/ns/Deployment/web")
    in_use.add("team/app:older@" + D(50), "ctx/ns/Pod/p")  # tag and digest: tag match (host ignored)
    plan = make_plan(facts(records, {"old": D(1), "older": D(2), "x": D(3)}, in_use=in_use), Policy(()))
    d = decisions(plan)
    assert d[("app", "old")] == ("keep", None)
    assert reasons(plan, "old") == ("in use by digest: ctx/ns/Deployment/web",)
    assert d[("app", "older")] == ("keep", None)
    assert d[("app", "x")] == ("delete", "manifest")
    assert reasons(plan, "x") == (f"commit {C(9)[:10]} is in no branch or tag of the git repository",)


def test_keep_list_recent_nocommit_and_moved_tags():
    records = [rec(None, 1, [(["fresh"], 1, [])]), rec(None, 50, [(["stale"], 2, [])]),
               rec(None, 50, [(["latest"], 3, [])]), rec(None, 50, [(["moved"], 4, [])])]
    policy = Policy((), keep_list=(NamePattern("latest"),))
    plan = make_plan(facts(records, {"fresh": D(1), "stale": D(2), "latest": D(3), "moved": D(99)}), policy)
    d = decisions(plan)
    assert d[("app", "fresh")][0] == "keep" and "built within 2h" in reasons(plan, "fresh")[0]
    assert d[("app", "stale")] == ("delete", "manifest")
    assert "built without a git commit" in reasons(plan, "stale")[0]
    assert reasons(plan, "latest") == ("keep list: latest",)
    assert d[("app", "moved")][0] == "keep" and "moved outside kade" in reasons(plan, "moved")[0]


def test_steps_and_records():
    kept = rec(3, 30, [(["c3"], 3, [1, 2])])
    gone = rec(9, 100, [(["old"], 1, [1, 3])])
    recent = rec(None, 0.5, [([], 5, [4])])  # a build that pushed no tags still keeps its steps
    orphans = {K(10): D(10), K(11): D(11), K(12): D(12), "not-a-step": D(13),
               "build-" + "a" * 40 + "-999": D(14)}
    step_created = {K(10): at(1), K(11): at(10), K(12): None}
    plan = make_plan(facts([kept, gone, recent], {"c3": D(3), "old": D(1)}, orphans,
                           step_created=step_created), MAIN_LAST_2)
    d = decisions(plan)
    stages = {t: a for (r, t), (a, _) in d.items() if r == "app-stages"}
    assert stages[K(1)] == "keep" and stages[K(2)] == "keep" and stages[K(4)] == "keep"
    assert stages[K(3)] == "delete" and reasons(plan, K(3)) == ("only needed by builds that are deleted",)
    assert stages[K(10)] == "keep" and stages[K(12)] == "keep" and stages[K(11)] == "delete"
    assert stages["not-a-step"] == "keep"
    assert stages[kept[0]] == "keep" and stages[recent[0]] == "keep" and stages[gone[0]] == "delete"
    assert stages["build-" + "a" * 40 + "-999"] == "keep"  # a record newer than the plan's listing
    assert reasons(plan, "build-" + "a" * 40 + "-999") == ("newer than this plan",)


def test_purge_deletes_everything_kade_pushed_only():
    records = [rec(3, 0.1, [(["c3"], 3, [1])])]
    in_use = InUse()
    in_use.add(f"{APP}:c3", "ctx/ns/Pod/p")
    plan = make_plan(facts(records, {"c3": D(3), "foreign": D(8)}, {"keepme": D(9)}, in_use=in_use),
                     Policy(()), purge=True)
    d = decisions(plan)
    assert d[("app", "c3")] == ("delete", "manifest")
    assert d[("app-stages", K(1))][0] == "delete" and d[("app-stages", records[0][0])][0] == "delete"
    assert d[("app", "foreign")][0] == "keep" and d[("app-stages", "keepme")][0] == "keep"


def test_plan_json_and_summary():
    records = [rec(1, 100, [(["c1"], 1, [])]), rec(3, 30, [(["c3"], 3, [])])]
    plan = make_plan(facts(records, {"c1": D(1), "c3": D(3)}), MAIN_LAST_2)
    doc = plan.to_dict()
    assert doc["summary"]["keep"] + doc["summary"]["delete"] == len(doc["items"]) == 4
    assert {i["tag"] for i in doc["items"]} == {"c1", "c3", records[0][0], records[1][0]}


def test_hostile_tag_names_from_a_registry_are_dropped():
    from registry.cleanup.snapshot import valid_tags

    assert valid_tags(["v1", "../../x", "a/b", "", ".hidden", "-x", "x" * 129, "ok_1.2-3", None, "v1?x=1"]) == [
        "v1", "ok_1.2-3"]


def test_a_manifest_listed_by_a_kept_index_stays():
    # "multi" is an index (kept: recent) listing D(2); "amd64" tags D(2) from an old build; "x" is unrelated.
    records = [rec(None, 0.5, [(["multi"], 1, [])]), rec(None, 50, [(["amd64"], 2, [])]),
               rec(None, 50, [(["x"], 3, [])])]
    f = facts(records, {"multi": D(1), "amd64": D(2), "x": D(3)})
    f.indexes = {APP: {D(1): frozenset({D(2), D(9)})}}
    plan = make_plan(f, Policy(()))
    d = decisions(plan)
    assert d[("app", "amd64")] == ("keep", None)
    assert reasons(plan, "amd64") == (f"listed by the kept image index {APP}:multi",)
    assert d[("app", "x")] == ("delete", "manifest")


def test_an_index_deleted_by_digest_takes_its_platform_manifests_except_shared_ones():
    # old index D(1) lists D(11) (amd64) and D(12) (arm64); the recent index D(2) lists D(21) and the same
    # arm64 manifest D(12) (that platform did not change); "arm" tags D(13), listed by D(1) too.
    records = [rec(None, 50, [(["old"], 1, [])]), rec(None, 0.5, [(["new"], 2, [])]), rec(None, 0.5, [(["arm"], 13, [])])]
    f = facts(records, {"old": D(1), "new": D(2), "arm": D(13)})
    f.indexes = {APP: {D(1): frozenset({D(11), D(12), D(13)}), D(2): frozenset({D(21), D(12)})}}
    plan = make_plan(f, Policy(()))
    old = next(i for i in plan.items if i.tag == "old")
    assert (old.action, old.method, old.children) == ("delete", "manifest", (D(11),))
    assert old.to_dict()["children"] == [D(11)]
    assert next(i for i in plan.items if i.tag == "new").children == ()  # kept: nothing goes
    assert "children" not in next(i for i in plan.items if i.tag == "arm").to_dict()


def test_an_index_whose_tag_goes_alone_keeps_its_platform_manifests():
    records = [rec(None, 50, [(["old"], 1, [])]), rec(None, 0.5, [(["keep"], 1, [])])]
    f = facts(records, {"old": D(1), "keep": D(1)})
    f.indexes = {APP: {D(1): frozenset({D(11)})}}
    old = next(i for i in make_plan(f, Policy(())).items if i.tag == "old")
    assert (old.action, old.method, old.children) == ("delete", "tag", ())


# ---- scope (#13): only the repositories given -------------------------------------------------------

VICTIM = "reg.test:5000/ceo/victim"


def forged(tags, digest, steps=(), hours_ago=100000.0, repository=VICTIM, commit=None):
    """A record anyone with push rights to the stages repository could write: no commit, dated 2000."""
    r = BuildRecord(C(commit) if commit else None, None, at(hours_ago),
                    (RecordImage("x", repository, tuple(tags), D(digest), tuple(K(s) for s in steps)),))
    return r.tag, r


def test_a_record_naming_another_repository_is_reported_and_ignored():
    records = [rec(None, 50, [(["old"], 1, [1])]), forged(["v1.0"], 77, steps=[2])]
    f = facts(records, {"old": D(1)})
    plan = make_plan(f, Policy(()))
    assert {i.repository for i in plan.items} == {APP, STAGES}  # the victim is never planned
    assert plan.repositories == frozenset({APP, STAGES})
    d = decisions(plan)
    assert d[("app", "old")] == ("delete", "manifest")  # in-scope decisions are unchanged
    assert d[("app-stages", records[1][0])] == ("keep", None)
    assert reasons(plan, records[1][0]) == (f"names {VICTIM}, outside this cleanup: ignored",)
    assert d[("app-stages", K(2))] == ("keep", None)  # the steps it names stay with it
    assert "outside this cleanup" in reasons(plan, K(2))[0]
    assert len(plan.notes) == 1 and records[1][0] in plan.notes[0] and VICTIM in plan.notes[0]
    # purge: the same scope, the same protection of the foreign record
    purge = decisions(make_plan(f, Policy(()), purge=True))
    assert purge[("app-stages", records[1][0])] == ("keep", None) and purge[("app", "old")][0] == "delete"


def test_a_record_with_images_inside_and_outside_decides_the_inside_one_only():
    tag, r = rec(None, 50, [(["old"], 1, [1])])
    mixed = BuildRecord(r.commit, None, r.created, r.images + (RecordImage("w", VICTIM, ("w1",), D(5), (K(3),)),))
    plan = make_plan(facts([(mixed.tag, mixed)], {"old": D(1)}), Policy(()))
    d = decisions(plan)
    assert d[("app", "old")] == ("delete", "manifest")
    assert d[("app-stages", mixed.tag)] == ("keep", None)
    assert d[("app-stages", K(1))] == ("delete", "manifest") and d[("app-stages", K(3))][0] == "keep"


def test_a_record_with_an_invalid_repository_name_is_out_of_scope():
    records = [forged(["x"], 9, repository="Not A Repo!!")]
    plan = make_plan(facts(records, {"x": D(9)}), Policy(()))
    assert decisions(plan)[("app", "x")] == ("keep", None)  # not pushed by kade, as far as this scope knows
    assert plan.notes


# ---- rollback targets: release histories -------------------------------------------------------------

from registry.cleanup.clusters import ClusterReport, ReportEntry  # noqa: E402
from registry.cleanup.policy import DEFAULT_RELEASE_REVISIONS  # noqa: E402
from registry.cleanup.releases import ReleaseRevision  # noqa: E402


def revisions(n, kind="kade", name="prod", cluster="(current)", by_digest=False, hours_apart=1.0):
    """Revisions 1..n of release shop/<name>; revision i references tag r<i> (or digest D(i))."""
    out = []
    for i in range(1, n + 1):
        image = f"other-host/team/app@{D(i)}" if by_digest else f"{APP}:r{i}"
        out.append(ReleaseRevision(cluster, kind, "shop", name, i, at((n - i) * hours_apart), (image,)))
    return out


def old_builds(n):
    return [rec(9, 100 + i, [([f"r{i}"], i, [])]) for i in range(1, n + 1)], {f"r{i}": D(i) for i in range(1, n + 1)}


@pytest.mark.parametrize("kind,label", [("kade", "release shop/prod revision 12"),
                                        ("helm", "helm release shop/prod revision 12")])
def test_the_last_revisions_of_every_release_are_kept_with_the_revision_named(kind, label):
    records, tags = old_builds(12)
    f = facts(records, tags)
    f.releases = revisions(12, kind)
    plan = make_plan(f, Policy(()))
    d = decisions(plan)
    kept = {t for (_, t), (a, _) in d.items() if a == "keep" and t.startswith("r")}
    assert DEFAULT_RELEASE_REVISIONS == 10
    assert kept == {f"r{i}" for i in range(3, 13)}
    assert reasons(plan, "r12") == (label,)
    assert d[("app", "r1")] == ("delete", "manifest") and d[("app", "r2")] == ("delete", "manifest")


def test_release_revisions_by_digest_and_the_policy_limit():
    records, tags = old_builds(4)
    f = facts(records, tags)
    f.releases = revisions(4, by_digest=True, hours_apart=10)  # deployed 30h, 20h, 10h, 0h ago
    within = Policy((), release_revisions=Limit(within=timedelta(hours=15)))
    d = decisions(make_plan(f, within))
    assert {t for (_, t), (a, _) in d.items() if a == "keep" and t.startswith("r")} == {"r3", "r4"}
    either = Policy((), release_revisions=Limit(last=1, within=timedelta(hours=25), operator="or"))
    d = decisions(make_plan(f, either))
    assert {t for (_, t), (a, _) in d.items() if a == "keep" and t.startswith("r")} == {"r2", "r3", "r4"}


def test_revisions_count_per_release_and_an_unknown_time_counts_as_recent():
    records, tags = old_builds(3)
    f = facts(records, tags)
    f.releases = ([ReleaseRevision("(current)", "kade", "shop", "a", 1, None, (f"{APP}:r1",))]
                  + [ReleaseRevision("ctx-2", "kade", "shop", "a", 5, at(1), (f"{APP}:r2",))]  # another cluster
                  + [ReleaseRevision("(current)", "helm", "shop", "a", 2, at(1), (f"{APP}:r3",))])
    plan = make_plan(f, Policy((), release_revisions=Limit(last=1, within=timedelta(hours=2))))
    assert {t for (_, t), (a, _) in decisions(plan).items() if a == "keep" and t.startswith("r")} == {"r1", "r2", "r3"}
    assert reasons(plan, "r2") == ("release shop/a revision 5 (cluster ctx-2)",)


# ---- other clusters' reports ----------------------------------------------------------------------

def report(cluster, hours_ago, uses=(), releases=(), problems=()):
    return ReportEntry(f"cluster-{cluster}", cluster,
                       ClusterReport(cluster, at(hours_ago), tuple(uses), tuple(releases), tuple(problems)))


def test_a_fresh_report_protects_what_that_cluster_uses_and_its_releases_reference():
    records, tags = old_builds(3)
    f = facts(records, tags)
    f.reports = [report("b", 1, uses=[("tag", ("team/app", "r1"), ("prod/Deployment/web",))],
                        releases=[ReleaseRevision("b", "helm", "x", "y", 3, at(2), (f"{APP}@{D(2)}",))])]
    plan = make_plan(f, Policy(()))
    d = decisions(plan)
    assert reasons(plan, "r1") == ("in use by tag: cluster b: prod/Deployment/web",)
    assert reasons(plan, "r2") == ("helm release x/y revision 3 (cluster b)",)
    assert d[("app", "r3")] == ("delete", "manifest")
    assert plan.clusters == ("b",) and plan.blockers == ()


@pytest.mark.parametrize("entry,needle", [
    (report("b", 49), "cluster b is silent: last report"),
    (report("b", -1), "dated in the future"),
    (ReportEntry("cluster-b", "b", error="not JSON"), "its report cluster-b can't be read (not JSON)"),
    (report("b", 1, problems=["helm release Secret x/y: not gzip"]), "cluster b could not read everything"),
    (ReportEntry("cluster-b", "b", ClusterReport("c", at(1))), "names cluster c"),
])
def test_a_silent_or_unreadable_cluster_blocks_every_deletion(entry, needle):
    records, tags = old_builds(2)
    f = facts(records, tags)
    f.reports = [entry]
    plan = make_plan(f, Policy(()))
    assert plan.deletions == []
    assert len(plan.blockers) == 1 and needle in plan.blockers[0]
    r1 = reasons(plan, "r1")
    assert needle in r1[0] and r1[-1].startswith("would be deleted otherwise: commit")
    # purge reads no cluster: reports don't block it (and the reports themselves go)
    assert make_plan(f, Policy(()), purge=True).deletions


def test_the_report_of_a_cluster_this_run_scanned_does_not_count():
    records, tags = old_builds(1)
    f = facts(records, tags)
    f.reports = [report("a", 100, uses=[("tag", ("team/app", "r1"), ("ns/Pod/p",))])]
    f.own_clusters = frozenset({"a"})
    plan = make_plan(f, Policy(()))
    assert plan.blockers == () and decisions(plan)[("app", "r1")] == ("delete", "manifest")
    assert make_plan(f, Policy((), cluster_report_max_age=timedelta(hours=200))).blockers == ()


def test_scan_problems_block_and_report_tags_are_kept_except_by_purge():
    records, tags = old_builds(1)
    f = facts(records, tags, stage_extra={"cluster-b": D(4242)})
    f.reports = [report("b", 1)]
    f.problems = ["kade release shop/prod (kube context (current)): revision 3 is corrupt"]
    plan = make_plan(f, Policy(()))
    assert plan.deletions == [] and plan.blockers[0].startswith("cannot read: kade release shop/prod")
    item = next(i for i in plan.items if i.tag == "cluster-b")
    assert (item.kind, item.action) == ("report", "keep")
    purge = next(i for i in make_plan(f, Policy(()), purge=True).items if i.tag == "cluster-b")
    assert (purge.kind, purge.action) == ("report", "delete")


def test_stage_tags_kept_by_name_need_no_digest_and_an_unread_deletion_is_refused():
    from registry.cleanup.errors import CleanupError
    from registry.cleanup.execute import execute

    kept = rec(3, 30, [(["c3"], 3, [1])])
    gone = rec(9, 100, [(["old"], 1, [2])])
    f = facts([kept, gone], {"c3": D(3), "old": D(1)}, {"cluster-b": None, "foreign": None})
    f.tags[STAGES][K(1)] = f.tags[STAGES][K(2)] = None  # as the snapshot leaves them
    plan = make_plan(f, MAIN_LAST_2)
    items = {i.tag: i for i in plan.items}
    assert (items[K(1)].action, items[K(1)].digest) == ("keep", None)
    assert (items[K(2)].action, items[K(2)].method, items[K(2)].digest) == ("delete", "manifest", None)
    assert items["foreign"].action == "keep" and items["cluster-b"].action == "keep"
    with pytest.raises(CleanupError, match="never read"):
        execute(None, plan)  # refused before any request
    f.tags[STAGES][K(2)] = D(77)
    assert {i.tag: i.digest for i in make_plan(f, MAIN_LAST_2).deletions}[K(2)] == D(77)
