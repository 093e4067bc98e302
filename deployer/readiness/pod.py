"""Pod: Succeeded or Ready=True is ready; phase Failed is failed."""
from __future__ import annotations

from typing import Any

from deployer.readiness.common import Status, condition, condition_is, describe, failed, progressing, ready


def pod_status(pod: dict[str, Any]) -> Status:
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return progressing("terminating")
    status = pod.get("status") or {}
    phase = status.get("phase")
    if phase == "Succeeded":
        return ready("succeeded")
    if phase == "Failed":
        return failed(f"pod failed: {status.get('reason') or ''} {status.get('message') or ''}".strip())
    if condition_is(pod, "Ready"):
        return ready("ready")
    return progressing(describe(condition(pod, "Ready")) or f"phase {phase or 'unknown'}")
