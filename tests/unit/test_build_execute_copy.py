"""COPY/ADD into a rootfs with Docker's destination rules, and the changes they report."""
import io
import os
import tarfile

import pytest

from builder.context import BuildContext
from builder.execute import copy_step, ensure_dir
from builder.plan import CopySpec


@pytest.fixture
def ctx(tmp_path):
    c = tmp_path / "ctx"
    (c / "dir" / "sub").mkdir(parents=True)
    (c / "dir" / "a.txt").write_text("a")
    (c / "dir" / "sub" / "b.txt").write_text("b")
    (c / "one.txt").write_text("1")
    (c / "two.txt").write_text("2")
    os.chmod(c / "two.txt", 0o755)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        ti = tarfile.TarInfo("inner/x.txt")
        ti.size = 1
        tf.addfile(ti, io.BytesIO(b"x"))
    (c / "bundle.tar.gz").write_bytes(buf.getvalue())
    return BuildContext.open(c)


@pytest.fixture
def rootfs(tmp_path):
    r = tmp_path / "rootfs"
    (r / "existing").mkdir(parents=True)
    (r / "etc").mkdir()
    (r / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n")
    (r / "etc" / "group").write_text("root:x:0:\napp:x:1000:\n")
    return r


def spec(ctx, srcs, dest, **kw):
    sources = [s for src in srcs for s in ctx.select(src)]
    return CopySpec(dest=dest, sources=sources, **kw)


@pytest.mark.parametrize("srcs,dest,workdir,expect", [
    (["one.txt"], "/out.txt", "/", {"out.txt": "1"}),
    (["one.txt"], "/new/", "/", {"new/one.txt": "1"}),
    (["one.txt"], "/existing", "/", {"existing/one.txt": "1"}),
    (["one.txt"], "rel.txt", "/work", {"work/rel.txt": "1"}),
    (["one.txt", "two.txt"], "/multi/", "/", {"multi/one.txt": "1", "multi/two.txt": "2"}),
    (["*.txt"], "/glob/", "/", {"glob/one.txt": "1", "glob/two.txt": "2"}),
    (["dir"], "/d", "/", {"d/a.txt": "a", "d/sub/b.txt": "b"}),
    (["dir/"], "/d2/", "/", {"d2/a.txt": "a", "d2/sub/b.txt": "b"}),
    (["dir"], ".", "/app", {"app/a.txt": "a", "app/sub/b.txt": "b"}),
])
def test_destination_rules(ctx, rootfs, srcs, dest, workdir, expect):
    changes = copy_step(rootfs, spec(ctx, srcs, dest), workdir, None, context_root=ctx.root)
    for rel, text in expect.items():
        assert (rootfs / rel).read_text() == text
        assert rel in {c.path for c in changes}
    for c in changes:
        assert os.path.lexists(rootfs / c.path)


def test_chown_chmod_and_modes(ctx, rootfs):
    copy_step(rootfs, spec(ctx, ["two.txt", "one.txt"], "/o/", chown="app"), "/", None, context_root=ctx.root)
    st = os.stat(rootfs / "o" / "two.txt")
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (1000, 1000, 0o755)
    assert os.stat(rootfs / "o").st_uid == 1000  # created directory takes the owner too
    copy_step(rootfs, spec(ctx, ["one.txt"], "/m.txt", chmod=0o600, chown="7:8"), "/", None, context_root=ctx.root)
    st = os.stat(rootfs / "m.txt")
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (7, 8, 0o600)


def test_heredoc_and_add_archive(ctx, rootfs):
    copy_step(rootfs, CopySpec(dest="/h.sh", heredocs=[("EOF", "echo hi\n")], chmod=0o755), "/", None)
    assert (rootfs / "h.sh").read_text() == "echo hi\n" and os.stat(rootfs / "h.sh").st_mode & 0o777 == 0o755
    changes = copy_step(rootfs, spec(ctx, ["bundle.tar.gz"], "/unpacked/", add=True), "/", None, context_root=ctx.root)
    assert (rootfs / "unpacked" / "inner" / "x.txt").read_text() == "x"
    assert "unpacked/inner/x.txt" in {c.path for c in changes}
    copy_step(rootfs, spec(ctx, ["bundle.tar.gz"], "/kept/"), "/", None, context_root=ctx.root)  # COPY never extracts
    assert (rootfs / "kept" / "bundle.tar.gz").is_file()


def test_copy_never_writes_through_a_hostile_symlink(ctx, rootfs, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(str(outside), rootfs / "trap")  # absolute link to a host dir
    copy_step(rootfs, spec(ctx, ["one.txt"], "/trap/"), "/", None, context_root=ctx.root)
    assert not (outside / "one.txt").exists()
    os.symlink(str(outside / "f"), rootfs / "linkfile")
    changes = copy_step(rootfs, spec(ctx, ["one.txt"], "/linkfile"), "/", None, context_root=ctx.root)
    # BuildKit's rule: the destination resolves inside the rootfs, its final symlink included
    inside = rootfs / str(outside / "f").lstrip("/")
    assert not (outside / "f").exists() and inside.read_text() == "1" and (rootfs / "linkfile").is_symlink()
    assert str(inside.relative_to(rootfs)) in {c.path for c in changes}


def test_copy_from_rootfs(ctx, rootfs, tmp_path):
    src = tmp_path / "stage"
    (src / "opt" / "tool").mkdir(parents=True)
    (src / "opt" / "tool" / "bin").write_text("tool")
    changes = copy_step(rootfs, CopySpec(dest="/usr/local/", from_stage="s", from_paths=["opt/tool"]), "/", src)
    assert (rootfs / "usr" / "local" / "bin").read_text() == "tool"
    assert {"usr", "usr/local", "usr/local/bin"} <= {c.path for c in changes}


def test_ensure_dir_reports_created_dirs(rootfs):
    assert {c.path for c in ensure_dir(rootfs, "/existing/a/b")} == {"existing/a", "existing/a/b"}
    assert ensure_dir(rootfs, "/existing/a/b") == []


@pytest.mark.parametrize("name, linkname, kind", [
    ("../escaped.txt", "", tarfile.REGTYPE),
    ("/abs-escaped.txt", "", tarfile.REGTYPE),
    ("up", "../../..", tarfile.SYMTYPE),  # a symlink out, then a file written through it
])
def test_add_archive_never_writes_outside_its_target(tmp_path, rootfs, name, linkname, kind):
    from builder.errors import BuildError

    c = tmp_path / "hostile-ctx"
    c.mkdir()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tf:
        ti = tarfile.TarInfo(name)
        ti.type, ti.linkname = kind, linkname
        tf.addfile(ti, io.BytesIO(b"") if kind == tarfile.REGTYPE else None)
        if kind == tarfile.SYMTYPE:
            through = tarfile.TarInfo(f"{name}/escaped-through-link.txt")
            through.size = 4
            tf.addfile(through, io.BytesIO(b"evil"))
    (c / "hostile.tar.xz").write_bytes(buf.getvalue())
    before = sorted(p.name for p in tmp_path.rglob("*"))
    try:
        hostile = BuildContext.open(c)
        copy_step(rootfs, spec(hostile, ["hostile.tar.xz"], "/unpacked/", add=True), "/", None,
                  context_root=hostile.root)
    except BuildError as exc:
        assert "hostile.tar.xz" in str(exc)  # the error names the archive
    after = sorted(p.name for p in tmp_path.rglob("*") if "unpacked" not in p.parts)
    assert "escaped.txt" not in after and "abs-escaped.txt" not in after
    assert "escaped-through-link.txt" not in after
    assert set(after) - set(before) <= {"unpacked"}


def test_a_symlink_named_as_a_source_is_copied_under_its_own_name(ctx, rootfs):
    """Docker and BuildKit follow the named source and keep the name it was given by."""
    os.symlink("one.txt", ctx.root / "alias.txt")
    copy_step(rootfs, spec(ctx, ["alias.txt"], "/x/"), "/", None, context_root=ctx.root)
    assert (rootfs / "x" / "alias.txt").read_text() == "1" and not (rootfs / "x" / "one.txt").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_copy_from_keeps_the_source_owners_unless_chown(rootfs, tmp_path):
    src = tmp_path / "stage"
    (src / "opt" / "d").mkdir(parents=True)
    (src / "opt" / "d" / "f").write_text("f")
    for p in (src / "opt" / "d", src / "opt" / "d" / "f"):
        os.chown(p, 1000, 1001)
    copy_step(rootfs, CopySpec(dest="/kept/", from_stage="s", from_paths=["opt/d"]), "/", src)
    st = os.stat(rootfs / "kept" / "f")
    assert (st.st_uid, st.st_gid) == (1000, 1001)
    assert os.stat(rootfs / "kept").st_uid == 0  # the destination directory it made is root's
    copy_step(rootfs, CopySpec(dest="/chowned/", from_stage="s", from_paths=["opt/d"], chown="7:8"), "/", src)
    st = os.stat(rootfs / "chowned" / "f")
    assert (st.st_uid, st.st_gid) == (7, 8)


def test_add_archive_records_entries_where_their_symlinked_parents_put_them(tmp_path, rootfs):
    from tests.fixtures.layers import E, make_tar

    c = tmp_path / "links-ctx"
    c.mkdir()
    (c / "a.tar").write_bytes(make_tar([E("up", "symlink", link="/"), E("up/sub/f", data=b"f")]))
    hostile = BuildContext.open(c)
    changes = copy_step(rootfs, spec(hostile, ["a.tar"], "/dst/", add=True), "/", None, context_root=hostile.root)
    assert (rootfs / "dst" / "sub" / "f").read_bytes() == b"f"
    paths = {ch.path for ch in changes}
    assert {"dst/up", "dst/sub", "dst/sub/f"} <= paths and "dst/up/sub/f" not in paths


def test_add_archive_whiteouts_are_changes_of_the_step(tmp_path, rootfs):
    """What an archive's whiteouts remove is a whiteout of the step's layer (else the layer, and every
    machine that pulls it, still holds it); a path a later archive of the step puts back is written."""
    from tests.fixtures.layers import E, make_tar

    for rel in ("w/gone", "w/back", "o/old"):
        (rootfs / rel).parent.mkdir(exist_ok=True)
        (rootfs / rel).write_text("lower")
    c = tmp_path / "wh-ctx"
    c.mkdir()
    (c / "a.tar").write_bytes(make_tar([E("w/.wh.gone"), E("w/.wh.back"), E("w/.wh.never"), E("o/.wh..wh..opq"),
                                        E("o/new", data=b"n")]))
    (c / "b.tar").write_bytes(make_tar([E("w/back", data=b"again")]))
    wh = BuildContext.open(c)
    changes = copy_step(rootfs, spec(wh, ["a.tar", "b.tar"], "/", add=True), "/", None, context_root=wh.root)
    kinds = {(ch.path, ch.kind) for ch in changes}
    assert {("w/gone", "delete"), ("o/old", "delete"), ("w/back", "add"), ("o/new", "add")} <= kinds
    assert not [k for k in kinds if k[0] in ("w/never", "w/back") and k[1] != "add"]
    assert (rootfs / "w" / "back").read_text() == "again" and not (rootfs / "w" / "gone").exists()


@pytest.mark.parametrize("epoch", [None, 1_700_000_000])
@pytest.mark.parametrize("srcs, heredoc, dest, made", [
    (["one.txt"], None, "/new/deeper/", ["new", "new/deeper"]),
    (["one.txt", "two.txt"], None, "/multi/", ["multi"]),
    (None, ("EOF", "x\n"), "/conf/app.conf", ["conf"]),
    (["dir"], None, "/new2/tree/", ["new2"]),   # (tree itself: the source directory's own mtime)
    (["bundle.tar.gz"], None, "/unpacked/", ["unpacked"]),
])
def test_directories_a_copy_makes_keep_the_made_up_time(ctx, rootfs, srcs, heredoc, dest, made, epoch):
    """0 (or the epoch), not the moment the copy wrote into them: the same layer on every machine."""
    s = spec(ctx, srcs, dest, add=True) if srcs else CopySpec(dest=dest, heredocs=[heredoc])
    copy_step(rootfs, s, "/", None, context_root=ctx.root, epoch=epoch)
    for rel in made:
        assert os.stat(rootfs / rel).st_mtime == (epoch or 0), rel


@pytest.mark.parametrize("epoch", [None, 1_700_000_000])
def test_an_octal_chmod_keeps_the_time_of_a_source_directory(ctx, rootfs, epoch):
    """`COPY --chmod=751 dir/ /new/tree/`: both directories get the mode; /new the made-up time, /new/tree
    the source directory's own (clamped), as without --chmod and as BuildKit copies it."""
    os.utime(ctx.root / "dir", (1_600_000_000, 1_600_000_000))
    copy_step(rootfs, spec(ctx, ["dir"], "/new/tree/", chmod=0o751), "/", None, context_root=ctx.root, epoch=epoch)
    for rel, mtime in (("new", epoch or 0), ("new/tree", 1_600_000_000)):
        st = os.stat(rootfs / rel)
        assert (oct(st.st_mode & 0o7777), st.st_mtime) == (oct(0o751), mtime), rel


@pytest.fixture
def stage(tmp_path):
    """A source stage's rootfs for COPY --from wildcards."""
    s = tmp_path / "stage"
    for rel, data in {"opt/o/file": "o", "opt/o/sub/s": "s", "opt/p/x.jar": "x", "opt/p/y.jar": "y",
                      "opt/q/bin/t": "q", "opt/r/bin/t": "r"}.items():
        (s / rel).parent.mkdir(parents=True, exist_ok=True)
        (s / rel).write_text(data)
    os.symlink("file", s / "opt" / "o" / "link")
    os.symlink("/opt/q", s / "opt" / "qlink")   # matched by opt/*, never descended
    os.symlink("/opt", s / "optlink")            # before the first wildcard: resolved in the stage
    return s


@pytest.mark.parametrize("pattern, dest, expect", [
    ("opt/o/*", "/g/", {"g/file": "o", "g/link": "o", "g/s": "s"}),   # a match is followed, named as matched
    ("opt/*/bin", "/bins/", {"bins/t": "r"}),                          # dirs' contents, one after the other
    ("optlink/p/*.jar", "/app.jar", {"app.jar": "y"}),                # no trailing '/': the last match wins
    ("opt/?/file", "/one/", {"one/file": "o"}),
    ("opt/o/link", "/ld/", {"ld/link": "o"}),                          # no wildcard: named as given too
    ("opt/[pq]/x.jar", "/jar/", {"jar/x.jar": "x"}),
    ("opt/p/*.war", "/none/", {}),
    ("opt/missing/*", "/none/", {}),
])
def test_copy_from_wildcards_match_as_buildkit_resolves_them(rootfs, stage, pattern, dest, expect):
    warned: list[str] = []
    copy_step(rootfs, CopySpec(dest=dest, from_stage="s", from_paths=[pattern]), "/", stage, warn=warned.append)
    top = dest.strip("/").split("/")[0]
    got = {str(p.relative_to(rootfs)): p.read_text() for p in (rootfs / top).rglob("*") if p.is_file()} \
        if (rootfs / top).is_dir() else ({top: (rootfs / top).read_text()} if (rootfs / top).exists() else {})
    assert got == expect
    assert not any(p.is_symlink() for p in rootfs.rglob("*"))
    assert bool(warned) == (not expect), warned   # matching nothing says so


def test_copy_from_wildcard_with_parents_keeps_each_match_path(rootfs, stage):
    copy_step(rootfs, CopySpec(dest="/par/", from_stage="s", from_paths=["opt/*/bin/t"], parents=True,
                               from_keep=["opt/*/bin/t"]), "/", stage)
    assert {str(p.relative_to(rootfs)) for p in (rootfs / "par").rglob("t")} == {"par/opt/q/bin/t", "par/opt/r/bin/t"}
