"""Go binaries' embedded build info, read from a stream (a tar entry), never from a file on the host.

Since Go 1.18 the linker writes, 16-byte aligned at the start of the `.go.buildinfo` section:
`\\xff Go buildinf:` (14 bytes), the pointer size, a flags byte (bit 1: strings inline), 16 bytes of
padding, then two varint-length-prefixed strings: the Go version and the module info, whose text
(between two 16-byte sentinels) has one line per fact:
    path  <main package>            mod  <module> <version> <sum>
    dep   <module> <version> <sum>  =>   <replacement> <version> <sum>   (replaces the line before)
    build <key>=<value>
Older binaries point at their strings instead (not followable in one forward pass): they are
reported as such, not listed. The Go toolchain itself holds the magic as a string constant, so a
match only counts when the version and module info that follow it parse.
Bounded: a version is at most 256 bytes, module info 1 MiB, 10,000 dependencies.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

MAGIC = b"\xff Go buildinf:"
ELF = b"\x7fELF"
MAX_VERSION = 256
MAX_MODINFO = 1 << 20
MAX_DEPS = 10_000
BLOCK = 1 << 20
OLD_FORMAT = "old-format"


@dataclass
class Module:
    path: str
    version: str


@dataclass
class BuildInfo:
    go_version: str
    path: str = ""                     # the main package
    main: Module | None = None
    deps: list[Module] = field(default_factory=list)
    settings: dict[str, str] = field(default_factory=dict)


def parse_modinfo(text: str, go_version: str) -> BuildInfo:
    info = BuildInfo(go_version)
    for line in text.splitlines():
        kind, _, rest = line.partition("\t")
        parts = rest.split("\t")
        if kind == "path":
            info.path = rest
        elif kind == "mod" and len(parts) >= 2:
            info.main = Module(parts[0], parts[1])
        elif kind == "dep" and len(parts) >= 2 and len(info.deps) < MAX_DEPS:
            info.deps.append(Module(parts[0], parts[1]))
        elif kind == "=>" and len(parts) >= 2 and info.deps:
            info.deps[-1] = Module(parts[0], parts[1])  # a replace directive: what was really built
        elif kind == "build":
            key, _, value = rest.partition("=")
            if len(info.settings) < 64:
                info.settings[key] = value
    return info


def _varint(buf: bytes | bytearray, pos: int) -> tuple[int, int] | None:
    """(value, next position) of an unsigned varint at `pos`, None if the buffer ends first."""
    value = shift = 0
    while pos < len(buf):
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            return -1, pos
    return None


_NEED_MORE = object()


def _parse_at(buf: bytearray, i: int) -> object:
    """BuildInfo, OLD_FORMAT, None (not build info) or _NEED_MORE, for a magic at buf[i]."""
    if len(buf) < i + 32:
        return _NEED_MORE
    ptr_size, flags = buf[i + 14], buf[i + 15]
    if ptr_size not in (4, 8):
        return None
    if not flags & 2:
        return OLD_FORMAT
    strings: list[bytes] = []
    pos = i + 32
    for limit in (MAX_VERSION, MAX_MODINFO):
        got = _varint(buf, pos)
        if got is None:
            return _NEED_MORE
        length, pos = got
        if not 0 <= length <= limit:
            return None
        if len(buf) < pos + length:
            return _NEED_MORE
        strings.append(bytes(buf[pos:pos + length]))
        pos += length
    version = strings[0].decode("utf-8", "replace")
    if not (version.startswith("go1") or version.startswith("devel")) or "\n" in version:
        return None
    modinfo = strings[1]
    if len(modinfo) >= 33 and modinfo[-17] == 0x0A:
        modinfo = modinfo[16:-16]  # the sentinels around the text
    return parse_modinfo(modinfo.decode("utf-8", "replace"), version)


def scan(read: Callable[[int], bytes]) -> BuildInfo | str | None:
    """The build info of the ELF binary `read` streams (read(n) -> b"" at its end): a BuildInfo,
    OLD_FORMAT for a Go binary from before Go 1.18, or None when it is not a Go binary."""
    buf = bytearray(read(BLOCK))
    if not buf.startswith(ELF):
        return None
    base, start, eof, old = 0, 0, False, False
    while True:
        i = buf.find(MAGIC, start)
        if i >= 0 and (base + i) % 16:
            start = i + 1
            continue
        if i >= 0:
            found = _parse_at(buf, i)
            if found is _NEED_MORE and not eof:
                more = read(BLOCK)
                eof = not more
                buf += more
                continue
            if isinstance(found, BuildInfo):
                return found
            old = old or found == OLD_FORMAT
            start = i + 1
            continue
        if eof:
            return OLD_FORMAT if old else None
        keep = len(MAGIC) - 1 + 15  # a magic may straddle blocks; keep alignment arithmetic simple
        drop = max(0, len(buf) - keep)
        del buf[:drop]
        base += drop
        start = 0
        more = read(BLOCK)
        eof = not more
        buf += more
