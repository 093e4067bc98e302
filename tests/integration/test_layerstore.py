"""The layer store (builder/layerstore.py, builder/stageroot.py): every layer unpacked once into a dir of
its own, stacked with overlay mounts. The stacked view must equal what unpacking every layer onto one
directory gives (the old way, and the OCI reference), for the same hostile and whiteout tables the
unpacker is tested with; layer dirs are shared, never written, checked, and safe with concurrent use."""
from __future__ import annotations

import hashlib
import io
import os
import stat
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest

from builder import layerstore
from builder.layerstore import LayerStore, fingerprint
from builder.stageroot import LayeredRoot, overlay_unavailable
from builder.unpack import apply_layer
from registry.image import Layer
from registry.mediatypes import OCI_LAYER
from registry.model import Descriptor
from tests.fixtures.layers import E, make_tar, tree_state
from tests.unit.test_unpack import hostile_cases

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="overlay mounts need root")


_lock_table: dict[str, threading.Lock] = {}


@contextmanager
def thread_lock(name: str):
    """What the cache's flock gives builds in other processes, for threads of one test."""
    lock = _lock_table.setdefault(name, threading.Lock())
    with lock:
        yield True


def refs(tars: list[bytes], opened: list[str] | None = None) -> list[Layer]:
    """Uncompressed layers (blob digest = diffID) read from memory; `opened` lists each open."""
    out = []
    for tar in tars:
        diff_id = "sha256:" + hashlib.sha256(tar).hexdigest()

        def opener(tar=tar, diff_id=diff_id):
            if opened is not None:
                opened.append(diff_id)
            return io.BytesIO(tar)

        out.append(Layer(Descriptor(OCI_LAYER, diff_id, len(tar)), diff_id, opener))
    return out


def old_way(tmp: Path, tars: list[bytes]) -> Path:
    rootfs = tmp / "old"
    rootfs.mkdir()
    for tar in tars:
        apply_layer(io.BytesIO(tar), rootfs, digest="sha256:" + hashlib.sha256(tar).hexdigest())
    return rootfs


def visible(root: Path) -> dict:
    """tree_state plus file mtimes, without trusted.overlay.* (an ordinary xattr to kade's userxattr
    overlays, kept on opaque dirs for overlays mounted without userxattr; never in a layer)."""
    state = tree_state(root)
    out = {}
    for path, (kind, mode, uid, gid, body, xattrs) in state.items():
        mtime = None if kind == stat.S_IFDIR else os.lstat(os.path.join(os.fsencode(root), path)).st_mtime_ns
        out[path] = (kind, mode, uid, gid, body, tuple(x for x in xattrs if not x[0].startswith("trusted.overlay.")),
                     mtime)
    return out


@pytest.fixture
def store(tmp_path):
    if (why := overlay_unavailable(tmp_path / "probe")) is not None:
        pytest.fail(f"overlay mounts must work here: {why}")
    return LayerStore(tmp_path / "layers", thread_lock)


def stacked(store: LayerStore, tars: list[bytes]):
    root = LayeredRoot(store, store.ensure(refs(tars)), None, store.root / "tmp")
    return root


BASE = [E("etc", "dir"), E("etc/keep", data=b"k"), E("etc/gone", data=b"g"),
        E("var", "dir"), E("var/cache", "dir"), E("var/cache/a", data=b"a"), E("var/cache/b", data=b"b"),
        E("var/cache/sub", "dir"), E("var/cache/sub/old", data=b"o"),
        E("data", "dir"), E("data/x", data=b"x"), E("data/y", data=b"y"),
        E("usr", "dir"), E("usr/lib", "dir"), E("usr/lib/libc", data=b"c", mode=0o755), E("lib", "symlink", link="usr/lib"),
        E("abs", "symlink", link="/usr/lib"), E("bin", "dir"), E("bin/su", data=b"su", mode=0o4755, uid=0),
        E("home", "dir"), E("home/app", "dir", uid=1000, gid=1000, mode=0o700),
        E("home/app/f", data=b"f", uid=1000, gid=1000, xattrs={"user.note": b"n"}),
        E("hl", data=b"linked"), E("hl2", "hardlink", link="hl")]

