"""builder/rootfs_ops.py: every operation stays inside its root, whatever symlinks the root holds.

Each case puts a hostile symlink at one path component (last, middle, first; absolute or relative;
a chain; a loop) and runs one operation through it, with the kernel's openat2 and with the
O_NOFOLLOW walk. The canaries: a host file holding a secret, an empty host directory that must stay
empty. A race test swaps a symlink in from another thread while the operations run. The last test
keeps every other module of builder/ from touching a rootfs by path."""
from __future__ import annotations

import ast
import os
import threading
from pathlib import Path

import pytest

from builder import rootpath
from builder.rootfs_ops import Meta, Override, Root, TreeCopy

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=[True, False], ids=["openat2", "walk"])
def resolver(request):
    before = rootpath.use_openat2(request.param)
    yield request.param
    rootpath.use_openat2(before)


def _link(root: Path, name: str, target: str) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, path)


def hostile_root(tmp_path: Path, host_dir: Path, secret: Path) -> Path:
    """A root whose symlinks aim at the host canaries in every way one can."""
    r = tmp_path / "rootfs"
    (r / "real" / "sub").mkdir(parents=True)
    _link(r, "abs-dir", str(host_dir))                                 # absolute, to a host dir
    _link(r, "abs-file", str(secret))                                 # absolute, to a host file
    _link(r, "rel-dir", "../" * 12 + str(host_dir).lstrip("/"))       # relative, climbing out
    _link(r, "rel-file", "../" * 12 + str(secret).lstrip("/"))
    _link(r, "real/sub/up", "../../../../../../../../..")            # '..' to above the root
    _link(r, "chain1", "chain2")                                      # a chain to a host file
    _link(r, "chain2", "/chain3")
    _link(r, "chain3", str(secret))
    _link(r, "loop1", "loop2")
    _link(r, "loop2", "/loop1")
    _link(r, "proc-self", "/proc/self/root")                          # a magic link, were /proc there
    return r


# (what the operation names, how deep the symlink sits)
PATHS = ["abs-dir/x", "abs-dir/new/deeper/x", "rel-dir/x", "real/sub/up" + "/x", "real/sub/up/abs-dir/x",
         "abs-file", "rel-file", "chain1", "loop1/x", "proc-self/x"]


def _op_write(root: Root, path: str) -> None:
    root.write_file(path, b"pwned", Meta(mode=0o644))


def _op_makedirs(root: Root, path: str) -> None:
    root.makedirs(path, Meta(mode=0o755))


def _op_read(root: Root, path: str) -> None:
    data = root.read_file(path)
    assert data is None or b"kade-canary" not in data


def _op_remove(root: Root, path: str) -> None:
    root.remove(path)


def _op_stat(root: Root, path: str) -> None:
    st = root.stat(path)
    assert st is None or st.st_ino not in _HOST_INODES


def _op_utime(root: Root, path: str) -> None:
    root.utime(root.resolve(path), 0)


def _op_copy_out(root: Root, path: str) -> None:
    """COPY --from: read `path` out of the hostile root into a clean one."""
    dst_dir = root.path.parent / "dst"
    dst_dir.mkdir(exist_ok=True)
    with Root(dst_dir) as dst:
        written: list = []
        TreeCopy(root, dst, Override(), written).copy(root.resolve(path), dst.fd, b"out", ())
    for p in dst_dir.rglob("*"):
        assert p.is_symlink() or not p.is_file() or b"kade-canary" not in p.read_bytes()


_HOST_INODES: set[int] = set()
OPS = {"write": _op_write, "makedirs": _op_makedirs, "read": _op_read, "remove": _op_remove, "stat": _op_stat,
       "utime": _op_utime, "copy_out": _op_copy_out}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("op", sorted(OPS))
