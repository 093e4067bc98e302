"""`kade cleanup`: delete what git history and the clusters no longer need; `kade purge`: delete
everything kade pushed for a repository (only with explicit confirmation)."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Callable

from kade import argtypes
from kade.errors import UsageError
from kade.output import OUTPUT_CHOICES, make_reporter, print_result
from registry.cleanup.execute import Outcome, execute
from registry.cleanup.plan import Plan, make_plan
from registry.cleanup.policy import DEFAULT_POLICY, Policy
from registry.cleanup.policy_file import (Settings, load_kade_yaml_policy, load_kade_yaml_settings,
                                          load_policy_file)
from registry.cleanup.report import render_text, to_json
from registry.cleanup.run import collect_facts, stages_repo_for
from registry.client import ClientOptions, RegistryClient

CONFIG = "kade.yaml"  # read when there, unless --config names another


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "cleanup", help="delete images git history and the clusters no longer need",
        description="Keep what the keep policies (per git reference), recent builds, the keep list and "
                    "the clusters still need; delete the rest of what kade pushed. --dry-run prints the plan.")
    _repo_args(p)
    p.add_argument("--git", metavar="PATH_OR_URL", help="git repository whose history decides (default: "
                   "kade.yaml cleanup.git, else the current directory)")
    p.add_argument("--policy", metavar="FILE", help="keep policies (YAML); default: kade.yaml's cleanup: key, "
                   "else the documented defaults")
    p.add_argument("--kube-context", action="append", default=[], metavar="CONTEXT",
                   help="scan this kube context for images in use (repeatable; default: the current context, "
                        "or the in-cluster service account)")
    p.add_argument("--kubeconfig", metavar="PATH", type=argtypes.yaml_file, help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
    p.add_argument("--without-kube", action="store_true",
                   help="don't scan any cluster: nothing is protected as in use")
    _run_args(p)
    p.set_defaults(func=cmd_cleanup)

    q = subparsers.add_parser(
        "purge", help="delete everything kade pushed for a repository",
        description="Delete every image tag a build record names, every step image and every build record "
                    "of a repository. Asks to type the repository name, unless --yes.")
    _repo_args(q)
    q.add_argument("--yes", action="store_true", help="don't ask for confirmation")
    _run_args(q)
    q.set_defaults(func=cmd_purge)


def _repo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repo", metavar="REPO", type=argtypes.repository, help="image repository, e.g. registry:5000/team/app (default: "
                   "kade.yaml cleanup.repo)")
    p.add_argument("--stages-repo", metavar="REPO", type=argtypes.repository, help="stages repository (default: <repo>-stages)")
    p.add_argument("--config", metavar="FILE", type=argtypes.readable_file,
                   help="kade.yaml to read cleanup: from (default: ./kade.yaml when there is one)")
    p.add_argument("--insecure-registry", action="append", default=[], metavar="HOST", type=argtypes.registry_host,
                   help="reach HOST without TLS verification, or over plain HTTP (repeatable)")
    p.add_argument("--ca-file", metavar="PATH", type=argtypes.readable_file, help="CA bundle to verify registries' TLS certificates")


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dry-run", action="store_true", help="print the plan, delete nothing")
    p.add_argument("-o", "--output", choices=OUTPUT_CHOICES, default="text", help="text table (default) or json")
    p.add_argument("--workers", type=argtypes.positive_int, default=8, help="parallel registry requests (default 8)")


def _client(args: argparse.Namespace) -> RegistryClient:
    return RegistryClient(ClientOptions(insecure=tuple(args.insecure_registry), ca_file=args.ca_file))


def _repos(args: argparse.Namespace, settings: Settings) -> tuple[str, str]:
    repo = args.repo or settings.repo
    stages = args.stages_repo or settings.stages_repo
    if not repo and not stages:
        raise UsageError("which repository? pass --repo REPO (or set cleanup.repo in kade.yaml)")
    return repo or stages, stages or stages_repo_for(repo)


def cmd_cleanup(args: argparse.Namespace) -> int:
    report = make_reporter(args.output)
    settings = load_kade_yaml_settings(args.config or CONFIG)
    repo, stages = _repos(args, settings)
    policy: Policy = (load_policy_file(args.policy) if args.policy
                      else load_kade_yaml_policy(args.config or CONFIG) or DEFAULT_POLICY)
    git = args.git or settings.git or "."
    if not args.git and not settings.git and not (Path(".git").exists() or Path("HEAD").is_file()):
        raise UsageError("cleanup needs the git history: pass --git PATH_OR_URL (the current directory is "
                         "not a git repository)")
    if args.git and not _is_url(args.git) and not Path(args.git).is_dir():
        raise UsageError(f"--git {args.git}: no such directory (give a git checkout, a bare repository or a URL)")
    contexts: list[str | None] | None = None
    if not args.without_kube:
        contexts = list(args.kube_context or settings.kube_contexts) or [None]
    with _client(args) as client:
        facts = collect_facts(client, stages, repos=(repo,) if repo != stages else (), git=git,
                              kube_contexts=contexts, kubeconfig=args.kubeconfig, report=report,
                              workers=args.workers)
        plan = make_plan(facts, policy)
        return _finish(client, plan, args, report)


def _is_url(text: str) -> bool:
    """git's URL forms: scheme://..., or scp-like user@host:path."""
    return "://" in text or ("@" in text and ":" in text.split("/", 1)[0])


def cmd_purge(args: argparse.Namespace) -> int:
    report = make_reporter(args.output)
    repo, stages = _repos(args, load_kade_yaml_settings(args.config or CONFIG))
    if not args.dry_run and not args.yes:
        _confirm(repo)
    with _client(args) as client:
        facts = collect_facts(client, stages, repos=(repo,) if repo != stages else (), git=None,
                              kube_contexts=None, report=report, workers=args.workers)
        plan = make_plan(facts, DEFAULT_POLICY, purge=True)
        return _finish(client, plan, args, report)


def _confirm(repo: str) -> None:
    if not sys.stdin.isatty():
        raise UsageError(f"purge deletes everything kade pushed for {repo}: pass --yes to confirm "
                         "(stdin is not a terminal to ask)")
    print(f"This deletes every image, step image and build record kade pushed for {repo}.", file=sys.stderr)
    answer = input(f"Type the repository name ({repo}) to confirm: ").strip()
    if answer != repo:
        raise UsageError("purge not confirmed: nothing was deleted")


def _finish(client: RegistryClient, plan: Plan, args: argparse.Namespace, report: Callable[..., None]) -> int:
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
