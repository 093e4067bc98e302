import gzip
import hashlib
import io
import dataclasses
import os
import socket
import tarfile
from pathlib import Path

import pytest
import zstandard

from builder.changes import Change
from builder.layer import (MEDIA_TYPE_GZIP, MEDIA_TYPE_TAR, MEDIA_TYPE_ZSTD, LayerWriteError,
                           layer_from_directory, walk_directory, write_layer)
from builder.layernorm import keep_xattr, written_xattr
from builder.snapshot import upper_diff
from common.epoch import source_date_epoch
from common.errors import SettingError
from tests.fixtures.layers import CAP_NET_RAW_EP

DECOMPRESS = {
    "gzip": gzip.decompress,
    "zstd": lambda b: zstandard.ZstdDecompressor().stream_reader(io.BytesIO(b), read_across_frames=True).read(),
    "none": lambda b: b,
}


def make_tree(root: Path) -> Path:
    root.mkdir()
    (root / "bin").mkdir()
    (root / "bin" / "tool").write_bytes(b"#!/bin/sh\necho hi\n")
    os.chmod(root / "bin" / "tool", 0o4755)
    os.link(root / "bin" / "tool", root / "bin" / "tool-hardlink")
    os.symlink("/etc/passwd", root / "abs-link")
    (root / "empty-dir").mkdir()
    (root / "odd\nname\u00ff").write_bytes(b"x")
    (root / os.fsdecode(b"raw\xff\xfe")).write_bytes(b"y")
    (root / ("long-" * 40)).write_bytes(b"z" * 1000)
    os.mkfifo(root / "fifo")
    os.setxattr(root / "bin" / "tool", "user.note", b"left out")
    os.setxattr(root / "empty-dir", "user.dir", b"left out too")
    if os.geteuid() == 0:
        os.setxattr(root / "bin" / "tool", "security.capability", CAP_NET_RAW_EP)
    return root


@pytest.mark.parametrize("compression,media_type", [("gzip", MEDIA_TYPE_GZIP), ("zstd", MEDIA_TYPE_ZSTD),
                                                    ("none", MEDIA_TYPE_TAR)])
def test_digest_diffid_size_are_those_of_the_bytes_written(tmp_path, compression, media_type):
    tree = make_tree(tmp_path / "t")
    out = io.BytesIO()
    info = layer_from_directory(tree, out, compression, epoch=1_700_000_000)
    blob = out.getvalue()
    assert info.media_type == media_type
    assert info.size == len(blob)
    assert info.digest == "sha256:" + hashlib.sha256(blob).hexdigest()
    assert info.diff_id == "sha256:" + hashlib.sha256(DECOMPRESS[compression](blob)).hexdigest()


def test_same_tree_twice_gives_identical_layers(tmp_path):
    a = make_tree(tmp_path / "a")
    b = make_tree(tmp_path / "b")       # created later: different inodes, mtimes clamped to the epoch
    infos = [layer_from_directory(t, io.BytesIO(), "gzip", epoch=1_000_000) for t in (a, b)]
    assert infos[0] == infos[1]
    reversed_order = write_layer(reversed(list(walk_directory(a))), io.BytesIO(), "gzip", epoch=1_000_000)
    assert reversed_order == infos[0]


def _members(blob: bytes) -> list[tarfile.TarInfo]:
    return tarfile.open(fileobj=io.BytesIO(blob), encoding="utf-8", errors="surrogateescape").getmembers()


def test_entries_are_sorted_numeric_clamped_and_hardlinked(tmp_path):
    tree = make_tree(tmp_path / "t")
    out = io.BytesIO()
    layer_from_directory(tree, out, "none", epoch=1_000_000)
    members = _members(out.getvalue())
    names = [m.name for m in members]
    assert names == sorted(names, key=lambda n: os.fsencode(n).split(b"/"))
    assert all(m.uname == "" and m.gname == "" and m.mtime <= 1_000_000 for m in members)
    by_name = {m.name: m for m in members}
    assert by_name["bin/tool"].isreg() and by_name["bin/tool"].mode == 0o4755
    assert by_name["bin/tool-hardlink"].islnk() and by_name["bin/tool-hardlink"].linkname == "bin/tool"
    assert by_name["abs-link"].issym() and by_name["abs-link"].linkname == "/etc/passwd"
    assert by_name["empty-dir"].isdir() and by_name["fifo"].isfifo()
    assert by_name["odd\nname\u00ff"].size == 1
    assert by_name[os.fsdecode(b"raw\xff\xfe")].size == 1
    # file capabilities only, as BuildKit's differ writes them (containerd's archive): no user.* xattrs
    assert not [k for m in members for k in m.pax_headers if k.startswith("SCHILY.xattr.user.")]
    if os.geteuid() == 0:
        cap = by_name["bin/tool"].pax_headers["SCHILY.xattr.security.capability"]
        assert cap.encode("utf-8", "surrogateescape") == CAP_NET_RAW_EP


