"""Release records and the release lock.

A record is one revision of a release: the manifests applied, the status and a description. It is
stored as gzipped JSON in Secrets (type kade.io/release.v1) in the release namespace, named
`kade.release.v1.<release>.v<revision>`; when the gzipped record passes CHUNK_SIZE it is split over
several Secrets (`...v<revision>.<part>`), each labelled with the part number and the part count, so a
big release never hits the 1 MiB object limit (helm #7126).

A record whose parts are not all there (its deploy died while writing it) is left out of the history,
reported, and its Secrets deleted by the next deploy: it never blocks later deploys.

A Lease `kade-release-<release>` guards the release: a deploy takes it (holder = host:pid:random),
renews it while it works and deletes it at the end; a deploy that finds it held waits (bounded by
its timeout); a lease not renewed within its duration has expired and the next deploy takes it over,
so a killed deploy never leaves a release stuck.

Reading API (stable; used by `kade cleanup` to find the images releases run):
  - `ReleaseStore(kube, namespace, name).history()` -> [ReleaseRecord], oldest first
  - `releases(kube, namespace=None)` -> {(namespace, name): [ReleaseRecord]} for one or all namespaces
  - `ReleaseRecord`: name, namespace, revision, status, manifests (the rendered objects, as applied),
    images ({name: reference}), values, description, created, updated, rollback_of.
Records written by earlier versions of kade (without newer fields) read the same: unknown fields are
ignored and missing ones take their defaults.
"""
from __future__ import annotations

import base64
import gzip
import json
import os
import socket
import threading
import time
import uuid
import zlib
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from deployer.errors import DeployError, ReleaseLockedError
from deployer.kube import Kube, KubeError
from common import jsonsafe

CHUNK_SIZE = 700 * 1024  # bytes of gzip per Secret: under 1 MiB even after base64 in the JSON body
SECRET_TYPE = "kade.io/release.v1"
LABEL_OWNER, LABEL_NAME, LABEL_REVISION = "owner", "kade.io/release", "kade.io/revision"
LABEL_PART, LABEL_PARTS, LABEL_STATUS = "kade.io/part", "kade.io/parts", "kade.io/status"
DEFAULT_HISTORY = 10
LOCK_POLL = 2.0  # seconds between two looks at a held release lease

PENDING, DEPLOYED, FAILED, SUPERSEDED, ROLLED_BACK = "pending", "deployed", "failed", "superseded", "rolled-back"


@dataclass
class ReleaseRecord:
    name: str
    namespace: str
    revision: int
    status: str
    manifests: list[dict[str, Any]]
    description: str = ""
    created: str = ""
    updated: str = ""
    values: dict[str, Any] = field(default_factory=dict)
    images: dict[str, str] = field(default_factory=dict)
    rollback_of: int | None = None

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "ReleaseRecord":
        raw = jsonsafe.loads(data)
        if not isinstance(raw, dict):
            raise ValueError("a release record must be a JSON object")
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in raw.items() if k in known})


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---- pure encoding ------------------------------------------------------------------------------

def encode(record: ReleaseRecord) -> bytes:
    return gzip.compress(record.to_json(), compresslevel=6, mtime=0)


def decode(blob: bytes, max_json: int | None = None) -> ReleaseRecord:
    """`max_json` bounds the inflated size, for readers that must survive a hostile record (cleanup)."""
    if max_json is None:
        return ReleaseRecord.from_json(gzip.decompress(blob))
    reader = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    data = reader.decompress(blob, max_json + 1)
    if len(data) > max_json:
        raise ValueError(f"it inflates to more than {max_json} bytes")
    return ReleaseRecord.from_json(data)


def split(blob: bytes, size: int = CHUNK_SIZE) -> list[bytes]:
    if size <= 0:
        raise ValueError("chunk size must be positive")
    return [blob[i:i + size] for i in range(0, len(blob), size)] or [b""]


def join(parts: dict[int, bytes], expected: int, label: str) -> bytes:
    missing = [i for i in range(expected) if i not in parts]
    if missing:
        raise DeployError(f"release record {label} is incomplete: part(s) {missing} of {expected} missing; "
                          "it was being written when a deploy died: delete those Secrets or deploy again")
    return b"".join(parts[i] for i in range(expected))


def secret_name(release: str, revision: int, part: int, parts: int) -> str:
    base = f"kade.release.v1.{release}.v{revision}"
    return base if parts == 1 else f"{base}.{part}"


def record_secrets(record: ReleaseRecord, size: int = CHUNK_SIZE) -> list[dict[str, Any]]:
    """The Secrets that store one record."""
    chunks = split(encode(record), size)
    out = []
    for index, chunk in enumerate(chunks):
        out.append({
            "apiVersion": "v1", "kind": "Secret", "type": SECRET_TYPE,
            "metadata": {"name": secret_name(record.name, record.revision, index, len(chunks)),
                         "namespace": record.namespace,
                         "labels": {LABEL_OWNER: "kade", LABEL_NAME: record.name,
                                    LABEL_REVISION: str(record.revision), LABEL_STATUS: record.status,
                                    LABEL_PART: str(index), LABEL_PARTS: str(len(chunks))}},
            "data": {"release": base64.b64encode(chunk).decode()},
        })
    return out


