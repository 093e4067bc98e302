"""The local executor: a stage's missing steps run in this process, on a rootfs in the local cache.

For each job: a writable rootfs holding the parent image (builder/stageroot.py: an overlay of the
layer store's dirs, each layer unpacked once by ChainID from cached or downloading blobs, and a fresh
upper dir per step; a copy of the longest unpacked prefix where overlay can't be used), then each step
on it (COPY/ADD/WORKDIR through builder/execute.py, RUN in the sandbox with what it changed: the upper
dir), each step's changes written as one layer (the upper dir then joins the store under its ChainID),
and each step image pushed to the stages repo under its key (signed by the tenant's build key when
there is one). Identical steps (same key) in stages running at once execute once; the others take its
layer. Other stages' filesystems (COPY --from, RUN --mount from=) are read-only views of the layers
their stage left, or of the image's layers.
"""
from __future__ import annotations

import os
import tempfile
import threading
import time
from concurrent.futures import Future
import contextlib
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Iterator, Sequence, cast

from builder import events as ev
from builder import image_config as ic
from builder.env import BuildEnv
from builder.errors import BuildError, StepFailedError
from builder.executor import StageJob, StageOutcome, StageResults
from builder.plan import Plan, PlannedStage, Step
from common import fsutil
from common.epoch import step_time
from registry import cancel
from registry.image import Image, Layer
from registry.model import Descriptor, Platform

if TYPE_CHECKING:
    from builder.stageroot import StageRoot, StageRoots, Tree
    from builder.tarformat import TocEntry
    from registry.growing import upload_while_written
    from registry.sigkeys import SigningKey
    from registry.imageconfig import ImageConfig

FS_STEP_KINDS = frozenset({"run", "copy", "workdir"})  # steps that work on the stage's rootfs


class StepPushes:
    """A stage's step images going up to the stages repo while its next steps run (a push is a few
    round trips; the next step needs only the local layer). One at a time, in order: each finds its
    parent's blobs already there. A failed push stops the stage before its next step; the stage is done
    when every push is."""

    def __init__(self) -> None:
        self._pool = cancel.Pool(max_workers=1, thread_name_prefix="kade-step-push")
        self._jobs: list[Future] = []

    def submit(self, push: Callable[[], None]) -> None:
        self._jobs.append(self._pool.submit(push))

    def check(self) -> None:
        """Raise the error of a push that failed (the ones done and fine are forgotten: a stage of
        N steps checks N times)."""
        pending = []
        for job in self._jobs:
            if not job.done():
                pending.append(job)
            elif not job.cancelled() and job.exception() is not None:
                job.result()
        self._jobs = pending

    def __enter__(self) -> "StepPushes":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._pool.__exit__(exc_type, exc, tb)   # waits for them (a cancelled build: not for long)
        if exc_type is None:
            cancel.check()
            for job in self._jobs:
                job.result()


