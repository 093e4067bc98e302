"""Every host-side file operation on a rootfs, confined to it.

A rootfs is hostile: its image or a RUN may have put any symlink anywhere in it. So no operation
here hands the kernel a host path that runs through the rootfs. A `Root` holds a directory fd; every
image path is resolved inside it as if it were `/` (builder/rootpath.py: openat2 RESOLVE_IN_ROOT, or
an O_NOFOLLOW walk), and the operation runs on the resolved parent's fd with the last component
never followed: `*at` calls without following, creation with O_CREAT|O_EXCL|O_NOFOLLOW, ownership,
mode and times set through an fd of the object itself. A replaced entry is removed and created anew,
so a write never lands in another hard link of the old inode.

The same rules serve every tree a build treats as a root: a stage's rootfs, an image's unpacked
tree, a cache mount, the build context. `TreeCopy` copies out of one Root into another, a symlink in
the source resolving inside the *source* root (never on the host). Nothing else in builder/ opens a
rootfs path by name (tests/unit/test_rootfs_ops.py greps for it); the layer unpacker and the snapshot
work on the fds that builder/rootpath.py hands them.
"""
from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from builder.layernorm import keep_xattr
from builder.rootpath import MAX_SYMLINKS, fd_path, lexical, open_dir, open_root, openat2_in_root, split

Parts = tuple[bytes, ...]
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK   # NONBLOCK: a FIFO never hangs us
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Meta:
    """What a created or copied entry gets: owner, permission bits (None: keep the source's) and
    modification time in ns (None: leave the kernel's)."""
    uid: int = 0
    gid: int = 0
    mode: int | None = None
    mtime_ns: int | None = None


def image_path(parts: Parts) -> str:
    """`parts` as a layer path (relative, '/'-separated)."""
    return os.fsdecode(b"/".join(parts))