def test_mtime_clamp_only_lowers(tmp_path):
    tree = tmp_path / "t"
    tree.mkdir()
    (tree / "old").write_bytes(b"")
    (tree / "new").write_bytes(b"")
    os.utime(tree / "old", (500, 500))
    os.utime(tree / "new", (2_000_000_000, 2_000_000_000))
    out = io.BytesIO()
    layer_from_directory(tree, out, "none", epoch=1_000_000)
    mtimes = {m.name: m.mtime for m in _members(out.getvalue())}
    assert mtimes["old"] == 500 and mtimes["new"] == 1_000_000
    out = io.BytesIO()
    layer_from_directory(tree, out, "none", epoch=None)
    assert {m.name: m.mtime for m in _members(out.getvalue())}["new"] == 2_000_000_000


def test_whiteouts_opaque_and_overrides(tmp_path):
    src = tmp_path / "f"
    src.write_bytes(b"data")
    changes = [
        Change("etc/gone", "delete"),
        Change("var/cache", "opaque"),
        Change("var/cache", source=str(tmp_path)),
        Change("app/file", source=str(src), uid=1000, gid=1001, mode=0o600),
    ]
    out = io.BytesIO()
    write_layer(changes, out, "none", epoch=7)
    members = {m.name: m for m in _members(out.getvalue())}
    assert set(members) == {"etc/.wh.gone", "var/cache/.wh..wh..opq", "var/cache", "app/file"}
    assert members["etc/.wh.gone"].size == 0 and members["etc/.wh.gone"].mtime == 7
    f = members["app/file"]
    assert (f.uid, f.gid, f.mode, f.size) == (1000, 1001, 0o600, 4)


def test_sockets_are_skipped(tmp_path):
    tree = tmp_path / "t"
    tree.mkdir()
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(tree / "sock"))
    try:
        out = io.BytesIO()
        layer_from_directory(tree, out, "none")
    finally:
        s.close()
    assert [m.name for m in _members(out.getvalue())] == ["."]


def test_prefix_places_tree_and_two_changes_on_one_path_fail(tmp_path):
    tree = tmp_path / "t"
    tree.mkdir()
    (tree / "x").write_bytes(b"1")
    out = io.BytesIO()
    layer_from_directory(tree, out, "none", prefix="/app/sub/")
    assert [m.name for m in _members(out.getvalue())] == ["app/sub", "app/sub/x"]
    with pytest.raises(LayerWriteError, match="same layer path"):
        write_layer([Change("a", source=str(tree)), Change("./a/", source=str(tree))], io.BytesIO())


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(LayerWriteError, match="cannot read .*missing"):
        write_layer([Change("a", source=str(tmp_path / "missing"))], io.BytesIO())


@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_a_file_shorter_than_its_lstat_is_a_clear_error(tmp_path, monkeypatch, compression):
    """A file that shrinks between its lstat and its read (something still writing to the tree). A fake
    lstat stands in for the race, which a real file system cannot be made to show on cue."""
    victim = tmp_path / "log"
    victim.write_bytes(b"0123456789")
    real_lstat = os.lstat

    class Longer:
        st_size = 3 << 20   # past one 1 MiB block of the writer

        def __init__(self, st):
            self._st = st

        def __getattr__(self, name):
            return getattr(self._st, name)

    def lstat(path, *args, **kwargs):
        st = real_lstat(path, *args, **kwargs)
        return Longer(st) if os.fsdecode(path) == str(victim) else st

    monkeypatch.setattr(os, "lstat", lstat)
    with pytest.raises(LayerWriteError, match=r"log shrank while the layer was written \(3145718 bytes missing\)"):
        write_layer([Change("log", source=str(victim))], io.BytesIO(), compression)


def test_a_fifo_swapped_in_after_the_scan_fails_the_layer_without_waiting(tmp_path):
    """The scan saw a 10-byte file; a fifo stands there when the writer opens it: opened non-blocking,
    it reads as empty (no writer), so the layer fails as a file that shrank instead of waiting for ever."""
    regular = tmp_path / "was"
    regular.write_bytes(b"0123456789")
    fifo = tmp_path / "now"
    os.mkfifo(fifo)
    with pytest.raises(LayerWriteError, match=r"now shrank while the layer was written \(10 bytes missing\)"):
        write_layer([Change("f", source=str(fifo), stat=os.lstat(regular))], io.BytesIO(), "gzip")


