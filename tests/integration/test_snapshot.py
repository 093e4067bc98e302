"""Snapshots: overlay and stat methods see the same changes, and tar -> unpack -> snapshot -> tar
round-trips to identical digests (hard links, symlinks, setuid, capabilities, empty dirs, odd names)."""
import io
import os
import shutil
from pathlib import Path
from typing import Callable

import pytest

from builder.changes import Change
from builder.layer import walk_directory, write_layer
from builder.snapshot import capture, diff, overlay_available, walk
from builder.unpack import apply_layer
from tests.fixtures.layers import CAP_NET_RAW_EP, tree_state

ODD = os.fsdecode(b"odd\nname \xff\xfe")
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="overlay mounts and chown need root")


def base_tree(root: Path) -> Path:
    """A small rootfs-like tree with everything the snapshot must carry."""
    for d in ("etc/conf.d", "usr/bin", "var/cache/apt", "var/lib/gone/deep", "opt/replace/old", "data"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "etc" / "hostname").write_text("base\n")
    (root / "etc" / "conf.d" / "a.conf").write_text("a=1\n")
    (root / "usr" / "bin" / "tool").write_bytes(b"\x7fELF tool")
    (root / "var" / "cache" / "apt" / "pkg.bin").write_bytes(b"x" * 5000)
    (root / "var" / "lib" / "gone" / "deep" / "f").write_text("bye")
    (root / "opt" / "replace" / "old" / "f").write_text("old")
    (root / "data" / "mod").write_text("before")
    (root / "data" / "to-dir").write_text("file now, dir later")
    os.symlink("../usr/bin/tool", root / "etc" / "tool-link")
    os.utime(root / "etc", (1_000_000, 1_000_000))
    return root


def mutate(root: Path) -> None:
    """What a RUN might do (no directory replacement: its inode reuse makes the stat method choose
    per-child whiteouts instead of an opaque directory — same result, different change set)."""
    (root / "etc" / "hostname").write_text("changed\n")                  # modify content
    os.chmod(root / "etc" / "conf.d" / "a.conf", 0o600)                  # metadata only
    os.chown(root / "data" / "mod", 4242, 4243)
    (root / "etc" / "new.conf").write_text("new\n")                      # add
    os.remove(root / "var" / "cache" / "apt" / "pkg.bin")               # delete file
    shutil.rmtree(root / "var" / "lib" / "gone")                         # delete tree
    (root / "usr" / "bin" / "suid").write_bytes(b"#!/bin/sh\n")
    os.chmod(root / "usr" / "bin" / "suid", 0o4755)                      # setuid
    (root / "usr" / "bin" / "ping").write_bytes(b"ping")
    os.setxattr(root / "usr" / "bin" / "ping", "security.capability", CAP_NET_RAW_EP)
    os.link(root / "usr" / "bin" / "tool", root / "usr" / "bin" / "tool2")  # hard link to a lower file
    os.symlink("/etc/hostname", root / "abs-link")                      # absolute symlink
    (root / "empty").mkdir()                                             # empty dir
    (root / ODD).write_bytes(b"odd")                                     # odd name
    os.remove(root / "data" / "to-dir")                                  # file -> dir
    (root / "data" / "to-dir").mkdir()
    (root / "data" / "to-dir" / "inside").write_text("i")
    shutil.move(str(root / "opt" / "replace" / "old"), str(root / "opt" / "moved"))  # rename a dir


def normalized(changes: list[Change]) -> set[tuple[str, str]]:
    return {(c.path, c.kind) for c in changes}


def mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.lstat().st_mtime_ns for p in root.rglob("*")}


def run_capture(tmp: Path, method: str, action: Callable[[Path], None]):
    rootfs = base_tree(tmp / f"rootfs-{method}")
    with capture(rootfs, tmp / f"scratch-{method}", method) as cap:
        action(cap.root)
        expected = tree_state(cap.root)
        expected_mtimes = mtimes(cap.root)
        changes = cap.changes()
        out = io.BytesIO()
        info = write_layer(changes, out, "gzip", epoch=2_000_000_000)
        cap.commit()
    assert mtimes(rootfs) == expected_mtimes
    return rootfs, changes, expected, out.getvalue(), info


@root_only
def test_overlay_is_available_here(tmp_path):
    assert overlay_available(tmp_path)


@root_only
@pytest.mark.parametrize("method", ["stat", "overlay"])
def test_layer_of_changes_rebuilds_the_after_tree(tmp_path, method):
    rootfs, changes, expected, blob, info = run_capture(tmp_path, method, mutate)
    assert tree_state(rootfs) == expected  # commit: the rootfs itself holds the result
    assert os.lstat(rootfs / "usr/bin/tool2").st_ino == os.lstat(rootfs / "usr/bin/tool").st_ino
    replay = base_tree(tmp_path / "replay")
    apply_layer(io.BytesIO(blob), replay, digest=info.digest, expected_diff_id=info.diff_id)
    got = tree_state(replay)
    assert got == expected
    assert os.lstat(replay / "usr/bin/tool2").st_ino == os.lstat(replay / "usr/bin/tool").st_ino
    assert os.getxattr(replay / "usr/bin/ping", "security.capability") == CAP_NET_RAW_EP