STACKS = {
    # from tests/unit/test_unpack.py's whiteout table, each on top of BASE
    "whiteout-file": [[E("etc/.wh.gone")]],
    "whiteout-dir": [[E(".wh.data")]],
    "opaque-first": [[E("var/cache", "dir"), E("var/cache/.wh..wh..opq"), E("var/cache/new", data=b"n")]],
    "opaque-after-a-sibling": [[E("var/cache", "dir"), E("var/cache/-early", data=b"e"), E("var/cache/.wh..wh..opq")]],
    "opaque-keeps-this-layers-subdir": [[E("var/cache", "dir"), E("var/cache/sub", "dir"),
                                         E("var/cache/sub/new", data=b"n"), E("var/cache/.wh..wh..opq")]],
    "whiteout-of-own-file": [[E("etc/gone", data=b"again"), E("etc/.wh.gone")]],
    "aufs-metadata-ignored": [[E(".wh..wh.plnk", "dir"), E("etc/.wh..wh.aufs")]],
    "whiteout-of-nothing": [[E("nowhere/.wh.thing"), E("etc/.wh.nothing")]],
    # across several layers: symlinked parents resolve as in the merged view
    "symlinked-parent-relative": [[E("lib/added", data=b"through the link")]],
    "symlinked-parent-absolute": [[E("abs/added", data=b"through /usr/lib")]],
    "dir-replaced-by-file": [[E(".wh.var"), E("var", data=b"now a file")], [E(".wh.var"), E("var", "dir"),
                                                                            E("var/again", data=b"a")]],
    "file-replaced-by-dir-then-opaque": [[E(".wh.hl"), E("hl", "dir"), E("hl/in", data=b"i")],
                                         [E("hl", "dir"), E("hl/.wh..wh..opq"), E("hl/only", data=b"o")]],
    "deleted-then-readded": [[E("var/cache/.wh.sub")], [E("var/cache/sub", "dir"), E("var/cache/sub/fresh", data=b"f")]],
    "hard-link-to-a-lower-file": [[E("etc/keep-link", "hardlink", link="etc/keep")],
                                  [E("etc/keep", data=b"replaced")]],
    "metadata-changed-only": [[E("home/app", "dir", uid=1000, gid=1000, mode=0o750),
                               E("bin/su", data=b"su", mode=0o755)]],
    "whiteout-through-symlinked-parent": [[E("lib/.wh.libc")]],
    "xattr-on-a-lower-dir": [[E("etc", "dir", xattrs={"user.mark": b"m"})]],
    "opaque-root-level": [[E("usr", "dir"), E("usr/.wh..wh..opq"), E("usr/bin", "dir")], [E("usr/bin/sh", data=b"sh")]],
}


def assert_stacks_as_unpacked(store: LayerStore, tmp: Path, tars: list[bytes]) -> None:
    expected = visible(old_way(tmp, tars))
    root = stacked(store, tars)
    try:
        with root.readable() as view:
            assert visible(view) == expected
    finally:
        root.close()


@pytest.mark.parametrize("name", sorted(STACKS))
def test_stacked_layers_read_as_layers_unpacked_onto_one_rootfs(name, store, tmp_path):
    assert_stacks_as_unpacked(store, tmp_path, [make_tar(BASE)] + [make_tar(layer) for layer in STACKS[name]])


def _confined(case_id: str) -> bool:
    return next(c for c in hostile_cases(Path("/x")) if c[0] == case_id)[2] == "confined"


@pytest.mark.parametrize("case_id", [c[0] for c in hostile_cases(Path("/x")) if _confined(c[0])])
def test_hostile_layers_stack_as_they_unpack(case_id, store, tmp_path, outside):
    """The unpacker's hostile table, as the layer above a base: same tree, the host untouched."""
    _, entries, _ = next(c for c in hostile_cases(outside) if c[0] == case_id)
    before = {p: p.read_bytes() if p.is_file() else None for p in outside.rglob("*")}
    assert_stacks_as_unpacked(store, tmp_path, [make_tar(BASE), make_tar(entries)])
    assert {p: p.read_bytes() if p.is_file() else None for p in outside.rglob("*")} == before


