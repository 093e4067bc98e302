"""Layer application: hostile layers (each escape attempt must leave the host untouched, and either be
refused with a clear error naming the layer or land confined inside the rootfs) and the OCI semantics
(whiteouts, opaque whiteouts in any order, duplicates, hard links, metadata)."""
import gzip
import hashlib
import io
import os
import stat
from pathlib import Path

import pytest
import zstandard

from builder.unpack import LayerLimitError, Limits, UnpackError, UnsafeLayerError, apply_layer
from tests.fixtures.layers import CAP_NET_RAW_EP, E, make_tar, tree_state

DIGEST = "sha256:" + "ab" * 32


def apply(rootfs: Path, entries: list[E], **kw):
    return apply_layer(io.BytesIO(make_tar(entries)), rootfs, digest=DIGEST, **kw)


def host_snapshot(outside: Path) -> dict:
    return {p: (p.read_bytes() if p.is_file() else None, p.lstat().st_nlink) for p in outside.rglob("*")}


# (id, entries built from the outside dir, expected: exception class or "confined", paths that must
# not exist inside the rootfs afterwards when confined)
def hostile_cases(outside: Path):
    o = str(outside).lstrip("/")
    return [
        ("dotdot", [E("../outside/pwned", data=b"x")], UnsafeLayerError),
        ("dotdot-deep", [E("a/b/../../../outside/pwned", data=b"x")], UnsafeLayerError),
        ("absolute", [E(f"/{o}/pwned", data=b"x")], UnsafeLayerError),
        ("absolute-dir", [E(f"/{o}/newdir", type="dir")], UnsafeLayerError),
        ("symlink-parent-to-root", [E("evil", "symlink", link="/"), E(f"evil/{o}/pwned", data=b"x")], "confined"),
        ("symlink-parent-relative", [E("up", "symlink", link="../../../../../../../.."),
                                     E(f"up/{o}/pwned", data=b"x")], "confined"),
        ("symlink-then-file-through-it", [E("link", "symlink", link=str(outside)), E("link/pwned", data=b"x")],
         "confined"),
        ("symlink-then-same-name-file", [E("victim", "symlink", link=str(outside / "victim")),
                                         E("victim", data=b"overwritten")], "confined"),
        ("dir-replaced-by-symlink-midway", [E("d", "dir"), E("d/f1", data=b"1"), E("d", "symlink", link=str(outside)),
                                            E("d/pwned", data=b"x")], "confined"),
        ("dir-whited-out-then-symlink", [E("d", "dir"), E("d/f1"), E(".wh.d"), E("d", "symlink", link=str(outside)),
                                         E("d/pwned", data=b"x")], "confined"),
        ("symlink-chain-loop", [E("a", "symlink", link="b"), E("b", "symlink", link="a"), E("a/x", data=b"")],
         UnpackError),
        ("hardlink-absolute", [E("h", "hardlink", link=str(outside / "victim"))], UnsafeLayerError),
        ("hardlink-dotdot", [E("h", "hardlink", link="../outside/victim")], UnsafeLayerError),
        ("hardlink-via-symlink-parent", [E("s", "symlink", link=str(outside)), E("h", "hardlink", link="s/victim")],
         UnpackError),
        ("hardlink-to-a-symlink-out", [E("s", "symlink", link=str(outside / "victim")), E("h", "hardlink", link="s")],
         "confined"),
        ("hardlink-to-etc-shadow", [E("h", "hardlink", link="/etc/shadow")], UnsafeLayerError),
        ("hardlink-to-directory", [E("d", "dir"), E("h", "hardlink", link="d")], UnsafeLayerError),
        ("hardlink-to-itself", [E("h", "hardlink", link="h")], UnsafeLayerError),
        ("whiteout-dotdot", [E("../outside/.wh.victim")], UnsafeLayerError),
        ("whiteout-of-dotdot", [E(".wh..."), E("x/.wh...")], UnsafeLayerError),
        ("whiteout-via-symlink-parent", [E("s", "symlink", link=str(outside)), E("s/.wh.victim")], "confined"),
        ("opaque-via-symlink", [E("s", "symlink", link=str(outside)), E("s/.wh..wh..opq")], UnpackError),
        ("root-replaced-by-file", [E(".", data=b"x")], UnsafeLayerError),
        ("nul-in-pax-name", [E("n" * 120 + "\0/etc/passwd", data=b"x")], UnsafeLayerError),
    ]


