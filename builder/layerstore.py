"""The layer store: every layer unpacked once, into a directory of its own keyed by its ChainID, as
containerd's overlayfs snapshotter does it. A step's rootfs is an overlay of these directories (read-only
lower dirs) and one fresh upper dir, never a copy (builder/stageroot.py).

    <store>/<chain id hex>/fs/          the layer, as an overlay lower dir
    <store>/<chain id hex>/layer.json   what it is: chain id, diff id, parent, disk usage, fingerprint
    <store>/tmp/<random>/{fs,work}      an upper dir being written (a step, or a layer being unpacked)
    <store>/empty/                      the bottom of an image that has no layer yet (FROM scratch)

Layer N is unpacked onto an overlay of layers 1..N-1 with an empty upper dir (the unpacker works through
a detached mount: builder/linux.py `overlay`): the upper dir becomes layer N's dir. A symlinked parent
resolves as in the merged view, a deletion becomes a whiteout (a 0/0 character device), a directory that
hides what is below is marked opaque. A step's upper dir is committed the same way, under the ChainID
of the layer written from it.

Every overlay kade mounts over the store keeps its marks in `user.overlay.*` (`userxattr`), on the
host as in a user namespace: one namespace of marks, so a mark can't be copied up as an ordinary xattr
by an overlay that reads the other one. An opaque directory of a committed layer carries both
`user.overlay.opaque` and (where kade may set it) `trusted.overlay.opaque`, for an overlay mounted
without `userxattr` by anyone else; overlay's other bookkeeping xattrs, sockets, sub-second mtimes (and
mtimes past the epoch) go, so a committed upper dir holds what its layer holds: the same tree as the
layer unpacked from its blob.

Every layer dir is written in a temp dir and renamed into place: the first writer wins, a per-layer lock
keeps two builds from unpacking one layer at once, and a layer dir is never written again (a RUN writes
its own upper dir; lower dirs are read-only to overlays). Its record holds a fingerprint of the tree:
every entry's lstat (inode, type and mode, owner, size, mtime, ctime, links, device). A write that
reaches a layer dir moves a ctime, which nothing can set back, so a build checks each layer dir the
first time it uses it: one that no longer matches is discarded and unpacked again, never used.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, ContextManager, Iterator, Sequence

from builder.errors import BuildError
from builder.layernorm import Fingerprint, NormalizeError, Normalizing, fingerprint_of, normalize
from builder.rootfs import chain_ids
from builder.unpack import Limits, apply_layer
from common import fsutil
from registry.image import Layer

if TYPE_CHECKING:
    from builder.snapshot import UpperDiff

RECORD = "layer.json"
Lock = Callable[[str], ContextManager[bool]]
Report = Callable[..., None]


class LayerStoreError(BuildError):
    """A layer dir could not be made or committed."""


@dataclass(frozen=True)
class LayerDir:
    chain_id: str
    path: Path                     # <store>/<hex>

    @property
    def fs(self) -> Path:
        return self.path / "fs"


@dataclass
class Upper:
    """An upper dir being written: `fs` (the diff), `work` (overlay's), `merged` (where a sandbox
    mounts the overlay), in one temp dir of the store (`scratch`); `normalizing`: its normalization,
    when it started early (`LayerStore.start_normalizing`)."""
    scratch: Path
    normalizing: Normalizing | None = None

    @property
    def fs(self) -> Path:
        return self.scratch / "fs"

    @property
    def work(self) -> Path:
        return self.scratch / "work"

    @property
    def merged(self) -> Path:
        return self.scratch / "merged"


def chain_of(parent: str | None, diff_id: str) -> str:
    """The ChainID of a layer `diff_id` on top of the stack whose ChainID is `parent`."""
    return diff_id if parent is None else "sha256:" + hashlib.sha256(f"{parent} {diff_id}".encode()).hexdigest()


def fingerprint(fs: Path, *, with_root: bool = True) -> Fingerprint:
    """(sha256 over the lstat of every entry of the tree, disk usage in bytes, entries). Entries are
    taken in sorted order; atime is left out (reading a file is no change); without `with_root`, the
    root directory's own metadata too (a tree whose root marks its last use)."""
    return fingerprint_of((rel, st) for rel, st in _walk(os.fsencode(fs)) if rel or with_root)