@pytest.mark.parametrize("case_id", [c[0] for c in hostile_cases(Path("/x")) if not _confined(c[0])])
def test_refused_hostile_layers_leave_no_layer_dir(case_id, store, outside):
    _, entries, expected = next(c for c in hostile_cases(outside) if c[0] == case_id)
    base, bad = refs([make_tar(BASE), make_tar(entries)])
    with pytest.raises(expected):
        store.ensure([base, bad])
    assert store.has(base.diff_id) and not store.has(layerstore.chain_of(base.diff_id, bad.diff_id))
    assert list((store.root / "tmp").iterdir()) == []


def test_whiteouts_and_opaque_dirs_are_overlay_marks(store):
    """A deletion is a 0/0 character device; an opaque dir carries both marks (kade's overlays read
    user.overlay.opaque, one mounted without userxattr reads trusted.overlay.opaque)."""
    tars = [make_tar(BASE), make_tar([E("etc/.wh.gone"), E(".wh.var"), E("var", "dir"), E("var/n", data=b"n")])]
    top = store.ensure(refs(tars))[-1].fs
    st = os.lstat(top / "etc" / "gone")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    for mark in ("user.overlay.opaque", "trusted.overlay.opaque"):
        assert os.getxattr(top / "var", mark) == b"y"
    assert not (top / "etc" / "keep").exists()   # only what the layer changed is in its dir


def test_a_literal_0_0_device_in_a_layer_is_skipped_with_a_note(store):
    """In a layer dir a 0/0 character device is a whiteout: a layer's own is skipped (said), so the
    entry it replaces is gone, as a layer that deletes it would have it (the one difference from
    unpacking onto one directory, where the device node itself would be made)."""
    notes = []
    store.report = lambda kind, msg, **kw: notes.append(msg)
    tars = [make_tar(BASE), make_tar([E("etc/keep", "char", dev=(0, 0)), E("etc/new0", "char", dev=(0, 0))])]
    root = stacked(store, tars)
    try:
        with root.readable() as view:
            assert not os.path.lexists(view / "etc" / "keep") and not os.path.lexists(view / "etc" / "new0")
            assert (view / "etc" / "gone").exists()
    finally:
        root.close()
    assert sum("would read as a whiteout" in n for n in notes) == 2


def test_each_layer_is_unpacked_once_and_shared(store, tmp_path):
    opened: list[str] = []
    tars = [make_tar(BASE), make_tar([E("etc/new", data=b"n")])]
    first = store.ensure(refs(tars, opened))
    again = LayerStore(store.root, thread_lock).ensure(refs(tars, opened))   # another build
    assert [d.path for d in first] == [d.path for d in again]
    assert len(opened) == 2


def test_concurrent_builds_unpack_each_layer_once(store):
    opened: list[str] = []
    tars = [make_tar(BASE)] + [make_tar([E(f"layer{i}", data=b"x" * 1000)]) for i in range(5)]
    results, errors = [], []

    def build():
        try:
            results.append([d.path for d in LayerStore(store.root, thread_lock).ensure(refs(tars, opened))])
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len({tuple(r) for r in results}) == 1
    assert sorted(opened) == sorted(r.diff_id for r in refs(tars))   # each blob read once
    assert list((store.root / "tmp").iterdir()) == []


def test_a_tampered_layer_dir_is_discarded_and_unpacked_again(store):
    tars = [make_tar(BASE), make_tar([E("etc/conf", data=b"good")])]
    top = store.ensure(refs(tars))[-1]
    with open(top.fs / "etc" / "conf", "ab") as f:   # a write that reached a layer dir
        f.write(b" and evil")
    warnings = []
    fresh = LayerStore(store.root, thread_lock, lambda kind, msg, **kw: warnings.append((kind, msg)))
    again = fresh.ensure(refs(tars))[-1]
    assert (again.fs / "etc" / "conf").read_bytes() == b"good"
    assert any(kind == "warning" and "changed since it was unpacked" in msg for kind, msg in warnings)
    # metadata only (a chmod) is a change too
    os.chmod(again.fs / "etc" / "conf", 0o777)
    assert LayerStore(store.root, thread_lock).get(again.chain_id) is None


