"""`kade image inspect|tags|copy|delete`: look at and move images in OCI registries and layouts."""
from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from kade import argtypes
from kade.errors import UsageError
from kade.output import OUTPUT_CHOICES, make_reporter, print_result
from registry.errors import InvalidDigest, InvalidReference
from registry.layout import SCHEME as LAYOUT_SCHEME
from registry.model import ImageConfig, Manifest, parse_manifest
from registry.reference import Reference

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
    _common(p, output=False)
    p.set_defaults(func=cmd_inspect, output="json")  # its result is JSON: so is its failure

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

    with _client(args) as client:
        endpoint = open_endpoint(client, args.ref)
        ident = endpoint.identifier or ("latest" if not args.ref.startswith(LAYOUT_SCHEME) else None)
        body, desc = endpoint.get_manifest(ident)  # type: ignore[arg-type]
        if args.raw:
            print(body.decode())
            return 0
        manifest = parse_manifest(body, desc.media_type)
        result: dict[str, Any] = {"reference": args.ref, "digest": desc.digest, "mediaType": desc.media_type,
                                  "size": desc.size, "manifest": json.loads(body)}
        if isinstance(manifest, Manifest):
            stream = endpoint.open_blob(manifest.config)
            try:
                config_bytes = stream.read(16 << 20)
                while stream.read(1 << 20):  # drain to EOF so the digest is verified
                    pass
            finally:
                stream.close()
            ImageConfig.from_bytes(config_bytes)  # validates
            result["config"] = json.loads(config_bytes)
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


__all__ = ["register"]