def test_no_operation_leaves_the_root(tmp_path, resolver, host_secret, empty_host_dir, op, path):
    root_dir = hostile_root(tmp_path, empty_host_dir.path, host_secret.path)
    _HOST_INODES.clear()
    _HOST_INODES.update({os.stat(empty_host_dir.path).st_ino, os.stat(host_secret.path).st_ino})
    secret_times = os.stat(host_secret.path).st_mtime_ns
    with Root(root_dir) as root:
        try:
            OPS[op](root, path)
        except OSError:
            pass  # refusing (ELOOP, ENOTDIR, ...) is fine; reaching the host is not
    empty_host_dir.assert_empty()
    assert host_secret.path.read_bytes() == host_secret.value + b"\n"
    assert os.stat(host_secret.path).st_mtime_ns == secret_times


@pytest.mark.parametrize("path,inside", [
    ("abs-dir/x", "{host}/x"),               # an absolute target restarts at the root
    ("rel-dir/x", "{host}/x"),               # '..' stops at the root
    ("real/sub/up/real/x", "real/x"),
    ("chain1", "{secret}"),                  # a chain, followed to its end, inside
])
def test_write_lands_where_the_link_points_inside_the_root(tmp_path, resolver, host_secret, empty_host_dir,
                                                           path, inside):
    root_dir = hostile_root(tmp_path, empty_host_dir.path, host_secret.path)
    with Root(root_dir) as root:
        parts = root.write_file(path, b"data", Meta(mode=0o600))
    expected = inside.format(host=str(empty_host_dir.path).lstrip("/"), secret=str(host_secret.path).lstrip("/"))
    assert b"/".join(parts).decode() == expected
    assert (root_dir / expected).read_bytes() == b"data"


def test_loops_and_files_as_directories_are_refused(tmp_path, resolver, host_secret, empty_host_dir):
    root_dir = hostile_root(tmp_path, empty_host_dir.path, host_secret.path)
    (root_dir / "plain").write_text("x")
    with Root(root_dir) as root:
        with pytest.raises(OSError):
            root.write_file("loop1/x", b"", Meta())
        with pytest.raises(NotADirectoryError):
            root.makedirs("plain/x")


def test_a_replaced_file_is_a_new_inode(tmp_path, resolver):
    """Remove-then-create: a hard link to the old file (say, from a lower layer) keeps its bytes."""
    r = tmp_path / "r"
    r.mkdir()
    (r / "a").write_text("old")
    os.link(r / "a", r / "b")
    with Root(r) as root:
        root.write_file("a", b"new", Meta(mode=0o644))
    assert (r / "a").read_text() == "new" and (r / "b").read_text() == "old"


def test_ownership_and_times_are_set_through_the_object(tmp_path, resolver):
    r = tmp_path / "r"
    r.mkdir()
    with Root(r) as root:
        root.write_file("/d/f", b"x", Meta(uid=7, gid=8, mode=0o4750, mtime_ns=1_000_000_000))
    st = os.stat(r / "d" / "f")
    if os.geteuid() == 0:
        assert (st.st_uid, st.st_gid) == (7, 8) and os.stat(r / "d").st_uid == 7
    assert st.st_mode & 0o7777 == 0o4750 and st.st_mtime_ns == 1_000_000_000  # setuid kept: chmod after chown


def test_copy_out_reads_a_symlink_inside_the_source_root(tmp_path, resolver, host_secret):
    """COPY --from=stage /x, /x -> an absolute path: the file copied is the stage's, not the host's."""
    src_dir = tmp_path / "stage"
    inside = src_dir / str(host_secret.path).lstrip("/")
    inside.parent.mkdir(parents=True)
    inside.write_bytes(b"the stage's own file")
    os.symlink(str(host_secret.path), src_dir / "x")
    dst_dir = tmp_path / "dst"
    dst_dir.mkdir()
    with Root(src_dir) as src, Root(dst_dir) as dst:
        TreeCopy(src, dst, Override(), []).copy(src.resolve("/x"), dst.fd, b"x", ())
    assert (dst_dir / "x").read_bytes() == b"the stage's own file"


