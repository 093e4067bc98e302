"""The wire documents of the image model: descriptors, platforms, image manifests (OCI and Docker
v2) and indexes (OCI index and Docker manifest list). Pure data with strict parsing of untrusted JSON
and stable serialisation (`to_bytes`): the same object always gives the same bytes. The image config
is registry/imageconfig.py; an image and its layers composed are registry/image.py.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Union

from registry import mediatypes as mt
from registry.digest import is_digest
from registry.errors import InvalidManifest
from common import jsonsafe


def canonical_json(obj: Any) -> bytes:
    """Stable, compact JSON bytes (sorted keys, no whitespace, UTF-8)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _require(cond: bool, what: str) -> None:
    if not cond:
        raise InvalidManifest(what)


def _str_map(value: Any, what: str) -> dict[str, str] | None:
    if value is None:
        return None
    _require(isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()),
             f"{what} must be an object of strings")
    return dict(value)


@dataclass
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] | None = None
    platform: dict[str, Any] | None = None
    urls: list[str] | None = None
    artifact_type: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.urls:
            out["urls"] = list(self.urls)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform:
            out["platform"] = dict(self.platform)
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        return out

    @classmethod
    def from_dict(cls, d: Any, what: str = "descriptor") -> "Descriptor":
        _require(isinstance(d, dict), f"{what} must be a JSON object")
        media_type, digest, size = d.get("mediaType"), d.get("digest"), d.get("size")
        _require(isinstance(media_type, str) and media_type != "", f"{what}: mediaType must be a non-empty string")
        _require(isinstance(digest, str) and is_digest(digest), f"{what}: invalid digest {digest!r}")
        _require(isinstance(size, int) and not isinstance(size, bool) and size >= 0,
                 f"{what}: size must be a non-negative integer, got {size!r}")
        urls = d.get("urls")
        _require(urls is None or (isinstance(urls, list) and all(isinstance(u, str) for u in urls)),
                 f"{what}: urls must be a list of strings")
        platform = d.get("platform")
        _require(platform is None or isinstance(platform, dict), f"{what}: platform must be an object")
        if platform is not None:
            _require(isinstance(platform.get("os"), str) and isinstance(platform.get("architecture"), str),
                     f"{what}: platform needs os and architecture strings")
        artifact_type = d.get("artifactType")
        _require(artifact_type is None or isinstance(artifact_type, str), f"{what}: artifactType must be a string")
        return cls(media_type, digest, size, _str_map(d.get("annotations"), f"{what}: annotations"),
                   platform, urls, artifact_type)

    @property
    def platform_string(self) -> str:
        return str(Platform.of(self.platform)) if self.platform else ""


# containerd's normalisation (platforms.Normalize): the names tools write for one architecture, and the
# variant each implies, so that `linux/arm64/v8`, `linux/aarch64` and `linux/arm64` are one platform.
_ARCH_ALIASES = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64", "i386": "386", "i686": "386",
                 "armhf": "arm", "armel": "arm"}
_ALIAS_VARIANT = {"armhf": "v7", "armel": "v6"}
_DEFAULT_VARIANT = {("amd64", "v1"): "", ("arm64", "v8"): "", ("arm64", "8"): "", ("arm64", "v8.0"): "",
                    ("arm64", "9"): "v9", ("arm64", "9.0"): "v9", ("arm64", "v9.0"): "v9",
                    ("arm", ""): "v7", ("arm", "7"): "v7", ("arm", "5"): "v5", ("arm", "6"): "v6",
                    ("arm", "8"): "v8"}


@dataclass(frozen=True)
class Platform:
    """os/architecture[/variant] of an image (an index entry's `platform`, a build's --platform)."""

    os: str
    architecture: str
    variant: str = ""

    @classmethod
    def parse(cls, text: str) -> "Platform":
        """`linux/amd64`, `linux/arm64/v8` (no validation of the names: a registry may list any)."""
        os_name, _, rest = text.partition("/")
        arch, _, variant = rest.partition("/")
        return cls(os_name, arch, variant)

    @classmethod
    def of(cls, doc: dict[str, Any]) -> "Platform":
        """The platform of a descriptor's `platform` object (or an image config's top-level fields)."""
        return cls(str(doc.get("os") or ""), str(doc.get("architecture") or ""), str(doc.get("variant") or ""))

    def normalized(self) -> "Platform":
        """The canonical names (containerd's): lower case, `aarch64` -> `arm64`, `arm64/v8` -> `arm64`,
        `arm` -> `arm/v7`, `x86_64` -> `amd64`."""
        arch, variant = self.architecture.lower(), self.variant.lower()
        variant = _ALIAS_VARIANT.get(arch, variant)
        arch = _ARCH_ALIASES.get(arch, arch)
        variant = _DEFAULT_VARIANT.get((arch, variant), variant)
        return Platform(self.os.lower(), arch, variant)

    def matches(self, other: "Platform") -> bool:
        """Whether `other` (what a registry offers) serves this (what is asked for): same os and
        architecture once normalised, and the same variant when this one names one."""
        want, have = self.normalized(), other.normalized()
        return (want.os, want.architecture) == (have.os, have.architecture) and \
            (not want.variant or want.variant == have.variant)

    def to_dict(self) -> dict[str, str]:
        """An index entry's `platform` object."""
        out = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            out["variant"] = self.variant
        return out

    def __str__(self) -> str:
        return "/".join(x for x in (self.os, self.architecture, self.variant) if x)


