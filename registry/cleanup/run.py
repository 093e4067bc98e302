"""Gather every fact a cleanup plan needs (clusters, registry, other clusters' reports, git) and, when
asked, publish this run's clusters as reports first."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

from registry.cleanup.clusters import ReportEntry, make_report, publish_report, read_reports
from registry.cleanup.errors import ClusterScanError
from registry.cleanup.gitwalk import GitSource, read_git_facts
from registry.cleanup.inuse import InUse, repo_path
from registry.cleanup.plan import Facts, Plan, make_plan
from registry.cleanup.policy import Policy
from registry.cleanup.scan import ClusterScan, ReleaseSource, scan_clusters
from registry.cleanup.follow import MAX_DEPTH
from registry.cleanup.snapshot import RegistrySnapshot, list_tag_descriptors, read_referrers, read_snapshot

Report = Callable[..., None]


def stages_repo_for(repo: str) -> str:
    """The default stages repository of an image repository: `<repo>-stages`."""
    return repo if repo.endswith("-stages") else f"{repo}-stages"


@dataclass
class ClusterOptions:
    """How to read the clusters. `contexts` None means --without-kube (no scan, nothing in use)."""

    contexts: Sequence[str | None] | None = None
    kubeconfig: str | None = None
    namespaces: Sequence[str] = ()  # () = every namespace
    release_sources: Sequence[ReleaseSource] = ()  # besides Helm's (kade's records come from the CLI)
    cluster_name: str | None = None  # else each cluster is named by its kube-system UID
    publish: bool = False  # publish each scanned cluster's report before planning
    published: list[str] = field(default_factory=list)  # filled in: the report tags pushed


def collect_facts(client: Any, stages_repo: str, *, repos: tuple[str, ...] = (), git: str | None,
                  kube_contexts: list[str | None] | None = None, kubeconfig: str | None = None,
                  report: Report = lambda *a, **k: None, workers: int = 8,
                  now: datetime | None = None, clusters: ClusterOptions | None = None) -> Facts:
    """Facts for the plan of `repos` (image repositories) and `stages_repo`: nothing else is read."""
    now = now or datetime.now(timezone.utc)
    clusters = clusters or ClusterOptions(kube_contexts, kubeconfig)
    scans: list[ClusterScan] = []
    if clusters.contexts is not None:  # scan first: a cluster we can't read stops everything early
        scans = scan_clusters(clusters.contexts, clusters.kubeconfig, report, clusters.namespaces,
                              clusters.release_sources, clusters.cluster_name)
    snap = read_snapshot(client, stages_repo, repos, report, workers)
    stages = client.repository(snap.stages_repo)
    if clusters.publish:
        clusters.published.extend(publish(stages, scans, snap, now, report))
    reports = read_reports(stages, snap.tags[snap.stages_repo])
    _report_reports(reports, report)
    git_facts = None
    if git is not None:
        commits = {r.commit for _, r in snap.records if r.commit}
        with GitSource(git) as path:
            git_facts = read_git_facts(path, commits)
        report("git", f"{len(git_facts.refs)} references, {git_facts.commits_walked} commits walked, "
                      f"{len(git_facts.commit_times)} of {len(commits)} build commits found")
    return Facts(now=now, stages_repo=snap.stages_repo, records=snap.records, tags=snap.tags, git=git_facts,
                 in_use=InUse.merged(*(s.in_use for s in scans)) if clusters.contexts is not None else None,
                 step_created=snap.step_created, indexes=snap.indexes, referrers=snap.referrers,
                 referrers_api=snap.referrers_api, missing_subjects=snap.missing_subjects,
                 releases=[r for s in scans for r in s.releases], problems=[p for s in scans for p in s.problems],
                 reports=reports, own_clusters=frozenset(s.name for s in scans if s.name))


def publish(stages: Any, scans: list[ClusterScan], snap: RegistrySnapshot, now: datetime,
            report: Report) -> list[str]:
    """Push each scanned cluster's report, limited to what concerns the repositories read."""
    if not scans:
        raise ClusterScanError("nothing to report: publishing a cluster report needs a cluster scan "
                               "(drop --without-kube)")
    paths = {repo_path(r) for r in snap.tags}
    digests = {d for tags in snap.tags.values() for d in tags.values() if d is not None}  # None: not read
    tags = []
    for scan in scans:
        if not scan.name:
            raise ClusterScanError(f"cannot tell which cluster kube context {scan.label} is (no get on namespace "
                                   "kube-system): pass --cluster-name NAME")
        cluster_report = make_report(scan.name, now, scan.in_use, scan.releases, scan.problems, scan.namespaces,
                                     paths, digests, label=scan.label)
        tags.append(publish_report(stages, cluster_report))
        report("report", f"published {snap.stages_repo}:{tags[-1]}: {len(cluster_report.uses)} images in use, "
                         f"{len(cluster_report.releases)} release revisions"
                         + (f", {len(cluster_report.problems)} problems" if cluster_report.problems else ""))
    return tags


