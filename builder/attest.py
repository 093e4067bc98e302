"""Attestations of a pushed image: SBOM and SLSA provenance attached as OCI 1.1 referrers, and
cosign-compatible signatures over the image and over each attestation (when a key is configured).

One entry point, `attest(builder, plan, image, commit, branch)`, called by `Builder.publish` once the
image is pushed; everything it needs comes from the build (plan, lookups, options). Per repository the
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
from typing import TYPE_CHECKING, Any, Callable

import zstandard

from builder import sbom
from builder.errors import BuildError
from builder.provenance import DEFAULT_BUILDER_ID, Material, ProvenanceInput, StepRecord, statement
from registry import referrers as rf
from registry.client import BlobReader
from registry.errors import RegistryError
from registry.model import Descriptor
from registry.reference import Reference

if TYPE_CHECKING:
    from builder.build import Builder, Image
    from builder.plan import Plan
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
    try:
        from importlib.metadata import version

        return version("kade")
    except Exception:  # noqa: BLE001 - a source checkout without metadata
        return "0.0.0"


def attest(builder: "Builder", plan: "Plan", image: "Image", commit: str | None, branch: str | None,
           final_step: "Image | None" = None) -> list[AttestResult]:
    """Attestations of `image` (pushed to builder.o.tags). `final_step` is the step image it was made
    from (same layers): the SBOM inventory is kept as its referrer in the stages repo and reused from
    there, so a rebuild with the same layers never reads them again, on any machine."""
    supply: SupplyOptions = builder.o.supply  # type: ignore[assignment]
    subject = Descriptor(image.manifest.media_type, image.digest, len(image.manifest.to_bytes()))
    refs: dict[str, list[str]] = {}
    for tag in builder.o.tags:
        ref = Reference.parse(tag)
        refs.setdefault(ref.name, []).append(f"{ref.name}:{ref.tag or 'latest'}")
    documents: dict[str, tuple[str, bytes]] = {}
    background = ThreadPoolExecutor(max_workers=1)  # keeping the inventory overlaps the rest
    kept: list[Future] = []

    def document(kind: str) -> tuple[str, bytes]:
        if kind not in documents:
            documents[kind] = (_sbom(builder, image, next(iter(refs)), final_step, background, kept)
                               if kind == SBOM_KIND else
                               (rf.IN_TOTO_JSON, statement(provenance_input(builder, plan, image, commit, branch))))
        return documents[kind]

    created = str(image.config.get("created") or "")
    with background:
        results = [_attest_repository(builder, supply, builder.repo(name), subject, tags, created, document)
                   for name, tags in refs.items()]
        for job in kept:
            job.result()
    return results


def _attest_repository(builder: "Builder", supply: SupplyOptions, repo: Any, subject: Descriptor, tags: list[str],
                       created: str, document: Callable[[str], tuple[str, bytes]]) -> AttestResult:
    name = f"{repo.ref.registry}/{repo.name}"
    result = AttestResult(name)
    types = (sbom.FORMATS[supply.sbom_format][1] if supply.sbom_format else "", rf.IN_TOTO_JSON)
    present = {a.annotations.get(rf.ANNOTATION_KIND): a.descriptor.digest
               for a in rf.list_referrers(repo, subject.digest) if a.artifact_type in types}
    wanted = ([SBOM_KIND] if supply.sbom_format else []) + ([PROVENANCE_KIND] if supply.provenance else [])
    unindexed: list[Descriptor] = []
    artifacts: list[tuple[str, bool]] = []   # (digest, pushed now)
    for kind in wanted:
        if kind in present:
            artifacts.append((present[kind], False))
            continue
        media_type, blob = document(kind)
        desc, indexed = rf.push_artifact(repo, subject, media_type, blob,
                                         {rf.ANNOTATION_KIND: kind, rf.ANNOTATION_CREATED: created})
        builder.report("attest", f"{kind} {desc.digest[:19]} ({len(blob)} bytes) -> {name}", digest=desc.digest)
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
        jobs += [pool.submit(_sign, repo, digest, ref, key, supply.creator) for digest, ref in to_sign]
        for job in jobs:
            job.result()
    for digest, ref in to_sign:
        builder.report("sign", f"{name}@{digest[:19]} for {ref}", digest=digest)
    result.signed = [d for d, _ in to_sign]
    result.reused = not result.attached and not result.signed
    if result.reused:
        builder.report("cached", f"attestations of {subject.digest[:19]} already in {name}")
    return result


def complete_reused(builder: "Builder", plan: "Plan", repository: str, tags: list[str], digest: str,
                    commit: str | None, branch: str | None) -> None:
    """An image a project takes from the registry unchanged (its content tag exists): one referrers
    lookup (and, with a key, one signature read); only what it lacks (e.g. a signature, now that a key
    is configured) is made, with every step counted as cached."""
    supply: SupplyOptions = builder.o.supply  # type: ignore[assignment]
    repo = builder.repo(repository)
    types = {sbom.FORMATS[supply.sbom_format][1] if supply.sbom_format else "": SBOM_KIND,
             rf.IN_TOTO_JSON: PROVENANCE_KIND}
    present = {types[a.artifact_type] for a in rf.list_referrers(repo, digest) if a.artifact_type in types}
    wanted = {k for k, on in ((SBOM_KIND, bool(supply.sbom_format)), (PROVENANCE_KIND, supply.provenance)) if on}
    signed = supply.sign_key is None or bool(signed_references(repo, digest, supply.sign_key))
    if wanted <= present and signed:
        return
    builder.o.tags = [f"{repository}:{t}" for t in tags]
    builder.hits = {s.key: None for s in plan.all_steps()}  # nothing ran: every step came from the registry
    attest(builder, plan, builder.load_image(repository, digest), commit, branch)


def _sign(repo: Any, digest: str, reference: str, key: "SigningKey", creator: str) -> None:
    from registry import signing

    signing.sign(repo, digest, reference, key, creator or "kade")


def signed_references(repo: Any, digest: str, key: "SigningKey") -> set[str]:
    """The references `digest` carries a valid signature for, by `key`."""
    from registry import signing

    good, _ = signing.verify(signing.read_signatures(repo, digest), digest, [key.public])
    return {v.payload.docker_reference for v in good}


def _sbom(builder: "Builder", image: "Image", repository: str, final_step: "Image | None",
          background: ThreadPoolExecutor, kept: list[Future]) -> tuple[str, bytes]:
    supply: SupplyOptions = builder.o.supply  # type: ignore[assignment]
    keep = final_step is not None and bool(builder.stages_repo) and final_step.repo == builder.stages_repo
    found = _kept_inventory(builder, final_step) if keep else None
    if found is None:
        found = _scan(builder, image, repository)
        if keep:
            assert final_step is not None
            stages = builder.repo(builder.stages_repo)  # type: ignore[arg-type]
            step = Descriptor(final_step.manifest.media_type, final_step.digest, len(final_step.manifest.to_bytes()))
            kept.append(background.submit(rf.attach, stages, step, sbom.INVENTORY_MEDIA_TYPE, found.to_json(), {}))
    subject = sbom.Subject(repository, image.digest, str(image.config.get("created") or ""),
                           f"kade-{kade_version()}", str(image.config.get("architecture") or ""))
    document, media_type = sbom.render(found, subject, supply.sbom_format)
    builder.report("sbom", f"{len(found.packages)} packages in {repository}@{image.digest[:19]}",
                   packages=len(found.packages))
    return media_type, document


def _kept_inventory(builder: "Builder", final_step: "Image | None") -> "sbom.Inventory | None":
    """The inventory attached to the final step image by an earlier build, if any (and readable)."""
    assert final_step is not None
    stages = builder.repo(builder.stages_repo)  # type: ignore[arg-type]
    for artifact in rf.list_referrers(stages, final_step.digest, sbom.INVENTORY_MEDIA_TYPE):
        try:
            found = sbom.Inventory.from_json(rf.fetch_artifact(stages, artifact, final_step.digest))
        except (ValueError, KeyError, TypeError, RegistryError):
            continue
        builder.report("cached", f"SBOM inventory of {final_step.digest[:19]} from {builder.stages_repo}")
        return found
    return None


def _layers(builder: "Builder", image: "Image", repository: str) -> list[Any]:
    """The image's layers for the scanners: from the local blob cache, else streamed from `repository`."""
    repo = builder.repo(repository)

    def opener(desc: Descriptor) -> Callable[[], Any]:
        path = builder.cache.blobs.path(desc.digest)
        if path.is_file():
            return lambda: open(path, "rb")
        return lambda: BlobReader(repo, desc.digest, desc.size)  # verified at EOF, which the scan reads to

    return [sbom.blob_layer(d.digest, opener(d)) for d in image.manifest.layers]


