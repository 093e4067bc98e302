"""Giterminism: a project is built and deployed from its committed tree at HEAD, not the working tree.

`open_repository(path)` finds the git checkout holding the project and what HEAD is (commit,
branch, tag). `export(state, dest, dev=False)` writes the project's folder as committed at HEAD
(`git archive`) into `dest` — or, with `dev=True`, the working tree's tracked and untracked,
not-ignored files. `check_clean(state, paths)` refuses uncommitted or untracked files under the
paths a project uses (its kade.yaml, image contexts, Dockerfiles, manifests, values files),
naming each, unless `--dev` was given. Ignored files never count: they are never in a commit.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from common.git import GitNotInstalled, GitTimeout, run_git, strip_credentials
from kade.config import ConfigError

GIT_TIMEOUT_S = 60


class GiterminismError(ConfigError):
    """The working tree differs from HEAD in files the project uses (and --dev was not given)."""


@dataclass(frozen=True)
class GitState:
    root: Path  # the checkout's top level
    subdir: str  # the project folder relative to root, posix, "" for the root itself
    commit: str
    branch: str | None
    tag: str | None
    commit_time: int | None = None  # committer time of HEAD (the project's default SOURCE_DATE_EPOCH)

    @property
    def short_commit(self) -> str:
        return self.commit[:12]

    def template_values(self) -> dict[str, str | None]:
        return {"commit": self.commit, "short_commit": self.short_commit, "branch": self.branch, "tag": self.tag}


def _git(root: Path, *args: str, binary: bool = False) -> subprocess.CompletedProcess:
    try:
        return run_git(root, *args, binary=binary, timeout=GIT_TIMEOUT_S)
    except GitNotInstalled:
        raise ConfigError("git is not installed; kade builds from the committed tree and needs it") from None
    except GitTimeout as exc:
        raise ConfigError(str(exc)) from None


def _out(root: Path, *args: str) -> str | None:
    done = _git(root, *args)
    return done.stdout.strip() if done.returncode == 0 else None


def open_repository(project_dir: Path, environ: dict[str, str] | None = None) -> GitState:
    """The git state of the checkout holding `project_dir`; CI variables name the branch/tag of a
    detached HEAD (GitLab CI_COMMIT_BRANCH/CI_COMMIT_TAG, GitHub GITHUB_HEAD_REF/GITHUB_REF_NAME)."""
    environ = dict(os.environ if environ is None else environ)
    project_dir = project_dir.resolve()
    if not project_dir.is_dir():
        raise ConfigError(f"{project_dir}: no such folder")
    top = _out(project_dir, "rev-parse", "--show-toplevel")
    if not top:
        raise ConfigError(f"{project_dir} is not inside a git checkout: kade builds what is committed "
                          "(run `git init` and commit the project)")
    root = Path(top).resolve()
    commit = _out(root, "rev-parse", "--verify", "--quiet", "HEAD^{commit}")
    if not commit or len(commit) != 40:
        raise ConfigError(f"{root}: the repository has no commit yet; commit the project first")
    branch = _out(root, "symbolic-ref", "--quiet", "--short", "HEAD") or ci_branch(environ)
    tags = (_out(root, "tag", "--points-at", "HEAD", "--sort=-creatordate") or "").split()
    tag = tags[0] if tags else ci_tag(environ)
    subdir = project_dir.relative_to(root).as_posix()
    when = _out(root, "show", "-s", "--format=%ct", commit)
    return GitState(root=root, subdir="" if subdir == "." else subdir, commit=commit, branch=branch, tag=tag,
                    commit_time=int(when) if when and when.isdigit() else None)


def ci_branch(environ: dict[str, str]) -> str | None:
    if environ.get("CI_COMMIT_BRANCH"):
        return environ["CI_COMMIT_BRANCH"]
    if environ.get("GITHUB_HEAD_REF"):
        return environ["GITHUB_HEAD_REF"]
    if environ.get("GITHUB_REF_TYPE") == "branch" and environ.get("GITHUB_REF_NAME"):
        return environ["GITHUB_REF_NAME"]
    return None


def ci_tag(environ: dict[str, str]) -> str | None:
    if environ.get("CI_COMMIT_TAG"):
        return environ["CI_COMMIT_TAG"]
    if environ.get("GITHUB_REF_TYPE") == "tag" and environ.get("GITHUB_REF_NAME"):
        return environ["GITHUB_REF_NAME"]
    return None


def export(state: GitState, dest: Path, dev: bool = False) -> Path:
    """Write the project folder (committed at HEAD, or the working tree with `dev`) under `dest`;
    returns the exported project folder."""
    dest.mkdir(parents=True, exist_ok=True)
    pathspec = [state.subdir] if state.subdir else []
    if dev:
        _copy_working_tree(state, dest, pathspec)
    else:
        _archive_head(state, dest, pathspec)
    project = dest / state.subdir if state.subdir else dest
    if not project.is_dir():
        raise GiterminismError(f"{state.subdir or '.'} is not in commit {state.short_commit}: commit it "
                               "(or pass --dev to use the working tree)")
    return project


def _archive_head(state: GitState, dest: Path, pathspec: list[str]) -> None:
    proc = subprocess.Popen(["git", "-C", str(state.root), "archive", "--format=tar", state.commit, "--", *pathspec],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            tar.extractall(dest, filter="tar")
    except tarfile.TarError:
        pass  # git's own message below says why
    finally:
        proc.stdout.close()
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        rc = proc.wait()
    if rc != 0:
        raise GiterminismError(f"git archive of {state.subdir or '.'} at {state.short_commit} failed: "
                               f"{err.strip() or f'exit {rc}'} (is the project committed?)")


def _copy_working_tree(state: GitState, dest: Path, pathspec: list[str]) -> None:
    done = _git(state.root, "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", *pathspec)
    if done.returncode != 0:
        raise ConfigError(f"git ls-files in {state.root} failed: {done.stderr.strip()}")
    for name in sorted(set(filter(None, done.stdout.split("\0")))):
        src = state.root / name
        if not os.path.lexists(src):
            continue  # deleted in the working tree
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), target)
        elif src.is_file():
            shutil.copy2(src, target)


def parse_status(output: str) -> list[tuple[str, str]]:
    """`git status --porcelain=v1 -z` -> [(two-letter status, path)]; a rename's source is skipped."""
    entries = output.split("\0")
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(entries):
        entry = entries[i]
        i += 1
        if len(entry) < 4:
            continue
        code, path = entry[:2], entry[3:]
        out.append((code, path))
        if code[0] in "RC":
            i += 1  # the next entry is the original path
    return out