def _report_reports(reports: list[ReportEntry], report: Report) -> None:
    for e in reports:
        if e.report is None:
            report("warning", f"cluster report {e.tag} can't be read: {e.error}")
        else:
            report("read", f"cluster report {e.tag}: {e.report.created:%Y-%m-%d %H:%M}Z, {len(e.report.uses)} "
                           f"images in use, {len(e.report.releases)} release revisions")


def plan_cleanup(client: Any, facts: Facts, policy: Policy, purge: bool = False, workers: int = 8,
                 report: Report = lambda *a, **k: None) -> Plan:
    """The plan, with a digest for every deletion: plan by name, read the digests the snapshot left
    unread for the tags it would delete (a few, where the stages repository has thousands of step
    images the plan keeps), and plan again with them (a digest can only add protections). A tag gone
    meanwhile drops out. Likewise the referrers of what the plan deletes (attestations, signatures:
    they go with it) are read when the snapshot did not, and the plan made again."""
    plan = _with_referrers(client, facts, make_plan(facts, policy, purge), policy, purge, workers, report)
    for _ in range(2):  # a second pass reads nothing new: digests never turn a keep into a delete
        missing: dict[str, list[str]] = {}
        for item in plan.deletions:
            if item.digest is None:
                missing.setdefault(item.repository, []).append(item.tag)
        if not missing:
            return plan
        for repo_name, tags in missing.items():
            descs = list_tag_descriptors(client.repository(repo_name), workers, tags)
            current = facts.tags[repo_name]
            for tag in tags:
                if tag in descs:
                    current[tag] = descs[tag].digest
                else:
                    del current[tag]
            report("read", f"{repo_name}: the digests of {len(tags)} tags the plan would delete")
        plan = _with_referrers(client, facts, make_plan(facts, policy, purge), policy, purge, workers, report)
    raise AssertionError("a plan still deletes tags whose digest was not read")  # digests only add keeps



def _with_referrers(client: Any, facts: Facts, plan: Plan, policy: Policy, purge: bool, workers: int,
                    report: Report) -> Plan:
    """Read the referrers of the subjects the plan deletes and has not read yet, and plan again."""
    for _ in range(MAX_DEPTH + 1):  # each read goes MAX_DEPTH levels down: one is enough but for new subjects
        if not plan.unread:
            return plan
        subjects: dict[str, list[str]] = {}
        for repo_name, digest in sorted(plan.unread):
            subjects.setdefault(repo_name, []).append(digest)
        for repo_name, digests in subjects.items():
            tags = facts.tags[repo_name]
            found, index_digests = read_referrers(client.repository(repo_name), digests, tags,
                                                  repo_name in facts.referrers_api, workers)
            facts.referrers.setdefault(repo_name, {}).update(found)
            for tag, digest in index_digests.items():
                if tags.get(tag) is None:
                    tags[tag] = digest
            report("read", f"{repo_name}: the referrers of {len(digests)} manifests the plan would delete")
        plan = make_plan(facts, policy, purge)
    return plan