def _scan(builder: "Builder", image: "Image", repository: str) -> "sbom.Inventory":
    for job in list(getattr(builder, PRESCANS, [])):
        with contextlib.suppress(Exception):  # best effort: the scan below reports what went wrong
            job.result()
    try:
        return sbom.scan(_layers(builder, image, repository), builder.cache.root / "sbom", builder.report)
    except (ValueError, OSError, EOFError, zstandard.ZstdError) as exc:  # corrupt or hostile (TarFormatError: ValueError)
        if isinstance(exc, BuildError):
            raise
        raise BuildError(f"SBOM of {repository}@{image.digest}: cannot read its layers: {exc}",
                         hint="the image is pushed without attestations; check its layers (kade image inspect)") from None


PRESCANS = "_sbom_prescans"


def prescan(builder: "Builder", image: "Image") -> None:
    """Scan a step image of the target stage in the background while the build goes on (its layers are
    in the local cache or its repository): the per-ChainID state it leaves makes the final image's SBOM
    read only what came after. Best effort, on a daemon thread (a failing build does not wait for it);
    called by the builder as each such step image is pushed."""
    supply: SupplyOptions | None = builder.o.supply
    if supply is None or not supply.sbom_format or not builder.o.tags or not image.repo:
        return
    with builder.lock:
        if not hasattr(builder, PRESCANS):
            setattr(builder, PRESCANS, [])
            builder._sbom_lock = threading.Lock()  # type: ignore[attr-defined]
        job: Future = Future()
        getattr(builder, PRESCANS).append(job)
    layers = _layers(builder, image, image.repo)

    def run() -> None:
        with builder._sbom_lock:  # type: ignore[attr-defined]  (one scan at a time: each reuses the last)
            try:
                job.set_result(sbom.scan(layers, builder.cache.root / "sbom"))
            except BaseException as exc:  # noqa: BLE001 - handed to whoever waits
                job.set_exception(exc)

    threading.Thread(target=run, daemon=True, name="kade-sbom").start()


