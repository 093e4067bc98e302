"""YAML from users and clusters, parsed safely: libyaml's safe loader where PyYAML has it (fast, and it
refuses deep nesting itself), else PyYAML's own, whose RecursionError on deep nesting becomes a
yaml.YAMLError like any other parse error, so every caller's error path takes it.

Values come out as JSON's types only, read as kubectl reads them (sigs.k8s.io/yaml over yaml.v2): an
unquoted date (`2024-01-01`) stays the string it is written as, `!!binary` is its decoded text and
`!!set` a mapping to nulls. PyYAML made a date, bytes and a set of them, which a manifest's JSON body
could not hold (a TypeError when it was sent) and a string field refused.
"""
from __future__ import annotations

import base64
from typing import Any

import yaml

TOO_DEEP = "nested deeper than the YAML parser follows"
_TIMESTAMP, _BINARY, _SET = ("tag:yaml.org,2002:" + t for t in ("timestamp", "binary", "set"))


class Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    yaml_implicit_resolvers = {first: [(tag, rx) for tag, rx in resolvers if tag != _TIMESTAMP]
                               for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}


Loader.add_constructor(_TIMESTAMP, lambda loader, node: loader.construct_scalar(node))
Loader.add_constructor(_BINARY, lambda loader, node: base64.b64decode(
    "".join(loader.construct_scalar(node).split())).decode("utf-8", "replace"))
Loader.add_constructor(_SET, lambda loader, node: {k: None for k in loader.construct_mapping(node)})


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
