"""The no-silent-skips rule (tests/fixtures/skips.py): an unlisted skip fails the run, a listed one
counts only with its opt-out set, and docs/testing.md lists exactly the allowed reasons."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.skips import ALLOWED, allowed

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("reason", "environ", "expected"), [
    ("KADE_SKIP_CLUSTER=1: the test cluster is not started", {"KADE_SKIP_CLUSTER": "1"}, True),
    ("KADE_SKIP_CLUSTER=1: the test cluster is not started", {}, False),
    ("no network", {"KADE_TEST_OFFLINE": "1"}, True),
    ("no network", {"KADE_SKIP_CLUSTER": "1"}, False),
    ("buildah is not installed", {"KADE_SKIP_CLUSTER": "1", "KADE_TEST_OFFLINE": "1"}, False),
])
def test_allowed_reasons_need_their_opt_out(reason, environ, expected):
    assert allowed(reason, environ) is expected


def test_docs_list_every_allowed_reason():
    text = (ROOT / "docs" / "testing.md").read_text()
    section = text.split("## Skips", 1)[1].split("\n## ", 1)[0]
    for a in ALLOWED:
        assert f"`{a.reason}`" in section and f"`{a.variable}`" in section, a


def _run(tmp_path: Path, body: str, **env: str) -> subprocess.CompletedProcess:
    test = tmp_path / "test_sample.py"
    test.write_text("import pytest\n\n" + body)
    environ = {k: v for k, v in os.environ.items() if k not in ("KADE_ALLOW_SKIPS", "KADE_SKIP_CLUSTER")}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p",
                           "tests.fixtures.skips", "--rootdir", str(tmp_path), str(test)],
                          cwd=ROOT, env={**environ, "PYTHONPATH": str(ROOT), **env},
                          capture_output=True, text=True, timeout=120)


def test_an_unlisted_skip_fails_the_session(tmp_path):
    done = _run(tmp_path, "def test_a():\n    pytest.skip('gcc is missing')\n\ndef test_b():\n    pass\n")
    assert done.returncode == 1, done.stdout
    assert "test_sample.py::test_a: gcc is missing" in done.stdout
    allowed_run = _run(tmp_path, "def test_a():\n    pytest.skip('gcc is missing')\n", KADE_ALLOW_SKIPS="1")
    assert allowed_run.returncode == 0, allowed_run.stdout
    assert "gcc is missing" in allowed_run.stdout  # still named


def test_a_listed_skip_with_its_opt_out_passes(tmp_path):
    body = "def test_a():\n    pytest.skip('KADE_SKIP_CLUSTER=1: the test cluster is not started')\n"
    assert _run(tmp_path, body, KADE_SKIP_CLUSTER="1").returncode == 0
    assert _run(tmp_path, body).returncode == 1
