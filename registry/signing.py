"""Signatures as sigstore/cosign key-based signing stores them, which containers/image (skopeo,
podman: `sigstoreSigned` policy with `use-sigstore-attachments: true`) and `cosign verify --key` read.

- The payload is a "simple signing" document naming the signed manifest digest and the reference
  it was signed for:
      {"critical": {"identity": {"docker-reference": "host/repo:tag"},
                    "image": {"docker-manifest-digest": "sha256:..."},
                    "type": "cosign container image signature"},
       "optional": {"creator": "kade ..."}}
- The signature is ECDSA P-256 over SHA-256 of the payload bytes (ASN.1 DER, base64).
- All signatures of manifest `sha256:<hex>` live in one OCI manifest tagged `sha256-<hex>.sig` in the
  same repository: one layer per signature, media type `application/vnd.dev.cosign.simplesigning.v1+json`,
  its blob the payload, annotation `dev.cosignproject.cosign/signature` the base64 signature.

Adding a signature is a read-modify-write of that tag (`registry.referrers.update_tag`).
"""
from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass
from typing import Any, Iterable

from registry import mediatypes as mt
from registry.digest import is_digest, sha256_digest
from registry.errors import InvalidManifest, NotFound, RegistryError
from registry.model import Descriptor, Manifest, canonical_json, parse_manifest
from registry.referrers import update_tag
from registry.sigkeys import PublicKey, SigningKey
from common import jsonsafe

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
SIGNATURE_TYPE = "cosign container image signature"
MAX_SIGNATURES = 256          # layers of one .sig manifest read; more is hostile
MAX_PAYLOAD = 64 << 10        # a simple signing payload is a few hundred bytes


def signature_tag(digest: str) -> str:
    """`sha256-<hex>.sig`: where the signatures of manifest `digest` live."""
    algo, _, hexpart = digest.partition(":")
    return f"{algo}-{hexpart}.sig"


def payload(docker_reference: str, manifest_digest: str, creator: str) -> bytes:
    doc = {"critical": {"identity": {"docker-reference": docker_reference},
                        "image": {"docker-manifest-digest": manifest_digest},
                        "type": SIGNATURE_TYPE},
           "optional": {"creator": creator}}
    return canonical_json(doc)


@dataclass(frozen=True)
class Payload:
    docker_reference: str
    manifest_digest: str
    optional: dict[str, Any]


def parse_payload(data: bytes) -> Payload:
    """The critical fields of a (signature-verified) simple signing payload; InvalidManifest if malformed."""
    try:
        doc = jsonsafe.loads(data)
        critical = doc["critical"]
        if critical["type"] != SIGNATURE_TYPE:
            raise ValueError(f"type {critical['type']!r}")
        digest = critical["image"]["docker-manifest-digest"]
        reference = critical["identity"]["docker-reference"]
        if not (isinstance(digest, str) and is_digest(digest) and isinstance(reference, str)):
            raise ValueError("digest or reference of the wrong type")
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidManifest(f"not a simple signing payload: {exc}") from None
    optional = doc.get("optional")
    return Payload(reference, digest, optional if isinstance(optional, dict) else {})


@dataclass(frozen=True)
class Signature:
    payload: bytes
    signature: bytes  # DER
    layer: Descriptor


def signature_config(layers: list[Descriptor]) -> bytes:
    """The config cosign writes for a .sig image: an empty image whose diff_ids are the payloads."""
    return canonical_json({"architecture": "", "os": "", "config": {},
                           "rootfs": {"type": "layers", "diff_ids": [d.digest for d in layers]}})


def signature_layer(key: SigningKey, body: bytes) -> Descriptor:
    sig = base64.b64encode(key.sign(body)).decode()
    return Descriptor(SIMPLE_SIGNING, sha256_digest(body), len(body), annotations={SIGNATURE_ANNOTATION: sig})


def signature_manifest(layers: list[Descriptor]) -> tuple[bytes, bytes]:
    """(config bytes, manifest bytes) of a .sig manifest holding these signature layers."""
    config = signature_config(layers)
    manifest = Manifest(Descriptor(mt.OCI_CONFIG, sha256_digest(config), len(config)), layers, mt.OCI_MANIFEST)
    return config, manifest.to_bytes()


