"""Cluster reports: what one cluster uses and what its release histories reference, published as a
small OCI artifact in the stages repository so that a cleanup run anywhere sees every cluster.

One tag per cluster, `cluster-<name>` (the name is configured, or the UID of the cluster's
kube-system namespace), replaced atomically by each run (one manifest PUT). The manifest follows the
build records' shape: artifactType and config media type `application/vnd.kade.cluster-report.v1+json`,
layers = [the OCI empty descriptor], the config:

    {"schemaVersion": 1, "cluster": "<name>", "created": "<RFC3339 UTC>", "namespaces": [...] (empty: all),
     "uses": [{"repository": "<path, no host>", "tag": "<tag>", "users": ["<ns>/<Kind>/<name>", ...]},
              {"digest": "sha256:...", "users": [...]}],
     "releases": [{"kind": "kade"|"helm", "namespace": ..., "name": ..., "revision": 7,
                   "deployed": "<RFC3339>"|null, "images": ["<ref>", ...]}],
     "problems": ["<what could not be read, so nothing may be deleted>"]}

A report holds only what concerns the repositories being cleaned (by repository path, registry host
ignored, or by digest), so a tenant's stages repository never lists another tenant's workloads.

Reports are hostile input (anyone who can push to the stages repository can write one): the size is
bounded before reading, the schema is checked field by field, and a report that fails a check counts
as a silent cluster: it blocks deletion, it never protects less.
"""
from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Iterable

from registry import mediatypes as mt
from registry.cleanup.inuse import InUse, image_keys
from registry.cleanup.releases import ReleaseRevision
from registry.digest import is_digest, sha256_digest
from registry.errors import NotFound, RegistryError
from registry.model import Descriptor, Manifest, parse_manifest
from registry.records import format_time, parse_time
from common import jsonsafe

REPORT_MEDIA_TYPE = "application/vnd.kade.cluster-report.v1+json"
TAG_PREFIX = "cluster-"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
MAX_REPORT_BYTES = 8 * 1024 * 1024
MAX_ENTRIES = 100_000  # uses, releases
MAX_STRING = 1024
MAX_USERS = 5  # users named per image (the rest counted)
MAX_IMAGES_PER_REVISION = 1000
MAX_PROBLEMS = 100
CLOCK_SKEW = timedelta(minutes=5)


class ReportError(ValueError):
    """A report that fails a check: its cluster counts as silent."""


@dataclass(frozen=True)
class ClusterReport:
    cluster: str
    created: datetime
    uses: tuple[tuple[str, Any, tuple[str, ...]], ...] = ()  # ("tag", (path, tag) | "digest", digest, users)
    releases: tuple[ReleaseRevision, ...] = ()
    problems: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()  # what was scanned; () = every namespace

    def to_bytes(self) -> bytes:
        doc = {
            "schemaVersion": 1, "cluster": self.cluster, "created": format_time(self.created),
            "namespaces": list(self.namespaces),
            "uses": [{**({"repository": key[0], "tag": key[1]} if kind == "tag" else {"digest": key}),
                      "users": list(users)} for kind, key, users in self.uses],
            "releases": [{"kind": r.kind, "namespace": r.namespace, "name": r.name, "revision": r.revision,
                          "deployed": format_time(r.deployed) if r.deployed else None, "images": list(r.images)}
                         for r in self.releases],
            "problems": list(self.problems),
        }
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class ReportEntry:
    """One `cluster-*` tag of the stages repository: the report, or why it can't be used."""

    tag: str
    cluster: str
    report: ClusterReport | None = None
    error: str | None = None


def report_tag(cluster: str) -> str:
    if not NAME_RE.match(cluster):
        raise ReportError(f"cluster name {cluster!r}: use letters, digits, '.', '_' or '-' (at most 63, "
                          "starting with a letter or digit)")
    return TAG_PREFIX + cluster


def is_report_tag(tag: str) -> bool:
    return tag.startswith(TAG_PREFIX) and NAME_RE.match(tag[len(TAG_PREFIX):]) is not None


def cluster_of(tag: str) -> str:
    return tag[len(TAG_PREFIX):]


# ---- building a report (pure) --------------------------------------------------------------------