def test_a_record_naming_another_layer_is_not_used(store):
    tars = [make_tar(BASE)]
    (layer,) = store.ensure(refs(tars))
    record = (layer.path / layerstore.RECORD).read_text().replace(layer.chain_id, "sha256:" + "0" * 64)
    (layer.path / layerstore.RECORD).write_text(record)
    assert LayerStore(store.root, thread_lock).get(layer.chain_id) is None


def test_a_step_writes_only_its_upper_dir(store, tmp_path):
    """COPY/WORKDIR and RUN write through views of the stack: every layer dir keeps its fingerprint."""
    tars = [make_tar(BASE), make_tar([E("etc/conf", data=b"c")])]
    root = stacked(store, tars)
    before = {d.chain_id: fingerprint(d.fs) for d in root.lowers}
    with root.writable() as view:
        (view / "etc" / "conf").write_bytes(b"changed")
        (view / "etc" / "keep").unlink()
        os.chmod(view / "bin" / "su", 0o755)
        (view / "usr" / "lib" / "libc").write_bytes(b"x")
        (view / "var" / "new").mkdir()
    root.commit("sha256:" + "1" * 64)
    assert {d.chain_id: fingerprint(d.fs) for d in root.lowers[:2]} == before
    assert len(root.lowers) == 3 and (root.lowers[2].fs / "etc" / "conf").read_bytes() == b"changed"
    with root.readable() as view:
        assert (view / "etc" / "conf").read_bytes() == b"changed" and not (view / "etc" / "keep").exists()
    root.close()


def test_a_stack_of_150_layers(store, tmp_path):
    """More lower dirs than mount(2)'s one page of options would hold: each layer its own lowerdir+."""
    tars = [make_tar(BASE)]
    for i in range(150):
        entries = [E(f"layers/l{i:03d}", data=b"%d" % i)]
        if i % 10 == 9:
            entries.append(E(f"layers/.wh.l{i - 5:03d}"))
        tars.append(make_tar(entries))
    expected = visible(old_way(tmp_path, tars))
    root = stacked(store, tars)
    try:
        assert len(root.lowers) == 151
        with root.readable() as view:
            assert visible(view) == expected
        with root.writable() as view:
            (view / "layers" / "top").write_bytes(b"t")
        root.commit("sha256:" + "2" * 64)
        with root.readable() as view:
            assert len(os.listdir(view / "layers")) == 150 - 15 + 1
    finally:
        root.close()


def test_prune_keeps_what_fits_and_what_was_used_last(store):
    tars = [make_tar(BASE)] + [make_tar([E(f"big{i}", data=os.urandom(200_000))]) for i in range(3)]
    dirs = store.ensure(refs(tars))
    for i, d in enumerate(dirs):   # used in order: the base first, big2 last
        os.utime(d.path, (1000 + i, 1000 + i))
    keep = sum(e.bytes for e in store.usage() if e.name in {dirs[-1].path.name, dirs[-2].path.name})
    removed, freed = store.prune(max_bytes=keep)
    assert removed == 2 and freed > 0
    assert sorted(p.name for p in store.root.iterdir() if p.name not in ("tmp", "empty")) == \
        sorted([dirs[-1].path.name, dirs[-2].path.name])


def test_views_are_attached_nowhere(store, tmp_path):
    """kade's views of a stack are detached mounts: nothing appears in the host's mount table."""
    root = stacked(store, [make_tar(BASE)])
    try:
        with root.writable() as view, root.readable():
            assert os.path.isdir(view / "etc")
            assert str(store.root) not in Path("/proc/self/mountinfo").read_text()
    finally:
        root.close()


