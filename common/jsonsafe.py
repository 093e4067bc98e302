"""JSON from outside kade (registries, images, clusters): parse errors are ValueErrors, always.

json.loads recurses once per nesting level and raises RecursionError, not ValueError, past Python's
recursion limit (~1,000 levels): a registry or an image can nest that deep in a field nothing reads,
and every caller that catches ValueError would let it through as a crash.
"""
from __future__ import annotations

import json
from typing import Any


def loads(data: str | bytes | bytearray) -> Any:
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("a JSON document nested deeper than Python's parser follows (about 1,000 levels): "
                         "refused (a hostile or broken document?)") from None
