"""JSON from outside kade (registries, images, clusters): parse errors are ValueErrors, always.

json.loads recurses once per nesting level and raises RecursionError, not ValueError, past Python's
recursion limit (~1,000 levels): a registry or an image can nest that deep in a field nothing reads,
and every caller that catches ValueError would let it through as a crash.
"""
from __future__ import annotations

import json
from typing import Any


class TooDeep(ValueError):
    """A document nested deeper than kade parses."""


def loads(data: str | bytes | bytearray) -> Any:
    try:
        return json.loads(data)
    except RecursionError:
        raise TooDeep("a JSON document nested deeper than 900 levels: refused (a hostile or broken document?)") \
            from None
