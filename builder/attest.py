"""Attestations of a pushed image: SBOM and SLSA provenance attached as OCI 1.1 referrers, and
cosign-compatible signatures over the image and over each attestation (when a key is configured).

One entry point, `attest(env, plan, image, tags, ...)`, called by the publisher (builder/publish.py) once
the image is pushed; everything it needs comes from the build (its env, plan and what was cached). Per repository the
image went to: the referrers are checked first, and what is already there (an SBOM of the requested
format, a provenance, the image's signature by this key) is neither recomputed nor pushed again, so a
rebuild that produces the same digest costs one request.
"""
from __future__ import annotations

import contextlib
import hashlib
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from builder import sbom
from builder.errors import BuildError
from builder.provenance import DEFAULT_BUILDER_ID, Material, ProvenanceInput, StepRecord, statement
from registry import cancel
from registry import referrers as rf
from registry.client import BlobReader
from registry.errors import RegistryError
from registry.model import Descriptor
from registry.reference import Reference

if TYPE_CHECKING:
    from builder.env import BuildEnv
    from builder.plan import Plan, Step
    from builder.tarformat import TocEntry
    from registry.image import Image
    from registry.sigkeys import SigningKey

SBOM_KIND, PROVENANCE_KIND = "sbom", "provenance"


@dataclass
class SupplyOptions:
    """What `kade build` (or a project) asks of the supply chain; None in BuildOptions: nothing."""
    sbom_format: str = "spdx"            # spdx | cyclonedx | "" (no SBOM)
    provenance: bool = True
    sign_key: "SigningKey | None" = None
    builder_id: str = ""                 # default https://kade.io/builders/<backend>
    backend: str = "local"
    builder_image: str = ""              # the pods' image reference (resolved to a digest here)
    source_repository: str = ""          # git remote URL
    config_file: Path | None = None      # kade.yaml
    creator: str = ""                    # "kade <version>"


@dataclass
class AttestResult:
    repository: str
    attached: list[str] = field(default_factory=list)   # artifact digests pushed
    signed: list[str] = field(default_factory=list)     # manifest digests signed
    reused: bool = False                                 # everything was already there


def kade_version() -> str:
    from common.version import __version__   # (importlib.metadata would cost every build ~6 ms)

    return __version__


def attest(env: "BuildEnv", plan: "Plan", image: "Image", tags: list[str], commit: str | None,
           branch: str | None, cached: set[str], final_step: "Image | None" = None,
           prescans: "Prescans | None" = None, sign_tags: bool = True) -> list[AttestResult]:
    """Attestations of `image` (pushed to `tags`; `cached`: the step keys found in the stages repo before
    the build ran anything). For one platform of a multi-platform image (`sign_tags` false) the tags
    name its index: its attestations are attached to it, the index is what `sign_index` signs. `final_step` is the step image it was made from (same layers): the SBOM
    inventory is kept as its referrer in the stages repo and reused from there, so a rebuild with the
    same layers never reads them again, on any machine."""
    supply = env.options.supply
    assert supply is not None
    subject = image.descriptor
    refs = _by_repository(tags)
    documents: dict[str, tuple[str, bytes]] = {}
    background = ThreadPoolExecutor(max_workers=1)  # keeping the inventory overlaps the rest
    kept: list[Future] = []

    def document(kind: str) -> tuple[str, bytes]:
        if kind not in documents:
            documents[kind] = (_sbom(env, image, next(iter(refs)), final_step, background, kept, prescans)
                               if kind == SBOM_KIND else
                               (rf.IN_TOTO_JSON, statement(provenance_input(env, plan, image, tags, commit, branch,
                                                                            cached))))
        return documents[kind]

    created = (image.config.created or "")
    with background:
        results = [_attest_repository(env, supply, env.store.repo(name), subject, names if sign_tags else [],
                                      created, document)
                   for name, names in refs.items()]
        for job in kept:
            job.result()
    return results


def _by_repository(tags: list[str]) -> dict[str, list[str]]:
    refs: dict[str, list[str]] = {}
    for tag in tags:
        ref = Reference.parse(tag)
        refs.setdefault(ref.name, []).append(f"{ref.name}:{ref.tag or 'latest'}")
    return refs


