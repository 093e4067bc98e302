"""The build-context files that missing steps need, as one content-addressed tar blob.

The CLI selects, from the planned stages that will run in pods, the context sources of their missing
COPY/ADD steps and context bind mounts (what .dockerignore selects, never more), writes them as a
deterministic tar (sorted, uid/gid 0, modes and mtimes kept, mtimes clamped to SOURCE_DATE_EPOCH as
the layers will be) and uploads it to the stages repo: the same files give the
same digest, so a second build uploads nothing. The pod downloads it by digest (verified) and
extracts it after checking every member (no absolute names, no `..`, nothing written through a
symlink, no devices), then puts back the exact permission bits the keys were computed from.
"""
from __future__ import annotations

import os
import stat
import tarfile
import tempfile
from collections.abc import Iterable
from pathlib import Path

from builder.errors import BuildError
from builder.plan import Step
from registry.digest import Hasher

MEDIA_TYPE = "application/vnd.kade.build-context.v1.tar"


def needed_paths(steps: Iterable[Step], context_root: Path) -> list[str]:
    """Context-relative paths `steps` read: the entries their COPY/ADD sources and context bind mounts
    selected (.dockerignore applied), never a directory wholesale."""
    paths: set[str] = set()
    root = context_root.resolve()
    for step in steps:
        sources = [s for m in step.mounts if m.type == "bind" for s in m.sources]
        if step.copy is not None:
            sources += [s for s in step.copy.sources if not s.rel.startswith(("http://", "https://"))]
        for src in sources:
            for path in [e.path for e in src.entries] or [src.path]:  # an empty directory: itself
                try:
                    rel = path.relative_to(root)
                except ValueError:
                    raise BuildError(f"context source {path} is outside the build context {root}") from None
                if str(rel) != ".":
                    paths.add(str(rel))
    return sorted(paths)


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


def unpack(tar_path: Path, dest: Path) -> None:
    """Extract a context tar safely, then restore the permission bits the step keys saw."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(tar_path) as tf:
            members = tf.getmembers()
            check_members(members)
            for m in members:
                m.uid = m.gid = 0
                m.uname = m.gname = ""
            if hasattr(tarfile, "data_filter"):
                tf.extractall(dest, members=members, filter="fully_trusted")
            else:
                tf.extractall(dest, members=members, numeric_owner=True)
    except tarfile.TarError as exc:
        raise BuildError(f"the context upload is not a valid tar ({exc}); rebuild with this kade") from None
    for m in sorted((m for m in members if not m.issym()), key=lambda m: m.name.count("/"), reverse=True):
        os.chmod(dest / m.name, m.mode)
