"""Plain HTTP(S) downloads (`ADD <url>` in a Dockerfile), with the registry client's retry policy.

A download is streamed to a temporary file, hashed on the way and bounded in size, then stored by
its content digest: `<store>/<sha256 hex>/<name>` (the name is the URL's last path segment, mode
0600). A stored file is never replaced: a second download of the same URL that brings other bytes
lands in another folder, so a file whose digest was checked (and keyed) keeps its bytes. An
expected `--checksum` is verified before the file appears. Redirects are followed (registry/httpclient.py):
an https URL never leads to plain http (nor to any other scheme), so TLS can't be stripped on the way.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

from registry.errors import RegistryError
from registry.httpclient import BadURL, HttpClient, HttpError, RedirectRefused
from registry.transport import RetryPolicy, retry_delay, should_retry_status

BLOCK = 1 << 20
USER_AGENT = "kade/0.1 (+ADD <url>)"
MAX_BYTES_ENV = "KADE_DOWNLOAD_MAX_BYTES"
DEFAULT_MAX_BYTES = 4 << 30


class DownloadError(RegistryError):
    """A URL could not be fetched, was refused, or did not match its checksum."""


def max_bytes_from_env(environ: dict[str, str] | None = None) -> int:
    """$KADE_DOWNLOAD_MAX_BYTES, else DEFAULT_MAX_BYTES."""
    raw = (os.environ if environ is None else environ).get(MAX_BYTES_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_BYTES
    if not raw.isdigit() or int(raw) == 0:
        raise DownloadError(f"${MAX_BYTES_ENV}={raw!r} is not a positive whole number of bytes")
    return int(raw)


def download(url: str, store: Path, checksum: str | None = None, *, ca_file: str | None = None,
             retry: RetryPolicy = RetryPolicy(), timeout: float = 60.0,
             max_bytes: int | None = None) -> tuple[Path, str]:
    """Fetch `url` into the content-addressed `store`; return the stored file and its `sha256:` digest.
    `checksum` (`sha256:<hex>`) is verified before the file appears; more than `max_bytes` (default
    $KADE_DOWNLOAD_MAX_BYTES) is refused."""
    if checksum and not checksum.startswith("sha256:"):
        raise DownloadError(f"--checksum={checksum}: only sha256:<hex> is supported")
    limit = max_bytes_from_env() if max_bytes is None else max_bytes
    store.mkdir(parents=True, exist_ok=True)
    name = Path(urlparse(url).path).name or "download"
    for attempt in range(1, retry.attempts + 1):
        fd, tmp = tempfile.mkstemp(prefix=".dl-", dir=store)
        try:
            with os.fdopen(fd, "wb") as out, contextlib.closing(HttpClient(USER_AGENT)) as http:
                digest = _fetch(http, url, out, ca_file, timeout, limit)
            if checksum and digest != checksum:
                raise DownloadError(f"{url}: checksum mismatch: got {digest}, expected {checksum}")
            os.chmod(tmp, 0o600)
            return keep(Path(tmp), store, digest, name), digest
        except _Retryable as exc:
            if attempt == retry.attempts:
                raise DownloadError(f"{url}: download failed after {attempt} attempts: {exc}") from None
            time.sleep(retry_delay(retry, attempt, exc.retry_after))
        finally:
            Path(tmp).unlink(missing_ok=True)
    raise AssertionError("unreachable")


def keep(tmp: Path, store: Path, digest: str, name: str) -> Path:
    """Store the file `tmp` (whose content is `digest`) as store/<hex>/name, unless a file is there
    already (the same digest: the same bytes); `tmp` stays where it is."""
    folder = store / digest.split(":", 1)[1]
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = folder / name
    with contextlib.suppress(FileExistsError):
        os.link(tmp, target)   # never replaces: the first file of this digest and name stays
    return target


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: str | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _fetch(http: HttpClient, url: str, out, ca_file: str | None, timeout: float, limit: int) -> str:
    h = hashlib.sha256()
    try:
        with http.request("GET", url, verify=ca_file or True, connect_timeout=timeout, read_timeout=timeout,
                          follow_redirects=True) as resp:
            if should_retry_status(resp.status_code):
                raise _Retryable(f"HTTP {resp.status_code}", resp.headers.get("Retry-After"))
            if resp.status_code != 200:
                raise DownloadError(f"{url}: HTTP {resp.status_code}; check the URL")
            declared = resp.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > limit:
                raise _too_big(url, f"it declares {declared} bytes")
            size = 0
            for chunk in resp.iter_content(BLOCK):
                size += len(chunk)
                if size > limit:
                    raise _too_big(url, f"more than {limit} bytes arrived")
                h.update(chunk)
                out.write(chunk)
            return "sha256:" + h.hexdigest()
    except (RedirectRefused, BadURL) as exc:   # no second attempt would do better
        raise DownloadError(str(exc)) from None
    except HttpError as exc:
        raise _Retryable(str(exc)[:300]) from None


def _too_big(url: str, why: str) -> DownloadError:
    return DownloadError(f"{url}: {why}, over the download limit; raise ${MAX_BYTES_ENV} if it is expected")
