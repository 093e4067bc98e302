import io
import tarfile

import pytest

from builder.tarformat import (BLOCK, BLOCKDEV, CHAR, DIRECTORY, HARDLINK, REGULAR, SYMLINK, TarEntry, TarFormatError,
                               TarReader, _number, _repeated_number, byte_sum, encode_header, padding, parse_pax,
                               pax_record, plain_header)


@pytest.mark.parametrize("key,value", [
    (b"path", b"a"),                  # short record
    (b"path", b"x" * 90),             # record length crosses 99 -> 100 (digit count grows)
    (b"path", b"x" * 989),            # crosses 999 -> 1000
    (b"SCHILY.xattr.user.k", bytes(range(256))),
])
def test_pax_record_length_is_self_consistent(key, value):
    record = pax_record(key, value)
    length, _, rest = record.partition(b" ")
    assert int(length) == len(record)
    assert parse_pax(record) == {key: value}


@pytest.mark.parametrize("field,expected", [
    (b"0000644\0", 0o644),
    (b"     17 ", 0o17),
    (b"\0" * 8, 0),
    (b"        ", 0),
    (b"", 0),
    (b"12\0" + b"9x ", 0o12),   # what follows the NUL is not the number's
    (bytes([0x80, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0]), 0x10_0000_0000),  # base-256 (GNU) size
])
def test_number_fields(field, expected):
    assert _number(field, "x") == expected
    assert _repeated_number(field, "x") == expected == _repeated_number(field, "x")   # parsed, then remembered


@pytest.mark.parametrize("field", [b"12x4567\0", bytes([0xFF] * 8), b"  8  \0", b" - \0", b"0o17\0", b"-17\0", b"+17\0", b"1_7\0",
                                   b"\t17\0"])
def test_bad_number_fields_are_refused(field):
    with pytest.raises(TarFormatError):
        _number(field, "x")
    for _ in range(2):   # never remembered as a value
        with pytest.raises(TarFormatError):
            _repeated_number(field, "x")


@pytest.mark.parametrize("body", [b"5 a=b\n", b"10 path\n", b"x path=a\n", b"99 path=a\n"])
def test_corrupt_pax_is_refused(body):
    with pytest.raises(TarFormatError):
        parse_pax(body)


ENTRIES = [
    TarEntry(name=b"short", type=REGULAR, mode=0o4755, uid=1, gid=2, size=3, mtime_ns=5 * 10**9),
    TarEntry(name=b"d/" * 60, type=DIRECTORY, mode=0o755),                      # > 100 bytes: PAX path
    TarEntry(name=b"odd\nname\xff", type=REGULAR, size=0),                        # non-UTF-8: hdrcharset
    TarEntry(name=b"l", type=SYMLINK, linkname=b"/t" * 80),                       # long link: PAX linkpath
    TarEntry(name=b"h", type=HARDLINK, linkname=b"short"),
    TarEntry(name=b"big-ids", type=REGULAR, uid=3_000_000, gid=5_000_000, size=0),  # PAX uid/gid
    TarEntry(name=b"caps", type=REGULAR, xattrs={"security.capability": b"\x01\x00\xff", "user.a": b"v"}),
    TarEntry(name=b"caf\xc3\xa9", type=REGULAR),                                  # UTF-8, non-ASCII: PAX path
]


def _archive(entries):
    out = b""
    for e in entries:
        out += encode_header(e) + b"x" * e.size + padding(e.size)
    return out + b"\0" * 1024


def test_encode_then_read_with_kades_reader():
    data = _archive(ENTRIES)
    got = list(TarReader(io.BytesIO(data)))
    assert [(e.name, e.type, e.mode, e.uid, e.gid, e.size, e.mtime_ns, e.linkname, e.xattrs) for e in got] == \
        [(e.name, e.type, e.mode, e.uid, e.gid, e.size, e.mtime_ns, e.linkname, e.xattrs) for e in ENTRIES]


def test_encoded_headers_read_by_pythons_tarfile():
    tf = tarfile.open(fileobj=io.BytesIO(_archive(ENTRIES)), encoding="utf-8", errors="surrogateescape")
    members = tf.getmembers()
    assert [m.name for m in members] == ["short", ("d/" * 60).rstrip("/"), "odd\nname\udcff", "l", "h", "big-ids",
                                         "caps", "café"]
    assert members[0].mode == 0o4755 and members[0].uname == "" and members[0].gname == ""
    assert members[3].linkname == "/t" * 80
    assert (members[5].uid, members[5].gid) == (3_000_000, 5_000_000)
    assert members[6].pax_headers["SCHILY.xattr.user.a"] == "v"


def test_reader_reads_pythons_gnu_and_pax_archives():
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
            info = tarfile.TarInfo("p/" * 40 + "file" if fmt != tarfile.USTAR_FORMAT else "p/file")
            info.size = 4
            tf.addfile(info, io.BytesIO(b"data"))
        buf.seek(0)
        reader = TarReader(buf)
        entries = [(e.name, reader.read()) for e in reader]
        assert entries == [(info.name.encode(), b"data")], fmt


def test_checksum_mismatch_is_refused():
    data = bytearray(_archive(ENTRIES[:1]))
    data[0] ^= 0x01
    with pytest.raises(TarFormatError, match="checksum"):
        list(TarReader(io.BytesIO(bytes(data))))


def test_truncated_entry_is_refused():
    data = _archive(ENTRIES[:1])[:BLOCK + 1]
    reader = TarReader(io.BytesIO(data))
    with pytest.raises(TarFormatError, match="truncated"):
        for _ in reader:
            pass


