"""Orchestration of `kade build`: plan, look every step key up, run only what is missing, push.

1. Parse the Dockerfile and plan every stage the target needs; base images are resolved to their
   platform manifest digest (one manifest GET and one small config GET each), so every step key is
   known before anything runs.
2. One HEAD per step key in the stages repo (in parallel); lookup goes on after a miss.
3. Per stage (independent stages in parallel, up to --parallel): if the stage's last step is cached,
   nothing runs and nothing is pulled. Otherwise the rootfs is prepared from the last cached step
   image (layers from the local cache, downloaded when missing), the remaining steps run, and each
   step image is pushed (blobs first, then the manifest tagged with the key).
4. The final image (config with `created`, manifest annotations revision/created) goes to every
   --tag (blobs mounted across repositories, never downloaded), or to a local OCI layout without
   --tag; then the build record goes to the stages repo.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import Future
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from builder import image_config as ic
from builder.cache import LocalCache
from builder.context import BuildContext
from builder.dockerfile import parse_file
from builder.epoch import created_at, rfc3339, source_date_epoch
from builder.errors import BuildError, StepFailedError
from builder.keys import is_step_key
from builder.plan import DEFAULT_PLATFORM, BaseImage, Plan, PlannedStage, Step, make_plan
from builder.stageroot import StageRoot, StageRoots, Tree
from registry import cancel
from registry import mediatypes as mt
from registry.client import ClientOptions, RegistryClient, Repository
from registry.digest import sha256_digest
from registry.errors import RegistryError
from registry.model import Descriptor, Index, Manifest, parse_manifest
from registry.reference import Reference

if TYPE_CHECKING:
    from builder.fetch import GrowingBlob

Report = Callable[..., None]
ANNOTATION_REVISION = "org.opencontainers.image.revision"
ANNOTATION_CREATED = "org.opencontainers.image.created"
_OCI_FOR_DOCKER = {mt.DOCKER_LAYER_GZIP: mt.OCI_LAYER_GZIP}
STAGE_STOP_GRACE = 1.5  # seconds a cancelled build waits for its running stages to stop


@dataclass
class BuildOptions:
    context: Path
    dockerfile: Path | None = None
    target: str | None = None
    build_args: dict[str, str] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    repo: str | None = None
    secrets: dict[str, bytes] = field(default_factory=dict)
    ssh: str | None = None
    compression: str = "gzip"
    no_cache: bool = False
    parallel: int = 4
    cache_dir: str | None = None
    keep_failed: bool = False
    insecure: tuple[str, ...] = ()
    platform: str = DEFAULT_PLATFORM
    image_name: str = "default"
    revision: tuple[str | None, str | None] | None = None  # (commit, branch); None: asked of git at context
    annotations: dict[str, str] = field(default_factory=dict)  # extra manifest annotations of the final image
    labels: dict[str, str] = field(default_factory=dict)  # extra config labels of the final image (not in keys)
    sandbox: Callable[..., int] | None = None  # runs RUN commands; None: builder.sandbox.run_in_rootfs
    epoch: int | None = None  # SOURCE_DATE_EPOCH for this build; None: the environment's (builder/epoch.py)
    supply: Any = None  # builder.attest.SupplyOptions: SBOM, provenance, signing of pushed images; None: none
    isolation: Any = None  # builder.sandbox.Isolation for run_in_rootfs (None: its defaults)
    allow_host_network: bool = False  # RUN --network=host is refused without it (kade build --allow-host-network)


@dataclass
class BuildResult:
    images: list[dict[str, str]]  # [{"ref", "digest"}]
    built: int
    cached: int
    record_tag: str | None = None
    layout: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"images": self.images, "steps": {"built": self.built, "cached": self.cached}}


@dataclass
class Image:
    """An image in a repository: its manifest, digest and parsed config."""
    repo: str  # "host/repository"
    digest: str
    manifest: Manifest
    config: dict[str, Any]


def check_host_network(plan: Plan) -> None:
    """RUN --network=host is an entitlement of whoever runs the build, never of the Dockerfile."""
    for ps in plan.stages.values():
        for step in ps.steps:
            if step.kind == "run" and step.network == "host":
                raise BuildError("RUN --network=host gives the step the build host's network (its loopback "
                                 "services included); the Dockerfile alone can't ask for that",
                                 file=step.ins.file, line=step.ins.line,
                                 hint="build with `kade build --allow-host-network` if you trust this Dockerfile")


def stages_repo_for(tag: str) -> str:
    ref = Reference.parse(tag)
    return f"{ref.registry}/{ref.repository}-stages"


def git_revision(path: Path) -> tuple[str | None, str | None]:
    """(commit, branch) of the git checkout holding `path`, or (None, None)."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    branch = git("rev-parse", "--abbrev-ref", "HEAD")
    if commit and len(commit) != 40:
        commit = None
    return commit, (branch if branch and branch != "HEAD" else None)


