"""Which exceptions the CLI treats as expected failures (message, exit 1) rather than bugs.

Each package owns its error base class; the CLI only collects them here, so that registry/,
builder/ and deployer/ never import the CLI.
"""
from __future__ import annotations

import importlib


class UsageError(Exception):
    """Bad command-line input: exit 2."""


def _collect() -> tuple[type[BaseException], ...]:
    found: list[type[BaseException]] = [UsageError]
    for module, name in [
        ("registry.errors", "RegistryError"),
        ("builder.errors", "BuildError"),
        ("deployer.errors", "DeployError"),
        ("kade.config", "ConfigError"),
        ("common.errors", "SettingError"),
        ("kube.errors", "KubeAccessError"),
    ]:
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue  # that package is not written yet
    return tuple(found)


def _usage() -> tuple[type[BaseException], ...]:
    """Bad-input errors of the packages (exit 2 like argparse's), e.g. an invalid duration or a
    kubeconfig that can't be used (whichever command reads it)."""
    found: list[type[BaseException]] = [UsageError]
    for module, name in [("deployer.errors", "UsageError"), ("kube.errors", "KubeConfigError")]:
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(found)


EXPECTED: tuple[type[BaseException], ...] = _collect()
USAGE: tuple[type[BaseException], ...] = _usage()
