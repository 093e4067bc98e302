"""Apply a layer blob (gzip, zstd or plain tar; sniffed from its first bytes) onto a rootfs directory,
safely, in one streaming pass.

Safety rules (a hostile layer is an expected input, not an accident):
- entry names that are absolute or contain `..` are refused (BuildError naming layer and entry); in
  an ADD archive (`archive`) they are taken as BuildKit's untar takes them (`_cleaned`);
- every parent directory is resolved inside the rootfs through O_NOFOLLOW directory fds, with
  symlinks followed as if the rootfs were `/` (see builder/rootpath.py) — a symlink to `/` or to
  `../../..` lands inside the rootfs, never outside;
- the final component is never followed: an existing file, symlink or directory at that name is
  removed first and the new one created with O_EXCL|O_NOFOLLOW (so writing never goes through a
  symlink and never into another hard link of the old inode);
- hard links must name an existing non-directory inside the rootfs (relative name, no `..`); in an
  ADD archive the link entry's owner, mode and mtime are then the inode's, as BuildKit's untar (moby's
  archive) sets them; an image layer's link keeps its target's (a chown would drop file capabilities
  a writer did not repeat on the link entry);
- whiteouts `.wh.<name>` delete lower content; an opaque whiteout `.wh..wh..opq` deletes every child
  of its directory that this layer did not itself create, so it applies before its siblings whatever
  the tar order; aufs metadata `.wh..wh.*` is ignored;
- device nodes only with `allow_devices` (default: running as root) — otherwise skipped with a note;
  with `overlay` (a layer dir of builder/layerstore.py, written through an overlay mount or as its
  bottom layer) a 0/0 character device, which would read as a whiteout there, is skipped with a note;
- overlayfs' own xattrs (`trusted.overlay.*`, `user.overlay.*`) are never restored: a layer can't mark
  a directory opaque or redirect a lookup by itself;
- ownership is restored only as root; modes (setuid included, after chown), xattrs and mtimes always;
  directory modes and mtimes are applied at the end so later entries don't disturb them;
- limits on uncompressed bytes (a declared size over the budget fails before anything is written),
  entry count, name length and metadata size bound archive bombs ($KADE_LAYER_MAX_BYTES and
  $KADE_LAYER_MAX_ENTRIES lower or raise the first two, see `Limits.from_env`).

Python's `tarfile` with `filter="data"` is not used: it refuses what rootfs layers legitimately hold
(absolute symlinks, devices, ownership). A failed apply leaves a partly written rootfs: discard it.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import stat
import threading

import zstandard
from dataclasses import dataclass, field
from pathlib import Path
import builtins
from typing import BinaryIO, Callable, Iterator, Mapping, cast

from builder.changes import OPAQUE_WHITEOUT, WHITEOUT_PREFIX
from builder.errors import BuildError
from builder.rootfs_ops import remove_entry
from builder.rootpath import open_dir, open_root
from builder.tarformat import (BLOCKDEV, CHAR, DIRECTORY, FIFO, HARDLINK, REGULAR, SYMLINK, TarEntry,
                               TarFormatError, TarReader)
from common.stage import Stage

_WH = WHITEOUT_PREFIX.encode()
_OPQ = OPAQUE_WHITEOUT.encode()
_AUFS_META = b".wh..wh."
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_XZ_MAGIC = b"\xfd7zXZ\x00"  # not in layers; ADD of a local archive may be xz or bzip2 (Docker's rule)
_BZIP2_MAGIC = b"BZh"
MAX_NOTES = 20
_OVERLAY_XATTRS = ("trusted.overlay.", "user.overlay.")


class UnpackError(BuildError):
    """A layer could not be applied (corrupt, unsupported, or an I/O error while writing)."""


class UnsafeLayerError(UnpackError):
    """A layer entry tried to reach outside the rootfs or is otherwise hostile."""


class LayerLimitError(UnsafeLayerError):
    """A layer is over a size, entry-count or name-length limit (archive bomb protection)."""


# the limits an environment may lower (or raise): a builder pod's emptyDir is often far smaller than
# the 64 GiB default, and the kubernetes backend passes these on to its pods (limit_env)
LIMIT_ENV = {"max_bytes": "KADE_LAYER_MAX_BYTES", "max_entries": "KADE_LAYER_MAX_ENTRIES"}


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 64 << 30        # uncompressed tar bytes
    max_entries: int = 2_000_000
    max_name: int = 4096             # bytes of an entry name or link target
    max_meta: int = 1 << 20          # bytes of one PAX header / GNU long name

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Limits":
        """The defaults, with $KADE_LAYER_MAX_BYTES and $KADE_LAYER_MAX_ENTRIES applied when set."""
        env = os.environ if environ is None else environ
        values = {}
        for name, var in LIMIT_ENV.items():
            raw = env.get(var, "").strip()
            if not raw:
                continue
            if not raw.isdigit() or int(raw) == 0:
                raise BuildError(f"${var}={raw!r} is not a positive whole number",
                                 hint=f"set it to a number of {'bytes' if name == 'max_bytes' else 'entries'}, "
                                      "or unset it for the default")
            values[name] = int(raw)
        return cls(**values)


def limit_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The limit variables set here (checked), to hand on to a builder pod."""
    env = os.environ if environ is None else environ
    Limits.from_env(env)
    return {var: env[var].strip() for var in LIMIT_ENV.values() if env.get(var, "").strip()}


