import os

import pytest

from builder.rootpath import open_dir, open_root, resolve


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "root"
    (r / "real" / "sub").mkdir(parents=True)
    os.symlink("/", r / "to-root")
    os.symlink("../../../../..", r / "real" / "up")
    os.symlink("/real", r / "abs-real")
    os.symlink("loop2", r / "loop1")
    os.symlink("loop1", r / "loop2")
    (r / "file").write_text("x")
    return r


@pytest.mark.parametrize("path,parent,last", [
    ("/real/sub/x", "real/sub", b"x"),
    ("to-root/real/x", "real", b"x"),                       # absolute symlink: back to the root, not the host
    ("real/up/real/x", "real", b"x"),                       # '..' stops at the root
    ("abs-real/sub/x", "real/sub", b"x"),
    ("real/../../../x", "", b"x"),
])
def test_resolve_stays_inside(root, path, parent, last):
    host, name = resolve(root, path)
    assert host == str(root / parent).rstrip("/") and name == last


def test_resolve_creates_parents_and_reports_them(root):
    created = []
    host, name = resolve(root, "/to-root/new/deeper/leaf", create_parents=True, on_create=created.append)
    assert host == str(root / "new" / "deeper") and name == b"leaf"
    assert created == [[b"new"], [b"new", b"deeper"]]


@pytest.mark.parametrize("parts,error", [
    ([b"loop1", b"x"], OSError),
    ([b"file", b"x"], NotADirectoryError),
    ([b"missing"], FileNotFoundError),
])
def test_open_dir_errors(root, parts, error):
    fd = open_root(root)
    try:
        with pytest.raises(error):
            open_dir(fd, parts)
    finally:
        os.close(fd)


def test_follow_last_false_refuses_a_final_symlink(root):
    fd = open_root(root)
    try:
        with pytest.raises(OSError):
            open_dir(fd, [b"abs-real"], follow_last=False)
        os.close(open_dir(fd, [b"abs-real"]))
    finally:
        os.close(fd)


@pytest.mark.parametrize("path,expected", [
    ("to-root", ""),                   # a symlink to '/' is the root itself
    ("abs-real", "real"),              # the last component is followed too
    ("real/up", ""),
    ("real/sub/missing", "real/sub/missing"),
    ("to-root/real/../file", "file"),
])
def test_resolve_full(root, path, expected):
    from builder.rootpath import resolve_full
    assert resolve_full(root, path) == str(root / expected).rstrip("/")


def test_resolve_full_loops_fail(root):
    from builder.rootpath import resolve_full
    with pytest.raises(OSError):
        resolve_full(root, "loop1")
