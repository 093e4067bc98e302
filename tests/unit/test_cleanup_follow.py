"""Attestations and signatures follow their subject: the pass over `Facts.referrers` (follow.py), through
make_plan so that what is checked is what a run carries out."""
import pytest

from registry.cleanup.follow import MAX_DEPTH, Referrer, Referrers, subject_of_tag
from registry.cleanup.plan import make_plan
from registry.cleanup.policy import KeepPolicy, Limit, NamePattern, Policy
from tests.unit.test_cleanup_plan import APP, STAGES, D, K, facts, rec

MAIN_LAST_1 = Policy((KeepPolicy("branch", NamePattern("main"), images=Limit(last=1)),))
SBOM, PROV, SIG_TYPE = "application/spdx+json", "application/vnd.in-toto+json", "application/vnd.cncf.notary.signature"


def idx(d: str) -> str:
    return d.replace(":", "-")


def sig(d: str) -> str:
    return idx(d) + ".sig"


def attested(image: int, base: int) -> tuple[dict, dict]:
    """What `kade build --sign-key` leaves for image D(image) on a registry without the referrers API:
    artifacts D(base) (SBOM) and D(base+1) (provenance), the index tag listing them, a signature tag
    over the image and over each artifact. Returns (tags, referrers)."""
    s, p = D(base), D(base + 1)
    tags = {idx(D(image)): D(base + 2), sig(D(image)): D(base + 3), sig(s): D(base + 4), sig(p): D(base + 5)}
    return tags, {D(image): Referrers((Referrer(s, SBOM), Referrer(p, PROV)))}


def two_images(**extra):
    """c3 (main's newest: kept) and c1 (older: deleted), each attested."""
    records = [rec(1, 100, [(["c1"], 1, [])]), rec(3, 30, [(["c3"], 3, [])])]
    old_tags, old_refs = attested(1, 100)
    new_tags, new_refs = attested(3, 200)
    f = facts(records, {"c1": D(1), "c3": D(3), **old_tags, **new_tags}, **extra)
    f.referrers = {APP: {**old_refs, **new_refs}}
    return f


def rows(plan):
    return {i.tag: i for i in plan.items}


def test_the_attestations_and_signatures_of_a_deleted_image_go_with_it_and_a_kept_ones_stay():
    plan = make_plan(two_images(), MAIN_LAST_1)
    r = rows(plan)
    assert (r["c1"].action, r["c3"].action) == ("delete", "keep")
    gone = {idx(D(1)): "attestation", sig(D(1)): "signature", D(100): "attestation", D(101): "attestation",
            sig(D(100)): "signature", sig(D(101)): "signature"}
    for key, kind in gone.items():
        assert (r[key].kind, r[key].action, r[key].method) == (kind, "delete", "manifest"), key
        assert r[key].reasons == ("follows image app:c1 (deleted)",), key
    assert r[D(100)].digest == D(100) and r[D(100)].untagged and r[D(100)].subject == D(1)
    assert r[sig(D(100))].subject == D(100) and r[idx(D(1))].subject == D(1)
    for key in (idx(D(3)), sig(D(3)), D(200), D(201), sig(D(200)), sig(D(201))):
        assert (r[key].action, r[key].reasons) == ("keep", ("follows image app:c3 (kept)",)), key
    assert not any("not pushed by kade" in i.reasons[0] for i in plan.items)
    assert plan.summary()["delete_attestation"] == 3 and plan.summary()["delete_signature"] == 3
    assert plan.summary()["delete_image"] == 1 and plan.unread == frozenset()


def test_keep_all_of_them_in_purge_only_what_follows_a_deleted_image():
    f = two_images(stage_extra={})
    f.tags[APP]["manual"] = D(3)  # a tag no record names: c3's digest stays whatever happens
    plan = make_plan(f, Policy(()), purge=True)
    r = rows(plan)
    assert r["c1"].action == "delete" and r[D(100)].action == "delete" and r[sig(D(101))].action == "delete"
    assert r["c3"].method == "tag"  # the digest stays (manual), so do its attestations
    assert r[idx(D(3))].action == "keep" and r[D(200)].action == "keep" and r[sig(D(3))].action == "keep"


