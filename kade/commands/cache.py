"""`kade cache prune`: free the local build cache (blobs, layer dirs, RUN cache mounts, stale work dirs)."""
from __future__ import annotations

import argparse
from typing import Any

from builder.cache import LocalCache
from kade import argtypes
from kade.output import OUTPUT_CHOICES, print_result


def register(subparsers: Any) -> None:
    cache = subparsers.add_parser("cache", help="manage the local build cache",
                                  description="Manage kade's local build cache.")
    sub = cache.add_subparsers(dest="cache_command", metavar="SUBCOMMAND")
    cache.set_defaults(func=lambda args: (cache.print_help(), 2)[1])
    p = sub.add_parser("prune", help="remove cached blobs, layer dirs, cache mounts and stale work dirs",
                       description="Remove what the local build cache holds: everything, or what no build used "
                                   "for --older-than hours, and/or the least recently used unpacked layers until "
                                   "they fit --max-size. Safe while builds run: it waits for running builds to "
                                   "finish.")
    p.add_argument("--cache-dir", metavar="DIR", help="cache to prune (default $KADE_CACHE_DIR or ~/.cache/kade)")
    p.add_argument("--older-than", type=argtypes.hours, metavar="HOURS",
                   help="only remove entries unused for this many hours")
    p.add_argument("--max-size", type=argtypes.size, metavar="SIZE",
                   help="remove the least recently used unpacked layers until the rest fit in SIZE (bytes, or "
                        "with a unit: 500M, 20G); alone, nothing else is removed")
    p.add_argument("--keep-mounts", action="store_true", help="keep RUN --mount=type=cache directories")
    p.add_argument("-o", "--output", choices=OUTPUT_CHOICES, default="text", help="text (default) or json")
    p.set_defaults(func=run_prune)


def run_prune(args: argparse.Namespace) -> int:
    older = args.older_than * 3600 if args.older_than is not None else (None if args.max_size is not None else 0)
    result = LocalCache(args.cache_dir).prune(older_than_seconds=older, keep_mounts=args.keep_mounts,
                                              max_layer_bytes=args.max_size)
    print_result(args.output, {"removed": result.removed, "freed_bytes": result.freed_bytes},
                 lambda d: f"removed {d['removed']} entries, freed {d['freed_bytes']} bytes")
    return 0