class LocalExecutor:
    def __init__(self, env: BuildEnv, *, work_root: Path | None = None,
                 on_step_image: Callable[[Step, Image, Sequence[TocEntry] | None], None] | None = None):
        self.env, self.o, self.report = env, env.options, env.report
        self.work_root = work_root  # where rootfs dirs go (default: the local cache's work/)
        self.on_step_image = on_step_image
        self.plan: Plan | None = None
        self.work_dirs: list[Path] = []
        self.stage_roots: dict[str, Tree] = {}   # what readers of a stage or image read (stageroot.Tree)
        self._roots: StageRoots | None = None
        self.root_lock = threading.Lock()
        self.lock = threading.Lock()
        self.claims: dict[str, Future] = {}  # step key -> the image of its one execution in this build
        self.streamed: set[str] = set()      # layers uploaded while they were written
        self.tocs: dict[str, Sequence[TocEntry]] = {}   # layers written, not yet handed to on_step_image
        self.pushes: dict[str, StepPushes] = {}   # stage label -> its step images going up
        self.interrupted = False

    # -- the Executor protocol ---------------------------------------------------------------------
    @contextmanager
    def session(self) -> Iterator[None]:
        try:
            yield
        finally:
            if self._roots is not None:
                self._roots.close()   # its views (detached mounts) and pending upper dirs
            for d in self.work_dirs:
                self.env.cache.discard(d)

    @contextmanager
    def running(self, plan: Plan, jobs: Sequence[StageJob]) -> Iterator[None]:
        self.plan = plan
        self._check_emulation(jobs)
        self._prepare_network(jobs)
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

    def _prepare_network(self, jobs: Sequence[StageJob]) -> None:
        """RUN steps to do on kade's own sandbox: its network set up meanwhile (builder/sandbox.py)."""
        networks = {s.network for j in jobs for s in j.steps if s.kind == "run"}
        if networks and self.o.sandbox is None:
            from builder import sandbox

            sandbox.prepare_network(networks, self.o.isolation or sandbox.Isolation(), self.report)

    def _check_emulation(self, jobs: Sequence[StageJob]) -> None:
        """Before anything runs: RUN in a stage of a foreign platform needs qemu (builder/emulation.py)."""
        if self.o.node_emulation:  # a pod placed for emulation: the node's kernel has it, unseen from here
            return
        platforms = sorted({j.stage.platform for j in jobs if any(s.kind == "run" for s in j.steps)})
        if not platforms:
            return   # no RUN to do (every step cached): emulation.py is not even loaded
        from builder.emulation import ensure_emulation
        from builder.platforms import host_platform

        for platform in platforms:
            ensure_emulation(Platform.parse(platform), host_platform())

    def run_stage(self, job: StageJob, results: StageResults) -> StageOutcome:
        ps = job.stage
        root = self._materialize(job.parent, f"stage-{ps.label}-")
        parent, ran, keys = job.parent, 0, set()
        with StepPushes() as pushes:
            with self.lock:
                self.pushes[ps.label] = pushes
            try:
                pending: list[Step] = []   # config-only steps not stored: they go into the next step's image
                for step in job.steps:
                    pushes.check()
                    if not ps.stores(step):
                        self._config_only(ps, step)
                        pending.append(step)
                        ran += 1
                        keys.add(step.key)
                        continue
                    parent, here = self._run_once(ps, step, parent, root, results, tuple(pending))
                    pending = []
                    if here:
                        ran += 1
                        keys.add(step.key)
            finally:
                with self.lock:
                    del self.pushes[ps.label]
        if ps.label in rootfs_readers(self._plan):  # else its last RUN may have left it unmerged
            with self.root_lock:
                self.stage_roots[ps.label] = root.reader()
        return StageOutcome(parent, ran, ran_keys=frozenset(keys))

    @property
    def _plan(self) -> Plan:
        assert self.plan is not None, "run_stage before running()"
        return self.plan

    # -- one step, once ----------------------------------------------------------------------------
    def _config_only(self, ps: PlannedStage, step: Step) -> None:
        """A config-only step the stage does not store (PlannedStage.stores): nothing to run; its config
        and history go into the next step's image (N of them: no N images of a growing config)."""
        fields = ev.step_fields(self.o.image_name, ps, step)
        self.report(ev.STEP, ev.step_message(ps, step), **fields)
        self.report(ev.STEP_DONE, ev.step_message(ps, step), **fields, seconds=0.0, layer_bytes=0, pushed_bytes=0)

    def _run_once(self, ps: PlannedStage, step: Step, parent: Image | None, root: StageRoot,
                  results: StageResults, pending: tuple[Step, ...] = ()) -> tuple[Image, bool]:
        """Identical steps (same key) in stages running at once execute once: the others wait for that
        image and take its layer onto their own rootfs, which is at the same parent state. The image,
        and whether the step ran here."""
        with self.lock:
            claim = self.claims.get(step.key)
            mine = claim is None
            if mine:
                claim = self.claims[step.key] = Future()
        assert claim is not None
        if not mine:
            img: Image = claim.result()
            self.report(ev.SHARED, ev.step_message(ps, step), **ev.step_fields(self.o.image_name, ps, step))
            return self._adopt(img, root), False
        try:
            img = self._run_step(ps, step, parent, root, results, pending)
        except BaseException as exc:
            claim.set_exception(exc)
            raise
        claim.set_result(img)
        return img, True

    def _adopt(self, image: Image, root: StageRoot) -> Image:
        """Bring `root` (at `image`'s parent) to `image`: the layers `image` adds, on top."""
        root.add_layers(self._layers(image))
        return image

    def _run_step(self, ps: PlannedStage, step: Step, parent: Image | None, root: StageRoot,
                  results: StageResults, pending: tuple[Step, ...] = ()) -> Image:
        """Run one step on `root` and push its step image (with the config-only `pending` steps since
        `parent` in it)."""
        from builder import execute as ex
        from builder.stageroot import check_depth

        cancel.check()  # nothing new starts once the command is cancelled
        fields = ev.step_fields(self.o.image_name, ps, step)
        self.report(ev.STEP, ev.step_message(ps, step), **fields)
        started = time.monotonic()
        workdir = step.image_config.working_dir or "/"
        context_root = self._plan.context_root
        layer: Layer | None = None
        try:
            if step.kind in FS_STEP_KINDS:   # it may add a layer
                check_depth(root.depth + 1, f"stage {ps.label} with this step")
            if step.kind == "run":
                ctx = ex.RunContext(secrets=self.o.secrets, ssh_socket=self.o.ssh, cache_dir=self._cache_mount,
                                    stage_rootfs=lambda ref, _: self._mount_root(ref, results),
                                    context_root=context_root, report=self.report, runner=self.o.sandbox,
                                    isolation=self.o.isolation)
                output = {k: fields[k] for k in ("image", "stage", "key")}
                written = ex.run_step(root, step, ctx, lambda line: self.report(ev.OUTPUT, line, **output),
                                      self._write_layer, keep_result=rootfs_read_after(self._plan, ps, step))
                layer = written if isinstance(written, Layer) else None
            elif step.kind in ("copy", "workdir"):
                with root.writable() as rootfs:
                    changes = self._copy(step, rootfs, workdir, results) if step.kind == "copy" else \
                        self._workdir(step, rootfs, workdir)
                    layer = self._write_layer(changes) if changes else None
        except StepFailedError as exc:
            if self.o.keep_failed:
                kept = root.keep(root.work / "rootfs")
                self.work_dirs.remove(root.work)
                raise StepFailedError(exc.detail, exit_code=exc.exit_code, output_tail=exc.output_tail,
                                      file=exc.file, line=exc.line, hint=f"the failed rootfs is kept at {kept}",
                                      rootfs=str(kept)) from None
            raise
        except BuildError as exc:
            if exc.line is not None:
                raise
            raise BuildError(f"{step.text}: {exc.detail}", file=step.ins.file, line=step.ins.line,
                             hint=exc.hint) from None
        root.commit(layer.diff_id if layer is not None else None)
        return self._push_step(ps, step, parent, layer, started, pending)

    def _copy(self, step: Step, rootfs: Path, workdir: str, results: StageResults) -> list:
        from builder import execute as ex

        spec = step.copy
        assert spec is not None
        from_root = None
        if spec.from_stage:
            from_root = self.stage_rootfs(spec.from_stage, results).path
        elif spec.from_image is not None:
            img = self.env.store.load(spec.from_image.ref, spec.from_image.digest)
            from_root = self.image_rootfs(img).path
        return ex.copy_step(rootfs, spec, workdir, from_root, context_root=self._plan.context_root,
                            epoch=self.env.epoch, warn=self._warner(step))

    def _workdir(self, step: Step, rootfs: Path, workdir: str) -> list:
        """WORKDIR's directories, made for the USER at that point (BuildKit's mkdir WithUser)."""
        from builder import execute as ex

        user = step.config.user if step.config else ""
        owner = ex.owner_for(rootfs, user, f"WORKDIR under USER {user}", self._warner(step)) if user else (0, 0)
        return ex.ensure_dir(rootfs, workdir, *owner, epoch=self.env.epoch)

    def _warner(self, step: Step) -> Callable[[str], None]:
        """A warning about `step`, naming its Dockerfile line."""
        return lambda message: self.report("warning", f"{step.ins.file}:{step.ins.line}: {message}")

    def _write_layer(self, changes: list) -> Layer:
        """The layer into the local cache; a big one also goes up to the stages repo while it is
        written (the step image's push then finds it there)."""
        from builder.execute import write_layer

        blobs = self.env.cache.blobs
        fd, tmp = tempfile.mkstemp(prefix=".layer-", dir=self.env.cache.root / "blobs" / "sha256")
        stream = self._stream_to_stages(tmp)
        try:
            with os.fdopen(fd, "wb") as out, stream or contextlib.nullcontext():
                sink = cast(BinaryIO, _Announcing(out, stream.wrote)) if stream else out
                info = write_layer(changes, sink, self.o.compression, self.env.epoch,
                                   toc=self.on_step_image is not None)
            os.replace(tmp, blobs.path(info.digest))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        path = blobs.path(info.digest)
        desc = Descriptor(info.media_type, info.digest, info.size)
        if info.toc is not None:
            with self.lock:
                self.tocs[info.digest] = info.toc
        if stream and (uploaded := stream.result()) is not None and uploaded.digest == info.digest:
            self.env.store.note_blobs(stream.repo_name, [desc])
            with self.lock:
                self.streamed.add(info.digest)
            self.report("upload", f"{info.digest[:19]} ({info.size} bytes) went up to {stream.repo_name} while it "
                        "was written", digest=info.digest, bytes=info.size)
        return Layer(desc, info.diff_id, lambda: open(path, "rb"))

    def _stream_to_stages(self, path: str) -> "upload_while_written | None":
        """An upload of the layer at `path` to the stages repo while it is written (None: no repo)."""
        from registry.growing import upload_while_written

        name = self.env.stages_repo
        if not name:
            return None

        def failed(why: str) -> None:
            self.report("warning", f"streaming a layer to {name} failed ({why}); it is pushed after the step")

        return upload_while_written(self.env.store.repo(name), path, repo_name=name, on_error=failed)

    def _push_step(self, ps: PlannedStage, step: Step, parent: Image | None, layer: Layer | None,
                   started: float, pending: tuple[Step, ...] = ()) -> Image:
        """The step image (the step's config over its parent's layers and history, the history of the
        config-only `pending` steps since, plus its layer), kept locally and pushed to the stages repo
        tagged with the step's key."""
        base = parent.config if parent else ic.empty_config(Platform.parse(ps.platform))
        cfg = step.image_config.with_build_state(base.diff_ids or (), base.history or ())
        now = step_time(self.env.epoch)   # BuildKit's history times: when the step ran (a reused step keeps its own)
        for earlier in pending:
            cfg = _with_history(cfg, earlier, None, now)
        cfg = _with_history(cfg, step, layer, now)
        layers = [*(parent.manifest.layers if parent else []), *([layer.descriptor] if layer else [])]
        repo = self.env.stages_repo
        img = Image.assemble(cfg, layers, source=repo or "")
        if repo and self.o.build_key is not None:
            img = self._signed(img, repo, step.key, self.o.build_key)
        self.env.store.keep_local(img)
        target = step.stage == self._plan.target

        def push() -> None:
            pushed = self.env.store.push(img, repo, step.key).uploaded if repo else 0
            if layer is not None and layer.digest in self.streamed:
                pushed += layer.size   # went up while it was written
            self.report(ev.STEP_DONE, ev.step_message(ps, step), **ev.step_fields(self.o.image_name, ps, step),
                        seconds=round(time.monotonic() - started, 3), layer_bytes=layer.size if layer else 0,
                        pushed_bytes=pushed)
            if layer is not None:
                with self.lock:
                    toc = self.tocs.pop(layer.digest, None)
            if self.on_step_image is not None and target:
                self.on_step_image(step, img, toc if layer is not None else None)

        with self.lock:
            pushes = self.pushes.get(ps.label)
        if pushes is None:
            push()
        else:
            pushes.submit(push)
        return img

    def _signed(self, img: Image, repo: str, key: str, build_key: SigningKey) -> Image:
        """`img` with the build key's signature for `repo:key` in its manifest (registry/stagesig.py)."""
        from registry import stagesig
        from registry.digest import sha256_digest

        manifest = stagesig.sign(img.manifest, "step", stagesig.repository_name(self.env.store.repo(repo)), key,
                                 build_key)
        return Image(manifest, img.config, sha256_digest(manifest.to_bytes()), img.source)

    # -- filesystems ----------------------------------------------------------------------------
    def _work_dir(self, prefix: str) -> Path:
        if self.work_root is not None:
            return Path(tempfile.mkdtemp(prefix=prefix, dir=self.work_root))
        return self.env.cache.work_dir(prefix)

    @property
    def roots(self) -> StageRoots:
        """Stage roots over the layer store (builder/stageroot.py), or copies where overlay can't be used."""
        with self.lock:
            if self._roots is None:
                from builder.stageroot import StageRoots   # (the layer store's modules: only when a step runs)

                self._roots = StageRoots(self.env.cache.trees, self.env.cache.lock, self.report, self.env.epoch)
            return self._roots

    def _materialize(self, image: Image | None, prefix: str) -> StageRoot:
        """A fresh rootfs holding `image`: an overlay of its layer dirs (each unpacked once, from cached
        or downloaded blobs, when missing) and a fresh upper dir per step; where overlay can't be used,
        a copy of the longest unpacked prefix with the remaining layers applied (only base images'
        trees are saved for later builds there: a step image's tree would cost a full copy each time)."""
        holder = self._tracked_work_dir(prefix)
        layers = self._layers(image, report=True) if image is not None else []
        with _naming(image):
            return self.roots.stage(layers, holder, save=image is not None and self._keepable(image))

    def _keepable(self, image: Image) -> bool:
        return image.source not in (self.env.stages_repo, "")

    def _layers(self, image: Image, *, report: bool = False) -> list[Layer]:
        """The image's layers for the layer store, the ones it lacks downloading meanwhile; with `report`,
        says how many the store supplies."""
        from builder.rootfs import chain_ids
        from builder.stageroot import check_depth

        store = self.env.store
        diff_ids = list(image.config.diff_ids or ())
        layers = image.manifest.layers
        if len(diff_ids) != len(layers):
            raise BuildError(f"image {image.source}@{image.digest} has {len(layers)} layers but "
                             f"{len(diff_ids)} diff_ids in its config", hint="rebuild or re-push that image")
        check_depth(len(layers), f"image {image.source or 'built here'}@{image.digest[:19]}")
        missing = self.roots.missing(chain_ids(diff_ids))
        fetches = {layers[i].digest: store.fetch(image, layers[i]) for i in missing}   # all at once, unpacked as they come
        if report:
            kept = len(layers) - len(missing)
            self.report("unpack", f"{len(layers)} layer(s) of {image.digest[:19]}: {kept} reused from the local "
                                  f"cache, {len(missing)} unpacked", reused=kept, unpacked=len(missing))
        return image.layers(lambda d: fetches[d.digest].open if d.digest in fetches else
                            (lambda: open(store.blob_path(image, d), "rb")))

    def stage_rootfs(self, label: str, results: StageResults) -> Tree:
        """The filesystem of a stage, for COPY --from / RUN --mount from=."""
        img = results.result(label)
        with self.root_lock:
            if label not in self.stage_roots:
                self.stage_roots[label] = self._materialize(img, f"from-{label}-").reader()
            return self.stage_roots[label]

    def image_rootfs(self, image: Image) -> Tree:
        """An image's filesystem for readers (COPY --from=<image>, RUN --mount from=<image>): its layer
        dirs, read where they are (no copy)."""
        key = "image:" + image.digest
        with self.root_lock:
            if key not in self.stage_roots:
                layers = self._layers(image, report=True) if image.manifest.layers else []
                with _naming(image):
                    self.stage_roots[key] = self.roots.image(layers, lambda: self._tracked_work_dir("from-image-"),
                                                             keep=self._keepable(image))
            return self.stage_roots[key]

    def _tracked_work_dir(self, prefix: str) -> Path:
        holder = self._work_dir(prefix)
        self.work_dirs.append(holder)
        return holder

    def _mount_root(self, ref: str, results: StageResults) -> Tree:
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
        held = stack.enter_context(cache.lock(cache.mount_lock_name(mount_id), wait=sharing == "locked"))
        if held:
            return cache.mount_dir(mount_id)
        private = cache.work_dir("cache-private-")
        stack.callback(fsutil.remove_tree, private)
        return private


