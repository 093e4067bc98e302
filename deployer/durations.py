"""Durations as people write them: "90", "90s", "5m", "1h30m", "1.5s", "250ms" (common/durations.py)."""
from __future__ import annotations

from common.durations import format_duration, seconds
from deployer.errors import UsageError

__all__ = ["format_duration", "parse_duration"]


def parse_duration(text: str) -> float:
    """Seconds in `text`; a bare number means seconds. Raises UsageError naming the bad value."""
    try:
        return seconds(text)
    except ValueError:
        raise UsageError(f"invalid duration {text!r}: use forms like 30s, 5m, 1h30m or a number of seconds") from None
