"""The stat diff as a pure function of two tree states (no filesystem involved)."""
import os
import stat
from pathlib import Path

import pytest

from builder.changes import Change
from builder.snapshot import TreeState, diff, in_user_namespace, overlay_options

D, F = stat.S_IFDIR | 0o755, stat.S_IFREG | 0o644


def k(mode=F, ino=1, mtime=0, size=0, ctime=0, uid=0):
    return (mode, uid, 0, size, mtime, ctime, ino, 0)


BASE = {b"etc": k(D, 10), b"etc/a": k(F, 11), b"etc/sub": k(D, 12), b"etc/sub/x": k(F, 13), b"opt": k(D, 20),
        b"opt/y": k(F, 21)}


def changes_of(after: dict) -> set[tuple[str, str]]:
    return {(c.path, c.kind) for c in diff(TreeState(BASE), TreeState(after), "/r")}


@pytest.mark.parametrize("edit,expected", [
    (lambda t: None, set()),
    (lambda t: t.update({b"etc/new": k(F, 30), b"etc": k(D, 10, mtime=5)}), {("etc/new", "add"), ("etc", "add")}),
    (lambda t: t.update({b"etc/a": k(F, 11, ctime=9)}), {("etc/a", "add")}),             # chmod/xattr: ctime
    (lambda t: t.update({b"etc/a": k(F, 11, uid=1000, ctime=9)}), {("etc/a", "add")}),
    (lambda t: t.pop(b"etc/a"), {("etc/a", "delete")}),
    (lambda t: [t.pop(p) for p in (b"etc/sub", b"etc/sub/x")], {("etc/sub", "delete")}),  # only the top
    (lambda t: [t.pop(b"etc/sub/x"), t.update({b"etc/sub": k(F, 40)})], {("etc/sub", "add")}),  # dir -> file
    (lambda t: t.update({b"etc/sub": k(D, 41)}),                                           # replaced dir
     {("etc/sub", "add"), ("etc/sub", "opaque"), ("etc/sub/x", "add")}),
    (lambda t: t.update({b"etc/a": k(D, 42), b"etc/a/in": k(F, 43)}),                     # file -> dir
     {("etc/a", "add"), ("etc/a/in", "add")}),
    # BuildKit's differ: a directory whose only change is its times is left out, unless it holds a change
    (lambda t: t.update({b"etc": k(D, 10, mtime=5)}), set()),                             # entry made, removed
    (lambda t: t.update({b"etc": k(D, 10, mtime=5), b"etc/sub": k(D, 12, mtime=5)}), set()),
    (lambda t: t.update({b"etc": k(D, 10, mtime=5), b"etc/sub/x": k(F, 13, ctime=9)}),   # a change below
     {("etc", "add"), ("etc/sub/x", "add")}),
    (lambda t: [t.update({b"opt": k(D, 20, mtime=5)}), t.pop(b"opt/y")], {("opt", "add"), ("opt/y", "delete")}),
    (lambda t: t.update({b"etc": k(D | 0o7000, 10, mtime=5)}), {("etc", "add")}),         # mode and times
    (lambda t: t.update({b"etc": k(D, 10, mtime=5, ctime=77)}), {("etc", "add")}),        # xattrs and times
])
def test_diff(edit, expected):
    after = dict(BASE)
    edit(after)
    assert changes_of(after) == expected


def test_sources_point_into_the_root():
    after = {**BASE, b"etc/new": k(F, 30)}
    (change,) = diff(TreeState(BASE), TreeState(after), "/some/root")
    assert change.source == "/some/root/etc/new"


@pytest.mark.parametrize("uid_map, expected", [
    ("         0          0 4294967295\n", False),  # the host's own user namespace
    ("         0     655360      65536\n", True),  # a hostUsers: false pod
    ("         0       1000          1\n", True),  # rootless: --map-root-user
    ("         0          0      65536\n", True),  # identity, but not the whole range
])
def test_in_user_namespace(uid_map, expected):
    assert in_user_namespace(uid_map) is expected


@pytest.mark.parametrize("userns, present, absent", [
    (False, ["redirect_dir=off"], ["userxattr", "nofollow"]),
    (True, ["userxattr", "redirect_dir=nofollow"], ["redirect_dir=off"]),  # the kernel refuses =off with userxattr
])
def test_overlay_options(userns, present, absent):
    opts = overlay_options(Path("/r/lower"), Path("/s/upper"), Path("/s/work"), userns).split(",")
    assert opts[:3] == ["lowerdir=/r/lower", "upperdir=/s/upper", "workdir=/s/work"]
    assert {"metacopy=off", "index=off", *present} <= set(opts) and not set(absent) & set(opts)


@pytest.mark.parametrize("rel", [b"f", b"data/f12", b"a/b/c/d/e", b"odd/na\xffme", b"sp ace/new\nline", b"x/.wh.y"])
def test_a_scanned_change_is_the_change_init_makes(rel):
    """Change.scanned (the upper dir scan's fast way) builds what Change(...) builds, parts included."""
    st = os.lstat("/")
    source = b"/upper/" + rel
    fast = Change.scanned(rel, source, st)
    slow = Change(os.fsdecode(rel), "add", os.fsdecode(source), stat=st)
    assert (fast, fast.parts, fast.stat, fast.kind) == (slow, slow.parts, slow.stat, slow.kind)
    assert os.fsencode(fast.path) == rel and os.fsencode(fast.source or "") == source
