"""Inside a builder pod: `kade build-stage` builds one planned stage with the local executor code.

It fetches the stage plan and the context upload by digest from the stages repo (both verified),
rebuilds the Builder state the CLI had (plan, context root, cached steps, the images of the stages
it depends on, read back from the stages repo), and runs the stage through `Builder._run_stage`,
exactly as the local backend does. The pod never talks to the Kubernetes API (it has no token): the
CLI holds the step Leases around it, hands it the `--secret` values (secret_relay.py) and reads its
log. With a build key (mounted from the tenant's Secret) it reuses only signed step images and
signs what it pushes. RUN uses the chroot runner (chroot.py), or the namespace sandbox in a
user-namespace pod.
"""
from __future__ import annotations

import os
import tempfile
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.backends import context_upload, plancodec, secret_relay
from builder.backends.agent_relay import PodAgentRelay
from builder.backends.chroot import run_chroot
from builder.backends.podspec import SANDBOX_ENV
from builder.build import Builder, BuildOptions, Image, Report, missing_steps, with_trailing_history
from builder.context import BuildContext, IgnoreRules
from builder.errors import BuildError
from builder.plan import Plan, PlannedStage
from builder.sandbox import Isolation
from registry import cancel
from registry.client import ClientOptions, RegistryClient


class PodBuilder(Builder):
    """A Builder for one stage in a pod (the CLI holds the step Leases around it)."""

    def __init__(self, options: BuildOptions, report: Report, client: RegistryClient, work: Path):
        super().__init__(options, report, client)
        self.rootfs_dir = work / "rootfs"
        self.rootfs_dir.mkdir(parents=True, exist_ok=True)
        self.cache.work_dir = self._work_dir  # type: ignore[method-assign]  # rootfs on the emptyDir

    def _work_dir(self, prefix: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.rootfs_dir))

    def lookup_stage(self, ps: PlannedStage) -> dict[str, Any]:
        if self.o.no_cache or not ps.steps:
            return {}
        with cancel.Pool(max_workers=8) as pool:
            found = list(pool.map(lambda s: self.find_step(s.key), ps.steps))
        return {s.key: d for s, d in zip(ps.steps, found) if d is not None}

    def stage_image(self, label: str) -> Image | None:
        """The result of an already built stage, read back from the stages repo (with the history of
        its trailing ARGs, as the CLI's Builder has it)."""
        return with_trailing_history(self.plan.stages[label], self._stage_image(label))

    def _stage_image(self, label: str) -> Image | None:
        ps = self.plan.stages[label]
        if ps.steps:
            desc = self.find_step(ps.final_key)
            if desc is None:
                raise BuildError(f"stage {label} should be built already but {self.stages_repo}:{ps.final_key} "
                                 "is missing (or not signed by the build key)", hint="run the build again")
            return self.load_step(desc)
        if ps.base_stage:
            return self.stage_image(ps.base_stage)
        if ps.base_image:
            return self.load_image(ps.base_image.ref, ps.base_image.digest)
        return None


def _done(value: Any) -> Future:
    f: Future = Future()
    f.set_result(value)
    return f


def sandbox_mode() -> str:
    """"chroot" in an unprivileged pod; "namespaces" where the full sandbox can be set up: a
    `--user-namespaces` pod (podspec sets KADE_POD_SANDBOX with SYS_ADMIN over the pod's own user
    namespace), or a test on a host."""
    forced = os.environ.get(SANDBOX_ENV, "").strip()
    return forced if forced in ("chroot", "namespaces") else "chroot"


def _download(repo: Any, b: Builder, hexdigest: str, name: str) -> Path:
    """An `ADD <url>` file the CLI checked, from the stages repo (by digest) into the tenant's store."""
    from registry.download import keep

    target = b.cache.downloads / hexdigest / name
    if not target.is_file():
        fd, tmp = tempfile.mkstemp(prefix=".dl-", dir=b.cache.root / "work")
        os.close(fd)
        try:
            repo.download_blob("sha256:" + hexdigest, tmp)
            os.chmod(tmp, 0o600)
            keep(Path(tmp), b.cache.downloads, "sha256:" + hexdigest, name)
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
class StageJob:
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


def build_stage(job: StageJob, report: Report) -> dict[str, Any]:
    """Build one stage of an uploaded plan; returns {"built", "reused", "digest"}."""
    work = job.work or Path(os.environ.get("KADE_WORK_DIR", "/work"))
    secrets = secret_relay.receive(report) if job.secrets_relay else {}
    relay = PodAgentRelay(work / "ssh-agent.sock", report) if job.ssh_relay else None
    try:
        return _build_stage(job, report, work, secrets, str(relay.path) if relay else None)
    finally:
        if relay:
            relay.close()


def _build_stage(job: StageJob, report: Report, work: Path, secrets: dict[str, bytes],
                 ssh: str | None) -> dict[str, Any]:
    client = RegistryClient(ClientOptions(insecure=job.insecure))
    repo = client.repository(job.stages_repo)
    with repo.open_blob(job.plan_digest) as f:
        body = f.read()
    ctx_dir = work / "context"
    stages, extra = plancodec.load_stages(body, ctx_dir)
    ctx_dir.mkdir(parents=True, exist_ok=True)
    if extra.get("context"):
        tar = work / "context.tar"
        repo.download_blob(extra["context"], tar)
        context_upload.unpack(tar, ctx_dir)
        tar.unlink()
    options = BuildOptions(context=ctx_dir, repo=job.stages_repo, compression=extra.get("compression", "gzip"),
                           parallel=1, cache_dir=job.cache_dir, insecure=job.insecure,
                           platform=extra.get("platform", "linux/amd64"), no_cache=bool(extra.get("no_cache")),
                           image_name=extra.get("image_name", "default"), secrets=secrets, ssh=ssh,
                           sandbox=run_chroot if sandbox_mode() == "chroot" else None,
                           # the pod's own user namespace (hostUsers: false) is the boundary around root in
                           # RUN; RUN shares the pod's network (no bridge to NAT through in a pod)
                           isolation=Isolation(userns="host", network="shared"),
                           tenant=job.tenant, share=job.share, build_key=read_build_key(job.build_key_dir))
    b = PodBuilder(options, report, client, work)
    by_label = {ps.label: ps for ps in stages}
    if job.label not in by_label:
        raise BuildError(f"stage {job.label!r} is not in the uploaded plan {job.plan_digest}")
    b.plan = Plan(dockerfile=None, stages=by_label, target=job.label, unused_args=[],  # type: ignore[arg-type]
                  platform=options.platform)
    b.ctx = BuildContext(ctx_dir, IgnoreRules([]))
    ps = by_label[job.label]
    with b.session():  # the PVC's shared lock: a `kade cache prune` Job waits for running pods
        b.hits = b.lookup_stage(ps)
        context_upload.place_downloads(missing_steps(ps, set(b.hits)),
                                       lambda hexdigest, planned: _download(repo, b, hexdigest, planned.name))
        for dep in sorted(ps.deps):
            b.stage_futures[dep] = _done(b.stage_image(dep))
        if ps.base_image:
            b.load_image(ps.base_image.ref, ps.base_image.digest)
        img = b.run_stage(ps)
    return {"built": b.built, "reused": 0, "digest": img.digest if img else None}
