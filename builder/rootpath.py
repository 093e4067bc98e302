"""Paths inside a root directory, resolved as if that directory were `/` (chroot semantics): symlinks
are followed component by component with absolute targets restarting at the root and `..` stopping
at the root, every step through a directory file descriptor opened with O_NOFOLLOW. Nothing resolved
here can leave the root, whatever symlinks a hostile image put in it."""
from __future__ import annotations

import errno
import os
import stat
from typing import Callable, Sequence

MAX_SYMLINKS = 40
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


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
    if not follow_last and parts:
        parent = open_dir(root_fd, parts[:-1], create=create, mode=mode, on_create=on_create)
        try:
            if create:
                try:
                    os.mkdir(parts[-1], mode, dir_fd=parent)
                except FileExistsError:
                    pass
            return os.open(parts[-1], _DIR_FLAGS, dir_fd=parent)
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
            try:
                st = os.stat(comp, dir_fd=cur, follow_symlinks=False)
            except FileNotFoundError:
                if not create:
                    raise
                if on_create is not None:
                    on_create(cur, names + [comp])
                os.mkdir(comp, mode, dir_fd=cur)
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
    finally:
        os.close(root_fd)
    try:
        return fd_path(fd), parts[-1]
    finally:
        os.close(fd)


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
                return fd_path(root_fd)
            parent = open_dir(root_fd, parts[:-1])
            try:
                try:
                    st = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
                except FileNotFoundError:
                    st = None
                if st is None or not stat.S_ISLNK(st.st_mode):
                    return os.fsdecode(os.fsencode(fd_path(parent)).rstrip(b"/") + b"/" + parts[-1])
                link = os.readlink(parts[-1], dir_fd=parent)
                base = () if link.startswith(b"/") else relative_parts(root_fd, parent)
                parts = lexical(base + tuple(link.split(b"/")))
            finally:
                os.close(parent)
        raise OSError(errno.ELOOP, "too many levels of symbolic links", os.fsdecode(path))
    finally:
        os.close(root_fd)
