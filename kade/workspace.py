"""A project as kade builds it: the git state, the project folder exported from HEAD into a
temporary folder (or the working tree with --dev), and its kade.yaml loaded and rendered."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from common import fsutil
from kade.config import CONFIG_NAME, ConfigError, ProjectConfig, TemplateValues, load_config, render_config
from kade.gittree import GitState, check_clean, export, open_repository, source_url

Report = Callable[..., None]


@dataclass(frozen=True)
class Workspace:
    config: ProjectConfig  # rendered
    root: Path  # the exported project folder (what is built and deployed)
    git: GitState | None  # None only with --dev outside a git checkout
    display: str  # the project folder as the user knows it (for messages)
    source: str | None  # repository URL without credentials

    @property
    def commit(self) -> str | None:
        return self.git.commit if self.git else None

    @property
    def branch(self) -> str | None:
        return self.git.branch if self.git else None

    def template_git(self) -> dict[str, str | None]:
        return self.git.template_values() if self.git else {}

    def shown(self, exc: BaseException) -> BaseException:
        """`exc` with the temporary export folder in its message named as the project folder."""
        if exc.args and isinstance(exc.args[0], str) and str(self.root) in exc.args[0]:
            exc.args = (exc.args[0].replace(str(self.root), self.display), *exc.args[1:])
        return exc


def named_paths(config: ProjectConfig) -> list[tuple[str, str]]:
    """(kade.yaml key, path relative to the project folder) of what the build or the deploy reads."""
    paths = []
    for name, spec in config.images.items():
        paths.append((f"images.{name}.context", spec.context))
        paths.append((f"images.{name}.dockerfile", os.path.join(spec.context, spec.dockerfile)))
    if config.deploy is not None:
        paths.append(("deploy.manifests", config.deploy.manifests))
        paths += [(f"deploy.values[{i}]", v) for i, v in enumerate(config.deploy.values)]
    return paths


def used_paths(config: ProjectConfig) -> list[str]:
    """Paths (relative to the project folder) whose content the build or the deploy reads."""
    return [CONFIG_NAME] + [path for _, path in named_paths(config)]


def check_inside(root: Path, config: ProjectConfig) -> None:
    """Every path kade.yaml names stays in the project folder, symlinks followed: a repository's
    kade.yaml must not make kade read this machine's files (`dockerfile: /etc/shadow` came back as
    its first line in the parse error, in the CI log)."""
    for key, path in named_paths(config):
        if not fsutil.inside(root, root / path):
            raise ConfigError(f"{CONFIG_NAME}: {key}: {path!r} is outside the project folder (kade reads only "
                              "the project's files; a symlink leading out of it is not followed)")


def has_project(project_dir: Path) -> bool:
    return (project_dir / CONFIG_NAME).is_file()


@contextmanager
def open_workspace(project_dir: Path, *, env_name: str | None, dev: bool, report: Report,
                   deploy: bool = True) -> Iterator[Workspace]:
    """The project at HEAD (or the working tree with `dev`) in a temporary folder, removed afterwards."""
    project_dir = project_dir.resolve()
    try:
        state: GitState | None = open_repository(project_dir)
    except ConfigError:
        if not dev:
            raise
        state = None
    tmp = Path(tempfile.mkdtemp(prefix="kade-project-"))
    try:
        if state is None:
            report("warning", f"{project_dir} is not in a git checkout: --dev builds the folder as it is")
            root = project_dir
        else:
            root = export(state, tmp / "tree", dev=dev)
            if dev:
                report("warning", "--dev: building the working tree (uncommitted changes included), "
                                  f"not commit {state.short_commit}")
        if not (root / CONFIG_NAME).is_file():
            where = f"commit {state.short_commit}" if state is not None and not dev else "the working tree"
            raise ConfigError(f"{project_dir / CONFIG_NAME}: not found in {where}; create and commit a {CONFIG_NAME}")
        display = os.path.relpath(project_dir)
        if display.startswith(".."):
            display = str(project_dir)
        try:
            raw = load_config(root / CONFIG_NAME)
        except ConfigError as exc:  # name the user's file, not the exported copy (deleted by then)
            raise ConfigError(str(exc).replace(str(root / CONFIG_NAME), os.path.join(display, CONFIG_NAME))) from None
        config = render_config(raw, TemplateValues(env=os.environ, env_name=env_name,
                                                   git=state.template_values() if state else {}),
                               with_deploy=deploy)
        check_inside(root, config)
        if state is not None and not dev:
            check_clean(state, used_paths(config))
        yield Workspace(config=config, root=root, git=state, display=display,
                        source=source_url(state) if state else None)
    finally:
        fsutil.remove_tree(tmp)
