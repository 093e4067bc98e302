"""What a RUN changed in a rootfs, as a list of `Change`s for builder/layer.py.

Two methods, same result:
- "overlay": the rootfs becomes the read-only lowerdir of an overlay mount; the command runs in the
  merged view and the upper directory *is* the diff (overlay whiteouts — char devices 0/0 — become
  deletions, `trusted.overlay.opaque=y` directories (user.overlay.opaque in a user namespace) become
  opaque whiteouts). Directories copied up
  only because something below them changed are dropped when their metadata equals the lower's, so the
  change set matches the stat method. Mounted with redirect_dir=off and metacopy=off so the upper
  directory always holds whole files and whole renamed directories.
- "stat": walk the tree before and after (lstat only: mode, uid, gid, size, mtime_ns, ctime_ns, inode,
  rdev — a changed xattr, link target or content changes ctime/inode too; directories compare their
  xattrs instead of ctime and size); no file is read or hashed.
  A directory whose inode changed was replaced (`rm -rf d && mkdir d`) and becomes opaque.

Both methods follow BuildKit's differ (containerd's): a directory whose only change is its times (an
entry made and removed in it: `/tmp`, apt's `/var/lib/dpkg/updates`) is no change of its own. It goes
into the layer only as the parent of a change, with its new times; otherwise it is left out, and
`commit()` leaves the rootfs with its old times, so the rootfs is always its base plus its layers.

With `in_sandbox=True` the overlay is not mounted here: `cap.overlay` describes it (lower, upper,
work, merged) and the RUN sandbox mounts it inside its own mount namespace (builder/sandbox.py), where
a user namespace can do it over idmapped layers; `cap.root` is then the rootfs itself. The upper
directory is read on the host afterwards as before.

Usage (the caller writes the layer before leaving the block):

    with capture(rootfs, scratch, in_sandbox=True) as cap:
        run_in_rootfs(cap.root, ..., overlay=cap.overlay)
        changes = cap.changes()
        info = write_layer(changes, out)
        cap.commit()          # make `rootfs` itself hold the result (a no-op for "stat")

When nothing reads the rootfs after the step (the build's last filesystem step), call
`cap.abandon()` instead of `commit()`: the upper directory is neither merged nor deleted (merging
20,000 new files costs about as much as writing their layer); the caller disposes of `scratch`, e.g.
with the work dir it lives in. `rootfs` then still holds the state from before the step.
"""
from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, Iterable, Iterator, Literal, NamedTuple

from builder.changes import Change, split_path
from builder.errors import BuildError
from builder.layer import read_xattrs, write_layer
from builder.linux import MNT_DETACH, mount, umount
from builder.rootpath import open_dir, open_root
from builder.unpack import Limits, apply_layer, remove_entry
from common import fsutil

Method = Literal["auto", "overlay", "stat"]
StatKey = tuple[int, int, int, int, int, int, int, int]  # mode uid gid size mtime_ns ctime_ns ino rdev
# (for a directory: size and rdev 0, and a hash of its xattrs in place of ctime_ns — see _key)
_OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")


class SnapshotError(BuildError):
    """The filesystem diff after a step could not be taken."""


@dataclass
class TreeState:
    """lstat of every path under a root, by relative path (bytes); the root itself excluded."""
    entries: dict[bytes, StatKey]


def _dir_xattrs(path: bytes) -> int:
    try:
        names = sorted(os.listxattr(path, follow_symlinks=False))
    except OSError:
        return 0
    if not names:
        return 0
    digest = hashlib.sha256(repr([(n, os.getxattr(path, n, follow_symlinks=False)) for n in names]).encode())
    return int.from_bytes(digest.digest()[:8], "big")


def _key(st: os.stat_result, path: bytes) -> StatKey:
    if stat.S_ISDIR(st.st_mode):
        # A directory's ctime and size move when an entry is created and removed again (e.g. a
        # sandbox mountpoint, its mtime restored): compare its xattrs instead of its ctime.
        return (st.st_mode, st.st_uid, st.st_gid, 0, st.st_mtime_ns, _dir_xattrs(path), st.st_ino, 0)
    return (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_rdev)