@pytest.mark.parametrize("tag,expected", [
    (idx(D(5)), (D(5), "attestation", True)),
    (sig(D(5)), (D(5), "signature", False)),
    (idx(D(5)) + ".att", (D(5), "attestation", False)),
    (idx(D(5)) + ".sbom", (D(5), "attestation", False)),
    (idx(D(5)) + ".sig.sig", None),
    ("sha256-" + "A" * 64, None),        # digests are lower-case hex
    ("sha256-" + "a" * 63, None),
    ("sha512-" + "a" * 64, None),
    ("latest", None),
])
def test_which_tags_follow_a_subject(tag, expected):
    assert subject_of_tag(tag) == expected


def test_what_follows_a_digest_this_cleanup_does_not_decide_is_left_alone():
    f = two_images()
    f.tags[APP][sig(D(77))] = D(500)            # a signature of an image stored elsewhere (COSIGN_REPOSITORY)
    f.tags[APP][idx(D(78))] = D(501)
    f.referrers[APP][D(78)] = Referrers((Referrer(D(502), SBOM),))
    plan = make_plan(f, Policy(()), purge=True)
    r = rows(plan)
    assert r[sig(D(77))].action == "keep" and r[idx(D(78))].action == "keep" and D(502) not in r
    assert r[sig(D(77))].reasons == (f"follows {D(77)[:19]}, which this cleanup does not delete",)


def test_a_listed_artifact_that_is_tagged_or_listed_under_a_kept_image_stays():
    f = two_images()
    f.referrers[APP][D(1)] = Referrers(f.referrers[APP][D(1)].entries + (
        Referrer(D(200), SBOM),     # the kept image's SBOM, listed under the deleted one too
        Referrer(D(3), SBOM)))      # the kept image itself (a tagged manifest: decided by its tags)
    plan = make_plan(f, MAIN_LAST_1)
    r = rows(plan)
    assert r[D(200)].action == "keep" and r[D(200)].reasons == ("follows image app:c3 (kept)",)
    assert r["c3"].action == "keep" and D(3) not in {i.tag for i in plan.items if i.untagged}
    assert r[D(100)].action == "delete"


def test_on_a_registry_with_the_referrers_api_a_deleted_subject_is_read_first():
    f = two_images()
    f.referrers_api = frozenset({APP})
    del f.referrers[APP][D(1)]
    for t in (idx(D(1)), idx(D(3))):
        del f.tags[APP][t]                       # the API lists them: no index tags
    plan = make_plan(f, MAIN_LAST_1)
    assert plan.unread == frozenset({(APP, D(1))})  # c3 is kept: its referrers need no reading
    r = rows(plan)
    assert r[sig(D(1))].action == "delete"        # the image's own signature needs no listing
    assert r[sig(D(100))].action == "keep" and "does not delete" in r[sig(D(100))].reasons[0]
    # read: its SBOM is found, and has referrers of its own (a notation signature) not read yet
    f.referrers[APP][D(1)] = Referrers((Referrer(D(100), SBOM), Referrer(D(101), PROV)))
    f.referrers[APP][D(101)] = Referrers()
    plan = make_plan(f, MAIN_LAST_1)
    assert plan.unread == frozenset({(APP, D(100))})
    r = rows(plan)
    assert r[D(100)].action == "keep" and "not read yet" in r[D(100)].reasons[0]
    assert r[sig(D(100))].action == "keep" and r[D(101)].action == "delete"
    f.referrers[APP][D(100)] = Referrers((Referrer(D(600), SIG_TYPE),))
    f.referrers[APP][D(600)] = Referrers()
    plan = make_plan(f, MAIN_LAST_1)
    r = rows(plan)
    assert plan.unread == frozenset() and r[D(100)].action == "delete"
    assert (r[D(600)].kind, r[D(600)].action, r[D(600)].subject) == ("signature", "delete", D(100))


