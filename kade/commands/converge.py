"""`kade converge`: build every image of kade.yaml (only what changed), deploy, track, record."""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kade import argtypes
from kade.errors import UsageError
from kade.output import OUTPUT_CHOICES, print_result

if TYPE_CHECKING:
    from builder.build import ExecutorFactory


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "converge", help="build the project's images and roll them out (kade.yaml)",
        description="Build every image of kade.yaml from the commit at HEAD (images whose content is already "
                    "in the registry are taken from it), then deploy the project's manifests with them, track "
                    "until ready and record the release; a failed rollout is rolled back (exit 1).")
    project_args(p)
    p.add_argument("--kubeconfig", type=argtypes.yaml_file, help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, in-cluster)")
    p.add_argument("--kube-context", dest="kube_context", help="kubeconfig context")
    p.add_argument("--namespace", "-n", help="override kade.yaml's deploy.namespace")
    p.add_argument("--release", "-r", help="override kade.yaml's deploy.release")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="set_values",
                   help="set a template value (dotted keys; repeatable)")
    p.add_argument("--timeout", default="5m", type=argtypes.duration, help="deploy timeout (e.g. 90s, 5m; default 5m)")
    p.add_argument("--atomic", action=argparse.BooleanOptionalAction, default=True,
                   help="roll back a failed rollout (default: yes)")
    from kade import supply, tenancy

    supply.add_arguments(p)
    supply.add_verify_arguments(p)
    tenancy.add_arguments(p)
    p.set_defaults(func=run)


def project_args(p: argparse.ArgumentParser, standalone: bool = True) -> None:
    """Options of `kade converge`, and of `kade build` in a project (which has the standalone ones already)."""
    if standalone:
        p.add_argument("--repo", metavar="REPO", type=argtypes.repository, help="image repository prefix: image NAME goes to REPO/NAME "
                                                       "(default: kade.yaml's repo)")
    p.add_argument("--dir", default=".", metavar="DIR", type=argtypes.existing_dir, help="project folder holding kade.yaml (default .)")
    p.add_argument("--env", dest="env_name", metavar="ENV", help="environment name (`env_name` in kade.yaml)")
    p.add_argument("--stages-repo", metavar="REPO", type=argtypes.repository, help="repository of step images and build records "
                                                         "(default: REPO-stages)")
    if "--backend" not in p._option_string_actions:  # `kade build` may have it already (in-cluster builds)
        p.add_argument("--backend", choices=("local", "kubernetes"), default="local",
                       help="where steps run: this process (local) or builder pods (kubernetes)")
    p.add_argument("--add-tag", action="append", default=[], metavar="TEMPLATE",
                   help="extra tag template, e.g. '{{ image }}-{{ git.branch }}' (repeatable)")
    p.add_argument("--dev", action="store_true",
                   help="use the working tree (uncommitted and untracked files) instead of the commit at HEAD")
    p.add_argument("--report", metavar="FILE", type=argtypes.output_file, help="write a JSON report (images, refs, digests, step counts)")
    if not standalone:
        p.add_argument("--image", action="append", default=None, metavar="NAME", dest="only_images",
                       help="with kade.yaml: build only this image and what it depends on (repeatable)")
        return
    p.add_argument("--no-cache", action="store_true", help="run every step")
    p.add_argument("--parallel", type=int, default=max(1, min(4, os.cpu_count() or 1)), metavar="N",
                   help="stages of one image built at once")
    p.add_argument("--cache-dir", metavar="DIR", help="local cache (default $KADE_CACHE_DIR or ~/.cache/kade)")
    p.add_argument("--insecure-registry", action="append", default=[], metavar="HOST", type=argtypes.registry_host,
                   help="reach HOST over plain HTTP / without TLS verification (repeatable)")
    p.add_argument("-o", "--output", choices=OUTPUT_CHOICES, default="text", help="result format")


