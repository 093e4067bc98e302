"""Build every image of a kade.yaml project: in dependency waves, the images of a wave in parallel,
steps they have in common built once, each image published under its content tag (kade/tags.py).

For each image: plan with the builder (base images resolved, every step key known, nothing run),
derive the content tag from the final key, and HEAD `REPO/NAME:<content tag>`:
  - found: the image is taken from the registry as it is (extra tags point at it; nothing is built,
    nothing is pulled) — a converge where nothing changed costs one plan and one HEAD per image;
  - missing: the step keys are looked up; keys also missing for an image of the same wave that
    registered them first are waited for (that image builds them, this one finds them cached);
    then the builder runs the missing steps and publishes the image to its tags.
An image that depends on others gets their `ref` (`REPO/NAME:TAG@DIGEST`), `repository`, `tag` or
`digest` as build args, so its keys (and content tag) follow theirs. Finally one build record for the
commit lists every image (built or reused) with its steps, for cleanup.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from builder.build import Build, ExecutorFactory
from builder.options import BuildOptions
from builder.publish import Destination
from builder.errors import BuildError
from builder.keys import is_step_key
from builder.plan import DEFAULT_PLATFORM
from kade.config import ConfigError, ImageSpec, ProjectConfig
from kade.tags import TagContext, content_tag, extra_tags
from registry import cancel
from registry import mediatypes as mt
from registry.client import ClientOptions, RegistryClient
from registry.records import BuildRecord, RecordImage, push_record
from registry.reference import Reference

Report = Callable[..., None]
LABEL_REVISION = "org.opencontainers.image.revision"
LABEL_SOURCE = "org.opencontainers.image.source"


@dataclass
class ProjectOptions:
    repo: str  # images go to REPO/NAME
    stages_repo: str | None = None  # default REPO-stages, shared by all images (so they share steps)
    add_tags: list[str] = field(default_factory=list)
    env_name: str | None = None
    commit: str | None = None
    branch: str | None = None
    git: dict[str, str | None] = field(default_factory=dict)  # template values (commit, branch, tag, ...)
    source: str | None = None  # repository URL for org.opencontainers.image.source
    compression: str = "gzip"
    no_cache: bool = False
    parallel: int = 2
    cache_dir: str | None = None
    insecure: tuple[str, ...] = ()
    platform: str = DEFAULT_PLATFORM
    platforms: tuple[str, ...] = ()  # `kade build --platform a,b`: for images whose kade.yaml names none
    images: list[str] | None = None  # only these (and what they depend on); None: all
    display_root: str = ""  # how the project folder is named in messages (instead of a temp export)
    build_missing: bool = True  # False: images must already be in the registry (a deploy without build)
    executor: ExecutorFactory | None = None  # None: local builds
    epoch: int | None = None  # SOURCE_DATE_EPOCH of every image: $SOURCE_DATE_EPOCH, else HEAD's commit time
    supply: Any = None  # builder.attest.SupplyOptions for every pushed image (None: no attestations)
    tenant: str | None = None  # builder/tenant.py: None, the stages repository's
    share: frozenset[str] = frozenset()
    build_key: Any = None  # registry.sigkeys.SigningKey: signs steps and records; only signed steps are reused

    @property
    def stages(self) -> str:
        return self.stages_repo or f"{self.repo}-stages"


@dataclass
class ImageResult:
    name: str
    repository: str  # host/repo
    tag: str  # the content tag
    tags: list[str]
    digest: str
    built: int
    cached: int
    reused: bool
    steps: list[str] = field(default_factory=list)

    @property
    def ref(self) -> str:
        return f"{self.repository}:{self.tag}@{self.digest}"

    def part(self, what: str) -> str:
        return {"ref": self.ref, "repository": self.repository, "tag": self.tag, "digest": self.digest}[what]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "repository": self.repository, "tag": self.tag, "tags": self.tags,
                "digest": self.digest, "ref": self.ref, "reused": self.reused,
                "steps": {"built": self.built, "cached": self.cached, "total": self.built + self.cached}}


@dataclass
class ProjectResult:
    commit: str | None
    branch: str | None
    images: dict[str, ImageResult]
    record_tag: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"commit": self.commit, "branch": self.branch, "record": self.record_tag,
                "images": {n: i.to_json() for n, i in self.images.items()},
                "steps": {"built": sum(i.built for i in self.images.values()),
                          "cached": sum(i.cached for i in self.images.values())}}


class ImageRef(str):
    """An image reference for deploy templates: `{{ images.web }}` is the full ref, and
    `.ref`, `.repository`, `.tag`, `.digest` are its parts."""

    ref: str
    repository: str
    tag: str
    digest: str

    def __new__(cls, ref: str, repository: str = "", tag: str = "", digest: str = "") -> "ImageRef":
        obj = super().__new__(cls, ref)
        obj.ref, obj.repository, obj.tag, obj.digest = ref, repository, tag, digest
        return obj

    @classmethod
    def parse(cls, text: str) -> "ImageRef":
        r = Reference.parse(text)
        return cls(text, r.name, r.tag or "", r.digest or "")


def template_images(result: ProjectResult) -> dict[str, ImageRef]:
    return {n: ImageRef(i.ref, i.repository, i.tag, i.digest) for n, i in result.images.items()}


class _Claims:
    """Step keys an image of the wave is about to build; later images wait for their builder."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.owner: dict[str, tuple[str, threading.Event]] = {}

    def claim(self, image: str, keys: list[str], done: threading.Event) -> list[tuple[str, threading.Event]]:
        with self.lock:
            waits = {self.owner[k] for k in keys if k in self.owner and self.owner[k][0] != image}
            for k in keys:
                self.owner.setdefault(k, (image, done))
        return sorted(waits, key=lambda w: w[0])


