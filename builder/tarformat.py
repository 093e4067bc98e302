"""The tar format, both directions, as small pure pieces: ustar headers with PAX extended records for
what ustar cannot hold (long or non-ASCII names, big sizes/ids, xattrs), and a streaming reader that
parses ustar, PAX (local and global) and GNU long names with hard limits on every length it reads.

Writing is deterministic by construction: numeric uid/gid, empty uname/gname, integer mtimes,
PAX records in a fixed order, the PAX entry always named `././@PaxHeader` with mode 0o644 and mtime 0.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Iterator, Mapping, NamedTuple, Protocol

BLOCK = 512
END_OF_ARCHIVE = b"\0" * (2 * BLOCK)

REGULAR, HARDLINK, SYMLINK, CHAR, BLOCKDEV, DIRECTORY, FIFO = b"0", b"1", b"2", b"3", b"4", b"5", b"6"
ENTRY_TYPES = {REGULAR, HARDLINK, SYMLINK, CHAR, BLOCKDEV, DIRECTORY, FIFO}
_PAX_LOCAL, _PAX_GLOBAL, _GNU_LONGNAME, _GNU_LONGLINK = b"x", b"g", b"L", b"K"
_XATTR_PREFIX = b"SCHILY.xattr."


class TarFormatError(ValueError):
    """The stream is not a tar archive kade accepts (corrupt, truncated, unsupported or over a limit)."""


@dataclass(slots=True)
class TarEntry:
    name: bytes
    type: bytes
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    size: int = 0
    mtime_ns: int = 0
    linkname: bytes = b""
    devmajor: int = 0
    devminor: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)


class TocEntry(NamedTuple):
    """One entry of a tar stream's table of contents, as the writer wrote it (builder/layer.py): what a
    reader would parse from its headers, and where its content starts in the uncompressed stream."""
    name: bytes
    type: bytes
    mode: int
    size: int
    linkname: bytes
    offset: int


# ---------------------------------------------------------------------------------------- writing

def padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


_MAX8, _MAX12 = 8 ** 7, 8 ** 11   # limits of the 8- and 12-byte octal fields
MAX_ID = 2 ** 32 - 2   # the largest Linux uid/gid (2**32 - 1 is chown's "leave it")


def _fits(value: int, width: int) -> bool:
    return 0 <= value < 8 ** (width - 1)


def pax_record(key: bytes, value: bytes) -> bytes:
    payload = b" " + key + b"=" + value + b"\n"
    n = len(payload) + 1
    while True:
        record = str(n).encode() + payload
        if len(record) == n:
            return record
        n = len(record)


_NO_DEVICES = b"%07o\0%07o\0" % (0, 0)
_FIXED_SUM = 256 + sum(b"ustar\x0000")   # the checksum field as 8 spaces, and the magic
_NO_DEVICES_SUM = sum(_NO_DEVICES)
_MIDDLE = bytes(100)   # an empty link name
_TAIL = b"ustar\x0000" + bytes(64)


def _ustar_block(name: bytes, mode: int, uid: int, gid: int, size: int, mtime: int, typeflag: bytes,
                 linkname: bytes, devmajor: int, devminor: int) -> bytes:
    # Joined from its non-zero pieces; the checksum (sum of all bytes, the checksum field as 8 spaces)
    # is the sum of those pieces, since the padding is zeros. Callers ensure every number fits its field.
    name = name[:100]
    numbers = b"%07o\0%07o\0%07o\0%011o\0%011o\0" % (mode, uid, gid, size, mtime)
    checksum = sum(name) + sum(numbers) + typeflag[0] + _FIXED_SUM
    if linkname:
        linkname = linkname[:100]
        checksum += sum(linkname)
        middle = linkname + bytes(100 - len(linkname))
    else:
        middle = _MIDDLE
    if devmajor or devminor:
        devices = b"%07o\0%07o\0" % (devmajor, devminor)
        checksum += sum(devices)
    else:
        devices, checksum = _NO_DEVICES, checksum + _NO_DEVICES_SUM
    return b"".join((name, bytes(100 - len(name)), numbers, b"%06o\0 " % checksum, typeflag, middle, _TAIL,
                     devices, bytes(167)))


def plain_header(name: bytes, typeflag: bytes, mode: int, uid: int, gid: int, size: int, mtime: int) -> bytes | None:
    """The one ustar block of an entry with no link name, device numbers or xattrs, when ustar alone
    holds it (a short ASCII name, numbers that fit); None when it needs `encode_header`. The layer
    writer's path for most files: no TarEntry is built for them."""
    if (len(name) <= 100 and name.isascii() and 0 <= size < _MAX12 and 0 <= uid < _MAX8 and 0 <= gid < _MAX8
            and 0 <= mtime < _MAX12):
        return _ustar_block(name, mode & 0o7777, uid, gid, size, mtime, typeflag, b"", 0, 0)
    return None


