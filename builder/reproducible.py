"""`kade build --check-reproducible`: build twice from nothing, compare, name what differs.

Both builds run in this process with empty caches of their own and --no-cache, push nothing and end
in local OCI layouts. Equal manifest digests: reproducible. Otherwise the configs are compared key by
key and the layers entry by entry (read with Python's tarfile, not kade's unpacker), and every
difference is named with the step that made the layer. The only accepted cause is a RUN that writes
different bytes each time (a timestamp in a file, a random id); mtimes are not one when
SOURCE_DATE_EPOCH is set (a kade.yaml project sets it to the commit time).
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder.build import build
from builder.options import BuildOptions
from builder.publish import BuildResult

MAX_SHOWN = 50


@dataclass
class Check:
    digests: tuple[str, str]
    differences: list[str] = field(default_factory=list)

    @property
    def reproducible(self) -> bool:
        return self.digests[0] == self.digests[1]

    def to_json(self) -> dict[str, Any]:
        return {"reproducible": self.reproducible, "digests": list(self.digests), "differences": self.differences}


def check_reproducible(options: BuildOptions, report: Callable[..., None],
                       run: Callable[[BuildOptions, Callable[..., None]], BuildResult] = build) -> Check:
    with tempfile.TemporaryDirectory(prefix="kade-reproducible-") as tmp:
        results = []
        for name in ("first", "second"):
            report("check", f"reproducibility: {name} build, empty cache")
            o = dataclasses.replace(options, cache_dir=str(Path(tmp) / name), no_cache=True, tags=[], repo=None)
            results.append(run(o, report))
        digests = (results[0].images[0]["digest"], results[1].images[0]["digest"])
        out = Check(digests)
        if not out.reproducible:
            out.differences = compare(Path(results[0].layout or ""), digests[0],
                                      Path(results[1].layout or ""), digests[1])
        return out


def _blob(layout: Path, digest: str) -> bytes:
    algo, _, hexd = digest.partition(":")
    return (layout / "blobs" / algo / hexd).read_bytes()


def _image(layout: Path, digest: str) -> tuple[dict, list[str], dict]:
    manifest = json.loads(_blob(layout, digest))
    config = json.loads(_blob(layout, manifest["config"]["digest"]))
    return manifest, [d["digest"] for d in manifest["layers"]], config


def _entries(blob: bytes) -> dict[str, tuple]:
    """name -> (type, mode, uid, gid, mtime, link, content sha256, xattrs) of a layer blob."""
    out = {}
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:*") as tf:
        for m in tf.getmembers():
            f = tf.extractfile(m) if m.isfile() else None
            digest = hashlib.sha256(f.read()).hexdigest()[:16] if f is not None else ""
            xattrs = sorted((k, v) for k, v in m.pax_headers.items() if k.startswith("SCHILY.xattr."))
            out[m.name] = (m.type.decode(), oct(m.mode), m.uid, m.gid, m.mtime, m.linkname, digest, xattrs)
    return out


_FIELDS = ("type", "mode", "uid", "gid", "mtime", "link target", "content", "xattrs")


def compare(layout_a: Path, digest_a: str, layout_b: Path, digest_b: str) -> list[str]:
    """Every difference between two images, as lines a person can act on."""
    _, layers_a, config_a = _image(layout_a, digest_a)
    _, layers_b, config_b = _image(layout_b, digest_b)
    diffs: list[str] = []
    steps = [h.get("created_by", "?") for h in config_a.get("history", []) if not h.get("empty_layer")]
    for key in sorted((set(config_a) | set(config_b)) - {"rootfs"}):  # layers are compared below
        a, b = (json.dumps(c.get(key), sort_keys=True) for c in (config_a, config_b))
        if a != b:
            diffs.append(f"config {key}: {a[:120]} != {b[:120]}")
    if len(layers_a) != len(layers_b):
        diffs.append(f"{len(layers_a)} layers != {len(layers_b)} layers")
    for i, (a, b) in enumerate(zip(layers_a, layers_b)):
        if a == b:
            continue
        step = steps[i] if i < len(steps) else f"layer {i}"
        ea, eb = _entries(_blob(layout_a, a)), _entries(_blob(layout_b, b))
        for name in sorted(set(ea) | set(eb)):
            if name not in ea or name not in eb:
                which = "second" if name not in ea else "first"
                diffs.append(f"{step}: /{name.lstrip('./')} is only in the {which} build")
                continue
            for what, x, y in zip(_FIELDS, ea[name], eb[name]):
                if x != y:
                    diffs.append(f"{step}: /{name.lstrip('./')}: {what} {x} != {y}")
        if list(ea) != list(eb) and set(ea) == set(eb):
            diffs.append(f"{step}: the same entries in another order")
        if ea == eb and list(ea) == list(eb):
            diffs.append(f"{step}: the same entries, different tar bytes (headers or compression)")
    if len(diffs) > MAX_SHOWN:
        diffs = diffs[:MAX_SHOWN] + [f"... and {len(diffs) - MAX_SHOWN} more"]
    return diffs