def test_metadata_over_limit_is_refused():
    data = _archive([TarEntry(name=b"n" * 5000, type=REGULAR)])
    with pytest.raises(TarFormatError):
        list(TarReader(io.BytesIO(data), max_meta=1 << 20, max_name=4096))
    with pytest.raises(TarFormatError, match="limit"):
        list(TarReader(io.BytesIO(data), max_meta=1000))


def test_signed_checksums_of_old_writers_are_accepted():
    block = bytearray(encode_header(TarEntry(name=b"caf\xe9", type=REGULAR))[-BLOCK:])
    blanked = block[:148] + b" " * 8 + block[156:]
    signed = sum(b - 256 if b > 127 else b for b in blanked)
    block[148:156] = b"%06o\0 " % signed
    names = [e.name for e in TarReader(io.BytesIO(bytes(block) + b"\0" * 1024))]
    assert names == [b"caf\xe9"]


@pytest.mark.parametrize("typeflag,fields,expected", [
    (CHAR, b"0000001\0" + b"0000003\0", (1, 3)),
    (BLOCKDEV, b"0000010\0" + b"0000000\0", (8, 0)),
    (REGULAR, b"garbage!" * 2, (0, 0)),   # what a file's device fields hold is never read
    (DIRECTORY, b"0000001\0" + b"0000003\0", (0, 0)),
])
def test_device_numbers_are_read_for_devices_only(typeflag, fields, expected):
    block = bytearray(encode_header(TarEntry(name=b"n", type=typeflag))[-BLOCK:])
    block[329:345] = fields
    block[148:156] = b"%06o\0 " % (sum(block[:148]) + 256 + sum(block[156:]))
    [entry] = TarReader(io.BytesIO(bytes(block) + b"\0" * 1024))
    assert (entry.devmajor, entry.devminor) == expected


@pytest.mark.parametrize("entry,plain", [
    (TarEntry(name=b"data/f1", type=REGULAR, mode=0o644, size=13, mtime_ns=1_700_000_000 * 10**9), True),
    (TarEntry(name=b"d/", type=DIRECTORY, mode=0o4755, uid=8**7 - 1, gid=0, mtime_ns=0), True),
    (TarEntry(name=b"n" * 100, type=REGULAR, size=8**11 - 1, mtime_ns=(8**11 - 1) * 10**9), True),
    (TarEntry(name=b"n" * 101, type=REGULAR), False),              # a PAX path
    (TarEntry(name=b"caf\xc3\xa9", type=REGULAR), False),          # not ASCII
    (TarEntry(name=b"big", type=REGULAR, size=8**11), False),      # a PAX size
    (TarEntry(name=b"id", type=REGULAR, uid=8**7), False),         # a PAX uid
    (TarEntry(name=b"t", type=REGULAR, mtime_ns=8**11 * 10**9), False),
])
def test_plain_header_is_the_ustar_block_encode_header_writes(entry, plain):
    """The writer's shortcut for most files: the very block encode_header writes, or None where PAX is needed."""
    got = plain_header(entry.name, entry.type, entry.mode, entry.uid, entry.gid, entry.size, entry.mtime_ns // 10**9)
    if not plain:
        assert got is None
        return
    assert got == encode_header(entry)
    member = tarfile.TarInfo.frombuf(got, "utf-8", "surrogateescape")   # checks the checksum too
    assert (member.name, member.mode, member.uid, member.size) == (entry.name.decode().rstrip("/"), entry.mode,
                                                                    entry.uid, entry.size)


@pytest.mark.parametrize("block", [bytes(512), b"\xff" * 512, b"\x80" * 256 + b"\x7f" * 256,
                                   bytes(range(256)) * 2, encode_header(ENTRIES[0])])
def test_byte_sum_is_the_sum_of_a_blocks_bytes(block):
    assert byte_sum(block) == sum(block)


class _Chunked(io.RawIOBase):
    """A stream that hands out at most `size` bytes per read, as a decompressor's output arrives."""

    def __init__(self, data: bytes, size: int):
        self._data, self._size, self._pos = data, size, 0

    def read(self, n=-1):
        n = self._size if n < 0 else min(n, self._size)
        out = self._data[self._pos:self._pos + n]
        self._pos += len(out)
        return out


@pytest.mark.parametrize("size", [1, 7, 511, 512, 513, 4096, 1 << 20])
def test_the_reader_reads_the_same_whatever_the_streams_chunks(size):
    """The reader reads ahead of what it hands out: entries, contents and offsets stay those of the bytes."""
    entries = [TarEntry(name=b"f%d" % n, type=REGULAR, size=n) for n in (0, 1, 511, 512, 513, 5000, 70_000)]
    entries.insert(3, TarEntry(name=b"d/" * 60, type=DIRECTORY))
    data, ends = b"", []   # ends: where each entry's content ends in the stream
    for e in entries:
        data += encode_header(e) + bytes([len(e.name)]) * e.size
        ends.append(len(data))
        data += padding(e.size)
    data += bytes(1024)
    reader = TarReader(_Chunked(data, size))
    got, offsets = [], []
    for entry in reader:
        first = reader.read(3)
        got.append((entry.name, first + b"".join(iter(reader.read, b""))))
        offsets.append(reader.offset)
    assert got == [(e.name, bytes([len(e.name)]) * e.size) for e in entries]
    assert offsets == ends and reader.offset == len(data) - BLOCK   # the first end block read, not the second
