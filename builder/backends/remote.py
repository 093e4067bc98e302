"""An executor whose stages run somewhere else (a pod), from an uploaded plan.

`RemoteExecutor` is the backend-neutral half of in-cluster builds. Before the first job it uploads
the stage plan (plancodec) and the context files the missing steps read (context_upload: one blob per
source, only those the repo lacks) as content-addressed blobs in the stages repo, and each `ADD <url>`
file they copy as a blob of its own (the bytes the CLI checked and keyed); then for every job it waits
for the stages the job depends on, hands the stage to a `StageRunner` (a pod for the kubernetes backend; tests run the
pod's code in this process, or the builder image under podman) and reads the stage's final step
image back from the stages repo. Planning and publishing stay in the CLI, as in the local backend,
so the final image and build record are made the same way.
"""
from __future__ import annotations

import io
import tempfile
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Callable, Iterator, Protocol, Sequence

from builder.backends import context_upload, plancodec
from builder.env import BuildEnv
from builder.errors import BuildError
from builder.executor import StageJob, StageOutcome, StageResults
from builder.plan import Plan
from registry import cancel
from registry.client import Repository
from registry.digest import sha256_digest


class StageRunner(Protocol):
    def run(self, job: StageJob, plan_digest: str) -> int:
        """Build the job's stage of the uploaded plan `plan_digest` elsewhere (pushing its step images);
        returns the number of steps it ran."""


class RemoteExecutor:
    def __init__(self, env: BuildEnv, runner: StageRunner,
                 session: Callable[[], AbstractContextManager[None]] | None = None):
        self.env, self.runner = env, runner
        self._session = session
        self.plan_digest: str | None = None
        self._building: set[str] = set()   # labels of the stages with missing steps (a job each)

    @property
    def stages_repo(self) -> str:
        repo = self.env.stages_repo
        if not repo:
            raise BuildError("stages built elsewhere need --tag or --repo: they push step images to the stages repo")
        return repo

    def session(self) -> AbstractContextManager[None]:
        return self._session() if self._session is not None else nullcontext()

    @contextmanager
    def running(self, plan: Plan, jobs: Sequence[StageJob]) -> Iterator[None]:
        self._building = {job.stage.label for job in jobs}
        if jobs:
            self.plan_digest = self._upload(plan, jobs)
        yield

    def interrupt(self) -> None:
        """Nothing runs here: a runner stops its stages through the command's cancellation."""

    def run_stage(self, job: StageJob, results: StageResults) -> StageOutcome:
        ps = job.stage
        for dep in sorted(ps.deps & self._building):   # the others are in the stages repo already
            results.result(dep)  # a failed dependency fails this stage too
        assert self.plan_digest is not None
        ran = self.runner.run(job, self.plan_digest)
        desc = self.env.find_step(ps.final_key)
        if desc is None:
            raise BuildError(f"stage {ps.label}: it finished but {self.stages_repo}:{ps.final_key} is missing "
                             "(or not signed by the build key)", hint="check the registry and the stage's output above")
        return StageOutcome(self.env.store.load(self.stages_repo, desc.digest), ran)

    def _upload(self, plan: Plan, jobs: Sequence[StageJob]) -> str:
        env, o = self.env, self.env.options
        repo = env.store.repo(self.stages_repo)
        root = plan.context_root
        assert root is not None
        steps = [s for job in jobs for s in job.steps]
        groups = context_upload.needed_sources(steps, root)
        contexts: list[str] = []
        if groups:
            with tempfile.TemporaryDirectory(prefix="kade-ctx-") as scratch, cancel.Pool(max_workers=4) as pool:
                contexts = list(pool.map(lambda paths: self._upload_source(repo, root, paths, Path(scratch)), groups))
        for hexdigest, path in context_upload.downloads(steps):   # ADD <url> files, by digest
            if repo.head_blob("sha256:" + hexdigest) is None:
                repo.upload_blob(path, "sha256:" + hexdigest, path.stat().st_size)
        extra = {"contexts": contexts, "compression": o.compression, "platform": plan.platform,
                 "no_cache": o.no_cache, "image_name": o.image_name}
        body = plancodec.dump_stages(plan.order(), root, extra)
        digest = sha256_digest(body)
        repo.upload_blob(io.BytesIO(body), digest, len(body))
        return digest

    def _upload_source(self, repo: Repository, root: Path, paths: list[str], scratch: Path) -> str:
        """One source's blob: packed, and uploaded unless the stages repo has it already."""
        tar, digest, size = context_upload.pack(root, paths, scratch, self.env.epoch)
        try:
            if repo.head_blob(digest) is None:
                self.env.report("upload", f"context: {size} bytes ({len(paths)} entries) as {digest[:19]}",
                                digest=digest, entries=len(paths))
                repo.upload_blob(tar, digest, size)
        finally:
            tar.unlink(missing_ok=True)
        return digest
