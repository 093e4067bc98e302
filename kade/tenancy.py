"""The CLI side of tenants (builder/tenant.py): `--tenant`, `--share` and `--build-key` of the build
commands, then kade.yaml's `tenant:`, then $KADE_TENANT and $KADE_BUILD_KEY.

The build key is a private key file or `k8s://NAMESPACE/NAME` (a Secret holding `cosign.key` and
optionally `cosign.password`, as `cosign generate-key-pair k8s://...` writes it); its passphrase comes
from $KADE_BUILD_KEY_PASSWORD, else the Secret. Builder pods read it from that Secret (mounted by the
kubelet), so with `--backend kubernetes` it must be a Secret in the builders' namespace.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kade import argtypes
from kade.errors import UsageError

KEY_PASSWORD_ENV = ("KADE_BUILD_KEY_PASSWORD",)


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("tenant (docs/security.md, Tenants)")
    g.add_argument("--tenant", metavar="NAME", default=None, type=_name,
                   help="whose build caches (RUN cache mounts, unpacked base images, downloads) and step Leases "
                        "this build uses (default: kade.yaml's tenant, $KADE_TENANT, else the stages repository)")
    g.add_argument("--share", metavar="PARTS", default=None, type=_shares,
                   help="cache parts shared with every tenant that shares them too: trees, mounts, downloads "
                        "(comma-separated; default: none)")
    g.add_argument("--build-key", metavar="PATH|k8s://NS/NAME", default=None, type=argtypes.key_source,
                   help="the tenant's build key: step images and build records are signed with it, and only step "
                        "images it signed are reused (default: kade.yaml's tenant.buildKey, $KADE_BUILD_KEY)")


def _name(text: str) -> str:
    from builder.tenant import Tenant

    try:
        return Tenant(text).name
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _shares(text: str) -> frozenset[str]:
    from builder.tenant import parse_shares

    try:
        return parse_shares(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


@dataclass(frozen=True)
class TenantChoice:
    name: str | None
    share: frozenset[str]
    key_spec: str
    build_key: Any  # registry.sigkeys.SigningKey | None


def choose(args: argparse.Namespace, spec: Any = None, project_root: Path | None = None) -> TenantChoice:
    """The command line, then kade.yaml's `tenant:` (`spec`), then the environment."""
    name = args.tenant or (spec.name if spec else None) or os.environ.get("KADE_TENANT") or None
    share = args.share if args.share is not None else frozenset(spec.share if spec else ())
    key_spec = args.build_key or (spec.build_key if spec else None) or os.environ.get("KADE_BUILD_KEY") or ""
    if key_spec and project_root is not None and not args.build_key and spec and spec.build_key == key_spec \
            and not key_spec.startswith("k8s://") and not Path(key_spec).is_absolute():
        key_spec = str(project_root / key_spec)   # kade.yaml paths are relative to the project
    key = None
    if key_spec:
        from kade.supply import signing_key

        key = signing_key(key_spec, getattr(args, "kubeconfig", None), getattr(args, "kube_context", None),
                          KEY_PASSWORD_ENV)
    return TenantChoice(name, share, key_spec, key)


def pod_key_secret(choice: TenantChoice, namespace: str) -> str | None:
    """The Secret builder pods in `namespace` mount the build key from (k8s://NAMESPACE/NAME), if any."""
    if not choice.key_spec:
        return None
    if not choice.key_spec.startswith(f"k8s://{namespace}/"):
        raise UsageError(f"build key {choice.key_spec}: builder pods read the build key from a Secret in their "
                         f"namespace: give k8s://{namespace}/NAME (create it with `kubectl -n {namespace} create "
                         "secret generic NAME --from-file=cosign.key=KEYFILE`)")
    return choice.key_spec.rsplit("/", 1)[1]


def with_pod_key(settings: Any, choice: TenantChoice) -> Any:
    """KubeSettings whose pods get the tenant and its build key."""
    import dataclasses

    return dataclasses.replace(settings, tenant=choice.name, share=tuple(sorted(choice.share)),
                               build_key_secret=pod_key_secret(choice, settings.namespace))
