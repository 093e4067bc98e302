"""A small model of one manifest: identity (group, kind, namespace, name), its annotations with
`kade.io/*` and `werf.io/*` read as the same, and where it came from (for error messages)."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

ANNOTATION_PREFIXES = ("kade.io/", "werf.io/")


@dataclass(frozen=True, order=True)
class ResourceKey:
    """Identity of an object in a cluster. The API version is not part of it (v1 and v1beta1 of one
    group name the same object); the namespace is "" for cluster-scoped objects."""

    group: str
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        kind = f"{self.kind}.{self.group}" if self.group else self.kind
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{kind} {where}{self.name}"

    @property
    def short(self) -> str:
        return f"{self.kind.lower()}/{self.name}"


def split_api_version(api_version: str) -> tuple[str, str]:
    """("apps", "v1") from "apps/v1"; ("", "v1") from "v1"."""
    if "/" in api_version:
        group, version = api_version.split("/", 1)
        return group, version
    return "", api_version


@dataclass
class Resource:
    """One manifest document. `body` is the object as it will be applied."""

    body: dict[str, Any]
    source: str = "<unknown>"  # "path/to/file.yaml (document 2)" for messages

    @property
    def api_version(self) -> str:
        return str(self.body.get("apiVersion", ""))

    @property
    def group(self) -> str:
        return split_api_version(self.api_version)[0]

    @property
    def version(self) -> str:
        return split_api_version(self.api_version)[1]

    @property
    def kind(self) -> str:
        return str(self.body.get("kind", ""))

    @property
    def metadata(self) -> dict[str, Any]:
        return self.body.setdefault("metadata", {})

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", ""))

    @property
    def namespace(self) -> str:
        return str(self.metadata.get("namespace") or "")

    @namespace.setter
    def namespace(self, value: str) -> None:
        if value:
            self.metadata["namespace"] = value
        else:
            self.metadata.pop("namespace", None)

    @property
    def key(self) -> ResourceKey:
        return ResourceKey(self.group, self.kind, self.namespace, self.name)

    @property
    def annotations(self) -> dict[str, str]:
        return dict(self.metadata.get("annotations") or {})

    def annotation(self, name: str, default: str | None = None) -> str | None:
        """`kade.io/<name>` or, failing that, `werf.io/<name>`."""
        return annotation(self.annotations, name, default)

    def annotations_with_prefix(self, prefix: str) -> dict[str, str]:
        """{suffix: value} for every `kade.io/<prefix><suffix>` (or werf.io/), kade.io winning."""
        return annotations_with_prefix(self.annotations, prefix)

    def copy(self) -> "Resource":
        return Resource(copy.deepcopy(self.body), self.source)

    def __str__(self) -> str:
        return str(self.key)


def annotation(annotations: dict[str, str], name: str, default: str | None = None) -> str | None:
    for prefix in ANNOTATION_PREFIXES:
        value = annotations.get(prefix + name)
        if value is not None:
            return value
    return default


def annotations_with_prefix(annotations: dict[str, str], prefix: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for full_prefix in reversed(ANNOTATION_PREFIXES):  # kade.io last so that it wins
        start = full_prefix + prefix
        for key, value in annotations.items():
            if key.startswith(start) and len(key) > len(start):
                found[key[len(start):]] = value
    return found


@dataclass
class ApiResource:
    """What discovery says about a kind: its plural path segment and whether it lives in namespaces."""

    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool
    verbs: list[str] = field(default_factory=list)
    short_names: list[str] = field(default_factory=list)
    singular: str = ""

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str = "", name: str = "") -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name:
            base += f"/{name}"
        return base
