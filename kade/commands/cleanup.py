"""`kade cleanup`: delete what git history, the clusters and their release histories no longer need;
`kade cleanup report`: publish what this cluster needs, for cleanups run elsewhere; `kade cleanup
clusters`: which clusters reported and when; `kade purge`: delete everything kade pushed for the
repositories given (only with explicit confirmation)."""
from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from kade import argtypes
from kade.errors import UsageError
from kade.output import OUTPUT_CHOICES, make_reporter, print_result
from registry.cleanup.execute import Outcome, execute
from registry.cleanup.plan import Plan
from registry.cleanup.policy import DEFAULT_POLICY, Policy
from registry.cleanup.policy_file import (Settings, load_kade_yaml_policy, load_kade_yaml_settings,
                                          load_policy_file)
from registry.cleanup.report import render_text, to_json
from registry.cleanup.run import ClusterOptions, collect_facts, plan_cleanup, stages_repo_for
from registry.client import ClientOptions, RegistryClient

CONFIG = "kade.yaml"  # read when there, unless --config names another


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "cleanup", help="delete images git history and the clusters no longer need",
        description="Keep what the keep policies (per git reference), recent builds, the keep list, the clusters "
                    "(in use, and the last revisions of every kade and Helm release) and other clusters' reports "
                    "still need; delete the rest of what kade pushed to the repositories given. --dry-run prints "
                    "the plan.")
    _repo_args(p)
    _plan_args(p)
    _kube_args(p)
    p.add_argument("--publish-report", action="store_true",
                   help="first publish what this cluster needs as its report (what `kade cleanup report` does)")
    _run_args(p)
    p.set_defaults(func=cmd_cleanup)
    sub = p.add_subparsers(dest="cleanup_command", metavar="SUBCOMMAND")

    r = sub.add_parser("report", help="publish what this cluster uses and its releases reference",
                       description="Scan the cluster (workloads in use, kade and Helm release histories) and publish "
                                   "the part that concerns the repositories given as this cluster's report in the "
                                   "stages repository, for `kade cleanup` runs elsewhere. Deletes nothing.")
    _repo_args(r)
    _kube_args(r)
    r.add_argument("-o", "--output", choices=OUTPUT_CHOICES, default="text", help="text (default) or json")
    r.add_argument("--workers", type=argtypes.positive_int, default=8, help="parallel registry requests (default 8)")
    r.set_defaults(func=cmd_report)

    c = sub.add_parser("clusters", help="list the clusters that reported, and when",
                       description="List the cluster reports in the stages repository: when each cluster last "
                                   "reported and whether that is recent enough for `kade cleanup` to delete anything.")
    _repo_args(c)
    c.add_argument("--policy", metavar="FILE", help="policy file (for clusterReportMaxAge)")
    c.add_argument("--forget", metavar="CLUSTER", action="append", default=[],
                   help="delete this cluster's report (a cluster that is gone; repeatable)")
    c.add_argument("-o", "--output", choices=OUTPUT_CHOICES, default="text", help="text (default) or json")
    c.set_defaults(func=cmd_clusters)

    q = subparsers.add_parser(
        "purge", help="delete everything kade pushed for the repositories given",
        description="Delete every image tag a build record names in the repositories given, every step image, "
                    "build record and cluster report of their stages repository. Shows the plan and asks to type "
                    "the repository name, unless --yes; --dry-run prints exactly the plan a real run carries out.")
    _repo_args(q)
    q.add_argument("--yes", action="store_true", help="don't ask for confirmation")
    _run_args(q)
    q.set_defaults(func=cmd_purge)


def _repo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repo", metavar="REPO", action="append", default=[], type=argtypes.repository,
                   help="image repository, e.g. registry:5000/team/app (repeatable: only these and the stages "
                        "repository are touched; default: kade.yaml cleanup.repo)")
    p.add_argument("--stages-repo", metavar="REPO", type=argtypes.repository,
                   help="stages repository (default: <first repo>-stages)")
    p.add_argument("--config", metavar="FILE", type=argtypes.readable_file,
                   help="kade.yaml to read cleanup: from (default: ./kade.yaml when there is one)")
    p.add_argument("--insecure-registry", action="append", default=[], metavar="HOST", type=argtypes.registry_host,
                   help="reach HOST without TLS verification, or over plain HTTP (repeatable)")
    p.add_argument("--ca-file", metavar="PATH", type=argtypes.readable_file, help="CA bundle to verify registries' TLS certificates")


def _plan_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--git", metavar="PATH_OR_URL", help="git repository whose history decides (default: "
                   "kade.yaml cleanup.git, else the current directory)")
    p.add_argument("--policy", metavar="FILE", help="keep policies (YAML); default: kade.yaml's cleanup: key, "
                   "else the documented defaults")


