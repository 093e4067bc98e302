"""`kade image inspect|tags|copy|delete`: look at and move images in OCI registries and layouts."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kade import argtypes
from kade.errors import UsageError
from kade.output import OUTPUT_CHOICES, make_reporter, print_result
from registry.errors import InvalidDigest, InvalidManifest, InvalidReference
from registry.layout import SCHEME as LAYOUT_SCHEME
from registry.model import Manifest, parse_manifest
from registry.reference import Reference
from common import jsonsafe

if TYPE_CHECKING:
    from registry.client import RegistryClient

# registry.client and registry.copy (requests, urllib3, ssl) are imported inside the handlers, so that
# building the `kade` parser stays cheap for every other command.


def register(subparsers: Any) -> None:
    image = subparsers.add_parser("image", help="inspect, list, copy and delete images in registries",
                                  description="Inspect, list, copy and delete images in OCI registries and "
                                              "local OCI layouts (oci:PATH:TAG).")
    sub = image.add_subparsers(dest="image_command", metavar="SUBCOMMAND")
    image.set_defaults(func=lambda args: (image.print_help(), 2)[1])

    p = sub.add_parser("inspect", help="print an image's manifest and config as JSON",
                       description="Print the manifest (and, for an image, its config) of REF as JSON. "
                                   "REF is a registry reference or oci:PATH:TAG.")
    p.add_argument("ref", metavar="REF")
    p.add_argument("--raw", action="store_true", help="print the manifest bytes exactly as stored")
    shown = p.add_mutually_exclusive_group()
    shown.add_argument("--sbom", action="store_true", help="print the image's attached SBOM")
    shown.add_argument("--provenance", action="store_true", help="print the image's attached SLSA provenance")
    shown.add_argument("--signatures", action="store_true",
                       help="list the image's signatures (verified when --key is given)")
    p.add_argument("--key", action="append", default=[], metavar="PATH|k8s://NS/NAME", type=argtypes.key_source,
                   help="public key to verify --signatures with (repeatable)")
    _common(p, output=False)
    p.set_defaults(func=cmd_inspect, output="json")  # its result is JSON: so is its failure

    p = sub.add_parser("verify", help="check an image's signature, provenance, builder and commit",
                       description="Verify REF: a signature by one of the --key public keys, and with --trusted-builder "
                                   "or --repo a signed provenance made by a trusted builder from a commit in the "
                                   "repository's history. Exit 0 when it passes, 1 with the reasons when not.")
    p.add_argument("ref", metavar="REF")
    _policy_args(p)
    _common(p)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("sbom", help="SBOM tools (diff)")
    sbom = p.add_subparsers(dest="sbom_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
    d = sbom.add_parser("diff", help="packages added, removed and changed between two images' SBOMs",
                        description="Compare the SBOMs attached to A and B (references or SBOM files).")
    d.add_argument("a", metavar="A")
    d.add_argument("b", metavar="B")
    _common(d)
    d.set_defaults(func=cmd_sbom_diff)

    p = sub.add_parser("keygen", help="make a signing key pair (cosign format)",
                       description="Write PREFIX.key (cosign's encrypted format when $KADE_SIGN_PASSWORD is set, "
                                   "else PEM PKCS#8) and PREFIX.pub (PEM): ECDSA P-256, as cosign and skopeo use.")
    p.add_argument("prefix", metavar="PREFIX")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("tags", help="list a repository's tags, one a line",
                       description="List the tags of REPO (e.g. 127.0.0.1:5000/team/app), one a line.")
    p.add_argument("repo", metavar="REPO")
    _common(p)
    p.set_defaults(func=cmd_tags)

    p = sub.add_parser("copy", help="copy an image or index between registries and OCI layouts",
                       description="Copy SRC to DST with every blob and child manifest, byte for byte. Either "
                                   "may be a registry reference or oci:PATH:TAG. Blobs are mounted within one "
                                   "registry and streamed otherwise; the tag is set last.")
    p.add_argument("src", metavar="SRC")
    p.add_argument("dst", metavar="DST")
    _common(p)
    p.set_defaults(func=cmd_copy)

    p = sub.add_parser("delete", help="delete a tag (only that tag) or a manifest by digest",
                       description="Delete REF. With a tag, only that tag goes (other tags on the same "
                                   "image stay). With @sha256:..., the manifest and every tag on it go.")
    p.add_argument("ref", metavar="REF")
    _common(p)
    p.set_defaults(func=cmd_delete)


def _policy_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--key", action="append", default=[], metavar="PATH|k8s://NS/NAME", required=True,
                   type=argtypes.key_source,
                   help="public key a signature must verify with (repeatable: any one)")
    p.add_argument("--trusted-builder", action="append", default=[], metavar="ID",
                   help="builder id the provenance must name (repeatable: any one)")
    p.add_argument("--repo", metavar="PATH", type=argtypes.existing_dir,
                   help="git checkout whose history must hold the provenance's commit")
    p.add_argument("--kubeconfig", type=argtypes.yaml_file, help="kubeconfig for k8s:// keys")


def _common(p: argparse.ArgumentParser, output: bool = True) -> None:
    p.add_argument("--insecure-registry", action="append", default=[], metavar="HOST", type=argtypes.registry_host,
                   help="reach HOST without TLS verification, or over plain HTTP (repeatable; loopback "
                        "registries are always allowed plain HTTP)")
    p.add_argument("--ca-file", metavar="PATH", type=argtypes.readable_file, help="CA bundle to verify registries' TLS certificates")
    if output:
        p.add_argument("-o", "--output", choices=OUTPUT_CHOICES, default="text", help="text (default) or json")


def _client(args: argparse.Namespace) -> "RegistryClient":
    from registry.client import ClientOptions, RegistryClient

    return RegistryClient(ClientOptions(insecure=tuple(args.insecure_registry), ca_file=args.ca_file))


def _ref(s: str, default_tag: str | None = "latest") -> Reference:
    try:
        return Reference.parse(s, default_tag=default_tag)
    except (InvalidReference, InvalidDigest) as exc:
        raise UsageError(str(exc)) from None


def _check_spec(s: str) -> None:
    if s.startswith(LAYOUT_SCHEME):
        return
    _ref(s, None)


def cmd_inspect(args: argparse.Namespace) -> int:
    _check_spec(args.ref)
    from registry.copy import open_endpoint

    if args.sbom or args.provenance or args.signatures:
        return _inspect_attached(args)
    with _client(args) as client:
        endpoint = open_endpoint(client, args.ref)
        ident = endpoint.identifier or ("latest" if not args.ref.startswith(LAYOUT_SCHEME) else None)
        body, desc = endpoint.get_manifest(ident)  # type: ignore[arg-type]
        if args.raw:
            print(body.decode())
            return 0
        manifest = parse_manifest(body, desc.media_type)
        result: dict[str, Any] = {"reference": args.ref, "digest": desc.digest, "mediaType": desc.media_type,
                                  "size": desc.size, "manifest": jsonsafe.loads(body)}
        if isinstance(manifest, Manifest):
            from registry.imageconfig import MAX_CONFIG_BYTES, ImageConfig

            if manifest.config.size > MAX_CONFIG_BYTES:
                raise InvalidManifest(f"{args.ref}: its config {manifest.config.digest} is {manifest.config.size} "
                                      f"bytes, more than the {MAX_CONFIG_BYTES} kade reads; refusing it")
            stream = endpoint.open_blob(manifest.config)
            try:
                config_bytes = stream.read(MAX_CONFIG_BYTES)
                while stream.read(1 << 20):  # drain to EOF so the digest is verified
                    pass
            finally:
                stream.close()
            ImageConfig.from_bytes(config_bytes)  # validates
            result["config"] = jsonsafe.loads(config_bytes)
    print(json.dumps(result, indent=2))
    return 0


def cmd_tags(args: argparse.Namespace) -> int:
    ref = _ref(args.repo, None)
    if ref.tag or ref.digest:
        raise UsageError(f"{args.repo} names an image; give the repository only, e.g. {ref.name}")
    with _client(args) as client:
        tags = list(client.repository(ref).list_tags())
    print_result(args.output, tags, lambda t: "\n".join(t))
    return 0


def cmd_copy(args: argparse.Namespace) -> int:
    for spec in (args.src, args.dst):
        _check_spec(spec)
    from registry.copy import copy_image

    report = make_reporter(args.output)
    with _client(args) as client:
        result = copy_image(client, args.src, args.dst, report)
    print_result(args.output, {"digest": result.digest, "mediaType": result.media_type, **result.blobs,
                               "bytes": result.bytes_copied}, lambda r: r["digest"])
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    ref = _ref(args.ref, None)
    if not ref.tag and not ref.digest:
        raise UsageError(f"say what to delete: {args.ref}:TAG or {args.ref}@sha256:...")
    with _client(args) as client:
        repo = client.repository(ref)
        if ref.digest:
            repo.delete_manifest(ref.digest)
            data = {"deleted": "manifest", "digest": ref.digest, "repository": ref.name}
        else:
            assert ref.tag is not None
            how = repo.delete_tag(ref.tag)
            data = {"deleted": "tag", "tag": ref.tag, "repository": ref.name, "method": how}
    print_result(args.output, data, lambda d: f"deleted {d['deleted']} {d.get('tag') or d.get('digest')} "
                                              f"from {d['repository']}")
    return 0


def _inspect_attached(args: argparse.Namespace) -> int:
    from registry import referrers as rf

    ref = _ref(args.ref)
    with _client(args) as client:
        repo = client.repository(ref)
        desc = repo.head_manifest(ref.identifier)
        if desc is None:
            raise UsageError(f"{args.ref}: no such image")
        if args.signatures:
            print(json.dumps(_signature_rows(repo, desc.digest, args), indent=2))
            return 0
        kinds = ((rf.SPDX_JSON, rf.CYCLONEDX_JSON) if args.sbom else (rf.IN_TOTO_JSON,))
        found = [a for a in rf.list_referrers(repo, desc.digest) if a.artifact_type in kinds]
        if not found:
            from registry.errors import NotFound

            raise NotFound(f"{args.ref} ({desc.digest}) has no attached {'SBOM' if args.sbom else 'provenance'}; "
                           "build it with kade build --tag (attestations are made for pushed images)")
        sys.stdout.write(rf.fetch_artifact(repo, found[-1], desc.digest).decode())
    return 0


def _signature_rows(repo: Any, digest: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    from kade.supply import public_keys
    from registry import signing

    keys = public_keys(args.key)
    rows = []
    for sig in signing.read_signatures(repo, digest):
        key = next((k for k in keys if k.verify(sig.payload, sig.signature)), None)
        try:
            payload = signing.parse_payload(sig.payload)
            identity, signed = payload.docker_reference, payload.manifest_digest
        except Exception:  # noqa: BLE001 - shown as unreadable
            identity, signed = "(unreadable payload)", ""
        rows.append({"layer": sig.layer.digest, "identity": identity, "signs": signed,
                     "verified": (key.source if key else False) if keys else None})
    return rows


def cmd_verify(args: argparse.Namespace) -> int:
    from kade.supply import public_keys
    from kade.verify import Policy, verify_reference

    _ref(args.ref)
    policy = Policy(public_keys(args.key, args.kubeconfig), list(args.trusted_builder),
                    Path(args.repo) if args.repo else None)
    with _client(args) as client:
        verdict = verify_reference(client, args.ref, policy)
    print_result(args.output, verdict.to_dict(),
                 lambda d: (f"{d['reference']}@{d['digest']}: verified (signed by {', '.join(d['signers'])}"
                            + (f"; builder {d['builder']}, commit {d['commit']}" if d['builder'] else "") + ")")
                 if d["ok"] else f"{d['reference']}: NOT verified: {'; '.join(d['reasons'])}")
    return 0 if verdict.ok else 1


def _sbom_rows(client: Any, spec: str) -> list[Any]:
    from builder.sbom.documents import read_rows
    from registry import referrers as rf

    if Path(spec).is_file():
        data = Path(spec).read_bytes()
    else:
        ref = _ref(spec)
        repo = client.repository(ref)
        desc = repo.head_manifest(ref.identifier)
        found = [a for a in rf.list_referrers(repo, desc.digest) if a.artifact_type in (rf.SPDX_JSON, rf.CYCLONEDX_JSON)] \
            if desc else []
        if not found:
            raise UsageError(f"{spec}: no such image, or it has no attached SBOM")
        data = rf.fetch_artifact(repo, found[-1], desc.digest)
    try:
        return read_rows(data)
    except ValueError as exc:
        raise UsageError(f"{spec}: {exc}") from None


def cmd_sbom_diff(args: argparse.Namespace) -> int:
    from builder.sbom.documents import diff

    for spec in (args.a, args.b):  # both named now, before either is fetched
        if not Path(spec).is_file():
            _ref(spec)
    with _client(args) as client:
        result = diff(_sbom_rows(client, args.a), _sbom_rows(client, args.b))

    def text(d: dict[str, Any]) -> str:
        lines = [f"+ {r['type']} {r['name']} {', '.join(r['versions'])}" for r in d["added"]]
        lines += [f"- {r['type']} {r['name']} {', '.join(r['versions'])}" for r in d["removed"]]
        lines += [f"~ {r['type']} {r['name']} {', '.join(r['before'])} -> {', '.join(r['after'])}" for r in d["changed"]]
        lines.append(f"{len(d['added'])} added, {len(d['removed'])} removed, {len(d['changed'])} changed")
        return "\n".join(lines)

    print_result(args.output, result, text)
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    import os

    from registry.sigkeys import generate, private_pem

    password = os.environ.get("KADE_SIGN_PASSWORD", os.environ.get("COSIGN_PASSWORD"))
    key = generate()
    private, public = Path(args.prefix + ".key"), Path(args.prefix + ".pub")
    if not private.parent.is_dir():
        raise UsageError(f"{args.prefix}: the directory {private.parent} does not exist (or is not a directory)")
    if private.exists() or public.exists():
        raise UsageError(f"{private} or {public} exists already; pick another prefix")
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem(key, password.encode() if password is not None else None))
    public.write_bytes(key.public.pem())
    print(f"wrote {private} ({'encrypted' if password is not None else 'unencrypted: set $KADE_SIGN_PASSWORD to encrypt'}) "
          f"and {public}")
    return 0


__all__ = ["register"]
