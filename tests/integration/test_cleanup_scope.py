"""Issue #13's attack on the real registry: a forged build record in one tenant's stages repository
names another repository's tag. `kade cleanup` and `kade purge` for the tenant's repository plan and
delete only inside it; the record is reported and ignored. And a tag moved onto a digest planned for
deletion, while the deletions run, protects that digest."""
from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timezone

import pytest

from kade.cli import main
from registry.cleanup.execute import execute
from registry.cleanup.policy_file import parse_policy_text
from registry.cleanup.run import collect_facts, plan_cleanup
from registry.client import RegistryClient
from registry.records import BuildRecord, RecordImage, push_record
from tests.fixtures.cleanup import GitHistory, push_image
from tests.integration.test_cleanup_registry import POLICY, Scenario


@pytest.fixture
def tenants(registry, tmp_path):
    """ceo/team (the attacker can push to ceo/team-stages) and ceo/victim (one release tag)."""
    client = RegistryClient()
    base = f"{registry.host}/ceo-{uuid.uuid4().hex[:6]}"
    team, victim = f"{base}/team", f"{base}/victim"
    victim_digest = push_image(client.repository(victim), ["v1.0"], "victim release")
    team_repo, stages = client.repository(team), client.repository(team + "-stages")
    old = push_image(team_repo, ["old"], "team old build")
    push_record(stages, BuildRecord(None, None, datetime(2001, 1, 1, tzinfo=timezone.utc),
                                    (RecordImage("default", team, ("old",), old, ()),)))
    forged = BuildRecord(None, None, datetime(2000, 1, 1, tzinfo=timezone.utc),
                         (RecordImage("default", victim, ("v1.0",), victim_digest, ()),))
    push_record(stages, forged)  # no commit, dated 2000: "built without a git commit, older than 2h"
    git = GitHistory(tmp_path / "git")
    git.commit("a", "main", 1_700_000_000)
    git.write()
    yield {"client": client, "team": team, "victim": victim, "victim_digest": victim_digest, "forged": forged.tag,
           "git": str(git.path)}
    client.close()


def test_a_forged_record_cannot_make_cleanup_delete_another_repository(tenants, capsys):
    t = tenants
    args = ["cleanup", "--repo", t["team"], "--git", t["git"], "--without-kube", "--output", "json"]
    assert main(args + ["--dry-run"]) == 0
    out = capsys.readouterr()
    dry = json.loads(out.out)
    assert {i["repository"] for i in dry["items"]} == {t["team"], t["team"] + "-stages"}
    assert [i["tag"] for i in dry["items"] if i["action"] == "delete" and i["repository"] == t["team"]] == ["old"]
    forged = next(i for i in dry["items"] if i["tag"] == t["forged"])
    assert forged["action"] == "keep" and "outside this cleanup: ignored" in forged["reasons"][0]
    assert any(t["forged"] in n and t["victim"] in n for n in dry["notes"])
    assert any(t["forged"] in line and "ignored" in line for line in out.err.splitlines())  # reported as it runs

    assert main(args) == 0
    real = json.loads(capsys.readouterr().out)
    assert {i["repository"] for i in real["items"] if i.get("status") == "deleted"} <= {t["team"], t["team"] + "-stages"}
    victim = t["client"].repository(t["victim"])
    assert victim.head_manifest("v1.0").digest == t["victim_digest"]
    assert t["client"].repository(t["team"]).head_manifest("old") is None


def test_purge_has_the_same_scope_and_its_dry_run_is_the_real_run(tenants, capsys):
    t = tenants
    args = ["purge", "--repo", t["team"], "--output", "json"]
    assert main(args + ["--dry-run"]) == 0
    dry = json.loads(capsys.readouterr().out)
    assert main(args + ["--yes"]) == 0
    real = json.loads(capsys.readouterr().out)
    strip = lambda items: [{k: v for k, v in i.items() if k not in ("status", "detail")} for i in items]  # noqa
    assert strip(real["items"]) == dry["items"]
    assert {i["tag"] for i in real["items"] if i.get("status") == "deleted"} == {
        i["tag"] for i in dry["items"] if i["action"] == "delete"}
    assert t["client"].repository(t["victim"]).head_manifest("v1.0").digest == t["victim_digest"]
    stages = set(t["client"].repository(t["team"] + "-stages").list_tags())
    assert stages == {t["forged"]}  # kept: it names a repository this purge was not given


