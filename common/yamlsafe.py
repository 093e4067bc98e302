"""YAML from users and clusters, parsed safely: libyaml's safe loader where PyYAML has it (fast, and it
refuses deep nesting itself), else PyYAML's own, whose RecursionError on deep nesting becomes a
yaml.YAMLError like any other parse error, so every caller's error path takes it."""
from __future__ import annotations

from typing import Any

import yaml

Loader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
TOO_DEEP = "nested deeper than the YAML parser follows"


def load(text: str) -> Any:
    try:
        return yaml.load(text, Loader=Loader)
    except RecursionError:
        raise yaml.YAMLError(TOO_DEEP) from None


def load_all(text: str) -> list[Any]:
    try:
        return list(yaml.load_all(text, Loader=Loader))
    except RecursionError:
        raise yaml.YAMLError(TOO_DEEP) from None
