"""Build records: one small OCI manifest per build in the stages repo, mapping commit -> images -> steps.

Tag `build-<commit40 | nocommit>-<unix milliseconds>`; artifactType and config media type
`application/vnd.kade.build-record.v1+json`; layers = [the OCI empty descriptor]; config JSON:

    {"schemaVersion": 1, "commit": "<40hex>"|null, "branch": "<name>"|null, "created": "<RFC3339 UTC>",
     "images": [{"name": ..., "repository": "<host/repo>", "tags": [...], "digest": "sha256:...",
                 "steps": ["<64hex key>", ...]}]}

The builder writes them (`push_record`), cleanup reads them (`list_records`).
"""
from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterator

from registry import cancel
from registry import mediatypes as mt
from registry.digest import is_digest, sha256_digest
from registry.errors import InvalidManifest, NotFound
from registry.model import Descriptor, Manifest, parse_manifest
from common import jsonsafe

RECORD_MEDIA_TYPE = "application/vnd.kade.build-record.v1+json"
RECORD_TAG_RE = re.compile(r"^build-([0-9a-f]{40}|nocommit)-([0-9]{1,16})$")
STEP_KEY_RE = re.compile(r"^[0-9a-f]{64}$")
MAX_RECORD_BYTES = 4 * 1024 * 1024
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class RecordImage:
    name: str
    repository: str  # host/repo of the final tag
    tags: tuple[str, ...]
    digest: str
    steps: tuple[str, ...] = ()


@dataclass(frozen=True)
class BuildRecord:
    commit: str | None
    branch: str | None
    created: datetime  # timezone-aware UTC
    images: tuple[RecordImage, ...] = field(default_factory=tuple)

    @property
    def tag(self) -> str:
        millis = int(self.created.timestamp() * 1000)
        return f"build-{self.commit or 'nocommit'}-{millis}"

    def to_config_bytes(self) -> bytes:
        doc = {
            "schemaVersion": 1,
            "commit": self.commit,
            "branch": self.branch,
            "created": format_time(self.created),
            "images": [{"name": i.name, "repository": i.repository, "tags": list(i.tags), "digest": i.digest,
                        "steps": list(i.steps)} for i in self.images],
        }
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def from_config_bytes(cls, data: bytes, source: str = "build record") -> "BuildRecord":
        """Parse and validate; raise InvalidManifest naming `source` and the field at fault."""
        try:
            doc = jsonsafe.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidManifest(f"{source}: not JSON ({exc}); delete or re-push this build record") from None
        if not isinstance(doc, dict):
            raise InvalidManifest(f"{source}: expected a JSON object")
        if doc.get("schemaVersion") != 1:
            raise InvalidManifest(f"{source}: unsupported schemaVersion {doc.get('schemaVersion')!r} "
                                  "(this kade reads version 1; upgrade kade)")
        commit = doc.get("commit")
        if commit is not None and (not isinstance(commit, str) or not _COMMIT_RE.match(commit)):
            raise InvalidManifest(f"{source}: commit must be 40 lowercase hex characters or null, got {commit!r}")
        branch = doc.get("branch")
        if branch is not None and not isinstance(branch, str):
            raise InvalidManifest(f"{source}: branch must be a string or null")
        created = parse_time(doc.get("created"), source)
        images_raw = doc.get("images")
        if not isinstance(images_raw, list):
            raise InvalidManifest(f"{source}: images must be a list")
        images = tuple(_image(x, f"{source}: images[{i}]") for i, x in enumerate(images_raw))
        return cls(commit=commit, branch=branch, created=created, images=images)