@pytest.mark.parametrize("env,expected", [({}, None), ({"SOURCE_DATE_EPOCH": "1700000000"}, 1700000000),
                                          ({"SOURCE_DATE_EPOCH": " "}, None)])
def test_source_date_epoch(env, expected):
    assert source_date_epoch(env) == expected


def test_source_date_epoch_garbage_is_an_error():
    with pytest.raises(SettingError, match="SOURCE_DATE_EPOCH"):
        source_date_epoch({"SOURCE_DATE_EPOCH": "yesterday"})


@pytest.mark.parametrize("name,written,kept", [
    ("security.capability", True, True), ("user.x", False, True), ("user.overlay.opaque", False, False),
    ("trusted.overlay.opaque", False, False), ("security.selinux", False, False), ("trusted.x", False, False),
])
def test_which_xattrs_layers_and_layer_dirs_keep(name, written, kept):
    """The layers kade writes keep file capabilities only, as BuildKit's differ writes them; layer dirs keep
    the user.* xattrs too, as BuildKit's snapshots do for the steps after."""
    assert written_xattr(name) is written
    assert keep_xattr(name) is kept


@pytest.mark.parametrize("bad", ["../x", "a/../../b", "a\0b"])
def test_changes_refuse_escaping_paths(bad):
    with pytest.raises(ValueError):
        Change(bad, "delete")


class _FullDisk(io.RawIOBase):
    def __init__(self, room: int):
        self.room = room

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(28, "No space left on device")
        self.room -= len(data)
        return len(data)


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_a_failing_output_stops_the_writer_with_its_error(tmp_path, compression):
    tree = tmp_path / "t"
    tree.mkdir()
    for i in range(8):
        (tree / f"f{i}").write_bytes(os.urandom(1 << 20))   # incompressible: output grows
    with pytest.raises(OSError, match="No space left"):
        layer_from_directory(tree, _FullDisk(2 << 20), compression)


def test_made_up_directories(tmp_path):
    from builder.changes import new_directory
    out = io.BytesIO()
    write_layer([new_directory("app/data", 0o750, 1000, 1000), new_directory("app")], out, "none", epoch=99)
    members = {m.name: m for m in _members(out.getvalue())}
    assert members["app/data"].isdir() and members["app/data"].mode == 0o750 and members["app/data"].uid == 1000
    assert members["app"].mode == 0o755 and members["app"].mtime == 99
    with pytest.raises(ValueError, match="needs a source"):
        Change("x")


def pinned_tree(root: Path) -> Path:
    make_tree(root)
    (root / "deep" / ("d" * 60) / ("e" * 60)).mkdir(parents=True)   # a path over 100 bytes: PAX path
    (root / "deep" / ("d" * 60) / ("e" * 60) / "f").write_bytes(b"f" * 513)
    for d in (root, root / "bin", root / "empty-dir", root / "deep", root / "deep" / ("d" * 60),
              root / "deep" / ("d" * 60) / ("e" * 60)):
        os.chmod(d, 0o755)
    for p in (root / "odd\nname\u00ff", root / os.fsdecode(b"raw\xff\xfe"), root / ("long-" * 40),
              root / "deep" / ("d" * 60) / ("e" * 60) / "f"):
        os.chmod(p, 0o640)
    os.chmod(root / "fifo", 0o600)
    return root


@pytest.mark.skipif(os.geteuid() != 0, reason="the pinned tree holds a security.capability xattr (root only)")
def test_layer_bytes_are_pinned(tmp_path):
    """Speed work on the writer must not move a single byte: a fixed tree (ownership overridden, mtimes
    clamped) gives this exact tar, whatever the machine."""
    root = pinned_tree(tmp_path / "t")

    def pin(c: Change) -> Change:
        big = c.path.endswith("f")   # uid/gid past ustar's 7 octal digits: PAX records
        return Change(c.path, c.kind, c.source, uid=2_097_152 if big else 0, gid=3 if big else 0, mode=c.mode)

    out = io.BytesIO()
    info = layer_from_directory(root, out, "none", 1_700_000_000, transform=pin)
    assert info.diff_id == info.digest == PINNED_DIFF_ID
PINNED_DIFF_ID = "sha256:9484e810d41895d996505e010f3843493659715ed5a57e19a6af53403c44541b"   # no user.* xattrs since stop 33


