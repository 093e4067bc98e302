"""Inside a builder pod: `kade build-stage` builds one planned stage with the local executor.

It fetches the stage plan and the context upload by digest from the stages repo (both verified),
looks the stage's own step keys up, reads the stages it depends on back from the stages repo, and
solves the one stage with the local executor (builder/local.py), exactly as the local backend does.
The pod never talks to the Kubernetes API (it has no token): the CLI holds the step Leases around
it, hands it the `--secret` values (secret_relay.py) and reads its log. With a build key (mounted
from the tenant's Secret) it reuses only signed step images and signs what it pushes. RUN uses the
chroot runner (chroot.py), or the namespace sandbox in a user-namespace pod.

The pod's first step starts soon after it is Running: the context blobs (one per COPY source) are
fetched into the cache PVC's blob cache while the step keys are looked up and the rootfs is stacked,
and a step waits for them only when it runs. `timeline` records say when each point was reached, on
the pod's clock.
"""
from __future__ import annotations

import os
import tempfile
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.backends import context_upload, plancodec, secret_relay
from builder.backends.agent_relay import PodAgentRelay
from builder.backends.chroot import run_chroot
from builder.backends.podspec import EMULATION_ENV, SANDBOX_ENV
from builder.build import session
from builder.cache import LocalCache
from builder.env import BuildEnv
from builder.errors import BuildError
from builder.local import LocalExecutor
from builder.options import BuildOptions, Report
from builder.plan import Plan, PlannedStage, Step
from builder.sandbox import Isolation
from builder.solver import Solution, Solver, missing_steps, with_trailing_history
from builder.stageroot import StageRoot
from registry import cancel
from registry.client import ClientOptions, RegistryClient, Repository
from registry.image import Image


class PodExecutor(LocalExecutor):
    """The local executor with the pod's timeline, whose steps wait for the context being fetched."""

    def __init__(self, env: BuildEnv, *, work_root: Path):
        super().__init__(env, work_root=work_root)
        self.context_ready: Future | None = None   # the context blobs unpacked
        self.rootfs_ready = self.stepped = False

    def _materialize(self, image: Image | None, prefix: str) -> StageRoot:
        root = super()._materialize(image, prefix)
        if not self.rootfs_ready:   # the timeline's point: when the first rootfs was ready
            self.rootfs_ready = True
            _mark(self.report, "rootfs ready")
        return root

    def _run_step(self, ps: PlannedStage, step: Step, parent: Image | None, root: StageRoot,
                  results: Any, pending: tuple[Step, ...] = ()) -> Image:
        if self.context_ready is not None:
            self.context_ready.result()
        if not self.stepped:
            self.stepped = True
            _mark(self.report, "first step")
        return super()._run_step(ps, step, parent, root, results, pending)


class StagesReadBack:
    """The stages a pod's stage depends on, read back from the stages repo (they were built already)."""

    def __init__(self, env: BuildEnv, plan: Plan):
        self.env, self.plan = env, plan

    def result(self, label: str) -> Image | None:
        """The result of an already built stage (with the history of its trailing ARGs, as the
        solver has it)."""
        return with_trailing_history(self.plan.stages[label], self._read_back(label))

    def _read_back(self, label: str) -> Image | None:
        ps = self.plan.stages[label]
        store, repo = self.env.store, self.env.stages_repo or ""
        if ps.steps:
            desc = self.env.find_step(ps.final_key)
            if desc is None:
                raise BuildError(f"stage {label} should be built already but {repo}:{ps.final_key} is missing "
                                 "(or not signed by the build key)", hint="run the build again")
            return store.load(repo, desc.digest)
        if ps.base_stage:
            return self.result(ps.base_stage)
        if ps.base_image:
            return store.load(ps.base_image.ref, ps.base_image.digest)
        return None


def sandbox_mode() -> str:
    """"chroot" in an unprivileged pod; "namespaces" where the full sandbox can be set up: a
    `--user-namespaces` pod (podspec sets KADE_POD_SANDBOX with SYS_ADMIN over the pod's own user
    namespace), or a test on a host."""
    forced = os.environ.get(SANDBOX_ENV, "").strip()
    return forced if forced in ("chroot", "namespaces") else "chroot"


def _download(repo: Repository, cache: LocalCache, hexdigest: str, name: str) -> Path:
    """An `ADD <url>` file the CLI checked, from the stages repo (by digest) into the tenant's store."""
    from registry.download import keep

    target = cache.downloads / hexdigest / name
    if not target.is_file():
        fd, tmp = tempfile.mkstemp(prefix=".dl-", dir=cache.root / "work")
        os.close(fd)
        try:
            repo.download_blob("sha256:" + hexdigest, tmp)
            os.chmod(tmp, 0o600)
            keep(Path(tmp), cache.downloads, "sha256:" + hexdigest, name)
        finally:
            Path(tmp).unlink(missing_ok=True)
    return target


def read_build_key(directory: str | None) -> Any:
    """The tenant's build key from the Secret the pod mounts (cosign.key, optional cosign.password)."""
    if not directory or not (Path(directory) / "cosign.key").is_file():
        return None
    from registry.errors import SigningKeyError
    from registry.sigkeys import load_private_key

    password = Path(directory) / "cosign.password"
    try:
        return load_private_key((Path(directory) / "cosign.key").read_bytes(),
                                password.read_bytes() if password.is_file() else None, "the build key Secret")
    except SigningKeyError as exc:
        raise BuildError(str(exc), hint="check the Secret named by --build-key") from None