class Builder:
    def __init__(self, options: BuildOptions, report: Report, client: RegistryClient | None = None):
        self.o = options
        self.report = report
        self.client = client or RegistryClient(ClientOptions(insecure=tuple(options.insecure)))
        self.cache = LocalCache(options.cache_dir)
        self.images: dict[str, Image] = {}  # by manifest digest (bases and step images)
        self.blob_homes: dict[str, set[str]] = {}  # blob digest -> repos known to hold it
        self.lock = threading.Lock()
        self.built = 0
        self.work_dirs: list[Path] = []
        self.stage_roots: dict[str, Tree] = {}   # what readers of a stage or image read (stageroot.Tree)
        self.stage_images: dict[str, Image | None] = {}
        self.stage_futures: dict[str, Future] = {}
        self.claims: dict[str, Future] = {}  # step key -> the image of its one execution in this build
        self.root_lock = threading.Lock()
        self.fetch_pool: cancel.Pool | None = None  # layer downloads unpacked while they run
        self._roots: StageRoots | None = None
        self.epoch = options.epoch if options.epoch is not None else source_date_epoch()
        if options.tags:
            self.stages_repo = options.repo or stages_repo_for(options.tags[0])
        else:
            self.stages_repo = options.repo

    # -- registry helpers -------------------------------------------------------------------------
    def repo(self, name: str) -> Repository:
        return self.client.repository(name)

    def _note_blobs(self, repo: str, descs: list[Descriptor]) -> None:
        with self.lock:
            for d in descs:
                self.blob_homes.setdefault(d.digest, set()).add(repo)

    def _fetch_json_blob(self, repo: str, digest: str) -> bytes:
        if self.cache.blobs.has(digest):
            return self.cache.blobs.read(digest)
        with self.repo(repo).open_blob(digest) as f:
            data = f.read()
        self.cache.blobs.put_bytes(data, digest)
        return data

    def load_image(self, repo: str, digest: str, body: bytes | None = None, media_type: str | None = None,
                   platform: str = DEFAULT_PLATFORM) -> Image:
        if digest in self.images:
            return self.images[digest]
        if body is None:
            body, desc = self.repo(repo).get_manifest(digest)
            media_type = desc.media_type
        parsed = parse_manifest(body, media_type)
        if isinstance(parsed, Index):
            chosen = _pick_platform(parsed, platform, repo)
            return self.load_image(repo, chosen.digest, platform=platform)
        config = json.loads(self._fetch_json_blob(repo, parsed.config.digest))
        img = Image(repo=repo, digest=digest, manifest=parsed, config=config)
        self._note_blobs(repo, parsed.blobs())
        with self.lock:
            self.images[digest] = img
        return img

    def resolve_base(self, name: str, platform: str) -> BaseImage:
        try:
            ref = Reference.parse(name)
        except RegistryError as exc:
            raise BuildError(f"invalid base image {name!r}: {exc}") from None
        repo = ref.name
        self.report("resolve", f"{name} ({platform})")
        try:
            body, desc = self.repo(repo).get_manifest(ref.identifier)
            img = self.load_image(repo, desc.digest, body, desc.media_type, platform)
        except RegistryError as exc:
            raise BuildError(str(exc)) from None
        return BaseImage(ref=repo, digest=img.digest, config=img.config)

    # -- the build --------------------------------------------------------------------------------
    def run(self) -> BuildResult:
        with self.session():
            return self.build_plan(self.prepare())

    @contextmanager
    def session(self) -> Iterator[None]:
        """Holds the local cache's shared lock (against `kade cache prune`) and removes work dirs after;
        files are created with umask 022 meanwhile, whatever the caller's (see `build_umask`)."""
        with build_umask(), self.cache.lock("global", shared=True):
            try:
                yield
            finally:
                self._cleanup()

    def prepare(self) -> Plan:
        """Parse and plan (base images resolved): every step key is known, nothing has run."""
        dockerfile = self.o.dockerfile or (self.o.context / "Dockerfile")
        df = parse_file(dockerfile)
        ctx = BuildContext.open(self.o.context, dockerfile)
        ctx.fetcher = self._fetch_url
        plan = make_plan(df, ctx, self.resolve_base, target=self.o.target, build_args=self.o.build_args,
                         platform=self.o.platform)
        self.plan, self.ctx = plan, ctx
        if not self.o.allow_host_network:
            check_host_network(plan)
        for name in plan.unused_args:
            self.report("warning", f"build arg {name} was given but no ARG in the stages built declares it")
        for step in plan.all_steps():
            for pattern in step.copy.unmatched if step.copy else ():
                self.report("warning", f"{step.ins.file}:{step.ins.line}: {step.ins.cmd} source {pattern!r} matches "
                                       "nothing in the context: nothing copied for it (as BuildKit does)")
        return plan

    def build_plan(self, plan: Plan, hits: dict[str, Any] | None = None) -> BuildResult:
        """Look the step keys up (unless `hits` are given), run what is missing, publish."""
        final = self.execute(plan, self.lookup(plan) if hits is None else hits)
        return self.publish(plan, final)

    def lookup(self, plan: Plan) -> dict[str, Image]:
        """One HEAD per step key (all of them, in parallel; a miss doesn't stop the others)."""
        steps = plan.all_steps()
        if self.o.no_cache or not self.stages_repo or not steps:
            return {}
        repo = self.repo(self.stages_repo)
        with cancel.Pool(max_workers=8) as pool:
            found = list(pool.map(lambda s: repo.head_manifest(s.key, mt.OCI_MANIFEST), steps))
        return {s.key: d for s, d in zip(steps, found) if d is not None}  # type: ignore[misc]

    def execute(self, plan: Plan, hits: dict[str, Any]) -> Image | None:
        from builder import sandbox

        self.hits = hits
        needed = needed_stages(plan, set(hits))
        try:
            # cancelled: the running stages get a moment to stop (their RUN killed, their pushes refused)
            # before the session removes their work dirs
            with cancel.Pool(max_workers=max(1, self.o.parallel), grace=STAGE_STOP_GRACE) as pool:
                try:
                    for ps in plan.order():  # dependencies come first, so a waiting stage never starves the pool
                        if ps.label in needed:
                            self.stage_futures[ps.label] = pool.submit(
                                lambda ps=ps: with_trailing_history(ps, self.run_stage(ps)))
                    return self.stage_futures[plan.target].result()
                except KeyboardInterrupt:  # a signal (registry.cancel.Cancelled is one too)
                    sandbox.kill_all()   # RUNs in worker threads stop now (and none starts): the pool waits for them
                    raise
        except KeyboardInterrupt:
            sandbox.resume()
            raise

    def _base_image(self, ps: PlannedStage) -> Image | None:
        if ps.base_stage:
            return self.stage_futures[ps.base_stage].result()
        if ps.base_image:
            return self.images[ps.base_image.digest]
        return None  # scratch

    def run_stage(self, ps: PlannedStage) -> Image | None:
        """Where a needed stage runs: this process by default. The backend seam: a subclass (the
        kubernetes backend) overrides it to run the stage elsewhere and return its final image."""
        return self._run_stage(ps)

    def _run_stage(self, ps: PlannedStage) -> Image | None:
        """Returns the stage's final image (None for an empty scratch stage)."""
        steps = ps.steps
        last_hit = len(steps) - len(missing_steps(ps, set(self.hits))) - 1
        if last_hit < 0:
            parent = self._base_image(ps)
        else:
            parent = self._step_image(steps[last_hit])
        for s in steps[: last_hit + 1]:
            self.report("cached", f"[{ps.label}] {s.text}", key=s.key)
        if last_hit == len(steps) - 1:
            self.stage_images[ps.label] = parent
            return parent
        root = self._materialize(parent, f"stage-{ps.label}-")
        for s in steps[last_hit + 1:]:
            parent = self._run_once(ps, s, parent, root)
        if ps.label in rootfs_readers(self.plan):  # else its last RUN may have left it unmerged
            with self.root_lock:
                self.stage_roots[ps.label] = root.reader()
        self.stage_images[ps.label] = parent
        return parent

    def _run_once(self, ps: PlannedStage, step: Step, parent: Image | None, root: StageRoot) -> Image:
        """Identical steps (same key) in stages running at once execute once: the others wait for that
        image and take its layer onto their own rootfs, which is at the same parent state."""
        with self.lock:
            claim = self.claims.get(step.key)
            mine = claim is None
            if mine:
                claim = self.claims[step.key] = Future()
        assert claim is not None
        if not mine:
            img: Image = claim.result()
            self.report("shared", f"[{ps.label}] {step.text}", key=step.key)
            root.add_layers(self._layer_refs(img))
            return img
        try:
            img = self.execute_step(ps, step, parent, root)
        except BaseException as exc:
            claim.set_exception(exc)
            raise
        claim.set_result(img)
        with self.lock:
            self.built += 1
        return img

    def _step_image(self, step: Step) -> Image:
        desc = self.hits[step.key]
        return self.load_image(self.stages_repo, desc.digest)  # type: ignore[arg-type]

    # -- rootfs ----------------------------------------------------------------------------------
    @property
    def roots(self) -> StageRoots:
        """Stage roots over the layer store (builder/stageroot.py), or copies where overlay can't be used."""
        with self.lock:
            if self._roots is None:
                self._roots = StageRoots(self.cache.root, self.cache.lock, self.report, self.epoch)
            return self._roots

    def _materialize(self, image: Image | None, prefix: str) -> StageRoot:
        """A fresh rootfs holding `image`: an overlay of its layer dirs (each unpacked once, from cached
        or downloaded blobs, when missing) and a fresh upper dir per step; where overlay can't be used,
        a copy of the longest unpacked prefix with the remaining layers applied (only base images'
        trees are saved for later builds there: a step image's tree would cost a full copy each time)."""
        holder = self.cache.work_dir(prefix)
        self.work_dirs.append(holder)
        refs = self._layer_refs(image, report=True) if image is not None else []
        return self.roots.stage(refs, holder, save=image is not None and self._keepable(image))

    def _keepable(self, image: Image) -> bool:
        return image.repo not in (self.stages_repo, "")

    def _layer_refs(self, image: Image, *, report: bool = False) -> list:
        """The image's layers for the layer store, the ones it lacks downloading meanwhile; with `report`,
        says how many the store supplies."""
        from builder.rootfs import LayerRef, chain_ids

        diff_ids = list((image.config.get("rootfs") or {}).get("diff_ids") or [])
        layers = image.manifest.layers
        if len(diff_ids) != len(layers):
            raise BuildError(f"image {image.repo}@{image.digest} has {len(layers)} layers but "
                             f"{len(diff_ids)} diff_ids in its config", hint="rebuild or re-push that image")
        missing = self.roots.missing(chain_ids(diff_ids))
        fetches = {layers[i].digest: self._fetch(image, layers[i]) for i in missing}   # all at once, unpacked as they come
        if report:
            kept = len(layers) - len(missing)
            self.report("unpack", f"{len(layers)} layer(s) of {image.digest[:19]}: {kept} reused from the local "
                                  f"cache, {len(missing)} unpacked", reused=kept, unpacked=len(missing))
        return [LayerRef(diff_id, fetches[d.digest].open if d.digest in fetches else
                         (lambda d=d: open(self._blob_path(image, d), "rb")), d.digest)
                for diff_id, d in zip(diff_ids, layers)]

    def _read_only_tree(self, image: Image) -> Tree:
        """An image's filesystem for readers (COPY --from=<image>, RUN --mount from=<image>): its layer
        dirs, read where they are (no copy)."""
        return self.roots.image(self._layer_refs(image, report=True) if image.manifest.layers else [],
                                lambda: self._work_dir("from-image-"), keep=self._keepable(image))

    def _work_dir(self, prefix: str) -> Path:
        holder = self.cache.work_dir(prefix)
        self.work_dirs.append(holder)
        return holder

    def _fetch(self, image: Image, desc: Descriptor) -> "GrowingBlob":
        """Start downloading a layer blob into the local cache (unless it is there); read it as it grows."""
        from builder.fetch import start_fetch

        with self.lock:
            if self.fetch_pool is None:
                self.fetch_pool = cancel.Pool(max_workers=4, thread_name_prefix="kade-fetch")
        path = self.cache.blobs.path(desc.digest)
        return start_fetch(self.fetch_pool, path, lambda: self.cache.lock(desc.digest),
                           lambda: self.repo(image.repo).open_blob(desc.digest, desc.size),
                           lambda: self.report("pull", f"{desc.digest[:19]} ({desc.size} bytes) from {image.repo}"))

    def _blob_path(self, image: Image, desc: Descriptor) -> Path:
        path = self.cache.blobs.path(desc.digest)
        if path.is_file():
            return path
        with self.cache.lock(desc.digest):
            if not path.is_file():
                self.report("pull", f"{desc.digest[:19]} ({desc.size} bytes) from {image.repo}")
                self.repo(image.repo).download_blob(desc.digest, path, desc.size)
        return path

    def stage_rootfs(self, label: str | None, image: Image | None) -> Tree:
        """The filesystem of a stage (or image) for COPY --from / RUN --mount from=."""
        if label is not None:
            img = self.stage_futures[label].result()
            with self.root_lock:
                if label not in self.stage_roots:
                    self.stage_roots[label] = self._materialize(img, f"from-{label}-").reader()
                return self.stage_roots[label]
        assert image is not None
        key = "image:" + image.digest
        with self.root_lock:
            if key not in self.stage_roots:
                self.stage_roots[key] = self._read_only_tree(image)
            return self.stage_roots[key]

    # -- one step ----------------------------------------------------------------------------------
    def execute_step(self, ps: PlannedStage, step: Step, parent: Image | None, root: StageRoot) -> Image:
        """Run one missing step on `root` and push its step image. Seam for a backend that must
        coordinate steps (the builder pod holds a Lease per step key around it)."""
        return self._execute_step(ps, step, parent, root)

    def _execute_step(self, ps: PlannedStage, step: Step, parent: Image | None, root: StageRoot) -> Image:
        from builder import execute as ex

        cancel.check()  # nothing new starts once the command is cancelled
        self.report("step", f"[{ps.label}] {step.text}", key=step.key)
        workdir = step.config.get("config", {}).get("WorkingDir") or "/"
        layer: Descriptor | None = None
        try:
            if step.kind == "run":
                ctx = ex.RunContext(secrets=self.o.secrets, ssh_socket=self.o.ssh, cache_dir=self._cache_mount,
                                    stage_rootfs=self._mount_root, context_root=self.ctx.root, report=self.report,
                                    runner=self.o.sandbox, isolation=self.o.isolation)
                layer = ex.run_step(root, step, ctx, lambda line: self.report("output", line),  # type: ignore[assignment]
                                    self._write_layer, keep_result=rootfs_read_after(self.plan, ps, step))
            elif step.kind in ("copy", "workdir"):
                with root.writable() as rootfs:
                    changes = self._copy(step, rootfs, workdir) if step.kind == "copy" else \
                        ex.ensure_dir(rootfs, workdir, epoch=self.epoch)
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
        root.commit((layer.annotations or {}).get("kade.diff_id") if layer is not None else None)
        return self._push_step(step, parent, layer)

    def _copy(self, step: Step, rootfs: Path, workdir: str) -> list:
        from builder import execute as ex

        spec = step.copy
        assert spec is not None
        from_root = None
        if spec.from_stage:
            from_root = self.stage_rootfs(spec.from_stage, None).path
        elif spec.from_image is not None:
            img = self.load_image(spec.from_image.ref, spec.from_image.digest)
            from_root = self.stage_rootfs(None, img).path
        return ex.copy_step(rootfs, spec, workdir, from_root, context_root=self.ctx.root, epoch=self.epoch)

    def _fetch_url(self, url: str, checksum: str | None) -> Path:
        """ADD <url>: download (every build: the key follows the content), verify --checksum, mode 0600."""
        import hashlib

        from registry.download import DownloadError, download

        folder = self.cache.root / "urls" / hashlib.sha256(url.encode()).hexdigest()[:32]
        self.report("fetch", url)
        try:
            return download(url, folder, checksum)[0]
        except DownloadError as exc:
            raise BuildError(f"ADD {exc}", hint="check the URL and its --checksum") from None

    def _cache_mount(self, mount_id: str, sharing: str, stack: ExitStack) -> Path:
        """The directory of a cache mount for one RUN (BuildKit's sharing modes): `shared` the cache
        itself; `locked` the cache once no other step holds it; `private` the cache unless another
        step holds it, else a fresh directory dropped after the step."""
        if sharing == "shared":
            return self.cache.mount_dir(mount_id)
        held = stack.enter_context(self.cache.lock(f"mount:{mount_id}", wait=sharing == "locked"))
        if held:
            return self.cache.mount_dir(mount_id)
        private = self.cache.work_dir("cache-private-")
        stack.callback(shutil.rmtree, private, True)
        return private

    def _mount_root(self, ref: str, _unused: object) -> Tree:
        for label in self.plan.stages:
            if label == ref.lower():
                return self.stage_rootfs(label, None)
        base = self.resolve_base(ref, self.o.platform)
        return self.stage_rootfs(None, self.images[base.digest])

    def _write_layer(self, changes: list) -> Descriptor:
        from builder.execute import write_layer

        fd, tmp = tempfile.mkstemp(prefix=".layer-", dir=self.cache.root / "blobs" / "sha256")
        try:
            with os.fdopen(fd, "wb") as out:
                info = write_layer(changes, out, self.o.compression, self.epoch)
            os.replace(tmp, self.cache.blobs.path(info.digest))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        desc = Descriptor(info.media_type, info.digest, info.size)
        desc.annotations = {"kade.diff_id": info.diff_id}  # carried to the config, stripped before push
        return desc

    def _push_step(self, step: Step, parent: Image | None, layer: Descriptor | None) -> Image:
        base_cfg = parent.config if parent else ic.empty_config(*self.o.platform.split("/")[:2])
        cfg = dict(step.config)
        cfg["rootfs"] = {"type": "layers", "diff_ids": list((base_cfg.get("rootfs") or {}).get("diff_ids") or [])}
        cfg["history"] = list(base_cfg.get("history") or [])
        diff_id = (layer.annotations or {}).get("kade.diff_id") if layer else None
        for text in step.history:  # the ARGs before it (BuildKit's history; not in the key)
            cfg = ic.add_history(cfg, text, empty_layer=True)
        if step.in_history or diff_id:
            cfg = ic.add_history(cfg, step.created_by, empty_layer=layer is None, diff_id=diff_id)
        layers = [_oci_layer(d) for d in (parent.manifest.layers if parent else [])]
        if layer is not None:
            layers.append(Descriptor(layer.media_type, layer.digest, layer.size))
        config_bytes = ic.config_bytes(cfg)
        config_desc = Descriptor(mt.OCI_CONFIG, sha256_digest(config_bytes), len(config_bytes))
        manifest = Manifest(config=config_desc, layers=layers, media_type=mt.OCI_MANIFEST)
        body = manifest.to_bytes()
        digest = sha256_digest(body)
        self.cache.blobs.put_bytes(config_bytes, config_desc.digest)
        self.cache.blobs.put_bytes(body, digest)
        repo = self.stages_repo
        img = Image(repo=repo or "", digest=digest, manifest=manifest, config=cfg)
        if repo:
            self._push_manifest(repo, img, config_bytes, step.key, parent)
        with self.lock:
            self.images[digest] = img
        if self.o.supply is not None and step.stage == self.plan.target:
            from builder.attest import prescan

            prescan(self, img)  # the final image's SBOM then reads only what comes after this step
        return img

    def _push_manifest(self, repo_name: str, img: Image, config_bytes: bytes, tag: str, source: Image | None) -> str:
        """Blobs first (mounted from where they are known to live, uploaded from the local cache otherwise),
        then the manifest."""
        repo = self.repo(repo_name)
        for d in img.manifest.layers:
            self._ensure_blob(repo, d)
        repo.upload_blob(io.BytesIO(config_bytes), img.manifest.config.digest, len(config_bytes))
        digest = repo.put_manifest(tag, img.manifest.to_bytes(), mt.OCI_MANIFEST)
        self._note_blobs(repo_name, img.manifest.blobs())
        return digest

    def _ensure_blob(self, repo: Repository, d: Descriptor) -> None:
        name = f"{repo.ref.registry}/{repo.name}"
        homes = self.blob_homes.get(d.digest, set())
        if name in homes:
            return
        for home in sorted(homes):
            href = Reference.parse(home, default_tag=None)
            if href.registry == repo.ref.registry and repo.mount_blob(d.digest, href.repository):
                self._note_blobs(name, [d])
                return
        if repo.head_blob(d.digest) is not None:
            self._note_blobs(name, [d])
            return
        path = self.cache.blobs.path(d.digest)
        if not path.is_file():
            src = next(iter(homes), None)
            if src is None:
                raise BuildError(f"blob {d.digest} is neither in the local cache nor in a known repository")
            self.repo(src).download_blob(d.digest, path, d.size)
        repo.upload_blob(path, d.digest, d.size)
        self._note_blobs(name, [d])

    # -- final image ---------------------------------------------------------------------------------
    def publish(self, plan: Plan, final: Image | None) -> BuildResult:
        if final is None:
            raise BuildError("the target stage is an empty scratch image: nothing to publish",
                             file=plan.dockerfile.path)
        now = created_at(self.epoch)
        commit, branch = self.o.revision if self.o.revision is not None else git_revision(self.o.context)
        cfg = ic.set_created(final.config, rfc3339(now))
        if self.o.labels:
            cfg = ic.set_labels(cfg, sorted(self.o.labels.items()))
        config_bytes = ic.config_bytes(cfg)
        annotations = {**self.o.annotations, ANNOTATION_CREATED: rfc3339(now)}
        if commit:
            annotations[ANNOTATION_REVISION] = commit
        manifest = Manifest(config=Descriptor(mt.OCI_CONFIG, sha256_digest(config_bytes), len(config_bytes)),
                            layers=[_oci_layer(d) for d in final.manifest.layers], media_type=mt.OCI_MANIFEST,
                            annotations=annotations)
        img = Image(repo=final.repo, digest=sha256_digest(manifest.to_bytes()), manifest=manifest, config=cfg)
        images: list[dict[str, str]] = []
        layout = None
        if self.o.tags:
            for tag in self.o.tags:
                ref = Reference.parse(tag)
                digest = self._push_manifest(ref.name, img, config_bytes, ref.tag or "latest", final)
                images.append({"ref": str(ref), "digest": digest})
                self.report("pushed", f"{ref}@{digest}")
        else:
            layout = self._write_layout(plan, img, config_bytes)
            images.append({"ref": f"oci:{layout}:{self._layout_ref(plan)}", "digest": img.digest})
        if self.o.tags and self.o.supply is not None:
            from builder.attest import attest

            attest(self, plan, img, commit, branch, final)
        record_tag = None
        if self.stages_repo and self.o.tags:
            record_tag = self._push_record(plan, images, commit, branch, now)
        # cached: every planned step that did not run (found in the stages repo, or not needed)
        cached = len(plan.all_steps()) - self.built
        return BuildResult(images=images, built=self.built, cached=cached, record_tag=record_tag, layout=layout)

    def _layout_ref(self, plan: Plan) -> str:
        return plan.target if not plan.target.isdigit() else "latest"

    def _write_layout(self, plan: Plan, img: Image, config_bytes: bytes) -> str:
        from registry.layout import OCILayout

        layout = OCILayout(self.cache.layout_dir, create=True)
        for d in img.manifest.layers:
            path = self.cache.blobs.path(d.digest)
            if not path.is_file():
                src = next(iter(self.blob_homes.get(d.digest, ())), None)
                if src is None:
                    raise BuildError(f"layer {d.digest} is not available locally")
                self.repo(src).download_blob(d.digest, path, d.size)
            dst = layout.blobs.path(d.digest)
            if not dst.exists():
                shutil.copyfile(path, dst)
        layout.write_blob(config_bytes, img.manifest.config.digest)
        desc = layout.write_manifest(img.manifest.to_bytes(), mt.OCI_MANIFEST)
        layout.tag(desc, self._layout_ref(plan))
        self.report("written", f"oci:{layout.path}:{self._layout_ref(plan)}")
        return str(layout.path)

    def _push_record(self, plan: Plan, images: list[dict[str, str]], commit: str | None, branch: str | None,
                     now: datetime) -> str:
        from registry.records import BuildRecord, RecordImage, push_record

        steps = tuple(dict.fromkeys(s.key for s in plan.all_steps() if is_step_key(s.key)))
        first = Reference.parse(self.o.tags[0])
        record = BuildRecord(commit=commit, branch=branch, created=now, images=(RecordImage(
            name=self.o.image_name, repository=first.name, tags=tuple(Reference.parse(t).tag or "latest"
                                                                      for t in self.o.tags),
            digest=images[0]["digest"], steps=steps),))
        tag = push_record(self.repo(self.stages_repo), record)  # type: ignore[arg-type]
        self.report("record", f"{self.stages_repo}:{tag}")
        return tag

    def _cleanup(self) -> None:
        if self.fetch_pool is not None:
            self.fetch_pool.stop(cancel_pending=True)
        if self._roots is not None:
            self._roots.close()
        if cancel.cancelled():
            self.client.abandon_uploads()  # of stage threads that did not stop in time
        for d in self.work_dirs:
            self.cache.discard(d)