def make_report(cluster: str, created: datetime, in_use: InUse, releases: Iterable[ReleaseRevision],
                problems: Iterable[str], namespaces: Iterable[str], repo_paths: Iterable[str],
                digests: Iterable[str], label: str = "") -> ClusterReport:
    """A cluster's report, limited to images of `repo_paths` (host ignored) or of `digests`; users
    lose the scan's `label/` prefix (readers say which cluster)."""
    report_tag(cluster)  # validates the name
    relevant = _Relevance(frozenset(repo_paths), frozenset(digests))

    def users_of(users: list[str]) -> tuple[str, ...]:
        prefix = f"{label}/" if label else ""
        return _capped_users([u[len(prefix):] if prefix and u.startswith(prefix) else u for u in users])

    uses: list[tuple[str, Any, tuple[str, ...]]] = [
        ("tag", key, users_of(users)) for key, users in sorted(in_use.tags.items()) if relevant.path(key[0])]
    uses += [("digest", d, users_of(users)) for d, users in sorted(in_use.digests.items()) if relevant.digest(d)]
    kept_releases = []
    for r in releases:
        images = tuple(i for i in r.images if relevant.image(i))
        if len(images) > MAX_IMAGES_PER_REVISION:
            raise ReportError(f"{r.label()} names {len(images)} images, more than a report holds "
                              f"({MAX_IMAGES_PER_REVISION})")
        if images:
            kept_releases.append(ReleaseRevision(cluster, r.kind, r.namespace, r.name, r.revision, r.deployed,
                                                 images))
    if max(len(uses), len(kept_releases)) > MAX_ENTRIES:  # never drop one: a missing entry would be deleted
        raise ReportError(f"cluster {cluster}: {len(uses)} images in use and {len(kept_releases)} release "
                          f"revisions, more than a report holds ({MAX_ENTRIES} each): scan fewer namespaces")
    problems = [p[:MAX_STRING] for p in problems]
    if len(problems) > MAX_PROBLEMS:  # one is enough to block; say how many there were
        problems = problems[:MAX_PROBLEMS - 1] + [f"... and {len(problems) - MAX_PROBLEMS + 1} more"]
    return ClusterReport(cluster, created, tuple(uses), tuple(kept_releases), tuple(problems),
                         tuple(sorted(namespaces)))


@dataclass(frozen=True)
class _Relevance:
    paths: frozenset[str]
    digests: frozenset[str]

    def path(self, path: str) -> bool:
        return path in self.paths

    def digest(self, digest: str) -> bool:
        return digest in self.digests

    def image(self, image: str) -> bool:
        return any(self.path(key[0]) if kind == "tag" else self.digest(key) for kind, key in image_keys(image))


def _capped_users(users: list[str]) -> tuple[str, ...]:
    unique = list(dict.fromkeys(users))
    if len(unique) <= MAX_USERS:
        return tuple(unique)
    return tuple(unique[:MAX_USERS - 1]) + (f"... and {len(unique) - MAX_USERS + 1} more",)


# ---- reading a report (pure) ---------------------------------------------------------------------

def parse_report(data: bytes, source: str) -> ClusterReport:
    """Validate a report's JSON field by field; ReportError names `source` and the field."""
    if len(data) > MAX_REPORT_BYTES:
        raise ReportError(f"{source}: more than {MAX_REPORT_BYTES} bytes")
    try:
        doc = jsonsafe.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise ReportError(f"{source}: not JSON") from None
    if not isinstance(doc, dict):
        raise ReportError(f"{source}: not a JSON object")
    if doc.get("schemaVersion") != 1:
        raise ReportError(f"{source}: unsupported schemaVersion {doc.get('schemaVersion')!r} (this kade reads 1)")
    cluster = _string(doc, "cluster", source)
    if not NAME_RE.match(cluster):
        raise ReportError(f"{source}: cluster: not a cluster name: {cluster[:80]!r}")
    try:
        created = parse_time(doc.get("created"), source)
    except ValueError as exc:
        raise ReportError(str(exc)) from None
    uses = tuple(_use(u, f"{source}: uses[{i}]") for i, u in enumerate(_objects(doc, "uses", source)))
    releases = tuple(_revision(r, cluster, f"{source}: releases[{i}]")
                     for i, r in enumerate(_objects(doc, "releases", source)))
    problems = tuple(_strings(doc, "problems", source, MAX_PROBLEMS))
    namespaces = tuple(_strings(doc, "namespaces", source, MAX_ENTRIES))
    return ClusterReport(cluster, created, uses, releases, problems, namespaces)