def sign_index(env: "BuildEnv", digest: str, tags: list[str]) -> None:
    """A multi-platform image's signature: its index signed for each tag lacking one (cosign signs
    the index of a multi-platform tag the same way); each platform's attestations are its own."""
    supply = env.options.supply
    key = supply.sign_key if supply else None
    if supply is None or key is None:
        return
    for name, refs in _by_repository(tags).items():
        repo = env.store.repo(name)
        have = signed_references(repo, digest, key)
        for ref in refs:
            if ref not in have:
                _sign(repo, digest, ref, key, supply.creator)
                env.report("sign", f"{name}@{digest[:19]} for {ref}", digest=digest)


def _attest_repository(env: "BuildEnv", supply: SupplyOptions, repo: Any, subject: Descriptor, tags: list[str],
                       created: str, document: Callable[[str], tuple[str, bytes]]) -> AttestResult:
    name = f"{repo.ref.registry}/{repo.name}"
    result = AttestResult(name)
    types = (sbom.FORMATS[supply.sbom_format][1] if supply.sbom_format else "", rf.IN_TOTO_JSON)
    present = {a.annotations.get(rf.ANNOTATION_KIND): a.descriptor.digest
               for a in rf.list_referrers(repo, subject.digest) if a.artifact_type in types}
    wanted = ([SBOM_KIND] if supply.sbom_format else []) + ([PROVENANCE_KIND] if supply.provenance else [])
    unindexed: list[Descriptor] = []
    artifacts: list[tuple[str, bool]] = []   # (digest, pushed now)

    def push(kind: str) -> tuple[Descriptor, bool, int]:
        media_type, blob = document(kind)
        desc, indexed = rf.push_artifact(repo, subject, media_type, blob,
                                         {rf.ANNOTATION_KIND: kind, rf.ANNOTATION_CREATED: created})
        return desc, indexed, len(blob)

    with cancel.Pool(max_workers=2, thread_name_prefix="kade-attest") as pushers:   # the SBOM and the provenance at once
        pushing = {kind: pushers.submit(push, kind) for kind in wanted if kind not in present}
    for kind in wanted:
        if kind in present:
            artifacts.append((present[kind], False))
            continue
        desc, indexed, size = pushing[kind].result()
        env.report("attest", f"{kind} {desc.digest[:19]} ({size} bytes) -> {name}", digest=desc.digest)
        result.attached.append(desc.digest)
        artifacts.append((desc.digest, True))
        if not indexed:
            unindexed.append(desc)
    to_sign: list[tuple[str, str]] = []
    key = supply.sign_key
    if key is not None:  # (registry.signing and cryptography are imported only when signing)
        have = signed_references(repo, subject.digest, key)
        to_sign += [(subject.digest, ref) for ref in tags if ref not in have]
        to_sign += [(digest, name) for digest, fresh in artifacts if fresh or not signed_references(repo, digest, key)]
    with ThreadPoolExecutor(max_workers=4) as pool:  # tag updates at once: one settle period in all
        jobs = [pool.submit(rf.add_to_fallback, repo, subject.digest, unindexed)] if unindexed else []
        if key is not None:  # (to_sign is empty otherwise)
            jobs += [pool.submit(_sign, repo, digest, ref, key, supply.creator) for digest, ref in to_sign]
        for job in jobs:
            job.result()
    for digest, ref in to_sign:
        env.report("sign", f"{name}@{digest[:19]} for {ref}", digest=digest)
    result.signed = [d for d, _ in to_sign]
    result.reused = not result.attached and not result.signed
    if result.reused:
        env.report("cached", f"attestations of {subject.digest[:19]} already in {name}")
    return result


def complete_reused(env: "BuildEnv", plan: "Plan", repository: str, tags: list[str], digest: str,
                    commit: str | None, branch: str | None) -> None:
    """An image a project takes from the registry unchanged (its content tag exists): one referrers
    lookup (and, with a key, one signature read); only what it lacks (e.g. a signature, now that a key
    is configured) is made, with every step counted as cached."""
    supply = env.options.supply
    assert supply is not None
    repo = env.store.repo(repository)
    types = {sbom.FORMATS[supply.sbom_format][1] if supply.sbom_format else "": SBOM_KIND,
             rf.IN_TOTO_JSON: PROVENANCE_KIND}
    present = {types[a.artifact_type] for a in rf.list_referrers(repo, digest) if a.artifact_type in types}
    wanted = {k for k, on in ((SBOM_KIND, bool(supply.sbom_format)), (PROVENANCE_KIND, supply.provenance)) if on}
    signed = supply.sign_key is None or bool(signed_references(repo, digest, supply.sign_key))
    if wanted <= present and signed:
        return
    every = {s.key for s in plan.all_steps()}  # nothing ran: every step came from the registry
    attest(env, plan, env.store.load(repository, digest), [f"{repository}:{t}" for t in tags], commit, branch, every)


