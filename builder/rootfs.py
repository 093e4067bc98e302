"""Assemble a writable rootfs for a step from an image's layers, reusing unpacked trees.

A `RootfsStore` keeps fully unpacked trees by OCI ChainID (the identity of a layer *stack*:
ChainID(L1) = DiffID(L1), ChainID(L1..Ln) = sha256(ChainID(L1..Ln-1) + " " + DiffID(Ln))), so a step
whose parent image was unpacked before starts from a copy (`cp -a --reflink=auto`, which keeps hard
links, xattrs, devices and ownership) of the longest cached prefix and applies only the missing layers.
Saving is atomic (unpack into a temp dir in the store, then rename), safe with concurrent builds:
the first writer wins and later ones drop their copy. Each tree's record (`<tree>.json`) holds a
fingerprint of it (builder/layerstore.py), checked the first time a store object uses the tree: one
that changed since it was saved is discarded, never copied.

This is the fallback where layers can't be stacked with overlay mounts (builder/stageroot.py).

    store = RootfsStore(cache_dir / "rootfs")
    store.materialize(image.layers(opener), workdir / "rootfs")   # registry.image.Layer
    tree = store.ensure([...])     # read-only use: unpacked into the store, no copy
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Sequence

from builder.errors import BuildError
from builder.unpack import Limits, apply_layer
from common import fsutil
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
        self._checked: dict[str, bool] = {}

    def path(self, chain_id: str) -> Path:
        return self.root / chain_id.replace(":", "-")

    def _record(self, chain_id: str) -> Path:
        return self.root / (chain_id.replace(":", "-") + ".json")

    def has(self, chain_id: str) -> bool:
        """Whether the stack is kept, whole and unchanged since it was saved (checked once per object);
        a tree that changed, or has no record, is removed."""
        if not self._checked.get(chain_id) or not self.path(chain_id).is_dir():
            self._checked[chain_id] = self._intact(chain_id)
        return self._checked[chain_id]

    def _intact(self, chain_id: str) -> bool:
        from builder.layerstore import fingerprint

        tree = self.path(chain_id)
        if not tree.is_dir():
            return False
        try:
            recorded = json.loads(self._record(chain_id).read_bytes()).get("fingerprint")
            ok = recorded == fingerprint(tree, with_root=False)[0]
        except (OSError, ValueError):
            ok = False
        if not ok:
            self.remove(chain_id)
        return ok

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
            self._place(tmp, ids[-1])
        finally:
            fsutil.remove_tree(tmp)
        return final

    def save(self, rootfs: Path, chain_id: str) -> None:
        if self.has(chain_id):
            return
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=self.root))
        try:
            tmp.rmdir()
            copy_tree(rootfs, tmp)
            self._place(tmp, chain_id)
        finally:
            fsutil.remove_tree(tmp)

    def _place(self, tmp: Path, chain_id: str) -> None:
        """Record a finished tree's fingerprint, then rename it into place (the first writer wins)."""
        from builder.layerstore import fingerprint

        record = self._record(chain_id)
        partial = record.with_name(f".{record.name}.{tmp.name}")
        partial.write_text(json.dumps({"chain_id": chain_id, "fingerprint": fingerprint(tmp, with_root=False)[0]}))
        try:
            os.rename(tmp, self.path(chain_id))
        except OSError:
            partial.unlink(missing_ok=True)   # another build saved the same stack first
            return
        os.replace(partial, record)
        self._checked[chain_id] = True

    @staticmethod
    def _touch(kept: Path) -> None:
        """Mark a kept stack used now, for `kade cache prune --older-than` (which goes by the later of
        atime and mtime): only the atime moves, the tree's own mtimes are content and stay."""
        record = kept.with_name(kept.name + ".json")   # (its record goes with it, or the tree goes too)
        for path in (kept, record):
            try:
                os.utime(path, ns=(time.time_ns(), path.lstat().st_mtime_ns))
            except OSError:
                pass  # pruned meanwhile, or a read-only cache: the copy is made already

    def remove(self, chain_id: str) -> None:
        fsutil.remove_tree(self.path(chain_id))
        self._record(chain_id).unlink(missing_ok=True)
