"""The OCI distribution client: `RegistryClient(options).repository(ref)` gives a `Repository`
with blob and manifest operations. Memory stays bounded whatever the blob size: blobs are
streamed in 1 MiB blocks, hashed on the way, and never held whole (except small ones, below
`monolithic_max`, sent in one PUT).
"""
from __future__ import annotations

import contextlib
import http.client
import itertools
import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO, Callable, Iterator, Union, cast

from common.timeouts import CONNECT_TIMEOUT, answer_timeout
from registry import cancel
from registry import mediatypes as mt
from registry.auth import CredentialResolver, scope_for
from registry.digest import Hasher, is_digest, sha256_digest, validate_digest
from registry.httpclient import HttpError, Response
from registry.errors import (DigestMismatch, InvalidManifest, NotFound, RegistryError, RegistryUnavailable,
                             Unsupported, UploadError)
from registry.model import Descriptor, Manifest
from registry.reference import Reference, validate_tag
from registry.transport import RetryPolicy, Transport, parse_link_next, retry_delay
from common import jsonsafe

MiB = 1 << 20
READ_BLOCK = MiB
# What a dropped or broken connection raises while a response body is being read.
_STREAM_ERRORS = (HttpError, http.client.HTTPException, OSError)
MAX_MANIFEST_BYTES = 4 * MiB  # what distribution accepts; more is hostile
BLOB_UNKNOWN_ATTEMPTS = 3  # PUTs of a manifest the registry answers "blob unknown" to, before believing it

Opener = Callable[[int], BinaryIO]  # open the source positioned at the given offset
BlobSource = Union[str, os.PathLike, BinaryIO, Opener]


@dataclass
class ClientOptions:
    insecure: tuple[str, ...] = ()  # hosts (host or host:port) to reach without TLS verification / over HTTP
    ca_file: str | None = None
    credentials: CredentialResolver | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    chunk_size: int = 128 * MiB  # per PATCH; streamed, so this does not cost memory
    monolithic_max: int = 8 * MiB  # blobs up to this size go up in a single PUT
    upload_attempts: int = 5  # fresh or resumed upload sessions per blob
    timeout: float = field(default_factory=answer_timeout)  # for one answer (retries included), or a silent download
    connect_timeout: float = CONNECT_TIMEOUT


@dataclass(frozen=True)
class BlobInfo:
    digest: str
    size: int
    existed: bool = False  # already in the repository (nothing uploaded)
    mounted: bool = False


class RegistryClient:
    def __init__(self, options: ClientOptions | None = None) -> None:
        self.options = options or ClientOptions()
        self.transport = Transport(insecure=self.options.insecure, ca_file=self.options.ca_file,
                                   credentials=self.options.credentials, retry=self.options.retry,
                                   timeout=self.options.timeout, connect_timeout=self.options.connect_timeout)
        self.uploads = OpenUploads()

    def repository(self, ref: Reference | str) -> "Repository":
        if isinstance(ref, str):
            ref = Reference.parse(ref, default_tag=None)
        return Repository(self, ref)

    def abandon_uploads(self) -> None:
        """Delete the upload sessions still open (a cancelled command whose upload threads are stuck)."""
        self.uploads.abandon()

    def close(self) -> None:
        self.abandon_uploads()
        self.transport.close()

    def __enter__(self) -> "RegistryClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class OpenUploads:
    """The upload sessions under way (by a key of their own: the location changes with every chunk), so
    that what a cancelled command leaves open is deleted: the registry is left as it was."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sessions: dict[int, tuple["Repository", str]] = {}
        self._keys = itertools.count()

    def new_key(self) -> int:
        return next(self._keys)

    def note(self, key: int, repo: "Repository", location: str) -> None:
        with self._lock:
            self._sessions[key] = (repo, location)

    def forget(self, key: int) -> None:
        with self._lock:
            self._sessions.pop(key, None)

    def abandon(self) -> None:
        with self._lock:
            sessions, self._sessions = list(self._sessions.values()), {}
        for repo, location in sessions:
            repo._cancel_upload(location)


def _error_detail(resp: Response) -> str:
    """The registry's own error code/message (OCI error envelope), short; never headers."""
    try:
        doc = jsonsafe.loads(resp.content)
        errors = doc.get("errors") or []
        parts = [f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errors if isinstance(e, dict)]
        if parts:
            return "; ".join(parts)[:300]
    except (ValueError, AttributeError):
        pass
    text = (resp.text or "").strip() if resp.method != "HEAD" else ""
    return text[:200] or resp.reason or ""


