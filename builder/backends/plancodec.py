"""The plan of a build as JSON, so a builder pod runs exactly the stage the CLI planned.

The CLI plans locally (keys, base digests, context hashes); a pod must not plan again (it lacks the
context files of cached steps, and a tag may have moved). So the planned stages go to the pod as data:
a generic, typed encoding of the plan's dataclasses (BuildKit's LLB plays the same role). Paths inside
the build context are stored relative to it and re-rooted where the pod unpacked the context upload.
Decoding checks every field against the dataclass' type hints, so a malformed or foreign document is
an error, never an object of the wrong shape.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Union

from builder.errors import BuildError
from builder.plan import PlannedStage
from registry.errors import InvalidManifest
from registry.imageconfig import ImageConfig
from common import jsonsafe

FORMAT = "application/vnd.kade.stage-plan.v1+json"
_HINTS: dict[type, dict[str, Any]] = {}


class PlanFormatError(BuildError):
    """A stage plan document that does not match this kade's plan types (version skew or tampering)."""


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def encode(value: Any, context_root: Path) -> Any:
    """Dataclasses, paths, tuples, sets, dicts and scalars -> JSON-ready values."""
    if isinstance(value, ImageConfig):  # its own JSON, the config document itself
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: encode(getattr(value, f.name), context_root) for f in dataclasses.fields(value)}
    if isinstance(value, Path):
        try:
            return {"ctx": str(value.relative_to(context_root))}
        except ValueError:
            return {"abs": str(value)}
    if isinstance(value, (list, tuple)):
        return [encode(v, context_root) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(encode(v, context_root) for v in value)
    if isinstance(value, dict):
        return {str(k): encode(v, context_root) for k, v in value.items()}
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"cannot encode {type(value).__name__} in a stage plan")


def decode(tp: Any, data: Any, context_root: Path, where: str = "plan") -> Any:
    """The inverse of `encode`, driven by the type hint `tp`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return data
    if tp is ImageConfig:
        try:
            return ImageConfig.from_dict(data)
        except InvalidManifest as exc:
            raise PlanFormatError(f"{where}: {exc}") from None
    if origin in (Union, types.UnionType):
        if data is None and type(None) in args:
            return None
        errors = []
        for alt in args:
            if alt is type(None):
                continue
            try:
                return decode(alt, data, context_root, where)
            except PlanFormatError as exc:
                errors.append(str(exc))
        raise PlanFormatError(f"{where}: no alternative of {tp} fits ({'; '.join(errors)})")
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(data, dict):
            raise PlanFormatError(f"{where}: expected an object for {tp.__name__}")
        hints = _hints(tp)
        names = {f.name for f in dataclasses.fields(tp)}
        unknown = set(data) - names
        if unknown:
            raise PlanFormatError(f"{where}: unknown field(s) {sorted(unknown)} for {tp.__name__}")
        kwargs = {}
        for f in dataclasses.fields(tp):
            if f.name in data:
                kwargs[f.name] = decode(hints[f.name], data[f.name], context_root, f"{where}.{f.name}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise PlanFormatError(f"{where}: missing field {f.name} for {tp.__name__}")
        return tp(**kwargs)
    if tp is Path:
        if isinstance(data, dict) and set(data) == {"ctx"} and isinstance(data["ctx"], str):
            rel = Path(data["ctx"])
            if rel.is_absolute() or ".." in rel.parts:
                raise PlanFormatError(f"{where}: context path {data['ctx']!r} leaves the context")
            return context_root / rel
        if isinstance(data, dict) and set(data) == {"abs"} and isinstance(data["abs"], str):
            return Path(data["abs"])
        raise PlanFormatError(f"{where}: expected a path")
    if origin in (list, tuple, set, frozenset) or tp in (list, tuple, set):
        if not isinstance(data, list):
            raise PlanFormatError(f"{where}: expected a list")
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(args) != len(data):
                raise PlanFormatError(f"{where}: expected {len(args)} items")
            return tuple(decode(a, d, context_root, f"{where}[{i}]") for i, (a, d) in enumerate(zip(args, data)))
        item = args[0] if args else Any
        items = [decode(item, d, context_root, f"{where}[{i}]") for i, d in enumerate(data)]
        return (origin or tp)(items) if (origin or tp) is not list else items
    if origin is dict or tp is dict:
        if not isinstance(data, dict):
            raise PlanFormatError(f"{where}: expected an object")
        vt = args[1] if args else Any
        return {k: decode(vt, v, context_root, f"{where}[{k!r}]") for k, v in data.items()}
    if tp in (str, int, float, bool):
        if type(data) is not tp and not (tp is float and type(data) is int):
            raise PlanFormatError(f"{where}: expected {tp.__name__}, got {type(data).__name__}")
        return data
    if tp is type(None):
        if data is not None:
            raise PlanFormatError(f"{where}: expected null")
        return None
    raise PlanFormatError(f"{where}: unsupported type {tp}")


def dump_stages(stages: list[PlannedStage], context_root: Path, extra: dict[str, Any]) -> bytes:
    """The stage plan document: the planned stages a pod may need, plus `extra` settings."""
    doc = {"format": FORMAT, "stages": [encode(ps, context_root) for ps in stages], **extra}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def load_stages(body: bytes, context_root: Path) -> tuple[list[PlannedStage], dict[str, Any]]:
    try:
        doc = jsonsafe.loads(body)
    except ValueError as exc:
        raise PlanFormatError(f"stage plan is not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise PlanFormatError(f"stage plan format is not {FORMAT}: the builder image and the CLI differ in "
                              "version; build and push the builder image from this kade")
    stages = doc.pop("stages")
    doc.pop("format")
    if not isinstance(stages, list):
        raise PlanFormatError("stage plan: 'stages' is not a list")
    return [decode(PlannedStage, s, context_root, f"stages[{i}]") for i, s in enumerate(stages)], doc
