"""Reproducible by default (issue #14): the same commit gives the same image bytes, whatever the
checkout time, umask or cache. A kade.yaml project takes SOURCE_DATE_EPOCH from the commit time;
`kade build --check-reproducible` builds twice from nothing and names what differs."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fixtures.clones import fresh_clone
from tests.integration.test_project_build import commit_all, git

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="RUN as several users needs root")

RUN_HEAVY = """\
ARG BASE
FROM ${BASE} AS gen
WORKDIR /work/deep
COPY src/ ./src/
RUN mkdir -p /opt/app/bin /opt/app/etc && cp -r src /opt/app/ && echo built > /opt/app/etc/stamp \\
 && ln -s ../etc/stamp /opt/app/bin/stamp && chmod 0750 /opt/app/bin && touch /opt/app/empty
RUN adduser -D -u 1234 builder 2>/dev/null || echo 'builder:x:1234:1234::/home/builder:/bin/sh' >> /etc/passwd
USER 1234
RUN mkdir -p /tmp/b && echo by-builder > /tmp/b/file && umask 077 && echo private > /tmp/b/private
USER root
RUN rm -f /opt/app/empty && mkdir /opt/app/var && chown 1234 /opt/app/var

FROM ${BASE}
COPY --from=gen /opt/app /opt/app
COPY --chmod=0755 src/run.sh /usr/local/bin/run
COPY <<EOF /etc/app.conf
mode=prod
EOF
RUN --mount=type=cache,target=/cache echo cached >> /cache/n && cp /opt/app/etc/stamp /stamp
"""

KADE_YAML = """
project: repro
images:
  app:
    context: app
    args: {BASE: "{{ env.REPRO_BASE }}"}