def _refused_for_missing_blob(resp: Response) -> bool:
    codes = _error_codes(resp)
    return "MANIFEST_BLOB_UNKNOWN" in codes or "BLOB_UNKNOWN" in codes


def _error_codes(resp: Response) -> set[str]:
    try:
        return {e.get("code", "") for e in jsonsafe.loads(resp.content).get("errors", []) if isinstance(e, dict)}
    except (ValueError, AttributeError):
        return set()


def parse_range_end(value: str | None) -> int | None:
    """The byte offset after a `Range: 0-<end>` (or `bytes=0-<end>`) upload-status header."""
    if not value:
        return None
    m = re.fullmatch(r"\s*(?:bytes=)?0-(\d+)\s*", value)
    return int(m.group(1)) + 1 if m else None


class _Counter:
    """Reads a file to EOF, hashing and counting (body of a streamed PATCH of unknown size)."""

    def __init__(self, f: IO[bytes], hasher: Hasher | None) -> None:
        self.f, self.hasher, self.count = f, hasher, 0

    def read(self, n: int) -> bytes:
        cancel.check()  # a cancelled command stops sending (the registry drops the partial upload)
        data = self.f.read(n)
        self.count += len(data)
        if self.hasher and data:
            self.hasher.update(data)
        return data


class _Section:
    """A file-like view of `length` bytes of `f` from its current position, hashing as read.
    Sent with Content-Length = len(self), read in 1 MiB blocks: no buffering."""

    def __init__(self, f: IO[bytes], length: int, hasher: Hasher | None) -> None:
        self.f, self.remaining, self.length, self.hasher = f, length, length, hasher

    def __len__(self) -> int:
        return self.length

    def read(self, n: int = -1) -> bytes:
        if self.remaining <= 0:
            return b""
        cancel.check()
        n = self.remaining if n is None or n < 0 else min(n, self.remaining)
        data = self.f.read(n)
        if len(data) == 0:
            raise UploadError("the blob source ended before its declared size: it changed during the upload")
        self.remaining -= len(data)
        if self.hasher:
            self.hasher.update(data)
        return data


class BlobReader:
    """A readable stream of one blob: resumes with a Range request when the connection drops,
    and verifies size and digest at EOF (DigestMismatch if they differ). A registry that sends
    nothing for the client's timeout is given up on (not retried: it would only wait again)."""

    def __init__(self, repo: "Repository", digest: str, size: int | None = None, offset: int = 0) -> None:
        """Stream blob `digest` from byte `offset` (verified only when starting at 0)."""
        self.repo, self.digest, self.expected_size = repo, digest, size
        self.pos = offset
        self.hasher = Hasher.for_digest(digest) if offset == 0 else None
        self._resp: Response | None = None
        self._failures = 0
        self._failed_at = offset
        self._done = False
        self._progress_at = time.monotonic()
        self._open()

    def _open(self) -> None:
        headers = {"Range": f"bytes={self.pos}-"} if self.pos else {}
        resp = self.repo._request("GET", f"/blobs/{self.digest}", "pull", headers=headers, stream=True,
                                  what=f"blob {self.digest}")
        if resp.status_code == 404:
            resp.close()
            raise NotFound(self.repo._not_found_msg(f"blob {self.digest}"))
        if self.pos and resp.status_code == 200:
            resp.close()
            raise RegistryError(f"registry {self.repo.host} ignored the Range request while resuming blob "
                                f"{self.digest} of {self.repo.name}; retry the command")
        if resp.status_code not in (200, 206):
            self.repo._raise_unexpected(resp, f"download blob {self.digest}")
        if self.expected_size is None and resp.status_code == 200 and resp.headers.get("Content-Length"):
            self.expected_size = int(resp.headers["Content-Length"])
        self._resp = resp

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self._done:
            return b""
        want = READ_BLOCK if n is None or n < 0 else n
        while True:
            cancel.check()
            try:
                assert self._resp is not None
                data = self._resp.read(want)
            except _STREAM_ERRORS as exc:
                self._retry(exc)
                continue
            if data:
                self._progress_at = time.monotonic()
                self.pos += len(data)
                if self.hasher:
                    self.hasher.update(data)
                if self.expected_size is not None and self.pos > self.expected_size:
                    raise DigestMismatch(f"blob {self.digest} of {self.repo.name} on {self.repo.host} is longer "
                                         f"than its expected {self.expected_size} bytes")
                return data
            if self.expected_size is not None and self.pos < self.expected_size:
                self._retry(EOFError(f"connection closed at byte {self.pos} of {self.expected_size}"))
                continue
            self._finish()
            return b""

    def _retry(self, exc: BaseException) -> None:
        if self.pos != self._failed_at:  # progress since the last failure: a fresh budget of retries
            self._failures, self._failed_at = 0, self.pos
        self._failures += 1
        if self._resp is not None:
            self._resp.close()
        options = self.repo.client.options
        silent = time.monotonic() - self._progress_at
        if silent >= options.timeout:
            raise RegistryUnavailable(f"registry {self.repo.host} sent nothing for {silent:.0f} s while downloading "
                                      f"blob {self.digest} of {self.repo.name} (at byte {self.pos}"
                                      f"{' of ' + str(self.expected_size) if self.expected_size else ''}); "
                                      "check that it is healthy, or retry later")
        policy = options.retry
        if self._failures >= policy.attempts:
            raise RegistryUnavailable(f"downloading blob {self.digest} of {self.repo.name} from {self.repo.host} "
                                      f"failed {self._failures} times (last: {exc}); retry later")
        self.repo.client.transport.sleep(retry_delay(policy, self._failures))
        self._open()

    def _finish(self) -> None:
        self._done = True
        if self._resp is not None:
            self._resp.close()
        if self.hasher:
            self.hasher.verify(self.digest, f"blob {self.digest} of {self.repo.name} on {self.repo.host}")

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if self._resp is not None:
            self._resp.close()


