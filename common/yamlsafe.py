"""YAML from users and clusters, parsed safely: libyaml's safe loader where PyYAML has it (fast, and it
refuses deep nesting itself), else PyYAML's own, whose RecursionError on deep nesting becomes a
yaml.YAMLError like any other parse error, so every caller's error path takes it.

Values come out as JSON's types only, read as kubectl reads them (sigs.k8s.io/yaml over yaml.v2): an
unquoted date (`2024-01-01`) stays the string it is written as, `!!binary` is its decoded text and
`!!set` a mapping to nulls. PyYAML made a date, bytes and a set of them, which a manifest's JSON body
could not hold (a TypeError when it was sent) and a string field refused. A key given twice in one
mapping is an error naming its line (PyYAML kept the last one silently; a second `env:` is a mistake).
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

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        """A key given twice is an error (PyYAML kept the last one silently).
        What a merge key (<<) brings may be overridden: only the mapping's own keys count."""
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = (key_node.tag, key_node.value)
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"key {key_node.value!r} is given twice",
                                                            key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)


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
