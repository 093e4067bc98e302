"""An independent reader of built images: an OCI layout's manifest, config and layers read with Python's
`tarfile` (not kade's unpacker), the layers applied bottom-up with the OCI whiteout rules into a flat
table of the final filesystem: path -> Entry (type, mode, uid, gid, size, sha256, link target, mtime,
xattrs, hard-link group).
"""
from __future__ import annotations

import hashlib
import json
import posixpath
import tarfile
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Iterator

CONFIG_FIELDS = ("Env", "Cmd", "Entrypoint", "WorkingDir", "User", "ExposedPorts", "Volumes", "Labels",
                 "StopSignal", "Healthcheck", "Shell", "OnBuild")
TYPES = {tarfile.REGTYPE: "file", tarfile.AREGTYPE: "file", tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink",
         tarfile.CHRTYPE: "char", tarfile.BLKTYPE: "block", tarfile.FIFOTYPE: "fifo", tarfile.CONTTYPE: "file"}
WHITEOUT, OPAQUE = ".wh.", ".wh..wh..opq"


@dataclass(frozen=True)
class Entry:
    type: str
    mode: int
    uid: int
    gid: int
    size: int
    sha256: str
    link: str  # symlink target, or "major,minor" of a device
    mtime: float
    xattrs: tuple[tuple[str, str], ...]
    hardlinks: tuple[str, ...] = ()  # every path of its hard-link group (when it has more than one)


@dataclass
class Image:
    config: dict
    files: dict[str, Entry]
    layers: int

    def field(self, name: str):
        """A config field; absent, null and empty mean the same ("none")."""
        return self.config.get("config", {}).get(name) or None

    @property
    def history(self) -> list[dict]:
        return self.config.get("history", [])


def norm(name: str) -> str:
    """A tar member name as an absolute path: "./a/b/" -> "/a/b", "." -> "/"."""
    return posixpath.normpath("/" + name.lstrip("/"))


def read_layout(layout: Path, digest: str | None = None) -> Image:
    """The image of an OCI layout: the manifest `digest`, else the layout's only image."""
    def blob(d: str) -> Path:
        algo, hexd = d.split(":", 1)
        return layout / "blobs" / algo / hexd

    # By digest from the blobs, not through index.json: concurrent builds into one layout move its tags
    top = json.loads(blob(digest).read_bytes()) if digest else json.loads((layout / "index.json").read_text())
    manifest = top if "layers" in top else _first_manifest(top, blob)
    config = json.loads(blob(manifest["config"]["digest"]).read_bytes())
    chain = tuple(layer["digest"] for layer in manifest["layers"])
    with _SEEN_LOCK:
        done = next((n for n in range(len(chain), 0, -1) if chain[:n] in _SEEN), 0)
        if done:
            _SEEN[chain[:done]] = _SEEN.pop(chain[:done])  # least recently used goes first
        tree = _SEEN[chain[:done]].copy() if done else Tree()
    for n, layer in enumerate(manifest["layers"][done:], start=done + 1):
        with open(blob(layer["digest"]), "rb") as f:
            tree.apply_layer(_decompressed(f, layer["mediaType"]))
        _remember(chain[:n], tree)
    return Image(config, tree.copy().final(), len(chain))


# Trees of layer chains already read, by the chain's blob digests: both builders (and both runs of each) share
# their base layers, which are most of an image's bytes, and a reproducible build repeats its own.
# (The corpus reads layouts from several threads: one lock around the table.)
_SEEN: dict[tuple[str, ...], "Tree"] = {}
_SEEN_MAX = 64
_SEEN_LOCK = threading.Lock()


def _remember(chain: tuple[str, ...], tree: "Tree") -> None:
    with _SEEN_LOCK:
        if chain not in _SEEN:
            if len(_SEEN) >= _SEEN_MAX:
                del _SEEN[next(iter(_SEEN))]
            _SEEN[chain] = tree.copy()


def _first_manifest(index: dict, blob) -> dict:
    """The first image manifest an index names (through nested indexes)."""
    for desc in index.get("manifests", []):
        body = json.loads(blob(desc["digest"]).read_bytes())
        if "manifests" not in body:
            return body
        try:
            return _first_manifest(body, blob)
        except LookupError:
            continue
    raise LookupError("no image manifest in the layout")