class Repository:
    def __init__(self, client: RegistryClient, ref: Reference) -> None:
        self.client = client
        self.ref = ref
        self.host = ref.api_host
        self.name = ref.repository

    def __repr__(self) -> str:
        return f"Repository({self.ref.registry}/{self.name})"

    # ---- plumbing ---------------------------------------------------------------------------
    def _request(self, method: str, path: str, actions: str, *, scope: str | None = None,
                 **kw: Any) -> Response:
        url = path if path.startswith(("http://", "https://")) else f"/v2/{self.name}{path}"
        return self.client.transport.request(method, self.host, url, scope=scope or scope_for(self.name, actions),
                                             what=kw.pop("what", f"repository {self.name}"), **kw)

    def _not_found_msg(self, what: str) -> str:
        return (f"{what} not found in repository {self.name} on registry {self.host}; check the name with "
                f"`kade image tags {self.ref.registry}/{self.name}`")

    def _raise_unexpected(self, resp: Response, action: str) -> None:
        detail = _error_detail(resp)
        resp.close()
        if resp.status_code == 405 or "UNSUPPORTED" in _error_codes(resp):
            raise Unsupported(f"registry {self.host} does not support '{action}' on {self.name} "
                              f"(HTTP {resp.status_code}: {detail}); for deletes, enable storage.delete.enabled "
                              "in the registry's config; a registry in read-only maintenance mode "
                              "(storage.maintenance.readonly, e.g. during garbage-collect) refuses every push "
                              "and delete: retry once it is writable again")
        raise RegistryError(f"{action} in repository {self.name} on registry {self.host} failed: "
                            f"HTTP {resp.status_code} {detail}".rstrip())

    def _url_with(self, location: str, **params: str) -> str:
        from urllib.parse import urlencode

        sep = "&" if "?" in location else "?"
        return location + sep + urlencode(params)

    def _absolute(self, location: str) -> str:
        if location.startswith(("http://", "https://")):
            return location
        return self.client.transport.base_url(self.host) + location

    # ---- manifests --------------------------------------------------------------------------
    def head_manifest(self, tag_or_digest: str, accept: str = mt.ACCEPT_ALL, actions: str = "pull") -> Descriptor | None:
        """The manifest's descriptor, None when absent. `actions`: the token scope to ask with ("pull,push"
        when a push follows, so that one token serves both)."""
        resp = self._request("HEAD", f"/manifests/{tag_or_digest}", actions, headers={"Accept": accept},
                             what=f"manifest {tag_or_digest}")
        resp.close()
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            self._raise_unexpected(resp, f"HEAD manifest {tag_or_digest}")
        digest = resp.headers.get("Docker-Content-Digest")
        media_type = (resp.headers.get("Content-Type") or "").split(";")[0].strip()
        size = resp.headers.get("Content-Length")
        if not digest or not is_digest(digest) or not size or not media_type:
            _, desc = self.get_manifest(tag_or_digest, accept)  # registry omitted what HEAD should say
            return desc
        if is_digest(tag_or_digest) and digest != tag_or_digest:
            raise DigestMismatch(f"registry {self.host} answered {digest} for manifest {tag_or_digest} of {self.name}")
        return Descriptor(media_type, digest, int(size))

    def get_manifest(self, tag_or_digest: str, accept: str = mt.ACCEPT_ALL) -> tuple[bytes, Descriptor]:
        resp = self._request("GET", f"/manifests/{tag_or_digest}", "pull", headers={"Accept": accept},
                             stream=True, what=f"manifest {tag_or_digest}")
        with resp:
            if resp.status_code == 404:
                raise NotFound(self._not_found_msg(f"manifest {tag_or_digest}"))
            if resp.status_code != 200:
                self._raise_unexpected(resp, f"GET manifest {tag_or_digest}")
            body = resp.read(MAX_MANIFEST_BYTES + 1)
            if len(body) > MAX_MANIFEST_BYTES:
                raise InvalidManifest(f"manifest {tag_or_digest} of {self.name} on {self.host} is larger than "
                                      f"{MAX_MANIFEST_BYTES} bytes; refusing it")
            header_digest = resp.headers.get("Docker-Content-Digest")
            content_type = (resp.headers.get("Content-Type") or "").split(";")[0].strip()
        expected = tag_or_digest if is_digest(tag_or_digest) else header_digest
        if expected and is_digest(expected):
            hasher = Hasher.for_digest(expected)
            hasher.update(body)
            hasher.verify(expected, f"manifest {tag_or_digest} of {self.name} on {self.host}")
            digest = expected if expected.startswith("sha256:") else sha256_digest(body)
        else:
            digest = sha256_digest(body)
        media_type = _manifest_media_type(body, content_type)
        return body, Descriptor(media_type, digest, len(body))

    def put_manifest(self, tag_or_digest: str, body: bytes, media_type: str) -> str:
        return self.push_manifest(tag_or_digest, body, media_type)[0]

    def push_manifest(self, tag_or_digest: str, body: bytes, media_type: str) -> tuple[str, str | None]:
        """PUT a manifest; (its digest, the `OCI-Subject` the registry answered: set when it indexed
        the manifest's subject for the referrers API, None from registries without that API)."""
        digest = sha256_digest(body)
        if is_digest(tag_or_digest) and tag_or_digest != digest:
            raise DigestMismatch(f"refusing to push manifest to {self.name}@{tag_or_digest}: its bytes hash to {digest}")
        for attempt in range(1, BLOB_UNKNOWN_ATTEMPTS + 1):
            resp = self._request("PUT", f"/manifests/{tag_or_digest}", "pull,push", body=body,
                                 headers={"Content-Type": media_type}, what=f"manifest {tag_or_digest}")
            resp.close()
            if resp.status_code == 201 or not _refused_for_missing_blob(resp):
                break
            # A registry can briefly not see a blob it has: distribution's filesystem driver rewrites a
            # repository's blob link in place (truncate, write) whenever that blob is pushed again, and
            # eventually consistent stores lag behind the upload. Ask again before calling it missing.
            if attempt < BLOB_UNKNOWN_ATTEMPTS:
                self.client.transport.sleep(retry_delay(self.client.options.retry, attempt))
        if resp.status_code != 201:
            if _refused_for_missing_blob(resp):
                raise NotFound(f"registry {self.host} refused manifest {tag_or_digest} of {self.name}: a blob it "
                               f"references is missing ({_error_detail(resp)}); push the blobs first")
            self._raise_unexpected(resp, f"PUT manifest {tag_or_digest}")
        got = resp.headers.get("Docker-Content-Digest")
        if got and got.startswith("sha256:") and got != digest:
            raise DigestMismatch(f"registry {self.host} stored manifest {tag_or_digest} of {self.name} as {got}, "
                                 f"but its bytes are {digest}")
        return digest, resp.headers.get("OCI-Subject")

    def get_referrers(self, digest: str, artifact_type: str | None = None) -> tuple[bytes, bool] | None:
        """The referrers API (OCI distribution 1.1): (index bytes, whether the registry applied the
        artifactType filter), or None when the registry has no such API (it answers 404 there,
        where one that has it answers an empty index)."""
        validate_digest(digest)
        params = {"artifactType": artifact_type} if artifact_type else None
        resp = self._request("GET", f"/referrers/{digest}", "pull", params=params, stream=True,
                             headers={"Accept": mt.OCI_INDEX}, what=f"referrers of {digest}")
        with resp:
            if resp.status_code in (404, 405, 400):
                return None
            if resp.status_code != 200:
                self._raise_unexpected(resp, f"GET referrers of {digest}")
            body = resp.read(MAX_MANIFEST_BYTES + 1)
            filtered = "artifactType" in (resp.headers.get("OCI-Filters-Applied") or "")
        if len(body) > MAX_MANIFEST_BYTES:
            raise InvalidManifest(f"the referrers index of {digest} in {self.name} on {self.host} is larger than "
                                  f"{MAX_MANIFEST_BYTES} bytes; refusing it")
        return body, filtered

    def delete_manifest(self, digest: str) -> None:
        """Delete a manifest by digest (this removes every tag that points at it)."""
        validate_digest(digest)
        resp = self._request("DELETE", f"/manifests/{digest}", "delete", what=f"manifest {digest}")
        resp.close()
        if resp.status_code == 404:
            raise NotFound(self._not_found_msg(f"manifest {digest}"))
        if resp.status_code not in (200, 202, 204):
            self._raise_unexpected(resp, f"delete manifest {digest}")

    def delete_tag(self, tag: str) -> str:
        """Remove one tag, leaving other tags on the same digest in place. Returns how it was done:
        "oci" (DELETE /manifests/<tag>, OCI 1.1) or "placeholder" (registries that delete only by
        digest: the tag is first pointed at a unique throw-away manifest, which is then deleted)."""
        validate_tag(tag)
        if self.head_manifest(tag) is None:
            raise NotFound(self._not_found_msg(f"tag {tag}"))
        resp = self._request("DELETE", f"/manifests/{tag}", "delete", what=f"tag {tag}")
        resp.close()
        if resp.status_code in (200, 202, 204):
            return "oci"
        if resp.status_code == 404 and "MANIFEST_UNKNOWN" in _error_codes(resp):
            raise NotFound(self._not_found_msg(f"tag {tag}"))
        if resp.status_code not in (400, 404, 405):
            self._raise_unexpected(resp, f"delete tag {tag}")
        original, desc = self.get_manifest(tag)
        placeholder = self._push_placeholder(tag)
        try:
            self.delete_manifest(placeholder)
        except RegistryError as exc:
            self.put_manifest(tag, original, desc.media_type)  # put the tag back where it was
            raise type(exc)(f"{exc} (tag {tag} was left pointing at {desc.digest}, as before)") from None
        return "placeholder"

    def _push_placeholder(self, tag: str) -> str:
        import uuid  # (here: uuid imports platform, a cost at every start for a rare path)

        self.upload_blob(_bytes_source(mt.OCI_EMPTY_BYTES),
                         digest=mt.OCI_EMPTY_DIGEST, size=len(mt.OCI_EMPTY_BYTES))
        manifest = Manifest(
            config=Descriptor(mt.OCI_EMPTY, mt.OCI_EMPTY_DIGEST, len(mt.OCI_EMPTY_BYTES)),
            layers=[Descriptor(mt.OCI_EMPTY, mt.OCI_EMPTY_DIGEST, len(mt.OCI_EMPTY_BYTES))],
            media_type=mt.OCI_MANIFEST,
            annotations={"io.kade.tag-delete": f"{tag} {uuid.uuid4()}"},
            artifact_type="application/vnd.kade.tag-delete.v1",
        )
        return self.put_manifest(tag, manifest.to_bytes(), mt.OCI_MANIFEST)

    def list_tags(self, page_size: int = 1000) -> Iterator[str]:
        url: str | None = f"/tags/list?n={page_size}"
        seen_urls: set[str] = set()
        while url:
            resp = self._request("GET", url, "pull", what="tags")
            with resp:
                if resp.status_code == 404:
                    raise NotFound(f"repository {self.name} not found on registry {self.host}; "
                                   "check the name (nothing was ever pushed there?)")
                if resp.status_code != 200:
                    self._raise_unexpected(resp, "list tags")
                try:
                    tags = jsonsafe.loads(resp.content).get("tags") or []
                except (ValueError, AttributeError):
                    raise RegistryError(f"registry {self.host} sent an invalid tag list for {self.name}") from None
                nxt = parse_link_next(resp.headers.get("Link"))
            yield from (t for t in tags if isinstance(t, str))
            if nxt and nxt in seen_urls:
                raise RegistryError(f"registry {self.host} sent a Link loop while listing tags of {self.name}")
            url = None
            if nxt:
                seen_urls.add(nxt)
                url = nxt if nxt.startswith(("http://", "https://")) else self._absolute(nxt)

    # ---- blobs ------------------------------------------------------------------------------
    def head_blob(self, digest: str) -> int | None:
        validate_digest(digest)
        resp = self._request("HEAD", f"/blobs/{digest}", "pull", what=f"blob {digest}")
        resp.close()
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            self._raise_unexpected(resp, f"HEAD blob {digest}")
        return int(resp.headers.get("Content-Length", "0"))

    @contextlib.contextmanager
    def open_blob(self, digest: str, size: int | None = None) -> Iterator[BlobReader]:
        validate_digest(digest)
        reader = BlobReader(self, digest, size)
        try:
            yield reader
        finally:
            reader.close()

    def read_small_blob(self, desc: Descriptor, limit: int, what: str) -> bytes:
        """The whole blob `desc` (a config, a record) when it is at most `limit` bytes, its size and digest
        verified; a descriptor claiming more is refused before anything is read (a manifest anyone who
        can push may write can point at gigabytes)."""
        if desc.size > limit:
            raise InvalidManifest(f"{what} {desc.digest} of {self.name} on {self.host} is {desc.size} bytes, more "
                                  f"than the {limit} kade reads; refusing it")
        chunks = []
        with self.open_blob(desc.digest, desc.size) as stream:   # a registry sending more fails there
            while block := stream.read(READ_BLOCK):
                chunks.append(block)
        return b"".join(chunks)

    def download_blob(self, digest: str, path: str | os.PathLike, size: int | None = None) -> int:
        """Stream a blob to `path` atomically (temp file in the same folder, then rename)."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as out, self.open_blob(digest, size) as reader:
                while block := reader.read(READ_BLOCK):
                    out.write(block)
                written = reader.pos
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return written

    def mount_blob(self, digest: str, from_repository: str) -> bool:
        """Cross-repository mount; True if mounted, False if the registry would not (then upload)."""
        validate_digest(digest)
        scope = f"{scope_for(self.name, 'pull,push')} {scope_for(from_repository, 'pull')}"
        resp = self._request("POST", "/blobs/uploads/", "pull,push", scope=scope,
                             params={"mount": digest, "from": from_repository}, what=f"mount of blob {digest}")
        resp.close()
        if resp.status_code == 201:
            return True
        if resp.status_code == 202:
            self._cancel_upload(resp.headers.get("Location"))
            return False
        if resp.status_code == 404:
            return False
        self._raise_unexpected(resp, f"mount blob {digest} from {from_repository}")
        return False

    def _cancel_upload(self, location: str | None) -> None:
        """Drop an upload session (also after a cancellation: a short wait, never blocking the exit)."""
        if location:
            with contextlib.suppress(RegistryError):
                self._request("DELETE", self._absolute(location), "pull,push", retry=False, timeout=3.0,
                              cancellable=False, what="the cancelled upload").close()

    def upload_blob(self, source: BlobSource, digest: str | None = None, size: int | None = None,
                    skip_existing: bool = True) -> BlobInfo:
        """Upload a blob unless the repository has it. `source` is a path, a binary file, or a
        callable opening the content at a byte offset (used to resume). Small blobs go up in one
        PUT; larger ones in streamed PATCH chunks; after a dropped connection the upload resumes
        from the registry's Range, or starts again from a fresh session."""
        if digest is not None:
            validate_digest(digest)
            existing = self.head_blob(digest) if skip_existing else None
            if existing is not None:
                return BlobInfo(digest, existing, existed=True)
        opener, known_size, restartable = _opener_for(source)
        size = size if size is not None else known_size
        options = self.client.options
        last: BaseException | None = None
        attempts = options.upload_attempts if restartable else 1
        for attempt in range(1, attempts + 1):
            try:
                return self._upload_session(opener, digest, size)
            except (RegistryUnavailable, _Retryable) as exc:
                last = exc
                if attempt < attempts:
                    self.client.transport.sleep(retry_delay(options.retry, attempt))
        raise RegistryUnavailable(f"uploading blob {digest or '(from ' + str(source) + ')'} to {self.name} on "
                                  f"{self.host} failed after {attempts} attempt(s): {last}; retry later")

    def _start_upload(self) -> tuple[str, int]:
        resp = self._request("POST", "/blobs/uploads/", "pull,push", what="blob upload")
        resp.close()
        if resp.status_code != 202 or not resp.headers.get("Location"):
            self._raise_unexpected(resp, "start blob upload")
        min_chunk = resp.headers.get("OCI-Chunk-Min-Length", "")
        return self._absolute(resp.headers["Location"]), int(min_chunk) if min_chunk.isdigit() else 0

    def _upload_status(self, location: str) -> tuple[str, int] | None:
        """(fresh location, bytes the registry holds) of an upload session, or None if it is gone."""
        try:
            resp = self._request("GET", location, "pull,push", retry=False, what="upload status")
        except RegistryUnavailable:
            return None
        resp.close()
        end = parse_range_end(resp.headers.get("Range"))
        if resp.status_code != 204 or end is None:
            return None
        return self._absolute(resp.headers.get("Location") or location), end

    def _upload_session(self, opener: Opener, digest: str | None, size: int | None) -> BlobInfo:
        uploads = self.client.uploads
        key = uploads.new_key()
        location, min_chunk = self._start_upload()
        uploads.note(key, self, location)
        try:
            if size is not None and size <= self.client.options.monolithic_max:
                return self._upload_whole(location, opener, digest, size)
            chunk = max(self.client.options.chunk_size, min_chunk)
            hasher = None if digest else Hasher()
            offset, failures, failed_at = 0, 0, 0
            while size is None or offset < size:
                length = None if size is None else min(chunk, size - offset)
                mark = (offset, hasher.copy() if hasher else None)
                try:
                    location, offset = self._patch(location, opener, offset, length, hasher)
                    uploads.note(key, self, location)
                    if size is None:
                        break  # a streamed PATCH sends everything up to EOF
                except (RegistryUnavailable, _Retryable) as exc:
                    failures = 1 if offset > failed_at else failures + 1  # progress resets the budget
                    failed_at = offset
                    status = self._upload_status(location) if failures < self.client.options.upload_attempts else None
                    if status is None or status[1] < mark[0] or (size is not None and status[1] > size):
                        raise _Retryable(f"upload session lost: {exc}") from None
                    location, offset = status
                    uploads.note(key, self, location)
                    hasher = self._rehash(opener, mark, offset) if hasher else None
            final = digest or (hasher.digest() if hasher else "")
            if size is not None and offset != size:
                raise UploadError(f"uploaded {offset} bytes of a blob declared as {size} to {self.name}")
            return self._finish_upload(location, final, offset, body=b"")
        except KeyboardInterrupt:  # cancelled: leave no upload session behind
            uploads.forget(key)
            self._cancel_upload(location)
            raise
        finally:
            uploads.forget(key)

    def _upload_whole(self, location: str, opener: Opener, digest: str | None, size: int) -> BlobInfo:
        with contextlib.closing(opener(0)) as f:
            data = f.read(size + 1)
        if len(data) != size:
            raise UploadError(f"blob source for {self.name} holds {len(data)} bytes, not the declared {size}")
        actual = sha256_digest(data) if digest is None or digest.startswith("sha256:") else digest
        if digest and actual != digest:
            raise DigestMismatch(f"blob source for {self.name} hashes to {actual}, not the declared {digest}")
        return self._finish_upload(location, actual, len(data), body=data)

    def _rehash(self, opener: Opener, mark: tuple[int, Hasher | None], upto: int) -> Hasher:
        """The hash of the first `upto` bytes, continuing from a checkpoint at mark[0] <= upto."""
        start, checkpoint = mark
        hasher = checkpoint.copy() if checkpoint else Hasher()
        with contextlib.closing(opener(start)) as f:
            remaining = upto - start
            while remaining:
                block = f.read(min(READ_BLOCK, remaining))
                if not block:
                    raise UploadError("the blob source is shorter than what was already uploaded")
                hasher.update(block)
                remaining -= len(block)
        return hasher

    def _patch(self, location: str, opener: Opener, offset: int, length: int | None,
               hasher: Hasher | None) -> tuple[str, int]:
        """PATCH `length` bytes from `offset` (Content-Range), or, when length is None, stream
        everything to EOF. Returns (next location, bytes the registry now holds)."""
        f = opener(offset)
        try:
            if length is None:
                counter = _Counter(f, hasher)
                body: Any = iter(lambda: counter.read(READ_BLOCK), b"")
                headers = {"Content-Type": "application/octet-stream"}
            else:
                body = _Section(f, length, hasher)
                headers = {"Content-Type": "application/octet-stream", "Content-Length": str(length),
                           "Content-Range": f"{offset}-{offset + length - 1}"}
            resp = self._request("PATCH", location, "pull,push", body=body, headers=headers, retry=False,
                                 what="blob upload")
        except (HttpError, OSError) as exc:
            raise _Retryable(str(exc)) from None
        finally:
            f.close()
        resp.close()
        if resp.status_code == 416:
            raise _Retryable("registry rejected the chunk's range")
        if resp.status_code >= 500 or resp.status_code == 429:
            raise _Retryable(f"HTTP {resp.status_code}")
        if _error_codes(resp) & _SESSION_GONE:
            # e.g. distribution 2.8 cancels a session whose stored size moved under a broken PATCH
            raise _Retryable(f"upload session rejected: {_error_detail(resp)}")
        if resp.status_code != 202:
            self._raise_unexpected(resp, "upload blob chunk")
        sent = offset + (length if length is not None else counter.count)
        stored = parse_range_end(resp.headers.get("Range"))
        if stored is not None and stored != sent and not (sent == 0 and stored == 1):
            raise _Retryable(f"registry holds {stored} bytes after a chunk ending at {sent}")
        return self._absolute(resp.headers.get("Location") or location), sent

    def _finish_upload(self, location: str, digest: str, size: int, body: bytes) -> BlobInfo:
        resp = self._request("PUT", self._url_with(location, digest=digest), "pull,push", body=body,
                             headers={"Content-Type": "application/octet-stream"}, retry=not body or len(body) < MiB,
                             what=f"blob {digest}")
        resp.close()
        if resp.status_code in (201, 204):
            return BlobInfo(digest, size)
        codes = _error_codes(resp)
        if "DIGEST_INVALID" in codes:
            raise DigestMismatch(f"registry {self.host} says the uploaded content of {self.name} does not match "
                                 f"{digest} ({_error_detail(resp)}); the source changed or is corrupt")
        if resp.status_code >= 500 or codes & _SESSION_GONE:
            raise _Retryable(f"finishing the upload: HTTP {resp.status_code} {_error_detail(resp)}")
        self._raise_unexpected(resp, f"finish upload of blob {digest}")
        raise AssertionError("unreachable")


