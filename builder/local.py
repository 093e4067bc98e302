"""The local executor: a stage's missing steps run in this process, on a rootfs in the local cache.

For each job: a writable rootfs holding the parent image (a copy of the longest unpacked prefix kept
by ChainID, the rest unpacked from cached or downloading blobs), then each step on it (COPY/ADD/
WORKDIR through builder/execute.py, RUN in the sandbox with a snapshot of what it changed), each
step's changes written as one layer, and each step image pushed to the stages repo under its key.
Identical steps (same key) in stages running at once execute once; the others apply its layer.
Other stages' filesystems (COPY --from, RUN --mount from=) are the rootfs their stage left, or the
image unpacked for reading. A `StepGate` lets a caller coordinate every step with other builds
(a builder pod holds a Lease per step key, and takes a step another pod pushed meanwhile).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from concurrent.futures import Future
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Callable, Iterator, Protocol, Sequence

from builder import events as ev
from builder import image_config as ic
from builder.env import BuildEnv
from builder.errors import BuildError, StepFailedError
from builder.executor import StageJob, StageOutcome, StageResults
from builder.plan import Plan, PlannedStage, Step
from registry import cancel
from registry.image import Image, Layer
from registry.model import Descriptor, Platform

FS_STEP_KINDS = frozenset({"run", "copy", "workdir"})  # steps that work on the stage's rootfs


class StepGate(Protocol):
    def __call__(self, stage: PlannedStage, step: Step, run: Callable[[], Image],
                 adopt: Callable[[Image], Image]) -> tuple[Image, bool]:
        """Decide how `step` gets its image: `run()` it, or `adopt(image)` one found elsewhere (its
        layers applied to the rootfs). Returns the image and whether it was adopted."""


class LocalExecutor:
    def __init__(self, env: BuildEnv, *, gate: StepGate | None = None, work_root: Path | None = None,
                 on_step_image: Callable[[Step, Image], None] | None = None):
        self.env, self.o, self.report = env, env.options, env.report
        self.gate = gate
        self.work_root = work_root  # where rootfs dirs go (default: the local cache's work/)
        self.on_step_image = on_step_image
        self.plan: Plan | None = None
        self.work_dirs: list[Path] = []
        self.stage_roots: dict[str, Path] = {}
        self.root_lock = threading.Lock()
        self.lock = threading.Lock()
        self.claims: dict[str, Future] = {}  # step key -> the image of its one execution in this build
        self.interrupted = False

    # -- the Executor protocol ---------------------------------------------------------------------
    @contextmanager
    def session(self) -> Iterator[None]:
        try:
            yield
        finally:
            for d in self.work_dirs:
                self.env.cache.discard(d)

    @contextmanager
    def running(self, plan: Plan, jobs: Sequence[StageJob]) -> Iterator[None]:
        self.plan = plan
        self._check_emulation(jobs)
        with self.root_lock:  # a multi-platform build solves one plan after another: stages are per plan
            self.stage_roots = {k: v for k, v in self.stage_roots.items() if k.startswith("image:")}
        try:
            yield
        finally:
            if self.interrupted:
                from builder import sandbox

                sandbox.resume()  # the stages have wound down: RUN steps may start again in this process

    def interrupt(self) -> None:
        from builder import sandbox

        self.interrupted = True
        sandbox.kill_all()  # RUNs in worker threads stop now (and none starts): the solver waits for them

    def _check_emulation(self, jobs: Sequence[StageJob]) -> None:
        """Before anything runs: RUN in a stage of a foreign platform needs qemu (builder/emulation.py)."""
        if self.o.node_emulation:  # a pod placed for emulation: the node's kernel has it, unseen from here
            return
        from builder.emulation import ensure_emulation
        from builder.platforms import host_platform

        for platform in sorted({j.stage.platform for j in jobs if any(s.kind == "run" for s in j.steps)}):
            ensure_emulation(Platform.parse(platform), host_platform())

    def run_stage(self, job: StageJob, results: StageResults) -> StageOutcome:
        ps = job.stage
        rootfs = self._materialize(job.parent, f"stage-{ps.label}-")
        parent, ran, reused, keys = job.parent, 0, 0, set()
        for step in job.steps:
            parent, how = self._run_once(ps, step, parent, rootfs, results)
            ran += how == "ran"
            reused += how == "adopted"
            if how == "ran":
                keys.add(step.key)
        if ps.label in rootfs_readers(self._plan):  # else its last RUN may have left it unmerged
            with self.root_lock:
                self.stage_roots[ps.label] = rootfs
        return StageOutcome(parent, ran, reused, frozenset(keys))

    @property
    def _plan(self) -> Plan:
        assert self.plan is not None, "run_stage before running()"
        return self.plan

    # -- one step, once ----------------------------------------------------------------------------
    def _run_once(self, ps: PlannedStage, step: Step, parent: Image | None, rootfs: Path,
                  results: StageResults) -> tuple[Image, str]:
        """Identical steps (same key) in stages running at once execute once: the others wait for that
        image and apply its layer onto their own rootfs, which is at the same parent state."""
        with self.lock:
            claim = self.claims.get(step.key)
            mine = claim is None
            if mine:
                claim = self.claims[step.key] = Future()
        assert claim is not None
        if not mine:
            img: Image = claim.result()
            self.report(ev.SHARED, ev.step_message(ps, step), **ev.step_fields(self.o.image_name, ps, step))
            return self._adopt(img, parent, rootfs), "shared"
        try:
            if self.gate is None:
                img, adopted = self._run_step(ps, step, parent, rootfs, results), False
            else:
                img, adopted = self.gate(ps, step, lambda: self._run_step(ps, step, parent, rootfs, results),
                                         lambda found: self._adopt(found, parent, rootfs))
        except BaseException as exc:
            claim.set_exception(exc)
            raise
        claim.set_result(img)
        return img, "adopted" if adopted else "ran"

    def _adopt(self, image: Image, parent: Image | None, rootfs: Path) -> Image:
        """Bring `rootfs` from `parent` to `image` by applying the layers `image` adds."""
        from builder.execute import apply_layers

        have = len(parent.manifest.layers) if parent else 0
        store = self.env.store
        apply_layers(rootfs, [(store.blob_path(image, d), d.media_type, d.digest) for d in image.manifest.layers[have:]])
        return image

    def _run_step(self, ps: PlannedStage, step: Step, parent: Image | None, rootfs: Path,
                  results: StageResults) -> Image:
        """Run one step on `rootfs` and push its step image."""
        from builder import execute as ex

        cancel.check()  # nothing new starts once the command is cancelled
        fields = ev.step_fields(self.o.image_name, ps, step)
        self.report(ev.STEP, ev.step_message(ps, step), **fields)
        started = time.monotonic()
        changes: list = []
        workdir = step.config.working_dir or "/"
        context_root = self._plan.context_root
        try:
            if step.kind == "run":
                ctx = ex.RunContext(secrets=self.o.secrets, ssh_socket=self.o.ssh, cache_dir=self._cache_mount,
                                    stage_rootfs=lambda ref, _: self._mount_root(ref, results),
                                    context_root=context_root, report=self.report, runner=self.o.sandbox,
                                    isolation=self.o.isolation)
                output = {k: fields[k] for k in ("image", "stage", "key")}
                layer = ex.run_step(rootfs, step, ctx, lambda line: self.report(ev.OUTPUT, line, **output),
                                    self._write_layer, keep_result=rootfs_read_after(self._plan, ps, step))
                return self._push_step(ps, step, parent, layer if isinstance(layer, Layer) else None, started)
            elif step.kind == "copy":
                spec = step.copy
                assert spec is not None
                from_root = None
                if spec.from_stage:
                    from_root = self.stage_rootfs(spec.from_stage, results)
                elif spec.from_image is not None:
                    img = self.env.store.load(spec.from_image.ref, spec.from_image.digest)
                    from_root = self.image_rootfs(img)
                changes = ex.copy_step(rootfs, spec, workdir, from_root, context_root=context_root,
                                       epoch=self.env.epoch)
            elif step.kind == "workdir":
                changes = ex.ensure_dir(rootfs, workdir, epoch=self.env.epoch)
        except StepFailedError as exc:
            if self.o.keep_failed:
                self.work_dirs.remove(rootfs.parent)
                raise StepFailedError(exc.detail, exit_code=exc.exit_code, output_tail=exc.output_tail,
                                      file=exc.file, line=exc.line, hint=f"the failed rootfs is kept at {rootfs}",
                                      rootfs=str(rootfs)) from None
            raise
        except BuildError as exc:
            if exc.line is not None:
                raise
            raise BuildError(f"{step.text}: {exc.detail}", file=step.ins.file, line=step.ins.line,
                             hint=exc.hint) from None
        return self._push_step(ps, step, parent, self._write_layer(changes) if changes else None, started)

    def _write_layer(self, changes: list) -> Layer:
        from builder.execute import write_layer

        blobs = self.env.cache.blobs
        fd, tmp = tempfile.mkstemp(prefix=".layer-", dir=self.env.cache.root / "blobs" / "sha256")
        try:
            with os.fdopen(fd, "wb") as out:
                info = write_layer(changes, out, self.o.compression, self.env.epoch)
            os.replace(tmp, blobs.path(info.digest))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        path = blobs.path(info.digest)
        return Layer(Descriptor(info.media_type, info.digest, info.size), info.diff_id, lambda: open(path, "rb"))

    def _push_step(self, ps: PlannedStage, step: Step, parent: Image | None, layer: Layer | None,
                   started: float) -> Image:
        """The step image (the step's config over its parent's layers and history, plus its layer), kept
        locally and pushed to the stages repo tagged with the step's key."""
        base = parent.config if parent else ic.empty_config(Platform.parse(ps.platform))
        cfg = step.config.with_build_state(base.diff_ids or (), base.history or ())
        for text in step.history:  # the ARGs before it (BuildKit's history; not in the key)
            cfg = ic.add_history(cfg, text, empty_layer=True)
        if step.in_history or layer:  # ONBUILD has no entry of its own
            cfg = ic.add_history(cfg, step.created_by, empty_layer=layer is None,
                                 diff_id=layer.diff_id if layer else None)
        layers = [*(parent.manifest.layers if parent else []), *([layer.descriptor] if layer else [])]
        repo = self.env.stages_repo
        img = Image.assemble(cfg, layers, source=repo or "")
        self.env.store.keep_local(img)
        pushed = self.env.store.push(img, repo, step.key).uploaded if repo else 0
        self.report(ev.STEP_DONE, ev.step_message(ps, step), **ev.step_fields(self.o.image_name, ps, step),
                    seconds=round(time.monotonic() - started, 3), layer_bytes=layer.size if layer else 0,
                    pushed_bytes=pushed)
        if self.on_step_image is not None and step.stage == self._plan.target:
            self.on_step_image(step, img)
        return img

    # -- filesystems ----------------------------------------------------------------------------
    def _work_dir(self, prefix: str) -> Path:
        if self.work_root is not None:
            return Path(tempfile.mkdtemp(prefix=prefix, dir=self.work_root))
        return self.env.cache.work_dir(prefix)

    def _materialize(self, image: Image | None, prefix: str) -> Path:
        """A fresh rootfs holding `image`: a copy of the longest unpacked prefix kept in the local cache
        (by ChainID), plus the remaining layers applied from cached or downloaded blobs.

        Only base images' stacks are saved for later builds: they recur in every build that runs
        anything, while step images change with the code (saving those costs a full tree copy each time)."""
        holder = self._work_dir(prefix)
        self.work_dirs.append(holder)
        rootfs = holder / "rootfs"
        if image is None:
            rootfs.mkdir(mode=0o755)
            os.chmod(rootfs, 0o755)  # FROM scratch: `/` is 0755, whatever the umask
            return rootfs
        self.env.cache.rootfs_store.materialize(self._layers(image, "copied from"), rootfs,
                                                save=self._keepable(image))
        return rootfs

    def _keepable(self, image: Image) -> bool:
        return image.source not in (self.env.stages_repo, "")

    def _layers(self, image: Image, reuse: str) -> list[Layer]:
        """The image's layers for the rootfs store, the ones it lacks downloading meanwhile; reports how
        many the store supplies."""
        from builder.rootfs import chain_ids

        store = self.env.store
        diff_ids = list(image.config.diff_ids or ())
        layers = image.manifest.layers
        if len(diff_ids) != len(layers):
            raise BuildError(f"image {image.source}@{image.digest} has {len(layers)} layers but "
                             f"{len(diff_ids)} diff_ids in its config", hint="rebuild or re-push that image")
        kept = self.env.cache.rootfs_store.cached_depth(chain_ids(diff_ids))
        fetches = {d.digest: store.fetch(image, d) for d in layers[kept:]}   # all at once, unpacked as they come
        self.report("unpack", f"{len(layers)} layer(s) of {image.digest[:19]}: {kept} {reuse} the "
                              f"unpacked cache, {len(layers) - kept} unpacked", reused=kept, unpacked=len(layers) - kept)
        return image.layers(lambda d: fetches[d.digest].open if d.digest in fetches else
                            (lambda: open(store.blob_path(image, d), "rb")))

    def stage_rootfs(self, label: str, results: StageResults) -> Path:
        """The filesystem of a stage, for COPY --from / RUN --mount from=."""
        img = results.result(label)
        with self.root_lock:
            if label in self.stage_roots:
                return self.stage_roots[label]
            root = self._materialize(img, f"from-{label}-")
            self.stage_roots[label] = root
            return root

    def image_rootfs(self, image: Image) -> Path:
        """An image's filesystem for readers (COPY --from=<image>, RUN --mount from=<image>): a base
        image's tree is unpacked straight into the rootfs store and read there (no copy); step images
        (never kept) get a work dir."""
        key = "image:" + image.digest
        with self.root_lock:
            if key not in self.stage_roots:
                if not self._keepable(image) or not image.manifest.layers:
                    self.stage_roots[key] = self._materialize(image, "from-image-")
                else:
                    self.stage_roots[key] = self.env.cache.rootfs_store.ensure(self._layers(image, "read in"))
            return self.stage_roots[key]

    def _mount_root(self, ref: str, results: StageResults) -> Path:
        if ref.lower() in self._plan.stages:
            return self.stage_rootfs(ref.lower(), results)
        base = self.env.store.resolve(ref, self._plan.platform)
        return self.image_rootfs(self.env.store.get(base.digest))

    def _cache_mount(self, mount_id: str, sharing: str, stack: ExitStack) -> Path:
        """The directory of a cache mount for one RUN (BuildKit's sharing modes): `shared` the cache
        itself; `locked` the cache once no other step holds it; `private` the cache unless another
        step holds it, else a fresh directory dropped after the step."""
        cache = self.env.cache
        if sharing == "shared":
            return cache.mount_dir(mount_id)
        held = stack.enter_context(cache.lock(f"mount:{mount_id}", wait=sharing == "locked"))
        if held:
            return cache.mount_dir(mount_id)
        private = cache.work_dir("cache-private-")
        stack.callback(shutil.rmtree, private, True)
        return private


def rootfs_readers(plan: Plan) -> set[str]:
    """Labels of the stages whose rootfs another step reads (COPY --from=<stage>, RUN --mount from=<stage>)."""
    read: set[str] = set()
    for st in plan.all_steps():
        if st.copy is not None and st.copy.from_stage:
            read.add(st.copy.from_stage)
        read.update(ref for ref in (m.options.get("from", "").lower() for m in st.mounts) if ref in plan.stages)
    return read


def rootfs_read_after(plan: Plan, ps: PlannedStage, step: Step) -> bool:
    """Whether anything reads the stage's rootfs after `step`: a later RUN/COPY/ADD/WORKDIR of the stage,
    or another stage's COPY --from / RUN --mount from=. When nothing does (e.g. a final RUN followed only
    by CMD/ENV/LABEL), a RUN's overlay changes need not be merged back into the rootfs."""
    at = next((i for i, st in enumerate(ps.steps) if st is step), None)
    if at is None:
        return True  # not a step of this stage: assume the worst
    return any(st.kind in FS_STEP_KINDS for st in ps.steps[at + 1:]) or ps.label in rootfs_readers(plan)
