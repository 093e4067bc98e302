"""Step keys: the content address of a build step (see DESIGN.md "Step key").

key = sha256(VERSION || frame(fields)), where every field is length-framed so that no two
different inputs share an encoding ("ab"+"c" vs "a"+"bc"). Pure: same inputs, same key, on any
machine. Changing the encoding means bumping VERSION (which invalidates every cached step).
"""
from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

VERSION = b"kade-step-key/1"

Value = str | int | bytes | None | Sequence["Value"]


def frame(value: Value) -> bytes:
    """Type-tagged, length-prefixed encoding of strings, ints, bytes, None and nested sequences."""
    if value is None:
        return b"N"
    if isinstance(value, bool):
        raise TypeError("booleans are ambiguous in step keys: encode them as strings")
    if isinstance(value, int):
        body = str(value).encode()
        return b"I" + struct.pack(">Q", len(body)) + body
    if isinstance(value, str):
        body = value.encode("utf-8", "surrogateescape")
        return b"S" + struct.pack(">Q", len(body)) + body
    if isinstance(value, bytes):
        return b"B" + struct.pack(">Q", len(value)) + value
    if isinstance(value, Sequence):
        items = [frame(v) for v in value]
        return b"L" + struct.pack(">Q", len(items)) + b"".join(items)
    raise TypeError(f"cannot encode {type(value).__name__} in a step key")


@dataclass(frozen=True)
class KeyInputs:
    parent: str  # parent step key, or the base image manifest digest, or "scratch"
    instruction: str  # the instruction with ARG/ENV expanded (canonical text)
    build_args: Mapping[str, str] = field(default_factory=dict)  # the ARGs this step can see
    sources: Sequence[Sequence[str | int]] = ()  # COPY/ADD: sorted (path, kind, mode, uid, gid, sha256)
    from_key: str | None = None  # COPY --from: the source stage's key (or image digest)
    mounts: Sequence[str] = ()  # RUN --mount specs (never the contents of a cache or secret)
    platform: str = "linux/amd64"


def step_key(inputs: KeyInputs) -> str:
    fields: list[Value] = [
        ["parent", inputs.parent],
        ["instruction", inputs.instruction],
        ["args", [[k, inputs.build_args[k]] for k in sorted(inputs.build_args)]],
        ["sources", [list(row) for row in inputs.sources]],
        ["from", inputs.from_key],
        ["mounts", list(inputs.mounts)],
        ["platform", inputs.platform],
    ]
    return hashlib.sha256(VERSION + frame(fields)).hexdigest()


def is_step_key(tag: str) -> bool:
    return len(tag) == 64 and all(c in "0123456789abcdef" for c in tag)