@dataclass
class StageTask:
    """What `kade build-stage` is asked to do (its command line)."""
    plan_digest: str
    label: str
    stages_repo: str
    insecure: tuple[str, ...] = ()
    work: Path | None = None
    cache_dir: str | None = None
    ssh_relay: bool = False          # an agent socket whose connections are tunnelled to the CLI's agent
    secrets_relay: bool = False      # --secret values asked of the CLI (secret_relay.py)
    tenant: str | None = None
    share: frozenset[str] = frozenset()
    build_key_dir: str | None = None  # where the build key Secret is mounted


def build_stage(task: StageTask, report: Report) -> dict[str, Any]:
    """Build one stage of an uploaded plan; returns {"built", "digest"}."""
    work = task.work or Path(os.environ.get("KADE_WORK_DIR", "/work"))
    secrets = secret_relay.receive(report) if task.secrets_relay else {}
    relay = PodAgentRelay(work / "ssh-agent.sock", report) if task.ssh_relay else None
    try:
        return _build_stage(task, report, work, secrets, str(relay.path) if relay else None)
    finally:
        if relay:
            relay.close()


def _build_stage(task: StageTask, report: Report, work: Path, secrets: dict[str, bytes],
                 ssh: str | None) -> dict[str, Any]:
    client = RegistryClient(ClientOptions(insecure=task.insecure))
    repo = client.repository(task.stages_repo)
    with repo.open_blob(task.plan_digest) as f:
        body = f.read()
    ctx_dir = work / "context"
    stages, extra = plancodec.load_stages(body, ctx_dir)
    _mark(report, "plan fetched")
    ctx_dir.mkdir(parents=True, exist_ok=True)
    options = BuildOptions(context=ctx_dir, repo=task.stages_repo, compression=extra.get("compression", "gzip"),
                           parallel=1, cache_dir=task.cache_dir, insecure=task.insecure,
                           platform=extra.get("platform", "linux/amd64"), no_cache=bool(extra.get("no_cache")),
                           image_name=extra.get("image_name", "default"), secrets=secrets, ssh=ssh,
                           # placed on a node of another architecture (--allow-emulation): binfmt_misc is the
                           # node's, not visible in the pod; a node without qemu fails RUN with ENOEXEC
                           node_emulation=os.environ.get(EMULATION_ENV) == "1",
                           sandbox=run_chroot if sandbox_mode() == "chroot" else None,
                           # the pod's own user namespace (hostUsers: false) is the boundary around root in
                           # RUN; RUN shares the pod's network (no bridge to NAT through in a pod)
                           isolation=Isolation(userns="host", network="shared"),
                           tenant=task.tenant, share=task.share, build_key=read_build_key(task.build_key_dir))
    env = BuildEnv.make(options, report, client)
    rootfs_dir = work / "rootfs"
    rootfs_dir.mkdir(parents=True, exist_ok=True)
    executor = PodExecutor(env, work_root=rootfs_dir)  # copies (the fallback) on the pod's emptyDir
    by_label = {ps.label: ps for ps in stages}
    if task.label not in by_label:
        raise BuildError(f"stage {task.label!r} is not in the uploaded plan {task.plan_digest}")
    plan = Plan(dockerfile=None, stages=by_label, target=task.label, unused_args=[], platform=options.platform,
                context_root=ctx_dir.resolve())
    ps = by_label[task.label]
    solver = Solver(env, executor)
    solution = Solution(None, {})
    # the PVC's shared lock: a `kade cache prune` Job waits for running pods
    with session(env, executor), cancel.Pool(max_workers=1) as pool:
        # the context arrives while the steps are looked up and the rootfs is made; a step waits for it
        executor.context_ready = pool.submit(_fetch_context, repo, extra, env.cache, ctx_dir, report)
        solution.hits = solver.lookup_steps(ps.stored_steps)
        context_upload.place_downloads(missing_steps(ps, set(solution.hits)),
                                       lambda hexdigest, planned: _download(repo, env.cache, hexdigest, planned.name))
        if ps.base_image:
            env.store.load(ps.base_image.ref, ps.base_image.digest)
        with executor.running(plan, []):
            image = solver.solve_stage(ps, solution.hits, StagesReadBack(env, plan), solution)
        executor.context_ready.result()
    return {"built": solution.built, "digest": image.digest if image else None}


def _mark(report: Report, what: str) -> None:
    """A point of the pod's timeline (the CLI re-stamps records with its own clock; `at` is the pod's)."""
    report("timeline", what, at=round(time.time(), 3))


def _fetch_context(repo: Any, extra: dict[str, Any], cache: Any, ctx_dir: Path, report: Report) -> None:
    """The context blobs (one per source) into `ctx_dir`: from the cache PVC's blob cache where an
    earlier pod fetched them, else downloaded there, all at once (digest-verified)."""
    contexts = extra.get("contexts") or ([extra["context"]] if extra.get("context") else [])

    def fetch(digest: str) -> Path:
        path = cache.blobs.path(digest)
        if not path.is_file():
            with cache.lock(digest):
                if not path.is_file():
                    repo.download_blob(digest, path)
        return path

    with cancel.Pool(max_workers=4) as pool:
        tars = list(pool.map(fetch, contexts))
    context_upload.unpack(tars, ctx_dir)
    _mark(report, "context ready")
