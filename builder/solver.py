"""The solver: from a plan to the target's image, running only what is not cached (BuildKit's solver).

1. `lookup`: one HEAD per step key in the stages repo, all at once; a miss does not stop the others
   (a later step can still be cached). With a build key, a step image it did not sign is a miss.
2. `solve`: the stages the target needs, given what is cached (`needed_stages`): a stage whose last
   step is cached is that step image, with nothing pulled; any other becomes a `StageJob` (its steps
   after the last cached one, on the image they build on) for the executor. Independent stages run
   at once (up to --parallel), dependencies first. A cancelled solve stops the executor's running
   steps, gives the stages a moment to end, and raises.

Pure plan queries (`missing_steps`, `needed_stages`) are table-tested; the rest only schedules.
"""
from __future__ import annotations

import threading
from concurrent.futures import Future
from dataclasses import dataclass, field

from builder import events as ev
from builder import image_config as ic
from builder.env import BuildEnv
from builder.executor import Executor, StageJob, StageOutcome, StageResults
from builder.plan import Plan, PlannedStage, Step
from registry import cancel
from registry import mediatypes as mt
from registry.digest import sha256_digest
from registry.image import Image
from registry.model import Descriptor, Manifest

STAGE_STOP_GRACE = 1.5  # seconds a cancelled build waits for its running stages to stop


@dataclass
class Solution:
    image: Image | None                       # the target stage's final image
    hits: dict[str, Descriptor]               # step key -> its step image found in the stages repo
    ran: set[str] = field(default_factory=set)  # keys of the steps executed by this build
    built: int = 0                            # steps executed


class _Results:
    """The stages' futures, as the executor sees them (StageResults)."""

    def __init__(self) -> None:
        self.futures: dict[str, Future] = {}

    def result(self, label: str) -> Image | None:
        return self.futures[label].result()


class Solver:
    def __init__(self, env: BuildEnv, executor: Executor):
        self.env, self.executor = env, executor
        self.lock = threading.Lock()

    def lookup(self, plan: Plan) -> dict[str, Descriptor]:
        return self.lookup_steps(plan.stored_steps())

    def lookup_steps(self, steps: list[Step]) -> dict[str, Descriptor]:
        """One HEAD per step key (all of them, in parallel; a miss doesn't stop the others), for stored
        steps (PlannedStage.stores: a config-only step is never in the repo by itself); with a build
        key, one GET and a signature check: a step image it did not sign is a miss (BuildEnv.find_step)."""
        if self.env.options.no_cache or not self.env.stages_repo or not steps:
            return {}
        with cancel.Pool(max_workers=8) as pool:
            found = list(pool.map(lambda s: self.env.find_step(s.key), steps))
        return {s.key: d for s, d in zip(steps, found) if d is not None}

    def solve(self, plan: Plan, hits: dict[str, Descriptor]) -> Solution:
        cached = set(hits)
        planned = plan.all_steps()
        self.env.report(ev.PLAN, f"{len(planned)} step(s) planned, {sum(s.key in cached for s in planned)} in the "
                                 "stages repo", steps=len(planned), cached=len(cached), image=self.env.options.image_name)
        needed = needed_stages(plan, cached)
        stages = [ps for ps in plan.order() if ps.label in needed]  # dependencies come first
        # every job known up front (the executor may ship them all at once); parents are filled in as stages start
        jobs = [StageJob(ps, None, tuple(missing)) for ps in stages if (missing := missing_steps(ps, cached))]
        solution = Solution(None, hits)
        results = _Results()
        with self.executor.running(plan, jobs):
            # cancelled: the running stages get a moment to stop (their RUN killed, their pushes refused)
            # before the build's session removes their work dirs
            with cancel.Pool(max_workers=max(1, self.env.options.parallel), grace=STAGE_STOP_GRACE) as pool:
                try:
                    for ps in stages:  # in order, so a waiting stage never starves the pool
                        results.futures[ps.label] = pool.submit(self.solve_stage, ps, hits, results, solution)
                    solution.image = results.futures[plan.target].result()
                except KeyboardInterrupt:  # a signal (registry.cancel.Cancelled is one too)
                    self.executor.interrupt()
                    raise
        return solution

    def solve_stage(self, ps: PlannedStage, hits: dict[str, Descriptor], results: StageResults,
                    solution: Solution) -> Image | None:
        """One stage's final image: from the stages repo when its last step is cached, else from the
        executor (its steps after the last cached one). Other stages come from `results`."""
        missing = missing_steps(ps, set(hits))
        last_hit = len(ps.steps) - len(missing) - 1
        parent = self._cached(ps.steps[last_hit], hits) if last_hit >= 0 else self._base(ps, results)
        for s in ps.steps[: last_hit + 1]:
            self.env.report(ev.CACHED, ev.step_message(ps, s), **ev.step_fields(self.env.options.image_name, ps, s))
        if not missing:
            return with_trailing_history(ps, parent)
        outcome: StageOutcome = self.executor.run_stage(StageJob(ps, parent, tuple(missing)), results)
        with self.lock:
            solution.built += outcome.ran
            solution.ran |= outcome.ran_keys
        return with_trailing_history(ps, outcome.image)

    def _base(self, ps: PlannedStage, results: StageResults) -> Image | None:
        if ps.base_stage:
            return results.result(ps.base_stage)
        if ps.base_image:
            return self.env.store.get(ps.base_image.digest)
        return None  # scratch

    def _cached(self, step: Step, hits: dict[str, Descriptor]) -> Image:
        return self.env.store.load(self.env.stages_repo or "", hits[step.key].digest)


def with_trailing_history(ps: PlannedStage, image: Image | None) -> Image | None:
    """A stage's result: its last step's image, plus the history entries of the ARGs after that step
    (BuildKit records them; no layer, no key changes). A config-only image, never pushed by itself:
    publishing or a stage built FROM it writes its config."""
    if image is None or not ps.trailing_history:
        return image
    config = image.config
    last = next((h.created for h in reversed(config.history or ()) if h.created), None)  # they were made with it
    for text in ps.trailing_history:
        config = ic.add_history(config, text, empty_layer=True, created=last)
    config_bytes = config.to_bytes()
    manifest = Manifest(config=Descriptor(mt.OCI_CONFIG, sha256_digest(config_bytes), len(config_bytes)),
                        layers=list(image.manifest.layers), media_type=image.manifest.media_type)
    return Image(manifest, config, sha256_digest(manifest.to_bytes()), image.source)


def missing_steps(ps: PlannedStage, hits: set[str]) -> list[Step]:
    """The steps after the last cached one (lookup goes on after a miss, so a later hit counts)."""
    last = max((i for i, st in enumerate(ps.steps) if st.key in hits), default=-1)
    return ps.steps[last + 1:]


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
