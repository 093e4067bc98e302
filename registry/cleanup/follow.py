"""Attestations and signatures follow their subject (pure): kept with it, deleted with it.

What follows a manifest `sha256:<hex>` in the same repository:
  - the OCI 1.1 artifacts whose `subject` it is (SBOM, provenance, kade's SBOM inventory of a step
    image, anyone's), found through the referrers API or the referrers tag schema index;
  - that index, tagged `sha256-<hex>`;
  - cosign's tags `sha256-<hex>.sig` (signatures), `.att` and `.sbom` (attestations);
  - and, recursively, what follows each artifact (the `.sig` of an SBOM, ...), at most MAX_DEPTH levels.

A subject the registry does not have (`missing`: deleted by hand, or by a run interrupted before its
followers went) makes what follows it orphan garbage: it is deleted.

The subjects' fates come from the decisions already made for the repository's tags (a digest is deleted
when its tags go and none stays), plus the untagged images of build records this plan deletes (their
tags went in an earlier, interrupted run: their attestations go now). A subject no decision covers (a
signature stored for an image elsewhere, a step image kept by name) is left alone with what follows it.

What the registry listed is not trusted: an artifact listed under a subject that is also listed under a
kept one stays; one that is a tagged manifest is decided by its tags; `execute` reads each artifact
before deleting it and skips it unless its own `subject` is the one it was listed under. An artifact
is only deleted once its own referrers have been read (else they would be left without a subject), so
the plan reports the subjects whose referrers it still needs (`unread`) and `run.plan_cleanup` reads
them and plans again.
"""
from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from typing import Iterable, Literal, Mapping

from registry.referrers import fallback_tag as index_tag

Action = Literal["keep", "delete"]
FollowerKind = Literal["attestation", "signature"]
MAX_DEPTH = 4          # image -> attestation -> its signature -> ...: kade's own go 2 deep
MAX_ENTRIES = 1024     # referrers of one subject followed; more is hostile (its index stays)

_TAG_RE = re.compile(r"^sha256-([0-9a-f]{64})(\.sig|\.att|\.sbom)?$")


def subject_of_tag(tag: str) -> tuple[str, FollowerKind, bool] | None:
    """(subject digest, kind, whether it is the referrers index) of a tag that follows a manifest, else None."""
    m = _TAG_RE.match(tag)
    if m is None:
        return None
    return f"sha256:{m.group(1)}", ("signature" if m.group(2) == ".sig" else "attestation"), m.group(2) is None


def artifact_kind(artifact_type: str) -> FollowerKind:
    """Notation, cosign and sigstore bundles name their signatures so; everything else is an attestation."""
    return "signature" if "signature" in artifact_type or artifact_type.endswith(".sig") else "attestation"


@dataclass(frozen=True)
class Referrer:
    digest: str
    artifact_type: str = ""


@dataclass(frozen=True)
class Referrers:
    """What was read for one subject: its referrers as listed (unverified), or why they can't be followed."""

    entries: tuple[Referrer, ...] = ()
    problem: str = ""


@dataclass(frozen=True)
class Follower:
    """The decision for one thing that follows a subject: a tag, or an untagged artifact (key = its digest)."""

    key: str
    digest: str | None
    kind: FollowerKind
    action: Action
    reason: str
    subject: str  # the digest it follows directly


@dataclass(frozen=True)
class Followed:
    followers: list[Follower]
    unread: set[str]        # subjects to delete whose referrers are not known yet
    notes: list[str]


@dataclass(frozen=True)
class _Fate:
    action: Action
    label: str              # "image app:c1": what the row says it follows
    depth: int = 0          # 0: decided by its tags (or its build record)
    subject: str = ""       # the digest it was listed under (depth > 0)


def follow(repo: str, tags: dict[str, str | None], decided: Mapping[str, tuple[str, Action]],
           untagged: dict[str, tuple[Action, str]], referrers: dict[str, Referrers],
           has_api: bool, missing: frozenset[str] = frozenset()) -> Followed:
    """Decide what follows the subjects of one repository.

    `tags`: every tag -> digest (None: not read); `decided`: the other tags' (kind, action);
    `untagged`: digests of build records' images no tag points to -> (the record's action, label);
    `referrers`: what was read per subject; `has_api`: the registry answers the referrers API (else a
    subject without an index tag has no referrers); `missing`: subjects of tags here that the registry
    does not have (what follows them is orphan garbage: it goes)."""
    def is_read(digest: str) -> bool:
        return referrers_known(digest, tags, referrers, has_api)

    fates = _roots(repo, tags, decided, untagged)
    for digest in sorted(missing):
        fates.setdefault(digest, _Fate("delete", f"{digest[:19]}, which is gone (an orphan)"))
    tagged = {d for d in tags.values() if d}
    types: dict[str, str] = {}

    def children(subject: str) -> Iterable[Referrer]:
        found = referrers.get(subject)
        for r in (found.entries if found is not None and not found.problem else ()):
            if r.digest not in tagged:
                types.setdefault(r.digest, r.artifact_type)
                yield r

    _spread(fates, children, "keep")
    _spread(fates, children, "delete", can_descend=lambda d: is_read(d) and not referrers.get(d, Referrers()).problem)
    unread = {d for d, f in fates.items() if f.action == "delete" and f.depth < MAX_DEPTH and not is_read(d)}
    notes = [f"referrers of {repo}@{d[:19]}: {referrers[d].problem}; they stay"
             for d, f in sorted(fates.items()) if f.action == "delete" and d in referrers and referrers[d].problem]
    out = [_artifact_row(d, f, types[d], unread, referrers) for d, f in sorted(fates.items()) if f.depth > 0]
    for tag, points_to in sorted(tags.items()):
        parsed = subject_of_tag(tag)
        if parsed is not None:
            subject, kind, is_index = parsed
            out.append(_tag_row(tag, points_to, subject, kind, is_index, fates.get(subject), unread, referrers))
    return Followed(out, unread, notes)