def test_without_the_api_a_subject_without_an_index_tag_has_no_referrers():
    records = [rec(1, 100, [(["c1"], 1, [])])]
    f = facts(records, {"c1": D(1), sig(D(1)): D(50)})
    plan = make_plan(f, Policy(()))
    assert plan.unread == frozenset() and rows(plan)[sig(D(1))].action == "delete"
    f.tags[APP][idx(D(1))] = D(51)                # an index tag not read yet (the stages repository's case)
    plan = make_plan(f, Policy(()))
    assert plan.unread == frozenset({(APP, D(1))})
    assert rows(plan)[idx(D(1))].action == "keep" and "not read yet" in rows(plan)[idx(D(1))].reasons[0]


def test_hostile_indexes_cyclic_deep_and_unreadable_are_bounded():
    f = two_images()
    refs = f.referrers[APP]
    # cyclic: the SBOM's index lists the provenance, whose index lists the SBOM
    refs[D(100)] = Referrers((Referrer(D(101), SBOM),))
    refs[D(101)] = Referrers((Referrer(D(100), SBOM),))
    plan = make_plan(f, MAIN_LAST_1)
    assert rows(plan)[D(100)].action == rows(plan)[D(101)].action == "delete"
    # deep: a chain of artifacts under the deleted image's provenance
    chain = [D(700 + n) for n in range(MAX_DEPTH + 2)]
    refs[D(101)] = Referrers((Referrer(chain[0], SBOM),))
    for parent, child in zip(chain, chain[1:]):
        refs[parent] = Referrers((Referrer(child, SBOM),))
    refs[chain[-1]] = Referrers()
    r = rows(make_plan(f, MAIN_LAST_1))
    depth = {d: n + 2 for n, d in enumerate(chain)}  # the provenance is at depth 1
    for d in chain:
        if depth[d] < MAX_DEPTH:
            assert r[d].action == "delete", d
        elif depth[d] == MAX_DEPTH:
            assert r[d].action == "keep" and "levels deep" in r[d].reasons[0]
        else:
            assert d not in r
    # unreadable (too many entries, not an index): the index tag and what it lists stay, with a note
    refs[D(1)] = Referrers(problem="the index lists 5000 manifests, more than 1024")
    plan = make_plan(f, MAIN_LAST_1)
    r = rows(plan)
    assert r["c1"].action == "delete" and r[sig(D(1))].action == "delete"
    assert r[idx(D(1))].action == "keep" and "5000 manifests" in r[idx(D(1))].reasons[0]
    assert D(100) not in r and r[sig(D(100))].action == "keep"
    assert any("5000 manifests" in n and D(1)[:19] in n for n in plan.notes)


def test_an_interrupted_run_is_finished_from_the_build_record():
    """The image's tag went in an earlier run that stopped before its attestations: the record (deleted
    last) still names the digest, so they go now; while the record is kept, they stay."""
    records = [rec(1, 100, [(["c1"], 1, [])])]
    tags, refs = attested(1, 100)
    f = facts(records, tags)
    f.referrers = {APP: refs}
    plan = make_plan(f, Policy(()))
    r = rows(plan)
    assert r[records[0][0]].action == "delete"
    for key in (idx(D(1)), sig(D(1)), D(100), sig(D(101))):
        assert r[key].action == "delete", key
        assert r[key].reasons == (f"follows image app@{D(1)[:19]} of build record {records[0][0]} (deleted)",)
    recent = [rec(1, 0.5, [(["c1"], 1, [])])]
    f = facts(recent, tags)
    f.referrers = {APP: refs}
    assert {i.action for i in make_plan(f, Policy(())).items} == {"keep"}


