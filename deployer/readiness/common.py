"""Shared pieces of the readiness rules: the Status result and small helpers over object dicts."""
from __future__ import annotations

import math
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


def generation_pending(obj: dict[str, Any]) -> Status | None:
    """Terminating, or the controller has not yet seen the latest spec: never ready then."""
    meta = obj.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return progressing("terminating")
    status = obj.get("status") or {}
    generation = meta.get("generation")
    observed = status.get("observedGeneration")
    if generation is not None and (observed is None or int(observed) < int(generation)):
        return progressing(f"waiting for the controller to observe generation {generation}")
    return None


def scaled(value: Any, total: int, round_up: bool, default: Any) -> int:
    """An int-or-percent field ("25%" or 1) scaled against `total`, as Kubernetes does."""
    if value is None:
        value = default
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if text.endswith("%"):
        fraction = float(text[:-1]) * total / 100.0
        return int(math.ceil(fraction) if round_up else math.floor(fraction))
    return int(text)


def spec_replicas(obj: dict[str, Any]) -> int:
    value = (obj.get("spec") or {}).get("replicas")
    return 1 if value is None else int(value)


def owned_by(child: dict[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in (child.get("metadata") or {}).get("ownerReferences") or [])