def _sign(repo: Any, digest: str, reference: str, key: "SigningKey", creator: str) -> None:
    from registry import signing

    signing.sign(repo, digest, reference, key, creator or "kade")


def signed_references(repo: Any, digest: str, key: "SigningKey") -> set[str]:
    """The references `digest` carries a valid signature for, by `key`."""
    from registry import signing

    good, _ = signing.verify(signing.read_signatures(repo, digest), digest, [key.public])
    return {v.payload.docker_reference for v in good}


def _sbom(env: "BuildEnv", image: "Image", repository: str, final_step: "Image | None",
          background: ThreadPoolExecutor, kept: list[Future], prescans: "Prescans | None") -> tuple[str, bytes]:
    supply = env.options.supply
    assert supply is not None
    stages_repo = env.stages_repo
    found = None
    if final_step is not None and stages_repo and final_step.source == stages_repo:
        found = _kept_inventory(env, stages_repo, final_step)
        if found is None:
            found = _scan(env, image, repository, prescans)
            kept.append(background.submit(rf.attach, env.store.repo(stages_repo), final_step.descriptor,
                                          sbom.INVENTORY_MEDIA_TYPE, found.to_json(), {}))
    if found is None:
        found = _scan(env, image, repository, prescans)
    subject = sbom.Subject(repository, image.digest, (image.config.created or ""),
                           f"kade-{kade_version()}", (image.config.architecture or ""))
    document, media_type = sbom.render(found, subject, supply.sbom_format)
    env.report("sbom", f"{len(found.packages)} packages in {repository}@{image.digest[:19]}",
                   packages=len(found.packages))
    return media_type, document


def _kept_inventory(env: "BuildEnv", stages_repo: str, final_step: "Image") -> "sbom.Inventory | None":
    """The inventory attached to the final step image by an earlier build, if any (and readable)."""
    stages = env.store.repo(stages_repo)
    for artifact in rf.list_referrers(stages, final_step.digest, sbom.INVENTORY_MEDIA_TYPE):
        try:
            found = sbom.Inventory.from_json(rf.fetch_artifact(stages, artifact, final_step.digest))
        except (ValueError, KeyError, TypeError, RegistryError):
            continue
        env.report("cached", f"SBOM inventory of {final_step.digest[:19]} from {stages_repo}")
        return found
    return None


def _layers(env: "BuildEnv", image: "Image", repository: str, top_toc: "Sequence[TocEntry] | None" = None) -> list[Any]:
    """The image's layers for the scanners: from the local blob cache, else streamed from `repository`;
    `top_toc`: the table of contents of its top layer, which this build wrote."""
    repo = env.store.repo(repository)

    def opener(desc: Descriptor) -> Callable[[], Any]:
        path = env.cache.blobs.path(desc.digest)
        if path.is_file():
            return lambda: open(path, "rb")
        return lambda: BlobReader(repo, desc.digest, desc.size)  # verified at EOF, which the scan reads to

    layers = image.manifest.layers
    return [sbom.blob_layer(d.digest, opener(d), top_toc if i == len(layers) - 1 else None)
            for i, d in enumerate(layers)]


def _scan(env: "BuildEnv", image: "Image", repository: str, prescans: "Prescans | None") -> "sbom.Inventory":
    import zstandard   # here, with the layer reading it is for (a rebuild reuses the kept inventory)

    if prescans is not None:
        prescans.wait()
    try:
        return sbom.scan(_layers(env, image, repository), env.cache.root / "sbom", env.report)
    except (ValueError, OSError, EOFError, zstandard.ZstdError) as exc:  # corrupt or hostile (TarFormatError: ValueError)
        if isinstance(exc, BuildError):
            raise
        raise BuildError(f"SBOM of {repository}@{image.digest}: cannot read its layers: {exc}",
                         hint="the image is pushed without attestations; check its layers (kade image inspect)") from None


