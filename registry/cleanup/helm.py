"""Helm 3 release history, read for the cleanup (pure decoding; the listing is in `scan.py`).

Helm stores each revision of a release as a Secret `sh.helm.release.v1.<name>.v<revision>` of type
`helm.sh/release.v1` (the default driver) or a ConfigMap of the same name (the configmap driver),
labelled `owner=helm`, `name`, `version`, `status`. Its `release` key holds
base64(gzip(JSON of the release)); in a Secret the API adds its own base64 on top. Helm reads a value
without the gzip magic as plain JSON (releases written before compression), and so do we. The JSON
names the release (`name`, `namespace`, `version`), its deploy time (`info.last_deployed`), and the
rendered manifests: `manifest` (a multi-document YAML string) and each hook's `manifest`.

Every value is hostile until checked: the encoded size is bounded before decoding, gzip is inflated
with a bound (a 1 MiB bomb would be a GiB), the JSON must have the fields above with their types.
"""
from __future__ import annotations

import base64
import binascii
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from registry.cleanup.manifests import ManifestError, images_in_yaml
from common import jsonsafe

SECRET_TYPE = "helm.sh/release.v1"
OWNER_SELECTOR = "owner=helm"
NAME_PREFIX = "sh.helm.release.v1."
MAX_ENCODED = 4 * 1024 * 1024  # what the API server stores is ~1.5 MiB at most; anything bigger is forged
MAX_JSON = 64 * 1024 * 1024  # a big chart's release (CRDs, templates, values) is a few MiB of JSON
_GZIP_MAGIC = b"\x1f\x8b\x08"


class HelmReleaseError(ValueError):
    """A release object that can't be decoded: its images are unknown."""


@dataclass(frozen=True)
class HelmRelease:
    namespace: str
    name: str
    revision: int
    deployed: datetime | None
    images: tuple[str, ...]


def gunzip_bounded(data: bytes, limit: int) -> bytes:
    """Inflate one gzip member, refusing more than `limit` bytes of output, a truncated stream or
    bytes after it. Raises ValueError."""
    reader = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = reader.decompress(data, limit + 1)
    except zlib.error as exc:
        raise ValueError(f"not gzip ({exc})") from None
    if len(out) > limit:
        raise ValueError(f"inflates to more than {limit} bytes")
    if not reader.eof:
        raise ValueError("the gzip stream is truncated")
    if reader.unused_data:
        raise ValueError("bytes after the gzip stream")
    return out


def release_json(obj: dict[str, Any], kind: str, max_json: int = MAX_JSON) -> bytes:
    """The JSON of one release object (a Secret or a ConfigMap as the API returns it)."""
    data = obj.get("data")
    value = data.get("release") if isinstance(data, dict) else None
    if not isinstance(value, str) or not value:
        raise HelmReleaseError("has no data.release")
    if len(value) > MAX_ENCODED:
        raise HelmReleaseError(f"data.release is {len(value)} bytes, more than any real release ({MAX_ENCODED})")
    try:
        encoded = base64.b64decode(value, validate=True) if kind == "Secret" else value.encode("ascii")
        blob = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise HelmReleaseError("data.release is not base64 (Helm writes base64 of gzip)") from None
    if not blob.startswith(_GZIP_MAGIC):
        if len(blob) > max_json:
            raise HelmReleaseError(f"more than {max_json} bytes of JSON")
        return blob
    try:
        return gunzip_bounded(blob, max_json)
    except ValueError as exc:
        raise HelmReleaseError(f"data.release: {exc}") from None


def decode_release(obj: dict[str, Any], kind: str, max_json: int = MAX_JSON) -> HelmRelease:
    """Decode one release object and scan its manifests; HelmReleaseError says what is wrong."""
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        meta = {}
    where = f"Helm release {kind} {meta.get('namespace', '?')}/{meta.get('name', '?')}"
    try:
        return _decode(obj, kind, meta, max_json, where)
    except (HelmReleaseError, ManifestError) as exc:
        message = str(exc)
        raise HelmReleaseError(message if message.startswith(where) else f"{where}: {message}") from None


def _decode(obj: dict[str, Any], kind: str, meta: dict[str, Any], max_json: int, where: str) -> HelmRelease:
    try:
        doc = jsonsafe.loads(release_json(obj, kind, max_json))
    except (ValueError, UnicodeDecodeError) as exc:
        raise HelmReleaseError(f"the release is not JSON ({str(exc)[:120]})") from None
    if not isinstance(doc, dict):
        raise HelmReleaseError("the release is not a JSON object")
    name, version = doc.get("name"), doc.get("version")
    if not isinstance(name, str) or not name:
        raise HelmReleaseError("the release has no name")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise HelmReleaseError(f"the release version is not a revision number: {version!r}")
    manifests = [doc.get("manifest")]
    hooks = doc.get("hooks")
    if isinstance(hooks, list):
        manifests += [h.get("manifest") for h in hooks if isinstance(h, dict)]
    elif hooks is not None:
        raise HelmReleaseError("hooks is not a list")
    images: dict[str, None] = {}
    for text in manifests:
        if text is None:
            continue
        if not isinstance(text, str):
            raise HelmReleaseError("a manifest is not a string")
        for image in images_in_yaml(text, where):
            images.setdefault(image, None)
    info = doc.get("info")
    if not isinstance(info, dict):
        info = {}
    namespace = meta.get("namespace") if isinstance(meta.get("namespace"), str) else doc.get("namespace")
    return HelmRelease(str(namespace or ""), name, version, parse_time(info.get("last_deployed")), tuple(images))


def parse_time(value: Any) -> datetime | None:
    """An RFC 3339 time (Go writes nanoseconds and offsets) as UTC, or None when absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    text = value.strip().replace("Z", "+00:00").replace("z", "+00:00")
    if "." in text:  # Python reads at most 6 fractional digits
        head, _, rest = text.partition(".")
        digits = len(rest) - len(rest.lstrip("0123456789"))
        text = f"{head}.{rest[:min(digits, 6)]}{rest[digits:]}" if digits else head + rest
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        return None
    return t.astimezone(timezone.utc) if t.tzinfo else None
