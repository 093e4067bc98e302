"""The package boundaries of DESIGN.md, enforced: common/ (small helpers) and kube/ (Kubernetes
access) sit below everything; registry/ knows nothing of builds or deploys (its cleanup/ reads
clusters through kube/), builder/ speaks to registries only through registry/, deployer/ knows
nothing of how images are built, and none of them imports the CLI."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ALLOWED = {
    "common": {"common"},
    "kube": {"kube", "common"},
    "registry": {"registry", "common"},
    "registry/cleanup": {"registry", "common", "kube"},
    "builder": {"builder", "registry", "kube", "common"},
    "deployer": {"deployer", "kube", "common"},
}
OURS = {"common", "kube", "registry", "builder", "deployer", "kade"}


def imported_packages(package: str) -> dict[str, set[str]]:
    """Our top-level packages imported by the files of `package` (a folder; a sub-folder listed in
    ALLOWED of its own is left to its own rule)."""
    found: dict[str, set[str]] = {}
    own = [ROOT / p for p in ALLOWED if p.startswith(package + "/")]
    for path in (ROOT / package).rglob("*.py"):
        if any(sub in path.parents for sub in own):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top in OURS:
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_stay_inside_its_boundary(package):
    found = imported_packages(package)
    assert package.split("/")[0] in found  # the walk saw the package's own imports: it really read the files
    forbidden = {top: files for top, files in found.items() if top not in ALLOWED[package]}
    assert not forbidden, f"{package}/ must not import {sorted(forbidden)}: {forbidden}"



def test_builder_talks_http_only_through_registry():
    users = [p for p in (ROOT / "builder").rglob("*.py") if "import requests" in p.read_text()]
    assert not users, f"builder/ must use registry/ for HTTP, not requests: {users}"


# Inside builder/: planning (Dockerfile + context -> the DAG of keyed steps) never reaches into solving
# or executing; docs/architecture.md lists the three groups.
PLANNING = {"dockerfile", "expand", "context", "globs", "digests", "image_config", "keys", "modes", "plan", "platforms", "errors"}


def test_builder_planning_imports_only_planning():
    bad = {}
    for name in PLANNING:
        path = ROOT / "builder" / f"{name}.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            modules = []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            for module in modules:
                parts = module.split(".")
                if parts[0] == "builder" and len(parts) > 1 and parts[1] not in PLANNING:
                    bad.setdefault(name, set()).add(module)
    assert not bad, f"planning modules import solving/executing ones: {bad}"


def test_builder_image_copies_every_package():
    """The builder pods and the cleanup CronJob import kade's packages from the builder image: each
    package pyproject ships is copied there and let through its .dockerignore (a missing one fails
    every pod at import)."""
    import tomllib

    shipped = [p.rstrip("*") for p in tomllib.loads((ROOT / "pyproject.toml").read_text())
               ["tool"]["setuptools"]["packages"]["find"]["include"]]
    dockerfile = (ROOT / "images/builder/Dockerfile").read_text()
    ignore = (ROOT / "images/builder/Dockerfile.dockerignore").read_text().splitlines()
    assert shipped and all((ROOT / p).is_dir() for p in shipped), shipped
    missing = [p for p in shipped if f"COPY {p}/ /opt/kade/lib/{p}/" not in dockerfile or f"!{p}/" not in ignore]
    assert not missing, f"images/builder/ does not copy {missing}"
