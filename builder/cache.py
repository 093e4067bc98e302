"""The local build cache: `--cache-dir`, else $KADE_CACHE_DIR, else $XDG_CACHE_HOME/kade (~/.cache/kade).

Layout under the root:
  blobs/sha256/<hex>   compressed blobs by digest (registry.cache.BlobCache: atomic renames), all tenants
  tenants/<tenant>/    what one tenant's builds shape (builder/tenant.py), unless it shares the part:
    trees/layers/<chainid>/  each layer unpacked once, a rootfs is an overlay of them (builder/layerstore.py)
    trees/stacks/<chainid>/  unpacked layer stacks by OCI ChainID (builder/rootfs.py), copied to start a
                             step where overlay mounts can't be used
    mounts/<id-hash>/    RUN --mount=type=cache directories, kept between builds, never in a layer
    downloads/<sha256>/<name>  ADD <url> files by content digest (registry/download.py), never replaced
  shared/{trees,mounts,downloads}/  the same, for the parts tenants share (`kade build --share`)
  work/<random>/       rootfs directories of running builds (removed at the end unless --keep-failed)
  work/.trash-<random>/  finished work dirs being deleted in the background (see `LocalCache.discard`)
  images/              the OCI image layout written when a build has no --tag
  locks/<name>.lock    flock(2) files: concurrent builds and processes share the cache safely
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from builder.tenant import Tenant
from common import fsutil
from registry.cache import BlobCache

if TYPE_CHECKING:
    from builder.errors import BuildError
    from builder.rootfs import RootfsStore


def cache_root(explicit: str | os.PathLike | None = None) -> Path:
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("KADE_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "kade"


@dataclass
class PruneResult:
    removed: int
    freed_bytes: int


class LocalCache:
    def __init__(self, root: str | os.PathLike | None = None, tenant: Tenant | None = None):
        self.root = cache_root(root)
        self.tenant = tenant or Tenant()
        if self.root.exists() and not self.root.is_dir():
            raise _unusable(self.root, "it is a file, not a directory")
        try:
            for sub in ("blobs/sha256", "work", "locks"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _unusable(self.root, exc.strerror or str(exc)) from None
        self.blobs = BlobCache(self.root)

    @property
    def trees(self) -> Path:
        """This tenant's unpacked layers (trees/layers, builder/layerstore.py) and, where overlay mounts
        can't be used, unpacked stacks (trees/stacks, builder/rootfs.py)."""
        return self.scope("trees")

    @property
    def rootfs_store(self) -> "RootfsStore":
        """Unpacked layer stacks by ChainID (builder/rootfs.py), where overlay mounts can't be used."""
        from builder.rootfs import RootfsStore

        return RootfsStore(self.trees / "stacks")

    def scope(self, part: str) -> Path:
        """The folder of `part` ("trees", "mounts", "downloads") that this cache's tenant uses."""
        return self.root / self.tenant.folder(part)

    @property
    def context_digests(self) -> Path:
        """This tenant's kept digests of big context files (builder/digests.py)."""
        return self.root / self.tenant.own("context-digests.json")

    @property
    def downloads(self) -> Path:
        """ADD <url> files of this tenant, by content digest (registry.download)."""
        return self.scope("downloads")

    @contextlib.contextmanager
    def lock(self, name: str, shared: bool = False, wait: bool = True) -> Iterator[bool]:
        """An inter-process lock (flock) named by a digest, mount id, ...; yields whether it is held
        (always, unless `wait` is False and another holder has it)."""
        safe = hashlib.sha256(name.encode()).hexdigest()[:32]
        path = self.root / "locks" / f"{safe}.lock"
        with open(path, "a+b") as f:
            try:
                fcntl.flock(f.fileno(), (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def work_dir(self, prefix: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.root / "work"))

    def discard(self, path: Path) -> None:
        """Remove a finished work dir without making the build wait for it.

        Unlinking a step's rootfs (tens of thousands of files just written, often still under
        writeback) took 5-12 s at the end of a build on a busy machine. The dir is renamed into
        work/.trash-<random> (instant, same filesystem: nothing can reuse its name) and deleted by a
        detached `rm -rf --one-file-system` (never follows a mount left inside); whatever an
        interrupted deleter leaves is removed by `kade cache prune`. Falls back to deleting in place.
        """
        from builder.linux import detach_mounts_under   # here: ctypes and platform, only when a build made work dirs

        detach_mounts_under(path)  # a RUN's overlay still mounted (a cancelled build): rm would never cross it
        trash: Path | None = None
        try:
            trash = Path(tempfile.mkdtemp(prefix=".trash-", dir=self.root / "work"))
            os.rename(path, trash / path.name)
            # `sh` backgrounds rm and exits at once (waited for here: no zombie); rm outlives kade.
            subprocess.run(["sh", "-c", 'rm -rf --one-file-system -- "$1" >/dev/null 2>&1 &', "sh", str(trash)],
                           stdin=subprocess.DEVNULL, start_new_session=True, check=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            fsutil.remove_tree(path)
            if trash is not None:
                fsutil.remove_tree(trash)

    def mount_dir(self, mount_id: str) -> Path:
        """The persistent directory of this tenant's RUN cache mount `mount_id` (created empty the first
        time): the same id of another tenant is another directory."""
        d = self.scope("mounts") / hashlib.sha256(mount_id.encode()).hexdigest()[:32]
        d.mkdir(parents=True, exist_ok=True)
        return d

    def mount_lock_name(self, mount_id: str) -> str:
        return f"mount:{self.tenant.folder('mounts')}:{mount_id}"

    @property
    def layout_dir(self) -> Path:
        return self.root / "images"

    def prune(self, *, older_than_seconds: float | None = 0, keep_mounts: bool = False,
              max_layer_bytes: int | None = None) -> PruneResult:
        """Remove cached blobs, layer dirs, cache mounts and stale work dirs not used for
        `older_than_seconds`; with `max_layer_bytes`, also the least recently used layer dirs until the
        rest of each tenant's layer store fit (`older_than_seconds` None: only that).

        Holds the global lock so a concurrent build (which takes it shared) isn't pruned under its feet:
        no layer dir a running build uses goes.
        """
        from builder.layerstore import LayerStore
        from builder.linux import detach_mounts_under

        now = time.time()
        removed = freed = 0
        with self.lock("global"):
            owners = [self.root / "shared", *_children(self.root / "tenants")]
            for store_dir in [owner / "trees" / "layers" for owner in owners] + [self.root / "layers"]:
                if store_dir.is_dir():   # (layers/ at the root: kade before tenants)
                    gone, size = LayerStore(store_dir, self.lock).prune(
                        older_than_seconds=older_than_seconds or 0, max_bytes=max_layer_bytes, now=now)
                    removed, freed = removed + gone, freed + size
            if older_than_seconds is None:
                return PruneResult(removed, freed)
            targets: list[Path] = list((self.root / "blobs" / "sha256").iterdir())
            targets += list((self.root / "work").iterdir())
            for owner in owners:
                targets += _children(owner / "trees" / "stacks")
                targets += [entry for part in ("downloads", *(() if keep_mounts else ("mounts",)))
                            for entry in _children(owner / part)]
            targets += [self.root / old for old in ("rootfs", "mounts", "urls") if (self.root / old).is_dir()
                        and not (keep_mounts and old == "mounts")]   # folders of kade before tenants
            for path in targets:
                try:
                    st = path.lstat()
                except FileNotFoundError:
                    continue
                if now - max(st.st_atime, st.st_mtime) < older_than_seconds:
                    continue
                if path.is_dir() and not path.is_symlink():
                    detach_mounts_under(path)  # a work dir left by a kade that exited at once (second signal)
                size = _tree_size(path)
                if path.is_dir() and not path.is_symlink():
                    fsutil.remove_tree(path)
                else:
                    path.unlink(missing_ok=True)
                removed += 1
                freed += size
        return PruneResult(removed, freed)


def _children(folder: Path) -> list[Path]:
    return list(folder.iterdir()) if folder.is_dir() else []


def _unusable(root: Path, why: str) -> "BuildError":
    from builder.errors import BuildError

    return BuildError(f"cache dir {root} cannot be used: {why}",
                      hint="give a directory kade may create and write with --cache-dir or $KADE_CACHE_DIR")


def _tree_size(path: Path) -> int:
    if not path.is_dir() or path.is_symlink():
        try:
            return path.lstat().st_size
        except FileNotFoundError:
            return 0
    return fsutil.tree_size(path)