def test_a_step_image_and_its_sbom_inventory_go_together():
    kept = rec(3, 30, [(["c3"], 3, [1])])
    gone = rec(1, 100, [(["c1"], 1, [2])])
    inventory = "application/vnd.kade.sbom-inventory.v1+json"
    f = facts([kept, gone], {"c3": D(3), "c1": D(1)})
    step2 = f.tags[STAGES][K(2)]
    f.tags[STAGES][K(1)] = None                                   # kept by name: its digest is not read
    f.tags[STAGES].update({idx(step2): D(900), idx(D(5001)): None})  # inventory indexes of step 2 and step 1
    f.referrers = {STAGES: {step2: Referrers((Referrer(D(901), inventory),))}}
    r = rows(make_plan(f, MAIN_LAST_1))
    assert r[K(2)].action == "delete" and r[K(1)].action == "keep"
    assert (r[idx(step2)].action, r[D(901)].action) == ("delete", "delete")
    assert r[D(901)].reasons == (f"follows step image {K(2)[:12]} (deleted)",) and r[D(901)].subject == step2
    assert r[idx(D(5001))].action == "keep" and r[idx(D(5001))].digest is None  # step 1's: unknown subject, kept


def test_a_digest_that_keeps_one_of_its_tags_keeps_its_attestations():
    records = [rec(1, 100, [(["c1"], 7, [])]), rec(3, 30, [(["c3"], 3, [])])]
    tags, refs = attested(7, 100)
    f = facts(records, {"c1": D(7), "c3": D(3), "pinned": D(7), **tags})
    f.referrers = {APP: refs}
    plan = make_plan(f, Policy((), keep_list=(NamePattern("pinned"),)))
    r = rows(plan)
    assert r["c1"].action == "delete" and r["c1"].method == "tag"
    assert {r[k].action for k in (idx(D(7)), sig(D(7)), D(100), sig(D(100)))} == {"keep"}
    assert r[D(100)].reasons == ("follows image app:pinned (kept)",)


def test_a_blocked_run_keeps_them_and_says_what_would_have_happened():
    f = two_images()
    f.problems = ["kade release shop/prod: revision 3 is corrupt"]
    plan = make_plan(f, MAIN_LAST_1)
    assert plan.deletions == []
    assert rows(plan)[D(100)].reasons[-1] == "would be deleted otherwise: follows image app:c1 (deleted)"


def test_what_follows_a_missing_subject_is_an_orphan_and_goes_but_a_present_one_is_left_alone():
    f = two_images()
    orphan_tags, orphan_refs = attested(9, 300)  # D(9) was deleted by hand: no tag, not in the registry
    f.tags[APP].update(orphan_tags)
    f.tags[APP][sig(D(8))] = D(310)  # D(8) exists untagged (not missing): its signature is not ours to judge
    f.referrers[APP].update(orphan_refs)
    f.missing_subjects = {APP: frozenset({D(9)})}
    r = rows(make_plan(f, MAIN_LAST_1))
    for key in (idx(D(9)), sig(D(9)), D(300), D(301), sig(D(300)), sig(D(301))):
        assert r[key].action == "delete", key
        assert r[key].reasons == (f"follows {D(9)[:19]}, which is gone (an orphan) (deleted)",), key
    assert r[sig(D(8))].action == "keep" and "does not delete" in r[sig(D(8))].reasons[0]
    assert r["c3"].action == "keep" and r[D(200)].action == "keep"


def test_a_repository_no_build_record_names_has_no_orphans():
    f = two_images()
    other = APP + "-signatures"  # cosign's COSIGN_REPOSITORY: signatures of images stored elsewhere
    f.tags[other] = {sig(D(9)): D(400)}
    f.missing_subjects = {other: frozenset({D(9)})}
    r = {i.tag: i for i in make_plan(f, MAIN_LAST_1).items if i.repository == other}
    assert r[sig(D(9))].action == "keep"