def _use(u: dict[str, Any], where: str) -> tuple[str, Any, tuple[str, ...]]:
    users = tuple(_strings(u, "users", where, MAX_USERS))
    if "digest" in u:
        digest = _string(u, "digest", where)
        if not is_digest(digest):
            raise ReportError(f"{where}.digest: not a digest")
        return "digest", digest, users
    return "tag", (_string(u, "repository", where), _string(u, "tag", where)), users


def _revision(r: dict[str, Any], cluster: str, where: str) -> ReleaseRevision:
    kind = r.get("kind")
    if kind not in ("kade", "helm"):
        raise ReportError(f"{where}.kind: expected kade or helm, got {str(kind)[:40]!r}")
    revision = r.get("revision")
    if isinstance(revision, bool) or not isinstance(revision, int) or revision < 0:
        raise ReportError(f"{where}.revision: expected a revision number")
    deployed = r.get("deployed")
    try:
        when = None if deployed is None else parse_time(deployed, where)
    except ValueError as exc:
        raise ReportError(str(exc)) from None
    return ReleaseRevision(cluster, kind, _string(r, "namespace", where, empty=True), _string(r, "name", where),
                           revision, when, tuple(_strings(r, "images", where, MAX_IMAGES_PER_REVISION)))


def _string(obj: Any, key: str, where: str, empty: bool = False) -> str:
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, str) or (not value and not empty) or len(value) > MAX_STRING:
        raise ReportError(f"{where}.{key}: expected a string of at most {MAX_STRING} characters")
    return value


def _strings(obj: dict[str, Any], key: str, where: str, limit: int) -> list[str]:
    value = obj.get(key, [])
    if not isinstance(value, list) or len(value) > limit:
        raise ReportError(f"{where}.{key}: expected a list of at most {limit} strings")
    for i, s in enumerate(value):
        if not isinstance(s, str) or not s or len(s) > MAX_STRING:
            raise ReportError(f"{where}.{key}[{i}]: expected a string of at most {MAX_STRING} characters")
    return value


def _objects(obj: dict[str, Any], key: str, where: str) -> list[dict[str, Any]]:
    value = obj.get(key, [])
    if not isinstance(value, list) or len(value) > MAX_ENTRIES:
        raise ReportError(f"{where}.{key}: expected a list of at most {MAX_ENTRIES} objects")
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise ReportError(f"{where}.{key}[{i}]: expected an object")
    return value


# ---- judging reports (pure) ----------------------------------------------------------------------

@dataclass
class Merged:
    """The fresh reports' facts, and why deletion is blocked (silent or unreadable clusters)."""

    in_use: InUse = field(default_factory=InUse)
    releases: list[ReleaseRevision] = field(default_factory=list)
    blockers: list[str] = field(default_factory=list)
    used: list[str] = field(default_factory=list)  # clusters whose reports count


def merge_reports(entries: Iterable[ReportEntry], own: Iterable[str], now: datetime,
                  max_age: timedelta) -> Merged:
    """Reports of the clusters not scanned by this run: fresh ones count, the rest block deletion."""
    out = Merged()
    own = set(own)
    for e in sorted(entries, key=lambda e: e.cluster):
        if e.cluster in own:
            continue  # this run scanned that cluster itself, just now
        why = report_problem(e, now, max_age)
        if why:
            out.blockers.append(why)
            continue
        assert e.report is not None
        out.used.append(e.cluster)
        for kind, key, users in e.report.uses:
            for user in users:
                out.in_use.add_key(kind, key, f"cluster {e.cluster}: {user}")
        out.releases.extend(e.report.releases)
        out.blockers.extend(f"cluster {e.cluster} could not read everything: {p}" for p in e.report.problems)
    return out


