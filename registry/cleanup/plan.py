"""The cleanup plan (pure): build records + the registry's tags + git facts + what the clusters use and
their release histories reference + other clusters' reports + the policy -> for every tag, keep or
delete, with the reasons.

Rules, in order of strength:
  - Only the repositories given are touched: the plan decides the tags of `facts.tags` (the image
    repositories and the stages repository that were read) and nothing else. A build record's image
    in another repository is reported and ignored: it never makes anything deletable, and the record
    (with the step images it names) is kept, since this run can't tell whether that image stays.
  - A silent cluster (its report is older than `cluster_report_max_age`), an unreadable report or an
    unreadable release history blocks deletion: everything is kept, the reason says who is silent.
  - Only what kade pushed is ever deleted: a tag of a final image only when a build record names
    that tag with the digest it points to now; step images (64-hex tags) and build records in the
    stages repository. Everything else is kept ("not pushed by kade").
  - A tag is kept when: the keep list names it or its digest; a cluster uses it by tag or its
    digest by digest; a kept revision of a release (kade's or Helm's, in any cluster) references it
    (a rollback target); a build that pushed it is recent (`keep_built_within`) or kept by a keep
    policy for some git reference.
  - A digest that a kept tag points to is never deleted: when some tags of a digest stay, the others
    are removed one by one (`method="tag"`); only a digest whose every tag goes is deleted by digest.
  - Step images stay while a kept image or a recent build needs them; a step image no record names
    (a build still running, or one that failed) is kept for `orphan_steps_after` from its creation.
  - A build record stays while one of its images is kept or it is recent.

Relations between manifests are passes over the decisions, after them: `_keep_index_children` keeps
what a kept index lists; `_children_going` names the platform manifests an index deleted by digest takes
with it; `_follow_subjects` (registry/cleanup/follow.py) decides what follows a manifest (its
attestations and signatures: the referrers in `Facts.referrers`, the `sha256-<hex>` index and cosign
tags): kept with it, deleted with it. Untagged artifacts become items whose tag is their digest.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterable, Literal

from registry.cleanup.clusters import ReportEntry, cluster_of, is_report_tag, merge_reports
from registry.cleanup.follow import Referrers, follow, subject_of_tag
from registry.cleanup.gitwalk import GitFacts
from registry.cleanup.inuse import InUse
from registry.cleanup.policy import GitRef, Policy, apply_limit, format_duration, select_references
from registry.cleanup.releases import ReleaseRevision, rollback_targets
from registry.records import STEP_KEY_RE, BuildRecord, RecordImage, is_record_tag

Action = Literal["keep", "delete"]
Kind = Literal["image", "step", "record", "report", "attestation", "signature", "other"]
MAX_REASONS = 4
MAX_BLOCKERS_SHOWN = 2


@dataclass(frozen=True)
class PlanItem:
    repository: str
    tag: str  # or, for an untagged artifact, its digest
    digest: str | None  # None: not read (a stages tag kept by name: its digest decides nothing)
    kind: Kind
    action: Action
    reasons: tuple[str, ...]
    method: Literal["tag", "manifest"] | None = None  # how a deletion is carried out
    subject: str | None = None  # attestations and signatures: the digest they follow
    children: tuple[str, ...] = ()  # an index deleted by digest: its platforms' manifests that go with it

    @property
    def untagged(self) -> bool:
        """An artifact known by digest only (a tag never holds a colon)."""
        return ":" in self.tag

    def to_dict(self) -> dict[str, Any]:
        out = {"repository": self.repository, "tag": self.tag, "digest": self.digest, "kind": self.kind,
               "action": self.action, "reasons": list(self.reasons), "method": self.method,
               "subject": self.subject}
        return {**out, "children": list(self.children)} if self.children else out


@dataclass(frozen=True)
class Plan:
    created: datetime
    stages_repo: str
    items: tuple[PlanItem, ...]
    record_tags: frozenset[str]  # the build records the plan saw (newer ones are protected)
    repositories: frozenset[str] = frozenset()  # the only repositories it may delete in
    notes: tuple[str, ...] = ()  # what was ignored (records naming other repositories)
    blockers: tuple[str, ...] = ()  # why nothing is deleted (silent clusters, unreadable histories)
    clusters: tuple[str, ...] = ()  # the clusters whose reports counted
    unread: frozenset[tuple[str, str]] = frozenset()  # (repository, digest): deleted, referrers still unread

    @property
    def deletions(self) -> list[PlanItem]:
        return [i for i in self.items if i.action == "delete"]

    @property
    def kept(self) -> list[PlanItem]:
        return [i for i in self.items if i.action == "keep"]

    def summary(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for i in self.items:
            out[f"{i.action}_{i.kind}"] += 1
            out[i.action] += 1
        return {"keep": out["keep"], "delete": out["delete"], **{k: v for k, v in sorted(out.items()) if "_" in k}}

    def to_dict(self) -> dict[str, Any]:
        return {"created": self.created.isoformat(), "stagesRepository": self.stages_repo,
                "repositories": sorted(self.repositories), "summary": self.summary(),
                "blockers": list(self.blockers), "notes": list(self.notes), "clusterReports": list(self.clusters),
                "items": [i.to_dict() for i in self.items]}


@dataclass
class Facts:
    """Everything the plan depends on, read beforehand by the I/O layer."""

    now: datetime
    stages_repo: str  # host/repo
    records: list[tuple[str, BuildRecord]]  # (record tag, record)
    # repository (host/repo) -> tag -> digest: the repositories in scope. A stages tag's digest may be
    # None (not read): step images a record names, reports, foreign tags. The plan decides those by name;
    # `run.plan_cleanup` reads the digests of the ones it would delete and plans again.
    tags: dict[str, dict[str, str | None]]
    git: GitFacts | None = None
    in_use: InUse | None = None
    step_created: dict[str, datetime | None] = field(default_factory=dict)  # orphan step key -> created
    indexes: dict[str, dict[str, frozenset[str]]] = field(default_factory=dict)  # repo -> index -> children
    releases: list[ReleaseRevision] = field(default_factory=list)  # the scanned clusters' release histories
    problems: list[str] = field(default_factory=list)  # what the scan could not read: blocks deletion
    reports: list[ReportEntry] = field(default_factory=list)  # the stages repository's cluster reports
    own_clusters: frozenset[str] = frozenset()  # clusters this run scanned itself (their reports don't count)
    # repository -> subject digest -> its referrers as read (index tags, the referrers API): see follow.py
    referrers: dict[str, dict[str, Referrers]] = field(default_factory=dict)
    referrers_api: frozenset[str] = frozenset()  # repositories whose registry answers the referrers API
    missing_subjects: dict[str, frozenset[str]] = field(default_factory=dict)  # repo -> digests tags follow, gone


@dataclass(frozen=True)
class _Built:
    """One image of one build record."""

    record_tag: str
    record: BuildRecord
    image: RecordImage


class _Reasons:
    def __init__(self) -> None:
        self._by: dict[Any, list[str]] = defaultdict(list)
        self._extra: dict[Any, int] = defaultdict(int)

    def add(self, key: Any, reason: str) -> None:
        lst = self._by[key]
        if reason in lst:
            return
        if len(lst) < MAX_REASONS:
            lst.append(reason)
        else:
            self._extra[key] += 1

    def get(self, key: Any) -> tuple[str, ...]:
        out = list(self._by.get(key, ()))
        if self._extra.get(key):
            out.append(f"... and {self._extra[key]} more")
        return tuple(out)

    def __contains__(self, key: Any) -> bool:
        return bool(self._by.get(key))


def _short(commit: str | None) -> str:
    return commit[:10] if commit else "none"


def _ordinal(n: int) -> str:
    return "newest" if n == 1 else f"{n}th newest" if n > 3 else ("2nd newest" if n == 2 else "3rd newest")


def policy_keeps(built: list[_Built], git: GitFacts | None, policy: Policy, now: datetime) -> _Reasons:
    """Which built images keep policies and recency keep, keyed by (record tag, image name)."""
    reasons = _Reasons()
    for b in built:
        if b.record.created >= now - policy.keep_built_within:
            reasons.add((b.record_tag, b.image.name), f"built within {_fmt(policy.keep_built_within)} "
                                                      f"({b.record.created:%Y-%m-%d %H:%M}Z)")
    if git is None:
        return reasons
    by_commit: dict[str, list[_Built]] = defaultdict(list)
    for b in built:
        if b.record.commit and b.record.commit in git.commit_times:
            by_commit[b.record.commit].append(b)
    for number, kp in enumerate(policy.keep_policies, 1):
        for ref in select_references(git.refs, kp, now):
            groups: dict[str, list[_Built]] = defaultdict(list)
            for commit in git.contains.get((ref.kind, ref.name), ()):
                for b in by_commit.get(commit, ()):
                    groups[b.image.name].append(b)
            for items in groups.values():
                items.sort(key=lambda b: (git.commit_times[b.record.commit or ""], b.record.created), reverse=True)
                digests: list[str] = []
                times: list[datetime] = []
                for b in items:
                    if b.image.digest not in digests:
                        digests.append(b.image.digest)
                        times.append(git.commit_times[b.record.commit or ""])
                kept = apply_limit(digests, times, kp.images, now)
                for b in items:
                    if b.image.digest in kept:
                        n = digests.index(b.image.digest) + 1
                        reasons.add((b.record_tag, b.image.name),
                                    f"{ref.kind} {ref.name}: {_ordinal(n)} image (policy {number}: {kp.describe()})")
    return reasons


def _fmt(d: Any) -> str:
    return format_duration(d)


def selected_refs(git: GitFacts | None, policy: Policy, now: datetime) -> set[tuple[str, str]]:
    """(kind, name) of every reference some keep policy selects."""
    selected: set[tuple[str, str]] = set()
    if git is None:
        return selected
    for kp in policy.keep_policies:
        selected.update((r.kind, r.name) for r in select_references(git.refs, kp, now))
    return selected


def _why_not(b: _Built, git: GitFacts | None, policy: Policy, selected: set[tuple[str, str]]) -> str:
    commit = b.record.commit
    if commit is None:
        return f"built without a git commit ({b.record_tag}), older than {_fmt(policy.keep_built_within)}"
    if git is None or commit not in git.commit_times:
        return f"commit {_short(commit)} is in no branch or tag of the git repository"
    containing = git.refs_containing(commit)
    if not containing:
        return f"commit {_short(commit)} is in no branch or tag of the git repository"
    in_selected = [r for r in containing if (r.kind, r.name) in selected]
    if not in_selected:
        return f"commit {_short(commit)} is only in references no keep policy selects: {_names(containing)}"
    return f"commit {_short(commit)} is older than the images kept for {_names(in_selected)}"


def _names(refs: list[GitRef]) -> str:
    names = [f"{r.kind} {r.name}" for r in refs[:3]]
    return ", ".join(names) + (f" and {len(refs) - 3} more" if len(refs) > 3 else "")


@dataclass
class _Protection:
    """What protects a tag from deletion besides git: the keep list, the clusters' usage and the kept
    release revisions (the local scan merged with the fresh reports)."""

    policy: Policy
    in_use: InUse | None
    releases: InUse

    def reasons(self, repo: str, tag: str, digest: str | None) -> list[str]:
        """`digest` None: not read, so only the tag's protections can apply."""
        out = []
        listed = self.policy.keep_listed(tag, digest)
        if listed is not None:
            out.append(f"keep list: {listed}")
        if self.in_use is not None:
            users = self.in_use.tag_users(repo, tag)
            if users:
                out.append(f"in use by tag: {_users(users)}")
            users = self.in_use.digest_users(digest) if digest is not None else []
            if users:
                out.append(f"in use by digest: {_users(users)}")
        revisions = list(dict.fromkeys(self.releases.tag_users(repo, tag)
                                            + (self.releases.digest_users(digest) if digest is not None else [])))
        if revisions:
            out.append(_users(revisions))
        return out

    def digest_needed(self, digest: str) -> bool:
        return bool((self.in_use is not None and self.in_use.digest_users(digest))
                    or self.releases.digest_users(digest))