def test_purge_shows_the_plan_before_asking(tenants, capsys, monkeypatch):
    t = tenants
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda prompt: "no")
    assert main(["purge", "--repo", t["team"]]) == 2
    err = capsys.readouterr().err
    assert f"{t['team']}:old" in err and "This deletes the 2 tags above" in err and "not confirmed" in err
    assert t["client"].repository(t["team"]).head_manifest("old") is not None


def test_a_tag_moved_onto_a_digest_planned_for_deletion_protects_it(registry, tmp_path):
    """While the deletions run (after the first one), kept tag `a` is moved onto G's digest, which the
    plan deletes as a whole later: the re-check before the next batch sees it, G stays."""
    s = Scenario(registry, tmp_path)
    plan = plan_cleanup(s.client, s.facts(None), parse_policy_text(POLICY))
    moved = []

    def progress(done: int, total: int) -> None:
        if not moved:
            body, desc = s.repo.get_manifest(s.digests["g"])
            moved.append(s.repo.put_manifest("a", body, desc.media_type))
            # Deletions take time on a real repository; the re-check runs at most every 4x its own
            # duration (a few ms for these ~20 tags on loopback): let that much pass.
            time.sleep(2)

    outcomes = {o.item.tag: o for o in execute(s.client, plan, progress=progress, batch=1, recheck_interval=0)}
    assert moved and outcomes["f"].status == "deleted"  # the first deletion, before the move
    assert outcomes["g1"].status == "skipped" and outcomes["g1"].detail == "tag a now points to it"
    assert outcomes["g2"].status == "skipped"
    assert s.repo.head_manifest("a").digest == s.digests["g"]
    s.client.close()


def test_a_step_sharing_its_digest_with_a_kept_step_goes_alone(registry):
    """The plan reads no digest of step images it keeps by name; so it plans the old step's digest
    for deletion as a whole. The run re-reads every tag first, sees the kept step on that digest, and
    removes only the old step's tag: the kept step still resolves."""
    client = RegistryClient()
    name = f"{registry.host}/share-{uuid.uuid4().hex[:6]}/app"
    repo, stages = client.repository(name), client.repository(name + "-stages")
    kept_step, old_step = "a" * 64, "b" * 64
    same = push_image(stages, [kept_step, old_step], "one step image under two keys")
    fresh, stale = push_image(repo, ["fresh"], "fresh"), push_image(repo, ["stale"], "stale")
    now = datetime.now(timezone.utc)
    push_record(stages, BuildRecord(None, None, now, (RecordImage("d", name, ("fresh",), fresh, (kept_step,)),)))
    push_record(stages, BuildRecord(None, None, datetime(2020, 1, 1, tzinfo=timezone.utc),
                                    (RecordImage("d", name, ("stale",), stale, (old_step,)),)))
    facts = collect_facts(client, name + "-stages", repos=(name,), git=None, kube_contexts=None)
    plan = plan_cleanup(client, facts, parse_policy_text(POLICY))
    items = {i.tag: i for i in plan.items}
    assert items[kept_step].action == "keep" and items[kept_step].digest is None  # never read
    assert (items[old_step].action, items[old_step].method, items[old_step].digest) == ("delete", "manifest", same)
    outcomes = {o.item.tag: o for o in execute(client, plan)}
    assert outcomes[old_step].status == "deleted"
    assert outcomes[old_step].detail.startswith(f"kept tag {kept_step} has the same digest: tag removed")
    assert stages.head_manifest(kept_step).digest == same
    assert stages.head_manifest(old_step) is None
    client.close()
