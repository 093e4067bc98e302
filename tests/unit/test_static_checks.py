"""The linter and the type checker, configured in pyproject.toml, pass over kade's packages."""
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["builder", "registry", "deployer", "kade", "common", "kube"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_finds_nothing() -> None:
    done = _run("ruff", "check", "--no-cache", *PACKAGES)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.slow
def test_mypy_finds_nothing() -> None:
    # a cache outside the tree: nothing to git-ignore, and a cold run is under a minute
    cache = Path(tempfile.gettempdir()) / "kade-mypy-cache"
    done = _run("mypy", "--cache-dir", str(cache), *PACKAGES)
    assert done.returncode == 0, done.stdout + done.stderr