class Root:
    """A directory treated as `/`: open it once, then work by image paths or resolved parts."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.fd = open_root(path)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "Root":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- resolution ------------------------------------------------------------------------------
    def resolve(self, path: str | bytes | Parts) -> Parts:
        """The components of `path` with every symlink (the last one included) followed inside the
        root, relative to it. What does not exist is kept as written (as Go's fs.RootPath does):
        only the part below the first missing component may be missing."""
        parts = lexical(split(path) if isinstance(path, (str, bytes)) else path)
        for _ in range(MAX_SYMLINKS):
            if not parts:
                return ()
            try:
                with self._dir(parts[:-1]) as (parent, base):
                    try:
                        st = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
                    except FileNotFoundError:
                        return base + parts[-1:]
                    if not stat.S_ISLNK(st.st_mode):
                        return base + parts[-1:]
                    link = os.readlink(parts[-1], dir_fd=parent)
            except FileNotFoundError:
                return self._resolve_missing(parts)
            parts = lexical(tuple(split(link)) if link.startswith(b"/") else base + tuple(split(link)))
        raise OSError(errno.ELOOP, "too many levels of symbolic links", os.fsdecode(b"/".join(parts)))

    def _resolve_missing(self, parts: Parts) -> Parts:
        """`parts` whose directory is missing: the longest prefix that exists, resolved, and the rest."""
        for i in range(1, len(parts)):
            head = self.resolve(parts[:i])
            if self.lstat(head) is None:
                return head + parts[i:]
        return parts

    def host_path(self, parts: Parts) -> str:
        """The host path of resolved `parts`, for what has no fd variant (a mount source, the layer
        writer's Change.source). Only use it on parts `resolve` returned, on a tree nothing else
        changes meanwhile."""
        # the path the root was opened by: a mount attached nowhere (a layered rootfs' view,
        # builder/stageroot.py) is reached only through the /proc/<pid>/fd link its owner keeps open
        base = os.fsencode(self.path).rstrip(b"/")
        return os.fsdecode(base + b"".join(b"/" + p for p in parts))

    @contextmanager
    def _dir(self, parts: Parts, *, create: bool = False, meta: Meta | None = None,
             created: list[Parts] | None = None) -> Iterator[tuple[int, Parts]]:
        """(fd, resolved parts) of directory `parts`; missing ones created (with `meta`) when `create`."""
        fd = self.open_dir(parts, create=create, meta=meta, created=created)
        try:
            yield fd, self.parts_of(fd)
        finally:
            os.close(fd)

    def parts_of(self, fd: int) -> Parts:
        """Where an open directory of this root is, as components relative to the root."""
        rel = os.path.relpath(os.fsencode(fd_path(fd)), os.fsencode(fd_path(self.fd)))
        if rel == b".." or rel.startswith(b"../"):  # moved out from under us: never name it
            raise OSError(errno.EXDEV, "a directory left the root while in use", os.fsdecode(rel))
        return () if rel == b"." else tuple(rel.split(b"/"))

    def open_dir(self, path: str | bytes | Parts, *, create: bool = False, meta: Meta | None = None,
                 created: list[Parts] | None = None) -> int:
        """A new fd of directory `path` (symlinks followed inside the root; the caller closes it).
        With `create`, missing directories are made with `meta` (0o755, root, kernel time by
        default) and their resolved parts appended to `created`."""
        parts = split(path) if isinstance(path, (str, bytes)) else tuple(path)
        if not create:
            return open_dir(self.fd, parts)
        new: list[Parts] = []
        fd = open_dir(self.fd, parts, create=True,
                      on_create=lambda _parent, comps: new.append(tuple(comps)))
        try:
            for made in new:
                self.set_dir_meta(made, meta or Meta(mode=0o755))
        except BaseException:
            os.close(fd)
            raise
        if created is not None:
            created.extend(new)
        return fd

    def set_dir_meta(self, parts: Parts, meta: Meta) -> None:
        """`set_meta` on the directory at resolved `parts` (never following a final symlink)."""
        fd = open_dir(self.fd, parts, follow_last=False)
        try:
            set_meta(fd, meta)
        finally:
            os.close(fd)

    @contextmanager
    def parent(self, path: str | bytes | Parts, *, create: bool = False, meta: Meta | None = None,
               created: list[Parts] | None = None) -> Iterator[tuple[int, bytes, Parts]]:
        """(fd of the resolved parent directory, last component, the parent's resolved parts). The
        last component is not resolved: it may be missing, a symlink, anything."""
        parts = lexical(split(path) if isinstance(path, (str, bytes)) else path)
        if not parts:
            raise IsADirectoryError(errno.EISDIR, "the root itself has no parent", "/")
        with self._dir(parts[:-1], create=create, meta=meta, created=created) as (fd, base):
            yield fd, parts[-1], base

    # -- reading ---------------------------------------------------------------------------------
    def lstat(self, path: str | bytes | Parts) -> os.stat_result | None:
        """The entry at `path` itself (a final symlink not followed); None when missing."""
        try:
            with self.parent(path) as (fd, name, _):
                return os.stat(name, dir_fd=fd, follow_symlinks=False)
        except IsADirectoryError:
            return os.fstat(self.fd)
        except (FileNotFoundError, NotADirectoryError):
            return None

    def stat(self, path: str | bytes | Parts) -> os.stat_result | None:
        """The entry `path` names, every symlink followed inside the root; None when missing."""
        try:
            return self.lstat(self.resolve(path))
        except (FileNotFoundError, NotADirectoryError):
            return None

    def read_file(self, path: str | bytes | Parts, limit: int = 16 << 20) -> bytes | None:
        """A regular file's content (symlinks followed inside the root); None when it is missing or
        not a regular file. At most `limit` bytes."""
        try:
            fd = self.open_file(self.resolve(path))
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return None
            raise
        if fd is None:
            return None
        try:
            chunks, left = [], limit
            while left > 0:
                data = os.read(fd, min(left, 1 << 20))
                if not data:
                    break
                chunks.append(data)
                left -= len(data)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def open_file(self, parts: Parts) -> int | None:
        """A read fd of the regular file at resolved `parts` (not following a final symlink); None
        when the entry is something else."""
        fd = openat2_in_root(self.fd, b"/".join(parts), _READ)
        if fd is None:
            with self.parent(parts) as (parent, name, _):
                fd = os.open(name, _READ, dir_fd=parent)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return None
        os.set_blocking(fd, True)
        return fd

    def listdir(self, path: str | bytes | Parts) -> list[bytes]:
        fd = self.open_dir(path)
        try:
            return sorted(os.fsencode(n) for n in os.listdir(fd))
        finally:
            os.close(fd)

    # -- writing ---------------------------------------------------------------------------------
    def makedirs(self, path: str | bytes | Parts, meta: Meta | None = None) -> list[Parts]:
        """mkdir -p inside the root; the resolved parts of every directory created (each with `meta`)."""
        created: list[Parts] = []
        os.close(self.open_dir(path, create=True, meta=meta, created=created))
        return created

    def write_file(self, path: str | bytes | Parts, data: bytes, meta: Meta, *,
                   created: list[Parts] | None = None) -> Parts:
        """Put a file with `data` at `path` (its directory created when missing, an existing entry
        there replaced, a final symlink followed inside the root as Docker's COPY does); returns its
        resolved parts."""
        parts = self.resolve(path)
        with self.parent(parts, create=True, meta=Meta(meta.uid, meta.gid, 0o755, meta.mtime_ns),
                         created=created) as (parent, name, base):
            fd = replace_with_file(parent, name)
            try:
                _write_all(fd, data)
                set_meta(fd, meta)
            finally:
                os.close(fd)
        return base + (name,)

    def remove(self, path: str | bytes | Parts) -> bool:
        """Remove the entry at `path` (a directory with all it holds; a final symlink itself, never
        its target). False when there was nothing."""
        try:
            with self.parent(path) as (parent, name, _):
                remove_entry(parent, name)
                return True
        except (FileNotFoundError, NotADirectoryError):
            return False

    def utime(self, parts: Parts, mtime_ns: int, atime_ns: int | None = None) -> None:
        """Set the times of the entry at resolved `parts` (a symlink's own times; no parts: the root)."""
        if not parts:
            os.utime(self.fd, ns=(mtime_ns if atime_ns is None else atime_ns, mtime_ns))
            return
        with self.parent(parts) as (parent, name, _):
            os.utime(name, ns=(mtime_ns if atime_ns is None else atime_ns, mtime_ns), dir_fd=parent,
                     follow_symlinks=False)


# -- operations on an open parent directory -----------------------------------------------------

def set_meta(fd: int, meta: Meta) -> None:
    """Owner, then mode (chown clears setuid/setgid), then mtime, through the object's own fd.
    Without root, an owner other than one's own is left as it is (a rootless build)."""
    _chown(lambda: os.fchown(fd, meta.uid, meta.gid))
    if meta.mode is not None:
        os.fchmod(fd, meta.mode & 0o7777)
    if meta.mtime_ns is not None:
        os.utime(fd, ns=(meta.mtime_ns, meta.mtime_ns))


def copy_xattrs(src: int, dst: int, wanted: Callable[[str], bool] = keep_xattr) -> None:
    """The `wanted` xattrs (by default those a layer dir keeps: file capabilities, user.*) from one open
    object to another, after its owner and mode are set (a chown clears file capabilities), as
    BuildKit's copier copies them: a `setcap` binary copied out of a build stage keeps its capabilities.
    One that can't be set is left out, as there."""
    try:
        names = os.listxattr(src)
    except OSError:
        return
    for name in names:
        if wanted(name):
            try:
                os.setxattr(dst, name, os.getxattr(src, name))
            except OSError:
                continue


def set_meta_at(parent: int, name: bytes, meta: Meta) -> None:
    """`set_meta` for an entry that can't be opened (a symlink): by name, never following it."""
    _chown(lambda: os.chown(name, meta.uid, meta.gid, dir_fd=parent, follow_symlinks=False))
    if meta.mtime_ns is not None:
        os.utime(name, ns=(meta.mtime_ns, meta.mtime_ns), dir_fd=parent, follow_symlinks=False)


def _chown(call) -> None:
    try:
        call()
    except PermissionError:
        if os.geteuid() == 0:
            raise


def lstat_at(parent: int, name: bytes) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return None


def remove_entry(parent_fd: int, name: bytes | str, *, as_root: bool | None = None) -> None:
    """Remove `name` in `parent_fd` (a directory with everything below it), never following a symlink.
    Depth first with an explicit stack (a tree may be deeper than Python's recursion limit); only the
    directories on the path being emptied are open."""
    if as_root is None:
        as_root = os.geteuid() == 0
    st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=parent_fd)
        return
    # (its parent's fd, its name, its fd, its children: listed once the fd is on the stack to be closed)
    stack: list[tuple[int, bytes | str, int, list[Iterator[str]]]] = []
    try:
        stack.append((parent_fd, name, _open_to_empty(parent_fd, name, st, as_root), []))
        while stack:
            parent, here, fd, listed = stack[-1]
            if not listed:
                listed.append(iter(os.listdir(fd)))
            child = next(listed[0], None)
            if child is None:
                stack.pop()
                os.close(fd)
                os.rmdir(here, dir_fd=parent)
                continue
            st = os.stat(child, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                stack.append((fd, child, _open_to_empty(fd, child, st, as_root), []))
            else:
                os.unlink(child, dir_fd=fd)
    finally:
        for _, _, fd, _ in stack:
            os.close(fd)


def _open_to_empty(parent: int, name: bytes | str, st: os.stat_result, as_root: bool) -> int:
    """A directory's fd, made writable and searchable for its owner first when not running as root."""
    fd = os.open(name, _DIR, dir_fd=parent)
    if not as_root and st.st_mode & 0o700 != 0o700:
        os.fchmod(fd, st.st_mode | 0o700)
    return fd


def make_way(parent: int, name: bytes, what: str = "a file") -> None:
    """Remove what is at `name` in `parent` for a new `what`; a directory there is an error (BuildKit:
    "cannot replace to directory with file")."""
    st = lstat_at(parent, name)
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, f"cannot replace a directory with {what}", os.fsdecode(name))
        os.unlink(name, dir_fd=parent)


def replace_with_file(parent: int, name: bytes) -> int:
    """A new, empty regular file `name` (mode 0600 until set_meta) in place of what was there."""
    make_way(parent, name)
    return os.open(name, _CREATE, 0o600, dir_fd=parent)


def replace_with_symlink(parent: int, name: bytes, target: bytes, meta: Meta) -> None:
    make_way(parent, name, "a symbolic link")
    os.symlink(target, name, dir_fd=parent)
    set_meta_at(parent, name, meta)


def ensure_subdir(parent: int, name: bytes, mode: int = 0o755) -> tuple[int, bool]:
    """(fd, created) of directory `name` in `parent`: an existing real directory is kept; anything
    else there (a symlink included) is an error, as BuildKit's copy has it ("cannot copy to
    non-directory"): replacing /lib -> usr/lib would break the image silently."""
    st = lstat_at(parent, name)
    if st is not None and not stat.S_ISDIR(st.st_mode):
        kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a directory"
        raise NotADirectoryError(errno.ENOTDIR, f"cannot copy a directory onto {kind}", os.fsdecode(name))
    if st is None:
        os.mkdir(name, mode, dir_fd=parent)
    return os.open(name, _DIR, dir_fd=parent), st is None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def copy_fd(src: int, dst: int, size: int) -> None:
    """`size` bytes from `src` to `dst` (in-kernel where the filesystems allow)."""
    left = size
    try:
        while left > 0:
            n = os.copy_file_range(src, dst, min(left, 1 << 30))
            if n == 0:
                break
            left -= n
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
        while left > 0:
            data = os.read(src, min(left, 1 << 20))
            if not data:
                break
            _write_all(dst, data)
            left -= len(data)
    if left:
        raise OSError(errno.EIO, f"the source shrank while it was copied ({left} bytes missing)")


# -- copying a tree from one root into another --------------------------------------------------

@dataclass(frozen=True)
class Override:
    """COPY's rewrites of what it copies: owner (0:0 unless --chown; the source's own with
    `keep_owner`), --chmod (a function of the source's bits and kind: builder/modes.py), the mtime
    clamp (SOURCE_DATE_EPOCH, BuildKit's rewrite-timestamp) and --exclude (`skip` gets each path
    relative to the copied source). With `keep_links`, files hard-linked to each other inside one
    copied source stay hard links in the copy (BuildKit's copier). `xattrs` names the extended
    attributes copied along (`copy_xattrs`)."""
    uid: int = 0
    gid: int = 0
    modes: Callable[[int, bool], int] | None = None
    epoch: int | None = None
    keep_owner: bool = False
    skip: Callable[[Parts], bool] | None = None
    keep_links: bool = False
    xattrs: Callable[[str], bool] = keep_xattr

    def meta(self, st: os.stat_result) -> Meta:
        mtime = st.st_mtime_ns
        if self.epoch is not None:
            mtime = min(mtime, self.epoch * 1_000_000_000)
        mode = stat.S_IMODE(st.st_mode)
        if self.modes is not None:
            mode = self.modes(mode, stat.S_ISDIR(st.st_mode))
        uid, gid = (st.st_uid, st.st_gid) if self.keep_owner else (self.uid, self.gid)
        return Meta(uid, gid, mode, mtime)


@dataclass
class _Dir:
    """A directory being copied: its fds on both sides (open while its children are copied), where it
    is, its metadata and the children still to copy."""
    sfd: int
    dfd: int
    at: Parts
    rel: Parts
    meta: Meta
    children: Iterator[bytes]

    def close(self, *, done: bool) -> None:
        try:
            if done and self.meta.mtime_ns is not None:   # after its children: they change it
                os.utime(self.dfd, ns=(self.meta.mtime_ns, self.meta.mtime_ns))
        finally:
            os.close(self.dfd)
            os.close(self.sfd)


class TreeCopy:
    """Copies entries out of `src` into `dst`, through fds on both sides. Each copied entry's
    resolved destination parts are appended to `written`, in order. With `link`, regular files are
    hard links to the source's (their metadata untouched) where the filesystem allows. Depth first
    with an explicit stack: a tree may be deeper than Python's recursion limit, and only the
    directories on the path being copied hold fds (a node_modules of thousands of directories would
    pass a 1,024-file limit)."""

    def __init__(self, src: Root, dst: Root, override: Override, written: list[Parts], *, link: bool = False):
        self.src, self.dst, self.o, self.written, self.link = src, dst, override, written, link
        self._copies: dict[tuple[int, int], Parts] = {}  # a linked source inode -> where its first copy is

    def copy(self, src_parts: Parts, dst_parent: int, dst_name: bytes, dst_base: Parts, *,
             only: list[Parts] | None = None) -> None:
        """Copy the entry at resolved `src_parts` (no parts: the whole source root) to `dst_name` in
        `dst_parent`, which is at `dst_base` (an empty name: into `dst_parent` itself). A directory
        lands on an existing directory there (which keeps its owner and mode; directories below get
        the source's); anything else there is replaced. `only` limits a directory's copy to these
        entries (relative to it; their parent directories come along, as BuildKit sends them)."""
        needed = None if only is None else {p[:i] for p in only for i in range(1, len(p) + 1)}
        with (self.src.parent(src_parts) if src_parts else _root_parent(self.src)) as (sp, sname, _):
            at = dst_base + ((dst_name,) if dst_name else ())
            stack: list[_Dir] = []
            try:
                self._entry(sp, sname, dst_parent, dst_name, at, (), needed, stack)
                while stack:
                    top = stack[-1]
                    child = next(top.children, None)
                    if child is None:
                        stack.pop().close(done=True)
                    else:
                        self._entry(top.sfd, child, top.dfd, child, top.at + (child,), top.rel + (child,), needed,
                                    stack)
            finally:
                while stack:
                    stack.pop().close(done=False)

    def _entry(self, sp: int, sname: bytes, dp: int, dname: bytes, at: Parts, rel: Parts,
               needed: set[Parts] | None, stack: list[_Dir]) -> None:
        """Copy one entry; a directory is made (or kept) and pushed on `stack`, for its children."""
        st = os.stat(sname, dir_fd=sp, follow_symlinks=False) if sname else os.fstat(sp)
        meta = self.o.meta(st)
        if stat.S_ISDIR(st.st_mode):
            sfd = os.open(sname, _DIR, dir_fd=sp) if sname else os.dup(sp)
            try:
                dfd, created = ensure_subdir(dp, dname) if dname else (os.dup(dp), False)
            except NotADirectoryError as exc:
                os.close(sfd)
                raise NotADirectoryError(exc.errno, exc.strerror, "/" + image_path(at)) from None
            except BaseException:
                os.close(sfd)
                raise
            frame = _Dir(sfd, dfd, at, rel, meta, iter(()))
            stack.append(frame)   # closed by `copy`, whatever happens next
            frame.children = self._children(sfd, rel, needed)
            if created or rel:
                set_meta(dfd, Meta(meta.uid, meta.gid, meta.mode))
                copy_xattrs(sfd, dfd, self.o.xattrs)
            self.written.append(at)
        elif stat.S_ISLNK(st.st_mode):
            replace_with_symlink(dp, dname, os.readlink(sname, dir_fd=sp), meta)
            self.written.append(at)
        elif stat.S_ISREG(st.st_mode):
            if self.link and self._hard_link(sp, sname, dp, dname):
                self.written.append(at)
                return
            linked = self.o.keep_links and st.st_nlink > 1
            if linked and self._link_to_copy(self._copies.get((st.st_dev, st.st_ino)), dp, dname):
                self.written.append(at)
                return
            sfd = os.open(sname, _READ, dir_fd=sp)
            try:
                now = os.fstat(sfd)
                if not stat.S_ISREG(now.st_mode):
                    raise OSError(errno.EAGAIN, "the source changed while it was copied", os.fsdecode(sname))
                os.set_blocking(sfd, True)
                dfd = replace_with_file(dp, dname)
                try:
                    copy_fd(sfd, dfd, now.st_size)
                    set_meta(dfd, meta)
                    copy_xattrs(sfd, dfd, self.o.xattrs)
                finally:
                    os.close(dfd)
            finally:
                os.close(sfd)
            if linked:
                self._copies.setdefault((st.st_dev, st.st_ino), at)
            self.written.append(at)
        # sockets, FIFOs and devices are not copied (BuildKit copies no special files from a context)

    def _children(self, sfd: int, rel: Parts, needed: set[Parts] | None) -> Iterator[bytes]:
        """The names to copy out of a source directory, in order (listed now: it is open now)."""
        names = sorted(os.fsencode(n) for n in os.listdir(sfd))
        skip = self.o.skip
        return iter([n for n in names if (skip is None or not skip(rel + (n,))) and
                     (needed is None or rel + (n,) in needed)])

    def _link_to_copy(self, first: Parts | None, dp: int, dname: bytes) -> bool:
        """Make `dname` in `dp` a hard link to the copy at `first` (what was there is replaced, a
        directory is an error); False when there is no first copy or the link cannot be made."""
        if first is None:
            return False
        try:
            fd = self.dst.open_dir(first[:-1])
        except OSError:
            return False
        try:
            copied = lstat_at(fd, first[-1])
            if copied is None or not stat.S_ISREG(copied.st_mode):
                return False
            make_way(dp, dname)
            try:
                os.link(first[-1], dname, src_dir_fd=fd, dst_dir_fd=dp, follow_symlinks=False)
            except OSError:  # too many links, ...: a copy of its own instead
                return False
            return True
        finally:
            os.close(fd)

    @staticmethod
    def _hard_link(sp: int, sname: bytes, dp: int, dname: bytes) -> bool:
        if lstat_at(dp, dname) is not None:
            return False
        try:
            os.link(sname, dname, src_dir_fd=sp, dst_dir_fd=dp, follow_symlinks=False)
        except OSError:  # another filesystem, protected_hardlinks, ...: copy instead
            return False
        return True


@contextmanager
def _root_parent(root: Root) -> Iterator[tuple[int, bytes, Parts]]:
    """The root itself as a (parent fd, name) pair: an empty name means 'this directory'."""
    yield root.fd, b"", ()
