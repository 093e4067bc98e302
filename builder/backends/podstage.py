"""Inside a builder pod: `kade build-stage` builds one planned stage with the local executor code.

It fetches the stage plan and the context upload by digest from the stages repo (both verified),
rebuilds the Builder state the CLI had (plan, context root, cached steps, the images of the stages
it depends on, read back from the stages repo), and runs the stage through `Builder._run_stage`,
exactly as the local backend does. Around every missing step it holds the step key's Lease:
a concurrent build of the same step waits, then finds the step image pushed and reuses it (its new
layer is applied to the rootfs, nothing runs), and a Lease left by a pod that died expires and is
taken over. RUN uses the chroot runner (chroot.py), or the namespace sandbox in a user-namespace pod.
"""
from __future__ import annotations

import functools
import os
import tempfile
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable

from builder.backends import context_upload, plancodec
from builder.backends.agent_relay import PodAgentRelay
from builder.backends.chroot import run_chroot
from builder.backends.lease import Leases, step_lease_name
from builder.backends.podspec import MANAGED, SANDBOX_ENV
from builder.build import Builder, BuildOptions, Image, Report, with_trailing_history
from builder.context import BuildContext, IgnoreRules
from builder.errors import BuildError
from builder.plan import Plan, PlannedStage, Step
from builder.sandbox import Isolation
from builder.stageroot import StageRoot
from registry import cancel
from registry import mediatypes as mt
from registry.client import ClientOptions, RegistryClient


class PodBuilder(Builder):
    """A Builder for one stage in a pod: step Leases around every missing step."""

    def __init__(self, options: BuildOptions, report: Report, client: RegistryClient,
                 leases: Callable[[], Leases | None], work: Path):
        super().__init__(options, report, client)
        self._leases = leases
        self.context_ready: Future | None = None   # the context blobs unpacked (a step waits for them)
        self.stepped = False
        self.reused = 0
        self.rootfs_dir = work / "rootfs"
        self.rootfs_dir.mkdir(parents=True, exist_ok=True)
        self.cache.work_dir = self._work_dir  # type: ignore[method-assign]  # rootfs on the emptyDir

    def _work_dir(self, prefix: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.rootfs_dir))

    @functools.cached_property
    def leases(self) -> Leases | None:
        return self._leases()

    def _materialize(self, image: Image | None, prefix: str) -> StageRoot:
        root = super()._materialize(image, prefix)
        _mark(self.report, "rootfs ready")
        return root

    def execute_step(self, ps: PlannedStage, step: Step, parent: Image | None, root: StageRoot) -> Image:
        if self.context_ready is not None:
            self.context_ready.result()
        if not self.stepped:
            self.stepped = True
            _mark(self.report, "first step")
        if self.leases is None:
            return super().execute_step(ps, step, parent, root)
        with self.leases.held(step_lease_name(step.key), f"[{ps.label}] {step.text}", labels=dict(MANAGED)):
            desc = None if self.o.no_cache else self.repo(self.stages_repo).head_manifest(step.key, mt.OCI_MANIFEST)
            if desc is None:
                return super().execute_step(ps, step, parent, root)
            img = self.load_image(self.stages_repo, desc.digest)  # type: ignore[arg-type]
            root.add_layers(self._layer_refs(img))   # the layers `img` adds on top of `parent`
            self.reused += 1
            self.report("reused", f"[{ps.label}] {step.text} (pushed meanwhile by another build)", key=step.key)
            return img

    def lookup_stage(self, ps: PlannedStage) -> dict[str, Any]:
        if self.o.no_cache or not ps.steps:
            return {}
        repo = self.repo(self.stages_repo)  # type: ignore[arg-type]
        with cancel.Pool(max_workers=8) as pool:
            found = list(pool.map(lambda s: repo.head_manifest(s.key, mt.OCI_MANIFEST), ps.steps))
        return {s.key: d for s, d in zip(ps.steps, found) if d is not None}

    def stage_image(self, label: str) -> Image | None:
        """The result of an already built stage, read back from the stages repo (with the history of
        its trailing ARGs, as the CLI's Builder has it)."""
        return with_trailing_history(self.plan.stages[label], self._stage_image(label))

    def _stage_image(self, label: str) -> Image | None:
        ps = self.plan.stages[label]
        if ps.steps:
            desc = self.repo(self.stages_repo).head_manifest(ps.final_key, mt.OCI_MANIFEST)  # type: ignore[arg-type]
            if desc is None:
                raise BuildError(f"stage {label} should be built already but {self.stages_repo}:{ps.final_key} "
                                 "is missing", hint="run the build again")
            return self.load_image(self.stages_repo, desc.digest)  # type: ignore[arg-type]
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
    _mark(report, "plan fetched")
    ctx_dir.mkdir(parents=True, exist_ok=True)
    options = BuildOptions(context=ctx_dir, repo=stages_repo, compression=extra.get("compression", "gzip"),
                           parallel=1, cache_dir=cache_dir, insecure=insecure,
                           platform=extra.get("platform", "linux/amd64"), no_cache=bool(extra.get("no_cache")),
                           image_name=extra.get("image_name", "default"),
                           secrets=read_secrets(os.environ.get("KADE_SECRETS_DIR")), ssh=ssh,
                           sandbox=run_chroot if sandbox_mode() == "chroot" else None,
                           # the pod's own user namespace (hostUsers: false) is the boundary around root in
                           # RUN; RUN shares the pod's network (no bridge to NAT through in a pod)
                           isolation=Isolation(userns="host", network="shared"))

    def leases() -> Leases | None:
        api = api_client() if callable(api_client) else api_client   # (connecting may run meanwhile)
        return Leases(api, namespace, holder, lease_s, report) if api is not None and holder and namespace else None

    b = PodBuilder(options, report, client, leases, work)
    by_label = {ps.label: ps for ps in stages}
    if label not in by_label:
        raise BuildError(f"stage {label!r} is not in the uploaded plan {plan_digest}")
    b.plan = Plan(dockerfile=None, stages=by_label, target=label, unused_args=[],  # type: ignore[arg-type]
                  platform=options.platform)
    b.ctx = BuildContext(ctx_dir, IgnoreRules([]))
    ps = by_label[label]
    with b.session(), cancel.Pool(max_workers=1) as pool:  # the PVC's shared lock: a prune Job waits for pods
        # the context arrives while the steps are looked up and the rootfs is made; a step waits for it
        b.context_ready = pool.submit(_fetch_context, repo, extra, b.cache, ctx_dir, report)
        b.hits = b.lookup_stage(ps)
        for dep in sorted(ps.deps):
            b.stage_futures[dep] = _done(b.stage_image(dep))
        if ps.base_image:
            b.load_image(ps.base_image.ref, ps.base_image.digest)
        img = b.run_stage(ps)
        b.context_ready.result()
    return {"built": b.built - b.reused, "reused": b.reused, "digest": img.digest if img else None}


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
