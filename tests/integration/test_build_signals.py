"""Ctrl-C and SIGTERM during a real build (issue 21): kade stops, exits 130/143, pushes nothing after the
signal (no further step, no image tag, no build record, no upload session left), removes its work dirs,
and a second signal exits at once. `kade` runs as a program in its own process group, signalled as a
terminal (Ctrl-C) or a CI runner (SIGTERM) would.

What happens to the RUN's own processes is the sandbox's part (branch `sandbox`): the test that no
process of the RUN outlives kade is marked for it."""
from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from builder.cache import LocalCache
from registry.client import RegistryClient
from registry.errors import NotFound
from tests.fixtures.silent import ROOT

class Build:
    def __init__(self, tmp_path: Path, registry_host: str, name: str):
        self.ctx = tmp_path / "ctx"
        self.cache = tmp_path / "cache"
        self.registry = registry_host
        self.repo = f"{registry_host}/sig/{name}"
        self.marker = f"{name}-{os.getpid()}"
        self.sleep = f"30.{secrets.randbelow(90) + 10}"  # the RUN's sleep, unique enough to find it with pgrep
        self.lines: list[str] = []

    def start(self, dockerfile: str) -> None:
        self.ctx.mkdir()
        (self.ctx / "Dockerfile").write_text(dockerfile)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kade", "build", str(self.ctx), "-t", f"{self.repo}:1", "--cache-dir",
             str(self.cache), "-o", "json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
            env={**os.environ, "PYTHONPATH": str(ROOT), "CI": "1"})

    def wait_for(self, text: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.lines.append(line)
            if text in line:
                return
        pytest.fail(f"kade never printed {text!r}:\n{''.join(self.lines)}")

    def signal(self, sig: int) -> float:
        os.killpg(self.proc.pid, sig)  # the process group, as a terminal's Ctrl-C does
        return time.monotonic()

    def finish(self, timeout: float = 60) -> tuple[int, dict, str]:
        out, err = self.proc.communicate(timeout=timeout)
        err = "".join(self.lines) + err
        try:
            result = json.loads(out) if out.strip() else {}
        except ValueError:
            pytest.fail(f"stdout is not JSON: {out!r}\n{err}")
        return self.proc.returncode, result, err

    def leftovers(self) -> list[str]:
        found = subprocess.run(["pgrep", "-af", f"sleep {self.sleep}"], capture_output=True, text=True).stdout
        return found.splitlines()

    def mounts(self) -> list[str]:
        from builder.linux import mount_points

        return [p for p in mount_points(Path("/proc/self/mountinfo").read_text()) if p.startswith(str(self.cache))]

    def clean(self) -> None:
        """Kill what the sandbox may have left, and prune the cache (which detaches a mount left behind)."""
        subprocess.run(["pkill", "-9", "-f", f"sleep {self.sleep}"], capture_output=True)
        if self.cache.is_dir():
            LocalCache(self.cache).prune()


def dockerfile(base: str, marker: str, run: str) -> str:
    return (f"FROM {base}\nRUN echo first > /first\nRUN {run}\n"
            f"RUN echo next-step-{marker} > /next\n")


def assert_nothing_published(build: Build, registry) -> None:
    with RegistryClient() as client:
        app = client.repository(build.repo)
        assert app.head_manifest("1") is None
        try:
            stages = list(client.repository(f"{build.repo}-stages").list_tags())
        except NotFound:   # step images go up behind the steps: the signal may have come first
            stages = []
    assert not [t for t in stages if t.startswith("build-")], "a build record was pushed"
    # the first RUN's step image may be there (it was done before the signal); nothing after it
    assert len(stages) <= 1, stages
    assert live_uploads(registry, "sig") == []


def live_uploads(registry, repository: str) -> list[str]:
    """Upload sessions the registry still holds. (distribution 2.8 leaves an empty `hashstates/` behind
    every DELETEd session: its DELETE handler saves the hash state after cancelling; the session itself,
    `startedat` and `data`, is gone, and a GET of it says BLOB_UPLOAD_UNKNOWN.)"""
    root = registry.storage / "docker/registry/v2/repositories" / repository
    return sorted(str(p.relative_to(root)) for p in root.rglob("_uploads/*/*") if p.name in ("startedat", "data"))


def assert_work_dirs_removed(build: Build) -> None:
    assert build.mounts() == []  # the RUN's overlay too, even while the RUN may still run
    work = build.cache / "work"
    deadline = time.monotonic() + 20  # finished work dirs are renamed at once and deleted in the background
    while time.monotonic() < deadline and any(work.iterdir()):
        time.sleep(0.2)
    assert not list(work.iterdir())


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_during_a_run_stops_the_build(registry, base_image, tmp_path, sig, code):
    build = _started(tmp_path, registry.host, base_image.ref, f"sleep{int(sig)}",
                     "echo started; sleep 30; echo slept > /x")
    try:
        sent = build.signal(sig)
        returncode, result, stderr = build.finish()
        took = time.monotonic() - sent
        assert returncode == code, stderr
        assert result == {"ok": False, "error": f"interrupted by {signal.Signals(sig).name}", "kind": "interrupted",
                          "exit_code": code}
        assert "Traceback" not in stderr
        assert f"next-step-{build.marker}" not in stderr  # the step after the RUN never started
        assert took < 20, f"kade took {took:.1f} s to stop"
        assert_nothing_published(build, registry)
        assert_work_dirs_removed(build)
    finally:
        build.clean()


def test_no_process_of_the_run_outlives_kade(registry, base_image, tmp_path):
    build = _started(tmp_path, registry.host, base_image.ref, "trapped", TRAPPING_RUN)
    try:
        returncode, _, stderr, took = _sigterm(build)
        assert returncode == 143, stderr
        assert took < 2.5  # the RUN stops within 2 s, kade right after
        assert build.leftovers() == []
    finally:
        build.clean()


def test_a_run_that_ignores_sigterm_does_not_keep_kade(registry, base_image, tmp_path):
    build = _started(tmp_path, registry.host, base_image.ref, "ignoring", TRAPPING_RUN)
    try:
        returncode, result, stderr, took = _sigterm(build)
        assert returncode == 143 and result["kind"] == "interrupted", stderr
        assert took < 2.5, stderr
        assert_nothing_published(build, registry)
        assert_work_dirs_removed(build)
    finally:
        build.clean()


TRAPPING_RUN = "trap '' TERM INT; echo started; sleep 30"


def _sigterm(build: Build) -> tuple[int, dict, str, float]:
    sent = build.signal(signal.SIGTERM)
    returncode, result, stderr = build.finish()
    return returncode, result, stderr, time.monotonic() - sent


def test_a_second_signal_exits_at_once(registry, base_image, tmp_path):
    build = _started(tmp_path, registry.host, base_image.ref, "twice", TRAPPING_RUN)
    try:
        build.signal(signal.SIGINT)
        build.wait_for("send it again to exit at once", timeout=10)
        sent = build.signal(signal.SIGTERM)
        returncode, _, stderr = build.finish(timeout=20)
        assert returncode == 143, stderr
        assert time.monotonic() - sent < 2
        assert "again: exiting now" in stderr
        with RegistryClient() as client:
            assert client.repository(build.repo).head_manifest("1") is None
        build.clean()  # what an exit without cleanup left, `kade cache prune` removes, mounts included
        assert build.mounts() == [] and not list((build.cache / "work").iterdir())
    finally:
        build.clean()


def _started(tmp_path: Path, registry_host: str, base: str, name: str, run: str) -> Build:
    """A build whose second RUN has printed `started` (it runs now)."""
    build = Build(tmp_path, registry_host, name)
    build.start(dockerfile(base, build.marker, run.replace("sleep 30", f"sleep {build.sleep}")))
    build.wait_for("started")
    return build


def test_a_signal_during_a_stuck_upload_stops_kade_and_commits_nothing(registry, fault_proxy, tmp_path):
    """The upload thread is stuck in a send the registry side stopped reading (a proxy that stalls):
    kade still stops at once and nothing is committed. (The session itself stays until the registry's
    upload purging: distribution 2.8 refuses to delete a session whose chunk was cut off with the state
    from before that chunk; a session cancelled between chunks is deleted: test_registry_cancel.py.)"""
    from tests.fixtures.registry import write_random_image

    write_random_image(tmp_path / "layout", "1", [24 << 20], compressible=False)
    proxy = fault_proxy(registry.host)
    proxy.cut(upstream_after=4 << 20, stall=True, times=1)
    proc = subprocess.Popen([sys.executable, "-m", "kade", "image", "copy", f"oci:{tmp_path / 'layout'}:1",
                             f"{proxy.host}/sig/upload:1", "-o", "json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "CI": "1"})
    deadline = time.monotonic() + 60
    while proxy.cuts_done == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proxy.cuts_done == 1, "the upload never reached the stall"
    time.sleep(0.5)
    sent = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert json.loads(out)["kind"] == "interrupted"
    assert time.monotonic() - sent < 10
    layer = next(p for p in (tmp_path / "layout" / "blobs" / "sha256").iterdir() if p.stat().st_size > 20 << 20)
    with RegistryClient() as client:
        repo = client.repository(f"{registry.host}/sig/upload")
        assert repo.head_manifest("1") is None
        assert repo.head_blob(f"sha256:{layer.name}") is None
