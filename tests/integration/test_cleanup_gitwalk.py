"""The git walk against real repositories written by git itself."""
import subprocess
from datetime import datetime, timezone

import pytest

from registry.cleanup.errors import GitError
from registry.cleanup.gitwalk import GitSource, list_refs, read_git_facts, safe_url
from tests.fixtures.cleanup import GitHistory

T0 = 1_790_000_000


def _history(tmp_path):
    h = GitHistory(tmp_path / "repo")
    h.commit("a", "main", T0)
    h.commit("b", "main", T0 + 10, ("a",))
    h.commit("f1", "feature", T0 + 20, ("a",))
    h.commit("c", "main", T0 + 30, ("b",))
    h.commit("m", "main", T0 + 40, ("c", "f1"))  # merge of feature into main
    h.commit("x", "other", T0 + 50)  # an unrelated root
    h.tag("v1", "b")
    h.tag("v2", "c", annotated_time=T0 + 99)
    return h.write()


def test_refs_and_reachability(tmp_path):
    h = _history(tmp_path)
    s = h.sha
    refs = {(r.kind, r.name): r for r in list_refs(h.path)}
    assert set(refs) == {("branch", "main"), ("branch", "feature"), ("branch", "other"), ("tag", "v1"),
                         ("tag", "v2")}
    assert refs[("tag", "v2")].commit == s["c"]  # annotated tag peeled to its commit
    assert refs[("branch", "main")].time == datetime.fromtimestamp(T0 + 40, timezone.utc)
    gone = "f" * 40
    facts = read_git_facts(h.path, [s["a"], s["b"], s["f1"], s["m"], s["x"], gone])
    c = facts.contains
    assert c[("branch", "main")] == {s["a"], s["b"], s["f1"], s["m"]}
    assert c[("branch", "feature")] == {s["a"], s["f1"]}
    assert c[("branch", "other")] == {s["x"]}
    assert c[("tag", "v1")] == {s["a"], s["b"]}
    assert c[("tag", "v2")] == {s["a"], s["b"]}
    assert gone not in facts.commit_times
    assert facts.commit_times[s["f1"]] == datetime.fromtimestamp(T0 + 20, timezone.utc)
    assert facts.commits_walked == 6
    assert [r.name for r in facts.refs_containing(s["f1"])] == ["feature", "main"]


def test_long_history_with_many_branches(tmp_path):
    h = GitHistory(tmp_path / "repo")
    prev = h.commit("c0", "main", T0)
    for i in range(1, 3000):
        prev = h.commit(f"c{i}", "main", T0 + i, (prev,))
        if i % 100 == 0:
            h.commit(f"b{i}", f"feature-{i}", T0 + i + 1, (prev,))
    h.write()
    builds = [h.sha[f"c{i}"] for i in range(0, 3000, 7)] + [h.sha[f"b{i}"] for i in range(100, 3000, 100)]
    facts = read_git_facts(h.path, builds)
    assert facts.commits_walked == 3000 + 29
    # feature-1500 forks at c1500: it holds its own commit and every 7th main commit up to c1500.
    expected = {h.sha[f"c{i}"] for i in range(0, 1501, 7)} | {h.sha["b1500"]}
    assert facts.contains[("branch", "feature-1500")] == expected
    assert len(facts.contains[("branch", "main")]) == len(range(0, 3000, 7))


def test_remote_tracking_branches_count_when_no_local_one(tmp_path):
    h = _history(tmp_path)
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--no-checkout", str(h.path), str(clone)], check=True)
    names = {(r.kind, r.name) for r in list_refs(clone)}
    assert ("branch", "feature") in names and ("branch", "other") in names and ("tag", "v2") in names


def test_git_source_clones_urls_and_rejects_non_repos(tmp_path):
    h = _history(tmp_path)
    with GitSource(f"file://{h.path}") as path:
        assert path != h.path
        assert {r.name for r in list_refs(path)} >= {"main", "feature", "v1"}
    assert not path.exists()
    (tmp_path / "plain").mkdir()
    with pytest.raises(GitError, match="not a git repository"):
        with GitSource(str(tmp_path / "plain")):
            pass
    with pytest.raises(GitError, match=r"cannot clone https://\*\*\*@example.invalid/x.git") as exc:
        with GitSource("https://user:s3cret@example.invalid/x.git"):
            pass
    assert "s3cret" not in str(exc.value)
    assert safe_url("https://u:p@h:8443/r") == "https://***@h:8443/r"