def test_kade_cache_prune_max_size_removes_least_recent_layers_only(tmp_path, capsys):
    """`kade cache prune --max-size`: layer dirs go by least recent use until the rest fit; blobs,
    cache mounts and the rest stay (no --older-than given)."""
    from builder.cache import LocalCache
    from kade.cli import main

    cache = LocalCache(tmp_path / "c")
    blob = cache.blobs.put_bytes(b"a blob")
    (cache.mount_dir("pip") / "wheel").write_bytes(b"w")
    store = LayerStore(cache.trees / "layers", cache.lock)
    tars = [make_tar(BASE)] + [make_tar([E(f"big{i}", data=os.urandom(300_000))]) for i in range(2)]
    dirs = store.ensure(refs(tars))
    for i, d in enumerate(dirs):
        os.utime(d.path, (1000 + i, 1000 + i))
    budget = next(e.bytes for e in store.usage() if e.name == dirs[-1].path.name)
    assert main(["cache", "prune", "--cache-dir", str(cache.root), "--max-size", str(budget), "-o", "json"]) == 0
    assert '"removed": 2' in capsys.readouterr().out
    assert [p.name for p in (cache.trees / "layers").iterdir() if p.name not in ("tmp", "empty")] == \
        [dirs[-1].path.name]
    assert cache.blobs.has(blob) and (cache.mount_dir("pip") / "wheel").exists()
    assert main(["cache", "prune", "--cache-dir", str(cache.root), "-o", "json"]) == 0   # everything
    assert not cache.blobs.has(blob) and [p.name for p in (cache.trees / "layers").iterdir()] == ["tmp"]


def test_paths_resolved_in_a_view_name_the_view_never_the_host(store):
    """A view is a mount attached nowhere: the kernel's name of a directory in it starts at `/`. Every
    host path kade makes of one (a bind mount's source, a layer writer's source) must go through the
    view's own /proc/<pid>/fd link, or `/` would be the host's root."""
    from builder.rootfs_ops import Root
    from builder.rootpath import resolve, resolve_full

    root = stacked(store, [make_tar(BASE)])
    try:
        with root.readable() as view:
            for path, inside in (("/", ""), ("etc/keep", "/etc/keep"), ("lib/libc", "/usr/lib/libc"),
                                 ("abs", "/usr/lib"), ("home/app/f", "/home/app/f")):
                assert resolve_full(view, path) == f"{view}{inside}", path
            assert resolve(view, "lib/libc") == (f"{view}/usr/lib", b"libc")
            with Root(view) as r:
                assert r.host_path(r.resolve("etc/keep")) == f"{view}/etc/keep"
                assert Path(r.host_path(r.resolve("etc/keep"))).read_bytes() == b"k"
    finally:
        root.close()


@pytest.mark.parametrize("where", ["in process", "in a child process"])
def test_a_committed_upper_dir_holds_what_its_layer_holds(where, store, tmp_path):
    """Overlay's bookkeeping and what a layer never carries go; opaque dirs get both marks; mtimes are
    whole seconds, clamped to the epoch; and the record's fingerprint is the tree's as left. The same
    whether the store normalizes the upper dir at commit or a child process did it meanwhile."""
    import socket

    root = LayeredRoot(store, store.ensure(refs([make_tar(BASE)])), 1_700_000_000, tmp_path)
    upper = root._upper().fs
    (upper / "d").mkdir()
    os.setxattr(upper / "d", "user.overlay.opaque", b"y")
    (upper / "plain").mkdir()
    os.setxattr(upper / "plain", "trusted.overlay.opaque", b"y")   # copied up, not overlay's own mark here
    (upper / "d" / "f").write_bytes(b"x")
    os.setxattr(upper / "d" / "f", "trusted.overlay.origin", b"junk")
    os.setxattr(upper / "d" / "f", "user.keep", b"v")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(upper / "d" / "sock"))
    sock.close()
    os.utime(upper / "d" / "f", ns=(1, 1_800_000_000_123_456_789))   # after the epoch, not whole seconds
    os.utime(upper / "d", ns=(1, 1_600_000_000_500_000_000))
    if where == "in a child process":
        store.start_normalizing(root._upper(), root.epoch)
    root.commit("sha256:" + "3" * 64)
    top = root.lowers[-1].fs
    assert os.listxattr(top / "d" / "f") == ["user.keep"]
    assert sorted(os.listxattr(top / "d")) == ["trusted.overlay.opaque", "user.overlay.opaque"]
    assert os.listxattr(top / "plain") == []
    assert not (top / "d" / "sock").exists()
    assert os.lstat(top / "d" / "f").st_mtime_ns == 1_700_000_000 * 10**9
    assert os.lstat(top / "d").st_mtime_ns == 1_600_000_000 * 10**9   # set back after the socket went
    assert LayerStore(store.root, thread_lock).get(root.lowers[-1].chain_id) is not None
    root.close()


