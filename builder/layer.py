"""Deterministic layer writer: a list of changes (or a directory) -> a compressed tar blob, with the
diffID (sha256 of the tar), the digest and the size of the compressed blob computed in the same single
streaming pass. Memory stays bounded (one 1 MiB chunk in flight) whatever the layer's size.

Determinism: entries sorted by path components, numeric uid/gid with empty uname/gname, PAX only
where ustar cannot hold a field, integer mtimes clamped to `epoch` (SOURCE_DATE_EPOCH) when given,
hard links written as tar links to their first occurrence in entry order, whiteouts `.wh.<name>` and
opaque whiteouts `.wh..wh..opq` with mode 0 and mtime `epoch or 0`. Sockets are skipped (as Docker
and buildah do). Kept xattrs: `security.capability` only, as BuildKit's differ and moby write layers
(builder/layernorm.py `written_xattr`); SELinux labels and `trusted.*` are host state, not image content.

gzip is deflated on every core (builder/pgzip.py: fixed 1 MiB blocks, pigz-style, by ISA-L): the
header carries no name and mtime 0 and the blocks do not depend on the number of cores, so equal trees
give equal digests with the same compressor on any machine. Hashing the tar, compressing, and hashing
and writing the blob each run in a thread of their own, beside the tar being built. zstd uses python-zstandard at level 3 with zstd's own worker threads (one per core): its
multi-threaded format depends on the job size, never on the number of workers, so the blob is the same
everywhere.
"""
from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterable, Iterator, Literal

from builder.changes import Change, split_path, tar_name
from builder.errors import BuildError
from builder.layernorm import written_xattr
from builder.tarformat import (BLOCK, BLOCKDEV, CHAR, DIRECTORY, END_OF_ARCHIVE, FIFO, HARDLINK, REGULAR,
                               SYMLINK, TarEntry, TarFormatError, TocEntry, encode_header, plain_header)
from common.stage import Stage
from registry.mediatypes import OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD

MEDIA_TYPE_TAR, MEDIA_TYPE_GZIP, MEDIA_TYPE_ZSTD = OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD

Compression = Literal["gzip", "zstd", "none"]
MEDIA_TYPES: dict[str, str] = {"gzip": MEDIA_TYPE_GZIP, "zstd": MEDIA_TYPE_ZSTD, "none": MEDIA_TYPE_TAR}
GZIP_LEVEL = 1   # ISA-L levels are 0-3; 1 is ~450 MB/s per core here
ZSTD_LEVEL = 3
CHUNK = 1 << 20


class LayerWriteError(BuildError):
    """A layer could not be written (a source vanished or changed while being read, bad change list)."""


@dataclass(frozen=True)
class LayerInfo:
    digest: str      # sha256 of the blob as stored (compressed)
    diff_id: str     # sha256 of the uncompressed tar
    size: int        # bytes of the blob as stored
    media_type: str
    toc: tuple[TocEntry, ...] | None = None   # its entries, when asked for (`write_layer(toc=True)`)


def read_xattrs(target: str | bytes | int) -> dict[str, bytes]:
    """The kept xattrs of a path (never following a symlink) or of an open file descriptor."""
    follow = isinstance(target, int)
    try:
        names = os.listxattr(target, follow_symlinks=follow)
    except OSError:
        return {}
    if not names:   # most files
        return {}
    out: dict[str, bytes] = {}
    for name in sorted(names):
        if written_xattr(name):
            try:
                out[name] = os.getxattr(target, name, follow_symlinks=follow)
            except OSError:
                continue
    return out


def _compressor(compression: str, level: int | None):
    if compression == "gzip":
        from builder.pgzip import ParallelGzip
        return ParallelGzip(GZIP_LEVEL if level is None else level)
    if compression == "zstd":
        import zstandard
        # zstd's own worker threads; its output is the same for any number of them (>= 1: one worker
        # already uses the multi-threaded format), so every machine writes the same blob
        return zstandard.ZstdCompressor(level=ZSTD_LEVEL if level is None else level,
                                        threads=max(1, os.cpu_count() or 1)).compressobj()
    if compression == "none":
        return None
    raise LayerWriteError(f"unknown layer compression {compression!r}; use gzip, zstd or none")