def _kube_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kube-context", action="append", default=[], metavar="CONTEXT",
                   help="scan this kube context for images in use and release histories (repeatable; default: the "
                        "current context, or the in-cluster service account)")
    p.add_argument("--kubeconfig", metavar="PATH", type=argtypes.yaml_file, help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
    p.add_argument("--scan-namespace", action="append", default=[], metavar="NS",
                   help="scan only this namespace (repeatable; default: every namespace)")
    p.add_argument("--cluster-name", metavar="NAME", default=os.environ.get("KADE_CLUSTER_NAME") or None,
                   help="this cluster's name in reports (default: $KADE_CLUSTER_NAME, else the UID of its "
                        "kube-system namespace)")
    p.add_argument("--without-kube", action="store_true",
                   help="don't scan any cluster: nothing is protected as in use or as a rollback target "
                        "(other clusters' reports still count)")


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dry-run", action="store_true", help="print the plan, delete nothing")
    p.add_argument("-o", "--output", choices=OUTPUT_CHOICES, default="text", help="text table (default) or json")
    p.add_argument("--workers", type=argtypes.positive_int, default=8, help="parallel registry requests (default 8)")


def _client(args: argparse.Namespace) -> RegistryClient:
    return RegistryClient(ClientOptions(insecure=tuple(args.insecure_registry), ca_file=args.ca_file))


def _repos(args: argparse.Namespace, settings: Settings) -> tuple[tuple[str, ...], str]:
    """(image repositories, stages repository): the only repositories this run may touch."""
    repos = tuple(args.repo) or ((settings.repo,) if settings.repo else ())
    stages = args.stages_repo or settings.stages_repo
    if not repos and not stages:
        raise UsageError("which repository? pass --repo REPO (or set cleanup.repo in kade.yaml)")
    stages = stages or stages_repo_for(repos[0])
    return tuple(r for r in repos if r != stages), stages


def _clusters(args: argparse.Namespace, settings: Settings, publish: bool) -> ClusterOptions:
    from kade.cleanup_facts import kade_releases

    contexts: list[str | None] | None = None
    if not args.without_kube:
        contexts = list(args.kube_context or settings.kube_contexts) or [None]
    return ClusterOptions(contexts, args.kubeconfig, tuple(args.scan_namespace or settings.scan_namespaces),
                          (kade_releases,), args.cluster_name or settings.cluster_name, publish)


def _policy(args: argparse.Namespace) -> Policy:
    return (load_policy_file(args.policy) if args.policy
            else load_kade_yaml_policy(args.config or CONFIG) or DEFAULT_POLICY)


def cmd_cleanup(args: argparse.Namespace) -> int:
    report = make_reporter(args.output)
    settings = load_kade_yaml_settings(args.config or CONFIG)
    repos, stages = _repos(args, settings)
    policy = _policy(args)
    git = args.git or settings.git or "."
    if not args.git and not settings.git and not (Path(".git").exists() or Path("HEAD").is_file()):
        raise UsageError("cleanup needs the git history: pass --git PATH_OR_URL (the current directory is "
                         "not a git repository)")
    if args.git and not _is_url(args.git) and not Path(args.git).is_dir():
        raise UsageError(f"--git {args.git}: no such directory (give a git checkout, a bare repository or a URL)")
    if args.publish_report and args.without_kube:
        raise UsageError("--publish-report publishes what this run scans: drop --without-kube")
    clusters = _clusters(args, settings, args.publish_report)
    with _client(args) as client:
        facts = collect_facts(client, stages, repos=repos, git=git, report=report, workers=args.workers,
                              clusters=clusters)
        plan = plan_cleanup(client, facts, policy, workers=args.workers, report=report)
        return _finish(client, plan, args, report)


def _is_url(text: str) -> bool:
    """git's URL forms: scheme://..., or scp-like user@host:path."""
    return "://" in text or ("@" in text and ":" in text.split("/", 1)[0])


def cmd_report(args: argparse.Namespace) -> int:
    report = make_reporter(args.output)
    settings = load_kade_yaml_settings(args.config or CONFIG)
    if args.without_kube:
        raise UsageError("a cluster report needs the cluster: drop --without-kube")
    repos, stages = _repos(args, settings)
    clusters = _clusters(args, settings, publish=True)
    with _client(args) as client:
        facts = collect_facts(client, stages, repos=repos, git=None, report=report, workers=args.workers,
                              clusters=clusters)
    result = {"stagesRepository": facts.stages_repo, "published": clusters.published,
              "problems": facts.problems}
    print_result(args.output, result, lambda r: "\n".join(
        [f"published {r['stagesRepository']}:{t}" for t in r["published"]]
        + [f"could not read (cleanups will keep everything until fixed): {p}" for p in r["problems"]]))
    return 0


def cmd_clusters(args: argparse.Namespace) -> int:
    from registry.cleanup.clusters import cluster_of, read_reports, report_problem, report_tag

    settings = load_kade_yaml_settings(args.config or CONFIG)
    _, stages = _repos(args, settings)
    policy = _policy(args)
    now = datetime.now(timezone.utc)
    with _client(args) as client:
        repo = client.repository(stages)
        for name in args.forget:
            desc = repo.head_manifest(report_tag(name))
            if desc is None:
                raise UsageError(f"no report of cluster {name} in {stages}")
            repo.delete_manifest(desc.digest)
        entries = read_reports(repo, repo.list_tags())
    rows = []
    for e in entries:
        why = report_problem(e, now, policy.cluster_report_max_age)
        created = e.report.created if e.report else None
        rows.append({"cluster": cluster_of(e.tag), "tag": e.tag,
                     "lastReport": created.isoformat() if created else None,
                     "age": _age(now - created) if created else None,
                     "status": "ok" if why is None else "silent" if e.report else "unreadable", "problem": why,
                     "imagesInUse": len(e.report.uses) if e.report else None,
                     "releaseRevisions": len(e.report.releases) if e.report else None,
                     "namespaces": list(e.report.namespaces) if e.report else None})
    print_result(args.output, {"stagesRepository": stages, "forgotten": args.forget, "clusters": rows},
                 lambda doc: _clusters_text(doc["clusters"], stages))
    return 0


def _age(d: Any) -> str:
    minutes = int(d.total_seconds() // 60)
    return f"{minutes // 1440}d{minutes % 1440 // 60}h" if minutes >= 1440 else f"{minutes // 60}h{minutes % 60}m"


def _clusters_text(rows: list[dict[str, Any]], stages: str) -> str:
    if not rows:
        return f"no cluster has reported to {stages}"
    lines = [f"{'cluster':<40} {'last report':<26} {'age':>7}  status"]
    for r in rows:
        status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r['problem']}"
        lines.append(f"{r['cluster']:<40} {r['lastReport'] or '-':<26} {r['age'] or '-':>7}  {status}")
    return "\n".join(lines)


def cmd_purge(args: argparse.Namespace) -> int:
    report = make_reporter(args.output)
    repos, stages = _repos(args, load_kade_yaml_settings(args.config or CONFIG))
    with _client(args) as client:
        facts = collect_facts(client, stages, repos=repos, git=None, report=report, workers=args.workers)
        plan = plan_cleanup(client, facts, DEFAULT_POLICY, purge=True, workers=args.workers, report=report)
        if not args.dry_run and not args.yes:
            _confirm(repos[0] if repos else stages, plan)
        return _finish(client, plan, args, report)


def _confirm(name: str, plan: Plan) -> None:
    if not sys.stdin.isatty():
        raise UsageError(f"purge deletes everything kade pushed for {name}: pass --yes to confirm "
                         "(stdin is not a terminal to ask); --dry-run shows what it deletes")
    print(render_text(plan, None, dry_run=True, width=int(os.environ.get("COLUMNS", "160"))), file=sys.stderr)
    print(f"This deletes the {len(plan.deletions)} tags above, in {', '.join(sorted(plan.repositories))} only.",
          file=sys.stderr)
    answer = input(f"Type the repository name ({name}) to confirm: ").strip()
    if answer != name:
        raise UsageError("purge not confirmed: nothing was deleted")


def _finish(client: RegistryClient, plan: Plan, args: argparse.Namespace, report: Callable[..., None]) -> int:
    for note in plan.notes:
        report("warning", note)
    for blocker in plan.blockers:
        report("warning", f"nothing is deleted: {blocker}")
    outcomes: list[Outcome] | None = None
    if not args.dry_run:
        report("delete", f"deleting {len(plan.deletions)} tags")
        with _Progress(args.output, report) as progress:
            outcomes = execute(client, plan, progress=progress, workers=min(args.workers, 4))
    width = int(os.environ.get("COLUMNS", "160"))
    print_result(args.output, to_json(plan, outcomes, args.dry_run),
                 lambda _: render_text(plan, outcomes, args.dry_run, width=width))
    return 1 if outcomes and any(o.status == "failed" for o in outcomes) else 0


class _Progress:
    """A rich progress bar on a terminal; otherwise a report line every 10%."""

    def __init__(self, output: str, report: Callable[..., None]) -> None:
        self.report = report
        self.bar: Any = None
        self.task: Any = None
        self.last_tenth = -1
        if output == "text" and sys.stderr.isatty() and not os.environ.get("CI"):
            from rich.progress import Progress

            self.bar = Progress(transient=True)

    def __enter__(self) -> Callable[[int, int], None]:
        if self.bar is not None:
            self.bar.start()
        return self.update

    def update(self, done: int, total: int) -> None:
        if self.bar is not None:
            if self.task is None:
                self.task = self.bar.add_task("deleting", total=total)
            self.bar.update(self.task, completed=done)
            return
        tenth = done * 10 // max(total, 1)
        if tenth != self.last_tenth:
            self.last_tenth = tenth
            self.report("progress", f"{done}/{total} deletions done", done=done, total=total)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
