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
        paths = context_upload.needed_paths(remote, keys, root)
        context_digest = None
        if paths:
            with tempfile.TemporaryDirectory(prefix="kade-ctx-") as scratch:
                tar, context_digest, size = context_upload.pack(root, paths, Path(scratch), self.epoch)
                if repo.head_blob(context_digest) is None:
                    self.report("upload", f"context: {size} bytes ({len(paths)} entries) as {context_digest[:19]}",
                                digest=context_digest, entries=len(paths))
                    repo.upload_blob(tar, context_digest, size)
        for hexdigest, path in context_upload.downloads(remote, keys):   # ADD <url> files, by digest
            if repo.head_blob("sha256:" + hexdigest) is None:
                repo.upload_blob(path, "sha256:" + hexdigest, path.stat().st_size)
        extra = {"context": context_digest, "compression": self.o.compression, "platform": plan.platform,
                 "no_cache": self.o.no_cache, "image_name": self.o.image_name}
        body = plancodec.dump_stages(plan.order(), root, extra)
        digest = sha256_digest(body)
        repo.upload_blob(io.BytesIO(body), digest, len(body))
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
        desc = self.find_step(ps.final_key)
        if desc is None:
            raise BuildError(f"stage {ps.label}: the pod finished but {self.stages_repo}:{ps.final_key} is missing "
                             "(or not signed by the build key)", hint="check the registry and the pod's output above")
        return self.load_step(desc)