class _Pipeline:
    """tar bytes -> sha256 (diffID), and in parallel -> compressor -> sha256 (digest) + size -> out, in
    1 MiB blocks, each part in a thread of its own (they release the GIL: the tar is built meanwhile).
    A file's content is read straight into the block being filled (`read_from`), and a full block is
    handed over whole, never copied again: every byte is copied once, by the kernel. Each block is a
    fresh, zeroed bytearray written front to back once, so padding is a skip (`zeros`). Uncompressed
    layers hash once (digest == diffID)."""

    def __init__(self, out: BinaryIO, compression: str, level: int | None):
        self._out = out
        self._comp = _compressor(compression, level)
        self._tar_hash = hashlib.sha256()
        self._blob_hash = hashlib.sha256() if self._comp is not None else self._tar_hash
        self._block = bytearray(CHUNK)
        self._view = memoryview(self._block)
        self._pos = 0
        self.size = 0
        self.written = 0   # uncompressed bytes so far
        self._writer = Stage(self._emit, name="kade-layer-write")
        self._stages = [Stage(self._compress, name="kade-layer-compress") if self._comp is not None else self._writer]
        if self._comp is not None:
            self._stages.append(Stage(self._tar_hash.update, name="kade-layer-hash"))
        self._closed = False

    def write(self, data: bytes) -> None:
        self.written += len(data)
        end = self._pos + len(data)
        if end < CHUNK:   # the common case: a header, some padding
            self._block[self._pos:end] = data
            self._pos = end
            return
        view = memoryview(data)
        while view:
            n = min(len(view), CHUNK - self._pos)
            self._block[self._pos:self._pos + n] = view[:n]
            self._pos += n
            view = view[n:]
            if self._pos == CHUNK:
                self._send_block()

    def read_from(self, fd: int, size: int) -> int:
        """Append `size` bytes read from `fd`; returns how many there were (fewer: the file ended first)."""
        left = size
        while left:
            n = min(left, CHUNK - self._pos)
            got = os.readv(fd, [self._view[self._pos:self._pos + n]])
            if not got:
                break
            self._pos += got
            self.written += got
            left -= got
            if self._pos == CHUNK:
                self._send_block()
        return size - left

    def put_file(self, header: bytes, fd: int, size: int) -> int:
        """A file's header block(s), `size` bytes read from `fd` and the padding to a whole tar block;
        returns how many content bytes there were (fewer: the file ended first, and nothing more was
        appended). A file that fits in the block being filled (most files of a RUN's upper dir) takes
        one call and one read."""
        start = self._pos + len(header)
        end = start + size
        padded = end + (-size % BLOCK)
        if padded >= CHUNK:
            self.write(header)
            got = self.read_from(fd, size)
            if got == size:
                self.zeros(padded - end)
            return got
        self._block[self._pos:start] = header
        got = os.readv(fd, [self._view[start:end]]) if size else 0
        if got < size:   # a regular file reads short only at its end
            self._pos = start + got
            self.written += len(header) + got
            return got
        self._pos = padded   # the padding is the zeros already there
        self.written += len(header) + padded - start
        return size

    def zeros(self, n: int) -> None:
        """Append `n` zero bytes: what is past `_pos` in the block is still zero."""
        self.written += n
        while n:
            step = min(n, CHUNK - self._pos)
            self._pos += step
            n -= step
            if self._pos == CHUNK:
                self._send_block()

    def _send_block(self) -> None:
        block, self._block, self._pos = self._block, bytearray(CHUNK), 0
        self._view = memoryview(self._block)
        self._send(block)   # no longer ours: the stages read it while the next one fills

    def _send(self, data: bytes | bytearray) -> None:
        for stage in self._stages:
            stage.put(data)

    def _flush(self) -> None:
        if self._pos:
            data = bytes(self._block[:self._pos])
            self._pos = 0
            self._send(data)

    def _compress(self, data: bytes | bytearray) -> None:
        assert self._comp is not None
        packed = self._comp.compress(data)
        if packed:
            self._writer.put(packed)

    def _emit(self, data: bytes | bytearray) -> None:
        if data:
            self._blob_hash.update(data)
            self.size += len(data)
            self._out.write(data)

    def close(self) -> tuple[str, str]:
        """Finish the blob; returns (digest, diffID)."""
        self._flush()
        self._finish(self._stages)
        if self._comp is not None:
            self._writer.put(self._comp.flush())
            self._finish([self._writer])
        self._closed = True
        return "sha256:" + self._blob_hash.hexdigest(), "sha256:" + self._tar_hash.hexdigest()

    def abort(self) -> None:
        """Stop the worker threads (raising the first error any of them hit)."""
        if self._closed:
            return
        self._closed = True
        self._finish(self._stages + ([self._writer] if self._comp is not None else []))

    @staticmethod
    def _finish(stages: list[Stage]) -> None:
        errors = []
        for stage in stages:
            try:
                stage.finish()
            except BaseException as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