def make_project_options(args: argparse.Namespace, ws: Any) -> Any:
    from kade.converge import project_options
    from kade.tags import TagTemplateError, check_templates

    single = [flag for flag, attr in (("--tag", "tag"), ("--target", "target"), ("--build-arg", "build_arg"),
                                      ("--secret", "secret"), ("--ssh", "ssh"),
                                      ("--allow-host-network", "allow_host_network")) if getattr(args, attr, None)]
    if getattr(args, "userns", "auto") != "auto":
        single.append("--userns")
    if single:
        raise UsageError(f"{', '.join(single)}: for a single Dockerfile (kade build CONTEXT); with kade.yaml each "
                         "image's Dockerfile, target, args, secrets and tags come from kade.yaml (and --add-tag)")
    from kade import tenancy

    tenant = tenancy.choose(args, ws.config.tenant, ws.root)
    factory = executor_factory(args, tenant)
    if args.parallel < 1:
        raise UsageError("--parallel must be at least 1")
    try:
        check_templates(args.add_tag)
    except TagTemplateError as exc:
        raise UsageError(str(exc)) from None
    from kade.supply import supply_options

    builder_image = getattr(factory, "settings", None)
    supply = supply_options(args, args.backend, builder_image.image if builder_image else "", ws.config.attest,
                            config_file=ws.root / "kade.yaml", source=ws.source or "")
    return project_options(ws, args.repo, stages_repo=args.stages_repo, add_tags=list(args.add_tag),
                           env_name=args.env_name, no_cache=args.no_cache, parallel=args.parallel,
                           cache_dir=args.cache_dir, insecure=tuple(args.insecure_registry),
                           images=getattr(args, "only_images", None), executor=factory, supply=supply,
                           tenant=tenant.name, share=tenant.share, build_key=tenant.build_key,
                           platforms=_platforms(args))


def _platforms(args: argparse.Namespace) -> tuple[str, ...]:
    """`kade build --platform` (converge has none: kade.yaml's `platforms:` or linux/amd64)."""
    if getattr(args, "platform", None) is None:
        return ()
    from builder.errors import BuildError
    from builder.platforms import parse_platforms

    try:
        return tuple(str(p) for p in parse_platforms(args.platform))
    except BuildError as exc:
        raise UsageError(f"{exc.detail} ({exc.hint})") from None


def executor_factory(args: argparse.Namespace, tenant: Any) -> "ExecutorFactory | None":
    """None (the local executor) or the pod executor's factory for --backend kubernetes (its pods given
    the tenant and its build key)."""
    if args.backend == "local":
        return None
    try:
        from builder.backends.kubernetes import pod_executor
        from builder.backends.podspec import KubeSettings
    except ImportError:
        raise UsageError("--backend kubernetes: in-cluster builds are not available in this kade build; "
                         "use --backend local") from None
    if hasattr(args, "builder_image"):  # `kade build`: the in-cluster options are on its command line
        from kade.commands.build_backend import kube_settings_from_args

        settings = kube_settings_from_args(args)
    else:  # `kade converge`: builder pods in the cluster converged to, image from $KADE_BUILDER_IMAGE
        image = os.environ.get("KADE_BUILDER_IMAGE")
        if not image:
            raise UsageError("--backend kubernetes needs $KADE_BUILDER_IMAGE (kade's builder image)")
        settings = KubeSettings(image=image, kubeconfig=args.kubeconfig, kube_context=args.kube_context)
    from kade.tenancy import with_pod_key

    return pod_executor(with_pod_key(settings, tenant))


def text_summary(data: dict[str, Any]) -> str:
    lines = []
    for name, img in sorted(data.get("images", {}).items()):
        steps = img["steps"]
        how = "from the registry" if img["reused"] else f"{steps['built']} step(s) built, {steps['cached']} cached"
        lines.append(f"{name}: {img['ref']} ({how})")
    if data.get("message"):
        lines.append(data["message"])
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from deployer.durations import parse_duration
    from kade.converge import DeploySettings, converge
    from kade.live import close_reporter, make_deploy_reporter
    from kade.workspace import open_workspace

    from deployer.render import parse_set

    timeout = parse_duration(args.timeout)
    if timeout <= 0:
        raise UsageError("--timeout must be positive")
    for item in args.set_values:  # now, not after the build
        parse_set(item)
    report = make_deploy_reporter(args.output)
    try:
        with open_workspace(Path(args.dir), env_name=args.env_name, dev=args.dev, report=report) as ws:
            options = make_project_options(args, ws)
            from kade.supply import verify_policy

            settings = DeploySettings(kubeconfig=args.kubeconfig, context=args.kube_context, timeout=timeout,
                                      atomic=args.atomic, namespace=args.namespace, release=args.release,
                                      set_values=list(args.set_values), insecure=tuple(args.insecure_registry),
                                      verify=verify_policy(args, ws))
            result = converge(ws, options, settings, report, Path(args.report) if args.report else None)
    finally:
        close_reporter(report)
    print_result(args.output, result.to_json(), text_summary)
    return 0 if result.ok else 1