@dataclass
class ApplyResult:
    diff_id: str                     # sha256 of the uncompressed tar as read
    entries: int
    bytes: int                       # uncompressed tar bytes
    notes: list[str] = field(default_factory=list)   # first MAX_NOTES things skipped or not restored
    skipped: int = 0                 # how many notes there were in all
    paths: set[builtins.bytes] = field(default_factory=set)    # with `archive`: every path written (b"" the root)
    removed: set[builtins.bytes] = field(default_factory=set)  # with `archive`: what whiteouts removed


class _Prefixed:
    """A read-only stream with some already-read bytes put back in front."""

    def __init__(self, head: bytes, stream: BinaryIO):
        self._head = head
        self._stream = stream

    def read(self, n: int = -1) -> bytes:
        if self._head:
            if n < 0 or n >= len(self._head):
                head, self._head = self._head, b""
                rest = self._stream.read(-1 if n < 0 else n - len(head)) if n != len(head) else b""
                return head + (rest or b"")
            head, self._head = self._head[:n], self._head[n:]
            return head
        return self._stream.read(n)

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True


class Inflated:
    """The uncompressed tar inside a blob (gzip, zstd, xz, bzip2 or plain, by magic bytes), inflated
    by a worker thread ahead of its reader and hashed (the diffID) by another, in chunks of `CHUNK`
    bytes, at most `DEPTH` of them waiting: the decompressors and sha256 run without the GIL, so a
    layer's inflating and hashing overlap each other and the reader's work of parsing and writing files. Stops at
    `limit` bytes (an archive bomb). `count` is what the reader took; `close()` (always, even after an
    error) stops and joins the worker before the blob under it is closed."""
    CHUNK = 1 << 20
    DEPTH = 4

    def __init__(self, stream: BinaryIO, limit: int, layer: str, *, hashed: bool = True):
        self.count = 0
        self._limit, self._layer = limit, layer
        self._hash = hashlib.sha256() if hashed else None
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(self.DEPTH)
        self._buf, self._pos = b"", 0
        self._done = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._inflate, args=(stream,), name="kade-inflate", daemon=True)
        self._thread.start()

    def _inflate(self, stream: BinaryIO) -> None:
        hashing = Stage(self._hash.update, name="kade-inflate-hash") if self._hash is not None else None
        try:
            source = open_decompressed(stream)
            produced = 0
            while not self._stop.is_set():
                data = source.read(self.CHUNK)
                produced += len(data)
                if produced > self._limit:
                    raise LayerLimitError(f"layer {self._layer} expands to more than {self._limit} bytes; refusing "
                                          "it (archive bomb?) — raise the limit if the image is genuine")
                if not data:
                    if hashing is not None:
                        hashing.finish()   # the diffID is whole before the reader sees the end
                        hashing = None
                    self._put(data)
                    return
                if hashing is not None:
                    hashing.put(data)
                self._put(data)
        except BaseException as exc:  # handed to the reader
            self._put(exc)
        finally:
            if hashing is not None:   # stopped early: the hash is of no use, its thread must end
                with contextlib.suppress(BaseException):
                    hashing.finish()

    def _put(self, item: bytes | BaseException) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def read(self, n: int = -1) -> bytes:
        if self._pos >= len(self._buf):
            if self._done:
                return b""
            item = self._queue.get()
            if isinstance(item, BaseException):
                self._done = True
                raise item
            self._buf, self._pos = item, 0
            if not item:
                self._done = True
                return b""
        end = len(self._buf) if n < 0 else min(len(self._buf), self._pos + n)
        data = self._buf[self._pos:end] if self._pos or end < len(self._buf) else self._buf
        self._pos = end
        self.count += len(data)
        return data

    def diff_id(self) -> str:
        """sha256 of the whole uncompressed stream (read it to its end first)."""
        assert self._hash is not None and self._done
        return "sha256:" + self._hash.hexdigest()

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self._queue.get(timeout=0.05)   # let a worker blocked on a full queue see the stop