_umask_lock = threading.Lock()
_umask_users: list[int] = []  # the caller's umask, once per build running in this process


@contextmanager
def build_umask() -> Iterator[None]:
    """umask 022 while builds run (as BuildKit's daemon has it): what a build creates (rootfs trees,
    overlay dirs, mountpoints, cache dirs) never takes its mode from the caller's umask, so layers
    don't either. Builds running at once share it; the caller's comes back when the last ends."""
    with _umask_lock:
        previous = os.umask(0o022)
        _umask_users.append(previous if not _umask_users else _umask_users[0])
    try:
        yield
    finally:
        with _umask_lock:
            first = _umask_users.pop()
            if not _umask_users:
                os.umask(first)


def missing_steps(ps: PlannedStage, hits: set[str]) -> list[Step]:
    """The steps after the last cached one (lookup goes on after a miss, so a later hit counts)."""
    last = max((i for i, st in enumerate(ps.steps) if st.key in hits), default=-1)
    return ps.steps[last + 1:]


FS_STEP_KINDS = frozenset({"run", "copy", "workdir"})  # steps that work on the stage's rootfs


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


def needed_stages(plan: Plan, hits: set[str]) -> set[str]:
    """Stages whose result this build needs: the target, and whatever its missing steps use."""
    needed: set[str] = set()
    todo = [plan.target]
    while todo:
        label = todo.pop()
        if label in needed:
            continue
        needed.add(label)
        ps = plan.stages[label]
        missing = missing_steps(ps, hits)
        if ps.base_stage and len(missing) == len(ps.steps):
            todo.append(ps.base_stage)
        for st in missing:
            if st.copy is not None and st.copy.from_stage:
                todo.append(st.copy.from_stage)
            for m in st.mounts:
                ref = m.options.get("from", "").lower()
                if ref in plan.stages:
                    todo.append(ref)
    return needed