def _cluster_facts(facts: Facts, policy: Policy) -> tuple[_Protection, list[str], list[str]]:
    """(protection, blockers, clusters whose reports count)."""
    merged = merge_reports(facts.reports, facts.own_clusters, facts.now, policy.cluster_report_max_age)
    in_use = facts.in_use
    if merged.used:
        in_use = InUse.merged(*(u for u in (facts.in_use, merged.in_use) if u is not None))
    releases = rollback_targets([*facts.releases, *merged.releases], policy.release_revisions, facts.now)
    blockers = [f"cannot read: {p}" for p in facts.problems] + merged.blockers
    return _Protection(policy, in_use, releases), blockers, merged.used


def _outside(built: list[_Built], scope: frozenset[str]) -> tuple[dict[str, str], list[str]]:
    """Records naming images outside the repositories given: (record tag -> why it is kept, notes)."""
    kept: dict[str, str] = {}
    notes: list[str] = []
    for b in built:
        if b.image.repository not in scope and b.record_tag not in kept:
            kept[b.record_tag] = f"names {b.image.repository}, outside this cleanup: ignored"
            notes.append(f"build record {b.record_tag} names {b.image.repository}@{b.image.digest[:19]}, "
                         f"outside the repositories given ({', '.join(sorted(scope))}): ignored")
    return kept, notes


