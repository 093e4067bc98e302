"""`kade deploy`, `kade plan`, `kade rollback`, `kade history`, `kade uninstall`, `kade track`."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from kade.errors import UsageError
from kade.live import close_reporter, make_deploy_reporter
from kade.output import OUTPUT_CHOICES, make_reporter, print_result

# 2 is a usage error (argparse's and ours); `kade plan --exit-code` says "changes" with 3, never 2
EXIT_OK, EXIT_FAILED, EXIT_CHANGES = 0, 1, 3


def register(subparsers: Any) -> None:
    deploy = subparsers.add_parser("deploy", help="apply manifests and track them until really rolled out",
                                   description="Render manifests, server-side apply them in order, track until "
                                               "ready, record the release; roll back on failure (--atomic).")
    _render_args(deploy)
    _release_args(deploy)
    deploy.add_argument("--atomic", action=argparse.BooleanOptionalAction, default=True,
                        help="on failure re-apply the previous revision (a failed first release removes what it created)")
    deploy.add_argument("--dry-run", action="store_true", help="only show what would change (like `kade plan`)")
    deploy.add_argument("--force-conflicts", action="store_true", help="take over fields owned by other field managers")
    _ownership_args(deploy)
    deploy.add_argument("--use-plan", metavar="FILE",
                        help="deploy only if a plan saved by `kade plan --save-plan FILE` still describes this deploy")
    deploy.add_argument("--history-max", type=int, default=10, help="revisions kept in the release history (0: all)")
    deploy.add_argument("--no-activity-timeout", default="4m", help="fail a resource when nothing changes for this long")
    deploy.add_argument("--settle", default="2s",
                        help="a workload must stay ready this long with no container exiting before it counts (0: off)")
    deploy.add_argument("--dir", default=".", metavar="DIR", help="project folder holding kade.yaml (default .)")
    deploy.add_argument("--env", dest="env_name", metavar="ENV", help="with kade.yaml: environment name (env_name)")
    deploy.add_argument("--repo", metavar="REPO", help="with kade.yaml: image repository prefix (REPO/NAME)")
    deploy.add_argument("--dev", action="store_true", help="with kade.yaml: use the working tree, not HEAD")
    deploy.add_argument("--insecure-registry", action="append", default=[], metavar="HOST",
                        help="reach HOST over plain HTTP (kade.yaml images, --verify)")
    from kade.supply import add_verify_arguments

    add_verify_arguments(deploy)
    deploy.set_defaults(func=run_deploy)

    plan = subparsers.add_parser("plan", help="show what a deploy would change (with --exit-code, 3 means changes)")
    _render_args(plan)
    _release_args(plan)
    plan.add_argument("--force-conflicts", action="store_true", help="plan as if taking over conflicting fields")
    plan.add_argument("--adopt", action="store_true", help="plan as if taking over objects of no or another release")
    plan.add_argument("--exit-code", action="store_true",
                      help="exit 3 when the plan has changes (0: none, 1: error, 2: usage error)")
    plan.add_argument("--save-plan", metavar="FILE", help="save the plan for `kade deploy --use-plan FILE`")
    plan.set_defaults(func=run_plan)

    rollback = subparsers.add_parser("rollback", help="deploy an earlier revision of a release again")
    rollback.add_argument("release", metavar="RELEASE")
    rollback.add_argument("--revision", type=int, help="revision to restore (default: the one before the current)")
    _cluster_args(rollback)
    _timeout_args(rollback)
    rollback.set_defaults(func=run_rollback)

    history = subparsers.add_parser("history", help="list the revisions of a release")
    history.add_argument("release", metavar="RELEASE")
    _cluster_args(history)
    history.set_defaults(func=run_history)

    uninstall = subparsers.add_parser("uninstall", help="delete a release's resources and its history")
    uninstall.add_argument("release", metavar="RELEASE")
    _cluster_args(uninstall)
    _timeout_args(uninstall)
    uninstall.add_argument("--delete-crds", action="store_true", help="also delete the release's CRDs (and every object of them)")
    uninstall.add_argument("--delete-namespaces", action="store_true", help="also delete the release's Namespaces (and everything in them)")
    uninstall.set_defaults(func=run_uninstall)

    track = subparsers.add_parser("track", help="track existing resources until ready (or failed)")
    track.add_argument("resources", nargs="+", metavar="KIND/NAME")
    _cluster_args(track)
    _timeout_args(track)
    track.set_defaults(func=run_track)


def _cluster_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--namespace", default="default", help="release namespace and default namespace (default: default)")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, in-cluster)")
    p.add_argument("--context", help="kubeconfig context")
    p.add_argument("--output", "-o", choices=OUTPUT_CHOICES, default="text", help="text or JSON events/results")


def _ownership_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--adopt", action="store_true",
                   help="take over existing objects that belong to no release, to Helm or to another release")
    p.add_argument("--delete-crds", action="store_true", help="let pruning delete CRDs no longer in the manifests")
    p.add_argument("--delete-namespaces", action="store_true",
                   help="let pruning delete Namespaces no longer in the manifests")


def _timeout_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--timeout", default="5m", help="give up after this long (e.g. 90s, 5m; default 5m)")


def _release_args(p: argparse.ArgumentParser, timeout: bool = True) -> None:
    p.add_argument("--release", "-r", help="release name (required without kade.yaml)")
    _cluster_args(p)
    if timeout:
        _timeout_args(p)


def _render_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--filename", action="append", metavar="PATH",
                   help="manifest file or folder, *.j2 templates, or - for stdin (repeatable; "
                        "without -f in a folder with kade.yaml: its deploy section)")
    p.add_argument("--values", action="append", default=[], metavar="FILE", help="values file for templates (repeatable)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="set_values",
                   help="set a value (dotted keys, typed values; repeatable)")
    p.add_argument("--image", action="append", default=[], metavar="NAME=REF", help="image for templates (`images.NAME`)")
    p.add_argument("--images", action="append", default=[], metavar="FILE",
                   help="images for templates: a mapping NAME: REF or a kade build record JSON")


# ---- handlers -------------------------------------------------------------------------------------

def _kube(args: argparse.Namespace) -> Any:
    """The cluster client; every wait of the command ends by its --timeout (plus a grace for recording
    the outcome), each plain request by 30 s."""
    from deployer.kube import Kube

    kube = Kube(args.kubeconfig, args.context)
    if getattr(args, "timeout", None):
        kube.limit(_duration(args.timeout, "--timeout"))
    return kube


def _duration(text: str, flag: str) -> float:
    from deployer.durations import parse_duration

    value = parse_duration(text)
    if value <= 0:
        raise UsageError(f"{flag} must be positive")
    return value


def _inputs(args: argparse.Namespace) -> tuple[list[Any], dict[str, Any], dict[str, str]]:
    from deployer.render import RenderInput, load_images, load_values, render

    if not args.filename or not args.release:
        raise UsageError("-f PATH and --release NAME are required (in a folder with kade.yaml, `kade deploy` "
                         "without -f deploys its deploy section; --dry-run and `kade plan` need -f)")

    images = load_images(args.image, args.images)
    values = load_values(args.values, args.set_values)
    if args.values.count("-") + args.filename.count("-") > 1:
        raise UsageError("stdin ('-') can be used only once among -f and --values")
    resources = render(RenderInput(args.filename, args.values, args.set_values, images, args.release, args.namespace),
                       values=values)
    if not resources:
        raise UsageError(f"no manifests found in {', '.join(args.filename)}")
    return resources, values, images


def _options(args: argparse.Namespace, values: dict | None = None, images: dict | None = None) -> Any:
    from deployer.deploy import DeployOptions

    opts = DeployOptions(args.release, args.namespace)
    if getattr(args, "timeout", None):
        opts.timeout = _duration(args.timeout, "--timeout")
    if getattr(args, "atomic", None) is not None:
        opts.atomic = args.atomic
    opts.force_conflicts = bool(getattr(args, "force_conflicts", False))
    opts.adopt = bool(getattr(args, "adopt", False))
    opts.delete_crds = bool(getattr(args, "delete_crds", False))
    opts.delete_namespaces = bool(getattr(args, "delete_namespaces", False))
    if getattr(args, "history_max", None) is not None:
        if args.history_max < 0:
            raise UsageError("--history-max must be 0 (keep all) or more")
        opts.history_max = args.history_max
    if getattr(args, "settle", None) is not None:
        from deployer.durations import parse_duration

        opts.settle = parse_duration(args.settle)
    if getattr(args, "no_activity_timeout", None):
        opts.no_activity_timeout = _duration(args.no_activity_timeout, "--no-activity-timeout")
    opts.values, opts.images = values or {}, images or {}
    return opts


def run_deploy(args: argparse.Namespace) -> int:
    from deployer.deploy import Deployer
    from kade.workspace import has_project

    if not args.filename and has_project(Path(args.dir)) and not args.dry_run:
        from kade.converge import deploy_command

        return deploy_command(args)

    resources, values, images = _inputs(args)
    _verify(args, resources)
    opts = _options(args, values, images)
    if args.dry_run:
        result = Deployer(_kube(args), make_reporter(args.output)).plan(resources, opts)
        _print_changes(args.output, result)
        return EXIT_OK

    def deploy(deployer: Any) -> Any:
        if args.use_plan:
            from deployer.plan import load

            deployer.check_plan(load(Path(args.use_plan)), [r.copy() for r in resources], opts)
        return deployer.deploy(resources, opts)

    return _outcome(args, deploy)


def _verify(args: argparse.Namespace, resources: list[Any]) -> None:
    """--verify: refuse unverified images and pin the others by digest, before anything is applied."""
    from kade.supply import verify_policy

    policy = verify_policy(args)
    if policy is None:
        return
    from kade.verify import verify_manifests
    from registry.client import ClientOptions, RegistryClient

    with RegistryClient(ClientOptions(insecure=tuple(args.insecure_registry))) as client:
        verify_manifests(resources, policy, client, make_reporter(args.output))


def _outcome(args: argparse.Namespace, action: Any) -> int:
    """Run a deploy-like action with live progress; print its outcome; 0 if it succeeded, else 1."""
    from deployer.deploy import Deployer

    report = make_deploy_reporter(args.output)
    try:
        outcome = action(Deployer(_kube(args), report))
    finally:
        close_reporter(report)
    print_result(args.output, outcome.to_dict(), lambda d: d["message"])
    return EXIT_OK if outcome.ok else EXIT_FAILED


def run_plan(args: argparse.Namespace) -> int:
    from deployer.deploy import Deployer
    from deployer.plan import save

    resources, values, images = _inputs(args)
    result = Deployer(_kube(args), make_reporter(args.output)).plan(resources, _options(args, values, images))
    if args.save_plan:
        save(Path(args.save_plan), result)
    _print_changes(args.output, result)
    if any(c.action in ("refused", "invalid") for c in result.changes):
        return EXIT_FAILED  # the deploy would fail: say so whatever --exit-code
    return EXIT_CHANGES if args.exit_code and result.changed else EXIT_OK


def _print_changes(output: str, result: Any) -> None:
    data = {"release": result.release, "namespace": result.namespace, "digest": result.digest,
            "changed": result.changed, "changes": [c.to_dict() for c in result.changes]}

    def indented(text: str, prefix: str = "    ") -> list[str]:
        return [prefix + line for line in text.rstrip("\n").splitlines()]

    def text(plan: dict) -> str:
        lines = []
        for row in plan["changes"]:
            lines.append(f"{row['action']:<9} {row['resource']}" + (f"  ({row['note']})" if row["note"] else ""))
            if row["action"] == "update" and row["diff"]:
                lines += indented(row["diff"])
            elif row["action"] in ("create", "recreate", "delete") and row["body"]:
                lines += indented(row["body"])
            if row["drift"]:
                lines.append("    drift: changed in the cluster since the last deploy (a deploy puts it back):")
                lines += indented(row["drift"], "      ")
        changed = sum(1 for r in plan["changes"] if r["action"] in ("create", "update", "recreate", "delete"))
        lines.append(f"{changed} change(s)" if changed else "no changes")
        return "\n".join(lines)

    print_result(output, data, text)


def run_rollback(args: argparse.Namespace) -> int:
    from deployer.deploy import DeployOptions

    opts = DeployOptions(args.release, args.namespace, timeout=_duration(args.timeout, "--timeout"))
    return _outcome(args, lambda deployer: deployer.rollback(opts, args.revision))


def run_history(args: argparse.Namespace) -> int:
    from deployer.deploy import Deployer

    records = Deployer(_kube(args), make_reporter(args.output)).history(args.release, args.namespace)
    if not records:
        from deployer.errors import DeployError

        raise DeployError(f"release {args.release} not found in namespace {args.namespace}")
    rows = [{"revision": r.revision, "updated": r.updated, "status": r.status, "description": r.description,
             "resources": len(r.manifests), "images": r.images} for r in records]

    def text(data: list[dict]) -> str:
        lines = [f"{'REVISION':<9} {'UPDATED':<28} {'STATUS':<12} DESCRIPTION"]
        lines += [f"{d['revision']:<9} {d['updated']:<28} {d['status']:<12} {d['description']}" for d in data]
        return "\n".join(lines)

    print_result(args.output, rows, text)
    return EXIT_OK


def run_uninstall(args: argparse.Namespace) -> int:
    from deployer.deploy import Deployer, DeployOptions

    opts = DeployOptions(args.release, args.namespace, timeout=_duration(args.timeout, "--timeout"),
                         delete_crds=args.delete_crds, delete_namespaces=args.delete_namespaces)
    report = make_deploy_reporter(args.output)
    try:
        removed = Deployer(_kube(args), report).uninstall(opts)
    finally:
        close_reporter(report)
    print_result(args.output, {"release": args.release, "deleted": [str(k) for k in removed]},
                 lambda d: f"release {d['release']} uninstalled ({len(d['deleted'])} resource(s) deleted)")
    return EXIT_OK


def run_track(args: argparse.Namespace) -> int:
    from deployer.deploy import Deployer
    from deployer.options import track_options
    from deployer.resources import Resource
    from deployer.tracker import Target

    kube = _kube(args)
    targets = []
    for item in args.resources:
        kind, sep, name = item.partition("/")
        if not sep or not kind or not name:
            raise UsageError(f"{item!r}: expected KIND/NAME, e.g. deployment/web")
        api = kube.resource_for(*_kind_of(kube, kind))
        namespace = args.namespace if api.namespaced else ""
        live = kube.get(api.path(namespace, name))
        if live is None:
            from deployer.errors import DeployError

            raise DeployError(f"{api.kind} {namespace + '/' if namespace else ''}{name} not found")
        resource = Resource(live, "the cluster")
        targets.append(Target(resource.key, api, track_options(resource), live))
    report = make_deploy_reporter(args.output)
    try:
        result = Deployer(kube, report).track(targets, _duration(args.timeout, "--timeout"))
    finally:
        close_reporter(report)
    data = {"ok": result.ok, "elapsed": round(result.elapsed, 3), "failures": [f.to_dict() for f in result.failures]}
    print_result(args.output, data, lambda d: "all ready" if d["ok"] else
                 "; ".join(f"{f['resource']}: {f['reason']}: {f['message']}" for f in d["failures"]))
    return EXIT_OK if result.ok else EXIT_FAILED


def _kind_of(kube: Any, text: str) -> tuple[str, str]:
    api = kube.find_kind(text)
    return api.api_version, api.kind
