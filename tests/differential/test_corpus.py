"""The differential corpus: real Dockerfiles (tests/differential/corpus/) built by kade (local backend) and by
BuildKit (the reference, built here: tests/buildkit/), compared with an independent reader (imagetree.py:
Python's tarfile over the OCI layouts) file by file and field by field (compare.py states the rules).

Each builder builds each entry twice (the second time with --no-cache): what a builder does not reproduce
itself (apt logs, caches, .pyc stamps, random names) is normalised, and the test prints what it normalised.
Every other difference must be listed in the entry's expected.yaml (and in docs/builder.md); a new one, or
an expectation that no longer happens, fails the test with a readable diff naming the entry, path and field.
An expectation `where: build` (field: words of kade's error) says kade refuses a Dockerfile BuildKit builds.

KADE_DIFFERENTIAL_BUILDAH=1 adds buildah (`buildah bud`, default storage) as a second opinion on every
difference (printed, not asserted; not in CI). KADE_DIFFERENTIAL_ONLY=a,b limits the run to those entries.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.differential import summary
from tests.differential.builders import (BuildFailed, Built, Prepared, build_buildah, build_buildkit, build_kade,
                                         entries, prepare)
from tests.differential.compare import Expected, Noise, image_differences, judge
from tests.differential.imagetree import Image, read_layout
from tests.differential.standins import ensure_standins

# The first entry also pays for the stand-in bases when this machine has none yet (BuildKit builds them:
# about 4 minutes, longer under load), which pytest's 600 s per-test timeout would cut short.
pytestmark = pytest.mark.timeout(1800)
ONLY = {n for n in os.environ.get("KADE_DIFFERENTIAL_ONLY", "").split(",") if n}
ENTRIES = [e for e in entries() if not ONLY or e.name in ONLY]


@pytest.fixture(scope="module")
def kade_cache(tmp_path_factory):
    """One kade cache for the corpus, as BuildKit has one daemon: base images are fetched and unpacked once.
    No entry is tagged, so no step of one entry is found in another's cache."""
    return tmp_path_factory.mktemp("kade-cache")


@pytest.fixture(scope="module")
def corpus_registry(buildkitd, registry, tmp_path_factory):
    """The session registry with every stand-in base the corpus needs (built once per machine)."""
    start = time.monotonic()
    needed: set[tuple[str, str]] = set()
    for entry in ENTRIES:
        needed |= prepare(entry, registry.host, tmp_path_factory.mktemp(f"map-{entry.name}"))[1]
    ensure_standins(buildkitd, registry.host, needed, tmp_path_factory.mktemp("standins"))
    summary.note(f"stand-in bases ready in {time.monotonic() - start:.1f}s: "
                 + ", ".join(f"{n}:{t}" for n, t in sorted(needed)))
    return registry.host


def test_corpus_is_large_enough():
    assert ONLY or len(ENTRIES) >= 30, f"the corpus has {len(ENTRIES)} entries; issue 14 asks for at least 30"
    for entry in ENTRIES:
        source = (entry.folder / "SOURCE").read_text()
        assert "repository:" in source and "path:" in source, f"{entry.name}/SOURCE must name its repository and path"


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_kade_builds_what_buildkit_builds(entry, corpus_registry, buildkitd, kade_cache, tmp_path):
    prepared, _ = prepare(entry, corpus_registry, tmp_path)

    refused = [e for e in entry.expected if e.where == "build"]
    if refused:  # kade is known to refuse this Dockerfile (BuildKit builds it): hold it to that
        expect_kade_refusal(prepared, refused[0], kade_cache, corpus_registry, buildkitd, tmp_path)
        return

    def kade_twice() -> tuple[tuple[Image, Built], tuple[Image, Built]]:
        first = build_kade(prepared, kade_cache, corpus_registry, no_cache=False)
        first_image = read_layout(first.layout, first.digest)
        second = build_kade(prepared, kade_cache, corpus_registry, no_cache=True)
        return (first_image, first), (read_layout(second.layout, second.digest), second)

    def buildkit_twice() -> tuple[tuple[Image, Built], tuple[Image, Built]]:
        first = build_buildkit(prepared, buildkitd, tmp_path / "bk1", no_cache=False)
        second = build_buildkit(prepared, buildkitd, tmp_path / "bk2", no_cache=True)
        return (read_layout(first.layout), first), (read_layout(second.layout), second)

    with ThreadPoolExecutor(2) as pool:  # the two builders side by side: each waits on the network a lot
        kade_runs, bk_runs = pool.submit(kade_twice), pool.submit(buildkit_twice)
        (k1, kb1), (k2, kb2) = kade_runs.result()
        (b1, bb1), (b2, bb2) = bk_runs.result()

    noise = Noise.of(image_differences(k1, kb1.started, k2, kb2.started),
                     image_differences(b1, bb1.started, b2, bb2.started))
    verdict = judge(image_differences(k1, kb1.started, b1, bb1.started), noise, entry.expected)
    summary.record(entry.name, verdict, kade=(kb1.seconds, kb2.seconds), buildkit=(bb1.seconds, bb2.seconds))
    if os.environ.get("KADE_DIFFERENTIAL_BUILDAH") and (verdict.new or verdict.known):
        second_opinion(prepared, tmp_path, k1, kb1, b1, bb1)
    message = []
    if verdict.new:
        message.append(f"corpus entry {entry.name}: {len(verdict.new)} difference(s) between kade and BuildKit "
                       "that expected.yaml does not list (fix kade, or list it with its reason here and in "
                       "docs/builder.md):")
        message += ["  " + d.show("kade", "buildkit") for d in verdict.new[:60]]
        if len(verdict.new) > 60:
            message.append(f"  ... and {len(verdict.new) - 60} more")
    if verdict.stale:
        message.append(f"corpus entry {entry.name}: expected difference(s) that no longer happen (remove them "
                       "from expected.yaml and docs/builder.md):")
        message += [f"  {e.where} {'/'.join(e.fields) or '*'}: {e.why}" for e in verdict.stale]
    assert not message, "\n".join(message)


def expect_kade_refusal(p: Prepared, expected: Expected, cache: Path, registry: str, daemon, work: Path) -> None:
    build_buildkit(p, daemon, work / "bk1", no_cache=False)  # the reference builds it
    try:
        build_kade(p, cache, registry, no_cache=False)
    except BuildFailed as failed:
        assert all(f in str(failed) for f in expected.fields), \
            f"corpus entry {p.entry.name}: kade failed, but not as expected.yaml says ({expected.fields}):\n{failed}"
        summary.note(f"{p.entry.name}: kade refuses it as expected ({expected.why})")
        return
    raise AssertionError(f"corpus entry {p.entry.name}: kade now builds it; expected.yaml says it refuses it "
                         f"({expected.why}): remove that expectation and compare the images")


def second_opinion(p: Prepared, work: Path, k: Image, kb: Built, b: Image, bb: Built) -> None:
    built = build_buildah(p, work / "buildah-store", work / "buildah-layout")
    h = read_layout(built.layout)
    lines = [f"buildah second opinion on {p.entry.name}:"]
    lines += ["  buildah vs BuildKit: " + d.show("buildah", "buildkit")
              for d in image_differences(h, built.started, b, bb.started)[:40]]
    lines += ["  buildah vs kade: " + d.show("buildah", "kade")
              for d in image_differences(h, built.started, k, kb.started)[:40]]
    summary.note("\n".join(lines))