def test_copy_out_keeps_symlinks_below_the_named_source(tmp_path, resolver, host_secret):
    src_dir = tmp_path / "stage"
    (src_dir / "d").mkdir(parents=True)
    os.symlink(str(host_secret.path), src_dir / "d" / "link")
    dst_dir = tmp_path / "dst"
    dst_dir.mkdir()
    with Root(src_dir) as src, Root(dst_dir) as dst:
        TreeCopy(src, dst, Override(), []).copy(src.resolve("/d"), dst.fd, b"d", ())
    assert os.readlink(dst_dir / "d" / "link") == str(host_secret.path)


@pytest.mark.parametrize("keep_links", [True, False])
def test_hard_links_inside_a_copied_source_stay_links_when_asked(tmp_path, resolver, keep_links):
    """COPY --from of cargo's target/release: `app` and `deps/app-<hash>` are one inode there and in
    the copy (BuildKit's copier); a link to a file outside the copied source is a file of its own."""
    src_dir = tmp_path / "stage"
    (src_dir / "release" / "deps").mkdir(parents=True)
    (src_dir / "release" / "deps" / "app-1f2e").write_bytes(b"\x7fELF app")
    os.link(src_dir / "release" / "deps" / "app-1f2e", src_dir / "release" / "app")
    (src_dir / "outside").write_bytes(b"o")
    os.link(src_dir / "outside", src_dir / "release" / "linked-out")
    dst_dir = tmp_path / "dst"
    (dst_dir / "app").mkdir(parents=True)
    (dst_dir / "app" / "app").write_bytes(b"replaced")   # what the link replaces
    with Root(src_dir) as src, Root(dst_dir) as dst:
        TreeCopy(src, dst, Override(keep_links=keep_links), []).copy(src.resolve("/release"), dst.fd, b"app", ())
    app, dep = os.lstat(dst_dir / "app" / "app"), os.lstat(dst_dir / "app" / "deps" / "app-1f2e")
    assert (app.st_ino == dep.st_ino) is keep_links and app.st_nlink == (2 if keep_links else 1)
    assert (dst_dir / "app" / "app").read_bytes() == b"\x7fELF app"
    assert os.lstat(dst_dir / "app" / "linked-out").st_nlink == 1


@pytest.mark.parametrize("openat2", [True, False], ids=["openat2", "walk"])
def test_a_symlink_swapped_in_while_operations_run_never_reaches_the_host(tmp_path, empty_host_dir, openat2):
    """A thread flips /d between a real directory and a symlink to a host dir, as fast as it can,
    while this thread writes, creates directories and removes through /d."""
    before = rootpath.use_openat2(openat2)
    r = tmp_path / "r"
    r.mkdir()
    stop = threading.Event()

    def flip() -> None:
        while not stop.is_set():
            try:
                os.rename(r / "d", r / "d-real")
            except OSError:
                pass
            try:
                os.symlink(str(empty_host_dir.path), r / "d-link")
                os.rename(r / "d-link", r / "d")
            except OSError:
                pass
            try:
                os.rename(r / "d-real", r / "d")
            except OSError:
                pass
            try:
                os.unlink(r / "d-link")
            except OSError:
                pass

    (r / "d").mkdir()
    swapper = threading.Thread(target=flip, daemon=True)
    swapper.start()
    try:
        with Root(r) as root:
            for i in range(400):
                for op in (lambda i=i: root.write_file(f"/d/f{i % 7}", b"pwned", Meta(mode=0o644)),
                           lambda i=i: root.makedirs(f"/d/dir{i % 5}/sub", Meta(mode=0o755)),
                           lambda i=i: root.remove(f"/d/f{(i + 3) % 7}")):
                    try:
                        op()
                    except OSError:
                        pass
    finally:
        stop.set()
        swapper.join()
        rootpath.use_openat2(before)
    empty_host_dir.assert_empty()


# -- nothing else in builder/ touches a rootfs by path ------------------------------------------------

_PATH_CALLS = {("os", n) for n in ("open chown lchown chmod mkdir makedirs unlink remove symlink link utime rmdir "
                                   "rename replace listdir scandir walk mknod mkfifo readlink stat lstat truncate "
                                   "setxattr removexattr").split()}