def make_plan(facts: Facts, policy: Policy, purge: bool = False) -> Plan:
    """Decide every tag of the repositories read (`facts.tags`): the image repositories given and the
    stages repository. Nothing outside them is planned, whatever the build records name."""
    now = facts.now
    scope = frozenset(facts.tags)
    every = [_Built(t, r, img) for t, r in facts.records for img in r.images]
    built = [b for b in every if b.image.repository in scope]
    outside_records, notes = _outside(every, scope)
    keeps = _Reasons() if purge else policy_keeps(built, facts.git, policy, now)
    named: dict[tuple[str, str], list[_Built]] = defaultdict(list)
    for b in built:
        for tag in b.image.tags:
            named[(b.image.repository, tag)].append(b)
    protection, blockers, clusters = _cluster_facts(facts, policy)
    selected = selected_refs(facts.git, policy, now)
    decisions: dict[tuple[str, str], tuple[Kind, Action, tuple[str, ...]]] = {}

    def protections(repo: str, tag: str, digest: str | None) -> list[str]:
        return [] if purge else protection.reasons(repo, tag, digest)

    # 1. Final images' tags.
    for repo, tags in sorted(facts.tags.items()):
        if repo == facts.stages_repo:
            continue
        for tag, digest in sorted(tags.items()):
            if subject_of_tag(tag):
                continue  # follows its subject: decided last
            owners = named.get((repo, tag))
            if not owners:
                decisions[(repo, tag)] = ("other", "keep", ("not pushed by kade (no build record names this tag)",))
                continue
            mine = [b for b in owners if b.image.digest == digest]
            if not mine:
                decisions[(repo, tag)] = ("other", "keep", (
                    "points to a digest no build record names for this tag (moved outside kade?)",))
                continue
            reasons = protections(repo, tag, digest)
            for b in mine:
                reasons.extend(keeps.get((b.record_tag, b.image.name)))
            if reasons:
                decisions[(repo, tag)] = ("image", "keep", _cap(reasons))
            else:
                newest = max(mine, key=lambda b: b.record.created)
                why = "purge" if purge else _why_not(newest, facts.git, policy, selected)
                decisions[(repo, tag)] = ("image", "delete", (why,))

    _keep_index_children(decisions, facts)

    def is_live(b: _Built) -> bool:
        """Some tag this build pushed still points to its image and stays (or the digest is in use)."""
        if not purge and protection.digest_needed(b.image.digest):
            return True
        current = facts.tags.get(b.image.repository, {})
        return any(current.get(t) == b.image.digest and decisions.get((b.image.repository, t), ("", ""))[1] == "keep"
                   for t in b.image.tags)

    # 2. Build records and the steps they need.
    stages = facts.tags.get(facts.stages_repo, {})
    record_by_tag = dict(facts.records)
    needed: dict[str, str] = {}
    named_steps: set[str] = set()
    record_keep: dict[str, list[str]] = defaultdict(list)
    for tag, why in outside_records.items():
        record_keep[tag].append(why)
    for b in every:
        if b.image.repository not in scope:  # its image may stay: so do the steps it names
            for step in b.image.steps:
                needed.setdefault(step, f"named by build record {b.record_tag} for {b.image.repository}, "
                                        "outside this cleanup")
    for b in built:
        named_steps.update(b.image.steps)
        recent = not purge and b.record.created >= now - policy.keep_built_within
        live = is_live(b)
        if live:
            record_keep[b.record_tag].append(f"its image {b.image.repository}@{b.image.digest[:19]} is kept")
        if recent:
            record_keep[b.record_tag].append(f"built within {_fmt(policy.keep_built_within)}")
        if live or recent:
            why = (f"needed by kept image {b.image.repository}@{b.image.digest[:19]}" if live
                   else f"needed by a recent build ({b.record_tag})")
            for step in b.image.steps:
                needed.setdefault(step, why)
    for tag, digest in sorted(stages.items()):
        if subject_of_tag(tag):
            continue
        prot = protections(facts.stages_repo, tag, digest)
        if is_record_tag(tag):
            if tag not in record_by_tag:  # appeared after the records were read: a build is running
                decisions[(facts.stages_repo, tag)] = ("record", "keep", ("newer than this plan",))
                continue
            reasons = prot + record_keep.get(tag, [])
            decisions[(facts.stages_repo, tag)] = (
                ("record", "keep", _cap(reasons)) if reasons else
                ("record", "delete", ("purge" if purge else "none of its images is kept",)))
        elif STEP_KEY_RE.match(tag):
            reasons = prot + ([needed[tag]] if tag in needed else [])
            if reasons:
                decisions[(facts.stages_repo, tag)] = ("step", "keep", _cap(reasons))
            elif purge:
                decisions[(facts.stages_repo, tag)] = ("step", "delete", ("purge",))
            elif tag in named_steps:
                decisions[(facts.stages_repo, tag)] = ("step", "delete", ("only needed by builds that are deleted",))
            else:
                created = facts.step_created.get(tag)
                if created is None or created >= now - policy.orphan_steps_after:
                    when = "creation time unknown" if created is None else f"created {created:%Y-%m-%d %H:%M}Z"
                    decisions[(facts.stages_repo, tag)] = ("step", "keep", (
                        f"no build record names it yet ({when}): a build may still be running",))
                else:
                    decisions[(facts.stages_repo, tag)] = ("step", "delete", (
                        f"no build record names it and it is older than {_fmt(policy.orphan_steps_after)}",))
        elif is_report_tag(tag):
            decisions[(facts.stages_repo, tag)] = (
                ("report", "delete", ("purge",)) if purge else
                ("report", "keep", (f"the report of cluster {cluster_of(tag)} (`kade cleanup clusters`)",)))
        else:
            decisions[(facts.stages_repo, tag)] = ("other", "keep", ("not pushed by kade",))

    _keep_index_children(decisions, facts)
    subjects, unread = _follow_subjects(decisions, facts, built, notes)
    if blockers and not purge:
        _block(decisions, blockers)

    # 3. How each deletion is carried out: by digest only when every tag of the digest goes.
    def digest_of(repo: str, tag: str) -> str | None:
        return facts.tags[repo][tag] if tag in facts.tags[repo] else tag  # an untagged artifact: its digest

    keeps_digest: set[tuple[str, str | None]] = set()
    for (repo, tag), (_, action, _) in decisions.items():
        if action == "keep":  # (a kept tag whose digest was not read: execute re-checks it, see there)
            keeps_digest.add((repo, digest_of(repo, tag)))
    items = []
    for (repo, tag), (kind, action, item_reasons) in sorted(decisions.items()):
        digest = digest_of(repo, tag)
        method = None
        if action == "delete":
            method = "tag" if digest is not None and (repo, digest) in keeps_digest else "manifest"
        children = _children_going(repo, digest, facts, keeps_digest) if method == "manifest" else ()
        items.append(PlanItem(repo, tag, digest, kind, action, item_reasons, method,  # type: ignore[arg-type]
                              subjects.get((repo, tag)), children))
    return Plan(now, facts.stages_repo, tuple(items), frozenset(record_by_tag), scope, tuple(notes),
                tuple(blockers) if not purge else (), tuple(clusters), frozenset(unread))