def _ids():
    return [c[0] for c in hostile_cases(Path("/x"))]


@pytest.mark.parametrize("case_id", _ids())
def test_hostile_layers_never_touch_the_host(case_id, rootfs, outside):
    _, entries, expected = next(c for c in hostile_cases(outside) if c[0] == case_id)
    before = host_snapshot(outside)
    data = make_tar(entries)
    if expected == "confined":
        apply_layer(io.BytesIO(data), rootfs, digest=DIGEST)
    else:
        with pytest.raises(expected) as info:
            apply_layer(io.BytesIO(data), rootfs, digest=DIGEST)
        assert DIGEST in str(info.value)
    assert host_snapshot(outside) == before
    assert not (outside / "pwned").exists()


def test_symlink_parent_writes_land_inside_the_rootfs(rootfs, outside):
    o = str(outside).lstrip("/")
    apply(rootfs, [E("evil", "symlink", link="/"), E(f"evil/{o}/pwned", data=b"x")])
    assert (rootfs / o / "pwned").read_bytes() == b"x"
    assert (rootfs / "evil").is_symlink()


def test_symlink_replaced_by_file_does_not_write_through(rootfs, outside):
    apply(rootfs, [E("victim", "symlink", link=str(outside / "victim")), E("victim", data=b"new")])
    assert not (rootfs / "victim").is_symlink() and (rootfs / "victim").read_bytes() == b"new"
    assert (outside / "victim").read_bytes() == b"precious"


@pytest.mark.parametrize("entries,limits,match", [
    ([E("big", data=b"", size=50 << 20)], Limits(max_bytes=1 << 20), "declares"),
    ([E(f"f{i}") for i in range(30)], Limits(max_entries=10), "more than 10 entries"),
    ([E("n" * 300)], Limits(max_name=200), "longer than 200"),
    ([E("x", xattrs={"user.big": b"v" * 5000})], Limits(max_meta=4096), "limit"),
])
def test_archive_bombs_are_bounded(rootfs, entries, limits, match):
    with pytest.raises(LayerLimitError, match=match) as info:
        apply(rootfs, entries, limits=limits)
    assert DIGEST in str(info.value)
    assert not (rootfs / "big").exists()


@pytest.mark.parametrize("tar", [
    make_tar([E("zeros", data=b"\0" * (8 << 20))]),               # one entry declaring too much
    make_tar([E(f"z{i}", data=b"\0" * (900 << 10)) for i in range(9)]),  # each fits, the sum does not
    make_tar([E("small")]) + b"\0" * (8 << 20),                   # zeros after the end of the archive
])
def test_compression_bomb_is_bounded(rootfs, tar):
    blob = gzip.compress(tar, compresslevel=9)
    assert len(blob) < 100_000
    with pytest.raises(LayerLimitError, match="more than|declares"):
        apply_layer(io.BytesIO(blob), rootfs, digest=DIGEST, limits=Limits(max_bytes=1 << 20))


@pytest.mark.parametrize("blob,match", [
    (b"this is not a tar archive at all" * 40, "checksum"),
    (make_tar([E("f", data=b"x" * 5000)])[:1500], "truncated"),
    (b"\x1f\x8b\x08\x00garbage-gzip", "cannot read the blob"),
    (b"\x28\xb5\x2f\xfdgarbage-zstd", "cannot read the blob"),
])
def test_corrupt_blobs_are_clear_errors(rootfs, blob, match):
    with pytest.raises(UnpackError, match=match) as info:
        apply_layer(io.BytesIO(blob), rootfs, digest=DIGEST)
    assert DIGEST in str(info.value)


