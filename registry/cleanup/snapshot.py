"""Read what the plan needs from the registry: build records, every tag's current digest in the stages
repository and in the image repositories given (never in a repository only a build record names: a
record is data anyone with push rights to the stages repository can write), and the creation time of
step images no record names. Requests run on a small thread pool (HEADs dominate: one per tag)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Iterable

from registry import cancel
from registry.cleanup.errors import CleanupError
from registry.errors import NotFound, RegistryError
from registry.mediatypes import is_index
from registry.imageconfig import ImageConfig
from registry.model import Descriptor, Index, Manifest, parse_manifest
from registry.records import STEP_KEY_RE, BuildRecord, parse_time, read_records
from registry.reference import Reference

Report = Callable[..., None]


@dataclass
class RegistrySnapshot:
    stages_repo: str
    records: list[tuple[str, BuildRecord]]
    tags: dict[str, dict[str, str | None]]  # repository -> tag -> digest (None: not read, see plan.Facts)
    step_created: dict[str, datetime | None]
    indexes: dict[str, dict[str, frozenset[str]]] = field(default_factory=dict)  # repo -> index -> children


def canonical_repo(name: str) -> str:
    """`host:port/team/app` in Reference's canonical form (docker.io names get their defaults)."""
    return Reference.parse(name, default_tag=None).name


_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def valid_tags(names: Iterable[str]) -> list[str]:
    """Only names a tag can have: a registry listing `../x` or `a/b` gets no request built from it."""
    return [n for n in names if isinstance(n, str) and _TAG_RE.match(n)]


def list_tag_descriptors(repo: Any, workers: int = 8, tags: Iterable[str] | None = None) -> dict[str, Descriptor]:
    """tag -> descriptor for every tag (a tag deleted while listing is left out)."""
    try:
        names = valid_tags(tags if tags is not None else repo.list_tags())
    except NotFound:
        return {}
    with cancel.Pool(max_workers=max(1, workers)) as pool:
        descs = list(pool.map(repo.head_manifest, names))
    return {t: d for t, d in zip(names, descs) if d is not None}


def index_children(repo: Any, descriptors: Iterable[Descriptor]) -> dict[str, frozenset[str]]:
    """index digest -> the manifests it lists, for every tagged image index (multi-platform image)."""
    out: dict[str, frozenset[str]] = {}
    for desc in descriptors:
        if is_index(desc.media_type) and desc.digest not in out:
            body, got = repo.get_manifest(desc.digest)
            index = parse_manifest(body, got.media_type)
            out[desc.digest] = frozenset(m.digest for m in index.manifests) if isinstance(index, Index) else frozenset()
    return out


def step_created_time(repo: Any, key: str) -> datetime | None:
    """The `created` time of a step image's config, or None when it has none (or can't be read)."""
    try:
        body, desc = repo.get_manifest(key)
        manifest = parse_manifest(body, desc.media_type)
        if not isinstance(manifest, Manifest):
            return None
        with repo.open_blob(manifest.config.digest) as stream:
            created = ImageConfig.from_bytes(stream.read(4 * 1024 * 1024)).created
        return parse_time(created, key) if created else None
    except (RegistryError, ValueError):
        return None


def read_snapshot(client: Any, stages_repo: str, extra_repos: Iterable[str] = (), report: Report | None = None,
                  workers: int = 8) -> RegistrySnapshot:
    stages_name = canonical_repo(stages_repo)
    stages = client.repository(stages_name)
    try:
        stage_tags = list(stages.list_tags())
    except NotFound:
        raise CleanupError(f"stages repository {stages_name} does not exist: nothing kade built is there "
                           "(check --repo / --stages-repo)") from None
    # Records name repositories as written at build time; the plan compares canonical names.
    found = list(read_records(stages, stage_tags, workers=workers))
    records = [(t, _canonical_record(r)) for t, _, r in found]
    record_digests = {t: d for t, d, _ in found}
    if report:
        report("read", f"{stages_name}: {len(stage_tags)} tags, {len(records)} build records")
    repos = {stages_name, *(canonical_repo(r) for r in extra_repos)}
    named = {s for _, rec in records for img in rec.images for s in img.steps}
    orphans = [t for t in stage_tags if STEP_KEY_RE.match(t) and t not in named]
    tags: dict[str, dict[str, str | None]] = {}
    indexes: dict[str, dict[str, frozenset[str]]] = {}
    for name in sorted(repos):
        repo = stages if name == stages_name else client.repository(name)
        if name == stages_name:
            # The records' digests are known; orphan steps may be deleted by age: read them. The other
            # tags (steps a record names, reports, foreign tags) are decided by name: their digests
            # are read only if the plan would delete them (run.plan_cleanup).
            descs = list_tag_descriptors(repo, workers, orphans)
            tags[name] = {**{t: None for t in valid_tags(stage_tags)}, **{t: d.digest for t, d in descs.items()},
                          **record_digests}
            for gone in set(orphans) - set(descs):  # deleted while listing
                tags[name].pop(gone, None)
        else:
            descs = list_tag_descriptors(repo, workers)
            tags[name] = {t: d.digest for t, d in descs.items()}
        children = index_children(repo, descs.values())
        if children:
            indexes[name] = children
        if report:
            report("read", f"{name}: {len(tags[name])} tags")
    orphans = [t for t in orphans if t in tags[stages_name]]
    with cancel.Pool(max_workers=max(1, workers)) as pool:
        created = dict(zip(orphans, pool.map(lambda k: step_created_time(stages, k), orphans)))
    return RegistrySnapshot(stages_name, records, tags, created, indexes)


def _canonical_record(record: BuildRecord) -> BuildRecord:
    """The record with its repositories in canonical form; a name that isn't one stays as written (it
    matches no repository given, so the plan reports and ignores it)."""
    from dataclasses import replace

    def canonical(name: str) -> str:
        try:
            return canonical_repo(name)
        except RegistryError:
            return name

    return replace(record, images=tuple(replace(i, repository=canonical(i.repository)) for i in record.images))
