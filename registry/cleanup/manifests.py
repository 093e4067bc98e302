"""Images named by rendered manifests (pure): the documents a release applied, as parsed objects or as
Helm's multi-document YAML text.

Every `image:` string anywhere in a document counts, whatever its kind: Pods and every kind with a
pod template (Deployments, CronJobs, Jobs, ...), init and ephemeral containers, and the custom
resources whose operators start pods from an `image:` of their own (Argo Rollouts, Knative, CNPG...).
An `image:` mapping with `repository` and `tag` or `digest` counts too. Keeping one image too many is
harmless; missing one deletes a rollback target, so the walk is generous, not kind-aware.

Input is hostile (a release record anyone with Secret rights in a namespace can write): YAML aliases
are walked once per object (a "billion laughs" document costs its size, not its expansion), nesting
deeper than Python can parse is an error, never a crash.
"""
from __future__ import annotations

from typing import Any, Iterator

import yaml

from common import yamlsafe


class ManifestError(ValueError):
    """A manifest that can't be read: its images are unknown."""


def images_in(doc: Any) -> list[str]:
    """Every image a parsed manifest (or list of manifests) names, in order, each once."""
    found: dict[str, None] = {}
    seen: set[int] = set()
    stack = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if id(node) in seen:
                continue
            seen.add(id(node))
            image = node.get("image")
            for ref in _image_refs(image):
                found.setdefault(ref, None)
            stack.extend(reversed([v for v in node.values() if isinstance(v, (dict, list))]))
        elif isinstance(node, list):
            if id(node) in seen:
                continue
            seen.add(id(node))
            stack.extend(reversed([v for v in node if isinstance(v, (dict, list))]))
    return list(found)


def _image_refs(value: Any) -> Iterator[str]:
    if isinstance(value, str) and value.strip():
        yield value.strip()
    elif isinstance(value, dict):  # image: {repository: r, tag: t} / {repository: r, digest: d}
        repo = value.get("repository")
        if isinstance(repo, str) and repo:
            tag, digest = value.get("tag"), value.get("digest")
            if isinstance(tag, str) and tag:
                yield f"{repo}:{tag}"
            if isinstance(digest, str) and digest:
                yield f"{repo}@{digest}"


def images_in_yaml(text: str, source: str) -> list[str]:
    """Every image of a multi-document YAML stream (Helm's `manifest`); ManifestError names `source`."""
    if "image" not in text:  # most of a big chart is CRDs and ConfigMaps: no parse needed for those
        return []
    try:
        docs = yamlsafe.load_all(text)
    except yaml.YAMLError as exc:
        raise ManifestError(f"{source}: its manifest is not valid YAML ({_first_line(exc)})") from None
    return images_in(docs)


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