_SESSION_GONE = frozenset({"BLOB_UPLOAD_UNKNOWN", "BLOB_UPLOAD_INVALID"})


class _Retryable(RegistryError):
    """An upload attempt failed in a way a fresh attempt may fix."""


def _bytes_source(data: bytes) -> Opener:
    import io

    def open_at(offset: int) -> BinaryIO:
        b = io.BytesIO(data)
        b.seek(offset)
        return b

    return open_at


def _opener_for(source: BlobSource) -> tuple[Opener, int | None, bool]:
    """(opener, size if known, can restart) for a path, a binary file or an opener."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        try:
            file_size = os.stat(path).st_size
        except OSError as exc:
            raise UploadError(f"cannot read blob file {path}: {exc.strerror}") from None

        def open_path(offset: int) -> BinaryIO:
            f = open(path, "rb")
            f.seek(offset)
            return f

        return open_path, file_size, True
    if callable(source) and not hasattr(source, "read"):
        return source, None, True
    f = cast(BinaryIO, source)  # a binary file object: an opener was returned above
    seekable = getattr(f, "seekable", lambda: False)()
    start = f.tell() if seekable else 0
    size: int | None = None
    if seekable:
        end = f.seek(0, os.SEEK_END)
        f.seek(start)
        size = end - start

    class _NoClose:
        def __init__(self, inner: BinaryIO) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        def close(self) -> None:
            pass

    def open_file(offset: int) -> BinaryIO:
        if seekable:
            f.seek(start + offset)
        elif offset:
            raise UploadError("cannot resume an upload from a non-seekable stream")
        return _NoClose(f)  # type: ignore[return-value]

    return open_file, size, seekable


def _manifest_media_type(body: bytes, content_type: str) -> str:

    try:
        doc = jsonsafe.loads(body)
        own = doc.get("mediaType") if isinstance(doc, dict) else None
    except ValueError:
        own = None
    if isinstance(own, str) and own:
        return own
    if content_type in mt.ALL_MANIFESTS:
        return content_type
    from registry.model import detect_media_type

    try:
        return detect_media_type(doc, content_type)
    except Exception:  # noqa: BLE001
        return content_type or "application/octet-stream"