def describe_status(code: str) -> str:
    if code == "??":
        return "untracked"
    if "D" in code:
        return "deleted"
    if "A" in code:
        return "added, not committed"
    if "R" in code:
        return "renamed"
    return "modified"


def under(path: str, prefixes: list[str]) -> bool:
    """Whether `path` is one of `prefixes` or inside one of them (posix paths relative to the root)."""
    p = PurePosixPath(path)
    for prefix in prefixes:
        if prefix in ("", "."):
            return True
        q = PurePosixPath(prefix)
        if p == q or q in p.parents:
            return True
    return False


def dirty_files(state: GitState, paths: list[str]) -> list[tuple[str, str]]:
    """Uncommitted or untracked (not ignored) files under `paths` (relative to the project folder)."""
    prefixes = [str(PurePosixPath(state.subdir) / p) if state.subdir else p for p in paths]
    done = _git(state.root, "status", "--porcelain=v1", "-z", "--untracked-files=all", "--",
                *(state.subdir and [state.subdir] or []))
    if done.returncode != 0:
        raise ConfigError(f"git status in {state.root} failed: {done.stderr.strip()}")
    return [(code, path) for code, path in parse_status(done.stdout) if under(path, [_norm(p) for p in prefixes])]


def check_clean(state: GitState, paths: list[str]) -> None:
    dirty = dirty_files(state, paths)
    if not dirty:
        return
    shown = ", ".join(f"{path} ({describe_status(code)})" for code, path in dirty[:20])
    more = f" and {len(dirty) - 20} more" if len(dirty) > 20 else ""
    raise GiterminismError(
        f"the working tree differs from commit {state.short_commit} in files this project uses: {shown}{more}. "
        "kade builds and deploys what is committed: commit (or remove) them, or pass --dev to use the working tree")


def _norm(path: str) -> str:
    parts: list[str] = []
    for part in PurePosixPath(path).parts:
        if part == "..":
            if parts:
                parts.pop()
        elif part != ".":
            parts.append(part)
    return "/".join(parts)


def source_url(state: GitState) -> str | None:
    """The `origin` remote's URL without credentials (for org.opencontainers.image.source), or None."""
    url = _out(state.root, "remote", "get-url", "origin")
    return strip_credentials(url) if url else None


