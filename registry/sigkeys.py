"""Signing keys as sigstore/cosign keep them: ECDSA P-256 over SHA-256.

Private keys are read from PEM: PKCS#8 (`PRIVATE KEY`), SEC 1 (`EC PRIVATE KEY`), and cosign's
encrypted format (`ENCRYPTED SIGSTORE PRIVATE KEY` / `ENCRYPTED COSIGN PRIVATE KEY`), which is also
the only one `skopeo copy --sign-by-sigstore-private-key` accepts. That format is a JSON document
(go-securesystemslib's `encrypted` package): the PKCS#8 DER sealed with NaCl secretbox
(XSalsa20-Poly1305) under a key derived with scrypt from a passphrase:

    {"kdf": {"name": "scrypt", "params": {"N": 32768, "r": 8, "p": 1}, "salt": "<base64>"},
     "cipher": {"name": "nacl/secretbox", "nonce": "<base64 24 bytes>"}, "ciphertext": "<base64>"}

`cryptography` has Poly1305 but no (X)Salsa20, so the stream cipher is the few lines below (it only
ever runs over a key of ~150 bytes). Public keys are PEM `PUBLIC KEY` (SubjectPublicKeyInfo).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.poly1305 import Poly1305

from registry.errors import SigningKeyError
from common import jsonsafe

ENCRYPTED_PEM_TYPES = (b"ENCRYPTED SIGSTORE PRIVATE KEY", b"ENCRYPTED COSIGN PRIVATE KEY")
_SCRYPT = {"N": 32768, "r": 8, "p": 1}
_SCRYPT_MAX_N = 1 << 20  # a hostile key file must not make us allocate gigabytes


@dataclass(frozen=True)
class PublicKey:
    key: ec.EllipticCurvePublicKey
    source: str  # where it came from, for messages

    def verify(self, payload: bytes, signature: bytes) -> bool:
        try:
            self.key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True

    def pem(self) -> bytes:
        return self.key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True)
class SigningKey:
    key: ec.EllipticCurvePrivateKey
    source: str

    def sign(self, payload: bytes, deterministic: bool = False) -> bytes:
        """An ASN.1 DER ECDSA signature over SHA-256(payload), as cosign and containers/image verify it;
        `deterministic`: RFC 6979 (the same payload, the same signature)."""
        return self.key.sign(payload, ec.ECDSA(hashes.SHA256(), deterministic_signing=deterministic))

    @property
    def public(self) -> PublicKey:
        return PublicKey(self.key.public_key(), self.source)


def generate() -> SigningKey:
    return SigningKey(ec.generate_private_key(ec.SECP256R1()), "generated")


def _p256(key: object, source: str) -> None:
    curve = getattr(key, "curve", None)
    if not isinstance(curve, ec.SECP256R1):
        raise SigningKeyError(f"{source}: not an ECDSA P-256 key (sigstore/cosign key signing uses P-256); "
                        "make one with `kade image keygen`")


def load_private_key(data: bytes, password: bytes | None, source: str) -> SigningKey:
    """A private key from PEM bytes (PKCS#8, SEC 1, or cosign's encrypted format)."""
    der = _pem_body(data, source)
    if der[0] in ENCRYPTED_PEM_TYPES:
        if password is None:
            raise SigningKeyError(f"{source} is encrypted: give its passphrase in $KADE_SIGN_PASSWORD "
                            "(or $COSIGN_PASSWORD)")
        key = serialization.load_der_private_key(decrypt(der[1], password, source), None)
    else:
        try:
            key = serialization.load_pem_private_key(data, password or None)
        except (ValueError, TypeError) as exc:
            raise SigningKeyError(f"{source}: cannot read the private key ({exc})") from None
    _p256(key, source)
    return SigningKey(key, source)  # type: ignore[arg-type]


def load_public_key(data: bytes, source: str) -> PublicKey:
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise SigningKeyError(f"{source}: not a PEM public key ({exc}); expected -----BEGIN PUBLIC KEY-----") from None
    _p256(key, source)
    return PublicKey(key, source)  # type: ignore[arg-type]


def _pem_body(data: bytes, source: str) -> tuple[bytes, bytes]:
    """(PEM type, decoded body) of the first PEM block."""
    text = data.strip()
    if not text.startswith(b"-----BEGIN "):
        raise SigningKeyError(f"{source}: not a PEM key file (no -----BEGIN line)")
    head, _, rest = text.partition(b"\n")
    kind = head[len(b"-----BEGIN "):].rstrip(b"-").strip()
    end = rest.find(b"-----END ")
    if end < 0:
        raise SigningKeyError(f"{source}: PEM block without an END line")
    try:
        return kind, base64.b64decode(b"".join(rest[:end].split()), validate=True)
    except ValueError:
        raise SigningKeyError(f"{source}: the PEM body is not base64") from None


def private_pem(key: SigningKey, password: bytes | None) -> bytes:
    """PEM of a private key: cosign's encrypted format with a passphrase, else unencrypted PKCS#8."""
    der = key.key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    if password is None:
        return key.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())
    body = base64.encodebytes(encrypt(der, password)).replace(b"\n", b"")
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    kind = ENCRYPTED_PEM_TYPES[0]
    return b"\n".join([b"-----BEGIN " + kind + b"-----", *lines, b"-----END " + kind + b"-----", b""])