def test_a_directory_whose_only_change_is_its_times_keeps_its_old_times_in_the_layer_dir(store, tmp_path):
    """A RUN's temporary file made and removed in a directory changes only its times: the layer leaves
    it out (BuildKit's differ, builder/snapshot.py), so the committed upper dir gives it its old times
    back and the stack reads as the layers unpacked onto one rootfs, dir mtimes included."""
    from builder.layer import write_layer
    from builder.stageroot import LayeredCapture

    base = [E("etc", "dir"), E("etc/keep", data=b"k"), E("tmp", "dir", mode=0o1777), E("var", "dir"),
            E("var/lib", "dir"), E("usr", "dir"), E("usr/bin", "dir"), E("usr/bin/tool", data=b"t")]
    tars = [make_tar(base)]
    root = stacked(store, tars)
    cap = LayeredCapture(root, in_sandbox=False)
    (cap.root / "tmp" / "scratch").write_bytes(b"x")
    (cap.root / "tmp" / "scratch").unlink()
    (cap.root / "var" / "lib" / "d").mkdir()
    (cap.root / "var" / "lib" / "d").rmdir()
    (cap.root / "usr" / "bin" / "made").write_bytes(b"x")
    (cap.root / "usr" / "bin" / "made").unlink()
    (cap.root / "usr" / "bin" / "tool").write_bytes(b"rebuilt")
    touched = os.lstat(cap.root / "usr" / "bin").st_mtime_ns // 10**9
    changes = cap.changes()
    cap.close()
    blob = io.BytesIO()
    info = write_layer(changes, blob, "gzip")
    assert sorted((c.path, c.kind) for c in changes) == [("usr/bin", "add"), ("usr/bin/tool", "add")]
    root.commit(info.diff_id)
    unpacked = old_way(tmp_path, tars)
    apply_layer(io.BytesIO(blob.getvalue()), unpacked, digest=info.digest)

    def dir_times(tree: Path) -> dict[str, int]:
        return {d: os.lstat(tree / d).st_mtime_ns // 10**9 for d in ("tmp", "var", "var/lib", "usr", "usr/bin")}

    try:
        with root.readable() as view:
            assert dir_times(view) == dir_times(unpacked)
            assert visible(view) == visible(unpacked)
        assert dir_times(root.lowers[-1].fs)["usr/bin"] == touched
    finally:
        root.close()


def test_a_layer_written_while_its_upper_dir_is_normalized_is_the_layer_of_the_committed_dir(store, tmp_path):
    """A RUN's upper dir is normalized by a child process while its layer is written from it
    (builder/layernorm.py). Thousands of files with sub-second mtimes and xattrs a layer drops, and
    sockets (which go first, their directories keeping their times): the layer dir as committed reads
    as the layer unpacked onto the stack, file and directory times included."""
    import socket

    from builder.layer import write_layer
    from builder.layernorm import APART_FROM
    from builder.stageroot import LayeredCapture

    tars = [make_tar(BASE)]
    root = stacked(store, tars)
    cap = LayeredCapture(root, in_sandbox=False)
    made = cap.root / "made"
    for d in range(20):
        (made / f"d{d}").mkdir(parents=True)
        for f in range(210):
            path = made / f"d{d}" / f"f{f}"
            path.write_bytes(b"%d" % f)
            os.setxattr(path, "user.keep", b"v")
            os.utime(path, ns=(1, 1_700_000_000_000_000_000 + f * 1_234_567))
    for where in (cap.root / "var" / "cache", made / "d3"):   # an existing dir with only a socket; a new one
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(where / "sock"))
        sock.close()
    changes = cap.changes()
    cap.close()
    upper = root.pending
    assert len(changes) >= APART_FROM
    assert upper is not None and upper.normalizing is not None   # the child runs while the layer is written
    assert not any(c.path.endswith("/sock") for c in changes)
    for c in changes:
        if c.source is not None:
            assert not c.source.endswith("/sock")
    blob = io.BytesIO()
    info = write_layer(changes, blob, "gzip")
    root.commit(info.diff_id)
    unpacked = old_way(tmp_path, tars)
    apply_layer(io.BytesIO(blob.getvalue()), unpacked, digest=info.digest)

    def dir_times(tree: Path) -> dict[str, int]:
        return {str(p.relative_to(tree)): os.lstat(p).st_mtime_ns for p in [tree / "var" / "cache", *tree.glob("made/*")]}

    def without_user_xattrs(state: dict) -> dict:   # of what the RUN made (the base layer's are in both)
        return {p: (*v[:5], tuple(x for x in v[5] if not (p.startswith(b"made/") and x[0].startswith("user."))), v[6])
                for p, v in state.items()}

    try:
        with root.readable() as view:
            assert not (view / "var" / "cache" / "sock").exists() and not (view / "made" / "d3" / "sock").exists()
            assert dir_times(view) == dir_times(unpacked)
            # the layer dir keeps the user.* xattrs for the steps after (as BuildKit's snapshots); the
            # layer holds file capabilities only (as BuildKit's differ writes it)
            assert os.getxattr(view / "made" / "d0" / "f0", "user.keep") == b"v"
            assert os.listxattr(unpacked / "made" / "d0" / "f0") == []
            assert without_user_xattrs(visible(view)) == visible(unpacked)
        assert LayerStore(store.root, thread_lock).get(root.lowers[-1].chain_id) is not None   # fingerprint holds
    finally:
        root.close()