def records_from_secrets(secrets: list[dict[str, Any]], incomplete: list[int] | None = None,
                         max_json: int | None = None) -> list[ReleaseRecord]:
    """Group Secrets by revision, join their parts, decode (at most `max_json` bytes each); oldest first.
    Revisions with parts missing are left out and, when `incomplete` is given, appended to it (without it
    they are an error)."""
    by_revision: dict[int, dict[int, bytes]] = {}
    expected: dict[int, int] = {}
    for secret in secrets:
        labels = (secret.get("metadata") or {}).get("labels") or {}
        try:
            revision, part, parts = int(labels[LABEL_REVISION]), int(labels.get(LABEL_PART, 0)), int(labels.get(LABEL_PARTS, 1))
        except (KeyError, ValueError):
            continue
        name = (secret.get("metadata") or {}).get("name", "?")
        try:
            chunk = base64.b64decode((secret.get("data") or {}).get("release", ""), validate=True)
        except (ValueError, TypeError):
            raise DeployError(f"release record Secret {name} is corrupt (not base64): delete it or restore it") from None
        by_revision.setdefault(revision, {})[part] = chunk
        expected[revision] = parts
    records = []
    for revision in sorted(by_revision):
        label = f"revision {revision}"
        if incomplete is not None and len(by_revision[revision]) < expected[revision]:
            incomplete.append(revision)
            continue
        blob = join(by_revision[revision], expected[revision], label)
        try:
            records.append(decode(blob, max_json))
        except (OSError, EOFError, ValueError, TypeError, zlib.error) as exc:
            raise DeployError(f"release record {label} is corrupt ({exc}); delete its Secrets "
                              f"(label kade.io/revision={revision}) to drop it from the history") from None
    return records


def revisions_to_prune(records: list[ReleaseRecord], keep: int) -> list[int]:
    """Oldest revisions beyond `keep`, never the newest deployed one."""
    if keep <= 0 or len(records) <= keep:
        return []
    deployed = [r.revision for r in records if r.status == DEPLOYED]
    protect = max(deployed) if deployed else None
    ordered = sorted(r.revision for r in records)
    excess = ordered[:len(ordered) - keep]
    return [rev for rev in excess if rev != protect]


# ---- storage ------------------------------------------------------------------------------------