def scan(root: bytes, skip: frozenset[bytes] = frozenset()) -> Iterator[tuple[bytes, os.DirEntry, os.stat_result]]:
    """(relative path, entry, lstat) of everything under `root`, depth first, not following symlinks."""
    stack = [b""]
    while stack:
        rel = stack.pop()
        with os.scandir(os.path.join(root, rel) if rel else root) as it:
            for entry in it:
                path = rel + b"/" + entry.name if rel else entry.name
                if path in skip:
                    continue
                st = entry.stat(follow_symlinks=False)
                yield path, entry, st
                if stat.S_ISDIR(st.st_mode):
                    stack.append(path)


def walk(root: str | os.PathLike[str], exclude: Iterable[str] = ()) -> TreeState:
    """The stat state of the tree under `root` (not following symlinks, not crossing into `exclude`)."""
    skip = frozenset(os.fsencode(p.strip("/")) for p in exclude)
    return TreeState({path: _key(st, entry.path) for path, entry, st in scan(os.fsencode(root), skip)})


def _parent(path: bytes) -> bytes:
    return path.rpartition(b"/")[0]


def _under_any(path: bytes, dirs: set[bytes]) -> bool:
    if not dirs:
        return False
    while path:
        path = _parent(path)
        if path in dirs:
            return True
    return False


def diff(before: TreeState, after: TreeState, root: str | os.PathLike[str]) -> list[Change]:
    """Changes that turn the `before` tree into the `after` tree (files read from `root`)."""
    root_s = os.fsdecode(os.fsencode(root))
    old, new = before.entries, after.entries
    replaced = {p for p, k in new.items()
                if stat.S_ISDIR(k[0]) and p in old and stat.S_ISDIR(old[p][0]) and old[p][6] != k[6]}
    changes: list[Change] = []
    touched: list[Change] = []
    for path, key in new.items():
        was = old.get(path)
        if was != key or _under_any(path, replaced):
            change = Change(os.fsdecode(path), "add", os.path.join(root_s, os.fsdecode(path)))
            (touched if _times_only(was, key) and not _under_any(path, replaced) else changes).append(change)
        if path in replaced:
            changes.append(Change(os.fsdecode(path), "opaque"))
    for path in old:
        if path in new:
            continue
        parent = _parent(path)
        parent_key = new.get(parent) if parent else None
        parent_is_dir = not parent or (parent_key is not None and stat.S_ISDIR(parent_key[0]))
        parent_was_dir = not parent or (parent in old and stat.S_ISDIR(old[parent][0]))
        if parent_is_dir and parent_was_dir and not _under_any(path, replaced):
            changes.append(Change(os.fsdecode(path), "delete"))
    return with_touched_parents(changes, touched)


def _times_only(old: StatKey | None, new: StatKey) -> bool:
    """Whether a directory's stat key changed in its mtime only (index 4; a directory's key has no ctime)."""
    return old is not None and stat.S_ISDIR(new[0]) and stat.S_ISDIR(old[0]) and old[:4] == new[:4] \
        and old[5:] == new[5:]


def with_touched_parents(changes: list[Change], touched: list[Change]) -> list[Change]:
    """`changes` plus those of the `touched` directories (changed in their times only) that hold one of
    them: BuildKit's differ writes a changed entry's parents with their current metadata and leaves out
    a directory whose only change is its times."""
    if not touched:
        return changes
    parents: set[str] = set()
    for change in changes:
        path = change.path
        while "/" in path:
            path = path.rpartition("/")[0]
            if path in parents:
                break
            parents.add(path)
    return changes + [t for t in touched if t.path in parents]


def upper_changes(upper: str | os.PathLike[str], lower: str | os.PathLike[str],
                  opaque: tuple[str, ...] = _OPAQUE_XATTRS) -> list[Change]:
    """Changes recorded in an overlayfs upper directory over `lower`; `opaque`: the xattrs that mark an
    opaque directory for the overlay that wrote it (a layered rootfs' overlays use only user.*)."""
    return upper_diff(upper, lower, opaque).changes