# ---- go-securesystemslib `encrypted`: scrypt + nacl/secretbox ------------------------------------

def encrypt(plaintext: bytes, password: bytes) -> bytes:
    salt, nonce = os.urandom(32), os.urandom(24)
    key = _scrypt(password, salt, **_SCRYPT)
    doc = {"kdf": {"name": "scrypt", "params": dict(_SCRYPT), "salt": base64.b64encode(salt).decode()},
           "cipher": {"name": "nacl/secretbox", "nonce": base64.b64encode(nonce).decode()},
           "ciphertext": base64.b64encode(secretbox_seal(plaintext, nonce, key)).decode()}
    return json.dumps(doc).encode()


def decrypt(document: bytes, password: bytes, source: str) -> bytes:
    try:
        doc = jsonsafe.loads(document)
        kdf, cipher = doc["kdf"], doc["cipher"]
        if kdf["name"] != "scrypt" or cipher["name"] != "nacl/secretbox":
            raise ValueError(f"unsupported kdf/cipher {kdf['name']}/{cipher['name']}")
        params = {k: int(kdf["params"][k]) for k in ("N", "r", "p")}
        salt, nonce = base64.b64decode(kdf["salt"]), base64.b64decode(cipher["nonce"])
        sealed = base64.b64decode(doc["ciphertext"])
    except (ValueError, KeyError, TypeError) as exc:
        raise SigningKeyError(f"{source}: not a readable encrypted sigstore key ({exc})") from None
    if not (1 < params["N"] <= _SCRYPT_MAX_N and params["r"] * params["p"] <= 64 and len(nonce) == 24):
        raise SigningKeyError(f"{source}: encrypted key with out-of-range parameters; refusing it")
    opened = secretbox_open(sealed, nonce, _scrypt(password, salt, **params))
    if opened is None:
        raise SigningKeyError(f"{source}: wrong passphrase (or a corrupt key file)")
    return opened


def _scrypt(password: bytes, salt: bytes, N: int, r: int, p: int) -> bytes:  # noqa: N803 - scrypt's names
    return hashlib.scrypt(password, salt=salt, n=N, r=r, p=p, dklen=32, maxmem=256 * r * N + (1 << 20))


def secretbox_seal(message: bytes, nonce: bytes, key: bytes) -> bytes:
    stream = _xsalsa20_stream(key, nonce, 32 + len(message))
    cipher = bytes(a ^ b for a, b in zip(message, stream[32:]))
    return Poly1305.generate_tag(stream[:32], cipher) + cipher


def secretbox_open(box: bytes, nonce: bytes, key: bytes) -> bytes | None:
    if len(box) < 16:
        return None
    tag, cipher = box[:16], box[16:]
    stream = _xsalsa20_stream(key, nonce, 32 + len(cipher))
    if not hmac.compare_digest(Poly1305.generate_tag(stream[:32], cipher), tag):
        return None
    return bytes(a ^ b for a, b in zip(cipher, stream[32:]))


_SIGMA = struct.unpack("<4I", b"expand 32-byte k")
_MASK = 0xFFFFFFFF
_DOUBLE_ROUND = ((0, 4, 8, 12), (5, 9, 13, 1), (10, 14, 2, 6), (15, 3, 7, 11),   # columns
                 (0, 1, 2, 3), (5, 6, 7, 4), (10, 11, 8, 9), (15, 12, 13, 14))   # rows


def _rounds(x: list[int]) -> list[int]:
    def qr(a: int, b: int, c: int, d: int) -> None:
        x[b] ^= _rotl((x[a] + x[d]) & _MASK, 7)
        x[c] ^= _rotl((x[b] + x[a]) & _MASK, 9)
        x[d] ^= _rotl((x[c] + x[b]) & _MASK, 13)
        x[a] ^= _rotl((x[d] + x[c]) & _MASK, 18)

    for _ in range(10):
        for a, b, c, d in _DOUBLE_ROUND:
            qr(a, b, c, d)
    return x


def _rotl(v: int, n: int) -> int:
    return ((v << n) | (v >> (32 - n))) & _MASK


def _state(key: bytes, sixteen: bytes) -> list[int]:
    k, n = struct.unpack("<8I", key), struct.unpack("<4I", sixteen)
    return [_SIGMA[0], *k[:4], _SIGMA[1], *n, _SIGMA[2], *k[4:], _SIGMA[3]]


def _xsalsa20_stream(key: bytes, nonce: bytes, length: int) -> bytes:
    h = _rounds(_state(key, nonce[:16]))   # HSalsa20: the subkey, no feed-forward
    subkey = struct.pack("<8I", h[0], h[5], h[10], h[15], h[6], h[7], h[8], h[9])
    out = bytearray()
    counter = 0
    while len(out) < length:
        start = _state(subkey, nonce[16:24] + struct.pack("<Q", counter))
        block = _rounds(list(start))
        out += struct.pack("<16I", *((b + s) & _MASK for b, s in zip(block, start)))
        counter += 1
    return bytes(out[:length])
