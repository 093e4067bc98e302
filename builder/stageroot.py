"""A stage's root filesystem as the executor sees it, over the layer store (builder/layerstore.py).

`LayeredRoot`: the rootfs is an overlay of the stack's layer dirs (read-only lower dirs) and one fresh
upper dir per step, which is the step's diff; committing the step renames the upper dir into the store
under the layer's ChainID, and it becomes the next step's top lower dir. Nothing is copied. kade's own
views of it (COPY, ADD, WORKDIR, a RUN's mount points, reading /etc/passwd) are overlays made with the
new mount API and attached nowhere (`linux.overlay`): files are reached through `/proc/<pid>/fd/<n>`,
and a view ends when its fd is closed, or when kade dies, however it dies. A RUN's sandbox mounts the
same layers itself, in its own mount namespace (idmapped in a user namespace: builder/sandbox.py).

`CopiedRoot`: the fallback where overlay mounts are not possible (a pod without CAP_SYS_ADMIN, a
rootless kade, Linux before 6.8, a cache on a filesystem overlay refuses): a plain directory made from
a copy of the longest unpacked prefix (builder/rootfs.py), as kade did before the store. Which one a
build gets is probed once per cache dir and process (`StageRoots`), and the fallback is said once;
`$KADE_SNAPSHOTTER=copy` forces it.

A `Tree` is what a reader gets (COPY --from, RUN --mount from=, cache from=): `path`, where kade reads
it (a read-only view), and `layers` (bottom first), which a sandbox mounts itself; None for a plain
directory.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from builder.changes import Change
from builder.errors import BuildError
from builder.layernorm import APART_FROM, OPAQUE
from builder.layerstore import LayerDir, LayerStore, Upper, lower_paths, tidy
from builder.rootfs import RootfsStore
from builder.snapshot import OverlaySpec
from builder.unpack import Limits
from common import fsutil
from registry.image import Layer

Report = Callable[..., None]
SNAPSHOTTER_ENV = "KADE_SNAPSHOTTER"   # "overlay" (fail when it can't), "copy", or unset (probe)
# An overlay stacks at most 500 lower dirs (the kernel's OVL_MAX_STACK), and a step's upper dir is read as
# one more. Docker refuses images deeper than 125 layers; what goes past this is made to exhaust the mount.
MAX_LAYERS = 499


def check_depth(layers: int, what: str) -> None:
    """Refuse a stack of more layers than an overlay can hold, in every snapshotter mode alike."""
    if layers > MAX_LAYERS:
        raise BuildError(f"{what} has {layers} layers; kade stacks at most {MAX_LAYERS} (an overlay mount holds "
                         "500 directories)", hint="combine steps: each RUN, COPY, ADD and WORKDIR may add a "
                                                 "layer, and Docker refuses more than 125")


@dataclass(frozen=True)
class Tree:
    """A filesystem to read: `path` for kade, `layers` (bottom first) for a sandbox, None: plain dir."""
    path: Path
    layers: tuple[str, ...] | None = None


def fd_path(fd: int) -> Path:
    """A path to the directory `fd` (a detached mount's root) valid in kade's children too."""
    return Path(f"/proc/{os.getpid()}/fd/{fd}")


def _view(lowers: list[str], upper: Upper | None, *, readonly: bool) -> int:
    """A detached overlay (or, for one read-only lower dir, a read-only bind) of `lowers` (topmost first)."""
    from builder import linux as L

    if upper is None and len(lowers) == 1:
        return L.detached_bind(lowers[0], L.MOUNT_ATTR_RDONLY)
    return L.overlay(lowers, None if upper is None else str(upper.fs), None if upper is None else str(upper.work),
                     userxattr=True, attrs=L.MOUNT_ATTR_RDONLY if readonly else 0)   # (layerstore.py: why userxattr)


class LayeredRoot:
    """A rootfs over the store: `lowers` (bottom first) and the pending upper dir of the running step."""
    layered = True

    def __init__(self, store: LayerStore, lowers: list[LayerDir], epoch: int | None, work: Path):
        self.store = store
        self.work = work   # the stage's work dir (views of the context, a failed rootfs kept)
        self.lowers = lowers
        self.epoch = epoch
        self.pending: Upper | None = None
        self._readers: list[int] = []

    @property
    def depth(self) -> int:
        return len(self.lowers)

    def _lower_paths(self) -> list[str]:
        return lower_paths(self.lowers) or [str(self.store.empty())]

    def _upper(self) -> Upper:
        if self.pending is None:
            self.pending = self.store.new_upper(self.lowers)
        return self.pending

    @contextmanager
    def writable(self) -> Iterator[Path]:
        """The rootfs as the step leaves it, writable (writes land in the step's upper dir)."""
        fd = _view(self._lower_paths(), self._upper(), readonly=False)
        try:
            yield fd_path(fd)
        finally:
            os.close(fd)

    @contextmanager
    def readable(self, *, with_pending: bool = True) -> Iterator[Path]:
        """The rootfs read-only: as the step leaves it, or (`with_pending` False) as it was before."""
        lowers = self._lower_paths()
        if with_pending and self.pending is not None:
            lowers = [str(self.pending.fs)] + lowers
        fd = _view(lowers, None, readonly=True)
        try:
            yield fd_path(fd)
        finally:
            os.close(fd)

    def run_overlay(self) -> OverlaySpec:
        """The step's overlay for a sandbox to mount in its own namespaces."""
        upper = self._upper()
        return OverlaySpec(lowers=tuple(self._lower_paths()), upper=str(upper.fs), work=str(upper.work),
                           merged=str(upper.merged), scratch=str(upper.scratch), view=self.writable)

    def commit(self, diff_id: str | None) -> None:
        """The step is done: its upper dir becomes the layer `diff_id` on top (None: no layer, dropped)."""
        upper, self.pending = self.pending, None
        if upper is None:
            return
        if diff_id is None:
            self.store.drop(upper)
            return
        self.lowers.append(self.store.commit(upper, diff_id, self.lowers[-1] if self.lowers else None, self.epoch))

    def add_layers(self, layers: Sequence[Layer], limits: Limits | None = None) -> None:
        """Become the whole stack `layers` (this one's layers plus more on top: a step another stage ran)."""
        self.commit(None)
        self.lowers = self.store.ensure(layers, limits=limits)

    def reader(self) -> Tree:
        """The rootfs as it is now, for other stages to read (open until `close`)."""
        self.commit(None)
        fd = _view(self._lower_paths(), None, readonly=True)
        self._readers.append(fd)
        return Tree(fd_path(fd), tuple(str(layer.fs) for layer in self.lowers) or (str(self.store.empty()),))

    def keep(self, dest: Path) -> Path:
        """--keep-failed: a copy of the rootfs as the failed step left it, at `dest`."""
        with self.readable() as view:
            _copy_tree(view, dest)
        return dest

    def close(self) -> None:
        if self.pending is not None:
            self.store.drop(self.pending)
            self.pending = None
        for fd in self._readers:
            os.close(fd)
        self._readers.clear()


class CopiedRoot:
    """The fallback: the rootfs is a plain directory, written in place (see the module docstring)."""
    layered = False

    def __init__(self, path: Path, depth: int):
        self.path = path
        self.work = path.parent
        self.depth = depth   # how many layers of the stack the directory holds

    @contextmanager
    def writable(self) -> Iterator[Path]:
        yield self.path

    @contextmanager
    def readable(self, *, with_pending: bool = True) -> Iterator[Path]:
        yield self.path

    def commit(self, diff_id: str | None) -> None:
        if diff_id is not None:   # the step wrote into the directory itself
            self.depth += 1

    def add_layers(self, layers: Sequence[Layer], limits: Limits | None = None) -> None:
        from builder.unpack import apply_layer

        have, self.depth = self.depth, len(layers)
        for layer in layers[have:]:
            with layer.open() as stream:
                apply_layer(stream, self.path, digest=layer.digest or layer.diff_id,
                            expected_diff_id=layer.diff_id, limits=limits)

    def reader(self) -> Tree:
        return Tree(self.path)

    def keep(self, dest: Path) -> Path:
        return self.path

    def close(self) -> None:
        pass


StageRoot = LayeredRoot | CopiedRoot


class LayeredCapture:
    """snapshot.Capture's interface for a RUN on a LayeredRoot: the changes are the upper dir's."""
    method = "overlay"

    def __init__(self, root: LayeredRoot, in_sandbox: bool):
        self._root = root
        self.overlay = root.run_overlay() if in_sandbox else None
        self._stack = contextlib.ExitStack()
        self.root = None if in_sandbox else self._stack.enter_context(root.writable())
        self._changes: list[Change] | None = None

    def changes(self) -> list[Change]:
        """The upper dir's changes. The upper dir becomes the layer dir, and the stack must hold what the
        layers hold: its sockets go (keeping their directory's times), and a directory left out of the
        changes (its times changed, nothing in it did) gets its old times back (snapshot.py: BuildKit's
        differ). Then a big one is normalized beside the layer's writer (builder/layernorm.py)."""
        from builder.snapshot import upper_diff

        if self._changes is None:
            self._stack.close()
            upper = self._root.pending
            assert upper is not None
            with self._root.readable(with_pending=False) as lower:
                diff = upper_diff(upper.fs, lower, opaque=(OPAQUE,))
                tidy(upper, lower, diff)
            self._changes = diff.changes
            if len(self._changes) >= APART_FROM:
                self._root.store.start_normalizing(upper, self._root.epoch)
        return self._changes

    def commit(self) -> None:
        pass   # the root commits the upper dir with the layer's diffID (LayeredRoot.commit)

    def abandon(self) -> None:
        pass

    def close(self) -> None:
        self._stack.close()


class StageRoots:
    """The stage roots of one build over one cache: layered where overlay works, copies elsewhere."""

    _probed: dict[str, str | None] = {}     # store dir -> why overlay is unavailable (None: it works)
    _lock = threading.Lock()

    def __init__(self, trees: Path, lock: Callable[[str], Any], report: Report, epoch: int | None):
        """`trees`: the tenant's folder of unpacked layers (builder/cache.py, `LocalCache.trees`)."""
        self.report = report
        self.epoch = epoch
        self.copies = RootfsStore(trees / "stacks")
        self.store: LayerStore | None = None
        self._roots: list[StageRoot] = []
        why = self._probe(trees / "layers")
        if why is None:
            self.store = LayerStore(trees / "layers", lock, report)

    @classmethod
    def _probe(cls, where: Path) -> str | None:
        forced = os.environ.get(SNAPSHOTTER_ENV, "").strip()
        if forced == "copy":
            return f"${SNAPSHOTTER_ENV}=copy"
        with cls._lock:
            if str(where) not in cls._probed:
                cls._probed[str(where)] = overlay_unavailable(where)
            why = cls._probed[str(where)]
        if why is not None and forced == "overlay":
            raise BuildError(f"layers can't be stacked with overlay mounts in {where}: {why}",
                             hint=f"unset ${SNAPSHOTTER_ENV} to fall back to copies")
        return why

    def say_fallback(self) -> None:
        """Said once per process and cache dir, when a stage first needs a rootfs."""
        from builder.sandbox import say_once

        if self.store is None:
            why = self._probed.get(str(self.copies.root.parent / "layers")) or f"${SNAPSHOTTER_ENV}=copy"
            say_once(self.report, f"snapshotter:{self.copies.root}",
                     f"layers are not stacked with overlay mounts here ({why}): each stage's rootfs starts from "
                     "a copy of its unpacked base (slower on large images)")

    def stage(self, layers: Sequence[Layer], holder: Path, *, save: bool, limits: Limits | None = None):
        """A writable rootfs holding `layers`; a copy lives in `holder` (a work dir)."""
        self.say_fallback()
        if self.store is not None:
            root: StageRoot = LayeredRoot(self.store, self.store.ensure(layers, limits=limits) if layers else [],
                                          self.epoch, holder)
        else:
            path = holder / "rootfs"
            if layers:
                self.copies.materialize(layers, path, limits=limits, save=save)
            else:
                path.mkdir(mode=0o755)
                os.chmod(path, 0o755)   # FROM scratch: `/` is 0755, whatever the umask
            root = CopiedRoot(path, len(layers))
        self._roots.append(root)
        return root

    def image(self, layers: Sequence[Layer], holder: Callable[[], Path], *, keep: bool) -> Tree:
        """An image's filesystem for readers: its layer dirs (no copy) or, in the fallback, a tree
        unpacked into the copies store (`keep`: a base image) or a work dir."""
        self.say_fallback()
        if self.store is not None:
            reader = LayeredRoot(self.store, self.store.ensure(layers), self.epoch, self.store.root / "tmp")
            self._roots.append(reader)
            return reader.reader()
        if keep and layers:
            return Tree(self.copies.ensure(layers))
        return self.stage(layers, holder(), save=False).reader()

    def missing(self, chains: Sequence[str]) -> list[int]:
        """Which layers of a stack (by ChainID, bottom first) must be unpacked from their blobs."""
        if self.store is not None:
            return [i for i, chain in enumerate(chains) if not self.store.has(chain)]
        return list(range(self.copies.cached_depth(chains), len(chains)))

    def close(self) -> None:
        for root in self._roots:
            root.close()
        self._roots.clear()


def overlay_unavailable(store: Path) -> str | None:
    """Why kade can't stack layers with overlay mounts in `store` (None: it can): a detached overlay of
    two lower dirs and an upper dir, with a file written through it, made there once."""
    from builder import linux as L

    probe = None
    try:
        (store / "tmp").mkdir(parents=True, exist_ok=True)
        probe = Path(__import__("tempfile").mkdtemp(prefix="probe-", dir=store / "tmp"))
        for name in ("a", "b", "u", "w"):
            (probe / name).mkdir()
        fd = L.overlay([str(probe / "a"), str(probe / "b")], str(probe / "u"), str(probe / "w"), userxattr=True)
        try:
            with open(fd_path(fd) / "x", "w"):
                pass
        finally:
            os.close(fd)
        return None if (probe / "u" / "x").exists() else "writes through the overlay did not reach its upper dir"
    except OSError as exc:
        return exc.strerror or str(exc)
    finally:
        if probe is not None:
            fsutil.remove_tree(probe)


def _copy_tree(src: Path, dest: Path) -> None:
    dest.mkdir(parents=True)
    done = subprocess.run(["cp", "-a", "--", f"{src}/.", str(dest)], capture_output=True, text=True)
    if done.returncode != 0:
        raise BuildError(f"cannot copy the failed rootfs to {dest}: {done.stderr.strip()[-300:]}")
