"""Git facts for the cleanup, read in bulk: references, commit times, which build commits each
reference contains.

Three subprocesses whatever the history's size: `git for-each-ref` (every branch and tag with its
peeled commit and time), one `git log --topo-order --reverse` over all reference tips (each commit
with its parents and committer time, ancestors first), and nothing per commit. Reachability of the
build commits is then one pass over that stream: each commit's set of reachable build commits is the
union of its parents' (a bitset), freed as soon as its last child has used it.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

from common import fsutil
from common.git import GitNotInstalled, redact, run_git
from registry.cleanup.errors import GitError
from registry.cleanup.policy import GitRef


@dataclass(frozen=True)
class GitFacts:
    refs: tuple[GitRef, ...]
    commit_times: dict[str, datetime]  # build commits found in the history -> committer time
    contains: dict[tuple[str, str], frozenset[str]]  # (kind, name) -> build commits in its history
    commits_walked: int = 0

    def refs_containing(self, commit: str) -> list[GitRef]:
        return [r for r in self.refs if commit in self.contains.get((r.kind, r.name), frozenset())]


def _git(repo: Path | str, args: list[str], stdin: str | None = None) -> str:
    try:
        out = run_git(repo, *args, input=stdin)
    except GitNotInstalled:
        raise GitError("git is not installed: install git to let cleanup read the history") from None
    if out.returncode != 0:
        raise GitError(f"git {args[0]} failed in {repo}: {redact(out.stderr.strip())[:500]}")
    return out.stdout


def _ts(value: str) -> datetime:
    return datetime.fromtimestamp(int(value), tz=timezone.utc)


def list_refs(repo: Path) -> list[GitRef]:
    """Branches (local; remote-tracking ones when no local branch has the name) and tags, peeled."""
    fmt = "%(refname)%00%(objectname)%00%(*objectname)%00%(committerdate:unix)%00%(*committerdate:unix)"
    out = _git(repo, ["for-each-ref", f"--format={fmt}", "refs/heads", "refs/tags", "refs/remotes"])
    heads: dict[str, GitRef] = {}
    remotes: dict[str, GitRef] = {}
    tags: list[GitRef] = []
    for line in out.splitlines():
        refname, obj, peeled, date, peeled_date = line.split("\0")
        commit, when = (peeled, peeled_date) if peeled else (obj, date)
        if not when:  # a tag of a tree or blob: nothing to walk
            continue
        if refname.startswith("refs/heads/"):
            name = refname[len("refs/heads/"):]
            heads[name] = GitRef("branch", name, commit, _ts(when))
        elif refname.startswith("refs/tags/"):
            tags.append(GitRef("tag", refname[len("refs/tags/"):], commit, _ts(when)))
        else:
            parts = refname.split("/", 3)  # refs/remotes/<remote>/<name>
            if len(parts) == 4 and parts[3] != "HEAD":
                name = parts[3]
                prev = remotes.get(name)
                if prev is None or _ts(when) > prev.time:
                    remotes[name] = GitRef("branch", name, commit, _ts(when))
    branches = list(heads.values()) + [r for n, r in remotes.items() if n not in heads]
    return sorted(branches, key=lambda r: r.name) + sorted(tags, key=lambda r: r.name)


def walk(repo: Path, refs: Iterable[GitRef], build_commits: Iterable[str]) -> GitFacts:
    """Which build commits each reference contains, and the build commits' times, in one history pass."""
    refs = tuple(refs)
    wanted = {c for c in build_commits if c}
    index = {c: i for i, c in enumerate(sorted(wanted))}
    tips = sorted({r.commit for r in refs})
    if not tips:
        return GitFacts(refs, {}, {(r.kind, r.name): frozenset() for r in refs})
    # Ancestors first; one line per commit: "<sha> <time> <parent> <parent>..."
    proc_args = ["log", "--topo-order", "--reverse", "--format=%H %ct %P", "--stdin", "--no-show-signature"]
    reach: dict[str, int] = {}
    pending_children: dict[str, int] = {}
    tip_set = set(tips)
    tip_bits: dict[str, int] = {}
    commit_times: dict[str, datetime] = {}
    lines = _git(repo, proc_args, stdin="\n".join(tips) + "\n").splitlines()
    # Count children to free each commit's bitset as soon as its last child has read it.
    for line in lines:
        for parent in line.split(" ")[2:]:
            pending_children[parent] = pending_children.get(parent, 0) + 1
    walked = 0
    for line in lines:
        parts = line.split(" ")
        sha, ct, parents = parts[0], parts[1], parts[2:]
        walked += 1
        bits = 0
        for p in parents:
            pb = reach.get(p)
            if pb:
                bits |= pb
            left = pending_children.get(p, 0) - 1
            if left <= 0:
                reach.pop(p, None)
                pending_children.pop(p, None)
            else:
                pending_children[p] = left
        i = index.get(sha)
        if i is not None:
            bits |= 1 << i
            commit_times[sha] = _ts(ct)
        if sha in tip_set:
            tip_bits[sha] = bits
        if pending_children.get(sha, 0) > 0 and bits:
            reach[sha] = bits
    ordered = sorted(wanted)
    contains: dict[tuple[str, str], frozenset[str]] = {(r.kind, r.name): frozenset(_bits_to(tip_bits.get(r.commit, 0), ordered)) for r in refs}
    return GitFacts(refs, commit_times, contains, walked)


def _bits_to(bits: int, ordered: list[str]) -> Iterator[str]:
    i = 0
    while bits:
        if bits & 1:
            yield ordered[i]
        bits >>= 1
        i += 1


def read_git_facts(repo: Path, build_commits: Iterable[str]) -> GitFacts:
    return walk(repo, list_refs(repo), build_commits)


class GitSource:
    """A local repository path, or a URL cloned (bare, without blobs) into a temporary directory."""

    def __init__(self, path_or_url: str) -> None:
        self.spec = path_or_url
        self._tmp: str | None = None

    def __enter__(self) -> Path:
        local = Path(self.spec)
        if local.exists():
            if not (local / ".git").exists() and not (local / "HEAD").exists():
                raise GitError(f"{local} is not a git repository: pass --git with a repository path or URL")
            return local
        if "://" not in self.spec and "@" not in self.spec:
            raise GitError(f"git repository {self.spec} does not exist: pass --git with a repository path or URL")
        self._tmp = tempfile.mkdtemp(prefix="kade-cleanup-git-")
        try:
            out = run_git(".", "clone", "--quiet", "--mirror", "--filter=blob:none", self.spec, self._tmp)
        except GitNotInstalled:
            raise GitError("git is not installed: install git to let cleanup read the history") from None
        if out.returncode != 0:
            fsutil.remove_tree(self._tmp)
            raise GitError(f"cannot clone {redact(self.spec)}: {redact(out.stderr.strip())[:500]} "
                           "(check the URL and the git credentials)")
        return Path(self._tmp)

    def __exit__(self, *exc: object) -> None:
        if self._tmp:
            fsutil.remove_tree(self._tmp)


safe_url = redact  # a git URL as it may be shown: its user:password@ replaced by ***@
