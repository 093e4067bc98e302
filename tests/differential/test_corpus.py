"""The differential corpus: real Dockerfiles (tests/differential/corpus/) built by kade (local backend) and by
BuildKit (the reference, built here: tests/buildkit/), compared with an independent reader (imagetree.py:
Python's tarfile over the OCI layouts) file by file and field by field (compare.py states the rules).

Each builder builds each entry once; an entry whose build.yaml names a builder under `repeat` is built by it
a second time (--no-cache), and what that builder does not reproduce itself (apt logs, npm caches, .pyc
stamps, random names) is normalised: the test prints what it normalised. Every other difference must be
listed in the entry's expected.yaml (and in docs/builder.md); a new one, or an expectation that no longer
happens, fails the test with a readable diff naming the entry, path and field. An expectation
`where: build` (field: words of kade's error) says kade refuses a Dockerfile BuildKit builds.

All builds start at once, when the first test asks for them, on KADE_DIFFERENTIAL_JOBS threads (3; a
builder's job is its build of one entry, and its repeat), in corpus order: each test waits for its own
entry's builds while later entries build. KADE_DIFFERENTIAL_BUILDAH=1 adds buildah (`buildah bud`, default
storage) as a second opinion on every difference (printed, not asserted; not in CI).
KADE_DIFFERENTIAL_ONLY=a,b limits the run to those entries.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.differential import summary
from tests.differential.builders import (BuildFailed, Built, Prepared, build_buildah, build_buildkit, build_kade,
                                         entries, prepare)
from tests.differential.compare import Difference, Noise, image_differences, judge
from tests.differential.imagetree import Image, read_layout
from tests.differential.standins import ensure_standins

# The first test waits for its entry's builds, and pays for the stand-in bases when this machine has none yet
# (scripts/test builds them before pytest: tests/differential/prepare.py).
pytestmark = pytest.mark.timeout(1800)
ONLY = {n for n in os.environ.get("KADE_DIFFERENTIAL_ONLY", "").split(",") if n}
ENTRIES = [e for e in entries() if not ONLY or e.name in ONLY]
JOBS = int(os.environ.get("KADE_DIFFERENTIAL_JOBS", "3"))


@dataclass
class Outcome:
    """One builder's build of one entry (and its repeat, when the entry asks for one), or its failure."""
    first: tuple[Image, Built] | None = None
    again: tuple[Image, Built] | None = None
    failed: BuildFailed | None = None

    def seconds(self) -> tuple[float, ...]:
        return tuple(run[1].seconds for run in (self.first, self.again) if run is not None)

    def self_differences(self) -> list[Difference]:
        """What this builder's two builds of the entry disagree on (nothing without a repeat)."""
        if self.first is None or self.again is None:
            return []
        (a, ab), (b, bb) = self.first, self.again
        return image_differences(a, ab.started, b, bb.started)


def run_job(build: Callable[[bool], tuple[Image, Built]], repeat: bool) -> Outcome:
    """A builder's job: build (and build again with --no-cache when `repeat`), catching its failure."""
    try:
        first = build(False)
        return Outcome(first, build(True) if repeat else None)
    except BuildFailed as failed:
        return Outcome(failed=failed)


@pytest.fixture(scope="module")
def kade_cache(tmp_path_factory):
    """One kade cache for the corpus, as BuildKit has one daemon: base images are fetched and unpacked once.
    No entry is tagged, so no step of one entry is found in another's cache."""
    return tmp_path_factory.mktemp("kade-cache")


@pytest.fixture(scope="module")
def prepared(registry, tmp_path_factory) -> dict[str, tuple[Prepared, set[tuple[str, str]]]]:
    """Every entry's context and mapped Dockerfile, with the stand-in bases it needs."""
    return {e.name: prepare(e, registry.host, tmp_path_factory.mktemp(f"entry-{e.name}")) for e in ENTRIES}


@pytest.fixture(scope="module")
def corpus_registry(prepared, buildkitd, registry, tmp_path_factory):
    """The session registry with every stand-in base the corpus needs (built once per machine)."""
    start = time.monotonic()
    needed = set().union(*(n for _, n in prepared.values())) if prepared else set()
    ensure_standins(buildkitd, registry.host, needed, tmp_path_factory.mktemp("standins"))
    summary.note(f"stand-in bases ready in {time.monotonic() - start:.1f}s: "
                 + ", ".join(f"{n}:{t}" for n, t in sorted(needed)))
    return registry.host