"""


def _repo(tmp_path: Path) -> Path:
    root = tmp_path / "origin"
    (root / "app" / "src" / "lib").mkdir(parents=True)
    (root / "kade.yaml").write_text(KADE_YAML)
    (root / "app" / "Dockerfile").write_text(RUN_HEAVY)
    (root / "app" / "src" / "run.sh").write_text("#!/bin/sh\nexec cat /etc/app.conf\n")
    (root / "app" / "src" / "lib" / "util.txt").write_text("util\n")
    (root / "app" / "src" / "main.txt").write_text("main\n")
    git(root, "init", "-q", "-b", "main")
    commit_all(root, "repro")
    return root


@pytest.fixture
def umask():
    before = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(before)


def test_a_project_built_from_two_fresh_clones_gives_the_same_digests(kade_build, registry, base_image, tmp_path,
                                                                      monkeypatch, umask):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    monkeypatch.setenv("REPRO_BASE", base_image.ref)
    origin = _repo(tmp_path)
    digests = []
    for i, mask in enumerate((0o022, 0o077)):
        clone = fresh_clone(origin, tmp_path / f"clone{i}", seed=i)
        umask(mask)
        run = kade_build("--dir", str(clone), "--repo", f"{registry.host}/repro{i}", "--output", "json",
                         "--cache-dir", str(tmp_path / f"cache{i}"))
        umask(0o022)
        assert run.code == 0, run.stderr
        digests.append(run.json()["images"]["app"]["digest"])
    assert digests[0] == digests[1]
    commit_time = int(git(origin, "show", "-s", "--format=%ct", "HEAD"))
    from tests.fixtures.canary import image_files, registry_get

    files = image_files(registry.url, "repro0/app", digests[0])
    assert files["etc/app.conf"][0].mtime == commit_time  # made up by the step: the epoch
    assert max(info.mtime for info, _ in files.values()) <= commit_time
    config = registry_get(registry.url, "repro0/app", "blobs",
                          registry_get(registry.url, "repro0/app", "manifests", digests[0]).json()["config"]["digest"])
    assert config.json()["created"].startswith(
        __import__("datetime").datetime.fromtimestamp(commit_time, __import__("datetime").timezone.utc)
        .strftime("%Y-%m-%dT%H:%M:%S"))


def test_a_rebuild_that_reuses_every_step_makes_the_same_image_without_an_epoch(kade_build, registry, base_image,
                                                                                 tmp_path, monkeypatch):
    """Without SOURCE_DATE_EPOCH `created` is the newest step's time (BuildKit's rule), not the build's:
    a fresh runner with nothing changed makes no new image (no new digest to roll out, no new
    attestations); a changed step makes a newer one."""
    import time

    from registry import referrers as rf
    from registry.client import RegistryClient
    from tests.fixtures.canary import registry_get

    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {base_image.ref}\nARG V=1\nCOPY f /f\nRUN cat /f > /g\nCMD [\"cat\", \"/g\"]\n"
                                    "ARG AFTER=1\n")
    (ctx / "f").write_text("one\n")
    tag = f"{registry.host}/repro/noepoch:1"

    def build(cache: str) -> tuple[str, dict]:
        run = kade_build(str(ctx), "--tag", tag, "--cache-dir", str(tmp_path / cache), "--output", "json")
        assert run.code == 0, run.stderr
        digest = run.json()["images"][0]["digest"]
        manifest = registry_get(registry.url, "repro/noepoch", "manifests", digest).json()
        config = registry_get(registry.url, "repro/noepoch", "blobs", manifest["config"]["digest"]).json()
        assert manifest["annotations"]["org.opencontainers.image.created"] == config["created"]
        return digest, config

    first, config = build("c1")
    ours = [h for h in config["history"] if h.get("comment") == "kade"]
    assert len(ours) == 5 and all(h.get("created") for h in ours)   # ARG V, COPY, RUN, CMD, ARG AFTER
    assert config["created"] == ours[-1]["created"]
    with RegistryClient() as client:
        referrers = rf.list_referrers(client.repository(f"{registry.host}/repro/noepoch"), first)
    time.sleep(1.1)   # created has whole seconds: a build that stamped "now" would differ
    again, _ = build("c2")   # a fresh runner
    assert again == first
    with RegistryClient() as client:
        assert rf.list_referrers(client.repository(f"{registry.host}/repro/noepoch"), first) == referrers
    (ctx / "f").write_text("two\n")
    changed, newer = build("c2")
    assert changed != first and newer["created"] > config["created"]
    assert newer["history"][:-5] == config["history"][:-5]   # the base's entries: kept


def test_history_times_are_clamped_to_the_epoch(kade_build, registry, base_image, tmp_path, monkeypatch):
    """Steps reused from a build without an epoch carry later times: with one, none is after it."""
    from tests.fixtures.canary import registry_get

    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {base_image.ref}\nRUN echo x > /x\n")
    tag = f"{registry.host}/repro/clamp:1"
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    assert kade_build(str(ctx), "--tag", tag, "--cache-dir", str(tmp_path / "c")).code == 0
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    run = kade_build(str(ctx), "--tag", tag, "--cache-dir", str(tmp_path / "c"), "--output", "json")
    assert run.code == 0, run.stderr
    digest = run.json()["images"][0]["digest"]
    manifest = registry_get(registry.url, "repro/clamp", "manifests", digest).json()
    config = registry_get(registry.url, "repro/clamp", "blobs", manifest["config"]["digest"]).json()
    assert config["created"] == "2023-11-14T22:13:20Z"
    assert [h["created"] for h in config["history"] if h.get("comment") == "kade"] == ["2023-11-14T22:13:20Z"]


def test_check_reproducible_passes_a_deterministic_build(kade_build, base_image, tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    origin = _repo(tmp_path)
    run = kade_build(str(origin / "app"), "--build-arg", f"BASE={base_image.ref}", "--check-reproducible",
                     "--output", "json")
    assert run.code == 0, run.stderr
    assert run.json()["reproducible"] is True


def test_check_reproducible_names_the_files_that_differ(kade_build, base_image, tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {base_image.ref}\nRUN echo same > /same\n"
                                    "RUN head -c 16 /dev/urandom > /random && echo fixed > /fixed\n")
    run = kade_build(str(ctx), "--check-reproducible", "--output", "json")
    assert run.code == 1, run.stderr
    data = run.json()
    assert data["reproducible"] is False
    named = "\n".join(data["differences"])
    assert ": /random: content" in named and ": /fixed:" not in named and ": /same:" not in named
    assert "head -c 16 /dev/urandom" in named  # the step that made it
