"""Errors raised by registry/: one base class, subclasses per failure the caller can act on.

Every message names the registry and repository involved and says what to do next; none ever
contains a password or token.
"""
from __future__ import annotations


class RegistryError(Exception):
    """Base class of every expected registry failure (the CLI prints it without a traceback)."""


class InvalidReference(RegistryError, ValueError):
    """An image reference that does not follow Docker's grammar."""


class InvalidDigest(RegistryError, ValueError):
    """A digest string that is not `algorithm:hex` of a supported algorithm."""


class InvalidManifest(RegistryError, ValueError):
    """Manifest or config bytes that cannot be parsed as the media type they claim."""


class NotFound(RegistryError):
    """The manifest, blob, tag or repository does not exist."""


class Unauthorized(RegistryError):
    """401/403: the credentials tried (their source, never the secret) did not grant access."""


class DigestMismatch(RegistryError):
    """Content whose digest differs from the one expected."""


class RegistryUnavailable(RegistryError):
    """The registry could not be reached, or kept failing after the retries."""


class Unsupported(RegistryError):
    """The registry does not support an operation (e.g. deletion disabled)."""


class UploadError(RegistryError):
    """A blob upload failed in a way that retrying the same session can't fix."""


class LayoutError(RegistryError):
    """A local OCI image layout that is missing, malformed, or lacks a reference."""


class SigningKeyError(RegistryError):
    """A signing or verification key that cannot be read or used (format, passphrase, not ECDSA P-256)."""


class VerificationError(RegistryError):
    """An image or attestation whose signature, provenance or builder does not pass a check."""
