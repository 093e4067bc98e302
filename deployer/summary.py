"""The one failure summary a user reads (pure): resource, pod, container, reason, event, last logs."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|[\x00-\x08\x0b-\x1f\x7f]")


def clean(text: str) -> str:
    """Strip terminal escapes and control characters from text that came from a cluster (logs,
    events): a hostile container must not be able to rewrite the user's terminal."""
    return _CONTROL.sub("", text)


@dataclass
class Failure:
    resource: str
    reason: str
    message: str = ""
    pod: str = ""
    container: str = ""
    container_state: str = ""
    event: str = ""
    logs: list[str] = field(default_factory=list)

    def headline(self) -> str:
        return f"{self.resource}: {self.reason}" + (f": {self.message}" if self.message else "")

    def to_dict(self) -> dict[str, object]:
        return {"resource": self.resource, "reason": self.reason, "message": self.message, "pod": self.pod,
                "container": self.container, "container_state": self.container_state, "event": self.event,
                "logs": self.logs}


def split_reason(message: str) -> tuple[str, str]:
    """A readiness message "Reason: detail" -> ("Reason", "detail"), so that a headline does not say the
    reason twice; a message without a "Reason: " prefix is ("Failed", message)."""
    head, sep, rest = message.partition(": ")
    if sep and head and " " not in head:
        return head, rest
    return "Failed", message


def format_failure(failure: Failure, max_log_lines: int = 10) -> str:
    lines = [f"{failure.resource} failed: {failure.reason}"]
    if failure.message:
        lines.append(f"  reason:    {clean(failure.message)}")
    if failure.pod:
        lines.append(f"  pod:       {failure.pod}")
    if failure.container:
        state = f" ({clean(failure.container_state)})" if failure.container_state else ""
        lines.append(f"  container: {failure.container}{state}")
    if failure.event:
        lines.append(f"  event:     {clean(failure.event)}")
    if failure.logs:
        shown = failure.logs[-max_log_lines:]
        lines.append(f"  last {len(shown)} log line(s):")
        lines += [f"    | {clean(line)}" for line in shown]
    elif failure.container:
        lines.append("  no log lines from that container")
    return "\n".join(lines)


def container_state(pod: dict, container: str) -> str:
    """"waiting: CrashLoopBackOff, last exit code 1 (Error), 3 restart(s)" or "terminated: Error, exit code 7,
    0 restart(s)" (a Job's pod) for the summary."""
    name = container.replace(" (init)", "")
    status = pod.get("status") or {}
    for cs in (status.get("containerStatuses") or []) + (status.get("initContainerStatuses") or []):
        if cs.get("name") != name:
            continue
        parts = []
        state = cs.get("state") or {}
        for kind in ("waiting", "running", "terminated"):
            if kind in state and state[kind] is not None:
                reason = state[kind].get("reason")
                parts.append(f"{kind}{': ' + reason if reason else ''}")
                if kind == "terminated" and state[kind].get("exitCode") is not None:
                    parts.append(f"exit code {state[kind]['exitCode']}")
        last = (cs.get("lastState") or {}).get("terminated")
        if last:
            parts.append(f"last exit code {last.get('exitCode')} ({last.get('reason', '')})")
        parts.append(f"{int(cs.get('restartCount') or 0)} restart(s)")
        return ", ".join(parts)
    return ""
