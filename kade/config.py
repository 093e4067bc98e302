"""`kade.yaml`: the project file at a repository's root, loaded into typed, validated objects.

Errors name the file, the key path and the expected form, e.g.
`kade.yaml: images.web.args.PORT: expected a string, number or boolean, got a list`.
The `cleanup:` section is kept as a raw mapping; the cleanup policy loader validates it.

Templating: after validation, `render_config(config, TemplateValues(...))` renders every string of
`repo`, `images.*` (context, dockerfile, target, args) and `deploy` (manifests, release, namespace,
values) as a sandboxed Jinja2 template with strict undefined names over:
  - `project`: the project name;
  - `env_name`: the `--env` of the command (undefined without `--env`, which is then an error);
  - `env`: the process environment (`{{ env.REGISTRY }}`). This is the giterminism escape hatch:
    everything else comes from the commit, the environment does not, so use it for what differs per
    machine (a registry address, a base image mirror), never for what the build's content depends on
    and that should be reviewed in git;
  - `git`: `commit`, `short_commit`, `branch`, `tag` of the commit being converged (may be None).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

CONFIG_NAME = "kade.yaml"
_IMAGE_NAME = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")
_DEPENDENCY_VALUES = ("ref", "repository", "tag", "digest")


class ConfigError(Exception):
    """kade.yaml is missing, unreadable or not of the expected form."""


@dataclass(frozen=True)
class SecretSpec:
    id: str
    src: str | None = None
    env: str | None = None


@dataclass(frozen=True)
class Dependency:
    """Image `image` must be built first; its reference parts reach this build as build args."""

    image: str
    args: dict[str, str]  # build-arg name -> one of ref|repository|tag|digest


@dataclass(frozen=True)
class ImageSpec:
    name: str
    context: str = "."
    dockerfile: str = "Dockerfile"
    target: str | None = None
    args: dict[str, str] = field(default_factory=dict)
    secrets: tuple[SecretSpec, ...] = ()
    ssh: tuple[str, ...] = ()
    dependencies: tuple[Dependency, ...] = ()
    platforms: tuple[str, ...] = ()  # target platforms, normalised (several: an OCI index); () = the build's


@dataclass(frozen=True)
class VerifySpec:
    """deploy.verify: images must be signed by one of `keys`; with `builders` or `history`, also carry
    signed provenance by a trusted builder from a commit in the project's git history."""

    keys: tuple[str, ...]
    builders: tuple[str, ...] = ()
    history: bool = False


@dataclass(frozen=True)
class DeploySpec:
    manifests: str = "deploy"
    release: str = "{{ project }}"
    namespace: str = "{{ project }}"
    values: tuple[str, ...] = ()
    verify: VerifySpec | None = None


@dataclass(frozen=True)
class AttestSpec:
    """attest: what every pushed image carries (SBOM format or none, provenance, signing key, builder id)."""

    sbom: str | None = None
    provenance: bool = True
    sign_key: str | None = None
    builder_id: str | None = None


@dataclass(frozen=True)
class TenantSpec:
    """tenant: whose build caches the project's builds use (builder/tenant.py), what it shares with
    other tenants, and its build key (signs step images and records; only signed steps are reused)."""

    name: str | None = None
    share: tuple[str, ...] = ()
    build_key: str | None = None


@dataclass(frozen=True)
class ProjectConfig:
    path: Path
    project: str
    images: dict[str, ImageSpec]
    deploy: DeploySpec | None
    cleanup: dict[str, Any]
    repo: str | None = None  # image repository prefix: image NAME goes to REPO/NAME
    attest: AttestSpec | None = None
    tenant: TenantSpec | None = None

    @property
    def root(self) -> Path:
        return self.path.parent

    def build_order(self) -> list[list[str]]:
        """Images grouped into waves: each wave depends only on earlier waves (parallel inside)."""
        return dependency_waves({n: [d.image for d in s.dependencies] for n, s in self.images.items()})


def load_config(path: str | Path) -> ProjectConfig:
    path = Path(path)
    if path.is_dir():
        path = path / CONFIG_NAME
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found; create a {CONFIG_NAME} at the repository root") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror}") from None
    return parse_config(text, path)


