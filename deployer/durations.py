"""Durations as people write them: "90", "90s", "5m", "1h30m", "1.5s", "250ms"."""
from __future__ import annotations

import re

from deployer.errors import UsageError

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds in `text`; a bare number means seconds. Raises UsageError naming the bad value."""
    value = text.strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", value):
        return float(value)
    pos, total = 0, 0.0
    for match in _PART.finditer(value):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(value) or not value:
        raise UsageError(f"invalid duration {text!r}: use forms like 30s, 5m, 1h30m or a number of seconds")
    return total


def format_duration(seconds: float) -> str:
    """Short human form: 850ms, 12.3s, 4m05s, 1h02m."""
    if seconds < 1:
        return f"{int(seconds * 1000)}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, sec = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
