"""Artifacts attached to an image the OCI 1.1 way: a manifest whose `subject` is the image, found
through the referrers API (`GET /v2/<name>/referrers/<digest>`), or, on registries without it
(distribution 2.8), through the referrers tag schema: an OCI index tagged `sha256-<hex>` listing the
artifacts of manifest `sha256:<hex>` (OCI distribution spec 1.1, "Referrers Tag Schema").

Updating that index (and a cosign `.sig` manifest, registry/signing.py) is a read-modify-write of a
tag, and registries offer no conditional PUT, so `update_tag` re-reads after writing and retries
when the entry it wrote is gone. It re-reads once right away and once more after a settle time:
a concurrent writer that read the tag before our write must write within its own read-to-write span,
so if that span is under the settle time, its write lands before our second check and we see our
entry missing and merge again. The settle time is four times our own read-to-write span (two
requests), at least 50 ms and at most 1 s: a writer on the same registry has a span like ours.
Guarantee: no entry is lost while every concurrent writer's read-to-write span stays under that
settle time; after `attempts` lost races, a clear error.
"""
from __future__ import annotations

import io
import random
import time
from dataclasses import dataclass
from typing import Any, Callable

from registry import mediatypes as mt
from registry.digest import sha256_digest
from registry.errors import InvalidManifest, NotFound, RegistryError
from registry.model import Descriptor, Index, Manifest, parse_manifest

SPDX_JSON = "application/spdx+json"
CYCLONEDX_JSON = "application/vnd.cyclonedx+json"
IN_TOTO_JSON = "application/vnd.in-toto+json"
ANNOTATION_CREATED = "org.opencontainers.image.created"
ANNOTATION_KIND = "io.kade.attestation"   # sbom | provenance: what kade made it as
MIN_SETTLE_S, MAX_SETTLE_S = 0.05, 1.0
MAX_REFERRERS = 4096


def fallback_tag(digest: str) -> str:
    """`sha256-<hex>`: the referrers tag schema's tag for manifest `sha256:<hex>`."""
    algo, _, hexpart = digest.partition(":")
    return f"{algo}-{hexpart}"[:128]


@dataclass(frozen=True)
class Artifact:
    """One attached artifact: its manifest descriptor (artifactType and annotations filled in)."""
    descriptor: Descriptor

    @property
    def artifact_type(self) -> str:
        return self.descriptor.artifact_type or ""

    @property
    def annotations(self) -> dict[str, str]:
        return dict(self.descriptor.annotations or {})


def artifact_manifest(subject: Descriptor, artifact_type: str, blob: bytes,
                      annotations: dict[str, str]) -> Manifest:
    """An OCI 1.1 artifact manifest: empty config, one layer (the document), subject = the image."""
    return Manifest(
        config=Descriptor(mt.OCI_EMPTY, mt.OCI_EMPTY_DIGEST, len(mt.OCI_EMPTY_BYTES)),
        layers=[Descriptor(artifact_type, sha256_digest(blob), len(blob))],
        media_type=mt.OCI_MANIFEST, artifact_type=artifact_type,
        subject=Descriptor(subject.media_type, subject.digest, subject.size),
        annotations=dict(annotations) or None)


def push_artifact(repo: Any, subject: Descriptor, artifact_type: str, blob: bytes,
                  annotations: dict[str, str]) -> tuple[Descriptor, bool]:
    """Push `blob` as an artifact referring to `subject` (blobs, then the manifest by digest).
    Returns (its descriptor, whether the registry indexed it for the referrers API, as it says by
    answering `OCI-Subject`); when it did not, `add_to_fallback` makes it findable."""
    manifest = artifact_manifest(subject, artifact_type, blob, annotations)
    body = manifest.to_bytes()
    repo.upload_blob(io.BytesIO(mt.OCI_EMPTY_BYTES), mt.OCI_EMPTY_DIGEST, len(mt.OCI_EMPTY_BYTES))
    repo.upload_blob(io.BytesIO(blob), manifest.layers[0].digest, len(blob), skip_existing=False)  # a new document
    digest, indexed = repo.push_manifest(sha256_digest(body), body, mt.OCI_MANIFEST)
    desc = Descriptor(mt.OCI_MANIFEST, digest, len(body), annotations=manifest.annotations,
                      artifact_type=artifact_type)
    return desc, indexed == subject.digest


def attach(repo: Any, subject: Descriptor, artifact_type: str, blob: bytes, annotations: dict[str, str],
           settle: float | None = None) -> Descriptor:
    """Push an artifact and make it findable (through the referrers API, else the tag schema index)."""
    desc, indexed = push_artifact(repo, subject, artifact_type, blob, annotations)
    if not indexed:
        add_to_fallback(repo, subject.digest, [desc], settle)
    return desc


def add_to_fallback(repo: Any, subject_digest: str, entries: list[Descriptor], settle: float | None = None) -> None:
    """Add `entries` to the referrers tag schema index of `subject_digest` (kept: what is there)."""
    wanted = {d.digest for d in entries}

    def add(current: bytes | None) -> bytes | None:
        have = _fallback_entries(current, repo, subject_digest)
        if wanted <= {d.digest for d in have}:
            return None
        kept = [d for d in have if d.digest not in wanted]
        return Index(kept + entries, mt.OCI_INDEX).to_bytes()

    def has(current: bytes) -> bool:
        return wanted <= {d.digest for d in _fallback_entries(current, repo, subject_digest)}

    update_tag(repo, fallback_tag(subject_digest), add, has, settle=settle)