def parse_config(text: str, path: Path) -> ProjectConfig:
    import yaml  # here, not at the top: every command imports this module for ConfigError

    from common import yamlsafe

    try:
        data = yamlsafe.load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    v = _Validator(path.name if path.name else str(path))
    data = v.mapping(data if data is not None else {}, "")
    v.only_keys(data, "", {"project", "repo", "images", "deploy", "cleanup", "attest", "tenant"})
    project = v.string(data.get("project"), "project", required=True)
    if not _IMAGE_NAME.match(project):
        v.fail("project", "expected lower-case letters and digits, separated by '.', '_' or '-'")
    images_raw = v.mapping(data.get("images", {}), "images")
    images = {name: _image(v, name, spec) for name, spec in images_raw.items()}
    for spec in images.values():
        for dep in spec.dependencies:
            if dep.image not in images:
                v.fail(f"images.{spec.name}.dependencies", f"names image {dep.image!r}, which is not under images")
    config = ProjectConfig(
        path=path,
        project=project,
        images=images,
        deploy=_deploy(v, data["deploy"]) if data.get("deploy") is not None else None,
        cleanup=v.mapping(data.get("cleanup", {}), "cleanup"),
        repo=v.string(data["repo"], "repo") if data.get("repo") is not None else None,
        attest=_attest(v, data["attest"]) if data.get("attest") is not None else None,
        tenant=_tenant(v, data["tenant"]) if data.get("tenant") is not None else None,
    )
    try:
        config.build_order()
    except ValueError as exc:
        v.fail("images", str(exc))
    return config


def dependency_waves(graph: dict[str, list[str]]) -> list[list[str]]:
    """Topological waves of a dependency graph; raises ValueError naming a cycle."""
    done: set[str] = set()
    waves: list[list[str]] = []
    remaining = dict(graph)
    while remaining:
        wave = sorted(n for n, deps in remaining.items() if all(d in done for d in deps))
        if not wave:
            raise ValueError(f"dependency cycle among {', '.join(sorted(remaining))}")
        waves.append(wave)
        done.update(wave)
        for n in wave:
            del remaining[n]
    return waves


def _image(v: "_Validator", name: str, raw: Any) -> ImageSpec:
    at = f"images.{name}"
    if not _IMAGE_NAME.match(str(name)):
        v.fail(at, "image names are lower-case letters and digits, separated by '.', '_' or '-'")
    raw = v.mapping(raw if raw is not None else {}, at)
    v.only_keys(raw, at, {"context", "dockerfile", "target", "args", "secrets", "ssh", "dependencies", "platforms"})
    return ImageSpec(
        name=name,
        context=v.string(raw.get("context", "."), f"{at}.context"),
        dockerfile=v.string(raw.get("dockerfile", "Dockerfile"), f"{at}.dockerfile"),
        target=v.string(raw.get("target"), f"{at}.target") if raw.get("target") is not None else None,
        args=v.string_map(raw.get("args", {}), f"{at}.args"),
        secrets=tuple(_secret(v, f"{at}.secrets[{i}]", s) for i, s in enumerate(v.sequence(raw.get("secrets", []), f"{at}.secrets"))),
        ssh=tuple(v.string(s, f"{at}.ssh[{i}]") for i, s in enumerate(v.sequence(raw.get("ssh", []), f"{at}.ssh"))),
        dependencies=tuple(
            _dependency(v, f"{at}.dependencies[{i}]", d)
            for i, d in enumerate(v.sequence(raw.get("dependencies", []), f"{at}.dependencies"))
        ),
        platforms=_platforms(v, f"{at}.platforms", raw.get("platforms", [])),
    )


def _platforms(v: "_Validator", at: str, raw: Any) -> tuple[str, ...]:
    from builder.errors import BuildError
    from builder.platforms import parse_platforms

    items = [v.string(p, f"{at}[{i}]") for i, p in enumerate(v.sequence(raw, at))]
    try:
        return tuple(str(p) for p in parse_platforms(",".join(items), "platform")) if items else ()
    except BuildError as exc:
        v.fail(at, f"{exc.detail} ({exc.hint})")
        raise AssertionError("unreachable") from None


def _secret(v: "_Validator", at: str, raw: Any) -> SecretSpec:
    raw = v.mapping(raw, at)
    v.only_keys(raw, at, {"id", "src", "env"})
    secret = SecretSpec(
        id=v.string(raw.get("id"), f"{at}.id", required=True),
        src=v.string(raw["src"], f"{at}.src") if "src" in raw else None,
        env=v.string(raw["env"], f"{at}.env") if "env" in raw else None,
    )
    if (secret.src is None) == (secret.env is None):
        v.fail(at, "give exactly one of src (a file path) or env (a variable name)")
    return secret