def _walk(root: bytes) -> Iterator[tuple[bytes, os.stat_result]]:
    """(relative path, lstat) of the root (as b"") and everything under it, never following a symlink."""
    from builder.snapshot import scan

    yield b"", os.lstat(root)
    for path, _entry, st in scan(root):
        yield path, st


class LayerStore:
    """Layer dirs under `root`; `lock(name)` is the cache's inter-process lock (builder/cache.py)."""

    def __init__(self, root: str | os.PathLike[str], lock: Lock, report: Report | None = None):
        self.root = Path(root)
        self.lock = lock
        self.report = report
        self._verified: dict[str, LayerDir] = {}
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)

    # -- lookup --------------------------------------------------------------------------------
    def path(self, chain_id: str) -> Path:
        return self.root / chain_id.partition(":")[2]

    def has(self, chain_id: str) -> bool:
        return (self.path(chain_id) / RECORD).is_file()

    def get(self, chain_id: str) -> LayerDir | None:
        """The layer dir of `chain_id` if it is there and matches its record (checked once per store
        object, i.e. once per build); one that does not match is discarded, and None returned."""
        if chain_id in self._verified:
            return self._verified[chain_id]
        where = self.path(chain_id)
        try:
            record = json.loads((where / RECORD).read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            self._discard(where, f"its record can't be read ({exc})")
            return None
        layer = LayerDir(chain_id, where)
        try:
            found = fingerprint(layer.fs)[0]
        except OSError as exc:
            found = f"unreadable ({exc.strerror})"
        if record.get("chain_id") != chain_id or found != record.get("fingerprint"):
            self._discard(where, "it changed since it was unpacked" if record.get("chain_id") == chain_id
                          else f"its record names {record.get('chain_id')}")
            return None
        self._verified[chain_id] = layer
        return layer

    def touch(self, layers: Sequence[LayerDir]) -> None:
        """Mark layer dirs used now (what `prune` orders by): the dir's own mtime, outside `fs`."""
        now = time.time_ns()
        for layer in layers:
            with contextlib.suppress(OSError):
                os.utime(layer.path, ns=(now, now))

    def empty(self) -> Path:
        """An empty directory: the only lower dir of a rootfs without layers (overlay needs one)."""
        path = self.root / "empty"
        if not path.is_dir():
            tmp = Path(tempfile.mkdtemp(prefix=".empty-", dir=self.root / "tmp"))
            os.chmod(tmp, 0o755)
            os.utime(tmp, ns=(0, 0))
            try:
                os.rename(tmp, path)
            except OSError:
                os.rmdir(tmp)   # made meanwhile by another build
        return path

    # -- making layer dirs ---------------------------------------------------------------------
    def ensure(self, layers: Sequence[Layer], *, limits: Limits | None = None) -> list[LayerDir]:
        """The layer dir of every layer of a stack (bottom first), each unpacked from its blob when
        missing (or discarded) onto an overlay of the ones below it."""
        ids = chain_ids([layer.diff_id for layer in layers])
        dirs: list[LayerDir] = []
        for ref, chain in zip(layers, ids):
            found = self.get(chain)
            if found is None:
                with self.lock(f"layer:{chain}"):
                    found = self.get(chain) or self._unpack(ref, chain, dirs, limits)
            dirs.append(found)
        self.touch(dirs)
        return dirs

    def _unpack(self, ref: Layer, chain: str, below: list[LayerDir], limits: Limits | None) -> LayerDir:
        from builder import linux

        upper = self.new_upper(below)
        try:
            with ref.open() as stream:
                if below:
                    fd = linux.overlay(lower_paths(below), str(upper.fs), str(upper.work), userxattr=True)
                    try:
                        apply_layer(stream, f"/proc/{os.getpid()}/fd/{fd}", digest=ref.digest or ref.diff_id,
                                    expected_diff_id=ref.diff_id, limits=limits, overlay=True, report=self.report)
                    finally:
                        os.close(fd)
                else:
                    apply_layer(stream, upper.fs, digest=ref.digest or ref.diff_id, expected_diff_id=ref.diff_id,
                                limits=limits, overlay=True, report=self.report)
            return self._place(upper, chain, ref.diff_id, below[-1].chain_id if below else None, None)
        finally:
            self.drop(upper)

    def new_upper(self, below: Sequence[LayerDir]) -> Upper:
        """A fresh upper dir over `below` (bottom first). Its root gets the owner, mode and times of the
        stack's root, which an overlay shows from its topmost layer."""
        upper = Upper(Path(tempfile.mkdtemp(prefix="u-", dir=self.root / "tmp")))
        for d in (upper.fs, upper.work, upper.merged):
            d.mkdir()
        top = below[-1].fs if below else None
        if top is not None:
            st = os.lstat(top)
            if os.geteuid() == 0:
                os.chown(upper.fs, st.st_uid, st.st_gid)
            os.chmod(upper.fs, stat.S_IMODE(st.st_mode))
            os.utime(upper.fs, ns=(st.st_atime_ns, st.st_mtime_ns))
        else:
            os.chmod(upper.fs, 0o755)   # a rootfs' `/` is 0755 unless a layer says otherwise
        return upper

    def commit(self, upper: Upper, diff_id: str, parent: LayerDir | None, epoch: int | None) -> LayerDir:
        """A step's upper dir (its layer written, with `diff_id`) becomes the layer dir above `parent`;
        when another build committed the same layer first, theirs is used and this one dropped."""
        chain = chain_of(parent.chain_id if parent else None, diff_id)
        try:
            return self._place(upper, chain, diff_id, parent.chain_id if parent else None, epoch)
        finally:
            self.drop(upper)

    def _place(self, upper: Upper, chain: str, diff_id: str, parent: str | None, epoch: int | None) -> LayerDir:
        """Normalize, fingerprint, record and rename an upper dir into place (atomically)."""
        final = self.path(chain)
        if not self.has(chain):
            fsutil.remove_tree(upper.work)
            with contextlib.suppress(OSError):
                upper.merged.rmdir()
            digest, usage, entries = self._normalized(upper, chain, epoch)
            record = {"chain_id": chain, "diff_id": diff_id, "parent": parent, "bytes": usage, "entries": entries,
                      "fingerprint": digest}
            (upper.scratch / RECORD).write_text(json.dumps(record, sort_keys=True) + "\n")
            try:
                os.rename(upper.scratch, final)
                layer = LayerDir(chain, final)
                self._verified[chain] = layer
                return layer
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise LayerStoreError(f"cannot move the layer {chain} into {final}: {exc.strerror}") from None
        found = self.get(chain)   # another build placed it first
        if found is None:
            raise LayerStoreError(f"layer dir {final} was discarded while this build placed it",
                                  hint="run the build again")
        return found

    def start_normalizing(self, upper: Upper, epoch: int | None) -> None:
        """Normalize `upper` in a child process from now on (builder/layernorm.py: while its layer is
        written); `commit` then waits for it."""
        upper.normalizing = Normalizing(upper.fs, epoch)

    @staticmethod
    def _normalized(upper: Upper, chain: str, epoch: int | None) -> Fingerprint:
        """`upper` normalized and its fingerprint: by its child process if one started, else here."""
        job, upper.normalizing = upper.normalizing, None
        if job is None:
            return fingerprint_of(normalize(upper.fs, epoch))
        if job.epoch != epoch:
            job.cancel()
            raise LayerStoreError(f"layer {chain}: its upper dir was normalized for epoch {job.epoch}, not {epoch}")
        try:
            return job.result()
        except NormalizeError as exc:
            raise LayerStoreError(f"cannot make the layer dir of {chain} from {upper.fs}: {exc}") from None

    def drop(self, upper: Upper) -> None:
        """Remove an upper dir that was not committed (or whose commit moved it away)."""
        if upper.normalizing is not None:
            upper.normalizing.cancel()
            upper.normalizing = None
        if upper.scratch.exists():
            fsutil.remove_tree(upper.scratch)

    def _discard(self, where: Path, why: str) -> None:
        if self.report is not None:
            self.report("warning", f"layer dir {where} is discarded: {why}; it is unpacked again from its blob")
        trash = self.root / "tmp" / f"discarded-{os.getpid()}-{time.time_ns()}"
        try:
            os.rename(where, trash)
        except OSError:
            trash = where
        fsutil.remove_tree(trash)

    # -- pruning -------------------------------------------------------------------------------
    def usage(self) -> list["Entry"]:
        """Every layer dir with its last use and disk usage (from its record)."""
        out = []
        for child in self.root.iterdir():
            if child.name in ("tmp", "empty"):
                continue
            try:
                record = json.loads((child / RECORD).read_bytes())
                used = child.lstat().st_mtime
            except (OSError, ValueError):
                out.append(Entry(child.name, 0.0, 0))   # incomplete or unreadable: first to go
                continue
            out.append(Entry(child.name, used, int(record.get("bytes", 0))))
        return out

    def prune(self, *, older_than_seconds: float = 0, max_bytes: int | None = None,
              now: float | None = None) -> tuple[int, int]:
        """Remove layer dirs no recent build used: least recently used first, those unused for
        `older_than_seconds` and then as many as it takes to fit `max_bytes`; plus leftover temp dirs.
        The caller holds the cache's global lock exclusively (no build runs). Returns (removed, bytes)."""
        entries = self.usage()
        doomed = prunable(entries, now if now is not None else time.time(), older_than_seconds, max_bytes)
        freed = 0
        for entry in entries:
            if entry.name in doomed:
                fsutil.remove_tree(self.root / entry.name)
                freed += entry.bytes
        for leftover in (self.root / "tmp").iterdir():
            fsutil.remove_tree(leftover)
        return len(doomed), freed


@dataclass(frozen=True)
class Entry:
    name: str
    last_used: float
    bytes: int


def prunable(entries: Sequence[Entry], now: float, older_than_seconds: float, max_bytes: int | None) -> set[str]:
    """Which layer dirs go (pure). Without a budget: every one unused for `older_than_seconds` (0: all).
    With `max_bytes`: those unused for `older_than_seconds` when it is given, then, least recently used
    first, more until the rest fit in `max_bytes`."""
    by_age = sorted(entries, key=lambda e: (e.last_used, e.name))
    old = {e.name for e in by_age if now - e.last_used >= older_than_seconds}
    doomed = old if max_bytes is None or older_than_seconds else set()
    if max_bytes is not None:
        total = sum(e.bytes for e in by_age if e.name not in doomed)
        for e in by_age:
            if total <= max_bytes:
                break
            if e.name not in doomed:
                doomed.add(e.name)
                total -= e.bytes
    return doomed


def tidy(upper: Upper, lower: Path, diff: "UpperDiff") -> None:
    """A RUN's upper dir (its processes gone) before its layer is written from it, by `diff`: its
    sockets go, their directories keeping their times (a layer holds no socket), and the directories
    left out of the changes get their times in `lower` (the stack before the step) back."""
    for name in diff.sockets:
        path = upper.fs / name
        was = os.lstat(path.parent)
        path.unlink()
        os.utime(path.parent, ns=(was.st_atime_ns, was.st_mtime_ns), follow_symlinks=False)
    for change in diff.left_out:
        was = os.lstat(lower / change.path)
        os.utime(upper.fs / change.path, ns=(was.st_atime_ns, was.st_mtime_ns), follow_symlinks=False)


def lower_paths(layers: Sequence[LayerDir]) -> list[str]:
    """The fs dirs of a stack as overlay wants them: topmost first."""
    return [str(layer.fs) for layer in reversed(layers)]
