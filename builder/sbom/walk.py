"""What the final filesystem of an image holds, from its layers as tar streams (bottom first), without
unpacking anything: each layer is read once through kade's bounded tar reader, and the files that
package scanners care about are parsed from the stream.

State after each layer = the findings of every scanned file still visible (path -> what it said,
which layer it came from). A layer then removes findings it hides, as an overlay mount would:
an entry at a path replaces what lower layers had there, a non-directory also hides what they had
below it, `.wh.<name>` deletes `<name>` and everything under it, and `<dir>/.wh..wh..opq` hides
all lower content of `<dir>`. Findings come from regular files (and hard links to them in the same
layer); links are never followed. The state is small and a pure function of the layers, so it is
kept in a cache by ChainID: an image over an already scanned base reads only its own layers.

Hostile input is bounded: a scanned file is read up to a per-kind cap (larger ones are reported
and skipped), and at most MAX_FINDINGS files are kept.
"""
from __future__ import annotations

import bisect
import fnmatch
import hashlib
import json
import os
import posixpath
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Protocol, Sequence

from builder.sbom import golang
from builder.sbom import packages as pk
from builder.tarformat import DIRECTORY, HARDLINK, REGULAR, TarReader, TocEntry
from common import jsonsafe

STATE_VERSION = "2"
MAX_FINDINGS = 100_000
MAX_NOTES = 50
CAPS = {"dpkg": 64 << 20, "apk": 64 << 20, "python": 1 << 20, "npm": 1 << 20, "os-release": 64 << 10,
        "copyright": 1 << 20}
_WH, _OPQ = ".wh.", ".wh..wh..opq"


def classify(path: str, mode: int) -> str | None:
    """Which scanner reads the file at `path` (relative, no leading '/'), or None."""
    parent, _, base = path.rpartition("/")
    if path == "var/lib/dpkg/status":
        return "dpkg"
    if parent == "var/lib/dpkg/status.d" and not base.endswith((".md5sums", ".list")):
        return "dpkg"
    if path == "lib/apk/db/installed":
        return "apk"
    if (base == "METADATA" and parent.endswith(".dist-info")) or (base == "PKG-INFO" and parent.endswith(".egg-info")):
        return "python"
    if base.endswith(".egg-info") and ("site-packages/" in path or "dist-packages/" in path):
        return "python"  # an egg-info that is a file: PKG-INFO content
    if base == "package.json" and _in_node_modules(parent):
        return "npm"
    if path in ("etc/os-release", "usr/lib/os-release"):
        return "os-release"
    if base == "copyright" and fnmatch.fnmatchcase(parent, "usr/share/doc/*") and parent.count("/") == 3:
        return "copyright"
    if mode & 0o111:
        return "go"
    return None


def _in_node_modules(package_dir: str) -> bool:
    """`.../node_modules/<name>` or `.../node_modules/@scope/<name>`: a package's own folder."""
    up = posixpath.dirname(package_dir)
    if posixpath.basename(up) == "node_modules":
        return True
    return posixpath.basename(up).startswith("@") and posixpath.basename(posixpath.dirname(up)) == "node_modules"


@dataclass
class Finding:
    kind: str
    layer: int
    packages: list[dict[str, str]] = field(default_factory=list)
    facts: dict[str, object] = field(default_factory=dict)   # os-release fields, copyright licenses