def sign(repo: Any, manifest_digest: str, docker_reference: str, key: SigningKey, creator: str) -> Descriptor:
    """Sign `manifest_digest` for `docker_reference` and add the signature to its `.sig` manifest
    (kept: every signature already there). Returns the signature's layer descriptor."""
    body = payload(docker_reference, manifest_digest, creator)
    layer = signature_layer(key, body)
    repo.upload_blob(io.BytesIO(body), layer.digest, layer.size)
    public = key.public

    def add(current: bytes | None) -> bytes | None:
        layers = _layers(current, repo, manifest_digest) if current is not None else []
        if any(_same_signer(d, body, public) for d in layers):
            return None  # already signed by this key for this reference: nothing to write
        config, manifest = signature_manifest(layers + [layer])
        repo.upload_blob(io.BytesIO(config), sha256_digest(config), len(config))
        return manifest

    def has(current: bytes) -> bool:
        return any(_same_signer(d, body, public) for d in _layers(current, repo, manifest_digest))

    update_tag(repo, signature_tag(manifest_digest), add, has)
    return layer


def _same_signer(existing: Descriptor, body: bytes, key: PublicKey) -> bool:
    """A layer holding the same payload signed by the same key (ECDSA signatures differ each time, so
    two signatures by one key are told apart by verifying, not by comparing)."""
    if existing.digest != sha256_digest(body):
        return False
    try:
        sig = base64.b64decode((existing.annotations or {}).get(SIGNATURE_ANNOTATION, ""), validate=True)
    except (binascii.Error, ValueError):
        return False
    return bool(sig) and key.verify(body, sig)


def _layers(body: bytes, repo: Any, manifest_digest: str) -> list[Descriptor]:
    manifest = parse_manifest(body)
    if not isinstance(manifest, Manifest):
        raise InvalidManifest(f"{signature_tag(manifest_digest)} in {repo.name} is not an image manifest")
    return list(manifest.layers[:MAX_SIGNATURES])


def read_signatures(repo: Any, manifest_digest: str) -> list[Signature]:
    """Every signature stored for `manifest_digest` (none verified yet); [] when it has none.
    Layers of another media type, oversized payloads or malformed annotations are skipped."""
    try:
        body, _ = repo.get_manifest(signature_tag(manifest_digest), mt.OCI_MANIFEST)
    except NotFound:
        return []
    out = []
    for layer in _layers(body, repo, manifest_digest):
        sig = (layer.annotations or {}).get(SIGNATURE_ANNOTATION)
        if layer.media_type != SIMPLE_SIGNING or not sig or layer.size > MAX_PAYLOAD:
            continue
        try:
            signature = base64.b64decode(sig, validate=True)
        except (binascii.Error, ValueError):
            continue
        with repo.open_blob(layer.digest, layer.size) as stream:
            data = stream.read(MAX_PAYLOAD + 1)
            while stream.read(1 << 16):
                pass  # to EOF: the reader checks the digest there
        out.append(Signature(data, signature, layer))
    return out


@dataclass(frozen=True)
class Verified:
    key: PublicKey
    payload: Payload


def verify(signatures: Iterable[Signature], manifest_digest: str, keys: list[PublicKey],
           repository: str | None = None) -> tuple[list[Verified], list[str]]:
    """(signatures that verify with one of `keys` and name `manifest_digest` [and `repository`],
    why each of the others does not)."""
    good: list[Verified] = []
    problems: list[str] = []
    for sig in signatures:
        key = next((k for k in keys if k.verify(sig.payload, sig.signature)), None)
        if key is None:
            problems.append(f"signature {sig.layer.digest[:19]} is not by any of the keys given")
            continue
        try:
            parsed = parse_payload(sig.payload)
        except RegistryError as exc:
            problems.append(f"signature {sig.layer.digest[:19]}: {exc}")
            continue
        if parsed.manifest_digest != manifest_digest:
            problems.append(f"signature {sig.layer.digest[:19]} signs {parsed.manifest_digest}, not {manifest_digest}")
            continue
        if repository is not None and _repository_of(parsed.docker_reference) != repository:
            problems.append(f"signature {sig.layer.digest[:19]} was made for {parsed.docker_reference}, "
                            f"not for repository {repository}")
            continue
        good.append(Verified(key, parsed))
    return good, problems


def _repository_of(reference: str) -> str:
    """`host/repo` of `host/repo:tag` or `host/repo@digest` (as the identity is written)."""
    name = reference.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


__all__ = ["sign", "read_signatures", "verify", "signature_tag", "payload", "parse_payload", "Signature",
           "Verified", "SIMPLE_SIGNING", "SIGNATURE_ANNOTATION"]
