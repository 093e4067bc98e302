"""The unit of a filesystem diff: what one layer adds, replaces or deletes.

A `Change` names a path inside the image (relative, '/'-separated, no leading '/' or './'); for "add"
it also names the file on disk whose metadata and content become the layer entry. Names are `str`
decoded with the filesystem encoding (surrogateescape), so any byte string a filesystem allows
(newlines, non-UTF-8 bytes) round-trips through `os.fsencode`.

Kinds:
- "add": the path was added or modified (a layer cannot tell the two apart and need not); with no
  source, a directory made up from `mode`/`uid`/`gid` (e.g. WORKDIR or COPY parents), mtime = epoch or 0;
- "delete": the path existed below and is gone (written as `.wh.<name>`);
- "opaque": the directory hides every lower child (written as `<dir>/.wh..wh..opq`); the directory
  itself comes as a separate "add".
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Literal

ChangeKind = Literal["add", "delete", "opaque"]
WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"


@dataclass(frozen=True, slots=True)
class Change:
    path: str
    kind: ChangeKind = "add"
    source: str | None = None
    uid: int | None = None   # overrides of the source's metadata (COPY --chown / --chmod)
    gid: int | None = None
    mode: int | None = None  # permission bits only (0o7777)
    # The source's lstat as the scan of a finished RUN's upper dir found it (builder/snapshot.py), so the
    # layer writer need not ask again: nothing writes there after the command but the normalizer, which
    # only cuts mtimes to the whole second (and the epoch) as the writer does and drops xattrs the writer
    # reads from the file itself (builder/layernorm.py). None: the writer asks.
    stat: os.stat_result | None = field(default=None, compare=False, repr=False)
    parts: tuple[bytes, ...] = field(init=False, compare=False, repr=False)   # split_path(path), checked once

    def __post_init__(self) -> None:
        if self.kind not in ("add", "delete", "opaque"):
            raise ValueError(f"unknown change kind {self.kind!r}")
        if self.kind == "add" and self.source is None and self.mode is None:
            raise ValueError(f"change {self.path!r}: an 'add' needs a source file (or a mode for a new directory)")
        parts = split_path(self.path)
        if not parts and self.kind != "add":
            raise ValueError("the root directory cannot be deleted or made opaque")
        object.__setattr__(self, "parts", parts)

    @classmethod
    def scanned(cls, rel: bytes, source: bytes, st: os.stat_result) -> "Change":
        """The "add" of a file a scan found: `rel` joined from names readdir gave (never empty, ".", ".."
        or holding "/" or NUL, so `split_path` has nothing to reject), `source` its path on disk. The
        scan of a RUN's upper dir makes one per file (20,000 for an npm install): built directly, it
        costs about half of what __init__ and __post_init__ do."""
        change = object.__new__(cls)
        _set(change, "path", rel.decode(_FS_ENCODING, "surrogateescape"))
        _set(change, "kind", "add")
        _set(change, "source", source.decode(_FS_ENCODING, "surrogateescape"))
        _set(change, "uid", None)
        _set(change, "gid", None)
        _set(change, "mode", None)
        _set(change, "stat", st)
        _set(change, "parts", tuple(rel.split(b"/")))
        return change


_FS_ENCODING = sys.getfilesystemencoding()   # os.fsdecode's, without its per-call checks
_set = object.__setattr__   # Change is frozen


def split_path(path: str) -> tuple[bytes, ...]:
    """Components of an image path as bytes; rejects '..', NUL and empty-looking tricks."""
    raw = os.fsencode(path)
    if b"\0" in raw:
        raise ValueError(f"path {path!r} contains a NUL byte")
    parts = raw.split(b"/")
    if b"" in parts or b"." in parts:
        parts = [p for p in parts if p not in (b"", b".")]
    if b".." in parts:
        raise ValueError(f"path {path!r} contains '..'")
    return tuple(parts)


def new_directory(path: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> Change:
    """A directory that exists on no disk yet (WORKDIR, parents of a COPY destination)."""
    return Change(path, "add", None, uid=uid, gid=gid, mode=mode)


def tar_name(change: Change) -> tuple[bytes, ...]:
    """The components of the tar entry that represents `change` (whiteouts included)."""
    parts = change.parts
    if change.kind == "delete":
        return parts[:-1] + (WHITEOUT_PREFIX.encode() + parts[-1],)
    if change.kind == "opaque":
        return parts + (OPAQUE_WHITEOUT.encode(),)
    return parts