_ENTRY_TYPES = {stat.S_IFREG: REGULAR, stat.S_IFDIR: DIRECTORY, stat.S_IFLNK: SYMLINK, stat.S_IFCHR: CHAR,
                stat.S_IFBLK: BLOCKDEV, stat.S_IFIFO: FIFO}


def _entry_type(st: os.stat_result) -> bytes | None:
    """The tar type of a file; None for sockets and anything unknown (skipped)."""
    return _ENTRY_TYPES.get(stat.S_IFMT(st.st_mode))


# non-blocking: a fifo swapped in since the scan reads as empty ("shrank"), never waits
_OPEN_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class _TarWriter:
    def __init__(self, sink: _Pipeline, epoch: int | None, toc: bool = False):
        self._sink = sink
        self._epoch = epoch
        self._links: dict[tuple[int, int], bytes] = {}
        self.entries = 0
        self.toc: list[TocEntry] | None = [] if toc else None

    def _header(self, entry: TarEntry) -> None:
        self._sink.write(encode_header(entry))
        if self.toc is not None:
            self.toc.append(TocEntry(entry.name, entry.type, entry.mode, entry.size, entry.linkname, self._sink.written))

    def _mtime(self, st: os.stat_result) -> int:
        """The entry's mtime in whole seconds, clamped to the epoch."""
        seconds = max(0, st.st_mtime_ns // 1_000_000_000)
        return seconds if self._epoch is None else min(seconds, self._epoch)

    def whiteout(self, name: bytes) -> None:
        mtime = (self._epoch or 0) * 1_000_000_000
        self._header(TarEntry(name=name, type=REGULAR, mode=0, mtime_ns=mtime))
        self.entries += 1

    def add(self, name: bytes, change: Change) -> None:
        if change.source is None:
            self._header(TarEntry(
                name=name + b"/" if name else b"./", type=DIRECTORY, mode=(change.mode or 0) & 0o7777,
                uid=change.uid or 0, gid=change.gid or 0, mtime_ns=(self._epoch or 0) * 1_000_000_000))
            self.entries += 1
            return
        source = change.source
        try:
            st = change.stat or os.lstat(source)
        except OSError as exc:
            raise LayerWriteError(f"cannot read {source} for layer entry {name!r}: {exc.strerror}") from None
        mode = st.st_mode & 0o7777 if change.mode is None else change.mode & 0o7777
        uid = st.st_uid if change.uid is None else change.uid
        gid = st.st_gid if change.gid is None else change.gid
        if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:   # most entries: no TarEntry, no link lookup
            self._add_file(name, mode, uid, gid, self._mtime(st), source, st.st_size)
            self.entries += 1
            return
        typeflag = _entry_type(st)
        if typeflag is None:
            return
        linkname = b""
        if typeflag == REGULAR:
            first = self._links.get((st.st_dev, st.st_ino))
            if first is not None:
                typeflag, linkname = HARDLINK, first
            else:
                self._links[(st.st_dev, st.st_ino)] = name
        if typeflag == REGULAR:
            self._add_file(name, mode, uid, gid, self._mtime(st), source, st.st_size)
        else:
            entry = TarEntry(name=name + b"/" if typeflag == DIRECTORY and name else name or b"./", type=typeflag,
                             mode=mode, uid=uid, gid=gid, mtime_ns=self._mtime(st) * 1_000_000_000,
                             linkname=linkname)
            if typeflag == SYMLINK:
                entry.linkname = os.readlink(os.fsencode(source))
            elif typeflag in (CHAR, BLOCKDEV):
                entry.devmajor, entry.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
            if typeflag != HARDLINK:
                entry.xattrs = read_xattrs(source)
            self._header(entry)
        self.entries += 1

    def _add_file(self, name: bytes, mode: int, uid: int, gid: int, mtime: int, source: str, size: int) -> None:
        """A regular file's header and content, read from one fd; most files need no TarEntry (`plain_header`)."""
        try:
            fd = os.open(source, _OPEN_FILE)
        except OSError as exc:
            raise LayerWriteError(f"cannot open {source} for the layer: {exc.strerror}") from None
        try:
            xattrs = read_xattrs(fd)
            header = None if xattrs else plain_header(name, REGULAR, mode, uid, gid, size, mtime)
            if header is None:
                header = encode_header(TarEntry(name=name, type=REGULAR, mode=mode, uid=uid, gid=gid, size=size,
                                                mtime_ns=mtime * 1_000_000_000, xattrs=xattrs))
            if self.toc is not None:
                self.toc.append(TocEntry(name, REGULAR, mode, size, b"", self._sink.written + len(header)))
            got = self._sink.put_file(header, fd, size)
            if got < size:
                raise LayerWriteError(f"{source} shrank while the layer was written "
                                      f"({size - got} bytes missing); is something still writing to the rootfs?")
        finally:
            os.close(fd)


def write_layer(changes: Iterable[Change], out: BinaryIO, compression: Compression = "gzip",
                epoch: int | None = None, *, level: int | None = None, toc: bool = False) -> LayerInfo:
    """Write `changes` as one layer blob to `out` and describe it (with `toc`, its table of contents
    too). Entries are sorted, so the order of `changes` does not matter; two changes naming the same
    tar entry are an error."""
    ordered = sorted(((tar_name(c), c) for c in changes), key=lambda kc: kc[0])
    sink = _Pipeline(out, compression, level)
    writer = _TarWriter(sink, epoch, toc)
    previous: tuple[bytes, ...] | None = None
    try:
        for key, change in ordered:
            if key == previous:
                raise LayerWriteError(f"two changes for the same layer path {change.path!r}")
            previous = key
            name = b"/".join(key)
            if change.kind == "add":
                writer.add(name, change)
            else:
                writer.whiteout(name)
        sink.zeros(len(END_OF_ARCHIVE))
    except TarFormatError as exc:
        sink.abort()
        raise LayerWriteError(str(exc)) from None
    except BaseException:
        sink.abort()
        raise
    digest, diff_id = sink.close()
    return LayerInfo(digest=digest, diff_id=diff_id, size=sink.size, media_type=MEDIA_TYPES[compression],
                     toc=tuple(writer.toc) if writer.toc is not None else None)


def walk_directory(root: str | os.PathLike[str], prefix: str = "") -> Iterator[Change]:
    """Every file under `root` (the root itself included, as `prefix` or the layer root) as an "add",
    in sorted order, without following symlinks; at any depth (a stack of listings, no recursion)."""
    root_s = os.fspath(root)
    base = split_path(prefix)
    yield Change(path=os.fsdecode(b"/".join(base)), source=root_s)

    def listing(directory: str) -> Iterator[os.DirEntry[str]]:
        with os.scandir(directory) as it:
            return iter(sorted(it, key=lambda e: os.fsencode(e.name)))

    stack = [(listing(root_s), base)]
    while stack:
        entries, parts = stack[-1]
        entry = next(entries, None)
        if entry is None:
            stack.pop()
            continue
        child = parts + (os.fsencode(entry.name),)
        yield Change(path=os.fsdecode(b"/".join(child)), source=entry.path)
        if entry.is_dir(follow_symlinks=False):
            stack.append((listing(entry.path), child))


def layer_from_directory(root: str | os.PathLike[str], out: BinaryIO, compression: Compression = "gzip",
                         epoch: int | None = None, *, prefix: str = "", level: int | None = None,
                         transform: Callable[[Change], Change] | None = None) -> LayerInfo:
    """A layer holding the tree under `root` placed at `prefix` in the image (COPY --link style).
    `transform` may rewrite each change (e.g. --chown/--chmod overrides)."""
    changes: Iterable[Change] = walk_directory(root, prefix)
    if transform is not None:
        changes = (transform(c) for c in changes)
    return write_layer(changes, out, compression, epoch, level=level)