def _block(decisions: dict[tuple[str, str], tuple[Kind, Action, tuple[str, ...]]], blockers: list[str]) -> None:
    """Keep everything: say why first, then what would have been deleted otherwise."""
    shown = blockers[:MAX_BLOCKERS_SHOWN]
    if len(blockers) > MAX_BLOCKERS_SHOWN:
        shown = shown + [f"... and {len(blockers) - MAX_BLOCKERS_SHOWN} more reasons to keep everything"]
    for key, (kind, action, reasons) in list(decisions.items()):
        if action == "delete":
            decisions[key] = (kind, "keep", (*shown, f"would be deleted otherwise: {reasons[0]}"))

def _keep_index_children(decisions: dict[tuple[str, str], tuple[Kind, Action, tuple[str, ...]]],
                         facts: Facts) -> None:
    """A tagged manifest that a kept image index lists stays: deleting it would break the index."""
    for repo, indexes in facts.indexes.items():
        kept_children: dict[str, str] = {}
        for (r, tag), (_, action, _) in decisions.items():
            if r == repo and action == "keep":
                for child in indexes.get(facts.tags[r][tag] or "", ()):  # "": not read, lists nothing
                    kept_children.setdefault(child, tag)
        for (r, tag), (kind, action, _) in list(decisions.items()):
            parent = kept_children.get(facts.tags[r][tag] or "") if r == repo and action == "delete" else None
            if parent is not None:
                decisions[(r, tag)] = (kind, "keep", (f"listed by the kept image index {repo}:{parent}",))


