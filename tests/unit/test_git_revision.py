"""common/git.py `revision`: the commit and branch every build records, from one git process."""
import subprocess

import pytest

from common.git import revision


def _git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


@pytest.mark.parametrize("state", ["on a branch", "detached", "no commit yet", "not a repository", "in a subfolder"])
def test_revision(state, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    if state == "not a repository":
        assert revision(repo) == (None, None)
        return
    _git(repo, "init", "-q", "-b", "feature/x")
    if state == "no commit yet":
        assert revision(repo) == (None, None)
        return
    (repo / "sub").mkdir()
    (repo / "sub" / "f").write_text("x")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "c")
    head = _git(repo, "rev-parse", "HEAD")
    if state == "detached":
        _git(repo, "checkout", "-q", "--detach")
        assert revision(repo) == (head, None)
    elif state == "in a subfolder":
        assert revision(repo / "sub") == (head, "feature/x")
    else:
        assert revision(repo) == (head, "feature/x")
