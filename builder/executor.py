"""The narrow interface between the solver and whatever runs steps (BuildKit's worker).

The solver (builder/solver.py) decides what must run: for each stage it needs, the steps after the
last cached one, on top of the image they build on (a `StageJob`). An `Executor` runs jobs and
answers with the stage's final image, pushed to the stages repo under each step's key. Two exist:
`builder.local.LocalExecutor` (this process: rootfs, sandbox, snapshots, layers) and
`builder.backends.remote.RemoteExecutor` (each job elsewhere, e.g. a pod, from an uploaded plan).
Backends implement this Protocol; nothing subclasses the builder or reaches into its state.
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

from builder.plan import Plan, PlannedStage, Step
from registry.image import Image


@dataclass(frozen=True)
class StageJob:
    stage: PlannedStage
    parent: Image | None     # what the first step builds on: the last cached step, the base image or stage
    steps: tuple[Step, ...]  # the steps to run, in order (every step after the last cached one)


@dataclass(frozen=True)
class StageOutcome:
    image: Image | None      # the stage's final image (None: an empty scratch stage)
    ran: int = 0             # steps executed for this job
    reused: int = 0          # steps another build pushed meanwhile, taken instead of run
    ran_keys: frozenset[str] = field(default_factory=frozenset)


class StageResults(Protocol):
    """The other stages of the build, as they finish (COPY --from, RUN --mount from=, FROM <stage>)."""

    def result(self, label: str) -> Image | None:
        """The final image of stage `label`, waiting for it to be built."""


class Executor(Protocol):
    def session(self) -> AbstractContextManager[None]:
        """Around a whole build, planning included: what the executor holds meanwhile (a local cache
        lock, a pod build's Lease) and cleans up after (work dirs, pods)."""

    def running(self, plan: Plan, jobs: Sequence[StageJob]) -> AbstractContextManager[None]:
        """Around the jobs of one solve (all of them known): what they need first (the pods' plan and
        context upload), and what a cancelled solve must undo when its stages have stopped."""

    def run_stage(self, job: StageJob, results: StageResults) -> StageOutcome:
        """Run the job's steps and push each step image; the stage's final image."""

    def interrupt(self) -> None:
        """The build is cancelled: stop the steps running now (called once, from the waiting thread)."""


ExecutorFactory = Callable[..., Executor]