def provenance_input(builder: "Builder", plan: "Plan", image: "Image", commit: str | None,
                     branch: str | None) -> ProvenanceInput:
    from builder.build import missing_steps, needed_stages

    supply: SupplyOptions = builder.o.supply  # type: ignore[assignment]
    hits = set(getattr(builder, "hits", {}) or {})
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
                    base = builder.resolve_base(m.options["from"], plan.platform)
                    materials.append(Material("mount-from", base.ref, base.digest, ps.label))
    dockerfile = Path(plan.dockerfile.path)
    config = supply.config_file
    first = Reference.parse(builder.o.tags[0])
    return ProvenanceInput(
        repository=first.name, digest=image.digest,
        builder_id=supply.builder_id or DEFAULT_BUILDER_ID.format(backend=supply.backend),
        kade_version=kade_version(), backend=supply.backend, builder_image=_builder_image(builder, supply),
        source_repository=supply.source_repository, commit=commit or "", branch=branch or "",
        dockerfile=_relative(dockerfile, builder.o.context), dockerfile_sha256=_sha256(dockerfile),
        config_file=config.name if config else "", config_sha256=_sha256(config) if config else "",
        target=builder.o.target or "", platform=plan.platform, build_args=dict(builder.o.build_args),
        secret_ids=[s for s in secret_ids if s], ssh=ssh, compression=builder.o.compression,
        no_cache=builder.o.no_cache, materials=materials, steps=steps,
        finished=str(image.config.get("created") or ""))


def _builder_image(builder: "Builder", supply: SupplyOptions) -> str:
    if not supply.builder_image:
        return ""
    ref = Reference.parse(supply.builder_image)
    if ref.digest:
        return f"{ref.name}@{ref.digest}"
    found = builder.repo(ref.name).head_manifest(ref.tag or "latest")
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
