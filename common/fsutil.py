"""Measuring and removing directory trees that a build input may have shaped (at any depth: explicit
stacks, never Python's recursion), and whether a path a build input names stays in its folder."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


def remove_tree(path: str | os.PathLike[str]) -> None:
    """Remove the tree at `path` if it is there, ignoring errors, as shutil.rmtree(ignore_errors=True) does,
    at any depth: Python 3.11's rmtree recurses once per directory level, and a RUN or an archive may leave
    a chain deeper than the recursion limit. `rm -rf` (fts: no depth or path length limit, never follows
    a symlink, stays on one file system) finishes what rmtree could not."""
    try:
        shutil.rmtree(path, ignore_errors=True)
    except RecursionError:
        subprocess.run(["rm", "-rf", "--one-file-system", "--", os.fspath(path)], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


def tree_size(path: str | os.PathLike[str]) -> int:
    """Bytes of the files in the tree at `path` (symlinks not followed, errors skipped), at any depth:
    os.walk recurses once per level in Python 3.11."""
    total, stack = 0, [os.fspath(path)]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        else:
                            total += entry.stat(follow_symlinks=False).st_size
                    except OSError:
                        continue
        except OSError:
            continue
    return total


def copy_tree(src: str | os.PathLike[str], dest: str | os.PathLike[str]) -> None:
    """shutil.copytree(src, dest, symlinks=True) at any depth (an explicit stack; copytree recurses once
    per level): directories, regular files with their modes, times and xattrs (copy2), symlinks as
    symlinks; devices, fifos and sockets are left out (copytree fails on a fifo, and reads a
    character device such as /dev/zero for ever). Raises OSError."""
    src, dest = os.fspath(src), os.fspath(dest)
    os.mkdir(dest)
    made = [(src, dest)]
    stack = [(src, dest)]
    while stack:
        here, there = stack.pop()
        with os.scandir(here) as it:
            entries = list(it)
        for entry in entries:
            target = os.path.join(there, entry.name)
            if entry.is_symlink():
                os.symlink(os.readlink(entry.path), target)
            elif entry.is_dir(follow_symlinks=False):
                os.mkdir(target)
                made.append((entry.path, target))
                stack.append((entry.path, target))
            elif entry.is_file(follow_symlinks=False):
                shutil.copy2(entry.path, target, follow_symlinks=False)
    for source, copy in reversed(made):   # a directory's times after what was written into it
        shutil.copystat(source, copy, follow_symlinks=False)


def inside(root: str | os.PathLike[str], path: str | os.PathLike[str]) -> bool:
    """Is `path`, symlinks followed, `root` itself or under it (root's own symlinks followed too)?"""
    base, target = Path(root).resolve(), Path(path).resolve()
    return target == base or base in target.parents
