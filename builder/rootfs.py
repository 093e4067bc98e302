"""Assemble a writable rootfs for a step from an image's layers, reusing unpacked trees.

A `RootfsStore` keeps fully unpacked trees by OCI ChainID (the identity of a layer *stack*:
ChainID(L1) = DiffID(L1), ChainID(L1..Ln) = sha256(ChainID(L1..Ln-1) + " " + DiffID(Ln))), so a step
whose parent image was unpacked before starts from a copy (`cp -a --reflink=auto`, which keeps hard
links, xattrs, devices and ownership) of the longest cached prefix and applies only the missing layers.
Saving is atomic (unpack into a temp dir in the store, then rename), safe with concurrent builds:
the first writer wins and later ones drop their copy.

    store = RootfsStore(cache_dir / "rootfs")
    store.materialize(image.layers(opener), workdir / "rootfs")   # registry.image.Layer
    tree = store.ensure([...])     # read-only use: unpacked into the store, no copy
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Sequence

from builder.errors import BuildError
from builder.unpack import Limits, apply_layer
from registry.image import Layer


class RootfsError(BuildError):
    """A rootfs could not be assembled or copied."""


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """The OCI ChainID of every prefix of a layer stack."""
    out: list[str] = []
    for diff_id in diff_ids:
        out.append(diff_id if not out else "sha256:" + hashlib.sha256(f"{out[-1]} {diff_id}".encode()).hexdigest())
    return out


def copy_tree(src: Path, dest: Path) -> None:
    """Copy a rootfs exactly (hard links, xattrs, devices, ownership, timestamps), reflinking when the
    filesystem can. `dest` must not exist."""
    dest.mkdir(parents=True)
    proc = subprocess.run(["cp", "-a", "--reflink=auto", "--", f"{src}/.", str(dest)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RootfsError(f"cannot copy rootfs {src} to {dest}: {proc.stderr.strip()[-500:]}")


class RootfsStore:
    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)

    def path(self, chain_id: str) -> Path:
        return self.root / chain_id.replace(":", "-")

    def has(self, chain_id: str) -> bool:
        return self.path(chain_id).is_dir()

    def cached_depth(self, chain: Sequence[str]) -> int:
        """How many leading layers of a stack (given by `chain_ids`) are kept unpacked."""
        return next((i for i in range(len(chain), 0, -1) if self.has(chain[i - 1])), 0)

    def materialize(self, layers: Sequence[Layer], dest: str | os.PathLike[str], *,
                    limits: Limits | None = None, save: bool = True) -> Path:
        """A fresh writable rootfs at `dest` (must not exist) holding `layers` applied in order.
        With `save`, the full stack is kept in the store for the next build."""
        target = Path(dest)
        ids = chain_ids([layer.diff_id for layer in layers])
        start = self.cached_depth(ids)
        if start:
            kept = self.path(ids[start - 1])
            copy_tree(kept, target)
            self._touch(kept)
        else:
            target.mkdir(parents=True)
            os.chmod(target, 0o755)  # a rootfs' `/` is 0755 unless a layer says otherwise, whatever the umask
        for layer in layers[start:]:
            with layer.open() as stream:
                apply_layer(stream, target, digest=layer.digest or layer.diff_id,
                            expected_diff_id=layer.diff_id, limits=limits)
        if save and ids and start < len(ids):
            self.save(target, ids[-1])
        return target

    def ensure(self, layers: Sequence[Layer], *, limits: Limits | None = None) -> Path:
        """The whole stack as a tree in the store, unpacked there when missing (into a partial dir, then
        renamed into place: no copy). For readers only (COPY --from=<image>, RUN --mount from=<image>):
        the tree is shared with later builds and must never be written to. `layers` must not be empty."""
        ids = chain_ids([layer.diff_id for layer in layers])
        final = self.path(ids[-1])
        if final.is_dir():
            self._touch(final)
            return final
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=self.root))
        try:
            tmp.rmdir()
            self.materialize(layers, tmp, limits=limits, save=False)
            try:
                os.rename(tmp, final)
            except OSError:
                pass  # another build kept the same stack first: read theirs
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final

    def save(self, rootfs: Path, chain_id: str) -> None:
        if self.has(chain_id):
            return
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=self.root))
        try:
            tmp.rmdir()
            copy_tree(rootfs, tmp)
            try:
                os.rename(tmp, self.path(chain_id))
            except OSError:
                pass  # another build saved the same stack first
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @staticmethod
    def _touch(kept: Path) -> None:
        """Mark a kept stack used now, for `kade cache prune --older-than` (which goes by the later of
        atime and mtime): only the atime moves, the tree's own mtimes are content and stay."""
        try:
            os.utime(kept, ns=(time.time_ns(), kept.lstat().st_mtime_ns))
        except OSError:
            pass  # pruned meanwhile, or a read-only cache: the copy is made already

    def remove(self, chain_id: str) -> None:
        shutil.rmtree(self.path(chain_id), ignore_errors=True)
