"""The publisher: the solved target becomes the final image, pushed to its tags (or written to the
local OCI layout), attested, and recorded.

The final image is the target's last step image with `created` set (SOURCE_DATE_EPOCH, else its
newest step's time: common/epoch.py), the extra labels in its config and the extra annotations (plus
revision and created) on its manifest;
its blobs are mounted across repositories, never downloaded. With attestations on, SBOM and provenance
follow (builder/attest.py). The build record (registry/records.py) goes to the stages repo meanwhile,
signed by the tenant's build key when there is one (registry/stagesig.py), unless the caller records
the build itself (a kade.yaml project records all its images in one).
"""
from __future__ import annotations

import threading
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, TypeVar, cast

from builder import events as ev
from builder import image_config as ic
from builder.env import BuildEnv
from builder.errors import BuildError
from builder.keys import is_step_key
from builder.plan import Plan
from builder.solver import Solution
from common.epoch import created_at, parse_time
from common.git import revision as git_revision
from registry import cancel
from registry.image import Image, ImageIndex
from registry.model import Platform
from registry.reference import Reference

T = TypeVar("T")

ANNOTATION_REVISION = "org.opencontainers.image.revision"
ANNOTATION_CREATED = "org.opencontainers.image.created"


@dataclass(frozen=True)
class Destination:
    """Where the final image goes: `tags` (none: the local OCI layout), and whether this build pushes
    its own build record."""
    tags: tuple[str, ...]
    record: bool = True


@dataclass
class BuildResult:
    images: list[dict[str, str]]  # [{"ref", "digest"}]
    built: int
    cached: int
    record_tag: str | None = None
    layout: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"images": self.images, "steps": {"built": self.built, "cached": self.cached}}


class Publisher:
    def __init__(self, env: BuildEnv, prescans: Any = None):
        self.env = env
        self.prescans = prescans  # builder.attest.Prescans of this build, when it scans as it goes
        # git takes ~40 ms (a process): asked now, while the build plans and runs, not when it publishes
        self._revision = None if env.options.revision is not None else _in_background(git_revision,
                                                                                     env.options.context)

    def revision(self) -> tuple[str | None, str | None]:
        """(commit, branch) of the build: given, or of the git checkout holding the context."""
        if self._revision is None:
            return cast(tuple[str | None, str | None], self.env.options.revision)
        return self._revision.result()

    def final_image(self, plan: Plan, target: Image | None, commit: str | None) -> Image:
        """The final image of `target` (the target stage's image), its created time and extras set."""
        if target is None:
            raise BuildError("the target stage is an empty scratch image: nothing to publish",
                             file=plan.dockerfile.path if plan.dockerfile else None)
        o = self.env.options
        config = ic.with_times(target.config, self.env.epoch)
        if o.labels:
            config = ic.set_labels(config, sorted(o.labels.items()))
        return Image.assemble(config, target.manifest.layers, self.annotations(commit, config.created or ""),
                              source=target.source)

    def annotations(self, commit: str | None, created: str) -> dict[str, str]:
        """The manifest annotations of the final image (and of an index of several): the extra ones,
        created and, from git, the revision."""
        annotations = {**self.env.options.annotations, ANNOTATION_CREATED: created}
        if commit:
            annotations[ANNOTATION_REVISION] = commit
        return annotations

    def image_of(self, plan: Plan, target: Image | None) -> Image:
        """The final image `publish` would make of `target` now (a check that publishes nothing)."""
        return self.final_image(plan, target, self.revision()[0])

    def publish(self, solved: list[tuple[Plan, Solution]], to: Destination) -> BuildResult:
        """The final image of each solved platform to every tag: one platform its image, several an
        OCI index of them (each platform's manifest pushed by digest first, the index tagged last)."""
        o, report, store = self.env.options, self.env.report, self.env.store
        commit, branch = self.revision()
        now = created_at(self.env.epoch)
        finals = [self.final_image(plan, solution.image, commit) for plan, solution in solved]
        targets = [Platform.parse(plan.platform) for plan, _ in solved]  # each entry: what it was built for
        index = ImageIndex.assemble(finals, self.annotations(commit, _newest(finals, now)), targets) \
            if len(finals) > 1 else None
        images: list[dict[str, str]] = []
        layout = None
        for tag in to.tags:
            ref = Reference.parse(tag)
            pushed = store.push_index(index, ref.name, ref.tag or "latest") if index else \
                store.push(finals[0], ref.name, ref.tag or "latest")
            images.append({"ref": str(ref), "digest": pushed.digest})
            report(ev.PUSHED, f"{ref}@{pushed.digest}", ref=str(ref), digest=pushed.digest, pushed_bytes=pushed.uploaded)
        plan = solved[0][0]
        if not to.tags:
            name = layout_tag(plan)
            layout = store.write_layout(index or finals[0], name)
            report("written", f"oci:{layout}:{name}")
            images.append({"ref": f"oci:{layout}:{name}", "digest": (index or finals[0]).digest})
        record: Future[str] | None = None
        with cancel.Pool(max_workers=1, thread_name_prefix="kade-record") as pool:  # the record beside the attestations
            if to.record and to.tags and self.env.stages_repo:
                record = pool.submit(self.record, [p for p, _ in solved], to.tags, images[0]["digest"], commit,
                                     branch, now)
            if to.tags and o.supply is not None:
                from builder.attest import attest, sign_index

                for (p, solution), image in zip(solved, finals):
                    attest(self.env, p, image, list(to.tags), commit, branch, set(solution.hits), solution.image,
                           self.prescans, sign_tags=index is None)
                if index is not None:
                    sign_index(self.env, index.digest, list(to.tags))
        record_tag = record.result() if record is not None else None
        # cached: every planned step that did not run (found in the stages repo, shared, or not needed)
        built = sum(solution.built for _, solution in solved)
        cached = sum(len(p.all_steps()) for p, _ in solved) - built
        return BuildResult(images=images, built=built, cached=cached, record_tag=record_tag, layout=layout)

    def record(self, plans: list[Plan], tags: tuple[str, ...], digest: str, commit: str | None, branch: str | None,
               now: datetime) -> str:
        from registry.records import BuildRecord, RecordImage, push_record

        stages_repo = self.env.stages_repo
        assert stages_repo is not None
        steps = tuple(dict.fromkeys(s.key for plan in plans for s in plan.stored_steps() if is_step_key(s.key)))
        first = Reference.parse(tags[0])
        record = BuildRecord(commit=commit, branch=branch, created=now, images=(RecordImage(
            name=self.env.options.image_name, repository=first.name,
            tags=tuple(Reference.parse(t).tag or "latest" for t in tags), digest=digest, steps=steps),))
        tag = push_record(self.env.store.repo(stages_repo), record, self.env.options.build_key)
        self.env.report("record", f"{stages_repo}:{tag}")
        return tag


def _newest(images: list[Image], now: datetime) -> str:
    """The latest `created` of several platforms' images: their index's created annotation."""
    return max((i.config.created or "" for i in images), key=lambda t: parse_time(t) or now)


def layout_tag(plan: Plan) -> str:
    """The final image's name in the local OCI layout: the target stage's name ("latest" for a number)."""
    return plan.target if not plan.target.isdigit() else "latest"


def _in_background(fn: Callable[..., T], *args: Any) -> "Future[T]":
    """fn(*args) in a daemon thread from now on; its Future."""
    future: Future[T] = Future()

    def work() -> None:
        try:
            future.set_result(fn(*args))
        except BaseException as exc:   # handed to whoever waits for the result
            future.set_exception(exc)

    threading.Thread(target=work, name="kade-background", daemon=True).start()
    return future
