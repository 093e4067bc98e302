"""An image and its layers, composed from the wire documents (go-containerregistry's shape).

A `Layer` is a blob with two identities: its digest (the bytes as stored, compressed) and its diffID
(the uncompressed tar, what the config's rootfs lists and ChainIDs are made of), plus a lazy way to
read it (`open()`: from a local cache, a registry, a layout; nothing is read until asked). An `Image`
is a manifest, its config and where its blobs can be read from (`source`: "host/repository", or ""
for an image that exists only locally); `layers` pairs the manifest's layer descriptors with the
config's diffIDs. `Image.assemble` makes a new OCI image from a config and layers: the config blob,
the manifest and its digest, all stable. A multi-platform image is an `ImageIndex`: a
`registry.model.Index` whose entries name each platform's manifest, with those images.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import BinaryIO, Callable, ContextManager, Sequence

from registry import mediatypes as mt
from registry.digest import sha256_digest
from registry.errors import InvalidManifest
from registry.imageconfig import ImageConfig
from registry.model import Descriptor, Index, Manifest, Platform

Opener = Callable[[], ContextManager[BinaryIO]]   # a file, or a context manager giving one
_OCI_FOR_DOCKER = {mt.DOCKER_LAYER_GZIP: mt.OCI_LAYER_GZIP}


def _no_opener() -> BinaryIO:
    raise InvalidManifest("this layer has no source to be read from")


@dataclass(frozen=True)
class Layer:
    descriptor: Descriptor                               # media type, digest and size of the stored blob
    diff_id: str                                         # sha256 of the uncompressed tar
    opener: Opener = field(default=_no_opener, compare=False, repr=False)

    @property
    def digest(self) -> str:
        return self.descriptor.digest

    @property
    def media_type(self) -> str:
        return self.descriptor.media_type

    @property
    def size(self) -> int:
        return self.descriptor.size

    def open(self) -> ContextManager[BinaryIO]:
        """The stored (compressed) blob, read lazily from wherever this layer lives (`with layer.open() as f`)."""
        return self.opener()

    def as_oci(self) -> "Layer":
        """The same blob described with OCI media types (a Docker gzip layer is byte-for-byte one)."""
        d = self.descriptor
        media_type = _OCI_FOR_DOCKER.get(d.media_type, d.media_type)
        return self if media_type == d.media_type and not d.annotations else \
            replace(self, descriptor=Descriptor(media_type, d.digest, d.size, urls=d.urls))


@dataclass(frozen=True)
class Image:
    manifest: Manifest
    config: ImageConfig
    digest: str                      # of the manifest bytes
    source: str = ""                 # "host/repository" its blobs can be read from; "" when only local

    @cached_property   # the value is frozen: written once, read by keep_local, push, publish...
    def manifest_bytes(self) -> bytes:
        return self.manifest.to_bytes()

    @cached_property
    def config_bytes(self) -> bytes:
        return self.config.to_bytes()

    @property
    def descriptor(self) -> Descriptor:
        return Descriptor(self.manifest.media_type, self.digest, len(self.manifest_bytes))

    def layers(self, opener: Callable[[Descriptor], Opener] | None = None) -> list[Layer]:
        """The manifest's layers with their diffIDs (an image whose config does not list one diffID per
        layer is refused); `opener(descriptor)` says how to read each."""
        diff_ids = list(self.config.diff_ids or ())
        if len(diff_ids) != len(self.manifest.layers):
            raise InvalidManifest(f"image {self.source or 'local'}@{self.digest} has {len(self.manifest.layers)} "
                                  f"layers but {len(diff_ids)} diff_ids in its config; rebuild or re-push that image")
        return [Layer(d, diff_id, opener(d) if opener else _no_opener) for d, diff_id in zip(self.manifest.layers,
                                                                                           diff_ids)]

    @classmethod
    def assemble(cls, config: ImageConfig, layers: Sequence[Layer | Descriptor],
                 annotations: dict[str, str] | None = None, source: str = "") -> "Image":
        """A new OCI image of `config` over `layers` (OCI media types; the config's diffIDs are its own)."""
        config_bytes = config.to_bytes()
        descriptors = [(x.as_oci().descriptor if isinstance(x, Layer) else Layer(x, "").as_oci().descriptor)
                       for x in layers]
        manifest = Manifest(config=Descriptor(mt.OCI_CONFIG, sha256_digest(config_bytes), len(config_bytes)),
                            layers=descriptors, media_type=mt.OCI_MANIFEST, annotations=annotations or None)
        return cls(manifest, config, sha256_digest(manifest.to_bytes()), source)

    def at(self, source: str) -> "Image":
        """The same image, read from `source`."""
        return self if source == self.source else replace(self, source=source)


@dataclass(frozen=True)
class ImageIndex:
    """A multi-platform image: an OCI index and the image of each entry, in order."""
    index: Index
    images: tuple[Image, ...]
    digest: str                      # of the index bytes

    @property
    def index_bytes(self) -> bytes:
        return self.index.to_bytes()

    @property
    def descriptor(self) -> Descriptor:
        return Descriptor(self.index.media_type, self.digest, len(self.index_bytes))

    @classmethod
    def assemble(cls, images: Sequence[Image], annotations: dict[str, str] | None = None,
                 platforms: Sequence[Platform] | None = None) -> "ImageIndex":
        """An OCI index of `images`, one per platform: `platforms` (what each was built for), else each
        config's own."""
        platforms = list(platforms) if platforms is not None else [img.config.platform for img in images]
        seen: dict[Platform, str] = {}
        for img, p in zip(images, platforms, strict=True):
            if p.normalized() in seen:
                raise InvalidManifest(f"two images for platform {p} in one index: {seen[p.normalized()]} and "
                                      f"{img.digest}")
            seen[p.normalized()] = img.digest
        entries = [Descriptor(img.manifest.media_type, img.digest, len(img.manifest_bytes), platform=p.to_dict())
                   for img, p in zip(images, platforms)]
        index = Index(entries, media_type=mt.OCI_INDEX, annotations=annotations or None)
        return cls(index, tuple(images), sha256_digest(index.to_bytes()))
