"""git as a subprocess, the one way: no terminal prompts, C locale, bounded in time, and no
credential ever in what it reports (`redact`, `strip_credentials`)."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path


class GitNotInstalled(OSError):
    """No `git` executable on PATH."""


class GitTimeout(OSError):
    """git did not finish within its time."""


def run_git(root: Path | str, *args: str, input: str | None = None, timeout: float | None = None,
            binary: bool = False) -> subprocess.CompletedProcess:
    """`git -C root ARGS`, output captured (text unless `binary`); raises GitNotInstalled or GitTimeout,
    never for a non-zero exit (the caller reads `returncode`)."""
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
    try:
        return subprocess.run(["git", "-C", str(root), *args], input=input, capture_output=True, text=not binary,
                              env=env, timeout=timeout, check=False)
    except FileNotFoundError:
        raise GitNotInstalled("git is not installed") from None
    except subprocess.TimeoutExpired:
        raise GitTimeout(f"git {' '.join(args[:2])} in {root} took over {timeout:g}s") from None


def output(root: Path | str, *args: str, timeout: float = 10) -> str | None:
    """The stripped stdout of a git command, None when it fails or git is missing."""
    try:
        done = run_git(root, *args, timeout=timeout)
    except OSError:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def revision(path: Path | str) -> tuple[str | None, str | None]:
    """(commit, branch) of the git checkout holding `path`, or (None, None); one git process (every
    build asks). A detached HEAD has no branch."""
    found = (output(path, "rev-parse", "HEAD", "--abbrev-ref", "HEAD") or "").splitlines()
    if len(found) != 2 or len(found[0]) != 40:
        return None, None
    commit, branch = found
    return commit, (branch if branch != "HEAD" else None)


def redact(text: str) -> str:
    """Drop user:password@ from any URL in `text` (never log credentials)."""
    return re.sub(r"(\w+://)[^/@\s]+@", r"\1***@", text)


def strip_credentials(url: str) -> str:
    """`https://user:token@host/x` -> `https://host/x`; scp-like `git@host:x` stays (no secret in it)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    host_part, slash, path = rest.partition("/")
    if "@" in host_part:
        host_part = host_part.rsplit("@", 1)[1]
    return f"{scheme}://{host_part}{slash}{path}"
