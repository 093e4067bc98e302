"""Plain HTTPS downloads (`ADD <url>` in a Dockerfile), with the registry client's retry policy:
streamed to a file in the destination folder, hashed on the way, verified against an expected
sha256 when one is given, renamed into place only when whole. Memory stays bounded."""
from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import requests

from registry.errors import RegistryError
from registry.transport import RetryPolicy, retry_delay, should_retry_status

BLOCK = 1 << 20


class DownloadError(RegistryError):
    """A URL could not be fetched or did not match its checksum."""


def download(url: str, folder: Path, checksum: str | None = None, *, ca_file: str | None = None,
             retry: RetryPolicy = RetryPolicy(), timeout: float = 60.0) -> tuple[Path, str]:
    """Fetch `url` into `folder` (named after the URL's last path segment, mode 0600); return the path
    and its `sha256:` digest. `checksum` (`sha256:<hex>`) is verified before the file appears."""
    if checksum and not checksum.startswith("sha256:"):
        raise DownloadError(f"--checksum={checksum}: only sha256:<hex> is supported")
    folder.mkdir(parents=True, exist_ok=True)
    name = Path(urlparse(url).path).name or "download"
    for attempt in range(1, retry.attempts + 1):
        fd, tmp = tempfile.mkstemp(prefix=".dl-", dir=folder)
        try:
            with os.fdopen(fd, "wb") as out:
                digest = _fetch(url, out, ca_file, timeout)
            if checksum and digest != checksum:
                raise DownloadError(f"{url}: checksum mismatch: got {digest}, expected {checksum}")
            os.chmod(tmp, 0o600)
            target = folder / name
            os.replace(tmp, target)
            return target, digest
        except _Retryable as exc:
            if attempt == retry.attempts:
                raise DownloadError(f"{url}: download failed after {attempt} attempts: {exc}") from None
            time.sleep(retry_delay(retry, attempt, exc.retry_after))
        finally:
            Path(tmp).unlink(missing_ok=True)
    raise AssertionError("unreachable")


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: str | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _fetch(url: str, out, ca_file: str | None, timeout: float) -> str:
    h = hashlib.sha256()
    try:
        with requests.get(url, stream=True, timeout=timeout, verify=ca_file or True) as resp:
            if should_retry_status(resp.status_code):
                raise _Retryable(f"HTTP {resp.status_code}", resp.headers.get("Retry-After"))
            if resp.status_code != 200:
                raise DownloadError(f"{url}: HTTP {resp.status_code}; check the URL")
            for chunk in resp.iter_content(BLOCK):
                h.update(chunk)
                out.write(chunk)
    except requests.RequestException as exc:
        raise _Retryable(str(exc)[:300]) from None
    return "sha256:" + h.hexdigest()