def _fallback_entries(body: bytes | None, repo: Any, subject_digest: str) -> list[Descriptor]:
    if body is None:
        return []
    index = parse_manifest(body)
    if not isinstance(index, Index):
        raise InvalidManifest(f"tag {fallback_tag(subject_digest)} of {repo.name} on {repo.host} is not an index, "
                              "so it is not a referrers tag schema index; it was pushed by something else: "
                              "move it away before attaching artifacts to that image")
    return index.manifests[:MAX_REFERRERS]


def list_referrers(repo: Any, subject_digest: str, artifact_type: str | None = None) -> list[Artifact]:
    """The artifacts whose subject is `subject_digest`: from the referrers API when the registry has
    it, else from the `sha256-<hex>` index. Ordered as the registry lists them."""
    answer = repo.get_referrers(subject_digest, artifact_type)
    if answer is not None:
        body, filtered = answer
        entries = _index_entries(body, repo, subject_digest)
    else:
        filtered = False
        try:
            body, _ = repo.get_manifest(fallback_tag(subject_digest), mt.OCI_INDEX)
        except NotFound:
            return []
        entries = _fallback_entries(body, repo, subject_digest)
    if artifact_type and not filtered:
        entries = [d for d in entries if d.artifact_type == artifact_type]
    return [Artifact(d) for d in entries]


def _index_entries(body: bytes, repo: Any, subject_digest: str) -> list[Descriptor]:
    index = parse_manifest(body, mt.OCI_INDEX)
    if not isinstance(index, Index):
        raise InvalidManifest(f"registry {repo.host} answered the referrers of {subject_digest} with something "
                              "other than an index")
    return index.manifests[:MAX_REFERRERS]


def fetch_artifact(repo: Any, artifact: Artifact, subject_digest: str, max_bytes: int = 64 << 20) -> bytes:
    """The document of an artifact (its one layer), after checking that it really refers to the subject."""
    body, _ = repo.get_manifest(artifact.descriptor.digest, mt.OCI_MANIFEST)
    manifest = parse_manifest(body, mt.OCI_MANIFEST)
    if not isinstance(manifest, Manifest) or manifest.subject is None or manifest.subject.digest != subject_digest:
        raise InvalidManifest(f"artifact {artifact.descriptor.digest} in {repo.name} does not name "
                              f"{subject_digest} as its subject; ignoring it")
    if len(manifest.layers) != 1 or manifest.layers[0].size > max_bytes:
        raise InvalidManifest(f"artifact {artifact.descriptor.digest} in {repo.name} is not one document of at "
                              f"most {max_bytes} bytes")
    layer = manifest.layers[0]
    with repo.open_blob(layer.digest, layer.size) as stream:
        data = stream.read(layer.size + 1)
        while stream.read(1 << 16):
            pass  # to EOF: the reader verifies the digest there
    return data


def update_tag(repo: Any, tag: str, change: Callable[[bytes | None], bytes | None], has: Callable[[bytes], bool],
               attempts: int = 8, settle: float | None = None, sleep: Callable[[float], None] = time.sleep) -> bool:
    """Read-modify-write of the small manifest at `tag`. `change(current or None)` returns the new bytes
    (an OCI manifest or index), or None when nothing needs writing; `has(bytes)` tells whether what is
    there holds our change. Returns whether it wrote. `settle` None: from our own span (see the module
    docstring for the guarantee)."""
    wrote = False
    for attempt in range(1, attempts + 1):
        started = time.monotonic()
        current = _read(repo, tag)
        new = change(current)
        if new is None and not wrote:
            return False
        if new is not None:
            repo.put_manifest(tag, new, _media_type(new))
            wrote = True
        span = time.monotonic() - started
        if _holds(repo, tag, has):
            sleep(settle if settle is not None else min(MAX_SETTLE_S, max(MIN_SETTLE_S, 4 * span)))
            if _holds(repo, tag, has):
                return True
        sleep(random.uniform(0.05, 0.2) * attempt)  # another writer won the race: merge again
    raise RegistryError(f"tag {tag} of {repo.name} on {repo.host} kept being overwritten by another writer "
                        f"({attempts} attempts); retry the command")


def _read(repo: Any, tag: str) -> bytes | None:
    try:
        return repo.get_manifest(tag)[0]
    except NotFound:
        return None


def _holds(repo: Any, tag: str, has: Callable[[bytes], bool]) -> bool:
    body = _read(repo, tag)
    return body is not None and has(body)


def _media_type(body: bytes) -> str:
    return mt.OCI_INDEX if isinstance(parse_manifest(body), Index) else mt.OCI_MANIFEST


__all__ = ["attach", "push_artifact", "add_to_fallback", "list_referrers", "fetch_artifact", "update_tag", "fallback_tag", "Artifact",
           "SPDX_JSON", "CYCLONEDX_JSON", "IN_TOTO_JSON"]
