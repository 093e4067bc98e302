"""The CLI side of the supply chain: where signing and verification keys come from, and the
`--sbom/--provenance/--sign-key/--builder-id` options of the build commands.

A key is a file path or `k8s://NAMESPACE/NAME`, a Kubernetes Secret holding `cosign.key` (and
`cosign.password`) for signing or `cosign.pub` for verifying, as `cosign generate-key-pair k8s://...`
writes them. A passphrase comes from $KADE_SIGN_PASSWORD, else $COSIGN_PASSWORD, else the Secret.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from kade import argtypes
from kade.errors import UsageError

K8S = "k8s://"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sbom", choices=("spdx", "cyclonedx", "none"), default=None,
                   help="attach an SBOM of each pushed image: SPDX 2.3 (default) or CycloneDX 1.5 JSON, or none")
    p.add_argument("--provenance", action=argparse.BooleanOptionalAction, default=None,
                   help="attach SLSA v1 provenance to each pushed image (default: yes)")
    p.add_argument("--sign-key", metavar="PATH|k8s://NS/NAME", default=None, type=argtypes.key_source,
                   help="sign each pushed image and its attestations (cosign format; default $KADE_SIGN_KEY)")
    p.add_argument("--builder-id", metavar="URI", default=None,
                   help="builder id written into provenance (default $KADE_BUILDER_ID, else "
                        "https://kade.io/builders/<backend>)")


def _secret(spec: str, kubeconfig: str | None, context: str | None) -> dict[str, bytes]:
    import base64

    namespace, _, name = spec[len(K8S):].partition("/")
    if not namespace or not name or "/" in name:
        raise UsageError(f"{spec}: expected k8s://NAMESPACE/NAME")
    from deployer.kube import Kube

    secret = Kube(kubeconfig, context).get(f"/api/v1/namespaces/{namespace}/secrets/{name}")
    if secret is None:
        raise UsageError(f"{spec}: Secret {name} not found in namespace {namespace}")
    return {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}


def _read(spec: str, item: str, kubeconfig: str | None, context: str | None) -> tuple[bytes, dict[str, bytes]]:
    if spec.startswith(K8S):
        data = _secret(spec, kubeconfig, context)
        if item not in data:
            raise UsageError(f"{spec}: the Secret has no {item} (it has: {', '.join(sorted(data)) or 'nothing'})")
        return data[item], data
    try:
        return Path(spec).expanduser().read_bytes(), {}
    except OSError as exc:
        raise UsageError(f"cannot read key file {spec}: {exc.strerror}") from None


def signing_key(spec: str, kubeconfig: str | None = None, context: str | None = None,
                password_env: tuple[str, ...] = ("KADE_SIGN_PASSWORD", "COSIGN_PASSWORD")) -> Any:
    """A private key from a file or a Secret; its passphrase from the first of `password_env` that is
    set, else the Secret's cosign.password."""
    from registry.sigkeys import load_private_key

    data, secret = _read(spec, "cosign.key", kubeconfig, context)
    password = next((os.environ[v] for v in password_env if v in os.environ), None)
    pw = password.encode() if password is not None else secret.get("cosign.password")
    return load_private_key(data, pw, spec)


def public_keys(specs: list[str], kubeconfig: str | None = None, context: str | None = None) -> list[Any]:
    from registry.sigkeys import load_public_key

    return [load_public_key(_read(spec, "cosign.pub", kubeconfig, context)[0], spec) for spec in specs]


def supply_options(args: argparse.Namespace, backend: str, builder_image: str = "", defaults: Any = None,
                   config_file: Path | None = None, source: str = "") -> Any:
    """SupplyOptions from the command line, then kade.yaml's `attest:` (`defaults`), then the environment."""
    from builder.attest import SupplyOptions, kade_version

    fmt = args.sbom or (defaults.sbom if defaults is not None else None) or "spdx"
    provenance = args.provenance if args.provenance is not None else (defaults.provenance if defaults else True)
    key_spec = args.sign_key or (defaults.sign_key if defaults else None) or os.environ.get("KADE_SIGN_KEY") or ""
    key = signing_key(key_spec, getattr(args, "kubeconfig", None)) if key_spec else None
    builder_id = (args.builder_id or (defaults.builder_id if defaults else None)
                  or os.environ.get("KADE_BUILDER_ID") or "")
    return SupplyOptions(sbom_format="" if fmt == "none" else fmt, provenance=provenance, sign_key=key,
                         builder_id=builder_id, backend=backend, builder_image=builder_image,
                         source_repository=source, config_file=config_file, creator=f"kade {kade_version()}")


def add_verify_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verify", action="store_true",
                   help="verify every image before applying and pin it by digest (kade.yaml: deploy.verify)")
    p.add_argument("--verify-key", action="append", default=[], metavar="PATH|k8s://NS/NAME", type=argtypes.key_source,
                   help="public key an image's signature must verify with (repeatable; implies --verify)")
    p.add_argument("--trusted-builder", action="append", default=[], metavar="ID",
                   help="builder id the image's provenance must name (repeatable; implies --verify)")
    p.add_argument("--verify-repo", metavar="PATH", type=argtypes.existing_dir,
                   help="git checkout whose history must hold the provenance's commit (implies --verify)")


def verify_policy(args: argparse.Namespace, ws: Any = None) -> Any:
    """The deploy's verification Policy from the command line and kade.yaml's deploy.verify; None: off."""
    from kade.verify import Policy

    spec = ws.config.deploy.verify if ws is not None and ws.config.deploy is not None else None
    if not (args.verify or args.verify_key or args.trusted_builder or args.verify_repo or spec):
        return None
    keys = list(args.verify_key) or [_in_project(k, ws) for k in (spec.keys if spec else ())]
    if not keys:
        raise UsageError("--verify needs --verify-key PATH (or deploy.verify.keys in kade.yaml)")
    builders = list(args.trusted_builder) or list(spec.builders if spec else ())
    repository = Path(args.verify_repo) if args.verify_repo else (
        ws.git.root if spec is not None and spec.history and ws.git is not None else None)
    if spec is not None and spec.history and repository is None:
        raise UsageError("deploy.verify.history needs a git checkout (it is off with --dev outside one)")
    kube = (getattr(args, "kubeconfig", None), getattr(args, "context", None) or getattr(args, "kube_context", None))
    return Policy(public_keys(keys, *kube), builders, repository)


def _in_project(key: str, ws: Any) -> str:
    """A kade.yaml key path, relative to the project folder."""
    if key.startswith(K8S) or Path(key).is_absolute() or ws is None:
        return key
    return str(ws.root / key)
