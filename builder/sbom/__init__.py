"""SBOMs of images, from their layers (never unpacked, never with a tool inside the image).

    layers = [blob_layer(digest, lambda: open(blob, "rb")) for ...]     # bottom first
    document, media_type, packages = generate(layers, Subject(...), fmt="spdx", cache_dir=...)

walk.py: the final filesystem's package files, layer by layer (whiteouts and opaque dirs applied);
packages.py and golang.py: the parsers; licenses.py: SPDX license expressions; documents.py: SPDX 2.3
and CycloneDX 1.5 JSON, and reading them back for diffs.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Sequence

from builder.sbom.documents import CYCLONEDX_MEDIA_TYPE, SPDX_MEDIA_TYPE, Subject, cyclonedx, spdx
from builder.sbom.packages import Package
from common import jsonsafe

# walk.py (and the tar reader under it) only where layers are read: an image whose inventory is kept
# (every rebuild of the same layers) renders its SBOM without loading them (start-up time).
if TYPE_CHECKING:
    from builder.sbom.walk import LayerInput
    from builder.tarformat import TocEntry


def __getattr__(name: str) -> Any:
    """`builder.sbom.LayerInput`, loaded on first use."""
    if name == "LayerInput":
        from builder.sbom.walk import LayerInput

        return LayerInput
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

FORMATS = {"spdx": (spdx, SPDX_MEDIA_TYPE), "cyclonedx": (cyclonedx, CYCLONEDX_MEDIA_TYPE)}
INVENTORY_MEDIA_TYPE = "application/vnd.kade.sbom-inventory.v1+json"
INVENTORY_VERSION = 1


class _Decompressed:
    """An uncompressed, size-bounded tar stream over a layer blob (closing it closes the blob). Unlike
    unpacking, nothing here needs the diffID, so the stream is counted, not hashed."""

    def __init__(self, blob: BinaryIO, digest: str) -> None:
        from builder.unpack import Inflated, Limits

        self.blob = blob
        self.inner = Inflated(blob, Limits.from_env().max_bytes, digest, hashed=False)  # beside the parsing, as in unpack
        self.read = self.inner.read

    def close(self) -> None:
        self.inner.close()
        self.blob.close()


def blob_layer(digest: str, open_blob: Callable[[], BinaryIO], toc: Sequence[TocEntry] | None = None) -> LayerInput:
    """A layer read from its (gzip, zstd or plain) blob `digest`: `open_blob` must verify it (a registry
    BlobReader does at EOF, which the scan reads to; the local blob cache is content-addressed). `toc`:
    the blob's table of contents, when kade wrote it in this process (its headers are then not parsed)."""
    from builder.sbom.walk import LayerInput

    return LayerInput(digest, lambda: _Decompressed(open_blob(), digest), toc)  # type: ignore[arg-type, return-value]


@dataclass
class Inventory:
    """What an image's filesystem holds: a pure function of its layers (so it can be kept and reused
    for any image with those layers, whatever its digest)."""
    packages: list[Package]
    os_release: dict[str, str]
    notes: list[str]

    def to_json(self) -> bytes:
        return json.dumps({"version": INVENTORY_VERSION, "packages": [p.to_dict() for p in self.packages],
                           "os": self.os_release, "notes": self.notes}, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "Inventory":
        doc = jsonsafe.loads(data)
        if not isinstance(doc, dict) or doc.get("version") != INVENTORY_VERSION:
            raise ValueError("not a kade SBOM inventory of this version")
        return cls([Package.from_dict(p) for p in doc["packages"]], dict(doc["os"]), list(doc["notes"]))


def scan(layers: list[LayerInput], cache_dir: Path | None = None,
         report: Callable[..., None] | None = None) -> Inventory:
    from builder.sbom.walk import inventory, scan_image

    state = scan_image(layers, cache_dir, report)
    packages, os_facts = inventory(state)
    return Inventory(packages, os_facts, list(state.notes))


def render(found: Inventory, subject: Subject, fmt: str = "spdx") -> tuple[bytes, str]:
    """(document bytes, media type) of an SBOM in format `fmt`."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown SBOM format {fmt!r}: expected one of {', '.join(FORMATS)}")
    make, media_type = FORMATS[fmt]
    return make(found.packages, found.os_release, subject, found.notes), media_type


def generate(layers: list[LayerInput], subject: Subject, fmt: str = "spdx", cache_dir: Path | None = None,
             report: Callable[..., None] | None = None) -> tuple[bytes, str, list[Package]]:
    """(document bytes, its media type, the packages) of the image whose layers these are."""
    found = scan(layers, cache_dir, report)
    return (*render(found, subject, fmt), found.packages)


__all__ = ["generate", "scan", "render", "Inventory", "blob_layer", "Subject", "Package", "LayerInput", "FORMATS",
           "INVENTORY_MEDIA_TYPE"]
