"""`kade converge`: from the commit at HEAD to a verified rollout — build every image of kade.yaml
(or take it from the registry), deploy the project's manifests with those images, track, record.

Deploy templates get `images.NAME` (the full ref `REPO/NAME:TAG@DIGEST`, with `.ref`,
`.repository`, `.tag`, `.digest`), `values` (kade.yaml's values files), `release`, `namespace`.
Every applied resource carries the annotations `kade.io/commit` (and `kade.io/env`) in its
metadata — never in a pod template, so they roll nothing — so the cluster tells which commit was
converged last; each image's `org.opencontainers.image.revision` tells the commit that built it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from kade.config import ConfigError
from kade.project import ProjectOptions, ProjectResult, build_project, template_images
from kade.workspace import Workspace

Report = Callable[..., None]


@dataclass
class DeploySettings:
    kubeconfig: str | None = None
    context: str | None = None
    timeout: float = 300.0
    atomic: bool = True
    namespace: str | None = None  # overrides kade.yaml's deploy.namespace
    release: str | None = None  # overrides kade.yaml's deploy.release
    set_values: list[str] = field(default_factory=list)
    insecure: tuple[str, ...] = ()  # registries reached over plain HTTP (verification)
    verify: Any = None  # kade.verify.Policy: refuse unverified images, pin the others by digest (None: off)


@dataclass
class ConvergeResult:
    build: ProjectResult | None
    deploy: dict[str, Any] | None
    ok: bool
    message: str

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ok": self.ok, "message": self.message}
        if self.build is not None:
            out.update(self.build.to_json())
        out["deploy"] = self.deploy
        return out


def project_options(ws: Workspace, repo: str | None, **kw: Any) -> ProjectOptions:
    repo = repo or ws.config.repo
    if not repo:
        raise ConfigError(f"{ws.display}/kade.yaml: no image repository: pass --repo HOST/PATH "
                          "(or set repo: in kade.yaml)")
    from common.epoch import source_date_epoch

    epoch = source_date_epoch()
    if epoch is None and ws.git is not None:
        epoch = ws.git.commit_time  # reproducible by default: the same commit, the same image bytes
    return ProjectOptions(repo=repo.rstrip("/"), commit=ws.commit, branch=ws.branch, git=ws.template_git(),
                          source=ws.source, display_root=ws.display, epoch=epoch, **kw)


def deploy_project(ws: Workspace, images: dict[str, Any], settings: DeploySettings, report: Report) -> dict[str, Any]:
    """Render kade.yaml's manifests with the built images, apply, track, record; the deployer's outcome."""
    from deployer.deploy import Deployer, DeployOptions
    from deployer.kube import Kube
    from deployer.render import RenderInput, load_values, render

    spec = ws.config.deploy
    if spec is None:
        raise ConfigError(f"{ws.display}/kade.yaml: deploy: missing; add deploy: {{manifests: DIR}} to converge")
    manifests = ws.root / spec.manifests
    if not manifests.exists():
        raise ConfigError(f"{ws.display}/kade.yaml: deploy.manifests: {spec.manifests!r} is not in the project "
                          "(is it committed?)")
    values_files = [str(ws.root / v) for v in spec.values]
    values = load_values(values_files, settings.set_values)
    release = settings.release or spec.release
    namespace = settings.namespace or spec.namespace
    resources = render(RenderInput([str(manifests)], values_files, settings.set_values, images, release, namespace),
                       values=values)
    if not resources:
        raise ConfigError(f"{ws.display}/kade.yaml: deploy.manifests: no manifests in {spec.manifests!r}")
    if settings.verify is not None:
        from kade.verify import verify_manifests
        from registry.client import ClientOptions, RegistryClient

        with RegistryClient(ClientOptions(insecure=settings.insecure)) as client:
            verify_manifests(resources, settings.verify, client, report)
    opts = DeployOptions(release, namespace, timeout=settings.timeout, atomic=settings.atomic, values=values,
                         images={n: str(i) for n, i in images.items()})
    deployer = Deployer(Kube(settings.kubeconfig, settings.context), report)
    what = f"commit {ws.git.short_commit}" if ws.git else "a working tree"
    outcome = deployer.deploy(resources, opts, description=f"converge of {what}")
    return outcome.to_dict()


def converge(ws: Workspace, options: ProjectOptions, settings: DeploySettings, report: Report,
             report_file: Path | None = None) -> ConvergeResult:
    if ws.config.deploy is None:
        raise ConfigError(f"{ws.display}/kade.yaml: deploy: missing; add deploy: {{manifests: DIR}} to converge "
                          "(or use kade build)")
    result = ConvergeResult(None, None, False, "")
    try:
        built = build_project(ws.config, ws.root, options, report)
        result.build = built
        deployed = deploy_project(ws, template_images(built), settings, report)
        result.deploy = deployed
        result.ok, result.message = bool(deployed["ok"]), str(deployed["message"])
        return result
    except Exception as exc:
        result.message = str(ws.shown(exc))
        raise
    finally:
        if report_file is not None:
            write_report(report_file, result.to_json())


def write_report(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)


def images_from_report(path: Path) -> dict[str, Any]:
    """Images for templates from a `kade build --report` / `kade converge --report` file."""
    from kade.project import ImageRef

    try:
        data = json.loads(path.read_text())
        return {str(name): ImageRef(i["ref"], i["repository"], i["tag"], i["digest"])
                for name, i in data["images"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{path}: not a kade build report (expected images.NAME.ref/repository/tag/digest): "
                          f"{exc}") from None


def deploy_command(args: Any) -> int:
    """`kade deploy` in a project: kade.yaml's deploy section, with images from --images REPORT,
    --image NAME=REF, or else this commit's images looked up in the registry (never built here)."""
    from deployer.durations import parse_duration
    from kade.live import close_reporter, make_deploy_reporter
    from kade.output import print_result
    from kade.project import ImageRef, build_project
    from kade.workspace import open_workspace

    report = make_deploy_reporter(args.output)
    try:
        with open_workspace(Path(args.dir), env_name=args.env_name, dev=args.dev, report=report) as ws:
            images: dict[str, Any] = {}
            for path in args.images:
                images.update(images_from_report(Path(path)))
            for item in args.image:
                name, sep, ref = item.partition("=")
                if not sep:
                    raise ConfigError(f"--image {item!r}: expected NAME=REFERENCE")
                images[name] = ImageRef.parse(ref)
            if not images and ws.config.images:
                options = project_options(ws, args.repo, env_name=args.env_name,
                                          insecure=tuple(args.insecure_registry), build_missing=False)
                images = template_images(build_project(ws.config, ws.root, options, report))
            from kade.supply import verify_policy

            settings = DeploySettings(kubeconfig=args.kubeconfig, context=args.context,
                                      timeout=parse_duration(args.timeout), atomic=args.atomic,
                                      namespace=args.namespace if args.namespace != "default" else None,
                                      release=args.release, set_values=list(args.set_values),
                                      insecure=tuple(args.insecure_registry), verify=verify_policy(args, ws))
            try:
                outcome = deploy_project(ws, images, settings, report)
            except Exception as exc:
                ws.shown(exc)  # renames the export folder in its message, in place
                raise
    finally:
        close_reporter(report)
    print_result(args.output, outcome, lambda d: d["message"])
    return 0 if outcome["ok"] else 1