class ReleaseStore:
    def __init__(self, kube: Kube, namespace: str, name: str, chunk_size: int = CHUNK_SIZE):
        self.kube, self.namespace, self.name, self.chunk_size = kube, namespace, name, chunk_size

    @property
    def _secrets_path(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/secrets"

    def _list_secrets(self, revision: int | None = None) -> list[dict[str, Any]]:
        selector = f"{LABEL_OWNER}=kade,{LABEL_NAME}={self.name}"
        if revision is not None:
            selector += f",{LABEL_REVISION}={revision}"
        data = self.kube.request("GET", self._secrets_path, {"labelSelector": selector})
        return data.get("items") or []

    def history(self) -> list[ReleaseRecord]:
        """The complete records, oldest first; `self.incomplete` lists the revisions left out."""
        self.incomplete: list[int] = []
        return records_from_secrets(self._list_secrets(), self.incomplete)

    def next_revision(self, history: list[ReleaseRecord]) -> int:
        return max([h.revision for h in history] + list(getattr(self, "incomplete", [])), default=0) + 1

    def save(self, record: ReleaseRecord) -> None:
        """Write (or overwrite) one revision: its parts by server-side apply, then drop stale parts."""
        record.updated = now_rfc3339()
        record.created = record.created or record.updated
        secrets = record_secrets(record, self.chunk_size)
        names = set()
        for secret in secrets:
            name = secret["metadata"]["name"]
            names.add(name)
            self.kube.request("PATCH", f"{self._secrets_path}/{name}", {"fieldManager": "kade", "force": "true"},
                              json.dumps(secret), "application/apply-patch+yaml")
        for old in self._list_secrets(record.revision):
            if old["metadata"]["name"] not in names:
                self._delete_secret(old["metadata"]["name"])

    def delete_revision(self, revision: int) -> None:
        for secret in self._list_secrets(revision):
            self._delete_secret(secret["metadata"]["name"])

    def delete_all(self) -> None:
        for secret in self._list_secrets():
            self._delete_secret(secret["metadata"]["name"])

    def prune_history(self, keep: int) -> list[int]:
        pruned = revisions_to_prune(self.history(), keep)
        for revision in pruned:
            self.delete_revision(revision)
        return pruned

    def _delete_secret(self, name: str) -> None:
        try:
            self.kube.request("DELETE", f"{self._secrets_path}/{name}")
        except KubeError as exc:
            if exc.status != 404:
                raise


def releases(kube: Kube, namespace: str | None = None) -> dict[tuple[str, str], list[ReleaseRecord]]:
    """Every release's complete records in `namespace` (None: all namespaces), oldest first."""
    path = f"/api/v1/namespaces/{namespace}/secrets" if namespace else "/api/v1/secrets"
    data = kube.request("GET", path, {"labelSelector": f"{LABEL_OWNER}=kade,{LABEL_NAME}"})
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for secret in data.get("items") or []:
        meta = secret.get("metadata") or {}
        if secret.get("type") != SECRET_TYPE:
            continue
        grouped.setdefault((meta.get("namespace", ""), (meta.get("labels") or {}).get(LABEL_NAME, "")), []).append(secret)
    return {key: records_from_secrets(items, []) for key, items in sorted(grouped.items())}


# ---- the lock -----------------------------------------------------------------------------------

def lease_expired(lease: dict[str, Any], now: float) -> bool:
    spec = lease.get("spec") or {}
    if not spec.get("holderIdentity"):
        return True
    renewed = spec.get("renewTime") or spec.get("acquireTime")
    if not renewed:
        return True
    when = datetime.fromisoformat(str(renewed).replace("Z", "+00:00")).timestamp()
    return now > when + float(spec.get("leaseDurationSeconds") or 0)


class ReleaseLock:
    """Context manager holding the release's Lease for the duration of a deploy."""

    def __init__(self, kube: Kube, namespace: str, release: str, duration: int = 30, *, wait: float = 0.0,
                 report: Any = None):
        self.kube, self.namespace, self.release_name, self.duration = kube, namespace, release, duration
        self.wait, self.report = wait, report
        self.identity = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.name = f"kade-release-{release}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._resource_version = ""
        self.lost: str | None = None

    @property
    def _path(self) -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases"

    def _body(self, acquire_time: str | None = None, resource_version: str = "") -> dict[str, Any]:
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace,
                                "labels": {LABEL_OWNER: "kade", LABEL_NAME: self.release_name}}
        if resource_version:
            meta["resourceVersion"] = resource_version
        stamp = now_rfc3339()
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta,
                "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": self.duration,
                         "acquireTime": acquire_time or stamp, "renewTime": stamp}}

    def acquire(self, wait: float = 0.0, report: Any = None) -> None:
        """Take the lease; while another deploy holds it, wait up to `wait` seconds (reported)."""
        deadline = time.monotonic() + wait
        announced = False
        while True:
            try:
                return self._try_acquire()
            except ReleaseLockedError as exc:
                if time.monotonic() + LOCK_POLL > deadline:
                    raise ReleaseLockedError(f"{exc}" + (f" (waited {wait:.0f}s)" if wait else "")) from None
                if report is not None and not announced:
                    report("waiting", f"{exc}; waiting up to {wait:.0f}s", release=self.release_name)
                    announced = True
                time.sleep(LOCK_POLL)

    def _try_acquire(self) -> None:
        current = self.kube.get(f"{self._path}/{self.name}")
        try:
            if current is None:
                created = self.kube.request("POST", self._path, body=self._body())
            elif lease_expired(current, time.time()) or (current.get("spec") or {}).get("holderIdentity") == self.identity:
                rv = current["metadata"]["resourceVersion"]
                created = self.kube.request("PUT", f"{self._path}/{self.name}", body=self._body(resource_version=rv))
            else:
                raise self._locked(current)
        except KubeError as exc:
            if exc.status == 409:  # someone else created or renewed it between our read and write
                raise self._locked(self.kube.get(f"{self._path}/{self.name}")) from None
            raise
        self._resource_version = created["metadata"]["resourceVersion"]
        self._acquire_time = created["spec"]["acquireTime"]
        self._thread = threading.Thread(target=self._renew_loop, name=f"lease-{self.name}", daemon=True)
        self._thread.start()

    def _locked(self, lease: dict[str, Any] | None) -> ReleaseLockedError:
        spec = (lease or {}).get("spec") or {}
        return ReleaseLockedError(
            f"release {self.release_name} in namespace {self.namespace} is being deployed by {spec.get('holderIdentity', 'another process')} "
            f"(since {spec.get('acquireTime', '?')}); wait for it to finish, or, if that process died, for its lease "
            f"to expire {spec.get('leaseDurationSeconds', self.duration)}s after {spec.get('renewTime', '?')}")

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.duration / 3):
            try:
                body = self._body(self._acquire_time, self._resource_version)
                updated = self.kube.request("PUT", f"{self._path}/{self.name}", body=body)
                self._resource_version = updated["metadata"]["resourceVersion"]
            except KubeError as exc:
                if exc.status == 409:
                    self.lost = "the release lease was taken over by another deploy"
                    return
                continue  # transient: try again at the next interval

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        if self.lost:
            return
        try:
            self.kube.request("DELETE", f"{self._path}/{self.name}",
                              body={"preconditions": {"resourceVersion": self._resource_version}})
        except KubeError:
            pass  # already gone or taken over; it expires anyway

    def __enter__(self) -> "ReleaseLock":
        self.acquire(self.wait, self.report)
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
