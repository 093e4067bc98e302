"""Whole numbers written in build inputs (a Dockerfile's flags and ports, an image's /etc/passwd).

Only ASCII digits make one: `str.isdigit` also takes '²' and other Unicode digits, which `int()` then
refuses with a ValueError no error path expects, and `int()` alone takes signs, underscores and
spaces. A number of more than 4,300 digits is a ValueError of its own in Python 3.11, so a long one
is read as "larger than anything kade accepts" (`TOO_LARGE`) rather than parsed.
"""
from __future__ import annotations

TOO_LARGE = 10 ** 32   # what a number of more than 32 significant digits reads as: beyond every range here
MAX_ID = 4_294_967_294   # a uid or gid: uid_t is 32 bits, and the kernel reads (uid_t)-1 as "no change"


def decimal(text: str) -> int | None:
    """`text` as a whole number when it is one (ASCII digits only), else None."""
    if not (text.isascii() and text.isdigit()):
        return None
    significant = text.lstrip("0")
    return int(significant or "0") if len(significant) <= 32 else TOO_LARGE
