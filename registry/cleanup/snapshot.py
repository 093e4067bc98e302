"""Read what the plan needs from the registry: build records, every tag's current digest in the stages
repository and in the image repositories given (never in a repository only a build record names: a
record is data anyone with push rights to the stages repository can write), the creation time of
step images no record names, and referrers (the indexes tagged `sha256-<hex>` of the image
repositories as they are listed; the referrers of what the plan deletes when it asks, `read_referrers`).
Requests run on a small thread pool (HEADs dominate: one per tag)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Iterable

from registry import cancel
from registry import mediatypes as mt
from registry.cleanup.errors import CleanupError
from registry.cleanup.follow import MAX_DEPTH, MAX_ENTRIES, Referrer, Referrers, index_tag, subject_of_tag
from registry.errors import InvalidManifest, NotFound, RegistryError
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
    referrers: dict[str, dict[str, Referrers]] = field(default_factory=dict)  # repo -> subject -> referrers
    referrers_api: frozenset[str] = frozenset()  # repositories whose registry answers the referrers API
    missing_subjects: dict[str, frozenset[str]] = field(default_factory=dict)  # repo -> gone subjects of its tags


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


def index_children(repo: Any, tagged: dict[str, Descriptor], workers: int = 8) -> dict[str, frozenset[str]]:
    """index digest -> the manifests it lists, for every tagged image index (multi-platform image; a
    referrers index `sha256-<hex>` is not one: see `tagged_referrers`)."""
    digests = list(dict.fromkeys(d.digest for t, d in tagged.items() if is_index(d.media_type) and not subject_of_tag(t)))

    def children(digest: str) -> frozenset[str]:
        body, got = repo.get_manifest(digest)
        return frozenset(m.digest for m in getattr(parse_manifest(body, got.media_type), "manifests", []))

    with cancel.Pool(max_workers=max(1, workers)) as pool:
        return dict(zip(digests, pool.map(children, digests)))


def missing_subjects(repo: Any, tags: dict[str, str | None], indexes: dict[str, frozenset[str]],
                     listed: set[str], workers: int = 8) -> frozenset[str]:
    """The subjects of follower tags (`sha256-<hex>`, `.sig`, ...) the registry does not have: one HEAD
    each for those not tagged, nor listed by a tagged index or a referrers index (`listed`: an SBOM
    is untagged, its `.sig` costs no HEAD)."""
    present = {d for d in tags.values() if d} | {c for children in indexes.values() for c in children} | listed
    subjects = sorted({p[0] for p in map(subject_of_tag, tags) if p} - present)
    with cancel.Pool(max_workers=max(1, workers)) as pool:
        heads = list(pool.map(repo.head_manifest, subjects))
    return frozenset(s for s, h in zip(subjects, heads) if h is None)


def has_referrers_api(repo: Any) -> bool:
    """Whether the registry answers the referrers API (asked once, about the empty descriptor's digest)."""
    return repo.get_referrers(mt.OCI_EMPTY_DIGEST) is not None


def tagged_referrers(repo: Any, tags: Iterable[str], workers: int = 8) -> dict[str, Referrers]:
    """subject -> what its referrers index (tag `sha256-<hex>`) lists, for each such tag (a registry
    without the referrers API: these are all its referrers)."""
    subjects = [parsed[0] for parsed in map(subject_of_tag, tags) if parsed and parsed[2]]
    with cancel.Pool(max_workers=max(1, workers)) as pool:
        found = list(pool.map(lambda s: _read_referrers(repo, s, True, False)[0], subjects))
    return dict(zip(subjects, found))


def read_referrers(repo: Any, subjects: Iterable[str], tags: dict[str, str | None], has_api: bool,
                   workers: int = 8, budget: int = 100_000) -> tuple[dict[str, Referrers], dict[str, str]]:
    """(subject -> its referrers, index tag -> its digest) for `subjects` and, level by level, for what
    they list, MAX_DEPTH levels down: through the referrers API when the registry has it, and the
    `sha256-<hex>` index tag when there is one. At most `budget` listed manifests are followed in all
    (what is left is reported unread, and the plan keeps it)."""
    found: dict[str, Referrers] = {}
    digests: dict[str, str] = {}
    level = list(dict.fromkeys(subjects))
    with cancel.Pool(max_workers=max(1, workers)) as pool:
        for _ in range(MAX_DEPTH + 1):
            level = [d for d in dict.fromkeys(level) if d not in found][:max(0, budget)]
            if not level:
                break
            results = list(pool.map(lambda s: _read_referrers(repo, s, index_tag(s) in tags, has_api), level))
            listed: list[str] = []
            for subject, (referrers, digest) in zip(level, results):
                found[subject] = referrers
                if digest is not None:
                    digests[index_tag(subject)] = digest
                if not referrers.problem:
                    listed.extend(r.digest for r in referrers.entries)
            budget -= len(listed)
            level = listed
    return found, digests


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
    referrers: dict[str, dict[str, Referrers]] = {}
    api: set[str] = set()
    missing: dict[str, frozenset[str]] = {}
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
        children = index_children(repo, descs, workers)
        if children:
            indexes[name] = children
        if has_referrers_api(repo):
            api.add(name)
        elif name != stages_name:  # (the stages repository's are read for the step images the plan deletes)
            referrers[name] = tagged_referrers(repo, tags[name], workers)
        if name != stages_name:  # (its tags are read: a subject not among them may be gone)
            listed = {r.digest for found in referrers.get(name, {}).values() for r in found.entries}
            gone = missing_subjects(repo, tags[name], children, listed, workers)
            if gone:
                missing[name] = gone
        if report:
            report("read", f"{name}: {len(tags[name])} tags")
    orphans = [t for t in orphans if t in tags[stages_name]]
    with cancel.Pool(max_workers=max(1, workers)) as pool:
        created = dict(zip(orphans, pool.map(lambda k: step_created_time(stages, k), orphans)))
    return RegistrySnapshot(stages_name, records, tags, created, indexes, referrers, frozenset(api), missing)


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


def _read_referrers(repo: Any, subject: str, tagged: bool, has_api: bool) -> tuple[Referrers, str | None]:
    """(the referrers of `subject`: the API's answer and its index tag's entries, the index tag's digest)."""
    entries: dict[str, Referrer] = {}
    digest = None
    try:
        answer = repo.get_referrers(subject) if has_api else None
        if answer is not None:
            entries.update(_index_entries(answer[0], f"the referrers API's answer for {subject[:19]}"))
        if tagged:
            try:
                body, desc = repo.get_manifest(index_tag(subject), mt.OCI_INDEX)
                digest = desc.digest
                entries.update(_index_entries(body, f"tag {index_tag(subject)}"))
            except NotFound:
                pass  # deleted since it was listed
    except InvalidManifest as exc:
        return Referrers(problem=str(exc)), digest
    if len(entries) > MAX_ENTRIES:
        return Referrers(problem=f"it lists {len(entries)} manifests, more than {MAX_ENTRIES}"), digest
    return Referrers(tuple(entries.values())), digest


def _index_entries(body: bytes, what: str) -> dict[str, Referrer]:
    """The manifests an index lists (entries of other media types, e.g. blobs, are not referrers)."""
    index = parse_manifest(body, mt.OCI_INDEX)
    if not isinstance(index, Index):
        raise InvalidManifest(f"{what} is not an index")
    if len(index.manifests) > MAX_ENTRIES:
        raise InvalidManifest(f"{what} lists {len(index.manifests)} manifests, more than {MAX_ENTRIES}")
    return {d.digest: Referrer(d.digest, d.artifact_type or "") for d in index.manifests
            if d.media_type in mt.ALL_MANIFESTS}