def _image(x: Any, where: str) -> RecordImage:
    if not isinstance(x, dict):
        raise InvalidManifest(f"{where}: expected an object")
    for key in ("name", "repository", "digest"):
        if not isinstance(x.get(key), str) or not x[key]:
            raise InvalidManifest(f"{where}.{key}: expected a non-empty string")
    if not is_digest(x["digest"]):
        raise InvalidManifest(f"{where}.digest: not a digest: {x['digest']!r}")
    tags, steps = x.get("tags", []), x.get("steps", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
        raise InvalidManifest(f"{where}.tags: expected a list of tag names")
    if not isinstance(steps, list) or not all(isinstance(s, str) and STEP_KEY_RE.match(s) for s in steps):
        raise InvalidManifest(f"{where}.steps: expected a list of 64-hex step keys")
    return RecordImage(x["name"], x["repository"], tuple(tags), x["digest"], tuple(steps))


def format_time(t: datetime) -> str:
    t = t.astimezone(timezone.utc)
    frac = f".{t.microsecond // 1000:03d}" if t.microsecond else ""
    return t.strftime("%Y-%m-%dT%H:%M:%S") + frac + "Z"


def parse_time(value: Any, source: str) -> datetime:
    if not isinstance(value, str):
        raise InvalidManifest(f"{source}: created must be an RFC 3339 time string")
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise InvalidManifest(f"{source}: created is not an RFC 3339 time: {value!r}") from None
    if t.tzinfo is None:
        raise InvalidManifest(f"{source}: created has no time zone: {value!r}")
    return t.astimezone(timezone.utc)


def record_manifest(record: BuildRecord) -> tuple[bytes, bytes]:
    """(config bytes, manifest bytes) of a record."""
    config = record.to_config_bytes()
    manifest = Manifest(
        config=Descriptor(RECORD_MEDIA_TYPE, sha256_digest(config), len(config)),
        layers=[Descriptor(mt.OCI_EMPTY, mt.OCI_EMPTY_DIGEST, len(mt.OCI_EMPTY_BYTES))],
        media_type=mt.OCI_MANIFEST,
        artifact_type=RECORD_MEDIA_TYPE,
    )
    return config, manifest.to_bytes()


def push_record(repo: Any, record: BuildRecord, key: Any = None) -> str:
    """Push a record to the stages repository (blobs first, then the manifest); return its tag. With
    `key` (registry.sigkeys.SigningKey, the tenant's build key) the manifest carries its signature."""
    config, manifest = record_manifest(record)
    if key is not None:
        from registry import stagesig

        manifest = stagesig.sign(parse_manifest(manifest), "record", stagesig.repository_name(repo), record.tag,  # type: ignore[arg-type]
                                 key).to_bytes()
    repo.upload_blob(io.BytesIO(mt.OCI_EMPTY_BYTES), mt.OCI_EMPTY_DIGEST, len(mt.OCI_EMPTY_BYTES))
    repo.upload_blob(io.BytesIO(config), sha256_digest(config), len(config), skip_existing=False)  # new: no HEAD
    repo.put_manifest(record.tag, manifest, mt.OCI_MANIFEST)
    return record.tag


def is_record_tag(tag: str) -> bool:
    return RECORD_TAG_RE.match(tag) is not None


def record_tag_millis(tag: str) -> int | None:
    m = RECORD_TAG_RE.match(tag)
    return int(m.group(2)) if m else None


def read_record(repo: Any, tag: str) -> tuple[str, BuildRecord]:
    """(manifest digest, record) of the record tagged `tag`."""
    body, desc = repo.get_manifest(tag)
    where = f"build record {getattr(repo, 'name', '')}:{tag}"
    manifest = parse_manifest(body, desc.media_type)
    if not isinstance(manifest, Manifest) or manifest.config.media_type != RECORD_MEDIA_TYPE:
        raise InvalidManifest(f"{where}: not a kade build record (config media type "
                              f"{getattr(getattr(manifest, 'config', None), 'media_type', None)!r})")
    if manifest.config.size > MAX_RECORD_BYTES:  # records are data anyone who can push may write
        raise InvalidManifest(f"{where}: its config is {manifest.config.size} bytes, more than a build record "
                              f"has ({MAX_RECORD_BYTES}); delete this tag")
    data = repo.read_small_blob(manifest.config, MAX_RECORD_BYTES, "build record")
    return desc.digest, BuildRecord.from_config_bytes(data, where)


def list_records(repo: Any, tags: list[str] | None = None, workers: int = 8) -> Iterator[tuple[str, BuildRecord]]:
    """(tag, record) for every build record in the stages repository, oldest first.

    `tags` (the repository's tag list) saves a listing when the caller has one already."""
    for tag, _, record in read_records(repo, tags, workers):
        yield tag, record


def read_records(repo: Any, tags: list[str] | None = None,
                 workers: int = 8) -> Iterator[tuple[str, str, BuildRecord]]:
    """(tag, manifest digest, record) for every build record, oldest first; a record deleted while
    listing is left out."""
    names = sorted((t for t in (tags if tags is not None else repo.list_tags()) if is_record_tag(t)),
                   key=lambda t: (record_tag_millis(t), t))

    def read(tag: str) -> tuple[str, BuildRecord] | None:
        try:
            return read_record(repo, tag)
        except NotFound:
            return None

    with cancel.Pool(max_workers=max(1, workers)) as pool:
        for tag, found in zip(names, pool.map(read, names)):
            if found is not None:
                yield tag, found[0], found[1]