def _with_history(cfg: ImageConfig, step: Step, layer: Layer | None, created: str) -> ImageConfig:
    """`cfg` with `step`'s history entries, all of time `created`: the ARGs before it (BuildKit's
    history; not in the key), then its own (ONBUILD has none), which names its layer if it made one."""
    for text in step.history:
        cfg = ic.add_history(cfg, text, empty_layer=True, created=created)
    if step.in_history or layer:
        cfg = ic.add_history(cfg, step.created_by, empty_layer=layer is None, diff_id=layer.diff_id if layer else None,
                             created=created)
    return cfg


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


class _Announcing:
    """A file that says how many bytes each write put into it (flushed: a reader of the path sees them)."""

    def __init__(self, out: BinaryIO, wrote: Callable[[int], None]):
        self._out = out
        self._wrote = wrote

    def write(self, data: bytes) -> int:
        self._out.write(data)
        self._out.flush()
        self._wrote(len(data))
        return len(data)


@contextmanager
def _naming(image: Image | None) -> Iterator[None]:
    """A layer refused while unpacking (hostile or corrupt) is said with the image it came from."""
    try:
        yield
    except BuildError as exc:
        from builder.unpack import UnpackError   # (loaded with the layer store: only when a step runs)

        if not isinstance(exc, UnpackError) or image is None or not image.source:
            raise
        raise type(exc)(f"image {image.source}@{image.digest[:19]}: {exc.detail}", hint=exc.hint) from None