def _needs_pax_name(name: bytes) -> bool:
    return len(name) > 100 or not name.isascii()


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def encode_header(entry: TarEntry) -> bytes:
    """The header block(s) of `entry`: a PAX extended header first when ustar cannot hold it."""
    name, linkname = entry.name, entry.linkname
    mtime = max(0, entry.mtime_ns // 1_000_000_000)
    if (not entry.xattrs and len(name) <= 100 and len(linkname) <= 100 and name.isascii() and linkname.isascii()
            and 0 <= entry.size < _MAX12 and 0 <= entry.uid < _MAX8 and 0 <= entry.gid < _MAX8 and mtime < _MAX12
            and 0 <= entry.devmajor < _MAX8 and 0 <= entry.devminor < _MAX8):   # the common case: ustar alone
        return _ustar_block(name, entry.mode & 0o7777, entry.uid, entry.gid, entry.size, mtime, entry.type,
                            linkname, entry.devmajor, entry.devminor)
    records: list[bytes] = []
    if not (_is_utf8(name) and _is_utf8(linkname)):
        records.append(pax_record(b"hdrcharset", b"BINARY"))
    if _needs_pax_name(name):
        records.append(pax_record(b"path", name))
    if _needs_pax_name(linkname):
        records.append(pax_record(b"linkpath", linkname))
    numbers = {b"size": (entry.size, 12), b"uid": (entry.uid, 8), b"gid": (entry.gid, 8),
               b"mtime": (max(0, entry.mtime_ns // 1_000_000_000), 12)}
    fields: dict[bytes, int] = {}
    for key, (value, width) in numbers.items():
        if _fits(value, width):
            fields[key] = value
        else:
            records.append(pax_record(key, b"%d" % value))
            fields[key] = 0
    if not (_fits(entry.devmajor, 8) and _fits(entry.devminor, 8)):
        raise TarFormatError(f"device numbers {entry.devmajor}:{entry.devminor} of {name!r} do not fit a tar header")
    for attr in sorted(entry.xattrs):
        records.append(pax_record(_XATTR_PREFIX + attr.encode("utf-8", "surrogateescape"), entry.xattrs[attr]))
    out = b""
    if records:
        body = b"".join(records)
        out = _ustar_block(b"././@PaxHeader", 0o644, 0, 0, len(body), 0, _PAX_LOCAL, b"", 0, 0)
        out += body + padding(len(body))
    return out + _ustar_block(name, entry.mode & 0o7777, fields[b"uid"], fields[b"gid"], fields[b"size"],
                              fields[b"mtime"], entry.type, linkname,
                              entry.devmajor, entry.devminor)


# ---------------------------------------------------------------------------------------- reading

def _nts(field_: bytes) -> bytes:
    return field_.split(b"\0", 1)[0]


_PARSED: dict[bytes, int] = {}   # mode, uid, gid and mtime fields seen -> their values: they repeat
_PARSED_MAX = 4096


def _repeated_number(field_: bytes, what: str) -> int:
    """`_number` of a field whose values repeat from entry to entry, parsed once per value (a bounded
    cache: a hostile stream can only make it stop caching)."""
    value = _PARSED.get(field_)
    if value is None:
        value = _number(field_, what)
        if len(_PARSED) < _PARSED_MAX:
            _PARSED[field_] = value
    return value


def _number(field_: bytes, what: str) -> int:
    if field_ and field_[0] & 0x80:
        if field_[0] == 0xFF:
            raise TarFormatError(f"negative {what} in a tar header")
        value = field_[0] & 0x7F
        for b in field_[1:]:
            value = (value << 8) | b
        return value
    text = field_.split(b"\0", 1)[0].strip(b" ")
    if text.isdigit():   # ASCII digits only: int() alone would take a sign, "0o", "_" and tabs
        try:
            return int(text, 8)
        except ValueError:   # an 8 or a 9
            pass
    elif not text:
        return 0
    raise TarFormatError(f"bad {what} field {field_!r} in a tar header")


def _decimal_ns(value: bytes) -> int:
    text = value.decode("ascii", "replace").strip()
    sign = -1 if text.startswith("-") else 1
    whole, _, frac = text.lstrip("+-").partition(".")
    try:
        return sign * (int(whole or "0") * 1_000_000_000 + int((frac + "000000000")[:9]))
    except ValueError:
        raise TarFormatError(f"bad PAX mtime {value!r}") from None


def _pax_int(value: bytes, key: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise TarFormatError(f"bad PAX {key} {value!r}") from None
    if number < 0:
        raise TarFormatError(f"negative PAX {key} {value!r}")
    return number


def parse_pax(body: bytes) -> dict[bytes, bytes]:
    records: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(body):
        if body[pos:].strip(b"\0") == b"":
            break
        space = body.find(b" ", pos, pos + 24)
        if space < 0:
            raise TarFormatError("corrupt PAX header (no record length)")
        try:
            length = int(body[pos:space])
        except ValueError:
            raise TarFormatError("corrupt PAX header (bad record length)") from None
        record = body[pos:pos + length]
        if length <= space - pos + 1 or len(record) != length or not record.endswith(b"\n"):
            raise TarFormatError("corrupt PAX header (bad record)")
        key, eq, value = record[space - pos + 1:-1].partition(b"=")
        if not eq:
            raise TarFormatError("corrupt PAX header (record without '=')")
        records[key] = value
        pos += length
    return records


class ByteReader(Protocol):
    """All TarReader needs of its stream: a file, or a stream object such as builder.unpack.Inflated."""

    def read(self, n: int = -1, /) -> bytes: ...


_ZERO_BLOCK = bytes(BLOCK)   # two of them end an archive
_NO_PAX: Mapping[bytes, bytes] = MappingProxyType({})   # the records of most entries: none (read-only, shared)


def byte_sum(block: bytes) -> int:
    """The sum of a header block's bytes, in C: adler32's low half is 1 + the sum of the bytes modulo
    65521, and 256 bytes sum to at most 65280, so each half of a block gives its exact sum."""
    return (zlib.adler32(block[:256]) & 0xFFFF) + (zlib.adler32(block[256:]) & 0xFFFF) - 2


class TarReader:
    """Iterate the entries of an uncompressed tar stream. Read an entry's content with `read(n)`
    before moving on; whatever is left unread is skipped. Every metadata length read into memory is
    bounded by `max_meta` and every name by `max_name`.

    The reader takes what its stream has at hand (up to 1 MiB) and cuts headers, small contents and
    padding from it: three stream calls per entry were most of a small file's cost. `offset` counts
    the bytes consumed, not those read ahead."""

    def __init__(self, stream: ByteReader, *, max_meta: int = 1 << 20, max_name: int = 4096):
        self._stream = stream
        self._max_meta = max_meta
        self._max_name = max_name
        self._remaining = 0
        self._pad = 0
        self._buf = b""   # read from the stream, consumed up to _at
        self._at = 0
        self.offset = 0

    def _refill(self) -> bool:
        """Whether bytes are at hand: what was read ahead, or else what the stream has now (up to 1 MiB)."""
        if self._at >= len(self._buf):
            self._buf, self._at = self._stream.read(1 << 20), 0
        return self._at < len(self._buf)

    def _take(self, n: int) -> bytes:
        """Up to `n` bytes of what is at hand (b"": the stream ended)."""
        self._refill()
        data = self._buf[self._at:self._at + n]
        self._at += len(data)
        return data

    def _read_exact(self, n: int) -> bytes:
        chunks, got = [], 0
        while got < n:
            chunk = self._take(min(n - got, 1 << 20))
            if not chunk:
                raise TarFormatError(f"truncated tar stream at byte {self.offset + got} (wanted {n - got} more)")
            chunks.append(chunk)
            got += len(chunk)
        self.offset += n
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _skip(self, n: int) -> None:
        while n > 0:
            if not self._refill():
                raise TarFormatError(f"truncated tar stream at byte {self.offset} (wanted {n} more)")
            step = min(n, len(self._buf) - self._at)
            self._at += step
            self.offset += step
            n -= step

    def read(self, n: int = 1 << 20) -> bytes:
        """Up to `n` bytes of the current entry's content (b"" at its end): what the stream has at hand,
        so a file's bytes are passed on without being joined."""
        n = min(n, self._remaining)
        if n <= 0:
            return b""
        data = self._take(n)
        if not data:
            raise TarFormatError(f"truncated tar stream at byte {self.offset} (wanted {n} more)")
        self.offset += len(data)
        self._remaining -= len(data)
        return data

    def _finish_entry(self) -> None:
        if self._remaining or self._pad:
            self._skip(self._remaining + self._pad)
            self._remaining = self._pad = 0

    def _meta(self, size: int, what: str) -> bytes:
        if size > self._max_meta:
            raise TarFormatError(f"{what} of {size} bytes is over the {self._max_meta}-byte limit")
        data = self._read_exact(size)
        self._skip(-size % BLOCK)
        return data

    def __iter__(self) -> Iterator[TarEntry]:
        global_pax: dict[bytes, bytes] = {}
        local_pax: dict[bytes, bytes] = {}
        longname = longlink = None
        while True:
            self._finish_entry()
            block = self._take(BLOCK)
            while block and len(block) < BLOCK:
                more = self._take(BLOCK - len(block))
                if not more:
                    break
                block += more
            if not block:
                if local_pax or longname is not None or longlink is not None:
                    raise TarFormatError("tar stream ends after an extended header")
                return  # tolerated: archive without the end-of-archive blocks
            if len(block) < BLOCK:
                raise TarFormatError(f"truncated tar header at byte {self.offset}")
            self.offset += BLOCK
            if block == _ZERO_BLOCK:
                return
            self._check_sum(block)
            typeflag = block[156:157]
            size = _number(block[124:136], "size")
            if typeflag in (_PAX_LOCAL, _PAX_GLOBAL):
                records = parse_pax(self._meta(size, "PAX header"))
                (local_pax if typeflag == _PAX_LOCAL else global_pax).update(records)
                continue
            if typeflag in (_GNU_LONGNAME, _GNU_LONGLINK):
                value = _nts(self._meta(size, "GNU long name"))
                if typeflag == _GNU_LONGNAME:
                    longname = value
                else:
                    longlink = value
                continue
            pax = {**global_pax, **local_pax} if global_pax or local_pax else _NO_PAX
            entry = self._entry(block, size, pax, longname, longlink)
            local_pax, longname, longlink = {}, None, None
            if entry.type != REGULAR:
                entry.size = 0
            self._remaining = entry.size
            self._pad = -self._remaining % BLOCK
            yield entry

    def _check_sum(self, block: bytes) -> None:
        stored = _number(block[148:156], "checksum")
        unsigned = byte_sum(block) - sum(block[148:156]) + 8 * 32   # the checksum field counts as 8 spaces
        if stored == unsigned:
            return
        blanked = block[:148] + b" " * 8 + block[156:]
        signed = unsigned - 256 * sum(1 for b in blanked if b > 127)  # some old writers summed signed bytes
        if stored != signed:
            raise TarFormatError(f"tar header checksum mismatch at byte {self.offset - BLOCK} (not a tar stream?)")

    def _entry(self, block: bytes, size: int, pax: Mapping[bytes, bytes], longname: bytes | None,
               longlink: bytes | None) -> TarEntry:
        typeflag = block[156:157]
        if typeflag in (b"\0", b"7"):
            typeflag = REGULAR
        name = _nts(block[0:100])
        if block[257:263] == b"ustar\0":
            prefix = _nts(block[345:500])
            if prefix:
                name = prefix + b"/" + name
        linkname = _nts(block[157:257])
        if longname is not None:
            name = longname
        if longlink is not None:
            linkname = longlink
        entry = TarEntry(
            name=pax.get(b"path") or name, type=typeflag,
            mode=_repeated_number(block[100:108], "mode"), uid=_repeated_number(block[108:116], "uid"),
            gid=_repeated_number(block[116:124], "gid"), size=size,
            mtime_ns=_repeated_number(block[136:148], "mtime") * 1_000_000_000,
            linkname=pax.get(b"linkpath") or linkname,
        )
        if typeflag in (CHAR, BLOCKDEV):   # other entries' device fields mean nothing (GNU tar ignores them too)
            entry.devmajor, entry.devminor = _number(block[329:337], "devmajor"), _number(block[337:345], "devminor")
        for key, value in pax.items():
            if key == b"size" and value:
                entry.size = _pax_int(value, "size")
            elif key == b"uid" and value:
                entry.uid = _pax_int(value, "uid")
            elif key == b"gid" and value:
                entry.gid = _pax_int(value, "gid")
            elif key == b"mtime" and value:
                entry.mtime_ns = _decimal_ns(value)
            elif key.startswith(_XATTR_PREFIX):
                entry.xattrs[key[len(_XATTR_PREFIX):].decode("utf-8", "surrogateescape")] = value
            elif key.startswith(b"GNU.sparse."):
                raise TarFormatError(f"sparse tar entry {entry.name!r} is not supported")
        if entry.uid > MAX_ID or entry.gid > MAX_ID:   # chown would raise OverflowError (Linux ids are 32-bit)
            raise TarFormatError(f"entry {entry.name[:80]!r} has owner {entry.uid}:{entry.gid}: past the largest "
                                 f"Linux id {MAX_ID}")
        if len(entry.name) > self._max_name or len(entry.linkname) > self._max_name:
            raise TarFormatError(f"entry name or link target longer than {self._max_name} bytes: {entry.name[:80]!r}...")
        if typeflag not in ENTRY_TYPES:
            raise TarFormatError(f"unsupported tar entry type {typeflag!r} for {entry.name!r}")
        return entry