def test_gzip_blob_bytes_are_pinned(tmp_path):
    """The compressed blob is pinned too: writing it faster must not move a byte (the same tree gives
    the same layer digest from every kade version since the parallel gzip of builder/pgzip.py)."""
    import random

    rng = random.Random(7)
    root = tmp_path / "g"
    for i in range(600):   # ~3.5 MiB of small and mid-size files, half random half repetitive
        d = root / f"d{i % 13}"
        d.mkdir(parents=True, exist_ok=True)
        size = int(2 ** rng.uniform(3, 16))
        body = rng.randbytes(size) if i % 2 else (b"line %d\n" % i) * (size // 8)
        (d / f"f{i}").write_bytes(body)
        os.chmod(d / f"f{i}", 0o644)
    for d in [root, *root.iterdir()]:
        os.chmod(d, 0o755)

    def pin(c: Change) -> Change:
        return Change(c.path, c.kind, c.source, uid=0, gid=0, mode=c.mode)

    info = layer_from_directory(root, io.BytesIO(), "gzip", 1_700_000_000, transform=pin)
    assert (info.digest, info.diff_id) == PINNED_GZIP
PINNED_GZIP = ("sha256:df5c065796fc93ad58287ec3408e69408dfb5c9e0f2abb443abe44d775095251",
               "sha256:b1fa2b15ddb5bb3907ac8d5db934f5468fd56fac4d4b6b0bdf8c5a5467a2bb22")


def test_zstd_blob_is_the_same_whatever_the_number_of_cores(tmp_path, monkeypatch):
    """zstd compresses with one worker thread per core: the blob must not depend on how many there are
    (a layer written on a 2-core runner and on a 64-core one has one digest)."""
    import random

    import zstandard

    rng = random.Random(11)
    root = tmp_path / "z"
    root.mkdir()
    for i in range(40):   # ~12 MiB, more than one zstd job
        (root / f"f{i}").write_bytes(rng.randbytes(150_000) + b"repeat " * 20_000)
    digests = set()
    for cores in (1, 2, 3, 8):
        monkeypatch.setattr(os, "cpu_count", lambda cores=cores: cores)
        out = io.BytesIO()
        info = layer_from_directory(root, out, "zstd", 1_700_000_000)
        digests.add((info.digest, info.diff_id))
        tar = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(out.getvalue()), read_across_frames=True).read()
        assert "sha256:" + hashlib.sha256(tar).hexdigest() == info.diff_id
    assert len(digests) == 1


@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_the_scans_lstat_carried_in_the_changes_writes_the_same_layer(tmp_path, compression):
    """An upper dir's changes carry the scan's lstat and the writer takes it instead of asking again:
    the layer is the one the writer's own lstats give."""
    tree = make_tree(tmp_path / "upper")
    (tmp_path / "lower").mkdir()
    changes = upper_diff(tree, tmp_path / "lower").changes
    carried = [c for c in changes if c.stat is not None]
    assert len(carried) == 7 and all(os.path.samestat(c.stat, os.lstat(c.source)) for c in carried)
    asked = [dataclasses.replace(c, stat=None) for c in changes]
    with_stats, without = io.BytesIO(), io.BytesIO()
    assert write_layer(changes, with_stats, compression) == write_layer(asked, without, compression)
    assert with_stats.getvalue() == without.getvalue()


def test_files_around_the_writers_block_boundaries_keep_their_bytes(tmp_path):
    """The writer fills 1 MiB blocks and puts a file that fits in the current one in one call: files that
    end exactly at, just before and just past a block's end, empty ones and ones of several blocks all
    read back whole, each at its own offset, with the tar's exact length."""
    chunk = 1 << 20
    sizes = [chunk - 3 * 512 - 100, 700, 0, 1, chunk - 1024, chunk + 5, 511, 512, 513, 2 * chunk - 1, 3]
    root = tmp_path / "t"
    root.mkdir()
    contents = {}
    for i, size in enumerate(sizes):
        data = hashlib.sha256(b"%d" % i).digest() * (size // 32 + 1)
        contents[f"f{i:02d}"] = data[:size]
        (root / f"f{i:02d}").write_bytes(data[:size])
    out = io.BytesIO()
    layer_from_directory(root, out, "none")
    tar = out.getvalue()
    assert len(tar) == 512 * (1 + len(sizes)) + sum(-(-s // 512) * 512 for s in sizes) + 1024
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        read = {m.name: tf.extractfile(m).read() for m in tf.getmembers() if m.isfile()}
    assert read == contents