def with_trailing_history(ps: PlannedStage, image: Image | None) -> Image | None:
    """A stage's result: its last step's image, plus the history entries of the ARGs after that step
    (BuildKit records them; no layer, no key changes). A config-only image, never pushed by itself:
    publishing or a stage built FROM it writes its config."""
    if image is None or not ps.trailing_history:
        return image
    cfg = image.config
    for text in ps.trailing_history:
        cfg = ic.add_history(cfg, text, empty_layer=True)
    config_bytes = ic.config_bytes(cfg)
    manifest = Manifest(config=Descriptor(mt.OCI_CONFIG, sha256_digest(config_bytes), len(config_bytes)),
                        layers=list(image.manifest.layers), media_type=image.manifest.media_type)
    return Image(repo=image.repo, digest=sha256_digest(manifest.to_bytes()), manifest=manifest, config=cfg)


def _oci_layer(d: Descriptor) -> Descriptor:
    return Descriptor(_OCI_FOR_DOCKER.get(d.media_type, d.media_type), d.digest, d.size, urls=d.urls)


def _pick_platform(index: Index, platform: str, repo: str) -> Descriptor:
    os_name, _, rest = platform.partition("/")
    arch, _, variant = rest.partition("/")
    for d in index.manifests:
        p = d.platform or {}
        if p.get("os") == os_name and p.get("architecture") == arch and (not variant or p.get("variant") == variant):
            return d
    found = ", ".join(d.platform_string or "?" for d in index.manifests)
    raise BuildError(f"{repo} has no image for platform {platform} (it has: {found})",
                     hint="pick another base image or --platform")


def build(options: BuildOptions, report: Report, client: RegistryClient | None = None) -> BuildResult:
    return Builder(options, report, client).run()
