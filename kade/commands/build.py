"""`kade build`: Dockerfile -> OCI image in a registry (or a local OCI layout), without a daemon."""
from __future__ import annotations

import argparse
import contextlib
import os
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

from builder.build import build
from builder.options import BuildOptions
from builder.plan import DEFAULT_PLATFORM, parse_build_args
from kade import argtypes
from kade.commands.build_backend import add_backend_arguments, kube_settings_from_args
from kade.errors import UsageError
from kade.buildview import build_reporter
from kade.output import OUTPUT_CHOICES, make_reporter, print_result


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "build", help="build an image from a Dockerfile and push it",
        description="Build CONTEXT's Dockerfile without a Docker daemon. Every step is cached in the stages "
                    "repo (--repo, default <first tag's repository>-stages) under its content key; steps "
                    "already there are not run again. The image goes to every --tag (printed as REF@sha256:...), "
                    "or, without --tag, to a local OCI layout under the cache dir. Without CONTEXT in a folder "
                    "with kade.yaml (or with --dir), builds every image of the project from the commit at HEAD: "
                    "--repo is then the image repository prefix (image NAME goes to REPO/NAME).")
    p.add_argument("context", nargs="?", default=None, metavar="CONTEXT", help="build context directory (default .)")
    p.add_argument("-f", "--file", dest="dockerfile", metavar="DOCKERFILE",
                   help="Dockerfile path (default CONTEXT/Dockerfile; - reads it from standard input)")
    p.add_argument("--target", metavar="STAGE", help="build this stage (default: the last one)")
    p.add_argument("--build-arg", action="append", default=[], metavar="K=V", help="set a build arg (repeatable)")
    p.add_argument("--tag", "-t", action="append", default=[], metavar="REF", help="push the image to REF (repeatable)")
    p.add_argument("--repo", metavar="STAGES_REPO", type=argtypes.repository, help="repository for step images and build records")
    p.add_argument("--secret", action="append", default=[], metavar="id=ID,src=PATH|env=VAR",
                   help="a secret for RUN --mount=type=secret (never stored in a layer, key or log)")
    p.add_argument("--ssh", metavar="default[=SOCKET]", help="forward an SSH agent socket to RUN --mount=type=ssh")
    p.add_argument("--compression", choices=("gzip", "zstd"), default="gzip", help="layer compression (default gzip)")
    p.add_argument("--no-cache", action="store_true", help="run every step (still pushes step images)")
    p.add_argument("--parallel", type=int, default=max(1, min(4, os.cpu_count() or 1)), metavar="N",
                   help="stages built at once (default: CPUs, at most 4)")
    p.add_argument("--cache-dir", metavar="DIR", help="local cache (default $KADE_CACHE_DIR or ~/.cache/kade)")
    p.add_argument("-o", "--output", choices=OUTPUT_CHOICES, default="text", help="result format")
    p.add_argument("--keep-failed", action="store_true", help="keep the rootfs of a failed RUN and print its path")
    p.add_argument("--insecure-registry", action="append", default=[], metavar="HOST", type=argtypes.registry_host,
                   help="reach HOST over plain HTTP / without TLS verification (repeatable)")
    p.add_argument("--check-reproducible", action="store_true",
                   help="build twice with empty caches (pushing nothing) and name every file that differs; "
                        "exit 1 when the images differ")
    p.add_argument("--platform", default=DEFAULT_PLATFORM, metavar="OS/ARCH[,...]",
                   help="target platform(s), comma-separated (default linux/amd64); several make an OCI index, "
                        "foreign ones run RUN under qemu-user-static")
    p.add_argument("--userns", choices=("auto", "host"), default="auto",
                   help="auto (default): root in a RUN is an unprivileged subordinate uid on this host; host: "
                        "RUN runs as this host's root (unsafe with Dockerfiles you don't trust)")
    p.add_argument("--allow-host-network", action="store_true",
                   help="let RUN --network=host use this host's network (its loopback services included)")
    add_backend_arguments(p)
    from kade import supply, tenancy

    tenancy.add_arguments(p)

    supply.add_arguments(p)
    from kade.commands.converge import project_args

    project_args(p, standalone=False)
    p.set_defaults(func=run)


