"""Signatures a tenant's build key puts on what kade keeps in its stages repository: step images and
build records. Anyone with push rights to a stages repository can push a manifest under any step key
or record tag; with a build key, kade reuses only what that key signed.

The signature travels in the manifest itself, as two annotations:

    io.kade.signature  base64 ASN.1 DER ECDSA P-256 / SHA-256 (registry/sigkeys.py keys, cosign's format)
    io.kade.signer     sha256:<hex> of the public key (SubjectPublicKeyInfo DER), for messages

over the canonical JSON payload

    {"type": "kade stages signature v1", "kind": "step" | "record", "repository": "<host/path>",
     "tag": "<step key or record tag>", "manifest": "sha256:<digest of the manifest without them>"}

so a signed manifest names its repository and tag (it can't be replayed under another key or into
another tenant's repository) and everything else it holds (config and layer digests, annotations).
Checking one costs no request beyond the manifest GET a lookup makes, and one ECDSA verification.
Signatures are deterministic (RFC 6979): the same key and content give the same manifest digest.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Any

from cryptography.hazmat.primitives import serialization

from registry.model import Manifest, canonical_json
from registry.sigkeys import PublicKey, SigningKey
from common import jsonsafe

SIGNATURE = "io.kade.signature"
SIGNER = "io.kade.signer"
TYPE = "kade stages signature v1"


def repository_name(repo: Any) -> str:
    """`host/path` of a registry.client.Repository, as payloads name it."""
    return f"{repo.ref.registry}/{repo.name}"


def key_id(key: PublicKey) -> str:
    der = key.key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def _unsigned(doc: dict[str, Any]) -> bytes:
    """The manifest's canonical bytes without the signature annotations."""
    doc = dict(doc)
    notes = {k: v for k, v in (doc.get("annotations") or {}).items() if k not in (SIGNATURE, SIGNER)}
    doc.pop("annotations", None)
    if notes:
        doc["annotations"] = notes
    return canonical_json(doc)


def payload(kind: str, repository: str, tag: str, doc: dict[str, Any]) -> bytes:
    digest = "sha256:" + hashlib.sha256(_unsigned(doc)).hexdigest()
    return canonical_json({"type": TYPE, "kind": kind, "repository": repository, "tag": tag, "manifest": digest})


def sign(manifest: Manifest, kind: str, repository: str, tag: str, key: SigningKey) -> Manifest:
    """`manifest` with the annotations of `key`'s signature for `repository:tag`."""
    signature = key.sign(payload(kind, repository, tag, manifest.to_dict()), deterministic=True)
    notes = {**(manifest.annotations or {}), SIGNATURE: base64.b64encode(signature).decode(),
             SIGNER: key_id(key.public)}
    return Manifest(manifest.config, list(manifest.layers), manifest.media_type, notes, manifest.subject,
                    manifest.artifact_type)


def problem(body: bytes, kind: str, repository: str, tag: str, key: PublicKey) -> str | None:
    """None when `body` (a manifest as the registry served it) carries `key`'s valid signature for
    `repository:tag`; else why not, in a few words."""
    try:
        doc = jsonsafe.loads(body)
        notes = doc.get("annotations") or {}
        encoded, signer = notes.get(SIGNATURE), notes.get(SIGNER)
    except (ValueError, AttributeError):
        return "not a JSON manifest"
    if not isinstance(encoded, str):
        return "it is not signed"
    if signer != key_id(key):
        return f"it is signed by another key ({str(signer)[:19]}), not by the build key ({key_id(key)[:19]})"
    try:
        signature = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return "its signature is not base64"
    if not key.verify(payload(kind, repository, tag, doc), signature):
        return f"its signature does not match its content (made for another {kind}, or changed after signing)"
    return None