_PATH_CALLS |= {("shutil", n) for n in "copy copy2 copyfile copytree rmtree move copymode copystat chown".split()}
_PATH_CALLS |= {("fsutil", "remove_tree"), ("fsutil", "copy_tree")}
_PATH_METHODS = set(("write_text write_bytes read_text read_bytes mkdir unlink rmdir iterdir is_symlink is_dir "
                     "is_file exists touch chmod symlink_to hardlink_to rglob").split())

# The modules that own file operations on a rootfs: builder/rootfs_ops.py and its resolver; the layer
# unpacker and the snapshot, which work through the fds rootpath hands them; the layer store, which
# walks a layer dir only while nothing else can write it (being unpacked by kade, or a committed upper
# dir whose RUN's processes are gone) and never follows a symlink (lstat, then descend into directories),
# and its normalizer (run in a child process beside the layer writer).
OWNERS = {"rootfs_ops.py", "rootpath.py", "unpack.py", "snapshot.py", "layerstore.py", "layernorm.py"}
# Modules never given a path inside a rootfs, and why.
NO_ROOTFS = {
    "cache.py": "the local cache's own directories", "fetch.py": "downloads into the cache",
    "rootfs.py": "whole trees of the store, copied with cp -a and renamed (never followed)",
    "stageroot.py": "the layer store's and work dirs' own directories; a rootfs only through the views it "
                    "hands rootfs_ops, and `cp -a` of a whole view for --keep-failed",
    "context.py": "the build context (checked to stay inside it), not a rootfs",
    "digests.py": "the build context's files context.py chose, and the kept digests' file in the local cache",
    "linux.py": "/proc/self of kade's own process", "dockerfile.py": "the Dockerfile",
    "netns.py": "the host's network settings (/etc/resolv.conf, /proc/sys, /run/kade/net)",
    "subids.py": "/etc/subuid, /etc/subgid and kade's lock files",
    "layer.py": "the change sources the snapshot and rootfs_ops resolved (see docs/security.md)",
    "backends/agent_relay.py": "sockets it is handed", "backends/podstage.py": "the pod's work dir and secrets",
    "backends/context_upload.py": "the context and the pod's fresh context dir",
    "build.py": "no files but the umask", "emulation.py": "the host's /proc/sys/fs/binfmt_misc and binfmt.d files", "store.py": "blobs and layouts of the local cache",
    "local.py": "blobs, work dirs and cache-mount dirs of the local cache (rootfs trees: rootfs.py, execute.py)",
    "reproducible.py": "the OCI layouts of its two builds",
    "attest.py": "blobs of the local cache", "provenance.py": "no files at all",
    **{f"sbom/{m}.py": "layer blobs read as tar streams, and its own state in the cache"
       for m in ("documents", "golang", "licenses", "packages", "walk")},
}
# In the modules that do work on rootfs trees, the path calls that are not on one, and why.
ALLOWED = {
    ("execute.py", "apply_layers", "open"): "a layer blob in the cache",
    ("execute.py", "run_step", "fsutil.remove_tree"): "kade's scratch and view dirs beside the rootfs",
    ("execute.py", "context_view", ".mkdir"): "the views dir kade makes",
    ("execute.py", "context_view", "os.listdir"): "an fd of the views dir",
    ("execute.py", "_extract_archive", "os.utime"): "an fd of the target",
    ("execute.py", "_copy_item", "os.utime"): "fds: the downloaded file's, the parent directory's",
    ("execute.py", "_cache_mount", ".iterdir"): "a cache mount's dir in the local cache",
    ("execute.py", "_cache_mount", "os.rmdir"): "a cache mount's dir in the local cache",
    ("execute.py", "_cache_mount", "os.chmod"): "a cache mount's dir in the local cache",
    ("execute.py", "_cache_mount", "os.chown"): "a cache mount's dir in the local cache",
    ("backends/chroot.py", "_save_cache", "os.rmdir"): "a temp dir beside the cache dir",
    ("backends/chroot.py", "_save_cache", "fsutil.remove_tree"): "cache dirs kade owns",
    ("backends/chroot.py", "_save_cache", "os.rename"): "cache dirs kade owns",
    ("backends/chroot.py", "run_chroot", ".mkdir"): "the cache dir on the cache volume",
    ("sandbox.py", "_resolv_conf", ".read_text"): "the host's /etc/resolv.conf",
    ("backends/remote.py", "RemoteExecutor._upload_source", ".unlink"): "the context tar kade packed in its temp dir",
    ("sandbox.py", "prepare_call", ".is_dir"): "the rootfs directory itself",
    ("sandbox.py", "_prepare", ".write_text"): "the sandbox's private temp dir",
    ("sandbox.py", "_prepare", ".mkdir"): "the private temp dir and cache dirs",
    ("sandbox.py", "_prepare", ".exists"): "a cache dir",
    ("sandbox.py", "_prepare", "os.chmod"): "a new cache dir",
    ("sandbox.py", "_prepare", "os.chown"): "a new cache dir",
    ("sandbox.py", "_bind_source", ".exists"): "a bind source resolved inside its root",
    ("sandbox.py", "_bind_source", ".is_dir"): "a bind source resolved inside its root",
    ("sandbox.py", "_bind_source", "fsutil.copy_tree"): "a resolved bind source into the private dir",
    ("sandbox.py", "_bind_source", "shutil.copy2"): "a resolved bind source into the private dir",
    ("sandbox.py", "_layered_source", ".mkdir"): "a mount point in the sandbox's private dir",
    ("sandbox.py", "run_in_rootfs", "fsutil.remove_tree"): "the private temp dir",
    ("sandbox.py", "_Staging.place", ".mkdir"): "mount points in the sandbox's private dir",
    ("sandbox.py", "_Staging.place", ".touch"): "mount points in the sandbox's private dir",
    ("sandbox.py", "_private_dir", ".mkdir"): "/run/kade/sandbox, kade's own",
    ("sandbox.py", "_private_dir", "os.chmod"): "/run/kade/sandbox, kade's own",
    ("sandbox.py", "_sweep_private_dirs", ".exists"): "dirs under /run/kade/sandbox left by a dead kade",
    ("sandbox.py", "_sweep_private_dirs", "fsutil.remove_tree"): "dirs under /run/kade/sandbox left by a dead kade",
    ("sandbox_init.py", "_setup", "os.open"): "the sandbox's fresh /dev tmpfs",
    ("sandbox_init.py", "_setup", "os.mkdir"): "the sandbox's fresh /dev tmpfs",
    ("sandbox_init.py", "_setup", "os.symlink"): "the sandbox's fresh /dev tmpfs",
    ("sandbox_init.py", "_mount_one", "os.open"): "a secret on the sandbox's staging tmpfs",
    ("sandbox_init.py", "_map_ids", "open"): "/proc/<pid>/{uid,gid}_map of its own child",
    ("sandbox_init.py", "_idmap", "os.open"): "/proc/<pid>/ns/user of its own child",
    ("sandbox_init.py", "_plug", ".exists"): "/proc and /sys/class/net entries of its own network namespace",
    ("sandbox_init.py", "_plug", "open"): "/proc/sys of its own network namespace",
    ("sandbox_init.py", "_init", "os.makedirs"): "the working directory, inside the sandbox after pivot_root (its own view)",
}