def parse_secret(spec: str) -> tuple[str, bytes]:
    fields = dict(part.partition("=")[::2] for part in spec.split(",") if part)
    sid = fields.get("id")
    if not sid:
        raise UsageError(f"--secret {spec!r} needs id=ID")
    if "src" in fields or "source" in fields:
        path = Path(fields.get("src") or fields["source"]).expanduser()
        try:
            return sid, path.read_bytes()
        except OSError as exc:
            raise UsageError(f"--secret id={sid}: cannot read {path}: {exc.strerror}") from None
    if "env" in fields:
        if fields["env"] not in os.environ:
            raise UsageError(f"--secret id={sid}: environment variable {fields['env']} is not set")
        return sid, os.environ[fields["env"]].encode()
    if sid in os.environ:
        return sid, os.environ[sid].encode()
    raise UsageError(f"--secret {spec!r} needs src=PATH or env=VAR")


def parse_ssh(spec: str | None) -> str | None:
    if spec is None:
        return None
    name, _, given = spec.partition("=")
    if name != "default":
        raise UsageError(f"--ssh {spec}: only default[=SOCKET] is supported")
    socket = given or os.environ.get("SSH_AUTH_SOCK", "")
    if not socket:
        raise UsageError("--ssh default: no agent socket (give default=SOCKET or set SSH_AUTH_SOCK)")
    where = f"--ssh default={socket}" if given else f"--ssh default (SSH_AUTH_SOCK={socket})"
    if not Path(socket).exists():
        raise UsageError(f"{where}: no such socket; is the ssh agent running (ssh-agent, `ssh-add -l`)?")
    if not stat.S_ISSOCK(Path(socket).stat().st_mode):
        raise UsageError(f"{where}: not a socket; give the agent's socket (SSH_AUTH_SOCK)")
    return socket


USERNS_HOST_WARNING = ("--userns host: RUN steps run as this host's root, not as an unprivileged subordinate uid: "
                       "a kernel bug or a mount the sandbox misses is then root on this machine. Use it only "
                       "for Dockerfiles you trust, or where user namespaces are unavailable")


def options_from_args(args: argparse.Namespace, tenant: Any = None) -> BuildOptions:
    from builder.isolation import Isolation   # not builder.sandbox: a build with nothing to run never loads it

    context = Path(args.context or ".")
    if not context.is_dir():
        raise UsageError(f"build context {context} is not a directory")
    if args.parallel < 1:
        raise UsageError("--parallel must be at least 1")
    from builder.errors import BuildError
    from builder.platforms import parse_platforms
    from registry.errors import RegistryError
    from registry.reference import Reference
    try:
        platforms = [str(p) for p in parse_platforms(args.platform)]
    except BuildError as exc:
        raise UsageError(f"{exc.detail} ({exc.hint})") from None
    for t in args.tag:
        try:
            Reference.parse(t)
        except RegistryError as exc:
            raise UsageError(f"--tag {t}: {exc}") from None
    return BuildOptions(
        context=context, dockerfile=Path(args.dockerfile) if args.dockerfile else None, target=args.target,
        build_args=parse_build_args(args.build_arg), tags=list(args.tag), repo=args.repo,
        secrets=dict(parse_secret(s) for s in args.secret), ssh=parse_ssh(args.ssh),
        compression=args.compression, no_cache=args.no_cache, parallel=args.parallel, cache_dir=args.cache_dir,
        keep_failed=args.keep_failed, insecure=tuple(args.insecure_registry), platform=platforms[0],
        platforms=tuple(platforms) if len(platforms) > 1 else (),
        isolation=Isolation(userns=args.userns), allow_host_network=args.allow_host_network,
        tenant=tenant.name if tenant else None, share=tenant.share if tenant else frozenset(),
        build_key=tenant.build_key if tenant else None)


STDIN_DOCKERFILE_MAX = 16 << 20