@root_only
def test_overlay_and_stat_give_the_same_change_set(tmp_path):
    _, stat_changes, stat_after, _, stat_info = run_capture(tmp_path, "stat", mutate)
    _, ovl_changes, ovl_after, _, ovl_info = run_capture(tmp_path, "overlay", mutate)
    assert stat_after == ovl_after
    assert normalized(stat_changes) == normalized(ovl_changes)
    assert ("var/lib/gone", "delete") in normalized(stat_changes)
    assert ("var/lib/gone/deep", "delete") not in normalized(stat_changes)
    assert ("etc/hostname", "add") in normalized(stat_changes)
    assert ("usr", "add") not in normalized(stat_changes)   # untouched parents stay out


@root_only
@pytest.mark.parametrize("method", ["stat", "overlay"])
def test_replaced_directory_hides_lower_children(tmp_path, method):
    def replace(root: Path) -> None:
        shutil.rmtree(root / "opt" / "replace")
        (root / "opt" / "replace").mkdir()
        (root / "opt" / "replace" / "fresh").write_text("new")

    rootfs, changes, expected, blob, info = run_capture(tmp_path, method, replace)
    assert tree_state(rootfs) == expected
    replay = base_tree(tmp_path / "replay")
    apply_layer(io.BytesIO(blob), replay, digest=info.digest)
    assert tree_state(replay) == expected
    assert not (replay / "opt" / "replace" / "old").exists()
    if method == "overlay":
        assert ("opt/replace", "opaque") in normalized(changes)