class Prescans:
    """Scans of the target stage's step images in the background while the build goes on (their layers
    are in the local cache or the stages repo): the per-ChainID state each leaves makes the final
    image's SBOM read only what came after. Best effort, one at a time, on daemon threads (a failing
    build does not wait for them); `step_image` is the local executor's hook for each pushed step."""

    def __init__(self, env: "BuildEnv"):
        self.env = env
        self.jobs: list[Future] = []
        self.lock = threading.Lock()     # the jobs list
        self.one_at_a_time = threading.Lock()  # each scan reuses the state the last one left

    def step_image(self, step: "Step", image: "Image", toc: "Sequence[TocEntry] | None" = None) -> None:
        """Scan `image` (`toc`: the table of contents of the layer its step wrote, if it wrote one)."""
        if not image.source:
            return
        job: Future = Future()
        with self.lock:
            self.jobs.append(job)
        layers = _layers(self.env, image, image.source, toc)

        def run() -> None:
            with self.one_at_a_time:
                try:
                    job.set_result(sbom.scan(layers, self.env.cache.root / "sbom"))
                except BaseException as exc:  # noqa: BLE001 - handed to whoever waits
                    job.set_exception(exc)

        threading.Thread(target=run, daemon=True, name="kade-sbom").start()

    def wait(self) -> None:
        with self.lock:
            jobs = list(self.jobs)
        for job in jobs:
            with contextlib.suppress(Exception):  # best effort: the final scan reports what went wrong
                job.result()


def provenance_input(env: "BuildEnv", plan: "Plan", image: "Image", tags: list[str], commit: str | None,
                     branch: str | None, cached: set[str]) -> ProvenanceInput:
    from builder.solver import missing_steps, needed_stages

    supply = env.options.supply
    assert supply is not None
    hits = cached
    ran = {s.key for label in needed_stages(plan, hits) for s in missing_steps(plan.stages[label], hits)}
    materials, steps, secret_ids, ssh = [], [], [], False
    for ps in plan.order():
        if ps.base_image is not None:
            materials.append(Material("base", ps.base_image.ref, ps.base_image.digest, ps.label))
        for s in ps.steps:
            steps.append(StepRecord(ps.label, s.text, s.key, s.key not in ran))
            if s.copy is not None and s.copy.from_image is not None:
                materials.append(Material("copy-from", s.copy.from_image.ref, s.copy.from_image.digest, ps.label))
            for m in s.mounts:
                secret_ids += [m.options.get("id", "")] if m.type == "secret" else []
                ssh = ssh or m.type == "ssh"
                source = m.options.get("from", "").lower()
                if m.type == "bind" and source and source not in plan.stages:
                    base = env.store.resolve(m.options["from"], plan.platform)
                    materials.append(Material("mount-from", base.ref, base.digest, ps.label))
    assert plan.dockerfile is not None
    dockerfile = Path(plan.dockerfile.path)
    config = supply.config_file
    first = Reference.parse(tags[0])
    o = env.options
    return ProvenanceInput(
        repository=first.name, digest=image.digest,
        builder_id=supply.builder_id or DEFAULT_BUILDER_ID.format(backend=supply.backend),
        kade_version=kade_version(), backend=supply.backend, builder_image=_builder_image(env, supply),
        source_repository=supply.source_repository, commit=commit or "", branch=branch or "",
        dockerfile=_relative(dockerfile, o.context), dockerfile_sha256=_sha256(dockerfile),
        config_file=config.name if config else "", config_sha256=_sha256(config) if config else "",
        target=o.target or "", platform=plan.platform, build_args=dict(o.build_args),
        secret_ids=[s for s in secret_ids if s], ssh=ssh, compression=o.compression,
        no_cache=o.no_cache, materials=materials, steps=steps,
        finished=(image.config.created or ""))


def _builder_image(env: "BuildEnv", supply: SupplyOptions) -> str:
    if not supply.builder_image:
        return ""
    ref = Reference.parse(supply.builder_image)
    if ref.digest:
        return f"{ref.name}@{ref.digest}"
    found = env.store.repo(ref.name).head_manifest(ref.tag or "latest")
    return f"{ref.name}@{found.digest}" if found else ref.name


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return path.name


def _sha256(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return ""