def open_decompressed(stream: BinaryIO):
    """A reader of the uncompressed tar inside `stream` (gzip, zstd, xz, bzip2 or plain, by magic bytes)."""
    head = b""
    while len(head) < len(_XZ_MAGIC):
        chunk = stream.read(len(_XZ_MAGIC) - len(head))
        if not chunk:
            break
        head += chunk
    # _Prefixed has the read/readinto that the decompressors below call: a BinaryIO for them
    source = cast(BinaryIO, _Prefixed(head, stream))
    if head.startswith(_GZIP_MAGIC):
        try:
            from isal import igzip as gzip_impl
        except ImportError:  # pragma: no cover
            import gzip as gzip_impl  # type: ignore[no-redef]  # the same API, slower
        return gzip_impl.GzipFile(fileobj=source, mode="rb")
    if head.startswith(_ZSTD_MAGIC):
        return zstandard.ZstdDecompressor(max_window_size=1 << 27).stream_reader(source, read_across_frames=True,
                                                                               read_size=1 << 20)
    if head.startswith(_XZ_MAGIC):
        import lzma

        return lzma.LZMAFile(source, mode="rb")
    if head.startswith(_BZIP2_MAGIC):
        import bz2

        return bz2.BZ2File(source, mode="rb")
    return source


def _normalize(name: bytes) -> tuple[bytes, ...]:
    if b"\0" in name:
        raise ValueError("a NUL byte in the name")
    if name.startswith(b"/"):
        raise ValueError("an absolute name")
    parts = tuple(p for p in name.split(b"/") if p not in (b"", b"."))
    if b".." in parts:
        raise ValueError("a '..' component")
    return parts


def _cleaned(name: bytes) -> tuple[bytes, ...]:
    """A name in an ADD archive as BuildKit's untar takes it (moby's chrootarchive: the destination is
    the root it extracts in, names go through Go's `filepath.Clean` and are joined under it): a leading
    '/' dropped, `x/..` folded, a `..` at the top dropped. So nothing leaves the destination, and a hard
    link's target is read the same way."""
    if b"\0" in name:
        raise ValueError("a NUL byte in the name")
    parts: list[bytes] = []
    for part in name.split(b"/"):
        if part == b"..":
            del parts[-1:]
        elif part not in (b"", b"."):
            parts.append(part)
    return tuple(parts)


def _show(name: bytes) -> str:
    text = repr(os.fsdecode(name))
    return text if len(text) <= 200 else text[:200] + "...'"


def _exists(parent_fd: int, name: bytes) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


