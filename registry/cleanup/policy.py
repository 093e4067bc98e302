"""Keep policies (pure): which git references count, and how many of their images to keep.

The model follows werf's: a keep policy selects git references (branches or tags, by name or
regex, limited to the last N and/or those active within a duration) and keeps, for each selected
reference, the images built for commits in its history (the last N and/or those within a
duration). Besides the policies: anything built within `keep_built_within` (default 2 h), and a
keep list of tags (exact or /regex/) or digests.

Defaults (used when a policy file gives no `keepPolicies`), as in werf:
  - tags: the last 10 tags, 1 image each;
  - branches: the 10 most recently active branches active within 7 days, 2 images each within 7 days;
  - main, master, staging, production: 10 images each.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Iterable, Literal, Sequence, TypeVar

from common.durations import nanoseconds

RefKind = Literal["branch", "tag"]
Operator = Literal["and", "or"]

DEFAULT_RELEASE_REVISIONS = 10  # per release, as kade's and Helm's default history


def parse_duration(text: str | int | float) -> timedelta:
    """`168h`, `7d`, `2h30m`, `90s`, `1w`, or a number of seconds. Raises ValueError."""
    if isinstance(text, bool):
        raise ValueError(f"expected a duration like '168h' or '7d', got {text!r}")
    if isinstance(text, (int, float)):
        if text < 0:
            raise ValueError(f"a duration can't be negative: {text!r}")
        return timedelta(seconds=float(text))
    try:
        return timedelta(microseconds=nanoseconds(str(text).lower(), bare_seconds=False) // 1000)
    except ValueError:
        raise ValueError(f"expected a duration like '168h', '7d' or '2h30m', got {text!r}") from None


def format_duration(d: timedelta) -> str:
    secs = int(d.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs and secs % size == 0:
            return f"{secs // size}{unit}"
    return f"{secs}s"


@dataclass(frozen=True)
class NamePattern:
    """An exact name, or a regex written as /.../ (matched against the whole name)."""

    text: str

    def __post_init__(self) -> None:
        if self.is_regex:
            re.compile(self.text[1:-1])  # raises re.error for a bad regex

    @property
    def is_regex(self) -> bool:
        return len(self.text) >= 2 and self.text.startswith("/") and self.text.endswith("/")

    def matches(self, name: str) -> bool:
        if self.is_regex:
            return re.fullmatch(self.text[1:-1], name) is not None
        return name == self.text

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class Limit:
    """`last` N and/or `within` a duration, combined with `operator` when both are given."""

    last: int | None = None
    within: timedelta | None = None
    operator: Operator = "and"

    def describe(self) -> str:
        parts = []
        if self.last is not None:
            parts.append(f"last {self.last}")
        if self.within is not None:
            parts.append(f"within {format_duration(self.within)}")
        return f" {self.operator} ".join(parts) if parts else "all"


T = TypeVar("T")


def apply_limit(items: Sequence[T], times: Sequence[datetime], limit: Limit | None, now: datetime) -> list[T]:
    """Items (newest first, `times` aligned) that the limit keeps."""
    if limit is None or (limit.last is None and limit.within is None):
        return list(items)
    kept = []
    for i, (item, when) in enumerate(zip(items, times)):
        in_last = limit.last is not None and i < limit.last
        in_time = limit.within is not None and when >= now - limit.within
        if limit.last is None:
            ok = in_time
        elif limit.within is None:
            ok = in_last
        else:
            ok = (in_last and in_time) if limit.operator == "and" else (in_last or in_time)
        if ok:
            kept.append(item)
    return kept


@dataclass(frozen=True)
class KeepPolicy:
    kind: RefKind
    name: NamePattern
    references: Limit | None = None  # which of the matching references count (by activity)
    images: Limit = field(default_factory=lambda: Limit(last=1))  # images per reference

    def describe(self) -> str:
        refs = f"{self.kind} {self.name}"
        if self.references is not None:
            refs += f" ({self.references.describe()})"
        return f"{refs}, images {self.images.describe()}"


@dataclass(frozen=True)
class Policy:
    keep_policies: tuple[KeepPolicy, ...]
    keep_built_within: timedelta = timedelta(hours=2)
    keep_list: tuple[NamePattern, ...] = ()
    orphan_steps_after: timedelta = timedelta(hours=2)
    release_revisions: Limit = field(default_factory=lambda: Limit(last=DEFAULT_RELEASE_REVISIONS))
    cluster_report_max_age: timedelta = timedelta(hours=48)  # a report older than this: the cluster is silent

    def keep_listed(self, tag: str | None, digest: str | None) -> NamePattern | None:
        """The keep-list entry that protects this tag or digest, if any."""
        for p in self.keep_list:
            if (tag is not None and p.matches(tag)) or (digest is not None and p.text == digest):
                return p
        return None


WEEK = timedelta(days=7)
DEFAULT_KEEP_POLICIES: tuple[KeepPolicy, ...] = (
    KeepPolicy("tag", NamePattern("/.*/"), references=Limit(last=10), images=Limit(last=1)),
    KeepPolicy("branch", NamePattern("/.*/"), references=Limit(last=10, within=WEEK, operator="and"),
               images=Limit(last=2, within=WEEK, operator="and")),
    KeepPolicy("branch", NamePattern("/^(main|master|staging|production)$/"), images=Limit(last=10)),
)
DEFAULT_POLICY = Policy(keep_policies=DEFAULT_KEEP_POLICIES)


@dataclass(frozen=True)
class GitRef:
    """A branch or tag: its short name, the commit it points to (peeled) and that commit's time."""

    kind: RefKind
    name: str
    commit: str
    time: datetime


def select_references(refs: Iterable[GitRef], policy: KeepPolicy, now: datetime) -> list[GitRef]:
    """The references a keep policy applies to: matching kind and name, newest first, limited."""
    matching = sorted((r for r in refs if r.kind == policy.kind and policy.name.matches(r.name)),
                      key=lambda r: (r.time, r.name), reverse=True)
    return apply_limit(matching, [r.time for r in matching], policy.references, now)
