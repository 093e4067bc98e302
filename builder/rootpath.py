"""Paths inside a root directory, resolved as if that directory were `/` (chroot semantics): symlinks
are followed with absolute targets restarting at the root and `..` stopping at the root. Nothing
resolved here can leave the root, whatever symlinks a hostile image put in it.

The kernel does it where it can: `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` (Linux 5.6+) resolves
a whole path in one call, atomically with respect to concurrent renames (it fails with EAGAIN rather
than escape). Where openat2 is missing or forbidden (ENOSYS, a seccomp EPERM), the same rules run
here component by component, every step through a directory file descriptor opened with O_NOFOLLOW.
The file operations built on this live in builder/rootfs_ops.py."""
from __future__ import annotations

import ctypes
import errno
import os
import platform
import stat
from typing import Callable, Sequence

MAX_SYMLINKS = 40
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

# openat2(2): struct open_how and the RESOLVE_* flags of include/uapi/linux/openat2.h
_SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437, "arm64": 437}.get(platform.machine())
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10
_openat2_works: bool | None = None if _SYS_OPENAT2 else False


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def openat2_in_root(root_fd: int, path: bytes, flags: int, mode: int = 0) -> int | None:
    """`path` opened inside the root with the kernel's RESOLVE_IN_ROOT, or None when this kernel (or
    a seccomp profile) has no openat2: the caller then resolves component by component. Raises
    OSError as open(2) would (ENOENT, ENOTDIR, ELOOP, ...)."""
    global _openat2_works
    if _openat2_works is False or _SYS_OPENAT2 is None:
        return None
    how = _OpenHow(flags | os.O_CLOEXEC, mode, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
    for _ in range(8):  # EAGAIN: a rename raced the resolution; the kernel asks to try again
        fd = _libc.syscall(ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(root_fd), ctypes.c_char_p(path or b"."),
                           ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
        if fd >= 0:
            _openat2_works = True
            return int(fd)
        err = ctypes.get_errno()
        if err == errno.EAGAIN:
            continue
        if err in (errno.ENOSYS, errno.EPERM) and _openat2_works is None:
            _openat2_works = False
            return None
        if err == errno.E2BIG:  # a struct open_how this kernel does not know: no openat2 for us
            _openat2_works = False
            return None
        raise OSError(err, os.strerror(err), os.fsdecode(path))
    return None


def use_openat2(enabled: bool) -> bool:
    """Force the component walk (False) or probe the kernel again (True); returns the previous
    setting. For tests that prove both ways resolve alike."""
    global _openat2_works
    before = _openat2_works is not False
    _openat2_works = None if enabled and _SYS_OPENAT2 else False
    return before


def open_root(root: str | os.PathLike[str]) -> int:
    return os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def split(path: str | bytes) -> list[bytes]:
    raw = os.fsencode(path)
    return [p for p in raw.split(b"/") if p not in (b"", b".")]


def open_dir(root_fd: int, parts: Sequence[bytes], *, create: bool = False, follow_last: bool = True,
             mode: int = 0o755, on_create: Callable[[int, list[bytes]], None] | None = None) -> int:
    """A new fd of the directory `parts` inside the root (the caller closes it).

    Missing directories are created (with `mode`) when `create`; `on_create(parent_fd, components)`
    hears of each one just before it is created (components resolved from the root). With `follow_last=False` a symlink as the last component is an
    error (ELOOP) instead of being followed. Raises FileNotFoundError, NotADirectoryError or
    OSError(ELOOP) like the kernel would."""
    if parts and on_create is None:
        try:
            fd = openat2_in_root(root_fd, b"/".join(parts), _DIR_FLAGS if not follow_last else
                                 _DIR_FLAGS & ~os.O_NOFOLLOW)
        except FileNotFoundError:
            if not create:
                raise
            fd = None  # the walk below creates what is missing
        if fd is not None:
            return fd
    if not follow_last and parts:
        parent = open_dir(root_fd, parts[:-1], create=create, mode=mode, on_create=on_create)
        try:
            made = False
            if create:
                try:
                    os.mkdir(parts[-1], mode, dir_fd=parent)
                    made = True
                except FileExistsError:
                    pass
            fd = os.open(parts[-1], _DIR_FLAGS, dir_fd=parent)
            if made:
                os.fchmod(fd, mode)  # exactly `mode`, whatever the umask
            return fd
        finally:
            os.close(parent)
    stack: list[int] = [os.dup(root_fd)]
    names: list[bytes] = []
    todo = list(reversed(parts))
    links = 0
    try:
        while todo:
            comp = todo.pop()
            if comp in (b"", b"."):
                continue
            if comp == b"..":
                if len(stack) > 1:
                    os.close(stack.pop())
                    names.pop()
                continue
            cur = stack[-1]
            made = False
            try:
                st = os.stat(comp, dir_fd=cur, follow_symlinks=False)
            except FileNotFoundError:
                if not create:
                    raise
                if on_create is not None:
                    on_create(cur, names + [comp])
                os.mkdir(comp, mode, dir_fd=cur)
                made = True
                st = os.stat(comp, dir_fd=cur, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                links += 1
                if links > MAX_SYMLINKS:
                    raise OSError(errno.ELOOP, "too many levels of symbolic links", os.fsdecode(comp))
                target = os.readlink(comp, dir_fd=cur)
                if target.startswith(b"/"):
                    while len(stack) > 1:
                        os.close(stack.pop())
                    names.clear()
                todo.extend(reversed(target.split(b"/")))
                continue
            if not stat.S_ISDIR(st.st_mode):
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", os.fsdecode(b"/".join(names + [comp])))
            stack.append(os.open(comp, _DIR_FLAGS, dir_fd=cur))
            if made:
                os.fchmod(stack[-1], mode)  # exactly `mode`, whatever the umask
            names.append(comp)
        return stack.pop()
    finally:
        for fd in stack:
            os.close(fd)


def fd_path(fd: int) -> str:
    """The absolute host path of an open directory fd (for APIs without *at variants, e.g. mount)."""
    return os.readlink(f"/proc/self/fd/{fd}")


def resolve(root: str | os.PathLike[str], path: str | bytes, *, create_parents: bool = False,
            on_create: Callable[[list[bytes]], None] | None = None) -> tuple[str, bytes]:
    """(host path of the resolved parent directory, last component) of `path` inside `root`.
    The last component itself is not resolved (it may be missing or a symlink). `on_create` hears of
    each parent directory created (components resolved from the root)."""
    parts = split(path)
    if not parts:
        raise ValueError("the root itself has no parent")
    root_fd = open_root(root)
    hook = None if on_create is None else (lambda _fd, created: on_create(created))
    try:
        fd = open_dir(root_fd, parts[:-1], create=create_parents, on_create=hook)
        try:
            return os.fsdecode(host_path_under(root, root_fd, fd)), parts[-1]
        finally:
            os.close(fd)
    finally:
        os.close(root_fd)


def host_path_under(root: str | os.PathLike[str], root_fd: int, fd: int) -> bytes:
    """The path of directory `fd` as `root` (the path `root_fd` was opened by) plus its components
    below it. Never the kernel's name of `fd` alone: for a mount attached nowhere (a layered rootfs'
    view, reached through /proc/<pid>/fd/<n>) that name starts at `/` and would name a host path."""
    return b"/".join((os.fsencode(root).rstrip(b"/"),) + relative_parts(root_fd, fd)) or b"/"


def relative_parts(root_fd: int, fd: int) -> tuple[bytes, ...]:
    """The components of directory `fd` relative to the root directory `root_fd`."""
    real = os.fsencode(fd_path(fd))
    base = os.fsencode(fd_path(root_fd))
    rel = os.path.relpath(real, base)
    return () if rel == b"." else tuple(rel.split(b"/"))


def lexical(parts: Sequence[bytes]) -> tuple[bytes, ...]:
    """`parts` with '.' dropped and '..' applied, never above the root."""
    out: list[bytes] = []
    for p in parts:
        if p == b"..":
            if out:
                out.pop()
        elif p not in (b"", b"."):
            out.append(p)
    return tuple(out)


def resolve_full(root: str | os.PathLike[str], path: str | bytes) -> str:
    """The host path that `path` names inside `root`, every symlink (the last one included) followed
    as if `root` were `/`. The result may not exist only in its last component."""
    root_fd = open_root(root)
    try:
        parts = lexical(split(path))
        for _ in range(MAX_SYMLINKS):
            if not parts:
                return os.fsdecode(os.fsencode(root).rstrip(b"/") or b"/")
            parent = open_dir(root_fd, parts[:-1])
            try:
                try:
                    st = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
                except FileNotFoundError:
                    st = None
                if st is None or not stat.S_ISLNK(st.st_mode):
                    return os.fsdecode(host_path_under(root, root_fd, parent).rstrip(b"/") + b"/" + parts[-1])
                link = os.readlink(parts[-1], dir_fd=parent)
                base = () if link.startswith(b"/") else relative_parts(root_fd, parent)
                parts = lexical(base + tuple(link.split(b"/")))
            finally:
                os.close(parent)
        raise OSError(errno.ELOOP, "too many levels of symbolic links", os.fsdecode(path))
    finally:
        os.close(root_fd)
