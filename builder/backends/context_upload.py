"""The build-context files that missing steps need, as content-addressed tar blobs: one per source.

The CLI selects, from the planned stages that will run in pods, the context sources of their missing
COPY/ADD steps and context bind mounts (what .dockerignore selects, never more), writes each source as
a deterministic tar (sorted, uid/gid 0, modes and mtimes kept, mtimes clamped to SOURCE_DATE_EPOCH as
the layers will be) and uploads those the stages repo lacks: the same files give the same digest, so a
second build uploads nothing, and a build after one source file changed uploads that source's blob
only (not the 100 MB of assets another COPY reads). The pod downloads it by digest (verified) and
extracts it after checking every member (no absolute names, no `..`, nothing written through a
symlink, no devices), then puts back the exact permission bits the keys were computed from.
"""
from __future__ import annotations

import os
import stat
import tarfile
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from builder.errors import BuildError
from builder.plan import Step
from registry.digest import Hasher

MEDIA_TYPE = "application/vnd.kade.build-context.v1.tar"


def needed_sources(steps: Iterable[Step], context_root: Path) -> list[list[str]]:
    """The context-relative paths each source of `steps` reads (COPY/ADD sources, context bind mounts):
    the entries .dockerignore selected, never a directory wholesale; one sorted list per distinct
    source, in a stable order."""
    groups: dict[tuple[str, ...], None] = {}
    root = context_root.resolve()
    for step in steps:
        sources = [s for m in step.mounts if m.type == "bind" for s in m.sources]
        if step.copy is not None:
            sources += [s for s in step.copy.sources if not s.rel.startswith(("http://", "https://"))]
        for src in sources:
            paths: set[str] = set()
            for path in [e.path for e in src.entries] or [src.path]:  # an empty directory: itself
                try:
                    rel = path.relative_to(root)
                except ValueError:
                    raise BuildError(f"context source {path} is outside the build context {root}") from None
                if str(rel) != ".":
                    paths.add(str(rel))
            if paths:
                groups[tuple(sorted(paths))] = None
    return [list(g) for g in groups]


def downloads(steps: Iterable[Step]) -> list[tuple[str, Path]]:
    """(sha256 hex, file) of the `ADD <url>` downloads `steps` copy: they reach pods as blobs of the
    stages repo, by digest."""
    found = {}
    for step in steps:
        for src in (step.copy.sources if step.copy is not None else []):
            if src.rel.startswith(("http://", "https://")):
                found[src.entries[0].digest] = src.path
    return sorted(found.items())


def place_downloads(steps: Iterable[Step], fetch: Callable[[str, Path], Path]) -> None:
    """In the pod: point the `ADD <url>` sources of `steps` at the file `fetch(hex, planned path)` puts
    in place."""
    import dataclasses

    for step in steps:
        spec = step.copy
        if spec is None:
            continue
        for i, src in enumerate(spec.sources):
            if src.rel.startswith(("http://", "https://")):
                here = fetch(src.entries[0].digest, src.path)
                spec.sources[i] = dataclasses.replace(src, path=here, entries=(
                    dataclasses.replace(src.entries[0], path=here),))


def _with_parents(paths: list[str]) -> list[str]:
    full = set(paths)
    for p in paths:
        parent = Path(p).parent
        while str(parent) not in (".", ""):
            full.add(str(parent))
            parent = parent.parent
    return sorted(full)


def write_context_tar(context_root: Path, paths: list[str], out, epoch: int | None = None) -> None:
    """A deterministic tar of `paths` (context-relative) and their parent directories. mtimes are
    kept (COPY keeps them), in whole seconds and clamped to `epoch` as the layers will be, so
    touching files changes the upload only when it can change a layer."""
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for rel in _with_parents(paths):
            host = context_root / rel
            st = os.lstat(host)
            info = tarfile.TarInfo(rel)
            mtime = max(0, st.st_mtime_ns // 1_000_000_000)
            info.mtime = mtime if epoch is None else min(mtime, epoch)
            info.uid, info.gid, info.uname, info.gname = 0, 0, "", ""
            info.mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
            elif stat.S_ISLNK(st.st_mode):
                info.type, info.linkname = tarfile.SYMTYPE, os.readlink(host)
                tf.addfile(info)
            elif stat.S_ISREG(st.st_mode):
                info.size = st.st_size
                with open(host, "rb") as f:
                    tf.addfile(info, f)
            # sockets, fifos and devices are never selected from a context


def pack(context_root: Path, paths: list[str], scratch: Path, epoch: int | None = None) -> tuple[Path, str, int]:
    """Write the context tar into `scratch`; returns (file, digest, size)."""
    root = context_root.resolve()
    fd, tmp = tempfile.mkstemp(prefix=".context-", suffix=".tar", dir=scratch)
    with os.fdopen(fd, "w+b") as f:
        write_context_tar(root, paths, f, epoch)
        f.seek(0)
        h = Hasher()
        size = 0
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            size += len(chunk)
    return Path(tmp), h.digest(), size


def check_members(members: list[tarfile.TarInfo]) -> None:
    """Refuse what a context upload never holds: other types, absolute names, `..`, paths through a
    symlink of the archive itself (the checks of tarfile's `data` filter, which Debian 12's Python
    3.11.2 in the builder image lacks)."""
    links = {m.name.rstrip("/") for m in members if m.issym()}
    for m in members:
        name = m.name.rstrip("/")
        parts = Path(name).parts
        if not (m.isfile() or m.isdir() or m.issym()):
            raise BuildError(f"context upload holds {m.name!r} of a type a build context never has")
        if not parts or name.startswith("/") or ".." in parts:
            raise BuildError(f"context upload holds the unsafe name {m.name!r}")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in links:
                raise BuildError(f"context upload writes {m.name!r} through a symlink")


def unpack(tars: Path | list[Path], dest: Path) -> None:
    """Extract context tars (one per source) safely into `dest`, then restore the permission bits the
    step keys saw. The members of all of them are checked together, so no tar writes through a
    symlink another one made."""
    dest.mkdir(parents=True, exist_ok=True)
    opened: list[tuple[tarfile.TarFile, list[tarfile.TarInfo]]] = []
    try:
        for tar_path in [tars] if isinstance(tars, Path) else tars:
            tf = tarfile.open(tar_path)
            opened.append((tf, tf.getmembers()))
        check_members([m for _, members in opened for m in members])
        for tf, members in opened:
            for m in members:
                m.uid = m.gid = 0
                m.uname = m.gname = ""
            if hasattr(tarfile, "data_filter"):
                tf.extractall(dest, members=members, filter="fully_trusted")
            else:
                tf.extractall(dest, members=members, numeric_owner=True)
    except tarfile.TarError as exc:
        raise BuildError(f"the context upload is not a valid tar ({exc}); rebuild with this kade") from None
    finally:
        for tf, _ in opened:
            tf.close()
    every = {m.name: m for _, members in opened for m in members if not m.issym()}
    for name in sorted(every, key=lambda n: n.count("/"), reverse=True):
        os.chmod(dest / name, every[name].mode)
