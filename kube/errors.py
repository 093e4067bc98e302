"""How Kubernetes access fails before any object is read (the CLI maps them to exit codes). Nothing
heavy is imported here: the CLI loads this module at start-up."""
from __future__ import annotations


class KubeConfigError(Exception):
    """No usable configuration: a kubeconfig that is missing, unreadable, not YAML, not a kubeconfig,
    without the context asked for, or no kubeconfig at all outside a pod. Bad input: exit 2."""


class KubeAccessError(Exception):
    """The cluster could not be talked to (kube.client.ApiUnanswered). A failure: exit 1."""