def _decompressed(f: IO[bytes], media_type: str) -> IO[bytes]:
    if media_type.endswith("+zstd") or media_type.endswith(".zstd"):
        import zstandard
        return zstandard.ZstdDecompressor().stream_reader(f)
    return f  # tarfile's "r|*" detects gzip itself


class Tree:
    """The file system that layers build up, with the hard-link groups among its files."""

    def __init__(self) -> None:
        self.files: dict[str, Entry] = {}
        self.groups: dict[str, set[str]] = {}

    def apply_layer(self, stream: IO[bytes]) -> None:
        """Apply one layer: first its whiteouts to what lies below (OCI image spec), then its entries."""
        members = []
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            for m in tar:
                digest = ""
                if m.isreg():
                    h, src = hashlib.sha256(), tar.extractfile(m)
                    while chunk := src.read(1 << 20):
                        h.update(chunk)
                    digest = h.hexdigest()
                members.append((m, norm(m.name), digest))
        for _, path, _ in members:
            base = posixpath.basename(path)
            if base == OPAQUE:
                self.remove(posixpath.dirname(path), keep_dir=True)
            elif base.startswith(WHITEOUT):
                self.remove(posixpath.join(posixpath.dirname(path), base[len(WHITEOUT):]))
        for m, path, digest in members:
            if not posixpath.basename(path).startswith(WHITEOUT):
                self.add(m, path, digest)

    def add(self, m: tarfile.TarInfo, path: str, digest: str) -> None:
        if m.islnk():
            target = norm(m.linkname)
            if target not in self.files:
                raise ValueError(f"hard link {path} -> {target}: no such file below it")
            self.replace(path, directory=False)
            self.files[path] = self.files[target]
            group = self.groups.setdefault(target, {target})
            group.add(path)
            self.groups[path] = group
            return
        if m.type not in TYPES:
            raise ValueError(f"{path}: tar entry type {m.type!r} is not a file system object")
        self.replace(path, directory=m.isdir())
        xattrs = tuple(sorted((k[len("SCHILY.xattr."):], v) for k, v in m.pax_headers.items()
                              if k.startswith("SCHILY.xattr.")))
        link = m.linkname if m.issym() else (f"{m.devmajor},{m.devminor}" if m.ischr() or m.isblk() else "")
        self.files[path] = Entry(TYPES[m.type], m.mode & 0o7777, m.uid, m.gid, m.size if m.isreg() else 0, digest,
                                 link, float(m.pax_headers.get("mtime", m.mtime)), xattrs)

    def copy(self) -> "Tree":
        other = Tree()
        other.files = dict(self.files)
        clones: dict[int, set[str]] = {}
        for path, group in self.groups.items():
            other.groups[path] = clones.setdefault(id(group), set(group))
        return other

    def replace(self, path: str, directory: bool) -> None:
        """Make way for a new entry at `path`: a directory over a directory merges with it; anything else
        replaces what is there (a directory with all it holds)."""
        old = self.files.get(path)
        if old is None or (directory and old.type == "dir"):
            return
        if old.type == "dir":
            self.remove(path)
        else:
            self.files.pop(path)
            group = self.groups.pop(path, None)
            if group:
                group.discard(path)

    def remove(self, path: str, keep_dir: bool = False) -> None:
        prefix = path.rstrip("/") + "/"
        doomed = [p for p in self.files if p.startswith(prefix)] + ([] if keep_dir else [path])
        for p in doomed:
            self.files.pop(p, None)
            group = self.groups.pop(p, None)
            if group:
                group.discard(p)

    def final(self) -> dict[str, Entry]:
        for path, group in self.groups.items():
            if len(group) > 1:
                self.files[path] = replace(self.files[path], hardlinks=tuple(sorted(group)))
        return self.files


def iter_fields(entry: Entry) -> Iterator[tuple[str, object]]:
    for name in ("type", "mode", "uid", "gid", "size", "sha256", "link", "xattrs", "hardlinks"):
        yield name, getattr(entry, name)