@contextlib.contextmanager
def _stdin_dockerfile() -> Iterator[Path]:
    """`-f -`: the Dockerfile read from standard input (as docker build and buildah take it), kept in a
    private folder for the build (the context's .dockerignore applies)."""
    data = sys.stdin.buffer.read(STDIN_DOCKERFILE_MAX + 1)
    if len(data) > STDIN_DOCKERFILE_MAX:
        raise UsageError(f"-f -: the Dockerfile on standard input is over {STDIN_DOCKERFILE_MAX >> 20} MiB")
    with tempfile.TemporaryDirectory(prefix="kade-stdin-") as folder:
        path = Path(folder) / "Dockerfile"
        path.write_bytes(data)
        yield path


def run(args: argparse.Namespace) -> int:
    if args.dockerfile == "-":
        with _stdin_dockerfile() as path:
            args.dockerfile = str(path)
            return run(args)
    if args.context is None and not args.dockerfile:
        from kade.workspace import has_project   # only here: it loads kade.config and kade.gittree (start-up time)

        if has_project(Path(args.dir)):
            return run_project(args)
    from kade import tenancy

    tenant = tenancy.choose(args)
    options = options_from_args(args, tenant)
    if options.tags:
        options.supply = _supply(args, options.context)
    if args.check_reproducible:
        return run_check(args, options, make_reporter(args.output))
    if args.userns == "host" and args.backend == "kubernetes":
        raise UsageError("--userns is for RUN on this machine (--backend local); builder pods choose with "
                         "--user-namespaces / --no-user-namespaces")
    executor = None
    if args.backend == "kubernetes":
        from builder.backends.kubernetes import pod_executor

        executor = pod_executor(tenancy.with_pod_key(kube_settings_from_args(args), tenant))
    with build_reporter(args.output) as report:
        if args.userns == "host":
            report("warning", USERNS_HOST_WARNING)
        result = build(options, report, executor=executor)
    print_result(args.output, result.to_json(),
                 lambda data: "\n".join(f"{i['ref']}@{i['digest']}" if not i["ref"].startswith("oci:") else i["ref"]
                                        for i in data["images"]))
    return 0


def run_check(args: argparse.Namespace, options: BuildOptions, report: Any) -> int:
    """--check-reproducible: two local builds from nothing, compared."""
    from builder.reproducible import check_reproducible

    if args.tag or args.backend == "kubernetes":
        raise UsageError("--check-reproducible builds twice locally and pushes nothing: drop --tag and --backend")
    if options.platforms:
        raise UsageError("--check-reproducible compares the images of one platform: pass one --platform at a time")
    result = check_reproducible(options, report)

    def text(data: dict) -> str:
        if data["reproducible"]:
            return f"reproducible: both builds gave {data['digests'][0]}"
        return "\n".join([f"NOT reproducible: {data['digests'][0]} != {data['digests'][1]}"] + data["differences"])

    print_result(args.output, result.to_json(), text)
    return 0 if result.reproducible else 1


def _supply(args: argparse.Namespace, context: Path) -> Any:
    from common import git
    from kade.supply import supply_options

    remote = git.output(context, "remote", "get-url", "origin")
    source = git.strip_credentials(remote) if remote else ""
    return supply_options(args, args.backend, args.builder_image if args.backend == "kubernetes" else "",
                          source=source)


def run_project(args: argparse.Namespace) -> int:
    """`kade build` in a project: every image of kade.yaml (or --image ones), from the commit at HEAD."""
    from kade.commands.converge import make_project_options, text_summary
    from kade.converge import write_report
    from kade.project import build_project
    from kade.workspace import open_workspace

    with build_reporter(args.output) as report, \
            open_workspace(Path(args.dir), env_name=args.env_name, dev=args.dev, report=report, deploy=False) as ws:
        options = make_project_options(args, ws)
        result = build_project(ws.config, ws.root, options, report)
    data = result.to_json()
    if args.report:
        write_report(Path(args.report), data)
    print_result(args.output, data, text_summary)
    return 0