def referrers_known(digest: str, tags: dict[str, str | None], referrers: dict[str, Referrers], has_api: bool) -> bool:
    """Whether the referrers of `digest` are known: read, or (without the referrers API) it has no index tag."""
    return digest in referrers or (not has_api and index_tag(digest) not in tags)


def _roots(repo: str, tags: dict[str, str | None], decided: Mapping[str, tuple[str, Action]],
           untagged: dict[str, tuple[Action, str]]) -> dict[str, _Fate]:
    """Subjects decided by their tags: kept when one of their tags stays, deleted when all go."""
    short = repo.rsplit("/", 1)[-1]
    kept: dict[str, str] = {}
    doomed: dict[str, str] = {}
    for tag, digest in sorted(tags.items()):
        if digest is not None and tag in decided:
            kind, action = decided[tag]
            label = f"step image {tag[:12]}" if kind == "step" else f"image {short}:{tag}"
            (kept if action == "keep" else doomed).setdefault(digest, label)
    fates = {d: _Fate("keep", label) for d, label in kept.items()}
    fates.update({d: _Fate("delete", label) for d, label in doomed.items() if d not in kept})
    tagged = {d for d in tags.values() if d}
    for digest, (action, label) in untagged.items():
        if digest not in tagged:
            fates.setdefault(digest, _Fate(action, label))
    return fates


def _spread(fates: dict[str, _Fate], children, action: Action, can_descend=lambda d: True) -> None:
    """Breadth-first from the subjects with `action`: what they list, not decided yet, follows them.
    Keep spreads first, so an artifact listed under a kept and a deleted subject stays."""
    queue = deque(d for d, f in fates.items() if f.action == action and f.depth == 0)
    while queue:
        subject = queue.popleft()
        fate = fates[subject]
        if fate.depth >= MAX_DEPTH or not can_descend(subject):
            continue
        for r in children(subject):
            if r.digest in fates:
                continue  # decided already (a kept claim wins; a cycle ends here)
            fates[r.digest] = _Fate(action, fate.label, fate.depth + 1, subject)
            queue.append(r.digest)


def _artifact_row(digest: str, fate: _Fate, artifact_type: str, unread: set[str],
                  referrers: dict[str, Referrers]) -> Follower:
    kind = artifact_kind(artifact_type)
    if fate.action == "keep":
        return Follower(digest, digest, kind, "keep", f"follows {fate.label} (kept)", fate.subject)
    why = _why_kept(digest, fate, unread, referrers)
    if why:
        return Follower(digest, digest, kind, "keep", why, fate.subject)
    return Follower(digest, digest, kind, "delete", f"follows {fate.label} (deleted)", fate.subject)


def _why_kept(digest: str, fate: _Fate, unread: set[str], referrers: dict[str, Referrers]) -> str:
    """Why an artifact of a deleted subject stays: what follows it is not known."""
    if fate.depth >= MAX_DEPTH:
        return f"follows {fate.label} (deleted), nested {MAX_DEPTH} levels deep or more: left alone"
    if digest in unread:
        return f"follows {fate.label} (deleted); the referrers of {digest[:19]} are not read yet"
    found = referrers.get(digest)
    if found is not None and found.problem:
        return f"follows {fate.label} (deleted); its referrers can't be followed: {found.problem}"
    return ""


def _tag_row(tag: str, digest: str | None, subject: str, kind: FollowerKind, is_index: bool, fate: _Fate | None,
             unread: set[str], referrers: dict[str, Referrers]) -> Follower:
    def row(action: Action, reason: str) -> Follower:
        return Follower(tag, digest, kind, action, reason, subject)

    if fate is None:
        return row("keep", f"follows {subject[:19]}, which this cleanup does not delete")
    if fate.action == "keep":
        return row("keep", f"follows {fate.label} (kept)")
    why = _why_kept(subject, fate, unread, referrers) if fate.depth > 0 or is_index else ""
    return row("keep", why) if why else row("delete", f"follows {fate.label} (deleted)")


__all__ = ["follow", "subject_of_tag", "index_tag", "referrers_known", "Referrer", "Referrers", "Follower", "Followed",
           "MAX_DEPTH", "MAX_ENTRIES"]
