"""`kade build` options for where stages run (--backend kubernetes and its settings)."""
from __future__ import annotations

import argparse
import os
from typing import Any

from kade import argtypes
from kade.errors import UsageError

BUILDER_IMAGE_ENV = "KADE_BUILDER_IMAGE"


def add_backend_arguments(p: Any) -> None:
    g = p.add_argument_group("in-cluster builds (--backend kubernetes)")
    g.add_argument("--backend", choices=("local", "kubernetes"), default="local",
                   help="run stages in this process (local) or as one pod per stage (kubernetes)")
    g.add_argument("--namespace", default="kade-builds", help="namespace of the builder pods (default kade-builds)")
    g.add_argument("--cache-pvc", default="kade-build-cache", metavar="NAME",
                   help="PVC for blobs and RUN cache mounts ('' for an emptyDir; default kade-build-cache)")
    g.add_argument("--kube-context", metavar="CONTEXT", help="kubeconfig context (default: current)")
    g.add_argument("--kubeconfig", metavar="FILE", type=argtypes.yaml_file, help="kubeconfig (default $KUBECONFIG or ~/.kube/config)")
    g.add_argument("--builder-image", metavar="REF", type=argtypes.image_reference, default=os.environ.get(BUILDER_IMAGE_ENV),
                   help=f"kade's builder image (images/builder; default ${BUILDER_IMAGE_ENV})")
    g.add_argument("--service-account", default="kade-builder", help="ServiceAccount of the pods (default kade-builder)")
    g.add_argument("--registry-secret", metavar="NAME",
                   help="kubernetes.io/dockerconfigjson Secret with push credentials for the pods")
    g.add_argument("--user-namespaces", action=argparse.BooleanOptionalAction, default=None,
                   help="run pods with hostUsers: false (default: wherever the nodes report user namespace "
                        "support; --no-user-namespaces forces the weaker chroot mode)")
    g.add_argument("--pod-timeout", type=int, default=3600, metavar="SECONDS",
                   help="activeDeadlineSeconds of each pod (default 3600)")
    g.add_argument("--lease-seconds", type=int, default=30, metavar="SECONDS",
                   help="duration of step Leases: a step of a lost pod is taken over after this (default 30)")
    g.add_argument("--allow-emulation", action="store_true",
                   help="a stage for an architecture no node has runs under qemu-user-static on another node "
                        "(default: an error naming the missing kubernetes.io/arch)")


def kube_settings_from_args(args: argparse.Namespace):
    from builder.backends.podspec import KubeSettings

    if not args.builder_image:
        raise UsageError(f"--backend kubernetes needs --builder-image REF (or ${BUILDER_IMAGE_ENV}): build it with "
                         "images/builder/build.sh REGISTRY/kade/builder:TAG")
    if args.pod_timeout < 60 or args.lease_seconds < 5:
        raise UsageError("--pod-timeout must be at least 60 and --lease-seconds at least 5")
    return KubeSettings(image=args.builder_image, namespace=args.namespace, cache_pvc=args.cache_pvc or None,
                        service_account=args.service_account or None, registry_secret=args.registry_secret,
                        kubeconfig=args.kubeconfig, kube_context=args.kube_context,
                        user_namespaces=args.user_namespaces, deadline_s=args.pod_timeout,
                        lease_s=args.lease_seconds, allow_emulation=args.allow_emulation)
