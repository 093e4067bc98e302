"""`kade build`: a Dockerfile becomes an image in three moves, each its own module.

1. Plan (builder/plan.py, pure but for reading the context): parse, resolve every base image to its
   platform manifest digest (one manifest GET and one small config GET each), and key every step, so
   the whole DAG of content-keyed steps is known before anything runs.
2. Solve (builder/solver.py): one HEAD per step key in the stages repo; every stage the target needs
   and has missing steps becomes a job for the executor (builder/executor.py: this process by
   default, builder/local.py; pods with --backend kubernetes), which pushes each step image.
3. Publish (builder/publish.py): the final image (created, labels, annotations) to every --tag
   (blobs mounted across repositories, never downloaded) or to the local OCI layout; attestations;
   the build record.

`Build` wires them: one `BuildEnv` (options, progress, registry client, local cache, image store),
one executor, one solver, one publisher. `build()` runs it all.
"""
from __future__ import annotations

import os
import threading
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from builder.context import BuildContext
from builder.digests import FileDigests
from builder.dockerfile import parse_file
from builder.env import BuildEnv
from builder.errors import BuildError
from builder.executor import Executor
from builder.options import BuildOptions, Report
from builder.plan import Plan, make_plan
from builder.publish import BuildResult, Destination, Publisher
from builder.solver import Solution, Solver, with_trailing_history
from registry import cancel
from registry.client import RegistryClient
from registry.model import Descriptor

ExecutorFactory = Callable[[BuildEnv], Executor]


