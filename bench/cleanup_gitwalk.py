"""Benchmark: the cleanup's git walk on a 100,000-commit history (101 refs, 10,000 build commits).

Run from the repository root: `.venv/bin/python bench/cleanup_gitwalk.py`.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from registry.cleanup.gitwalk import read_git_facts  # noqa: E402
from tests.fixtures.cleanup import GitHistory  # noqa: E402

COMMITS, BRANCH_EVERY, BUILD_EVERY = 100_000, 1000, 10


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="kade-bench-gitwalk-"))
    try:
        h = GitHistory(work / "repo")
        prev = None
        for i in range(COMMITS):
            prev = h.commit(f"c{i}", "main", 1_700_000_000 + i, (prev,) if prev else ())
            if i % BRANCH_EVERY == BRANCH_EVERY - 1:
                h.commit(f"b{i}", f"feature-{i}", 1_700_000_000 + i, (prev,))
        h.write()
        builds = [h.sha[f"c{i}"] for i in range(0, COMMITS, BUILD_EVERY)]
        t = time.perf_counter()
        facts = read_git_facts(h.path, builds)
        dt = time.perf_counter() - t
        print(f"{facts.commits_walked} commits, {len(facts.refs)} refs, {len(builds)} build commits: "
              f"{dt:.2f} s = {facts.commits_walked / dt:,.0f} commits/s")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
