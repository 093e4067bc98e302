from datetime import datetime, timedelta, timezone

import pytest

from registry.cleanup.errors import PolicyError
from registry.cleanup.policy import (DEFAULT_POLICY, GitRef, KeepPolicy, Limit, NamePattern, apply_limit,
                                     parse_duration, select_references)
from registry.cleanup.policy_file import load_kade_yaml_policy, load_policy_file, parse_policy_text

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("text,seconds", [
    ("168h", 168 * 3600), ("7d", 7 * 86400), ("2h30m", 9000), ("90s", 90), ("1w", 604800), (3600, 3600),
    ("0s", 0), ("1.5h", 5400),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "7", "h", "7x", "-1h", "7d junk", True, -5, "1h 2m"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize("pattern,name,ok", [
    ("main", "main", True), ("main", "mainline", False), ("/ma.*/", "main", True),
    ("/feature-.*/", "x-feature-1", False), ("/.*/", "anything/with/slash", True), ("/", "/", True),
])
def test_name_pattern(pattern, name, ok):
    assert NamePattern(pattern).matches(name) is ok


HOURS = [0, 1, 5, 30, 200]  # ages of five items, newest first


@pytest.mark.parametrize("limit,expected", [
    (None, [0, 1, 2, 3, 4]),
    (Limit(last=2), [0, 1]),
    (Limit(within=timedelta(hours=6)), [0, 1, 2]),
    (Limit(last=2, within=timedelta(hours=6), operator="and"), [0, 1]),
    (Limit(last=4, within=timedelta(hours=6), operator="and"), [0, 1, 2]),
    (Limit(last=1, within=timedelta(hours=6), operator="or"), [0, 1, 2]),
    (Limit(last=4, within=timedelta(hours=1), operator="or"), [0, 1, 2, 3]),
    (Limit(last=0), []),
])
def test_apply_limit(limit, expected):
    items = list(range(5))
    times = [NOW - timedelta(hours=h) for h in HOURS]
    assert apply_limit(items, times, limit, NOW) == expected


def _ref(kind, name, hours_ago):
    return GitRef(kind, name, "c" * 40, NOW - timedelta(hours=hours_ago))


REFS = [_ref("branch", "main", 500), _ref("branch", "feature-a", 1), _ref("branch", "feature-b", 100),
        _ref("branch", "feature-c", 300), _ref("tag", "v1", 1000), _ref("tag", "v2", 10)]


@pytest.mark.parametrize("policy,expected", [
    (KeepPolicy("branch", NamePattern("/.*/")), ["feature-a", "feature-b", "feature-c", "main"]),
    (KeepPolicy("branch", NamePattern("/feature-.*/"), Limit(last=2)), ["feature-a", "feature-b"]),
    (KeepPolicy("branch", NamePattern("/.*/"), Limit(within=timedelta(days=7))), ["feature-a", "feature-b"]),
    (KeepPolicy("branch", NamePattern("main")), ["main"]),
    (KeepPolicy("tag", NamePattern("/.*/"), Limit(last=1)), ["v2"]),
    (KeepPolicy("tag", NamePattern("main")), []),
])
def test_select_references(policy, expected):
    assert [r.name for r in select_references(REFS, policy, NOW)] == expected


def test_defaults_are_werfs():
    kinds = [(p.kind, str(p.name), p.references, p.images) for p in DEFAULT_POLICY.keep_policies]
    assert kinds[0] == ("tag", "/.*/", Limit(last=10), Limit(last=1))
    assert kinds[1][3] == Limit(last=2, within=timedelta(days=7))
    assert kinds[1][2] == Limit(last=10, within=timedelta(days=7))
    assert DEFAULT_POLICY.keep_built_within == timedelta(hours=2)


def test_policy_file_full(tmp_path):
    f = tmp_path / "policy.yaml"
    f.write_text("""
keepPolicies:
  - references:
      branch: /^release-.*/
      limit: {last: 3, in: 30d, operator: Or}
    imagesPerReference: {last: 5}
  - references: {tag: v1.0}
keepBuiltWithin: 6h
keepList: [latest, "/^stable-.*/"]
""")
    p = load_policy_file(f)
    assert len(p.keep_policies) == 2
    first = p.keep_policies[0]
    assert (first.kind, str(first.name), first.references, first.images) == (
        "branch", "/^release-.*/", Limit(last=3, within=timedelta(days=30), operator="or"), Limit(last=5))
    assert p.keep_policies[1].images == Limit(last=1)
    assert p.keep_built_within == timedelta(hours=6)
    assert p.keep_listed("stable-2", None) is not None and p.keep_listed("other", None) is None


def test_empty_policy_means_defaults():
    assert parse_policy_text("").keep_policies == DEFAULT_POLICY.keep_policies
    assert parse_policy_text("cleanup: {}\n").keep_policies == DEFAULT_POLICY.keep_policies


def test_release_revisions_and_report_age():
    assert DEFAULT_POLICY.release_revisions == Limit(last=10)
    assert DEFAULT_POLICY.cluster_report_max_age == timedelta(hours=48)
    p = parse_policy_text("releaseRevisions: {last: 3, in: 720h, operator: Or}\nclusterReportMaxAge: 26h\n")
    assert p.release_revisions == Limit(last=3, within=timedelta(hours=720), operator="or")
    assert p.cluster_report_max_age == timedelta(hours=26)


def test_kade_yaml_cleanup_key(tmp_path):
    f = tmp_path / "kade.yaml"
    f.write_text("images: {}\ncleanup:\n  keepBuiltWithin: 1h\n")
    assert load_kade_yaml_policy(f).keep_built_within == timedelta(hours=1)
    assert load_kade_yaml_policy(tmp_path / "missing.yaml") is None
    f.write_text("images: {}\n")
    assert load_kade_yaml_policy(f) is None


@pytest.mark.parametrize("text,message", [
    ("keepPolicies: {}", "kade.yaml:2: cleanup.keepPolicies: expected a list"),
    ("keepPolicies:\n  - references: {branch: main, tag: v1}", "cleanup.keepPolicies[0].references: give exactly one"),
    ("keepPolicies:\n  - references:\n      branch: main\n      limit: {last: ten}",
     "kade.yaml:5: cleanup.keepPolicies[0].references.limit.last: expected a whole number >= 0, got 'ten'"),
    ("keepPolicies:\n  - references: {branch: main, limit: {in: 7 days}}", "references.limit.in: expected a duration"),
    ("keepPolicies:\n  - references: {branch: main}\n    imagesPerReference: {last: 1, operator: Xor}",
     "imagesPerReference.operator: expected And or Or"),
    ("keepPolicies:\n  - references: {branch: '/[unclosed/'}", "invalid regex"),
    ("keepPolicies:\n  - imagesPerReference: {last: 1}", "keepPolicies[0]: missing 'references'"),
    ("keepPolicy: []", "cleanup.keepPolicy: unknown key 'keepPolicy'"),
    ("keepBuiltWithin: soon", "cleanup.keepBuiltWithin: expected a duration"),
    ("keepList: latest", "cleanup.keepList: expected a list"),
    ("keepList: [[x]]", "cleanup.keepList[0]: expected a name or a /regex/"),
    ("keepPolicies:\n  - references: {branch: main, limit: {}}", "references.limit: give 'last', 'in' or both"),
    ("keepPolicies: [\n", "kade.yaml"),
    ("- just a list", "cleanup: expected a mapping"),
    ("releaseRevisions: 10", "cleanup.releaseRevisions: expected a mapping"),
    ("releaseRevisions: {last: -1}", "cleanup.releaseRevisions.last: expected a whole number >= 0"),
    ("releaseRevisions: {}", "cleanup.releaseRevisions: give 'last', 'in' or both"),
    ("clusterReportMaxAge: forever", "cleanup.clusterReportMaxAge: expected a duration"),
])
def test_policy_errors_name_file_line_and_key(tmp_path, text, message):
    f = tmp_path / "kade.yaml"
    body = "cleanup:\n" + "\n".join("  " + line for line in text.splitlines()) + "\n"
    f.write_text(body)
    with pytest.raises(PolicyError) as exc:
        load_kade_yaml_policy(f) if "cleanup" in body else None
    assert message in str(exc.value)
    assert str(f) in str(exc.value)


def test_unreadable_policy_file(tmp_path):
    with pytest.raises(PolicyError, match="cannot read policy file"):
        load_policy_file(tmp_path / "nope.yaml")


def test_kade_yaml_settings(tmp_path):
    from registry.cleanup.policy_file import Settings, load_kade_yaml_settings

    f = tmp_path / "kade.yaml"
    f.write_text("cleanup:\n  repo: reg:5000/team/app\n  git: https://g/x.git\n  kubeContexts: [a, b]\n")
    assert load_kade_yaml_settings(f) == Settings("reg:5000/team/app", None, "https://g/x.git", ("a", "b"))
    f.write_text("cleanup:\n  clusterName: prod-eu\n  scanNamespaces: [shop, web]\n")
    assert load_kade_yaml_settings(f) == Settings(cluster_name="prod-eu", scan_namespaces=("shop", "web"))
    f.write_text("cleanup:\n  scanNamespaces: shop\n")
    with pytest.raises(PolicyError, match=r"cleanup.scanNamespaces: expected a list of namespace names"):
        load_kade_yaml_settings(f)
    f.write_text("cleanup:\n  repo: [x]\n")
    with pytest.raises(PolicyError, match=r"kade.yaml:2: cleanup.repo: expected a string"):
        load_kade_yaml_settings(f)
    assert load_kade_yaml_settings(tmp_path / "none.yaml") == Settings()