class Build:
    """One build: plan -> solve -> publish, with the executor `executor(env)` makes (local by default)."""

    def __init__(self, options: BuildOptions, report: Report, client: RegistryClient | None = None,
                 executor: ExecutorFactory | None = None):
        self.env = BuildEnv.make(options, report, client)
        supply = options.supply
        self.prescans = None
        if supply is not None and supply.sbom_format:
            from builder.attest import Prescans

            self.prescans = Prescans(self.env)
        self.executor = (executor or self.local_executor)(self.env)
        self.solver = Solver(self.env, self.executor)
        self.publisher = Publisher(self.env, self.prescans)

    def local_executor(self, env: BuildEnv) -> Executor:
        from builder.local import LocalExecutor

        return LocalExecutor(env, on_step_image=self.prescans.step_image if self.prescans else None)

    @property
    def options(self) -> BuildOptions:
        return self.env.options

    def session(self) -> AbstractContextManager[None]:
        return session(self.env, self.executor)

    def prepare(self, platform: str | None = None) -> Plan:
        """Parse and plan for one target platform (the options' by default), base images resolved:
        every step key is known, nothing has run."""
        o = self.options
        dockerfile = o.dockerfile or (o.context / "Dockerfile")
        ctx = BuildContext.open(o.context, dockerfile)
        ctx.fetcher = self._fetch_url
        ctx.digests = FileDigests(self.env.cache.context_digests)
        plan = make_plan(parse_file(dockerfile), ctx, self.env.store.resolve, target=o.target,
                         build_args=o.build_args, platform=platform or o.platform, build_platform=o.build_platform)
        ctx.digests.save()
        if not o.allow_host_network:
            check_host_network(plan)
        for name in plan.unused_args:
            self.env.report("warning", f"build arg {name} was given but no ARG in the stages built declares it")
        for step in plan.all_steps():
            for pattern in step.copy.unmatched if step.copy else ():
                self.env.report("warning", f"{step.ins.file}:{step.ins.line}: {step.ins.cmd} source {pattern!r} "
                                           "matches nothing in the context: nothing copied for it (as BuildKit does)")
        return plan

    def prepare_all(self) -> list[Plan]:
        """One plan per target platform (a step that doesn't depend on the target has one key in all)."""
        return [self.prepare(p) for p in self.options.target_platforms]

    def lookup(self, plan: Plan) -> dict[str, Descriptor]:
        return self.solver.lookup(plan)

    def solve(self, plan: Plan, hits: dict[str, Descriptor] | None = None) -> Solution:
        """Run what is missing (looking the keys up first unless `hits` are given)."""
        return self.solver.solve(plan, self.lookup(plan) if hits is None else hits)

    def publish(self, plan: Plan, solution: Solution, to: Destination | None = None) -> BuildResult:
        return self.publish_all([(plan, solution)], to)

    def publish_all(self, solved: list[tuple[Plan, Solution]], to: Destination | None = None) -> BuildResult:
        """One platform: its image; several: an index of them."""
        return self.publisher.publish(solved, to or Destination(tuple(self.options.tags)))

    def run(self) -> BuildResult:
        """Plan every platform, then solve them one after the other: the steps the platforms share are
        pushed (or claimed, without a stages repo) by the first and found by the next, so they run once."""
        with self.session():
            plans = self.prepare_all()
            return self.publish_all([(plan, self.solve(plan)) for plan in plans])

    def made_here(self, plans: list[Plan], digest: str, repo: Any) -> bool:
        """Whether `digest` (in `repo`) is the image this build publishes from its targets' last step
        images as the build key signed them (what a project may take from the registry without
        building): for several platforms, an index of exactly those platforms, each that image."""
        if len(plans) == 1:
            return self._made_here(plans[0], digest)
        from registry.model import Index, Platform, parse_manifest

        body, got = repo.get_manifest(digest)
        index = parse_manifest(body, got.media_type)
        if not isinstance(index, Index) or len(index.manifests) != len(plans):
            return False
        listed = {str(Platform.of(m.platform or {}).normalized()): m.digest for m in index.manifests}
        return all(self._made_here(p, listed.get(str(Platform.parse(p.platform).normalized()), "")) for p in plans)

    def _made_here(self, plan: Plan, digest: str) -> bool:
        desc = self.env.find_step(plan.final.final_key)
        if desc is None:
            return False
        target = with_trailing_history(plan.final, self.env.store.load(self.env.stages_repo or "", desc.digest))
        return self.publisher.image_of(plan, target).digest == digest

    def _fetch_url(self, url: str, checksum: str | None) -> tuple[Path, str]:
        """ADD <url>: download (every build: the key follows the content) into the tenant's store by
        content digest, verify --checksum, mode 0600; (the file, its digest)."""
        from registry.download import DownloadError, download

        self.env.report("fetch", url)
        try:
            return download(url, self.env.cache.downloads, checksum)
        except DownloadError as exc:
            raise BuildError(f"ADD {exc}", hint="check the URL and its --checksum") from None


def build(options: BuildOptions, report: Report, client: RegistryClient | None = None,
          executor: ExecutorFactory | None = None) -> BuildResult:
    return Build(options, report, client, executor).run()


@contextmanager
def session(env: BuildEnv, executor: Executor) -> Iterator[None]:
    """Around a whole build: the local cache's shared lock (against `kade cache prune`), umask 022
    (see `build_umask`), the executor's own session; afterwards downloads stop, and a cancelled
    build's unfinished uploads are abandoned."""
    with build_umask(), env.cache.lock("global", shared=True):
        try:
            with executor.session():
                yield
        finally:
            env.store.close()
            if cancel.cancelled():
                env.client.abandon_uploads()  # of stage threads that did not stop in time


def check_host_network(plan: Plan) -> None:
    """RUN --network=host is an entitlement of whoever runs the build, never of the Dockerfile."""
    for ps in plan.stages.values():
        for step in ps.steps:
            if step.kind == "run" and step.network == "host":
                raise BuildError("RUN --network=host gives the step the build host's network (its loopback "
                                 "services included); the Dockerfile alone can't ask for that",
                                 file=step.ins.file, line=step.ins.line,
                                 hint="build with `kade build --allow-host-network` if you trust this Dockerfile")


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
