"""Builds over the layer store (builder/layerstore.py): a step's rootfs is an overlay of layer dirs that
builds share and that no RUN or COPY writes; `kill -9` of kade leaves no mount anywhere."""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from builder.layerstore import RECORD, LayerStore, fingerprint

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="overlay mounts and the RUN sandbox need root")
REPO = Path(__file__).resolve().parents[2]


def layer_store(cache: Path) -> Path:
    """The layer store of the one tenant that built with `cache` (tenants/<tenant>/trees/layers)."""
    stores = list(cache.glob("tenants/*/trees/layers"))
    assert len(stores) == 1, stores
    return stores[0]


def layer_dirs(cache: Path) -> dict[str, dict]:
    """chain id hex -> record, for every layer dir of a cache."""
    return {p.name: json.loads((p / RECORD).read_text()) for p in layer_store(cache).iterdir()
            if (p / RECORD).is_file()}


def unpack_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if " unpack " in f" {line} " or '"unpack"' in line]


def test_layer_dirs_are_shared_between_builds_and_never_written(kade_build, registry, base_image, tmp_path):
    cache = tmp_path / "cache"
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "over.txt").write_text("copied over a file of the base\n")
    (ctx / "Dockerfile").write_text(
        f"FROM {base_image.ref}\n"
        "RUN echo extra >> /etc/passwd && rm /etc/group && chmod 700 /tmp && mkdir /made && echo m > /made/f\n"
        "COPY over.txt /etc/passwd\n"
        "RUN rm -rf /made && mkdir /made && echo again > /made/g && echo $((1+1)) > /two\n"
        "CMD [\"sh\"]\n")
    tag = f"{registry.host}/layers/shared:v1"
    kade_build(str(ctx), "--tag", tag, "--cache-dir", str(cache), "--output", "json").ok()
    first = layer_dirs(cache)
    assert len(first) == 4   # the base and the three steps that changed files
    for name, record in first.items():   # nothing wrote a layer dir after it was placed
        assert fingerprint(layer_store(cache) / name / "fs")[0] == record["fingerprint"], name
    base_fs = layer_store(cache) / base_image_chain(first) / "fs"
    assert (base_fs / "etc" / "group").exists() and "extra" not in (base_fs / "etc" / "passwd").read_text()
    assert oct((base_fs / "tmp").stat().st_mode & 0o7777) == "0o1777"

    (ctx / "over.txt").write_text("changed\n")   # the COPY and what follows run again, on the kept layers
    second = kade_build(str(ctx), "--tag", tag, "--cache-dir", str(cache), "--output", "json")
    assert second.ok()["steps"]["built"] == 3
    reused = [json.loads(line) for line in unpack_lines(second.stderr)]
    assert reused and all(r["unpacked"] == 0 for r in reused), reused
    after = layer_dirs(cache)
    assert set(first) <= set(after) and len(after) == 6   # the first build's dirs kept, two new ones
    store = LayerStore(layer_store(cache), lambda name: contextlib.nullcontext(True))
    for name in after:   # each still matches its record, as the next build checks it
        assert store.get("sha256:" + name) is not None, name


def base_image_chain(records: dict[str, dict]) -> str:
    return next(name for name, r in records.items() if r["parent"] is None)


def _mount_ids(pid: int) -> set[int]:
    """The mount ids of the directories a process holds open (pipes and sockets live on the kernel's
    internal mounts, which no mount table lists either)."""
    import stat

    ids = set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            if not stat.S_ISDIR(os.stat(f"/proc/{pid}/fd/{fd}").st_mode):
                continue
            info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        m = re.search(r"^mnt_id:\s*(\d+)", info, re.M)
        if m:
            ids.add(int(m.group(1)))
    return ids


def _attached(pid: int) -> set[int]:
    return {int(line.split()[0]) for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()}


def _holders(mount_ids: set[int]) -> list[int]:
    """Every process that holds a file on one of these mounts."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if _mount_ids(int(pid)) & mount_ids:
                found.append(int(pid))
        except OSError:
            continue
    return found


def test_kill_9_of_kade_leaves_no_mount(registry, base_image, tmp_path):
    """kade's own views of a layered rootfs are detached mounts, held by its fds: while it builds, none
    is in the host's mount table, and once it is killed no process holds one (the sandbox's mounts
    live in the sandbox's namespaces and die with it)."""
    marker = f"{os.getpid() % 1000}.{time.monotonic_ns() % 1000:03d}5"
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        f"FROM {base_image.ref} AS tools\nRUN echo tool > /tool\n"
        f"FROM {base_image.ref}\nCOPY --from=tools /tool /tool\n"
        f"RUN --mount=type=bind,from=tools,target=/mnt echo started && sleep {marker}\n")
    cache = tmp_path / "cache"
    proc = subprocess.Popen([sys.executable, "-m", "kade", "build", str(ctx), "--cache-dir", str(cache),
                             "--output", "json"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    detached: set[int] = set()
    try:
        deadline = time.monotonic() + 180
        for line in proc.stderr:
            if "started" in line or time.monotonic() > deadline:
                break
        assert proc.poll() is None, "the build ended before its RUN started"
        detached = _mount_ids(proc.pid) - _attached(proc.pid)
        assert detached, "kade should hold the reader view of stage tools"
        host = Path("/proc/self/mountinfo").read_text()
        assert str(cache) not in host and str(tmp_path) not in host
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (_holders(detached) or _sleepers(marker)):
        time.sleep(0.2)
    assert _holders(detached) == []
    assert _sleepers(marker) == ""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            assert str(cache) not in Path(f"/proc/{pid}/mountinfo").read_text()
        except OSError:
            continue


def _sleepers(marker: str) -> str:
    return subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True, text=True).stdout


def test_the_copy_fallback_builds_the_same_image(kade_build, registry, base_image, tmp_path, monkeypatch):
    """Where overlay mounts can't be used (forced here), each rootfs starts from a copy, said once: the
    images are the same, byte for byte."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "f.txt").write_text("f\n")
    (ctx / "Dockerfile").write_text(
        f"FROM {base_image.ref} AS a\nRUN mkdir /a && echo a > /a/x && rm /etc/group\n"
        f"FROM {base_image.ref}\nCOPY f.txt /srv/\nCOPY --from=a /a /a\n"
        "RUN --mount=type=bind,from=a,source=/a,target=/m cat /m/x > /from-a && rm -rf /srv && mkdir /srv\n")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    layered = kade_build(str(ctx), "--tag", f"{registry.host}/layers/same-a:v1", "--cache-dir", str(tmp_path / "c1"),
                         "--output", "json")
    monkeypatch.setenv("KADE_SNAPSHOTTER", "copy")
    copied = kade_build(str(ctx), "--tag", f"{registry.host}/layers/same-b:v1", "--cache-dir", str(tmp_path / "c2"),
                        "--output", "json")
    assert copied.ok()["steps"]["built"] == layered.ok()["steps"]["built"] == 4   # each in its own stages repo
    assert layered.ok()["images"][0]["digest"] == copied.ok()["images"][0]["digest"]
    said = [line for line in copied.stderr.splitlines() if "not stacked with overlay" in line]
    assert len(said) == 1 and "KADE_SNAPSHOTTER=copy" in said[0]
    assert not any(d.iterdir() for d in (tmp_path / "c2").glob("tenants/*/trees/layers"))   # no layer dir made