class UpperDiff(NamedTuple):
    changes: list[Change]
    left_out: list[Change]   # dirs changed in their times only, holding no change
    sockets: list[str]       # no change: a layer holds no socket


def upper_diff(upper: str | os.PathLike[str], lower: str | os.PathLike[str],
               opaque: tuple[str, ...] = _OPAQUE_XATTRS) -> UpperDiff:
    """`upper_changes`, the directories of the upper left out of them (changed in their times only and
    holding no change), and its sockets: an upper dir that is kept as a layer must give those directories
    their old times back and lose its sockets."""
    upper_b, lower_b = os.fsencode(upper), os.fsencode(lower)
    changes: list[Change] = []
    touched: list[Change] = []
    sockets: list[str] = []
    fresh: set[bytes] = set()   # dirs that hide the lower's (new, opaque): nothing below them is looked up there
    for path, entry, st in scan(upper_b):
        full = entry.path
        if stat.S_ISREG(st.st_mode):   # most entries: the fast way
            changes.append(Change.scanned(path, full, st))
            continue
        name = os.fsdecode(path)
        if stat.S_ISSOCK(st.st_mode):
            sockets.append(name)
        elif stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            changes.append(Change(name, "delete"))
        elif not stat.S_ISDIR(st.st_mode):
            changes.append(Change.scanned(path, full, st))
        elif _parent(path) in fresh:   # the lower's path may cross a symlink the RUN replaced
            fresh.add(path)
            changes.append(Change(name, "add", os.fsdecode(full)))
        elif _is_opaque(full, opaque) and _is_real_dir(os.path.join(lower_b, path)):
            fresh.add(path)
            changes.append(Change(name, "add", os.fsdecode(full)))
            changes.append(Change(name, "opaque"))  # only when there are lower children to hide
        else:
            change = _dir_change(st, full, os.path.join(lower_b, path))
            if change == "new":
                fresh.add(path)
            if change != "none":
                (touched if change == "times" else changes).append(Change(name, "add", os.fsdecode(full)))
    kept = with_touched_parents(changes, touched)
    parents = {c.path for c in kept[len(changes):]}
    return UpperDiff(kept, [t for t in touched if t.path not in parents], sockets)


def _is_real_dir(path: bytes) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _is_opaque(path: bytes, names: tuple[str, ...] = _OPAQUE_XATTRS) -> bool:
    for name in names:
        try:
            if os.getxattr(path, name, follow_symlinks=False) == b"y":
                return True
        except OSError:
            continue
    return False


def _dir_change(st: os.stat_result, upper_path: bytes, lower_path: bytes) -> Literal["new", "meta", "times", "none"]:
    """How a directory of the upper differs from the lower's: "new" (none there, or not a directory),
    "meta" (mode, owner or kept xattrs), "times" (its mtime only), "none" (copied up only because
    something below it changed)."""
    try:
        low = os.lstat(lower_path)
    except FileNotFoundError:
        return "new"
    if not stat.S_ISDIR(low.st_mode):
        return "new"
    if (st.st_mode, st.st_uid, st.st_gid) != (low.st_mode, low.st_uid, low.st_gid) or \
            read_xattrs(upper_path) != read_xattrs(lower_path):
        return "meta"
    return "none" if st.st_mtime_ns == low.st_mtime_ns else "times"


def _merge_key(change: Change) -> tuple[bytes, ...]:
    parts = change.parts
    return parts + (b"",) if change.kind == "opaque" else parts   # opaque right after its dir