def path_calls(path: Path) -> list[tuple[str, str, int]]:
    """(qualified function, call, line) of every call that names a file by path (not through an fd)."""
    found: list[tuple[str, str, int]] = []
    scope: list[str] = []

    class Visitor(ast.NodeVisitor):
        def visit_FunctionDef(self, node):  # noqa: N802
            scope.append(node.name)
            self.generic_visit(node)
            scope.pop()

        visit_ClassDef = visit_FunctionDef  # noqa: N815

        def visit_Call(self, node):  # noqa: N802
            f, name = node.func, None
            by_fd = any(k.arg in ("dir_fd", "src_dir_fd") for k in node.keywords)
            if isinstance(f, ast.Name) and f.id == "open":
                name = "open"
            elif isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and \
                    (f.value.id, f.attr) in _PATH_CALLS and not by_fd:
                name = f"{f.value.id}.{f.attr}"
            elif isinstance(f, ast.Attribute) and f.attr in _PATH_METHODS and not (
                    isinstance(f.value, ast.Name) and f.value.id in ("os", "shutil", "self")):
                name = "." + f.attr
            if name:
                found.append((".".join(s for s in scope if s), name, node.lineno))
            self.generic_visit(node)

    Visitor().visit(ast.parse(path.read_text(), str(path)))
    return found