def report_problem(e: ReportEntry, now: datetime, max_age: timedelta) -> str | None:
    """Why a report can't be trusted to speak for its cluster now, or None."""
    forget = f"(or `kade cleanup clusters --forget {e.cluster}` if the cluster is gone)"
    if e.report is None:
        return f"cluster {e.cluster}: its report {e.tag} can't be read ({e.error}); publish it again {forget}"
    r = e.report
    if r.cluster != e.cluster:
        return f"cluster {e.cluster}: its report {e.tag} names cluster {r.cluster}; publish it again {forget}"
    if r.created > now + CLOCK_SKEW:
        return (f"cluster {e.cluster}: its report is dated in the future ({format_time(r.created)}); "
                f"check that cluster's clock and publish again {forget}")
    if now - r.created > max_age:
        return (f"cluster {e.cluster} is silent: last report {format_time(r.created)}, older than "
                f"{_hours(max_age)}; run its cleanup CronJob or `kade cleanup report` there {forget}")
    return None


def _hours(d: timedelta) -> str:
    hours = d.total_seconds() / 3600
    return f"{hours:g}h"


# ---- registry I/O --------------------------------------------------------------------------------

def report_manifest(report: ClusterReport) -> tuple[bytes, bytes]:
    """(config bytes, manifest bytes) of a report."""
    config = report.to_bytes()
    if len(config) > MAX_REPORT_BYTES:
        raise ReportError(f"the report of cluster {report.cluster} is {len(config)} bytes, more than "
                          f"{MAX_REPORT_BYTES}: scan fewer namespaces")
    manifest = Manifest(
        config=Descriptor(REPORT_MEDIA_TYPE, sha256_digest(config), len(config)),
        layers=[Descriptor(mt.OCI_EMPTY, mt.OCI_EMPTY_DIGEST, len(mt.OCI_EMPTY_BYTES))],
        media_type=mt.OCI_MANIFEST, artifact_type=REPORT_MEDIA_TYPE,
        annotations={"org.opencontainers.image.created": format_time(report.created)})
    return config, manifest.to_bytes()


def publish_report(repo: Any, report: ClusterReport) -> str:
    """Push the report (blobs first), move the cluster's tag onto it in one PUT, then drop the
    previous report's manifest. Returns the tag."""
    tag = report_tag(report.cluster)
    config, manifest = report_manifest(report)
    previous = repo.head_manifest(tag)
    repo.upload_blob(io.BytesIO(mt.OCI_EMPTY_BYTES), mt.OCI_EMPTY_DIGEST, len(mt.OCI_EMPTY_BYTES))
    repo.upload_blob(io.BytesIO(config), sha256_digest(config), len(config))
    digest = repo.put_manifest(tag, manifest, mt.OCI_MANIFEST)
    if previous is not None and previous.digest != digest:
        try:
            repo.delete_manifest(previous.digest)
        except RegistryError:
            pass  # an untagged manifest left for the registry's garbage collection: harmless
    return tag


def read_report(repo: Any, tag: str) -> ReportEntry:
    """The report tagged `tag`, or an entry saying why it can't be used."""
    cluster = cluster_of(tag)
    where = f"{getattr(repo, 'name', '')}:{tag}"
    try:
        body, desc = repo.get_manifest(tag)
        manifest = parse_manifest(body, desc.media_type)
        config = getattr(manifest, "config", None)
        if not isinstance(manifest, Manifest) or config is None or config.media_type != REPORT_MEDIA_TYPE:
            return ReportEntry(tag, cluster, error="not a kade cluster report")
        if config.size > MAX_REPORT_BYTES:
            return ReportEntry(tag, cluster, error=f"its config is {config.size} bytes, more than {MAX_REPORT_BYTES}")
        with repo.open_blob(config.digest, config.size) as stream:
            data = stream.read(MAX_REPORT_BYTES + 1)
        return ReportEntry(tag, cluster, parse_report(data, where))
    except NotFound:
        return ReportEntry(tag, cluster, error="deleted while reading")
    except (RegistryError, ReportError, ValueError) as exc:
        return ReportEntry(tag, cluster, error=str(exc))


def read_reports(repo: Any, tags: Iterable[str]) -> list[ReportEntry]:
    return [read_report(repo, t) for t in sorted(tags) if is_report_tag(t)]