class _Applier:
    def __init__(self, root: Path, layer: str, allow_devices: bool, limits: Limits, report,
                 owner: tuple[int, int] | None = None, overlay: bool = False, archive: bool = False):
        self.root_fd = open_root(root)
        self.overlay = overlay
        self.archive = archive
        self.owner = owner
        self.layer = layer
        self.allow_devices = allow_devices
        self.limits = limits
        self.as_root = os.geteuid() == 0
        self.report = report
        self.created: set[bytes] = set()
        self.dirs: list[tuple[tuple[bytes, ...], TarEntry]] = []
        self.result = ApplyResult(diff_id="", entries=0, bytes=0)
        self._cached: tuple[tuple[bytes, ...], int] | None = None
        self._stale = False

    def close(self) -> None:
        self._forget()
        os.close(self.root_fd)

    def note(self, message: str) -> None:
        self.result.skipped += 1
        if len(self.result.notes) < MAX_NOTES:
            self.result.notes.append(message)
        if self.report is not None:
            self.report("note", message, layer=self.layer)

    def unsafe(self, entry: TarEntry, why: str) -> UnsafeLayerError:
        return UnsafeLayerError(f"layer {self.layer}: entry {_show(entry.name)} {why}; refusing the layer "
                                "(it was not written by a well-behaved image builder)")

    # ------------------------------------------------------------------ one entry
    def apply(self, entry: TarEntry, reader: TarReader) -> None:
        self.result.entries += 1
        if self.result.entries > self.limits.max_entries:
            raise LayerLimitError(f"layer {self.layer} has more than {self.limits.max_entries} entries; refusing it")
        try:
            parts = _cleaned(entry.name) if self.archive else _normalize(entry.name)
        except ValueError as exc:
            raise self.unsafe(entry, f"has {exc}") from None
        if entry.type == REGULAR and reader.offset + entry.size > self.limits.max_bytes:
            raise LayerLimitError(f"layer {self.layer}: entry {_show(entry.name)} declares {entry.size} bytes, "
                                  f"over the {self.limits.max_bytes}-byte budget; refusing it")
        if not parts:
            if entry.type != DIRECTORY:
                raise self.unsafe(entry, "replaces the root directory with a non-directory")
            if not self.archive:   # an ADD archive's `./` is skipped, as moby's untar skips it (BuildKit)
                self.dirs.append(((), entry))
            return
        base = parts[-1]
        if base.startswith(_WH):
            self._whiteout(entry, parts)
            return
        try:
            parent = self._parent_fd(parts[:-1])
        except (NotADirectoryError, OSError) as exc:
            raise UnpackError(f"layer {self.layer}: cannot reach the directory of {_show(entry.name)}: "
                              f"{exc.strerror or exc}") from None
        try:
            self._create(parent, base, parts, entry, reader)
        except UnsafeLayerError:
            raise
        except OSError as exc:
            raise UnpackError(f"layer {self.layer}: cannot extract {_show(entry.name)}: {exc.strerror or exc}") from None
        finally:
            if self._stale:
                self._forget()
        self.created.add(b"/".join(parts))

    def _parent_fd(self, parts: tuple[bytes, ...]) -> int:
        """The directory fd of `parts` (borrowed: do not close). Consecutive entries of one directory
        share it; anything removed from the tree drops it (a path may then resolve differently)."""
        if self._cached is not None and self._cached[0] == parts:
            return self._cached[1]
        self._forget()
        fd = open_dir(self.root_fd, parts, create=True)
        self._cached = (parts, fd)
        return fd

    def _forget(self) -> None:
        if self._cached is not None:
            os.close(self._cached[1])
            self._cached = None
        self._stale = False

    def _remove(self, parent: int, name: bytes) -> None:
        self._stale = True
        remove_entry(parent, name, as_root=self.as_root)

    def _whiteout(self, entry: TarEntry, parts: tuple[bytes, ...]) -> None:
        self._forget()
        base = parts[-1]
        if base == _OPQ:
            self._opaque(entry, parts[:-1])
            return
        if base.startswith(_AUFS_META):
            return
        target = base[len(_WH):]
        if target in (b"", b".", b".."):
            raise self.unsafe(entry, "is a whiteout with no valid target")
        if b"/".join(parts[:-1] + (target,)) in self.created:
            return  # whiteouts delete lower content only
        try:
            parent = open_dir(self.root_fd, parts[:-1])
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            raise UnpackError(f"layer {self.layer}: whiteout {_show(entry.name)}: {exc.strerror}") from None
        try:
            if _exists(parent, target) is not None:
                remove_entry(parent, target, as_root=self.as_root)
                self._removed(b"/".join(parts[:-1] + (target,)))
        except OSError as exc:
            raise UnpackError(f"layer {self.layer}: whiteout {_show(entry.name)}: {exc.strerror}") from None
        finally:
            os.close(parent)

    def _removed(self, path: bytes) -> None:
        if self.archive:   # the step's layer must say so (an image layer's whiteouts are its own)
            self.result.removed.add(path)

    def _opaque(self, entry: TarEntry, dir_parts: tuple[bytes, ...]) -> None:
        try:
            fd = open_dir(self.root_fd, dir_parts, create=True, follow_last=False)
        except OSError as exc:
            raise UnpackError(f"layer {self.layer}: opaque whiteout {_show(entry.name)}: {exc.strerror}") from None
        try:
            self._hide_lower(fd, b"/".join(dir_parts))
        except OSError as exc:
            raise UnpackError(f"layer {self.layer}: opaque whiteout {_show(entry.name)}: {exc.strerror}") from None
        finally:
            os.close(fd)

    def _hide_lower(self, fd: int, prefix: bytes) -> None:
        """Remove what the directory at `fd` holds that this layer did not create, looking inside the
        directories it did: depth first with an explicit stack (a layer may nest deeper than Python's
        recursion limit), only the directories on the path open."""
        frames: list[tuple[int, bytes, list[Iterator[str]]]] = []   # children listed once the fd is on the stack
        try:
            frames.append((os.dup(fd), prefix, []))
            while frames:
                here, base, listed = frames[-1]
                if not listed:
                    listed.append(iter(os.listdir(here)))
                child = next(listed[0], None)
                if child is None:
                    frames.pop()
                    os.close(here)
                    continue
                raw = os.fsencode(child)
                path = base + b"/" + raw if base else raw
                if path not in self.created:
                    remove_entry(here, raw, as_root=self.as_root)
                    self._removed(path)
                elif stat.S_ISDIR(os.stat(raw, dir_fd=here, follow_symlinks=False).st_mode):
                    frames.append((os.open(raw, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=here),
                                   path, []))
        finally:
            for here, _, _ in frames:
                os.close(here)

    def _create(self, parent: int, name: bytes, parts: tuple[bytes, ...], entry: TarEntry,
                reader: TarReader) -> None:
        if entry.type == REGULAR:   # created first, what was there removed only when it was (no stat)
            self._write_file(parent, name, entry, reader)
            return
        existing = _exists(parent, name)
        if existing is not None and not (entry.type == DIRECTORY and stat.S_ISDIR(existing.st_mode)):
            self._remove(parent, name)
        kind = entry.type
        if kind == DIRECTORY:
            if existing is None or not stat.S_ISDIR(existing.st_mode):
                os.mkdir(name, 0o700, dir_fd=parent)
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
            try:
                self._owner(fd, None, entry)
                self._xattrs(fd, entry)
            finally:
                os.close(fd)
            self.dirs.append((parts, entry))
            return
        to_symlink = kind == SYMLINK
        if kind == SYMLINK:
            os.symlink(entry.linkname, name, dir_fd=parent)
        elif kind == HARDLINK:   # an ADD archive's: its metadata becomes the shared inode's (a symlink's: the owner)
            to_symlink = self._hardlink(parent, name, parts, entry)
            if not self.archive:
                return
        elif kind in (CHAR, BLOCKDEV):
            if not self.allow_devices:
                self.note(f"device node {_show(entry.name)} skipped (not running as root)")
                return
            if self.overlay and kind == CHAR and entry.devmajor == entry.devminor == 0:
                self.note(f"device node {_show(entry.name)} (0/0) skipped: in a layer dir it would read as a whiteout")
                return
            dev_type = stat.S_IFCHR if kind == CHAR else stat.S_IFBLK
            try:
                os.mknod(name, dev_type | 0o600, os.makedev(entry.devmajor, entry.devminor), dir_fd=parent)
            except PermissionError:
                self.note(f"device node {_show(entry.name)} skipped (mknod not permitted here)")
                return
        elif kind == FIFO:
            os.mkfifo(name, 0o600, dir_fd=parent)
        self._owner(parent, name, entry)
        if kind == HARDLINK and to_symlink:
            return   # moby sets no mode or time through a hard link to a symlink
        if not to_symlink:
            os.chmod(name, entry.mode & 0o7777, dir_fd=parent, follow_symlinks=False)
        self._xattrs_at(parent, name, entry)
        mtime = _bounded(entry.mtime_ns)
        os.utime(name, ns=(mtime, mtime), dir_fd=parent, follow_symlinks=False)

    def _write_file(self, parent: int, name: bytes, entry: TarEntry, reader: TarReader) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(name, flags, 0o600, dir_fd=parent)
        except FileExistsError:   # a file, symlink or directory of a lower layer (or earlier entry) goes
            self._remove(parent, name)
            fd = os.open(name, flags, 0o600, dir_fd=parent)
        try:
            while True:
                data = reader.read(1 << 20)
                if not data:
                    break
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
            self._owner(fd, None, entry)
            os.fchmod(fd, entry.mode & 0o7777)
            self._xattrs(fd, entry)
            os.utime(fd, ns=(_bounded(entry.mtime_ns),) * 2)
        finally:
            os.close(fd)

    def _hardlink(self, parent: int, name: bytes, parts: tuple[bytes, ...], entry: TarEntry) -> bool:
        """Link `name` to the entry's target; returns whether that is a symlink."""
        try:
            target = _cleaned(entry.linkname) if self.archive else _normalize(entry.linkname)
        except ValueError as exc:
            raise self.unsafe(entry, f"is a hard link to a name with {exc}") from None
        if not target or target == parts:
            raise self.unsafe(entry, "is a hard link to itself or to the root")
        try:
            tparent = open_dir(self.root_fd, target[:-1])
        except OSError:
            raise UnpackError(f"layer {self.layer}: hard link {_show(entry.name)} -> {_show(entry.linkname)}: "
                              "the target does not exist in the rootfs") from None
        try:
            st = _exists(tparent, target[-1])
            if st is None:
                raise UnpackError(f"layer {self.layer}: hard link {_show(entry.name)} -> {_show(entry.linkname)}: "
                                  "the target does not exist in the rootfs")
            if stat.S_ISDIR(st.st_mode):
                raise self.unsafe(entry, "is a hard link to a directory")
            os.link(target[-1], name, src_dir_fd=tparent, dst_dir_fd=parent, follow_symlinks=False)
            return stat.S_ISLNK(st.st_mode)
        finally:
            os.close(tparent)

    # ------------------------------------------------------------------ metadata
    def _owner(self, fd_or_parent: int, name: bytes | None, entry: TarEntry) -> None:
        uid, gid = self.owner or (entry.uid, entry.gid)
        if not self.as_root and self.owner is None:
            return
        try:
            if name is None:
                os.chown(fd_or_parent, uid, gid)
            else:
                os.chown(name, uid, gid, dir_fd=fd_or_parent, follow_symlinks=False)
        except OSError as exc:
            self.note(f"owner {uid}:{gid} of {_show(entry.name)} not restored ({exc.strerror})")

    def _xattrs(self, fd: int, entry: TarEntry) -> None:
        for key, value in self._kept(entry):
            try:
                os.setxattr(fd, key, value)
            except OSError as exc:
                self.note(f"xattr {key} of {_show(entry.name)} not restored ({exc.strerror})")

    def _xattrs_at(self, parent: int, name: bytes, entry: TarEntry) -> None:
        if not entry.xattrs:
            return
        path = b"/proc/self/fd/%d/" % parent + name
        for key, value in self._kept(entry):
            try:
                os.setxattr(path, key, value, follow_symlinks=False)
            except OSError as exc:
                self.note(f"xattr {key} of {_show(entry.name)} not restored ({exc.strerror})")

    def _kept(self, entry: TarEntry) -> list[tuple[str, bytes]]:
        """The entry's xattrs but overlayfs' own (skipped with a note)."""
        kept = []
        for key, value in entry.xattrs.items():
            if key.startswith(_OVERLAY_XATTRS):
                self.note(f"xattr {key} of {_show(entry.name)} skipped (overlayfs' own)")
            else:
                kept.append((key, value))
        return kept

    def finish_dirs(self) -> None:
        self._forget()
        for parts, entry in reversed(self.dirs):
            try:
                fd = open_dir(self.root_fd, parts, follow_last=False) if parts else os.dup(self.root_fd)
            except OSError:
                continue  # replaced or removed by a later entry
            try:
                if not parts:
                    self._owner(fd, None, entry)
                    self._xattrs(fd, entry)
                os.fchmod(fd, entry.mode & 0o7777)
                os.utime(fd, ns=(_bounded(entry.mtime_ns),) * 2)
            finally:
                os.close(fd)


