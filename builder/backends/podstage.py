"""Inside a builder pod: `kade build-stage` builds one planned stage with the local executor.

It fetches the stage plan and the context upload by digest from the stages repo (both verified),
looks the stage's own step keys up, reads the stages it depends on back from the stages repo, and
solves the one stage with the local executor (builder/local.py), exactly as the local backend does.
Around every missing step a `LeaseGate` holds the step key's Lease: a concurrent build of the same
step waits, then finds the step image pushed and adopts it (its new layer is applied to the rootfs,
nothing runs), and a Lease left by a pod that died expires and is taken over. RUN uses the chroot
runner (chroot.py), or the namespace sandbox in a user-namespace pod.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from builder import events as ev
from builder.backends import context_upload, plancodec
from builder.backends.agent_relay import PodAgentRelay
from builder.backends.chroot import run_chroot
from builder.backends.lease import Leases, step_lease_name
from builder.backends.podspec import EMULATION_ENV, MANAGED, SANDBOX_ENV
from builder.build import session
from builder.env import BuildEnv
from builder.errors import BuildError
from builder.local import LocalExecutor
from builder.options import BuildOptions, Report
from builder.plan import Plan, PlannedStage, Step
from builder.sandbox import Isolation
from builder.solver import Solution, Solver, with_trailing_history
from registry import mediatypes as mt
from registry.client import ClientOptions, RegistryClient
from registry.image import Image


class LeaseGate:
    """The step Lease around each missing step (a local.StepGate): whoever holds it runs the step;
    whoever waited finds the step image pushed meanwhile and adopts it."""

    def __init__(self, env: BuildEnv, leases: Leases):
        self.env, self.leases = env, leases

    def __call__(self, stage: PlannedStage, step: Step, run: Callable[[], Image],
                 adopt: Callable[[Image], Image]) -> tuple[Image, bool]:
        env = self.env
        with self.leases.held(step_lease_name(step.key), f"[{stage.label}] {step.text}", labels=dict(MANAGED)):
            repo = env.stages_repo or ""
            desc = None if env.options.no_cache else env.store.repo(repo).head_manifest(step.key, mt.OCI_MANIFEST)
            if desc is None:
                return run(), False
            image = adopt(env.store.load(repo, desc.digest))
            env.report(ev.REUSED, f"{ev.step_message(stage, step)} (pushed meanwhile by another build)",
                       **ev.step_fields(env.options.image_name, stage, step))
            return image, True


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
            desc = store.repo(repo).head_manifest(ps.final_key, mt.OCI_MANIFEST)
            if desc is None:
                raise BuildError(f"stage {label} should be built already but {repo}:{ps.final_key} is missing",
                                 hint="run the build again")
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


def read_secrets(directory: str | None) -> dict[str, bytes]:
    """--secret values mounted from the build's Secret: file names are the hex of the secret ids."""
    if not directory or not Path(directory).is_dir():
        return {}
    out = {}
    for entry in Path(directory).iterdir():
        if entry.name.startswith("."):
            continue  # the Secret volume's ..data bookkeeping
        try:
            sid = bytes.fromhex(entry.name).decode()
        except ValueError:
            continue
        out[sid] = entry.read_bytes()
    return out


def build_stage(plan_digest: str, label: str, stages_repo: str, report: Report, *, insecure: tuple[str, ...] = (),
                lease_s: int = 30, work: Path | None = None, cache_dir: str | None = None,
                api_client: Any = None, holder: str | None = None, namespace: str | None = None,
                ssh_relay: bool = False) -> dict[str, Any]:
    """Build one stage of an uploaded plan; returns {"built", "reused", "digest"}."""
    work = work or Path(os.environ.get("KADE_WORK_DIR", "/work"))
    # with --ssh: an agent socket whose connections are tunnelled to the CLI's agent
    relay = PodAgentRelay(work / "ssh-agent.sock", report) if ssh_relay else None
    try:
        return _build_stage(plan_digest, label, stages_repo, report, insecure, lease_s, work, cache_dir,
                            api_client, holder, namespace, str(relay.path) if relay else None)
    finally:
        if relay:
            relay.close()


def _build_stage(plan_digest: str, label: str, stages_repo: str, report: Report, insecure: tuple[str, ...],
                 lease_s: int, work: Path, cache_dir: str | None, api_client: Any, holder: str | None,
                 namespace: str | None, ssh: str | None) -> dict[str, Any]:
    client = RegistryClient(ClientOptions(insecure=insecure))
    repo = client.repository(stages_repo)
    with repo.open_blob(plan_digest) as f:
        body = f.read()
    ctx_dir = work / "context"
    stages, extra = plancodec.load_stages(body, ctx_dir)
    ctx_dir.mkdir(parents=True, exist_ok=True)
    if extra.get("context"):
        tar = work / "context.tar"
        repo.download_blob(extra["context"], tar)
        context_upload.unpack(tar, ctx_dir)
        tar.unlink()
    options = BuildOptions(context=ctx_dir, repo=stages_repo, compression=extra.get("compression", "gzip"),
                           parallel=1, cache_dir=cache_dir, insecure=insecure,
                           platform=extra.get("platform", "linux/amd64"), no_cache=bool(extra.get("no_cache")),
                           image_name=extra.get("image_name", "default"),
                           # placed on a node of another architecture (--allow-emulation): binfmt_misc is the
                           # node's, not visible in the pod; a node without qemu fails RUN with ENOEXEC
                           node_emulation=os.environ.get(EMULATION_ENV) == "1",
                           secrets=read_secrets(os.environ.get("KADE_SECRETS_DIR")), ssh=ssh,
                           sandbox=run_chroot if sandbox_mode() == "chroot" else None,
                           # the pod's own user namespace (hostUsers: false) is the boundary around root in
                           # RUN; RUN shares the pod's network (no bridge to NAT through in a pod)
                           isolation=Isolation(userns="host", network="shared"))
    env = BuildEnv.make(options, report, client)
    gate = None
    if api_client is not None and holder and namespace:
        gate = LeaseGate(env, Leases(api_client, namespace, holder, lease_s, report))
    rootfs_dir = work / "rootfs"
    rootfs_dir.mkdir(parents=True, exist_ok=True)
    executor = LocalExecutor(env, gate=gate, work_root=rootfs_dir)  # rootfs on the pod's emptyDir
    by_label = {ps.label: ps for ps in stages}
    if label not in by_label:
        raise BuildError(f"stage {label!r} is not in the uploaded plan {plan_digest}")
    plan = Plan(dockerfile=None, stages=by_label, target=label, unused_args=[], platform=options.platform,
                context_root=ctx_dir.resolve())
    ps = by_label[label]
    solver = Solver(env, executor)
    solution = Solution(None, {})
    with session(env, executor):  # the PVC's shared lock: a `kade cache prune` Job waits for running pods
        solution.hits = solver.lookup_steps(ps.steps)
        if ps.base_image:
            env.store.load(ps.base_image.ref, ps.base_image.digest)
        with executor.running(plan, []):
            image = solver.solve_stage(ps, solution.hits, StagesReadBack(env, plan), solution)
    return {"built": solution.built, "reused": solution.reused, "digest": image.digest if image else None}