@dataclass
class State:
    findings: dict[str, Finding] = field(default_factory=dict)   # by path (relative)
    notes: list[str] = field(default_factory=list)
    layers: int = 0

    def to_json(self) -> bytes:
        return json.dumps({"version": STATE_VERSION, "layers": self.layers, "notes": self.notes,
                           "findings": {p: [f.kind, f.layer, f.packages, f.facts]
                                        for p, f in sorted(self.findings.items())}},
                          separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "State":
        doc = jsonsafe.loads(data)
        if doc.get("version") != STATE_VERSION:
            raise ValueError("another state version")
        return cls({p: Finding(k, layer, pkgs, facts) for p, (k, layer, pkgs, facts) in doc["findings"].items()},
                   list(doc["notes"]), int(doc["layers"]))

    def note(self, message: str) -> None:
        if len(self.notes) < MAX_NOTES:
            self.notes.append(message)


class _Overlay:
    """Applies one layer's entries to the state (removing what they hide) and adds its findings.

    What lower layers found is kept as a sorted list of paths, so hiding a folder is two bisections
    and one slice deletion whatever the number of findings: a hostile layer of many whiteouts costs
    O(log n) per entry, never a scan of everything found so far."""

    def __init__(self, state: State, layer: int) -> None:
        self.state, self.layer = state, layer
        self.lower = sorted(p for p, f in state.findings.items() if f.layer < layer)
        self.here: dict[str, Finding] = {}    # findings of this layer, for hard links

    def hide(self, path: str, at: bool = True, below: bool = True) -> None:
        """Remove findings of lower layers at `path` and/or under it."""
        if at:
            f = self.state.findings.get(path)
            if f is not None and f.layer < self.layer:
                del self.state.findings[path]
        if below and self.lower:
            lo = bisect.bisect_left(self.lower, path + "/")
            hi = bisect.bisect_left(self.lower, path + "0", lo)  # "0" follows "/": every "path/..." is between
            for p in self.lower[lo:hi]:
                f = self.state.findings.get(p)
                if f is not None and f.layer < self.layer:
                    del self.state.findings[p]
            del self.lower[lo:hi]

    def add(self, path: str, finding: Finding) -> None:
        if path not in self.state.findings and len(self.state.findings) >= MAX_FINDINGS:
            self.state.note(f"more than {MAX_FINDINGS} package files: /{path} and later ones are not listed")
            return
        self.state.findings[path] = finding
        self.here[path] = finding


def _normalize(name: bytes) -> str | None:
    text = name.decode("utf-8", "surrogateescape")
    if "//" not in text and "/." not in text and not text.startswith(("/", ".")):
        return text.rstrip("/") or None   # no empty, "." or ".." part but a trailing "/": most names
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        return None
    return "/".join(parts)


def scan_layer(stream: BinaryIO, state: State, layer: int, max_meta: int = 1 << 20, max_name: int = 4096) -> None:
    """Apply one uncompressed layer tar stream to `state`."""
    reader = TarReader(stream, max_meta=max_meta, max_name=max_name)
    _apply(reader, lambda _entry: reader.read, state, layer)
    _to_eof(stream)


def scan_with_toc(stream: BinaryIO, toc: Sequence[TocEntry], state: State, layer: int) -> None:
    """`scan_layer` of a layer whose writer kept its table of contents (builder/layer.py): the same
    state, without parsing its headers; only the files a scanner reads are read, at their offsets."""
    ahead = _Forward(stream)
    _apply(toc, ahead.content, state, layer)
    _to_eof(stream)


class _Entry(Protocol):
    """What a scan reads of an entry: a TarEntry parsed from the stream, or a TocEntry."""
    @property
    def name(self) -> bytes: ...
    @property
    def type(self) -> bytes: ...
    @property
    def mode(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def linkname(self) -> bytes: ...


def _apply(entries: Iterable[_Entry], content: Callable[[Any], Callable[[int], bytes]], state: State,
           layer: int) -> None:
    """Apply a layer's entries to `state`; `content(entry)` reads the content of the entry just given."""
    overlay = _Overlay(state, layer)
    for entry in entries:
        path = _normalize(entry.name)
        if path is None:
            continue
        parent, _, base = path.rpartition("/")
        if base.startswith(_WH):
            if base == _OPQ:
                overlay.hide(parent, at=False)
            elif not base.startswith(".wh..wh."):
                overlay.hide(posixpath.join(parent, base[len(_WH):]))
            continue
        overlay.hide(path, below=entry.type != DIRECTORY)  # a directory replaces a file, merges with a directory
        if entry.type == HARDLINK:
            target = _normalize(entry.linkname)
            found = overlay.here.get(target) if target else None
            if found is not None and classify(path, 0o755) == found.kind:
                overlay.add(path, _relocated(found, path))
            continue
        if entry.type != REGULAR:
            continue
        kind = classify(path, entry.mode)
        if kind is not None:
            finding = _scan_file(kind, path, entry.size, content(entry), state, layer)
            if finding is not None:
                overlay.add(path, finding)


def _to_eof(stream: BinaryIO) -> None:
    while stream.read(1 << 20):
        pass  # to EOF: the blob reader verifies the digest there


class _Forward:
    """A stream read forward only: an entry's content from its offset (whatever lies before is skipped)."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream, self.pos = stream, 0

    def _read(self, n: int) -> bytes:
        data = self.stream.read(n)
        self.pos += len(data)
        return data

    def content(self, entry: TocEntry) -> Callable[[int], bytes]:
        if entry.offset < self.pos:
            raise ValueError(f"table of contents out of order at {entry.name!r}")
        while self.pos < entry.offset:
            if not self._read(min(1 << 20, entry.offset - self.pos)):
                raise EOFError(f"layer ends before {entry.name!r}")
        left = entry.size

        def read(n: int) -> bytes:
            nonlocal left
            out = bytearray()
            while len(out) < n and left > 0:
                data = self._read(min(n - len(out), left))
                if not data:
                    raise EOFError(f"layer ends inside {entry.name!r}")
                out += data
                left -= len(data)
            return bytes(out)

        return read


def _relocated(found: Finding, path: str) -> Finding:
    return Finding(found.kind, found.layer, [{**p, "location": "/" + path} for p in found.packages], found.facts)


def _scan_file(kind: str, path: str, size: int, read: Callable[[int], bytes], state: State,
               layer: int) -> Finding | None:
    location = "/" + path
    if kind == "go":
        info = golang.scan(read)
        if info == golang.OLD_FORMAT:
            state.note(f"{location}: a Go binary from before Go 1.18 (build info not inline): not listed")
            return None
        if not isinstance(info, golang.BuildInfo):
            return None
        return Finding(kind, layer, [p.to_dict() for p in go_packages(info, location)])
    cap = CAPS[kind]
    if size > cap and kind not in ("python", "copyright"):
        state.note(f"{location}: {size} bytes, over the {cap}-byte limit for a {kind} file: not read")
        return None
    data = read(min(size, cap))
    if kind == "os-release":
        return Finding(kind, layer, facts=dict(pk.os_release(data)))
    if kind == "copyright":
        return Finding(kind, layer, facts={"licenses": pk.copyright_licenses(data)})
    parse = {"dpkg": pk.dpkg_status, "apk": pk.apk_installed, "python": pk.python_metadata, "npm": pk.npm_package}
    found = parse[kind](data, location)
    return Finding(kind, layer, [p.to_dict() for p in found]) if found else None


def go_packages(info: golang.BuildInfo, location: str) -> list[pk.Package]:
    """The Go standard library, the main module and every dependency module of one binary."""
    out = [pk.Package("golang", "stdlib", info.go_version, location, source=info.path)]
    if info.main is not None:
        out.append(pk.Package("golang", info.main.path, info.main.version, location, source=info.path))
    out += [pk.Package("golang", d.path, d.version, location, source=info.path) for d in info.deps]
    return out


# ---- a whole image ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class LayerInput:
    digest: str                    # the digest of the blob the stream comes from (verified as it is read)
    open: Callable[[], BinaryIO]   # the uncompressed tar stream
    toc: Sequence[TocEntry] | None = None   # its table of contents, from kade's own writer of that blob


def chain_ids(digests: list[str]) -> list[str]:
    """Cache keys of layer stacks. Built from the blobs' digests, which the registry client (or the
    content-addressed local cache) verifies, never from an image config's diff_ids, which a hostile
    image could point at another image's layers to poison the cache."""
    out, chain = [], ""
    for d in digests:
        chain = d if not chain else "sha256:" + hashlib.sha256(f"{chain} {d}".encode()).hexdigest()
        out.append(chain)
    return out


def scan_image(layers: list[LayerInput], cache_dir: Path | None = None,
               report: Callable[..., None] | None = None) -> State:
    """The state after every layer, reusing the longest cached chain prefix."""
    chains = chain_ids([la.digest for la in layers])
    state, start = State(), 0
    for depth in range(len(chains), 0, -1):
        cached = _load(cache_dir, chains[depth - 1])
        if cached is not None:
            state, start = cached, depth
            break
    for i in range(start, len(layers)):
        if report:
            report("sbom", f"scanning layer {i + 1}/{len(layers)} ({layers[i].digest[:19]})")
        with _closing(layers[i].open()) as stream:
            toc = layers[i].toc
            if toc is not None:
                scan_with_toc(stream, toc, state, i)
            else:
                scan_layer(stream, state, i)
        state.layers = i + 1
        _save(cache_dir, chains[i], state)
    return state


class _closing:
    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream

    def __enter__(self) -> BinaryIO:
        return self.stream

    def __exit__(self, *exc: object) -> None:
        self.stream.close()


def _state_path(cache_dir: Path, chain: str) -> Path:
    return cache_dir / f"{chain.replace(':', '-')}.v{STATE_VERSION}.json"


def _load(cache_dir: Path | None, chain: str) -> State | None:
    if cache_dir is None:
        return None
    try:
        return State.from_json(_state_path(cache_dir, chain).read_bytes())
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _save(cache_dir: Path | None, chain: str, state: State) -> None:
    if cache_dir is None:
        return
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".state-", dir=cache_dir)
        with os.fdopen(fd, "wb") as f:
            f.write(state.to_json())
        os.replace(tmp, _state_path(cache_dir, chain))
    except OSError:
        pass  # a cache: a failed write only costs a rescan


def inventory(state: State) -> tuple[list[pk.Package], dict[str, str]]:
    """(every package, sorted; the os-release fields) of a final state. Debian packages get the
    licenses of their machine-readable copyright file; deb and apk purls the distro."""
    os_facts = _os_release(state)
    deb_licenses = {p.split("/")[3]: f.facts.get("licenses") or [] for p, f in state.findings.items()
                    if f.kind == "copyright"}
    out: list[pk.Package] = []
    for f in state.findings.values():
        for d in f.packages:
            p = pk.Package.from_dict(d)
            if p.type == "deb" and not p.license and deb_licenses.get(p.name):
                p = pk.Package(**{**p.to_dict(), "license": " AND ".join(deb_licenses[p.name])})  # type: ignore[arg-type]
            out.append(p)
    out.sort(key=lambda p: (p.type, p.name, p.version, p.location))
    return out, os_facts


def _os_release(state: State) -> dict[str, str]:
    for path in ("etc/os-release", "usr/lib/os-release"):
        f = state.findings.get(path)
        if f is not None and f.facts:
            return {k: str(v) for k, v in f.facts.items()}
    return {}