_MAX_MTIME_NS = (1 << 63) - 1


def _bounded(mtime_ns: int) -> int:
    """An entry's mtime as set on disk: one before 1970 or past what 64-bit nanoseconds hold is the
    epoch, as moby's and containerd's unpackers bound it (a hostile layer's huge one raised an
    OverflowError here)."""
    return mtime_ns if 0 <= mtime_ns <= _MAX_MTIME_NS else 0


def apply_layer(stream: BinaryIO, rootfs: str | os.PathLike[str], media_type: str | None = None, *,
                allow_devices: bool | None = None, digest: str | None = None,
                expected_diff_id: str | None = None, limits: Limits | None = None,
                report: Callable[..., None] | None = None, owner: tuple[int, int] | None = None,
                archive: bool = False, overlay: bool = False) -> ApplyResult:
    """Apply one layer blob onto `rootfs` (an existing directory). `digest` names the layer in errors;
    `expected_diff_id`, when given, is checked against the tar read (mismatch -> UnpackError).
    `media_type` is informational: the compression is sniffed from the blob itself. `owner` replaces
    every entry's uid:gid (ADD --chown); `archive`: an ADD archive, not an image layer (names taken as
    BuildKit's untar takes them; the result lists the paths written and those whiteouts removed); `overlay`:
    `rootfs` is a layer dir in the making (see the module docstring)."""
    layer = digest or (f"({media_type})" if media_type else "(unnamed)")
    limits = limits or Limits.from_env()
    root = Path(rootfs)
    if allow_devices is None:
        allow_devices = os.geteuid() == 0
    applier = _Applier(root, layer, allow_devices, limits, report, owner, overlay, archive)
    inflated = Inflated(stream, limits.max_bytes, layer)
    try:
        try:
            reader = TarReader(inflated, max_meta=limits.max_meta, max_name=limits.max_name)
            for entry in reader:
                applier.apply(entry, reader)
            while inflated.read(1 << 20):
                pass  # hash trailing padding and let the blob stream verify its digest at EOF
        except TarFormatError as exc:
            cls = LayerLimitError if "limit" in str(exc) or "longer than" in str(exc) else UnpackError
            raise cls(f"layer {layer}: {exc}") from None
        except (OSError, EOFError, ValueError, zstandard.ZstdError) as exc:
            if isinstance(exc, BuildError):
                raise
            raise UnpackError(f"layer {layer}: cannot read the blob: {exc}; is it a (gzip/zstd) tar?") from None
        applier.finish_dirs()
    finally:
        applier.close()
        inflated.close()   # the worker stops before the blob under it is closed
    result = applier.result
    if archive:
        result.paths = applier.created | {b"/".join(parts) for parts, _ in applier.dirs}
    result.diff_id = inflated.diff_id()
    result.bytes = inflated.count
    if expected_diff_id and result.diff_id != expected_diff_id:
        raise UnpackError(f"layer {layer}: its tar has diffID {result.diff_id} but the image config says "
                          f"{expected_diff_id}; the image is inconsistent — rebuild or re-push it")
    return result
