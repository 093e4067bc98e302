"""Rollback targets (pure): the images each revision of a release references, and which revisions the
policy keeps (`releaseRevisions`, default the last 10 of every release).

A revision is a plain fact, whoever wrote it: kade's release records (read through `deployer.release`
by the CLI), Helm's release Secrets and ConfigMaps (`helm.py`), or another cluster's report. What a
kept revision references is protected like an image in use: by tag (registry host ignored) and by
digest, the reason naming the revision ("release shop/prod revision 7").
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Iterable, Literal

from registry.cleanup.inuse import InUse
from registry.cleanup.policy import Limit, apply_limit

ReleaseKind = Literal["kade", "helm"]
LOCAL = "(current)"  # the cluster label of the current kube context: left out of reasons


@dataclass(frozen=True)
class ReleaseRevision:
    cluster: str  # kube context label or cluster name the revision was read in
    kind: ReleaseKind
    namespace: str
    name: str
    revision: int
    deployed: datetime | None  # None: unknown, counts as recent
    images: tuple[str, ...]

    def label(self) -> str:
        prefix = "release" if self.kind == "kade" else "helm release"
        where = "" if self.cluster in ("", LOCAL) else f" (cluster {self.cluster})"
        return f"{prefix} {self.namespace}/{self.name} revision {self.revision}{where}"


def kept_revisions(revisions: Iterable[ReleaseRevision], limit: Limit,
                   now: datetime) -> list[ReleaseRevision]:
    """The revisions the limit keeps, per release (cluster, kind, namespace, name), newest first."""
    by_release: dict[tuple[str, str, str, str], list[ReleaseRevision]] = defaultdict(list)
    for r in revisions:
        by_release[(r.cluster, r.kind, r.namespace, r.name)].append(r)
    kept: list[ReleaseRevision] = []
    for key in sorted(by_release):
        history = sorted(by_release[key], key=lambda r: r.revision, reverse=True)
        kept += apply_limit(history, [r.deployed or now for r in history], limit, now)
    return kept


def rollback_targets(revisions: Iterable[ReleaseRevision], limit: Limit, now: datetime) -> InUse:
    """What the kept revisions reference, each image's users being the revisions' labels."""
    table = InUse()
    for r in kept_revisions(revisions, limit, now):
        for image in r.images:
            table.add(image, r.label())
    return table
