"""Gather every fact a cleanup plan needs (registry, git, clusters) and make the plan."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Callable

from registry.cleanup.gitwalk import GitSource, read_git_facts
from registry.cleanup.inuse import InUse, scan_clusters
from registry.cleanup.plan import Facts
from registry.cleanup.snapshot import read_snapshot

Report = Callable[..., None]


def stages_repo_for(repo: str) -> str:
    """The default stages repository of an image repository: `<repo>-stages`."""
    return repo if repo.endswith("-stages") else f"{repo}-stages"


def collect_facts(client: Any, stages_repo: str, *, repos: tuple[str, ...] = (), git: str | None,
                  kube_contexts: list[str | None] | None, kubeconfig: str | None = None,
                  report: Report = lambda *a, **k: None, workers: int = 8,
                  now: datetime | None = None) -> Facts:
    """kube_contexts None means --without-kube (no scan, nothing protected as in use)."""
    now = now or datetime.now(timezone.utc)
    in_use: InUse | None = None
    if kube_contexts is not None:  # scan first: a cluster we can't read stops everything early
        in_use = scan_clusters(kube_contexts, kubeconfig, report)
    snap = read_snapshot(client, stages_repo, repos, report, workers)
    git_facts = None
    if git is not None:
        commits = {r.commit for _, r in snap.records if r.commit}
        with GitSource(git) as path:
            git_facts = read_git_facts(path, commits)
        report("git", f"{len(git_facts.refs)} references, {git_facts.commits_walked} commits walked, "
                      f"{len(git_facts.commit_times)} of {len(commits)} build commits found")
    return Facts(now=now, stages_repo=snap.stages_repo, records=snap.records, tags=snap.tags, git=git_facts,
                 in_use=in_use, step_created=snap.step_created, indexes=snap.indexes)