def _dependency(v: "_Validator", at: str, raw: Any) -> Dependency:
    raw = v.mapping(raw, at)
    v.only_keys(raw, at, {"image", "args"})
    args = v.string_map(raw.get("args", {}), f"{at}.args")
    for arg, what in args.items():
        if what not in _DEPENDENCY_VALUES:
            v.fail(f"{at}.args.{arg}", f"expected one of {', '.join(_DEPENDENCY_VALUES)}, got {what!r}")
    return Dependency(image=v.string(raw.get("image"), f"{at}.image", required=True), args=args)


def _attest(v: "_Validator", raw: Any) -> AttestSpec:
    raw = v.mapping(raw, "attest")
    v.only_keys(raw, "attest", {"sbom", "provenance", "sign_key", "builder_id"})
    sbom = raw.get("sbom", "spdx")
    sbom = "none" if sbom is False else v.string(sbom, "attest.sbom")
    if sbom not in ("spdx", "cyclonedx", "none"):
        v.fail("attest.sbom", f"expected spdx, cyclonedx or none (false), got {sbom!r}")
    return AttestSpec(sbom=sbom, provenance=v.boolean(raw.get("provenance", True), "attest.provenance"),
                      sign_key=v.string(raw["sign_key"], "attest.sign_key") if raw.get("sign_key") else None,
                      builder_id=v.string(raw["builder_id"], "attest.builder_id") if raw.get("builder_id") else None)


def _tenant(v: "_Validator", raw: Any) -> TenantSpec:
    """`tenant: NAME`, or `tenant: {name:, share: [trees, mounts, downloads], buildKey:}`."""
    from builder.tenant import PARTS

    if isinstance(raw, str):
        return TenantSpec(name=v.string(raw, "tenant", required=True))
    raw = v.mapping(raw, "tenant")
    v.only_keys(raw, "tenant", {"name", "share", "buildKey"})
    share = tuple(v.string(p, f"tenant.share[{i}]") for i, p in enumerate(v.sequence(raw.get("share", []),
                                                                                       "tenant.share")))
    for i, part in enumerate(share):
        if part not in PARTS:
            v.fail(f"tenant.share[{i}]", f"expected one of {', '.join(PARTS)}, got {part!r}")
    return TenantSpec(name=v.string(raw["name"], "tenant.name") if raw.get("name") is not None else None,
                      share=share,
                      build_key=v.string(raw["buildKey"], "tenant.buildKey") if raw.get("buildKey") else None)


def _verify(v: "_Validator", raw: Any) -> VerifySpec:
    raw = v.mapping(raw, "deploy.verify")
    v.only_keys(raw, "deploy.verify", {"keys", "builders", "history"})
    keys = tuple(v.string(k, f"deploy.verify.keys[{i}]") for i, k in enumerate(v.sequence(raw.get("keys", []),
                                                                                         "deploy.verify.keys")))
    if not keys:
        v.fail("deploy.verify.keys", "give at least one public key (a file path or k8s://NAMESPACE/NAME)")
    builders = tuple(v.string(b, f"deploy.verify.builders[{i}]")
                     for i, b in enumerate(v.sequence(raw.get("builders", []), "deploy.verify.builders")))
    return VerifySpec(keys, builders, v.boolean(raw.get("history", False), "deploy.verify.history"))


def _deploy(v: "_Validator", raw: Any) -> DeploySpec:
    raw = v.mapping(raw, "deploy")
    v.only_keys(raw, "deploy", {"manifests", "release", "namespace", "values", "verify"})
    defaults = DeploySpec()
    return DeploySpec(
        manifests=v.string(raw.get("manifests", defaults.manifests), "deploy.manifests"),
        release=v.string(raw.get("release", defaults.release), "deploy.release"),
        namespace=v.string(raw.get("namespace", defaults.namespace), "deploy.namespace"),
        values=tuple(v.string(s, f"deploy.values[{i}]") for i, s in enumerate(v.sequence(raw.get("values", []), "deploy.values"))),
        verify=_verify(v, raw["verify"]) if raw.get("verify") is not None else None,
    )