@pytest.fixture(scope="module")
def outcomes(prepared, corpus_registry, buildkitd, kade_cache) -> Iterator[dict[str, tuple[Future, Future]]]:
    """Every entry's kade and BuildKit jobs, submitted at once in corpus order."""
    started = time.monotonic()
    pool = ThreadPoolExecutor(JOBS, thread_name_prefix="corpus")
    jobs: dict[str, tuple[Future, Future]] = {}
    for entry in ENTRIES:
        p, _ = prepared[entry.name]

        def kade(no_cache: bool, p: Prepared = p) -> tuple[Image, Built]:
            built = build_kade(p, kade_cache, corpus_registry, no_cache=no_cache)
            return read_layout(built.layout, built.digest), built

        def buildkit(no_cache: bool, p: Prepared = p) -> tuple[Image, Built]:
            built = build_buildkit(p, buildkitd, p.context.parent / ("bk2" if no_cache else "bk1"), no_cache=no_cache)
            return read_layout(built.layout), built

        jobs[entry.name] = (pool.submit(run_job, kade, "kade" in entry.repeat),
                            pool.submit(run_job, buildkit, "buildkit" in entry.repeat))
    yield jobs
    pool.shutdown(wait=True, cancel_futures=True)
    summary.note(f"{len(ENTRIES)} entries built in {time.monotonic() - started:.0f}s on {JOBS} jobs")


def test_corpus_is_large_enough():
    assert ONLY or len(ENTRIES) >= 30, f"the corpus has {len(ENTRIES)} entries; issue 14 asks for at least 30"
    for entry in ENTRIES:
        source = (entry.folder / "SOURCE").read_text()
        assert "repository:" in source and "path:" in source, f"{entry.name}/SOURCE must name its repository and path"


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_kade_builds_what_buildkit_builds(entry, outcomes, prepared, tmp_path):
    kade_job, bk_job = outcomes[entry.name]
    bk, kade = bk_job.result(), kade_job.result()
    if bk.failed:
        raise bk.failed  # the reference must build every entry
    assert bk.first is not None

    refused = [e for e in entry.expected if e.where == "build"]
    if refused:  # kade is known to refuse this Dockerfile (BuildKit builds it): hold it to that
        assert kade.failed is not None, (f"corpus entry {entry.name}: kade now builds it; expected.yaml says it "
                                         f"refuses it ({refused[0].why}): remove that expectation and compare the images")
        assert all(f in str(kade.failed) for f in refused[0].fields), \
            f"corpus entry {entry.name}: kade failed, but not as expected.yaml says ({refused[0].fields}):\n{kade.failed}"
        summary.note(f"{entry.name}: kade refuses it as expected ({refused[0].why})")
        return
    if kade.failed:
        raise kade.failed
    assert kade.first is not None

    (k, kb), (b, bb) = kade.first, bk.first
    noisy = {name: o.self_differences() for name, o in (("kade", kade), ("buildkit", bk))}
    verdict = judge(image_differences(k, kb.started, b, bb.started), Noise.of(*noisy.values()), entry.expected)
    summary.record(entry.name, verdict, kade=kade.seconds(), buildkit=bk.seconds(),
                   noisy=[name for name, diffs in noisy.items() if diffs])
    if os.environ.get("KADE_DIFFERENTIAL_BUILDAH") and (verdict.new or verdict.known):
        second_opinion(prepared[entry.name][0], tmp_path, k, kb, b, bb)
    message = []
    if verdict.new:
        message.append(f"corpus entry {entry.name}: {len(verdict.new)} difference(s) between kade and BuildKit "
                       "that expected.yaml does not list (fix kade, or list it with its reason here and in "
                       "docs/builder.md; a builder that does not reproduce the entry itself goes under "
                       "`repeat:` in its build.yaml):")
        message += ["  " + d.show("kade", "buildkit") for d in verdict.new[:60]]
        if len(verdict.new) > 60:
            message.append(f"  ... and {len(verdict.new) - 60} more")
    if verdict.stale:
        message.append(f"corpus entry {entry.name}: expected difference(s) that no longer happen (remove them "
                       "from expected.yaml and docs/builder.md):")
        message += [f"  {e.where} {'/'.join(e.fields) or '*'}: {e.why}" for e in verdict.stale]
    assert not message, "\n".join(message)


def second_opinion(p: Prepared, work: Path, k: Image, kb: Built, b: Image, bb: Built) -> None:
    built = build_buildah(p, work / "buildah-store", work / "buildah-layout")
    h = read_layout(built.layout)
    lines = [f"buildah second opinion on {p.entry.name}:"]
    lines += ["  buildah vs BuildKit: " + d.show("buildah", "buildkit")
              for d in image_differences(h, built.started, b, bb.started)[:40]]
    lines += ["  buildah vs kade: " + d.show("buildah", "kade")
              for d in image_differences(h, built.started, k, kb.started)[:40]]
    summary.note("\n".join(lines))
