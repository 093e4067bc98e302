"""A Builder whose stages with missing steps run somewhere else (a pod), from an uploaded plan.

`RemoteStageBuilder` is the backend-neutral half of in-cluster builds: after the usual plan and
lookup it uploads the stage plan and the context files the missing steps need (two
content-addressed blobs in the stages repo), then for every stage with missing steps waits for the
stages it depends on, calls `run_remote(ps)` (a pod for the kubernetes backend) and reads the
stage's final step image back from the stages repo. Publishing stays in the CLI, as in the local
backend, so the final image and build record are made the same way.
"""
from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import Any

from builder.backends import context_upload, plancodec
from builder.build import Builder, Image, missing_steps, needed_stages
from builder.errors import BuildError
from builder.plan import Plan, PlannedStage
from registry import cancel
from registry import mediatypes as mt
from registry.digest import sha256_digest


class RemoteStageBuilder(Builder):
    plan_digest: str | None = None

    def run_remote(self, ps: PlannedStage) -> int:
        """Build `ps` elsewhere from `self.plan_digest`; returns the number of steps it ran."""
        raise NotImplementedError

    # -- planning done: upload what pods need, then run stages ------------------------------------
    def execute(self, plan: Plan, hits: dict[str, Any]) -> Image | None:
        keys = set(hits)
        needed = needed_stages(plan, keys)
        remote = [ps for ps in plan.order() if ps.label in needed and missing_steps(ps, keys)]
        if remote:
            self.plan_digest = self._upload(plan, remote, keys)
        return super().execute(plan, hits)

    def _upload(self, plan: Plan, remote: list[PlannedStage], keys: set[str]) -> str:
        repo = self.repo(self.stages_repo)  # type: ignore[arg-type]
        root = self.ctx.root
        groups = context_upload.needed_sources(remote, keys, root)
        contexts: list[str] = []
        if groups:
            with tempfile.TemporaryDirectory(prefix="kade-ctx-") as scratch, cancel.Pool(max_workers=4) as pool:
                contexts = list(pool.map(lambda paths: self._upload_source(repo, root, paths, Path(scratch)), groups))
        extra = {"contexts": contexts, "compression": self.o.compression, "platform": plan.platform,
                 "no_cache": self.o.no_cache, "image_name": self.o.image_name}
        body = plancodec.dump_stages(plan.order(), root, extra)
        digest = sha256_digest(body)
        repo.upload_blob(io.BytesIO(body), digest, len(body))
        return digest

    def _upload_source(self, repo: Any, root: Path, paths: list[str], scratch: Path) -> str:
        """One source's blob: packed, and uploaded unless the stages repo has it already."""
        tar, digest, size = context_upload.pack(root, paths, scratch, self.epoch)
        try:
            if repo.head_blob(digest) is None:
                self.report("upload", f"context: {size} bytes ({len(paths)} entries) as {digest[:19]}",
                            digest=digest, entries=len(paths))
                repo.upload_blob(tar, digest, size)
        finally:
            tar.unlink(missing_ok=True)
        return digest

    def run_stage(self, ps: PlannedStage) -> Image | None:
        if not missing_steps(ps, set(self.hits)):
            return super().run_stage(ps)  # nothing to build: just the cached image, no pod
        for dep in sorted(ps.deps):
            if dep in self.stage_futures:
                self.stage_futures[dep].result()  # a failed dependency fails this stage too
        ran = self.run_remote(ps)
        with self.lock:
            self.built += ran
        desc = self.repo(self.stages_repo).head_manifest(ps.final_key, mt.OCI_MANIFEST)  # type: ignore[arg-type]
        if desc is None:
            raise BuildError(f"stage {ps.label}: the pod finished but {self.stages_repo}:{ps.final_key} is missing",
                             hint="check the registry and the pod's output above")
        return self.load_image(self.stages_repo, desc.digest)  # type: ignore[arg-type]

