import hashlib
import io
import os
import time

import pytest

from builder.rootfs import RootfsStore, chain_ids
from registry import mediatypes as mt
from registry.image import Layer
from registry.model import Descriptor
from builder.unpack import UnpackError
from tests.fixtures.layers import E, make_tar, tree_state


def test_chain_ids_follow_the_oci_definition():
    a, b, c = ("sha256:" + ch * 64 for ch in "abc")
    ab = "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()
    assert chain_ids([a, b, c]) == [a, ab, "sha256:" + hashlib.sha256(f"{ab} {c}".encode()).hexdigest()]
    assert chain_ids([]) == []


def layer(entries, opened: list[str]) -> Layer:
    data = make_tar(entries)
    diff_id = "sha256:" + hashlib.sha256(data).hexdigest()

    def opener():
        opened.append(diff_id)
        return io.BytesIO(data)

    return Layer(Descriptor(mt.OCI_LAYER, diff_id, len(data)), diff_id, opener)


def test_materialize_reuses_the_longest_cached_prefix(tmp_path):
    opened: list[str] = []
    base = layer([E("etc", "dir"), E("etc/a", data=b"a"), E("bin", "dir"), E("bin/x", data=b"x"),
                  E("bin/y", "hardlink", link="bin/x")], opened)
    top = layer([E("etc/.wh.a"), E("etc/b", data=b"b")], opened)
    store = RootfsStore(tmp_path / "store")
    first = store.materialize([base], tmp_path / "r1")
    assert opened == [base.diff_id] and store.has(base.diff_id)
    second = store.materialize([base, top], tmp_path / "r2")
    assert opened == [base.diff_id, top.diff_id]          # base came from the store
    assert not (second / "etc" / "a").exists() and (second / "etc" / "b").read_bytes() == b"b"
    assert os.stat(second / "bin" / "x").st_ino == os.stat(second / "bin" / "y").st_ino   # hard link kept
    third = store.materialize([base, top], tmp_path / "r3")
    assert opened == [base.diff_id, top.diff_id]          # whole stack cached: nothing read
    assert tree_state(third) == tree_state(second)
    assert (first / "etc" / "a").exists()                 # copies are independent


def test_diff_id_mismatch_is_caught(tmp_path):
    opened: list[str] = []
    good = layer([E("f", data=b"x")], opened)
    bad = Layer(Descriptor(mt.OCI_LAYER, "sha256:" + "1" * 64, 1), "sha256:" + "0" * 64, good.opener)
    with pytest.raises(UnpackError, match="diffID"):
        RootfsStore(tmp_path / "store").materialize([bad], tmp_path / "r")


def test_reuse_marks_a_kept_stack_used_without_changing_its_content_times(tmp_path):
    """`kade cache prune --older-than` goes by a stack's last use: a copy moves its atime only."""
    from builder.cache import LocalCache

    cache = LocalCache(tmp_path / "cache")
    base = layer([E("etc", "dir"), E("etc/a", data=b"a")], [])
    store = cache.rootfs_store
    store.materialize([base], tmp_path / "r1")
    kept = store.path(base.diff_id)
    week_ago = time.time() - 7 * 86400
    os.utime(kept, (week_ago, week_ago))
    mtime = kept.stat().st_mtime_ns
    assert store.cached_depth([base.diff_id]) == 1 and store.cached_depth(["sha256:" + "2" * 64]) == 0
    store.materialize([base], tmp_path / "r2")
    assert kept.stat().st_mtime_ns == mtime and kept.stat().st_atime > week_ago + 86400
    assert cache.prune(older_than_seconds=86400).removed == 0 and store.has(base.diff_id)
    os.utime(kept, (week_ago, week_ago))
    cache.prune(older_than_seconds=86400)
    assert not store.has(base.diff_id)


def test_a_kept_tree_that_changed_is_discarded_not_copied(tmp_path):
    """The copy fallback's shared trees carry a fingerprint too (a pod's cache PVC is shared)."""
    opened: list[str] = []
    base = layer([E("etc", "dir"), E("etc/conf", data=b"good")], opened)
    RootfsStore(tmp_path / "store").materialize([base], tmp_path / "r1")
    kept = RootfsStore(tmp_path / "store").path(base.diff_id)
    (kept / "etc" / "conf").write_bytes(b"evil")      # a write that reached the shared tree
    again = RootfsStore(tmp_path / "store")
    assert not again.has(base.diff_id) and not kept.exists()
    again.materialize([base], tmp_path / "r2")
    assert (tmp_path / "r2" / "etc" / "conf").read_bytes() == b"good" and opened == [base.diff_id] * 2