class ProjectBuilder:
    def __init__(self, config: ProjectConfig, root: Path, options: ProjectOptions, report: Report,
                 client: RegistryClient | None = None):
        self.config, self.root, self.o, self.report = config, root, options, report
        self.client = client or RegistryClient(ClientOptions(insecure=tuple(options.insecure)))
        self.results: dict[str, ImageResult] = {}

    def run(self) -> ProjectResult:
        if not self.config.images:
            raise ConfigError(f"{self.config.path.name}: images: the project has no images to build")
        wanted = self._selected()
        for wave in self.config.build_order():
            names = [n for n in wave if n in wanted]
            if not names:
                continue
            claims = _Claims()
            errors: dict[str, BaseException] = {}
            with cancel.Pool(max_workers=len(names)) as pool:
                futures = {n: pool.submit(self._image, self.config.images[n], claims) for n in names}
                for n, fut in futures.items():
                    try:
                        self.results[n] = fut.result()
                    except KeyboardInterrupt:
                        raise  # this thread was interrupted: stop waiting for the others
                    except BaseException as exc:  # noqa: BLE001 - re-raised below, after the wave
                        errors[n] = exc
            cancel.check()  # a cancelled run says so, not what its cancellation made an image fail with
            if errors:
                name, first = next(iter(sorted(errors.items())))
                if len(errors) > 1:
                    self.report("error", f"images failed: {', '.join(sorted(errors))}")
                raise self._named(name, first)
        result = ProjectResult(self.o.commit, self.o.branch, dict(self.results))
        result.record_tag = self._push_record()
        return result

    def _selected(self) -> set[str]:
        if self.o.images is None:
            return set(self.config.images)
        unknown = [n for n in self.o.images if n not in self.config.images]
        if unknown:
            raise ConfigError(f"{self.config.path.name}: no image {unknown[0]!r} under images "
                              f"(known: {', '.join(sorted(self.config.images))})")
        out: set[str] = set()
        todo = list(self.o.images)
        while todo:
            n = todo.pop()
            if n not in out:
                out.add(n)
                todo += [d.image for d in self.config.images[n].dependencies]
        return out

    def _named(self, name: str, exc: BaseException) -> BaseException:
        """The error with the temporary export folder shown as the project folder, prefixed by the image."""
        if isinstance(exc, (BuildError, ConfigError)) and exc.args:
            text = str(exc.args[0]).replace(str(self.root), self.o.display_root or str(self.root))
            exc.args = (f"image {name}: {text}",)
        return exc

    # -- one image ----------------------------------------------------------------------------------
    def build_options(self, spec: ImageSpec) -> BuildOptions:
        from kade.commands.build import parse_secret, parse_ssh

        context = (self.root / spec.context).resolve()   # inside the project (workspace.check_inside)
        if not context.is_dir():
            raise ConfigError(f"{self.config.path.name}: images.{spec.name}.context: folder {spec.context!r} "
                              "is not in the project (is it committed?)")
        if not (context / spec.dockerfile).is_file():
            raise ConfigError(f"{self.config.path.name}: images.{spec.name}.dockerfile: {spec.dockerfile!r} is not in "
                              f"folder {spec.context!r} (is it committed? the path is relative to the context)")
        args = dict(spec.args)
        for dep in spec.dependencies:
            built = self.results[dep.image]
            for arg, what in dep.args.items():
                args[arg] = built.part(what)
        secrets = dict(parse_secret(f"id={s.id},src={s.src}" if s.src is not None else f"id={s.id},env={s.env}")
                       for s in spec.secrets)
        labels = {LABEL_REVISION: self.o.commit} if self.o.commit else {}
        if self.o.source:
            labels[LABEL_SOURCE] = self.o.source
        targets = spec.platforms or self.o.platforms or (self.o.platform,)
        return BuildOptions(
            context=context, dockerfile=context / spec.dockerfile, target=spec.target, build_args=args,
            tags=[], repo=self.o.stages, secrets=secrets, ssh=parse_ssh(spec.ssh[0]) if spec.ssh else None,
            compression=self.o.compression, no_cache=self.o.no_cache, parallel=self.o.parallel,
            cache_dir=self.o.cache_dir, insecure=self.o.insecure, platform=targets[0],
            platforms=targets if len(targets) > 1 else (), image_name=spec.name,
            revision=(self.o.commit, self.o.branch), annotations=dict(labels), labels=labels, epoch=self.o.epoch,
            supply=self.o.supply, tenant=self.o.tenant, share=self.o.share, build_key=self.o.build_key)

    def _image(self, spec: ImageSpec, claims: _Claims) -> ImageResult:
        done = threading.Event()
        try:
            build = Build(self.build_options(spec), self.report, self.client, self.o.executor)
            with build.session():
                return self._build_image(spec, build, claims, done)
        finally:
            done.set()

    def _build_image(self, spec: ImageSpec, build: Build, claims: _Claims, done: threading.Event) -> ImageResult:
        plans = build.prepare_all()
        plan = plans[0]
        tag = content_tag(plan.final.final_key if len(plans) == 1 else
                          ",".join(f"{p.platform}={p.final.final_key}" for p in plans))
        repository = f"{self.o.repo}/{spec.name}"
        every = [s for p in plans for s in p.all_steps()]
        stored = [s for p in plans for s in p.stored_steps()]
        steps = list(dict.fromkeys(s.key for s in stored if is_step_key(s.key)))
        extras = extra_tags(self.o.add_tags, TagContext(spec.name, self.config.project, tag, self.o.git,
                                                        self.o.env_name),
                            lambda msg: self.report("warning", msg))
        repo = self.client.repository(repository)
        found = None if self.o.no_cache else repo.head_manifest(tag, mt.OCI_INDEX if len(plans) > 1 else mt.OCI_MANIFEST)
        if found is not None and self.o.build_key is not None and not build.made_here(plans, found.digest, repo):
            self.report("warning", f"{spec.name}: {repository}:{tag} is not the image of a step image the build "
                                   "key signed; building it", image=spec.name, untrusted=True)
            found = None
        if found is not None:
            self._retag(repository, tag, found.digest, extras)
            self.report("image", f"{spec.name}: {repository}:{tag} is in the registry, nothing to build",
                        image=spec.name, digest=found.digest)
            if self.o.supply is not None and self.o.build_missing:
                from builder.attest import complete_reused

                complete_reused(build.env, plan, repository, [tag, *extras], found.digest, self.o.commit, self.o.branch)
            return ImageResult(spec.name, repository, tag, [tag, *extras], found.digest, 0, len(every), True, steps)
        if not self.o.build_missing:
            raise BuildError(f"this commit's image is not in the registry ({repository}:{tag}): "
                             "build it first (kade build, or kade converge)")
        hits = build.solver.lookup_steps(stored)
        missing = list(dict.fromkeys(s.key for s in stored if s.key not in hits and is_step_key(s.key)))
        waits = claims.claim(spec.name, missing, done)
        if waits:
            for other, event in waits:
                self.report("info", f"{spec.name}: waiting for {other}, which builds steps they share")
                cancel.wait(event)
            hits = build.solver.lookup_steps(stored)
        self.report("image", f"{spec.name}: building {repository}:{tag}", image=spec.name)
        tags = tuple(f"{repository}:{t}" for t in (tag, *extras))
        # the project records every image in one build record (`_push_record`), not one per image
        # platforms one after the other: the next finds the steps they share pushed by the one before
        solved = [(p, build.solve(p, hits if i == 0 else None)) for i, p in enumerate(plans)]
        result = build.publish_all(solved, Destination(tags, record=False))
        digest = result.images[0]["digest"]
        return ImageResult(spec.name, repository, tag, [tag, *extras], digest, result.built, result.cached,
                           False, steps)

    def _retag(self, repository: str, tag: str, digest: str, extras: list[str]) -> None:
        """Point the extra tags at an image found in the registry (no blob moves: same repository)."""
        if not extras:
            return
        repo = self.client.repository(repository)
        body = None
        for t in extras:
            current = repo.head_manifest(t, mt.OCI_MANIFEST)
            if current is not None and current.digest == digest:
                continue
            if body is None:
                body, desc = repo.get_manifest(digest)
                media_type = desc.media_type
            repo.put_manifest(t, body, media_type)
            self.report("tagged", f"{repository}:{t}@{digest}")

    def _push_record(self) -> str | None:
        images = tuple(RecordImage(name=r.name, repository=r.repository, tags=tuple(r.tags), digest=r.digest,
                                   steps=tuple(dict.fromkeys(r.steps)))
                       for r in sorted(self.results.values(), key=lambda r: r.name))
        record = BuildRecord(commit=self.o.commit, branch=self.o.branch, created=datetime.now(timezone.utc),
                             images=images)
        tag = push_record(self.client.repository(self.o.stages), record, self.o.build_key)
        self.report("record", f"{self.o.stages}:{tag}")
        return tag


def build_project(config: ProjectConfig, root: Path, options: ProjectOptions, report: Report,
                  client: RegistryClient | None = None) -> ProjectResult:
    return ProjectBuilder(config, root, options, report, client).run()
