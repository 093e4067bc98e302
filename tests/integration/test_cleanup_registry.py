"""Cleanup against the real registry (distribution 2.8: deletes by digest only) and a real git repo."""
from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from kade.cli import main
from registry.cleanup.execute import execute
from registry.cleanup.inuse import InUse, images_of
from registry.cleanup.policy_file import parse_policy_text
from registry.cleanup.run import collect_facts, plan_cleanup
from registry.client import RegistryClient
from registry.records import BuildRecord, RecordImage, push_record
from tests.fixtures.cleanup import GitHistory, push_image

POLICY = """
keepPolicies:
  - references: {branch: main}
    imagesPerReference: {last: 2}
  - references: {tag: /.*/, limit: {last: 1}}
keepBuiltWithin: 2h
orphanStepsAfter: 2h
"""
NOW = datetime.now(timezone.utc).replace(microsecond=0)


def ago(hours: float) -> datetime:
    return NOW - timedelta(hours=hours)


def _stamp(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


class Scenario:
    """main: a <- b <- c; feature: a <- f (stale, no policy); tag v1 at a; commit g nowhere.
    Images: A(a) tags a; B(b) tags b; C(c) tags c; F(f) tag f shares C's digest; G(g) tags g1+g2;
    R recent without commit; OLD old without commit (in use by digest in the cluster); a foreign tag."""

    def __init__(self, registry, tmp_path):
        self.client = RegistryClient()
        name = f"{registry.host}/clean-{uuid.uuid4().hex[:8]}/app"
        self.repo_name, self.stages_name = name, name + "-stages"
        self.repo = self.client.repository(name)
        self.stages = self.client.repository(self.stages_name)
        h = GitHistory(tmp_path / "git")
        h.commit("a", "main", int(ago(100).timestamp()))
        h.commit("f", "feature", int(ago(300).timestamp()) + 100 * 3600 + 60, ("a",))
        h.commit("b", "main", int(ago(50).timestamp()), ("a",))
        h.commit("c", "main", int(ago(30).timestamp()), ("b",))
        h.tag("v1", "a")
        self.git = h.write()
        sha = dict(h.sha, g="9" * 40)
        step = {n: f"{n:064x}" for n in range(1, 7)}
        self.steps = step
        for n in (1, 2, 3, 4):
            push_image(self.stages, [step[n]], f"step{n}", created=_stamp(ago(200)))
        push_image(self.stages, [step[5]], "step5", created=_stamp(ago(50)))  # orphan, old
        push_image(self.stages, [step[6]], "step6", created=_stamp(ago(0.2)))  # orphan, a build running
        d = {}
        d["a"] = push_image(self.repo, ["a"], "A")
        d["b"] = push_image(self.repo, ["b"], "B")
        d["c"] = push_image(self.repo, ["c", "f"], "C")  # F rebuilt C's content exactly
        d["g"] = push_image(self.repo, ["g1", "g2"], "G")
        d["r"] = push_image(self.repo, ["r"], "R")
        d["old"] = push_image(self.repo, ["old"], "OLD")
        d["foreign"] = push_image(self.repo, ["manual"], "FOREIGN")
        self.digests = d

        def record(commit, created, tags, digest, steps=()):
            r = BuildRecord(commit, None, created, (RecordImage("default", name, tuple(tags), digest,
                                                                tuple(step[s] for s in steps)),))
            push_record(self.stages, r)
            return r.tag

        self.records = {
            "A": record(sha["a"], ago(100), ["a"], d["a"], (1, 2)),
            "B": record(sha["b"], ago(50), ["b"], d["b"], (1,)),
            "C": record(sha["c"], ago(30), ["c"], d["c"], (1,)),
            "F": record(sha["f"], ago(99), ["f"], d["c"], (2, 3)),
            "G": record(sha["g"], ago(40), ["g1", "g2"], d["g"], (4,)),
            "R": record(None, ago(0.1), ["r"], d["r"]),
            "OLD": record(None, ago(50), ["old"], d["old"]),
        }

    def facts(self, in_use: InUse | None = None):
        facts = collect_facts(self.client, self.stages_name, repos=(self.repo_name,), git=str(self.git.path),
                              kube_contexts=None)
        facts.in_use = in_use
        return facts

    def cluster_using_old_by_digest(self) -> InUse:
        in_use = InUse()
        pod = {"spec": {"containers": [{"name": "x", "image": f"{self.repo_name}@{self.digests['old']}"}]}}
        for image in images_of("Pod", pod):
            in_use.add(image, "test/default/Pod/x")
        return in_use

    def tags(self, repo) -> set[str]:
        return set(repo.list_tags())


@pytest.fixture
def scenario(registry, tmp_path):
    s = Scenario(registry, tmp_path)
    yield s
    s.client.close()


def test_cleanup_deletes_exactly_the_expected_tags(scenario):
    s = scenario
    plan = plan_cleanup(s.client, s.facts(s.cluster_using_old_by_digest()), parse_policy_text(POLICY))
    by_tag = {(i.repository == s.stages_name, i.tag): i for i in plan.items}
    assert by_tag[(False, "f")].method == "tag"  # shares C's digest, which stays
    assert by_tag[(False, "g1")].method == "manifest" and by_tag[(False, "g2")].method == "manifest"
    assert "in use by digest: test/default/Pod/x" in by_tag[(False, "old")].reasons
    assert any("tag v1" in r for r in by_tag[(False, "a")].reasons)

    outcomes = execute(s.client, plan)
    assert {o.item.tag: o.status for o in outcomes} == {
        "f": "deleted", "g1": "deleted", "g2": "deleted", s.steps[3]: "deleted", s.steps[4]: "deleted",
        s.steps[5]: "deleted", s.records["F"]: "deleted", s.records["G"]: "deleted"}
    assert s.tags(s.repo) == {"a", "b", "c", "r", "old", "manual"}
    assert s.tags(s.stages) == {s.steps[1], s.steps[2], s.steps[6]} | {
        s.records[k] for k in ("A", "B", "C", "R", "OLD")}
    # The shared digest survived the removal of its other tag; the fully deleted one is gone.
    assert s.repo.head_manifest("c").digest == s.digests["c"]
    assert s.repo.head_manifest(s.digests["c"]) is not None
    assert s.repo.head_manifest(s.digests["g"]) is None
    assert s.repo.head_manifest(s.digests["old"]) is not None

    # A second run finds nothing more to delete.
    again = plan_cleanup(s.client, s.facts(s.cluster_using_old_by_digest()), parse_policy_text(POLICY))
    assert again.deletions == []


def test_without_the_cluster_scan_the_in_use_image_goes(scenario):
    plan = plan_cleanup(scenario.client, scenario.facts(None), parse_policy_text(POLICY))
    old = next(i for i in plan.items if i.tag == "old")
    assert old.action == "delete" and "built without a git commit" in old.reasons[0]


def test_a_build_pushing_during_cleanup_is_not_harmed(scenario):
    s = scenario
    plan = plan_cleanup(s.client, s.facts(s.cluster_using_old_by_digest()), parse_policy_text(POLICY))
    # While cleanup runs, a build reproduces G's image exactly (same digest, tag g1) and reuses
    # step 3, and someone re-points tag f to a new image and tags G's digest as "hotfix".
    rebuilt = BuildRecord("8" * 40, "main", datetime.now(timezone.utc),
                          (RecordImage("default", s.repo_name, ("g1",), s.digests["g"], (s.steps[3],)),))
    push_record(s.stages, rebuilt)
    new_f = push_image(s.repo, ["f"], "F2")
    outcomes = {o.item.tag: o for o in execute(s.client, plan)}
    assert outcomes["g1"].status == "skipped" and "pushed after the plan" in outcomes["g1"].detail
    assert outcomes["g2"].status == "skipped"
    assert outcomes[s.steps[3]].status == "skipped"
    assert outcomes["f"].status == "skipped" and "moved" in outcomes["f"].detail
    assert outcomes[s.steps[4]].status == "deleted"
    assert s.repo.head_manifest("g1").digest == s.digests["g"]
    assert s.repo.head_manifest("f").digest == new_f
    assert s.stages.head_manifest(s.steps[3]) is not None
    assert rebuilt.tag in s.tags(s.stages)


def test_a_tag_appearing_on_a_doomed_digest_protects_it(scenario):
    s = scenario
    plan = plan_cleanup(s.client, s.facts(None), parse_policy_text(POLICY))
    body, desc = s.repo.get_manifest(s.digests["g"])
    s.repo.put_manifest("hotfix", body, desc.media_type)
    outcomes = {o.item.tag: o for o in execute(s.client, plan)}
    assert outcomes["g1"].status == "skipped" and "hotfix appeared after the plan" in outcomes["g1"].detail
    assert s.repo.head_manifest("hotfix").digest == s.digests["g"]


def test_cli_dry_run_prints_the_plan_the_real_run_carries_out(scenario, tmp_path, capsys):
    s = scenario
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    args = ["cleanup", "--repo", s.repo_name, "--git", str(s.git.path), "--policy", str(policy),
            "--without-kube", "--output", "json"]
    assert main(args + ["--dry-run"]) == 0
    dry = json.loads(capsys.readouterr().out)
    assert dry["dryRun"] is True and s.tags(s.repo) >= {"g1", "old", "f"}  # nothing deleted
    assert main(args) == 0
    captured = capsys.readouterr()
    real = json.loads(captured.out)
    progress = [json.loads(line) for line in captured.err.splitlines() if '"progress"' in line]
    assert progress and progress[-1]["done"] == progress[-1]["total"]  # progress lines, ending at 100%
    strip = lambda items: [{k: v for k, v in i.items() if k not in ("status", "detail")} for i in items]  # noqa
    assert strip(real["items"]) == dry["items"]
    deleted = {i["tag"] for i in real["items"] if i.get("status") == "deleted"}
    assert deleted == {i["tag"] for i in dry["items"] if i["action"] == "delete"}
    assert real["result"] == {"deleted": len(deleted), "skipped": 0, "failed": 0}
    assert s.tags(s.repo) == {"a", "b", "c", "r", "manual"}


def test_cli_text_report_and_errors(scenario, tmp_path, capsys, monkeypatch):
    s = scenario
    args = ["cleanup", "--repo", s.repo_name, "--git", str(s.git.path), "--without-kube", "--dry-run"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "keep list" not in out and "dry run: nothing was deleted" in out
    assert f"{s.repo_name}:manual" in out and "not pushed by kade" in out
    # No cluster access and no --without-kube: an error, not "nothing in use" (a kubeconfig that can't be
    # used is bad input, exit 2, as for every command)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing-kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert main(args[:-2] + ["--dry-run"]) == 2
    assert "pass --without-kube" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("keepPolicies:\n  - references: {branch: main, limit: {last: -1}}\n")
    assert main(args + ["--policy", str(bad)]) == 1
    assert f"{bad}:2: keepPolicies[0].references.limit.last" in capsys.readouterr().err
    assert main(["cleanup", "--repo", s.repo_name, "--git", str(tmp_path), "--without-kube"]) == 1
    assert "not a git repository" in capsys.readouterr().err


def test_purge_needs_confirmation_and_deletes_only_what_kade_pushed(scenario, capsys, monkeypatch):
    s = scenario
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert main(["purge", "--repo", s.repo_name]) == 2
    assert "pass --yes" in capsys.readouterr().err
    assert "g1" in s.tags(s.repo)
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda prompt: "wrong-name")
    assert main(["purge", "--repo", s.repo_name]) == 2
    assert "g1" in s.tags(s.repo)
    monkeypatch.setattr("builtins.input", lambda prompt: s.repo_name)
    assert main(["purge", "--repo", s.repo_name, "--output", "json"]) == 0
    capsys.readouterr()
    assert s.tags(s.repo) == {"manual"}
    assert s.tags(s.stages) == set()


def test_a_build_record_pushed_mid_run_protects_what_it_names(scenario):
    """The push lands after the first deletion (from the progress callback): the re-check before
    the next batch sees the new record and spares the step image it reuses."""
    s = scenario
    plan = plan_cleanup(s.client, s.facts(None), parse_policy_text(POLICY))
    pushed = []

    def progress(done: int, total: int) -> None:
        if not pushed:
            record = BuildRecord("7" * 40, "main", datetime.now(timezone.utc),
                                 (RecordImage("default", s.repo_name, (), s.digests["b"], (s.steps[4],)),))
            pushed.append(push_record(s.stages, record))

    outcomes = {o.item.tag: o for o in execute(s.client, plan, progress=progress, batch=1, recheck_interval=0)}
    assert pushed and outcomes[s.steps[4]].status == "skipped"
    assert "pushed after the plan" in outcomes[s.steps[4]].detail
    assert outcomes[s.steps[3]].status == "deleted"
    assert s.stages.head_manifest(s.steps[4]) is not None


def test_a_platform_manifest_of_a_kept_index_survives(registry, tmp_path):
    from registry import mediatypes as mt
    from registry.model import Descriptor, Index

    rc = RegistryClient()
    name = f"{registry.host}/clean-{uuid.uuid4().hex[:8]}/multi"
    repo, stages = rc.repository(name), rc.repository(name + "-stages")
    amd64 = push_image(repo, ["amd64"], "amd64")
    body, desc = repo.get_manifest(amd64)
    index = Index(manifests=[Descriptor(desc.media_type, amd64, desc.size,
                                        platform={"os": "linux", "architecture": "amd64"})], media_type=mt.OCI_INDEX)
    multi = repo.put_manifest("multi", index.to_bytes(), mt.OCI_INDEX)
    plan = _plan_old_and_recent(rc, stages, name, ("amd64", amd64), ("multi", multi), tmp_path)
    by_tag = {i.tag: i for i in plan.items}
    assert by_tag["amd64"].action == "keep"
    assert by_tag["amd64"].reasons == (f"listed by the kept image index {name}:multi",)
    assert plan.deletions == []  # the old build stays whole: its tag, and so its record
    rc.close()


def test_an_old_index_goes_with_its_platform_manifests_and_shared_ones_stay(registry, tmp_path):
    """Two multi-platform builds: the old index (amd64 v1 + arm64) and the recent one (amd64 v2 + the same
    arm64 manifest). Cleanup deletes the old index and its amd64 v1 manifest, keeps the shared arm64 one."""
    from registry import mediatypes as mt
    from registry.image import Image, ImageIndex

    rc = RegistryClient()
    name = f"{registry.host}/clean-{uuid.uuid4().hex[:8]}/multi"
    repo, stages = rc.repository(name), rc.repository(name + "-stages")
    amd1, amd2, arm = (push_image(repo, [], seed, arch=a) for seed, a in (("a1", "amd64"), ("a2", "amd64"),
                                                                       ("arm", "arm64")))

    def index(*digests: str) -> bytes:
        return ImageIndex.assemble([Image(*_image_parts(repo, d)) for d in digests]).index_bytes

    old = repo.put_manifest("old", index(amd1, arm), mt.OCI_INDEX)
    new = repo.put_manifest("new", index(amd2, arm), mt.OCI_INDEX)
    plan = _plan_old_and_recent(rc, stages, name, ("old", old), ("new", new), tmp_path)
    by_tag = {i.tag: i for i in plan.items}
    assert (by_tag["old"].action, by_tag["old"].method, by_tag["old"].children) == ("delete", "manifest", (amd1,))
    outcomes = {o.item.tag: o for o in execute(rc, plan)}
    assert outcomes["old"].status == "deleted" and "with 1 platform manifest(s)" in outcomes["old"].detail
    assert repo.head_manifest(old) is None and repo.head_manifest(amd1) is None
    assert repo.head_manifest("new").digest == new  # the kept index, whole
    assert repo.head_manifest(arm) is not None and repo.head_manifest(amd2) is not None
    rc.close()


def _plan_old_and_recent(rc, stages, name: str, old: tuple[str, str], recent: tuple[str, str], tmp_path):
    """The cleanup plan after an old build of tag old[0] (50 h ago) and a recent one of recent[0]."""
    for (tag, digest), hours in ((old, 50), (recent, 0.5)):
        push_record(stages, BuildRecord(None, None, ago(hours), (RecordImage("default", name, (tag,), digest, ()),)))
    h = GitHistory(tmp_path / "git")
    h.commit("a", "main", int(ago(1).timestamp()))
    h.write()
    facts = collect_facts(rc, name + "-stages", repos=(name,), git=str(h.path), kube_contexts=None)
    return plan_cleanup(rc, facts, parse_policy_text(POLICY))


def _image_parts(repo, digest: str):
    from registry.imageconfig import ImageConfig
    from registry.model import parse_manifest

    body, desc = repo.get_manifest(digest)
    manifest = parse_manifest(body, desc.media_type)
    with repo.open_blob(manifest.config.digest) as f:
        config = ImageConfig.from_bytes(f.read())
    return manifest, config, digest


def test_a_registry_with_deletion_disabled_stops_the_run_with_the_fix(tmp_path):
    """A real registry configured without storage.delete: one clear error, not 1 failure per tag."""
    from registry.cleanup.execute import execute as run
    from registry.errors import Unsupported
    from tests.fixtures.registry import RegistryServer

    class NoDelete(RegistryServer):
        def config(self):
            cfg = super().config()
            cfg["storage"]["delete"] = {"enabled": False}
            return cfg

    server = NoDelete(tmp_path / "nodelete").start()
    try:
        rc = RegistryClient()
        name = f"{server.host}/team/app"
        repo, stages = rc.repository(name), rc.repository(name + "-stages")
        digest = push_image(repo, ["old"], "old")
        push_record(stages, BuildRecord(None, None, ago(50), (RecordImage("default", name, ("old",), digest, ()),)))
        plan = plan_cleanup(rc, collect_facts(rc, name + "-stages", repos=(name,), git=None, kube_contexts=None),
                            parse_policy_text(POLICY))
        assert [i.tag for i in plan.deletions if i.repository == name] == ["old"]
        with pytest.raises(Unsupported, match="storage.delete.enabled"):
            run(rc, plan)
        assert repo.head_manifest("old").digest == digest
        rc.close()
    finally:
        server.stop()
