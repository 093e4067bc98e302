"""Durations as written by people and by Dockerfiles: one exact parser, two unit sets.

`GO_UNITS` is Go's time.ParseDuration (HEALTHCHECK --interval=1m30s: ns, us/µs, ms, s, m, h, no bare
numbers but "0"); `HUMAN_UNITS` adds days and weeks and takes a bare number as seconds (--timeout 90,
keep policies' 7d). Sums are exact (decimal fractions, as Go does: 0.3s is 300 ms, not 299.999...).
"""
from __future__ import annotations

import re
from typing import Mapping

NS = 1
GO_UNITS: Mapping[str, int] = {"ns": NS, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
                               "m": 60_000_000_000, "h": 3_600_000_000_000}
HUMAN_UNITS: Mapping[str, int] = {"ms": 1_000_000, "s": 1_000_000_000, "m": 60_000_000_000,
                                  "h": 3_600_000_000_000, "d": 86_400_000_000_000, "w": 604_800_000_000_000}
_NUMBER = r"\d+(?:\.\d+)?"


def nanoseconds(text: str, units: Mapping[str, int] = HUMAN_UNITS, *, bare_seconds: bool = True) -> int:
    """The duration `text` in nanoseconds: a sequence of NUMBER UNIT parts (`1h30m`, `1.5s`), or with
    `bare_seconds` a plain number of seconds; "0" is always zero. Raises ValueError naming `text`."""
    from fractions import Fraction   # here: fractions and decimal cost every importer (image_config: every build)

    value = text.strip()
    if value == "0":
        return 0
    if bare_seconds and re.fullmatch(_NUMBER, value):
        return int(Fraction(value) * 1_000_000_000)
    part = re.compile(f"({_NUMBER})(" + "|".join(sorted(map(re.escape, units), key=len, reverse=True)) + ")")
    pos, total = 0, Fraction(0)
    for m in part.finditer(value):
        if m.start() != pos:
            break
        total += Fraction(m.group(1)) * units[m.group(2)]
        pos = m.end()
    if not value or pos != len(value):
        raise ValueError(f"invalid duration {text!r}")
    return int(total)


def seconds(text: str, units: Mapping[str, int] = HUMAN_UNITS, *, bare_seconds: bool = True) -> float:
    return nanoseconds(text, units, bare_seconds=bare_seconds) / 1_000_000_000


def format_duration(value: float) -> str:
    """Short human form of a number of seconds: 850ms, 12.3s, 4m05s, 1h02m."""
    if value < 1:
        return f"{int(value * 1000)}ms"
    if value < 60:
        return f"{value:.1f}s"
    minutes, sec = divmod(int(value), 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