def _envelope(media_type: str, artifact_type: str | None, body: dict[str, Any], subject: Descriptor | None,
              annotations: dict[str, str] | None) -> dict[str, Any]:
    """The fields manifests and indexes share, around their own `body`, in a fixed order."""
    out: dict[str, Any] = {"schemaVersion": 2, "mediaType": media_type}
    if artifact_type:
        out["artifactType"] = artifact_type
    out.update(body)
    if subject:
        out["subject"] = subject.to_dict()
    if annotations:
        out["annotations"] = dict(annotations)
    return out


def _common_fields(d: dict[str, Any], what: str) -> dict[str, Any]:
    """Validate and convert the shared fields (schemaVersion, annotations, subject, artifactType)."""
    _require(d.get("schemaVersion") == 2, f"{what}: schemaVersion must be 2, got {d.get('schemaVersion')!r}")
    subject, artifact_type = d.get("subject"), d.get("artifactType")
    _require(artifact_type is None or isinstance(artifact_type, str), f"{what}: artifactType must be a string")
    return {
        "annotations": _str_map(d.get("annotations"), f"{what} annotations"),
        "subject": Descriptor.from_dict(subject, f"{what} subject") if subject is not None else None,
        "artifact_type": artifact_type,
    }


def _compact(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass
class Manifest:
    """An image manifest (OCI image manifest or Docker v2 schema 2)."""

    config: Descriptor
    layers: list[Descriptor]
    media_type: str = mt.OCI_MANIFEST
    annotations: dict[str, str] | None = None
    subject: Descriptor | None = None
    artifact_type: str | None = None

    def to_dict(self) -> dict[str, Any]:
        body = {"config": self.config.to_dict(), "layers": [layer.to_dict() for layer in self.layers]}
        return _envelope(self.media_type, self.artifact_type, body, self.subject, self.annotations)

    def to_bytes(self) -> bytes:
        return _compact(self.to_dict())

    def blobs(self) -> list[Descriptor]:
        """Config then layers: what must be in the repository before this manifest is pushed."""
        return [self.config, *self.layers]

    @classmethod
    def from_dict(cls, d: dict[str, Any], media_type: str) -> "Manifest":
        common = _common_fields(d, "image manifest")
        layers = d.get("layers")
        if not isinstance(layers, list):
            raise InvalidManifest("image manifest: layers must be a list")
        return cls(config=Descriptor.from_dict(d.get("config"), "image manifest config"),
                   layers=[Descriptor.from_dict(x, f"image manifest layer {i}") for i, x in enumerate(layers)],
                   media_type=media_type, **common)


@dataclass
class Index:
    """An OCI image index or a Docker manifest list."""

    manifests: list[Descriptor]
    media_type: str = mt.OCI_INDEX
    annotations: dict[str, str] | None = None
    subject: Descriptor | None = None
    artifact_type: str | None = None

    def to_dict(self) -> dict[str, Any]:
        body = {"manifests": [m.to_dict() for m in self.manifests]}
        return _envelope(self.media_type, self.artifact_type, body, self.subject, self.annotations)

    def to_bytes(self) -> bytes:
        return _compact(self.to_dict())

    def for_platform(self, platform: Platform) -> Descriptor | None:
        """The first entry serving `platform` (see Platform.matches), or None."""
        return next((d for d in self.manifests if d.platform and platform.matches(Platform.of(d.platform))), None)

    @classmethod
    def from_dict(cls, d: dict[str, Any], media_type: str) -> "Index":
        common = _common_fields(d, "index")
        manifests = d.get("manifests")
        if not isinstance(manifests, list):
            raise InvalidManifest("index: manifests must be a list")
        return cls(manifests=[Descriptor.from_dict(x, f"index entry {i}") for i, x in enumerate(manifests)],
                   media_type=media_type, **common)


AnyManifest = Union[Manifest, Index]


def detect_media_type(doc: dict[str, Any], declared: str | None) -> str:
    """The media type of a manifest document: its own mediaType field, else the declared one
    (e.g. a Content-Type header), else guessed from its shape (OCI allows omitting mediaType)."""
    own = doc.get("mediaType")
    _require(own is None or isinstance(own, str), "manifest: mediaType must be a string")
    declared = (declared or "").split(";", 1)[0].strip() or None
    if own and declared in mt.ALL_MANIFESTS and own != declared:
        raise InvalidManifest(f"manifest says mediaType {own!r} but was served as {declared!r}")
    if own:
        return own
    if declared in mt.ALL_MANIFESTS:
        return declared
    if "manifests" in doc:
        return mt.OCI_INDEX
    if "config" in doc:
        return mt.OCI_MANIFEST
    raise InvalidManifest("manifest has no mediaType and neither 'config' nor 'manifests'")


def parse_manifest(body: bytes, media_type: str | None = None) -> AnyManifest:
    """Parse manifest bytes (untrusted) into a Manifest or Index; raise InvalidManifest."""
    try:
        doc = jsonsafe.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidManifest(f"manifest is not valid JSON: {exc}") from None
    _require(isinstance(doc, dict), "manifest must be a JSON object")
    kind = detect_media_type(doc, media_type)
    if kind in mt.INDEXES:
        return Index.from_dict(doc, kind)
    if kind in mt.IMAGE_MANIFESTS:
        return Manifest.from_dict(doc, kind)
    if kind == mt.DOCKER_MANIFEST_V1_SIGNED:
        raise InvalidManifest("Docker schema 1 manifests are not supported: push the image again with a current tool")
    raise InvalidManifest(f"unsupported manifest media type {kind!r}")