def test_no_module_touches_a_rootfs_by_path():
    modules = sorted(str(p.relative_to(ROOT / "builder")) for p in (ROOT / "builder").rglob("*.py")
                     if p.name != "__init__.py")
    seen = set()
    for rel in modules:
        if rel in OWNERS or rel in NO_ROOTFS:
            continue
        for func, call, line in path_calls(ROOT / "builder" / rel):
            key = (rel, func, call)
            seen.add(key)
            assert key in ALLOWED, (f"builder/{rel}:{line} {func}() calls {call} on a path: go through "
                                    "builder/rootfs_ops.py, or list it in ALLOWED with why it is no rootfs path")
    stale = set(ALLOWED) - seen
    assert not stale, f"ALLOWED lists calls that are gone: {sorted(stale)}"
    unknown = [m for m in modules if m not in OWNERS and m not in NO_ROOTFS and not path_calls(ROOT / "builder" / m)]
    assert "plan.py" in unknown  # the scan ran over modules with no path calls too


def _chain(top: Path, depth: int) -> None:
    """`top`/d/d/.../d/leaf, `depth` directories deep, made through fds (no long paths)."""
    fd = os.open(top, os.O_RDONLY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            sub = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = sub
        os.close(os.open("leaf", os.O_CREAT | os.O_WRONLY, dir_fd=fd))
    finally:
        os.close(fd)


@pytest.fixture
def low_file_limit():
    """A soft limit of 256 open files for the test (systemd's default for services is 1,024)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_tree_copy_and_removal_go_deeper_than_pythons_recursion_limit(tmp_path):
    import sys

    from builder.rootfs_ops import remove_entry

    (tmp_path / "src" / "x").mkdir(parents=True)
    (tmp_path / "dst").mkdir()
    depth = sys.getrecursionlimit() + 200
    with Root(tmp_path / "src") as src, Root(tmp_path / "dst") as dst:
        try:
            _chain(tmp_path / "src" / "x", depth)
            written: list = []
            TreeCopy(src, dst, Override(), written).copy(src.resolve("/x"), dst.fd, b"y", ())
            assert len(written) == depth + 2 and written[-1] == (b"y",) + (b"d",) * depth + (b"leaf",)
            remove_entry(dst.fd, b"y")
            assert os.listdir(tmp_path / "dst") == []
        finally:
            for root in (src, dst):   # (pytest's own clean-up recurses)
                for name in os.listdir(root.fd):
                    remove_entry(root.fd, name)


def test_tree_copy_holds_fds_only_along_its_path(tmp_path, low_file_limit):
    """3,000 directories (a node_modules) copied under a 256-file limit: each is closed once copied."""
    for i in range(3000):
        (tmp_path / "src" / "t" / f"m{i // 100}" / f"n{i}").mkdir(parents=True)
    (tmp_path / "dst").mkdir()
    os.utime(tmp_path / "src" / "t" / "m7", (1_600_000_000, 1_600_000_000))
    with Root(tmp_path / "src") as src, Root(tmp_path / "dst") as dst:
        TreeCopy(src, dst, Override(), []).copy(src.resolve("/t"), dst.fd, b"t", ())
    assert len(list((tmp_path / "dst" / "t").glob("*/*"))) == 3000
    assert os.stat(tmp_path / "dst" / "t" / "m7").st_mtime == 1_600_000_000   # a directory's time after its children
