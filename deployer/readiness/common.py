"""Shared pieces of the readiness rules: the Status result and small helpers over object dicts."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

READY, PROGRESSING, FAILED = "ready", "progressing", "failed"


@dataclass(frozen=True)
class Status:
    state: str  # READY | PROGRESSING | FAILED
    message: str = ""

    @property
    def ready(self) -> bool:
        return self.state == READY

    @property
    def failed(self) -> bool:
        return self.state == FAILED


def ready(message: str = "") -> Status:
    return Status(READY, message)


def progressing(message: str) -> Status:
    return Status(PROGRESSING, message)


def failed(message: str) -> Status:
    return Status(FAILED, message)


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if isinstance(cond, dict) and cond.get("type") == type_:
            return cond
    return None


def condition_is(obj: dict[str, Any], type_: str, status: str = "True") -> bool:
    cond = condition(obj, type_)
    return cond is not None and cond.get("status") == status


def describe(cond: dict[str, Any] | None) -> str:
    if not cond:
        return ""
    parts = [p for p in (cond.get("reason"), cond.get("message")) if p]
    return ": ".join(str(p) for p in parts)


def as_int(value: Any) -> int | None:
    """An integer field as written by a controller: 3 or "3"; anything else (a float, "abc", a map) is
    None, so that a controller writing nonsense never crashes tracking."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        return int(value)
    return None


def count(status: dict[str, Any], name: str) -> int:
    """A replica count in a status; missing or malformed is 0."""
    return as_int(status.get(name)) or 0


def generation_pending(obj: dict[str, Any], required: bool = True) -> Status | None:
    """Terminating, or the controller has not yet seen the latest spec: never ready then.
    `required`: a missing observedGeneration means "not observed yet" (built-in controllers always
    write it); custom resources may have none. A non-integer one is ignored."""
    meta = obj.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return progressing("terminating")
    status = obj.get("status")
    if not isinstance(status, dict):
        status = {}
    generation = as_int(meta.get("generation"))
    raw = status.get("observedGeneration")
    observed = as_int(raw)
    if generation is None or raw is not None and observed is None:
        return None
    if observed is None and not required:
        return None
    if observed is None or observed < generation:
        return progressing(f"waiting for the controller to observe generation {generation}")
    return None


def stale(obj: dict[str, Any], cond: dict[str, Any] | None) -> bool:
    """A condition written for an older generation (its own observedGeneration) says nothing now."""
    if not cond:
        return False
    generation = as_int((obj.get("metadata") or {}).get("generation"))
    observed = as_int(cond.get("observedGeneration"))
    return generation is not None and observed is not None and observed < generation


def scaled(value: Any, total: int, round_up: bool, default: Any) -> int:
    """An int-or-percent field ("25%" or 1) scaled against `total`, as Kubernetes does."""
    if value is None:
        value = default
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if not re.fullmatch(r"\d+(\.\d+)?%?", text):
        text = str(default)
    if text.endswith("%"):
        fraction = float(text[:-1]) * total / 100.0
        return int(math.ceil(fraction) if round_up else math.floor(fraction))
    return int(float(text))


def spec_replicas(obj: dict[str, Any]) -> int:
    value = as_int((obj.get("spec") or {}).get("replicas"))
    return 1 if value is None else value


def owned_by(child: dict[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in (child.get("metadata") or {}).get("ownerReferences") or [])