@pytest.mark.parametrize("method", ["stat", pytest.param("overlay", marks=root_only)])
def test_directory_whose_only_change_is_its_times_is_left_out(tmp_path, method):
    """An entry made and removed in a directory (a RUN's temporary file in /tmp) changes only the
    directory's times: BuildKit's differ leaves it out of the layer and so does kade, and the rootfs
    keeps its old time; a touched directory that holds a change comes with its new time."""
    rootfs = base_tree(tmp_path / "rootfs")
    old = 1_000_000 * 10**9
    for d in ("data", "var/lib", "usr/bin", "opt"):
        os.utime(rootfs / d, ns=(old, old))
    with capture(rootfs, tmp_path / "scratch", method) as cap:
        (cap.root / "data" / "tmpfile").write_text("x")
        (cap.root / "data" / "tmpfile").unlink()
        (cap.root / "var" / "lib" / "tmpdir").mkdir()
        (cap.root / "var" / "lib" / "tmpdir").rmdir()
        (cap.root / "usr" / "bin" / "made").write_text("x")
        (cap.root / "usr" / "bin" / "made").unlink()
        (cap.root / "usr" / "bin" / "tool").write_bytes(b"rebuilt")     # a change in a touched directory
        new_time = os.lstat(cap.root / "usr" / "bin").st_mtime_ns
        changes = cap.changes()
        blob = io.BytesIO()
        info = write_layer(changes, blob, "gzip")
        cap.commit()
    assert normalized(changes) == {("usr/bin", "add"), ("usr/bin/tool", "add")}
    assert new_time != old
    assert [os.lstat(rootfs / d).st_mtime_ns for d in ("data", "var/lib", "opt")] == [old] * 3
    assert os.lstat(rootfs / "usr" / "bin").st_mtime_ns == new_time
    replay = base_tree(tmp_path / "replay")   # the rootfs is its base plus its layer
    for d in ("data", "var/lib", "usr/bin", "opt"):
        os.utime(replay / d, ns=(old, old))
    apply_layer(io.BytesIO(blob.getvalue()), replay, digest=info.digest)
    assert tree_state(replay) == tree_state(rootfs)
    assert [os.lstat(p / d).st_mtime_ns // 10**9 for p in (replay, rootfs) for d in ("data", "var/lib", "usr/bin")] \
        == [old // 10**9, old // 10**9, new_time // 10**9] * 2


def test_stat_diff_marks_a_new_inode_directory_opaque(tmp_path):
    root = base_tree(tmp_path / "r")
    before = walk(root)
    os.rename(root / "opt" / "replace", root / "opt" / "aside")  # keep the inode alive: no reuse
    (root / "opt" / "replace").mkdir()
    changes = normalized(diff(before, walk(root), root))
    assert ("opt/replace", "opaque") in changes and ("opt/replace", "add") in changes
    assert ("opt/replace/old", "delete") not in changes


def test_stat_diff_never_reads_unchanged_files(tmp_path):
    root = base_tree(tmp_path / "r")
    secret = root / "data" / "unreadable"
    secret.write_text("x")
    before = walk(root)
    os.chmod(secret, 0)           # a read would fail for non-root; ctime changes, so it is a change
    (root / "data" / "other").write_text("y")
    os.utime(root / "data", (1, 1))
    changes = normalized(diff(before, walk(root), root))
    assert ("data/unreadable", "add") in changes
    assert ("etc/hostname", "add") not in changes


@pytest.mark.parametrize("method", ["stat", pytest.param("overlay", marks=root_only)])
def test_tar_unpack_snapshot_tar_round_trip(tmp_path, method):
    src = tmp_path / "src"
    src.mkdir()
    (src / "bin").mkdir()
    (src / "bin" / "tool").write_bytes(b"tool" * 1000)
    os.chmod(src / "bin" / "tool", 0o4711)
    os.link(src / "bin" / "tool", src / "bin" / "tool-hard")
    os.symlink("/bin/tool", src / "abs")
    os.symlink("../x/../bin", src / "rel")
    (src / "empty").mkdir()
    os.chmod(src / "empty", 0o700)
    (src / ODD).write_bytes(b"odd")
    (src / ("deep/" * 30)).mkdir(parents=True)
    (src / ("deep/" * 30) / ("long-name-" * 20)).write_bytes(b"long")
    os.setxattr(src / "bin" / "tool", "user.kade", b"x\x00y")
    if os.geteuid() == 0:
        os.setxattr(src / "bin" / "tool", "security.capability", CAP_NET_RAW_EP)
        os.chown(src / "empty", 1000, 1000)
    without_root = [c for c in walk_directory(src) if c.path]
    first = write_layer(without_root, blob := io.BytesIO(), "zstd", epoch=1_700_000_000)

    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    with capture(rootfs, tmp_path / "scratch", method) as cap:
        blob.seek(0)
        apply_layer(blob, cap.root, digest=first.digest)
        again = write_layer(cap.changes(), io.BytesIO(), "zstd", epoch=1_700_000_000)
    assert again == first


def test_auto_falls_back_to_stat_where_overlay_cannot_mount(tmp_path):
    rootfs = base_tree(tmp_path / "root,with:comma")   # overlay's option syntax cannot name this lowerdir
    with capture(rootfs, tmp_path / "scratch", "auto") as cap:
        (cap.root / "new").write_text("x")
        assert cap.method == "stat" and cap.root == rootfs
        assert normalized(cap.changes()) == {("new", "add")}
    assert not (tmp_path / "scratch" / "upper").exists()


@root_only
def test_auto_prefers_overlay(tmp_path):
    rootfs = base_tree(tmp_path / "rootfs")
    with capture(rootfs, tmp_path / "scratch", "auto") as cap:
        assert cap.method == "overlay" and cap.root != rootfs


@pytest.mark.parametrize("method", ["stat", pytest.param("overlay", marks=root_only)])
def test_excluded_paths_and_everything_below(tmp_path, method):
    rootfs = base_tree(tmp_path / "rootfs")
    with capture(rootfs, tmp_path / "scratch", method, exclude=["/var/cache"]) as cap:
        (cap.root / "var" / "cache" / "apt" / "more").write_text("x")
        (cap.root / "var" / "cache-not-excluded").write_text("y")
        paths = {c.path for c in cap.changes()}
    assert "var/cache-not-excluded" in paths
    assert not any(p == "var/cache" or p.startswith("var/cache/") for p in paths)


@root_only
def test_abandoned_overlay_capture_leaves_rootfs_and_keeps_the_upper(tmp_path):
    rootfs = base_tree(tmp_path / "rootfs")
    before = tree_state(rootfs)
    scratch = tmp_path / "scratch"
    with capture(rootfs, scratch, "overlay") as cap:
        (cap.root / "new.txt").write_text("new\n")
        (cap.root / "etc" / "hostname").unlink()
        changes = cap.changes()
        cap.abandon()
    assert {("new.txt", "add"), ("etc/hostname", "delete")} <= normalized(changes)
    assert tree_state(rootfs) == before  # not merged
    assert (scratch / "upper" / "new.txt").read_text() == "new\n"  # left for the work dir's removal
    assert not os.path.ismount(scratch / "merged")


def test_an_upper_dirs_sockets_are_no_change_and_are_named_apart(tmp_path):
    """A layer holds no socket: upper_diff leaves them out of the changes and lists them, so a layered
    rootfs removes them before its upper dir is normalized beside the layer writer (builder/layernorm.py);
    a directory whose only new entry is a socket is then a directory changed in its times only."""
    import socket

    from builder.snapshot import upper_diff

    lower, upper = base_tree(tmp_path / "lo"), tmp_path / "up"
    (upper / "data").mkdir(parents=True)
    (upper / "etc").mkdir()
    (upper / "etc" / "new.conf").write_text("new\n")
    for where in ("data/s", "etc/s"):
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(upper / where))
        sock.close()
    for d in ("data", "etc"):
        st = os.lstat(lower / d)
        os.chown(upper / d, st.st_uid, st.st_gid)
        os.chmod(upper / d, st.st_mode & 0o7777)
    found = upper_diff(upper, lower)
    assert sorted(found.sockets) == ["data/s", "etc/s"]
    assert normalized(found.changes) == {("etc", "add"), ("etc/new.conf", "add")}
    assert [c.path for c in found.left_out] == ["data"]
