"""Attestations and signatures follow their image on the real registry (distribution 2.8: no referrers
API, so kade's attachments live in `sha256-<hex>` index tags; signatures in cosign `.sig` tags), made by
kade's own code (`registry.referrers.attach`, `registry.signing.sign`), then cleaned and purged."""
from __future__ import annotations

import pytest

from registry import referrers as rf
from registry import signing
from registry import sigkeys
from registry.cleanup.execute import execute
from registry.cleanup.policy_file import parse_policy_text
from registry.cleanup.run import plan_cleanup
from tests.fixtures.cleanup import push_image
from tests.integration.test_cleanup_registry import POLICY, Scenario

SBOM = "application/spdx+json"


class Attested:
    """Scenario with C (kept) and G (deleted) each given an SBOM, a signature, and a signature of the
    SBOM; plus an orphan: an image attested and signed, then deleted by hand (its followers remain)."""

    def __init__(self, s: Scenario):
        self.s = s
        key = sigkeys.generate()
        self.sbom: dict[str, str] = {}
        for name in ("c", "g", "orphan"):
            if name == "orphan":
                self.orphan = push_image(s.repo, ["tmp"], "ORPHAN")
            digest = self.orphan if name == "orphan" else s.digests[name]
            _, desc = s.repo.get_manifest(digest)
            artifact = rf.attach(s.repo, desc, SBOM, f'{{"name": "{name}"}}'.encode(), {})
            self.sbom[name] = artifact.digest
            signing.sign(s.repo, digest, f"{s.repo_name}:{name}", key, "test")
            signing.sign(s.repo, artifact.digest, f"{s.repo_name}:{name}", key, "test")
        s.repo.delete_manifest(self.orphan)  # by hand: tag `tmp` goes with it, its followers stay

    def followers(self, name: str) -> set[str]:
        digest = self.orphan if name == "orphan" else self.s.digests[name]
        return {rf.fallback_tag(digest), signing.signature_tag(digest), signing.signature_tag(self.sbom[name])}


@pytest.fixture
def attested(registry, tmp_path):
    s = Scenario(registry, tmp_path)
    yield Attested(s)
    s.client.close()


def test_cleanup_deletes_followers_with_their_image_keeps_a_kept_ones_and_removes_orphans(attested):
    a, s = attested, attested.s
    plan = plan_cleanup(s.client, s.facts(s.cluster_using_old_by_digest()), parse_policy_text(POLICY))
    by_tag = {i.tag: i for i in plan.items}
    for tag in a.followers("g"):
        assert (by_tag[tag].action, by_tag[tag].reasons) == ("delete", ("follows image app:g1 (deleted)",)), tag
    assert by_tag[a.sbom["g"]].kind == "attestation" and by_tag[a.sbom["g"]].action == "delete"
    for tag in a.followers("c") | {a.sbom["c"]}:
        assert by_tag[tag].action == "keep" and by_tag[tag].reasons == ("follows image app:c (kept)",), tag
    for tag in a.followers("orphan") | {a.sbom["orphan"]}:
        assert by_tag[tag].action == "delete" and "which is gone (an orphan)" in by_tag[tag].reasons[0], tag

    outcomes = execute(s.client, plan)
    failed = [(o.item.tag, o.status, o.detail) for o in outcomes if o.status != "deleted"]
    assert failed == []
    tags = s.tags(s.repo)
    assert a.followers("c") <= tags
    assert not (a.followers("g") | a.followers("orphan")) & tags
    assert s.repo.head_manifest(a.sbom["c"]) is not None
    assert s.repo.head_manifest(a.sbom["g"]) is None and s.repo.head_manifest(a.sbom["orphan"]) is None
    assert {r.descriptor.digest for r in rf.list_referrers(s.repo, s.digests["c"])} == {a.sbom["c"]}
    assert signing.read_signatures(s.repo, s.digests["c"])  # the kept image is still signed

    again = plan_cleanup(s.client, s.facts(s.cluster_using_old_by_digest()), parse_policy_text(POLICY))
    assert again.deletions == []


def test_purge_takes_the_followers_of_everything_it_deletes(attested):
    a, s = attested, attested.s
    plan = plan_cleanup(s.client, s.facts(), parse_policy_text(POLICY), purge=True)
    outcomes = execute(s.client, plan)
    assert [o for o in outcomes if o.status != "deleted"] == []
    assert s.tags(s.repo) == {"manual"}  # what kade did not push, and nothing that followed an image
    for name in ("c", "g", "orphan"):
        assert s.repo.head_manifest(a.sbom[name]) is None


def test_followers_stay_when_their_subject_is_protected_mid_run_and_a_mislisted_artifact_is_left(attested):
    a, s = attested, attested.s
    _, c_desc = s.repo.get_manifest(s.digests["c"])
    # hostile: an artifact of C (kept) listed in G's referrers index, as if it attested G
    stranger, _ = rf.push_artifact(s.repo, c_desc, SBOM, b'{"name": "stranger"}', {})
    rf.add_to_fallback(s.repo, s.digests["g"], [stranger])
    plan = plan_cleanup(s.client, s.facts(s.cluster_using_old_by_digest()), parse_policy_text(POLICY))
    assert {i.tag: i.action for i in plan.items}[stranger.digest] == "delete"  # as listed: execute checks it
    s.repo.put_manifest("rollback", s.repo.get_manifest(s.digests["g"])[0], c_desc.media_type)  # after the plan

    outcomes = {o.item.tag: o for o in execute(s.client, plan)}
    assert outcomes["g1"].status == "skipped" and "rollback" in outcomes["g1"].detail
    for tag in a.followers("g") | {a.sbom["g"]}:
        assert outcomes[tag].status == "skipped", tag
        assert outcomes[tag].detail.startswith(f"its subject {s.digests['g'][:19]} was not deleted"), tag
    assert a.followers("g") <= s.tags(s.repo) and s.repo.head_manifest(a.sbom["g"]) is not None
    assert outcomes[stranger.digest].status == "skipped"
    assert s.repo.head_manifest(stranger.digest) is not None



def test_cli_text_and_json_show_followers_with_their_subject(attested, tmp_path, capsys):
    import json

    from kade.cli import main

    a, s = attested, attested.s
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    args = ["cleanup", "--repo", s.repo_name, "--git", str(s.git.path), "--without-kube", "--policy", str(policy),
            "--dry-run"]
    assert main(args + ["--output", "json"]) == 0
    items = {i["tag"]: i for i in json.loads(capsys.readouterr().out)["items"]}
    sbom = items[a.sbom["g"]]
    assert (sbom["kind"], sbom["action"], sbom["subject"], sbom["digest"]) == (
        "attestation", "delete", s.digests["g"], a.sbom["g"])
    assert items[signing.signature_tag(s.digests["c"])]["subject"] == s.digests["c"]
    assert main(args) == 0
    out = capsys.readouterr().out
    # g's and the orphan's: their index tags and SBOMs; the signatures of each image and SBOM
    assert "delete 18 (attestations 4, images 4, records 3, signatures 4, steps 3)" in " ".join(out.split())
    assert "@sha256:" in out  # an untagged SBOM is shown by digest
