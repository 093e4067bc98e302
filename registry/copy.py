"""Copy an image (or an index with all its children) between registries and OCI layouts.

Blobs first, then child manifests by digest, then the top manifest under its tag: nothing is
tagged before everything it references is in place. Blobs are mounted when source and target
are repositories of the same registry, skipped when present, else streamed (never held whole in
memory). Manifests are copied byte for byte, so digests are preserved. A manifest the target
has already (by digest) is not walked: everything it references is there, only the tag is set.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Protocol, Union

from registry import cancel
from registry import mediatypes as mt
from registry.client import BlobReader, BlobSource, RegistryClient, Repository
from registry.digest import is_digest
from registry.errors import InvalidManifest, RegistryError
from registry.layout import SCHEME as LAYOUT_SCHEME
from registry.layout import OCILayout, parse_layout_ref
from registry.model import Descriptor, Index, Manifest, parse_manifest
from registry.reference import Reference

Report = Callable[..., None]
BLOB_WORKERS = 4


def _no_report(kind: str, message: str, **fields: Any) -> None:
    pass


class Endpoint(Protocol):
    label: str
    identifier: str | None

    def get_manifest(self, ident: str) -> tuple[bytes, Descriptor]: ...
    def has_manifest(self, desc: Descriptor) -> bool: ...
    def put_manifest(self, ident: str, body: bytes, media_type: str) -> None: ...
    def put_blob(self, desc: Descriptor, source: "Endpoint") -> str: ...
    def blob_source(self, desc: Descriptor) -> BlobSource: ...
    def open_blob(self, desc: Descriptor) -> BinaryIO: ...


class RegistryEndpoint:
    def __init__(self, repo: Repository, identifier: str | None) -> None:
        self.repo, self.identifier = repo, identifier
        self.label = f"{repo.ref.registry}/{repo.name}"

    def get_manifest(self, ident: str) -> tuple[bytes, Descriptor]:
        return self.repo.get_manifest(ident)

    def has_manifest(self, desc: Descriptor) -> bool:
        # Asked only of a copy's target, which the manifest PUT needs push on: the same token scope.
        return self.repo.head_manifest(desc.digest, actions="pull,push") is not None

    def put_manifest(self, ident: str, body: bytes, media_type: str) -> None:
        self.repo.put_manifest(ident, body, media_type)

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        return BlobReader(self.repo, desc.digest, desc.size)  # type: ignore[return-value]

    def blob_source(self, desc: Descriptor) -> BlobSource:
        return lambda offset: BlobReader(self.repo, desc.digest, desc.size, offset)  # type: ignore[return-value]

    def put_blob(self, desc: Descriptor, source: Endpoint) -> str:
        # Within one registry, mount straight away (one request; 201 also when already there).
        if (isinstance(source, RegistryEndpoint) and source.repo.host == self.repo.host
                and source.repo.name != self.repo.name and self.repo.mount_blob(desc.digest, source.repo.name)):
            return "mounted"
        if self.repo.head_blob(desc.digest) is not None:
            return "exists"
        self.repo.upload_blob(source.blob_source(desc), digest=desc.digest, size=desc.size, skip_existing=False)
        return "copied"


class LayoutEndpoint:
    def __init__(self, layout: OCILayout, identifier: str | None) -> None:
        self.layout, self.identifier = layout, identifier
        self.label = f"oci:{layout.path}"

    def get_manifest(self, ident: str) -> tuple[bytes, Descriptor]:
        desc = self.layout.resolve(ident)
        body = self.layout.blobs.read(desc.digest)
        from registry.digest import sha256_digest

        if sha256_digest(body) != desc.digest:
            raise RegistryError(f"manifest {desc.digest} in {self.layout.path} is corrupt; copy the image again")
        return body, Descriptor(desc.media_type, desc.digest, len(body), platform=desc.platform)

    def has_manifest(self, desc: Descriptor) -> bool:
        return self.layout.blobs.has(desc.digest)

    def put_manifest(self, ident: str, body: bytes, media_type: str) -> None:
        desc = self.layout.write_manifest(body, media_type)
        if not is_digest(ident):
            self.layout.tag(desc, ident)

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        return self.layout.blobs.open(desc.digest)

    def blob_source(self, desc: Descriptor) -> BlobSource:
        return self.layout.blobs.path(desc.digest)

    def put_blob(self, desc: Descriptor, source: Endpoint) -> str:
        if self.layout.blobs.size(desc.digest) == desc.size:
            return "exists"
        stream = source.open_blob(desc)
        try:  # a registry stream (BlobReader) verifies size and digest at EOF and raises before the rename
            self.layout.blobs.put_stream(stream, desc.digest, verified_by_source=isinstance(stream, BlobReader))
        finally:
            stream.close()
        return "copied"


def open_endpoint(client: RegistryClient, spec: str, create: bool = False) -> Endpoint:
    """`oci:PATH[:REF]` or a registry reference (no default tag)."""
    if spec.startswith(LAYOUT_SCHEME):
        path, ref = parse_layout_ref(spec)
        return LayoutEndpoint(OCILayout(path, create=create), ref)
    parsed = Reference.parse(spec, default_tag=None)
    return RegistryEndpoint(client.repository(parsed), parsed.digest or parsed.tag)


@dataclass
class CopyResult:
    digest: str
    media_type: str
    blobs: dict[str, int] = field(default_factory=lambda: {"copied": 0, "mounted": 0, "exists": 0})
    bytes_copied: int = 0


def copy_image(client: RegistryClient, src: Union[str, Reference], dst: Union[str, Reference],
               report: Report = _no_report, workers: int = BLOB_WORKERS) -> CopyResult:
    """Copy `src` to `dst` (registry references or `oci:PATH:REF`). The top manifest goes to the
    destination's tag, else the source's tag, else by digest only."""
    source = open_endpoint(client, str(src))
    target = open_endpoint(client, str(dst), create=True)
    ident = source.identifier or ("latest" if isinstance(source, RegistryEndpoint) else None)
    body, desc = source.get_manifest(ident)  # type: ignore[arg-type]
    result = CopyResult(desc.digest, desc.media_type)
    if target.has_manifest(desc):
        # One HEAD instead of one request per blob and child: a manifest is only stored after
        # everything it references (distribution checks it on PUT; copies write it last).
        report("cached", f"manifest {desc.digest} already in {target.label}")
        _count_present(body, desc, result)
    else:
        with cancel.Pool(max_workers=max(1, workers)) as pool:
            _copy_tree(source, target, body, desc, result, report, pool, top=True)
    dst_ident = target.identifier or source.identifier or desc.digest
    if is_digest(dst_ident) and dst_ident != desc.digest:
        raise RegistryError(f"cannot copy {src} to {dst}: the destination digest differs from the source's {desc.digest}")
    target.put_manifest(dst_ident, body, desc.media_type)
    report("done", f"copied {src} to {dst} ({desc.digest}): {result.blobs['copied']} blobs copied, "
                   f"{result.blobs['mounted']} mounted, {result.blobs['exists']} already there",
           digest=desc.digest, **result.blobs)
    return result


def _copy_tree(source: Endpoint, target: Endpoint, body: bytes, desc: Descriptor, result: CopyResult,
               report: Report, pool: cancel.Pool, top: bool) -> None:
    parsed = parse_manifest(body, desc.media_type)
    if isinstance(parsed, Index):
        for child in parsed.manifests:
            if not (mt.is_index(child.media_type) or mt.is_image_manifest(child.media_type)):
                raise InvalidManifest(f"{source.label}: index entry {child.digest} has media type "
                                      f"{child.media_type!r}, which kade cannot copy")
            if target.has_manifest(child):
                report("cached", f"manifest {child.digest} ({child.platform_string or 'child'}) already in {target.label}")
                continue
            child_body, child_desc = source.get_manifest(child.digest)
            _copy_tree(source, target, child_body, child_desc, result, report, pool, top=False)
            target.put_manifest(child.digest, child_body, child_desc.media_type)
        return
    assert isinstance(parsed, Manifest)
    unique = _unique_blobs(parsed)

    def one(blob: Descriptor) -> tuple[Descriptor, str]:
        return blob, target.put_blob(blob, source)

    for blob, how in pool.map(one, unique):
        result.blobs[how] += 1
        if how == "copied":
            result.bytes_copied += blob.size
        report("blob" if how == "copied" else "cached", f"{how} {blob.digest} ({_human(blob.size)})",
               digest=blob.digest, size=blob.size, action=how)


def _unique_blobs(manifest: Manifest) -> list[Descriptor]:
    """The blobs a copy moves: each once, without foreign layers (they stay where their urls point)."""
    blobs = [b for b in manifest.blobs() if not b.urls]
    return list({b.digest: b for b in blobs}.values())


def _count_present(body: bytes, desc: Descriptor, result: CopyResult) -> None:
    """An image's blobs all count as already there (an index's children are not fetched to count)."""
    parsed = parse_manifest(body, desc.media_type)
    if isinstance(parsed, Manifest):
        result.blobs["exists"] += len(_unique_blobs(parsed))


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


__all__ = ["copy_image", "CopyResult", "open_endpoint", "RegistryEndpoint", "LayoutEndpoint"]