def test_gzip_inflating_thread_stops_whatever_the_outcome(rootfs, tmp_path):
    """gzip layers inflate in a worker thread: it must be gone after a good layer, a corrupt one, and
    one whose stream fails mid-way (a download's digest check failing, say)."""
    import threading

    class FailingStream(io.BytesIO):
        def read(self, n=-1):
            data = super().read(n)
            if not data:
                raise ConnectionError("the registry went away")
            return data

    good = gzip.compress(make_tar([E("f", data=os.urandom(3 << 20))]))
    before = threading.active_count()
    apply_layer(io.BytesIO(good), rootfs, digest=DIGEST)
    for name, stream, match in (("cut", io.BytesIO(good[: len(good) // 2]), "cannot read the blob"),
                                ("gone", FailingStream(good[: len(good) // 2]), "the registry went away")):
        (tmp_path / name).mkdir()
        with pytest.raises(UnpackError, match=match):
            apply_layer(stream, tmp_path / name, digest=DIGEST)
    # refused at its first entry while the worker is still inflating the rest
    hostile = gzip.compress(make_tar([E("../evil", data=b"x"), *(E(f"f{i}", data=os.urandom(1 << 20))
                                                                for i in range(12))]), compresslevel=1)
    (tmp_path / "hostile").mkdir()
    with pytest.raises(UnsafeLayerError):
        apply_layer(io.BytesIO(hostile), tmp_path / "hostile", digest=DIGEST)
    assert threading.active_count() == before
    assert (rootfs / "f").stat().st_size == 3 << 20


def test_device_nodes_skipped_without_permission(rootfs):
    heard = []
    result = apply(rootfs, [E("dev", "dir"), E("dev/null", "char", dev=(1, 3), mode=0o666)], allow_devices=False,
                   report=lambda kind, message, **fields: heard.append((kind, message, fields)))
    assert not (rootfs / "dev" / "null").exists()
    assert result.skipped == 1 and "dev/null" in result.notes[0]
    assert heard == [("note", result.notes[0], {"layer": DIGEST})]


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")
def test_device_nodes_created_as_root(rootfs):
    apply(rootfs, [E("dev", "dir"), E("dev/null", "char", dev=(1, 3), mode=0o666)], allow_devices=True)
    st = os.lstat(rootfs / "dev" / "null")
    assert stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == 1 and os.minor(st.st_rdev) == 3
    assert stat.S_IMODE(st.st_mode) == 0o666


# ------------------------------------------------------------------------------- semantics

def lower(rootfs: Path) -> None:
    apply(rootfs, [E("etc", "dir"), E("etc/keep", data=b"k"), E("etc/gone", data=b"g"),
                   E("var", "dir"), E("var/cache", "dir"), E("var/cache/a", data=b"a"), E("var/cache/b", data=b"b"),
                   E("var/cache/sub", "dir"), E("var/cache/sub/old", data=b"o"),
                   E("data", "dir"), E("data/x", data=b"x"), E("data/y", data=b"y")])


@pytest.mark.parametrize("entries,present,absent", [
    ([E("etc/.wh.gone")], ["etc/keep"], ["etc/gone"]),
    ([E(".wh.data")], ["etc/keep"], ["data"]),
    # opaque first (sorted order)
    ([E("var/cache", "dir"), E("var/cache/.wh..wh..opq"), E("var/cache/new", data=b"n")],
     ["var/cache/new"], ["var/cache/a", "var/cache/b", "var/cache/sub"]),
    # opaque AFTER a sibling of this layer: applies before it anyway
    ([E("var/cache", "dir"), E("var/cache/-early", data=b"e"), E("var/cache/.wh..wh..opq")],
     ["var/cache/-early"], ["var/cache/a", "var/cache/sub"]),
    # a subdirectory this layer keeps loses its lower children too
    ([E("var/cache", "dir"), E("var/cache/sub", "dir"), E("var/cache/sub/new", data=b"n"),
      E("var/cache/.wh..wh..opq")], ["var/cache/sub/new"], ["var/cache/sub/old", "var/cache/a"]),
    # a whiteout never deletes what this same layer wrote
    ([E("etc/gone", data=b"again"), E("etc/.wh.gone")], ["etc/gone"], []),
    # aufs metadata is ignored, not created
    ([E(".wh..wh.plnk", "dir"), E("etc/.wh..wh.aufs")], ["etc/keep"], [".wh..wh.plnk"]),
    # whiteout of something absent is fine
    ([E("nowhere/.wh.thing"), E("etc/.wh.nothing")], ["etc/keep"], ["nowhere"]),
])
def test_whiteouts(rootfs, entries, present, absent):
    lower(rootfs)
    apply(rootfs, entries)
    for p in present:
        assert (rootfs / p).exists(), p
    for p in absent:
        assert not os.path.lexists(rootfs / p), p


@pytest.mark.parametrize("entries,path,kind,content", [
    ([E("f", data=b"1"), E("f", data=b"2")], "f", "file", b"2"),
    ([E("f", data=b"1"), E("f", "dir")], "f", "dir", None),
    ([E("d", "dir"), E("d/x", data=b""), E("d", data=b"now a file")], "d", "file", b"now a file"),
    ([E("d", "dir", mode=0o700), E("d/x", data=b"x"), E("d", "dir", mode=0o750)], "d/x", "file", b"x"),
    ([E("l", "symlink", link="a"), E("l", "symlink", link="b")], "l", "symlink", b"b"),
])
def test_duplicate_paths_last_wins(rootfs, entries, path, kind, content):
    apply(rootfs, entries)
    p = rootfs / path
    if kind == "file":
        assert p.is_file() and not p.is_symlink() and p.read_bytes() == content
    elif kind == "dir":
        assert p.is_dir() and not p.is_symlink()
    else:
        assert os.readlink(p) == content.decode()


def test_overwriting_a_hardlinked_file_leaves_its_twin(rootfs):
    apply(rootfs, [E("a", data=b"old"), E("b", "hardlink", link="a")])
    assert os.stat(rootfs / "a").st_ino == os.stat(rootfs / "b").st_ino
    apply(rootfs, [E("a", data=b"new")])
    assert (rootfs / "a").read_bytes() == b"new" and (rootfs / "b").read_bytes() == b"old"


def test_missing_hardlink_target_is_an_error(rootfs):
    with pytest.raises(UnpackError, match="does not exist"):
        apply(rootfs, [E("h", "hardlink", link="nope")])


def test_metadata_restored(rootfs):
    xattrs = {"user.k": b"v"}
    if os.geteuid() == 0:
        xattrs["security.capability"] = CAP_NET_RAW_EP
    apply(rootfs, [
        E("ro", "dir", mode=0o555, mtime=1234), E("ro/child", data=b"c", mtime=99),
        E("ro/sub", "dir", mode=0o700, mtime=4321),
        E("suid", data=b"#!", mode=0o4755, uid=1234, gid=5678, xattrs=xattrs, mtime=42),
        E("sym", "symlink", link="/abs/target", uid=7, gid=8, mtime=77),
        E("missing/parent/file", data=b"p"),
    ])
    st = os.lstat(rootfs / "ro")
    assert stat.S_IMODE(st.st_mode) == 0o555 and st.st_mtime == 1234
    assert os.lstat(rootfs / "ro" / "sub").st_mtime == 4321
    st = os.lstat(rootfs / "suid")
    assert stat.S_IMODE(st.st_mode) == 0o4755 and st.st_mtime == 42
    assert os.getxattr(rootfs / "suid", "user.k") == b"v"
    assert os.lstat(rootfs / "sym").st_mtime == 77 and os.readlink(rootfs / "sym") == "/abs/target"
    assert stat.S_IMODE(os.lstat(rootfs / "missing").st_mode) == 0o755
    if os.geteuid() == 0:
        assert (st.st_uid, st.st_gid) == (1234, 5678)
        assert (os.lstat(rootfs / "sym").st_uid, os.lstat(rootfs / "sym").st_gid) == (7, 8)
        assert os.getxattr(rootfs / "suid", "security.capability") == CAP_NET_RAW_EP


@pytest.mark.parametrize("uid, gid", [(10 ** 20, 0), (0, 2 ** 32 - 1), (2 ** 40, 2 ** 40)])
def test_owners_past_linux_ids_are_a_clear_error(rootfs, uid, gid):
    """A hostile layer's huge PAX uid raised OverflowError from chown; now an error naming the layer."""
    with pytest.raises(UnpackError, match=f"{DIGEST}.*past the largest Linux id"):
        apply(rootfs, [E("f", data=b"x", uid=uid, gid=gid)])


@pytest.mark.parametrize("mtime, on_disk", [
    (1_700_000_000, 1_700_000_000), (0, 0),
    (-315_619_200, 0),                  # 1960: before the epoch, as moby and containerd bound it
    (10 ** 20, 0),                      # past 64-bit nanoseconds (raised OverflowError)
])
def test_mtimes_out_of_range_are_the_epoch(rootfs, mtime, on_disk):
    apply(rootfs, [E("d", "dir", mtime=mtime), E("d/f", data=b"x", mtime=mtime), E("l", "symlink", link="d", mtime=mtime)])
    assert {os.lstat(rootfs / p).st_mtime_ns // 10 ** 9 for p in ("d", "d/f", "l")} == {on_disk}


@pytest.mark.parametrize("compress", [lambda b: b, gzip.compress,
                                      lambda b: zstandard.ZstdCompressor().compress(b),
                                      lambda b: gzip.compress(b[:1024]) + gzip.compress(b[1024:])])  # multi-member
def test_compressions_sniffed_and_diff_id_reported(rootfs, compress):
    tar = make_tar([E("d", "dir"), E("d/f", data=b"hello" * 300)])
    result = apply_layer(io.BytesIO(compress(tar)), rootfs, digest=DIGEST)
    assert (rootfs / "d" / "f").read_bytes() == b"hello" * 300
    assert result.diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()
    assert result.bytes == len(tar) and result.entries == 2


def test_diff_id_mismatch_is_an_error(rootfs):
    with pytest.raises(UnpackError, match="diffID"):
        apply(rootfs, [E("f")], expected_diff_id="sha256:" + "0" * 64)


def test_layer_root_entry_sets_root_metadata(rootfs):
    apply(rootfs, [E("./", "dir", mode=0o700, mtime=5), E("./f", data=b"x")])
    assert stat.S_IMODE(os.stat(rootfs).st_mode) == 0o700 and os.stat(rootfs).st_mtime == 5
    assert tree_state(rootfs)[b"f"][4] == b"x"


def test_apply_layers_names_each_layer_by_its_digest(tmp_path, rootfs, outside):
    """The path that applies a step image's layers onto a rootfs (a stage reusing a step that another
    build or stage pushed meanwhile) names the layer at fault by its digest, as unpacking a base does."""
    from builder.execute import apply_layers

    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_bytes(gzip.compress(make_tar([E("ok", data=b"ok")])))
    bad.write_bytes(gzip.compress(make_tar([E("../outside/pwned", data=b"x")])))
    digests = ["sha256:" + hashlib.sha256(p.read_bytes()).hexdigest() for p in (good, bad)]
    with pytest.raises(UnsafeLayerError) as info:
        apply_layers(rootfs, [(good, "application/vnd.oci.image.layer.v1.tar+gzip", digests[0]),
                              (bad, "application/vnd.oci.image.layer.v1.tar+gzip", digests[1])])
    assert f"layer {digests[1]}: entry '../outside/pwned'" in str(info.value)
    assert (rootfs / "ok").read_bytes() == b"ok" and not (outside / "pwned").exists()


@pytest.mark.parametrize("env,expected", [
    ({}, Limits()),
    ({"KADE_LAYER_MAX_BYTES": "8388608"}, Limits(max_bytes=8 << 20)),
    ({"KADE_LAYER_MAX_ENTRIES": " 1000 ", "KADE_LAYER_MAX_BYTES": ""}, Limits(max_entries=1000)),
    ({"KADE_LAYER_MAX_BYTES": "8M"}, "not a positive whole number"),
    ({"KADE_LAYER_MAX_ENTRIES": "0"}, "not a positive whole number"),
    ({"KADE_LAYER_MAX_ENTRIES": "-5"}, "not a positive whole number"),
])
def test_limits_from_the_environment(env, expected):
    from builder.errors import BuildError
    from builder.unpack import limit_env

    if isinstance(expected, Limits):
        assert Limits.from_env(env) == expected
        assert limit_env(env) == {k: v.strip() for k, v in env.items() if v.strip()}
    else:
        with pytest.raises(BuildError, match=expected):
            limit_env(env)


def test_apply_layer_uses_the_environment_limits_by_default(rootfs, monkeypatch):
    monkeypatch.setenv("KADE_LAYER_MAX_ENTRIES", "10")
    with pytest.raises(LayerLimitError, match="more than 10 entries") as info:
        apply(rootfs, [E(f"f{i}") for i in range(30)])
    assert DIGEST in str(info.value)
    assert apply(rootfs, [E("f")], limits=Limits()).entries == 1  # an explicit Limits wins


@pytest.mark.parametrize("name, parts", [
    (b"a/b", (b"a", b"b")),
    (b"/abs/f", (b"abs", b"f")),
    (b"./x/./y/", (b"x", b"y")),
    (b"d/../n", (b"n",)),
    (b"../up", (b"up",)),
    (b"a/../../up", (b"up",)),
    (b"/../up", (b"up",)),
    (b"..", ()),
    (b"/", ()),
])
def test_add_archive_names_are_taken_as_buildkit_untar_takes_them(name, parts):
    """Cleaned and joined under the destination (moby's chrootarchive: the destination is the root)."""
    from builder.unpack import _cleaned
    assert _cleaned(name) == parts


def test_add_archive_names_land_under_the_destination(tmp_path, outside):
    """What an image layer is refused for, an ADD archive extracts inside its destination, as BuildKit does."""
    dest = tmp_path / "dest"
    dest.mkdir()
    o = str(outside).lstrip("/")
    before = host_snapshot(outside)
    result = apply(dest, [E(f"/{o}/pwned", data=b"a"), E(f"../../{o}/up", data=b"u"), E("d", "dir"),
                          E("d/../n", data=b"n"), E("hl", "hardlink", link=f"/../{o}/pwned")], archive=True)
    assert host_snapshot(outside) == before
    assert (dest / o / "pwned").read_bytes() == b"a" and (dest / o / "up").read_bytes() == b"u"
    assert (dest / "n").read_bytes() == b"n" and os.stat(dest / "hl").st_ino == os.stat(dest / o / "pwned").st_ino
    assert {f"{o}/pwned".encode(), f"{o}/up".encode(), b"n", b"hl", b"d"} <= result.paths
    with pytest.raises(UnsafeLayerError, match="absolute name"):   # an image layer: refused
        apply(dest, [E(f"/{o}/pwned", data=b"a")])


def test_add_archive_reports_what_its_whiteouts_removed(rootfs):
    apply(rootfs, [E("w", "dir"), E("w/gone", data=b"g"), E("o", "dir"), E("o/old", data=b"o"), E("o/sub", "dir")])
    result = apply(rootfs, [E("w/.wh.gone"), E("w/.wh.never"), E("o/new", data=b"n"), E("o/.wh..wh..opq")],
                   archive=True)
    assert result.removed == {b"w/gone", b"o/old", b"o/sub"}
    assert sorted(os.listdir(rootfs / "o")) == ["new"] and not (rootfs / "w" / "gone").exists()


@pytest.mark.parametrize("archive", [False, True])
def test_a_hard_link_entry_sets_the_metadata_of_its_inode_in_an_add_archive(rootfs, archive):
    """ADD: as BuildKit's untar (moby's archive) does, the later entry's owner, mode and mtime are the
    inode's. An image layer's link keeps its target's: a chown there would drop the file capabilities
    a writer did not repeat on the link entry."""
    apply(rootfs, [E("f", data=b"f", mode=0o600, uid=1000, gid=1000, mtime=100),
                   E("h", "hardlink", link="f", mode=0o640, uid=7, gid=8, mtime=200),
                   E("s", "symlink", link="f", mtime=300), E("hs", "hardlink", link="s", mtime=400)], archive=archive)
    st = os.stat(rootfs / "f")
    mine = (os.getuid(), os.getgid())
    owner = ((7, 8) if archive else (1000, 1000)) if os.geteuid() == 0 else mine
    expected = (0o640, 200, owner) if archive else (0o600, 100, owner)
    assert (st.st_mode & 0o7777, st.st_mtime, (st.st_uid, st.st_gid)) == expected
    assert os.lstat(rootfs / "s").st_mtime == 300   # a hard link to a symlink sets no time on it


def test_layers_nesting_deeper_than_pythons_recursion_limit(rootfs):
    """A lower tree deeper than the recursion limit replaced by a file, and an opaque whiteout over a
    tree the layer made as deep: both at any depth (they recursed once per level)."""
    import sys

    from builder.rootfs_ops import remove_entry

    depth = sys.getrecursionlimit() + 100
    chain = "/".join(["d"] * depth)
    top = os.open(rootfs, os.O_RDONLY)
    try:
        apply(rootfs, [E(f"x/{chain}/leaf", data=b"l"), E(f"o/{chain}/old", data=b"o")])
        made = [E("o/" + "/".join(["d"] * i), "dir") for i in range(1, depth + 1)]
        apply(rootfs, [E("x", data=b"now a file"), *made, E(f"o/{chain}/new", data=b"n"), E("o/.wh..wh..opq")])
        assert (rootfs / "x").read_bytes() == b"now a file"
        fd = os.open("o", os.O_RDONLY, dir_fd=top)
        try:
            for _ in range(depth):
                sub = os.open("d", os.O_RDONLY, dir_fd=fd)
                os.close(fd)
                fd = sub
            assert sorted(os.listdir(fd)) == ["new"]   # the lower `old` hidden, the layer's own kept
        finally:
            os.close(fd)
    finally:
        for name in os.listdir(top):   # (pytest's own clean-up recurses)
            remove_entry(top, name)
        os.close(top)


def test_an_add_archive_leaves_its_destination_as_it_is(tmp_path):
    """Its `./` entry is skipped, as moby's untar skips it (BuildKit): `ADD app.tar /app/` does not make
    /app 0700 and 1000's because the archive was made with `tar -C dir -cf app.tar .`."""
    dest = tmp_path / "dest"
    dest.mkdir(mode=0o755)
    before = os.stat(dest)
    result = apply(dest, [E(".", "dir", mode=0o700, uid=1000, gid=1000, mtime=5), E("f", data=b"f")], archive=True)
    after = os.stat(dest)
    assert (after.st_mode, after.st_uid, after.st_gid) == (before.st_mode, before.st_uid, before.st_gid)
    assert b"" not in result.paths and (dest / "f").read_bytes() == b"f"
