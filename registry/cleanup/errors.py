"""Errors of the cleanup: one message naming the file, key, repository or cluster at fault."""
from __future__ import annotations

from registry.errors import RegistryError


class CleanupError(RegistryError):
    """Cleanup can't go on safely (no git history, no cluster access, a broken build record...)."""


class PolicyError(CleanupError):
    """A keep policy that can't be read: names the file and the key path."""


class GitError(CleanupError):
    """The git repository could not be read or cloned."""


class ClusterScanError(CleanupError):
    """A kube context could not be scanned: never treated as "nothing in use"."""
