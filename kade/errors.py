"""Which exceptions the CLI treats as expected failures (message, exit 1) rather than bugs.

Each package owns its error base class; the CLI only names them here, so that registry/,
builder/ and deployer/ never import the CLI. They are looked up among the modules already
loaded, never imported: an exception can only be an instance of a class whose module is
loaded, and importing every package's errors (and kade.config) would cost each start-up.
"""
from __future__ import annotations

import sys


class UsageError(Exception):
    """Bad command-line input: exit 2."""


# (module, class) of the packages' error bases.
_EXPECTED_BASES = [
    ("registry.errors", "RegistryError"),
    ("builder.errors", "BuildError"),
    ("deployer.errors", "DeployError"),
    ("kade.config", "ConfigError"),
    ("common.errors", "SettingError"),
    ("kube.errors", "KubeAccessError"),
]
# Bad-input errors of the packages (exit 2 like argparse's), e.g. an invalid duration or a
# kubeconfig that can't be used (whichever command reads it).
_USAGE_BASES = [("deployer.errors", "UsageError"), ("kube.errors", "KubeConfigError")]


def _loaded(bases: list[tuple[str, str]]) -> tuple[type[BaseException], ...]:
    found: list[type[BaseException]] = [UsageError]
    for module, name in bases:
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and issubclass(cls, BaseException):
            found.append(cls)
    return tuple(found)


def is_usage(exc: BaseException) -> bool:
    """Bad input: exit 2."""
    return isinstance(exc, _loaded(_USAGE_BASES))


def is_expected(exc: BaseException) -> bool:
    """A failure the command explains (exit 1), not a bug."""
    return isinstance(exc, _loaded(_EXPECTED_BASES))
