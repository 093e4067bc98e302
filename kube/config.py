"""Which cluster and credentials: kubectl's order (--kubeconfig, else $KUBECONFIG, a ':'-separated
list, else ~/.kube/config, else the pod's service account), every problem a KubeConfigError that
names the file (and context) and what to do."""
from __future__ import annotations

import os
from typing import Any, Mapping

import yaml

from common import yamlsafe
from kube.errors import KubeConfigError

SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
_FIX = "pass --kubeconfig FILE or point KUBECONFIG at the cluster's kubeconfig"


def kubeconfig_paths(kubeconfig: str | None, environ: Mapping[str, str] | None = None) -> list[str]:
    """The kubeconfig files to read: --kubeconfig, else $KUBECONFIG (a ':'-separated list), else
    ~/.kube/config if it exists; [] means in-cluster configuration."""
    env = os.environ if environ is None else environ
    if kubeconfig:
        return [kubeconfig]
    if env.get("KUBECONFIG"):
        return [p for p in env["KUBECONFIG"].split(":") if p]
    default = os.path.expanduser("~/.kube/config")
    return [default] if os.path.exists(default) else []


def check_kubeconfig(path: str, text: str) -> None:
    """Raise KubeConfigError naming `path` when `text` is not a kubeconfig a client could use."""
    try:
        data = yamlsafe.load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise KubeConfigError(f"kubeconfig {path} is not valid YAML{where}: {problem}; fix the file or point "
                              "--kubeconfig / KUBECONFIG at another") from None
    if not isinstance(data, dict) or not any(k in data for k in ("clusters", "contexts", "users")):
        raise KubeConfigError(f"kubeconfig {path} is not a kubeconfig (expected a mapping with clusters, "
                              "contexts and users); point --kubeconfig / KUBECONFIG at the cluster's kubeconfig")


def load_configuration(kubeconfig: str | None = None, context: str | None = None) -> Any:
    """A client Configuration (never the package's global default) from kubeconfig file(s) or, with
    none, the pod's service account."""
    from kubernetes import client, config

    cfg = client.Configuration()
    paths = kubeconfig_paths(kubeconfig)
    if not paths:
        if not os.environ.get("KUBERNETES_SERVICE_HOST"):
            raise KubeConfigError(f"no Kubernetes configuration: {_FIX}, create ~/.kube/config, or run inside a pod")
        try:
            config.load_incluster_config(client_configuration=cfg)
        except config.ConfigException as exc:
            raise KubeConfigError(f"cannot use the in-cluster Kubernetes configuration: {exc}") from None
        return cfg
    readable = []
    for path in paths:
        try:
            text = open(os.path.expanduser(path), encoding="utf-8").read()
        except FileNotFoundError:
            if kubeconfig or len(paths) == 1:
                raise KubeConfigError(f"kubeconfig {path} does not exist; {_FIX}") from None
            continue  # kubectl ignores missing files in a KUBECONFIG list
        except (OSError, UnicodeDecodeError) as exc:
            raise KubeConfigError(f"cannot read kubeconfig {path}: {exc}") from None
        check_kubeconfig(path, text)
        readable.append(path)
    if not readable:
        raise KubeConfigError(f"none of the kubeconfig files in KUBECONFIG exist: {', '.join(paths)}")
    try:
        config.load_kube_config(config_file=":".join(readable), context=context, client_configuration=cfg,
                                persist_config=False)
    except (config.ConfigException, OSError, TypeError, ValueError, AttributeError, KeyError) as exc:
        raise KubeConfigError(f"kubeconfig {', '.join(readable)}: {exc}"
                              + (f" (context {context!r})" if context else "")
                              + "; check the file or pass --context") from None
    return cfg