def test_a_small_upper_dir_is_normalized_in_the_build_process(store):
    """A child process takes longer to start than a few hundred entries take to normalize."""
    from builder.stageroot import LayeredCapture

    root = stacked(store, [make_tar(BASE)])
    cap = LayeredCapture(root, in_sandbox=False)
    (cap.root / "etc" / "new").write_bytes(b"n")
    changes = cap.changes()
    cap.close()
    assert changes and root.pending is not None and root.pending.normalizing is None
    root.commit("sha256:" + "5" * 64)
    assert LayerStore(store.root, thread_lock).get(root.lowers[-1].chain_id) is not None
    root.close()


def test_a_normalization_that_fails_names_the_layer_and_its_file(store, tmp_path):
    """A real failure in the child: an immutable file (chattr +i) refuses its new mtime, even to root."""
    import subprocess

    root = stacked(store, [make_tar(BASE)])
    upper = root._upper()
    stuck = upper.fs / "stuck"
    stuck.write_bytes(b"x")
    os.utime(stuck, ns=(1, 1_700_000_000_500_000_000))   # not whole seconds: normalize must set it
    subprocess.run(["chattr", "+i", str(stuck)], check=True)
    try:
        store.start_normalizing(upper, None)
        chain = layerstore.chain_of(root.lowers[-1].chain_id, "sha256:" + "4" * 64)
        with pytest.raises(layerstore.LayerStoreError,
                           match=f"cannot make the layer dir of {chain} from {upper.fs}: {stuck}: Operation not permitted"):
            root.commit("sha256:" + "4" * 64)
    finally:
        subprocess.run(["chattr", "-i", str(stuck)], check=True)
        root.close()
    assert not store.has(chain) and len(root.lowers) == 1


def test_the_child_process_reports_what_it_could_not_normalize(tmp_path):
    from builder.layernorm import NormalizeError, Normalizing

    with pytest.raises(NormalizeError, match=f"{tmp_path}/missing: No such file or directory"):
        Normalizing(tmp_path / "missing", None).result()


def test_dropping_an_upper_dir_stops_its_normalization(store, tmp_path):
    root = stacked(store, [make_tar(BASE)])
    upper = root._upper()
    for i in range(2000):
        (upper.fs / f"f{i}").write_bytes(b"x")
    store.start_normalizing(upper, None)
    job = upper.normalizing
    assert job is not None
    root.close()   # drops the pending upper dir
    assert job._proc.returncode is not None   # reaped, not left running on a deleted tree
    assert upper.normalizing is None and not upper.scratch.exists()