def _lstat_at(dir_fd: int, name: bytes) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def merge_upper(changes: list[Change], upper: str | os.PathLike[str], rootfs: str | os.PathLike[str]) -> None:
    """Apply an overlay upper directory's `changes` onto its lower `rootfs` by renaming files (same
    filesystem: no data copied). Parents resolve inside the rootfs; final components are never
    followed; directories get the upper's metadata and untouched parents keep their times. The
    upper directory is consumed."""
    as_root = os.geteuid() == 0
    root_fd, upper_fd = open_root(rootfs), open_root(upper)
    dirs: list[tuple[tuple[bytes, ...], os.stat_result, dict[str, bytes]]] = []
    parent_times: dict[tuple[bytes, ...], tuple[int, int]] = {}
    try:
        for change in sorted(changes, key=_merge_key):
            parts = change.parts
            parent = open_dir(root_fd, parts[:-1], create=True)
            try:
                if parts[:-1] not in parent_times:
                    pst = os.fstat(parent)
                    parent_times[parts[:-1]] = (pst.st_atime_ns, pst.st_mtime_ns)
                _merge_one(change, parts, parent, upper_fd, dirs, as_root)
            finally:
                os.close(parent)
        changed_dirs = {parts for parts, _, _ in dirs}
        for parts, (atime, mtime) in parent_times.items():
            if parts not in changed_dirs:
                _set_dir_meta(root_fd, parts, times=(atime, mtime))
        for parts, st, xattrs in reversed(dirs):
            _set_dir_meta(root_fd, parts, st=st, xattrs=xattrs, as_root=as_root)
    finally:
        os.close(root_fd)
        os.close(upper_fd)