def _follow_subjects(decisions: dict[tuple[str, str], tuple[Kind, Action, tuple[str, ...]]], facts: Facts,
                     built: list[_Built], notes: list[str]) -> tuple[dict[tuple[str, str], str], set[tuple[str, str]]]:
    """Attestations and signatures follow their subject (follow.py): add their decisions. Returns
    ((repository, tag or digest) -> the digest it follows, (repository, digest) of deleted subjects
    whose referrers are still unread)."""
    subjects: dict[tuple[str, str], str] = {}
    unread: set[tuple[str, str]] = set()
    kade_repos = {b.image.repository for b in built}
    for repo, tags in sorted(facts.tags.items()):
        decided = {tag: (kind, action) for (r, tag), (kind, action, _) in decisions.items() if r == repo}
        untagged: dict[str, tuple[Action, str]] = {}
        for b in built:  # images whose tags an earlier, interrupted run deleted: their record tells
            record = decisions.get((facts.stages_repo, b.record_tag))
            if b.image.repository == repo and record is not None:
                untagged.setdefault(b.image.digest, (record[1], f"image {repo.rsplit('/', 1)[-1]}@{b.image.digest[:19]} "
                                                                f"of build record {b.record_tag}"))
        # orphans only where kade pushes images: a signatures-only repository (COSIGN_REPOSITORY) has no subjects
        missing = facts.missing_subjects.get(repo, frozenset()) if repo in kade_repos else frozenset()
        followed = follow(repo, tags, decided, untagged, facts.referrers.get(repo, {}), repo in facts.referrers_api,
                          missing)
        for f in followed.followers:
            decisions[(repo, f.key)] = (f.kind, f.action, (f.reason,))
            subjects[(repo, f.key)] = f.subject
        unread.update((repo, d) for d in followed.unread)
        notes.extend(followed.notes)
    return subjects, unread
def _children_going(repo: str, digest: str | None, facts: Facts, keeps_digest: set[tuple[str, str | None]]) -> \
        tuple[str, ...]:
    """An image index deleted by digest takes its platforms' manifests with it (they were pushed by digest
    for it), except those a kept tag points to or a kept index of the repository lists too (a platform
    unchanged between two builds is one manifest in both indexes)."""
    indexes = facts.indexes.get(repo, {})
    if digest is None or digest not in indexes:
        return ()
    shared = {d for r, d in keeps_digest if r == repo} | \
        {child for r, d in keeps_digest if r == repo and d in indexes for child in indexes[d]}
    return tuple(sorted(indexes[digest] - shared))


def _users(users: list[str]) -> str:
    return ", ".join(users[:2]) + (f" and {len(users) - 2} more" if len(users) > 2 else "")


def _cap(reasons: Iterable[str]) -> tuple[str, ...]:
    out: list[str] = []
    for r in reasons:
        if r not in out:
            out.append(r)
    if len(out) > MAX_REASONS:
        return tuple(out[:MAX_REASONS]) + (f"... and {len(out) - MAX_REASONS} more",)
    return tuple(out)