class _Validator:
    """Checks shapes and raises ConfigError naming file and key path."""

    def __init__(self, filename: str) -> None:
        self.filename = filename

    def fail(self, at: str, message: str) -> None:
        where = f"{self.filename}: {at}" if at else self.filename
        raise ConfigError(f"{where}: {message}")

    def mapping(self, value: Any, at: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(at, f"expected a mapping, got {_kind(value)}")
        for key in value:
            if not isinstance(key, str):
                self.fail(at, f"keys must be strings, got {key!r}")
        return value

    def sequence(self, value: Any, at: str) -> list[Any]:
        if not isinstance(value, list):
            self.fail(at, f"expected a list, got {_kind(value)}")
        return value

    def string(self, value: Any, at: str, required: bool = False) -> str:
        if value is None and required:
            self.fail(at, "is required")
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            self.fail(at, f"expected a string, got {_kind(value)}")
        return str(value)

    def boolean(self, value: Any, at: str) -> bool:
        if not isinstance(value, bool):
            self.fail(at, f"expected true or false, got {_kind(value)}")
        return value

    def string_map(self, value: Any, at: str) -> dict[str, str]:
        value = self.mapping(value if value is not None else {}, at)
        out = {}
        for key, item in value.items():
            if not isinstance(item, (str, int, float, bool)):
                self.fail(f"{at}.{key}", f"expected a string, number or boolean, got {_kind(item)}")
            out[key] = str(item).lower() if isinstance(item, bool) else str(item)
        return out

    def only_keys(self, value: dict[str, Any], at: str, allowed: set[str]) -> None:
        unknown = sorted(set(value) - allowed)
        if unknown:
            self.fail(f"{at}.{unknown[0]}" if at else unknown[0], f"unknown key; expected one of {', '.join(sorted(allowed))}")


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", type(None): "nothing"}.get(type(value), type(value).__name__)


# ---- templating -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class TemplateValues:
    """What kade.yaml templates can use (see the module docstring)."""

    env: Mapping[str, str]
    env_name: str | None = None
    git: Mapping[str, str | None] = field(default_factory=dict)


def render_config(config: ProjectConfig, values: TemplateValues, with_deploy: bool = True) -> ProjectConfig:
    """The config with its templated strings rendered; errors name file, key path and the template.
    With `with_deploy=False` (a build) the deploy section is left as written."""
    r = _Renderer(config.path.name or str(config.path), config.project, values)
    images = {
        name: replace(
            spec,
            context=r.render(spec.context, f"images.{name}.context"),
            dockerfile=r.render(spec.dockerfile, f"images.{name}.dockerfile"),
            target=r.render(spec.target, f"images.{name}.target") if spec.target is not None else None,
            args={k: r.render(a, f"images.{name}.args.{k}") for k, a in spec.args.items()},
        )
        for name, spec in config.images.items()
    }
    deploy = config.deploy
    if config.deploy is not None and with_deploy:
        d = config.deploy
        deploy = DeploySpec(
            manifests=r.render(d.manifests, "deploy.manifests"),
            release=r.render(d.release, "deploy.release"),
            namespace=r.render(d.namespace, "deploy.namespace"),
            values=tuple(r.render(f, f"deploy.values[{i}]") for i, f in enumerate(d.values)),
            verify=d.verify,
        )
    repo = r.render(config.repo, "repo") if config.repo is not None else None
    return replace(config, images=images, deploy=deploy, repo=repo or None)


class _Renderer:
    def __init__(self, filename: str, project: str, values: TemplateValues) -> None:
        import jinja2.sandbox

        self.filename = filename
        self.env = jinja2.sandbox.SandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False,
                                                      keep_trailing_newline=False)
        self.context: dict[str, Any] = {"project": project, "env": _Environment(values.env), "git": dict(values.git)}
        if values.env_name is not None:
            self.context["env_name"] = values.env_name

    def render(self, text: str, at: str) -> str:
        import jinja2

        if "{" not in text:
            return text
        try:
            return self.env.from_string(text).render(self.context)
        except jinja2.UndefinedError as exc:
            raise ConfigError(f"{self.filename}: {at}: template {text!r}: {exc.message}{_undefined_hint(exc.message or '')}") from None
        except jinja2.TemplateError as exc:
            raise ConfigError(f"{self.filename}: {at}: template {text!r}: {exc.message or exc}") from None


class _Environment(dict):
    """The process environment as seen by templates (its type name shows in undefined-name errors)."""


def _undefined_hint(message: str) -> str:
    if "env_name" in message:
        return " (pass --env ENV)"
    match = re.search(r"_Environment object' has no attribute '([^']+)'", message)
    if match:
        return f" (the environment variable {match.group(1)} is not set)"
    return " (known names: project, env_name, env.*, git.commit/short_commit/branch/tag)"