def _merge_one(change: Change, parts: tuple[bytes, ...], parent: int, upper_fd: int,
               dirs: list[tuple[tuple[bytes, ...], os.stat_result, dict[str, bytes]]], as_root: bool) -> None:
    name = parts[-1]
    existing = _lstat_at(parent, name)
    if change.kind == "delete":
        if existing is not None:
            remove_entry(parent, name, as_root=as_root)
        return
    if change.kind == "opaque":
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        try:
            for child in os.listdir(fd):
                remove_entry(fd, child, as_root=as_root)
        finally:
            os.close(fd)
        return
    src_parent = open_dir(upper_fd, parts[:-1])
    try:
        st = os.stat(name, dir_fd=src_parent, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            if existing is not None and not stat.S_ISDIR(existing.st_mode):
                remove_entry(parent, name, as_root=as_root)
                existing = None
            if existing is None:
                os.mkdir(name, 0o700, dir_fd=parent)
            dirs.append((parts, st, read_xattrs(b"/proc/self/fd/%d/" % src_parent + name)))
            return
        if existing is not None:
            remove_entry(parent, name, as_root=as_root)
        os.rename(name, name, src_dir_fd=src_parent, dst_dir_fd=parent)
        if not stat.S_ISLNK(st.st_mode):
            _drop_overlay_xattrs(b"/proc/self/fd/%d/" % parent + name)
    finally:
        os.close(src_parent)


def _drop_overlay_xattrs(path: bytes) -> None:
    """Copy-up bookkeeping (trusted.overlay.origin, ...) means nothing once the file is in the lower."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return
    for xname in names:
        if xname.startswith(("trusted.overlay.", "user.overlay.")):
            try:
                os.removexattr(path, xname, follow_symlinks=False)
            except OSError:
                pass


def _set_dir_meta(root_fd: int, parts: tuple[bytes, ...], *, st: os.stat_result | None = None,
                  xattrs: dict[str, bytes] | None = None, as_root: bool = False,
                  times: tuple[int, int] | None = None) -> None:
    try:
        fd = open_dir(root_fd, parts, follow_last=False) if parts else os.dup(root_fd)
    except OSError:
        return
    try:
        if st is not None:
            if as_root:
                os.fchown(fd, st.st_uid, st.st_gid)
            os.fchmod(fd, stat.S_IMODE(st.st_mode))
            for key, value in (xattrs or {}).items():
                os.setxattr(fd, key, value)
            times = (st.st_atime_ns, st.st_mtime_ns)
        if times is not None:
            os.utime(fd, ns=times)
    finally:
        os.close(fd)


def in_user_namespace(uid_map: str | None = None) -> bool:
    """Whether this process runs in a user namespace other than the host's (e.g. a `hostUsers: false` pod)."""
    if uid_map is None:
        try:
            uid_map = Path("/proc/self/uid_map").read_text()
        except OSError:
            return False
    return uid_map.split() != ["0", "0", "4294967295"]


def overlay_options(lower: Path, upper: Path, work: Path, userns: bool) -> str:
    """Mount options of a step's overlay. In a user namespace overlay cannot use trusted.* xattrs:
    `userxattr` keeps its bookkeeping (opaque dirs) in user.overlay.*, and redirects must be
    `nofollow` (the kernel refuses redirect_dir=off, which means follow, with userxattr)."""
    redirect = "userxattr,redirect_dir=nofollow" if userns else "redirect_dir=off"
    return f"lowerdir={lower},upperdir={upper},workdir={work},{redirect},metacopy=off,index=off"


@dataclass(frozen=True)
class OverlaySpec:
    """A step's overlay for the sandbox (builder/sandbox.py): `lowers` topmost first, the upper and
    work dirs and the mount point, all in `scratch`; `view` opens a host-side writable view of the
    same overlay (None: lowers[0] is a plain directory that holds the rootfs, and is written)."""
    lowers: tuple[str, ...]
    upper: str
    work: str
    merged: str
    scratch: str
    view: Callable[[], ContextManager[str | os.PathLike[str]]] | None = None


class Capture:
    """One step's view of a rootfs; see the module docstring."""

    def __init__(self, rootfs: Path, scratch: Path, method: str, before: TreeState | None,
                 exclude: tuple[str, ...], in_sandbox: bool = False):
        self.rootfs = rootfs
        self.scratch = scratch
        self.method = method
        self.exclude = exclude
        self.root = rootfs
        self.state_after: TreeState | None = None
        self._before = before
        self._mounted = False
        self._changes: list[Change] | None = None
        self._abandoned = False
        self.overlay: OverlaySpec | None = None
        if method == "overlay":
            if any(c in os.fspath(p) for p in (rootfs, scratch) for c in ",:"):
                raise OSError(f"overlay mount options cannot hold ',' or ':' in {rootfs} / {scratch}")
            self._upper, self._work, merged = scratch / "upper", scratch / "work", scratch / "merged"
            for d in (self._upper, self._work, merged):
                d.mkdir(parents=True, exist_ok=True)
            if in_sandbox:
                self.overlay = OverlaySpec(lowers=(str(rootfs),), upper=str(self._upper), work=str(self._work),
                                           merged=str(merged), scratch=str(scratch))
            else:
                self.root = merged
                mount("overlay", self.root, "overlay", 0,
                      overlay_options(rootfs, self._upper, self._work, in_user_namespace()))
                self._mounted = True
        elif self._before is None:
            self._before = walk(rootfs, exclude)

    def _unmount(self) -> None:
        if self._mounted:
            umount(self.root, MNT_DETACH)
            self._mounted = False

    def changes(self) -> list[Change]:
        """The changes since the capture began (call after the command finished)."""
        if self._changes is None:
            if self.method == "overlay":
                self._unmount()
                self._changes = [c for c in upper_changes(self._upper, self.rootfs)
                                 if not _excluded(c.path, self.exclude)]
            else:
                assert self._before is not None
                self.state_after = walk(self.rootfs, self.exclude)
                self._changes = diff(self._before, self.state_after, self.rootfs)
        return self._changes

    def commit(self) -> None:
        """Make `rootfs` hold the result of the step (overlay: apply the upper directory onto it; stat:
        give the directories left out of the layer their old times back)."""
        changes = self.changes()
        if self.method != "overlay":
            self._restore_touched(changes)
            return
        if not changes:
            return
        if os.stat(self._upper).st_dev == os.stat(self.rootfs).st_dev:
            try:
                merge_upper(changes, self._upper, self.rootfs)
            except OSError as exc:
                raise SnapshotError(f"cannot move the step's changes from {self._upper} into {self.rootfs}: "
                                    f"{exc}; the rootfs is now inconsistent — discard it") from None
            return
        with tempfile.TemporaryFile(dir=self.scratch) as tmp:   # another filesystem: copy through a tar
            write_layer(changes, tmp, "none")
            tmp.seek(0)
            apply_layer(tmp, self.rootfs, digest="(overlay commit)", allow_devices=os.geteuid() == 0,
                        limits=Limits())  # our own RUN output: the defaults, not $KADE_LAYER_MAX_*

    def _restore_touched(self, changes: list[Change]) -> None:
        """Stat method: directories whose times changed but that the layer leaves out get their old
        mtime back (and `state_after` says so), as a rebuild from the layers would have them."""
        assert self._before is not None and self.state_after is not None
        old, new = self._before.entries, self.state_after.entries
        added = {os.fsencode(c.path) for c in changes if c.kind == "add"}
        left_out = [p for p, k in new.items() if p in old and old[p] != k and p not in added and _times_only(old[p], k)]
        if not left_out:
            return
        root_fd = open_root(self.rootfs)
        try:
            for path in left_out:
                mtime = old[path][4]
                _set_dir_meta(root_fd, split_path(os.fsdecode(path)), times=(mtime, mtime))
                new[path] = old[path]
        finally:
            os.close(root_fd)

    def abandon(self) -> None:
        """Leave `rootfs` at its state before the step and keep the upper directory where it is (not
        merged, not deleted): for a step whose result nobody reads from this rootfs. The caller removes
        `scratch` (a no-op for "stat", whose changes are in `rootfs` already)."""
        self._unmount()
        self._abandoned = True

    def close(self) -> None:
        self._unmount()
        if self.method == "overlay" and not self._abandoned:
            _clean_overlay_dirs(self.scratch)


def _excluded(path: str, exclude: tuple[str, ...]) -> bool:
    path = path.strip("/")
    return any(path == e or path.startswith(e + "/") for e in exclude)


def _clean_overlay_dirs(scratch: Path) -> None:
    for name in ("upper", "work", "merged"):
        fsutil.remove_tree(scratch / name)


def overlay_available(scratch: str | os.PathLike[str]) -> bool:
    """Whether an overlay mount works here (root or suitable privileges, a filesystem that allows it)."""
    probe = Path(tempfile.mkdtemp(prefix="kade-ovl-probe-", dir=scratch))
    try:
        lower = probe / "lower"
        lower.mkdir()
        cap = Capture(lower, probe, "overlay", None, ())
        cap.close()
        return True
    except OSError:
        return False
    finally:
        fsutil.remove_tree(probe)


@contextmanager
def capture(rootfs: str | os.PathLike[str], scratch: str | os.PathLike[str], method: Method = "auto", *,
            before: TreeState | None = None, exclude: Iterable[str] = (), in_sandbox: bool = False) -> Iterator[Capture]:
    """Track what happens to `rootfs` inside the block. `scratch` is a private directory on a filesystem
    that can hold an overlay upper/work dir; `before` may pass the previous step's `state_after` to save
    a walk with the stat method. With `in_sandbox`, an overlay is left for the sandbox to mount
    ("auto" then means overlay: the sandbox says when it can't mount one)."""
    root, scratch_p = Path(rootfs), Path(scratch)
    scratch_p.mkdir(parents=True, exist_ok=True)
    excluded = tuple(p.strip("/") for p in exclude)
    try:
        cap = Capture(root, scratch_p, "overlay" if method == "auto" else method, before, excluded, in_sandbox)
    except OSError as exc:
        if method != "auto":
            raise SnapshotError(f"cannot track changes of {root} with {method}: {exc}; "
                                "use the stat method where overlay mounts are not allowed") from None
        _clean_overlay_dirs(scratch_p)
        cap = Capture(root, scratch_p, "stat", before, excluded)  # no overlay here (pod, odd filesystem)
    try:
        yield cap
    finally:
        cap.close()
