"""SBOMs of images, from their layers (never unpacked, never with a tool inside the image).

    layers = [blob_layer(diff_id, lambda: open(blob, "rb")) for ...]     # bottom first
    document, media_type, packages = generate(layers, Subject(...), fmt="spdx", cache_dir=...)

walk.py: the final filesystem's package files, layer by layer (whiteouts and opaque dirs applied);
packages.py and golang.py: the parsers; licenses.py: SPDX license expressions; documents.py: SPDX 2.3
and CycloneDX 1.5 JSON, and reading them back for diffs.
"""
from __future__ import annotations

from pathlib import Path
from typing import BinaryIO, Callable

from builder.sbom.documents import CYCLONEDX_MEDIA_TYPE, SPDX_MEDIA_TYPE, Subject, cyclonedx, spdx
from builder.sbom.packages import Package
from builder.sbom.walk import LayerInput, inventory, scan_image

FORMATS = {"spdx": (spdx, SPDX_MEDIA_TYPE), "cyclonedx": (cyclonedx, CYCLONEDX_MEDIA_TYPE)}


class _Decompressed:
    """An uncompressed, size-bounded tar stream over a layer blob (closing it closes the blob)."""

    def __init__(self, blob: BinaryIO, diff_id: str) -> None:
        from builder.unpack import Limits, _Metered, open_decompressed

        self.blob = blob
        self.inner = open_decompressed(blob)
        self.metered = _Metered(self.inner, Limits.from_env().max_bytes, diff_id)

    def read(self, n: int = -1) -> bytes:
        return self.metered.read(n)

    def close(self) -> None:
        if self.inner is not self.blob and hasattr(self.inner, "close"):
            self.inner.close()
        self.blob.close()


def blob_layer(diff_id: str, open_blob: Callable[[], BinaryIO]) -> LayerInput:
    """A layer read from its (gzip, zstd or plain) blob."""
    return LayerInput(diff_id, lambda: _Decompressed(open_blob(), diff_id))  # type: ignore[arg-type, return-value]


def generate(layers: list[LayerInput], subject: Subject, fmt: str = "spdx", cache_dir: Path | None = None,
             report: Callable[..., None] | None = None) -> tuple[bytes, str, list[Package]]:
    """(document bytes, its media type, the packages) of the image whose layers these are."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown SBOM format {fmt!r}: expected one of {', '.join(FORMATS)}")
    state = scan_image(layers, cache_dir, report)
    packages, os_facts = inventory(state)
    render, media_type = FORMATS[fmt]
    return render(packages, os_facts, subject, state.notes), media_type, packages


__all__ = ["generate", "blob_layer", "Subject", "Package", "LayerInput", "FORMATS"]
