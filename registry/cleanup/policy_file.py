"""Load a cleanup policy from YAML: a policy file (`--policy FILE`) or kade.yaml's `cleanup:` key.

    keepPolicies:                 # replaces the defaults when given (see policy.py)
      - references:
          branch: /.*/            # or `tag:`; an exact name or a /regex/
          limit: {last: 10, in: 168h, operator: And}   # optional: which references count
        imagesPerReference: {last: 2, in: 168h, operator: And}  # default: last 1
    keepBuiltWithin: 2h           # anything built within this is kept (default 2h)
    keepList: [latest, /^release-.*/, "sha256:..."]   # tags (exact or /regex/) or digests
    orphanStepsAfter: 2h          # step images no build record names are kept this long
    releaseRevisions: {last: 10}  # rollback targets: revisions kept per release (kade and Helm); `in:` too
    clusterReportMaxAge: 48h      # a cluster whose report is older blocks deletion (it is silent)

Every error names the file, the line and the key path, e.g.
`kade.yaml:12: cleanup.keepPolicies[0].references.limit.last: expected a whole number >= 0, got 'ten'`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from registry.cleanup.errors import PolicyError
from registry.cleanup.policy import (DEFAULT_KEEP_POLICIES, KeepPolicy, Limit, NamePattern, Policy,
                                     parse_duration)


class _Doc:
    """A YAML document as plain values, remembering each key path's line for error messages."""

    def __init__(self, source: str, text: str) -> None:
        self.source = source
        self.lines: dict[str, int] = {}
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{source}:{mark.line + 1}" if mark else source
            raise PolicyError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
        self.value = self._convert(node, "") if node is not None else None

    def _convert(self, node: yaml.Node, path: str) -> Any:
        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                key = str(key_node.value)
                out[key] = self._convert(value_node, f"{path}.{key}" if path else key)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self._convert(v, f"{path}[{i}]") for i, v in enumerate(node.value)]
        return _scalar(node)

    def error(self, path: str, message: str) -> PolicyError:
        line = self.lines.get(path)
        where = f"{self.source}:{line}" if line else self.source
        return PolicyError(f"{where}: {path or '(top level)'}: {message}")


def _scalar(node: yaml.Node) -> Any:
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()


def load_policy_file(path: str | Path) -> Policy:
    """A policy file: the policy keys at the top level (or under `cleanup:`, like kade.yaml)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(f"cannot read policy file {p}: {exc.strerror or exc}") from None
    return parse_policy_text(text, str(p))


def load_kade_yaml_policy(path: str | Path) -> Policy | None:
    """The `cleanup:` key of kade.yaml, or None when the file or the key is absent."""
    p = Path(path)
    if not p.is_file():
        return None
    doc = _Doc(str(p), p.read_text(encoding="utf-8"))
    if not isinstance(doc.value, dict) or doc.value.get("cleanup") is None:
        return None
    return policy_from_value(doc, doc.value["cleanup"], "cleanup")


def parse_policy_text(text: str, source: str = "<policy>") -> Policy:
    doc = _Doc(source, text)
    value = doc.value
    prefix = ""
    if isinstance(value, dict) and "cleanup" in value:
        value, prefix = value["cleanup"], "cleanup"
    return policy_from_value(doc, value, prefix)


_TOP_KEYS = {"keepPolicies", "keepBuiltWithin", "keepList", "orphanStepsAfter", "releaseRevisions",
             "clusterReportMaxAge", "repo", "stagesRepo", "git", "kubeContexts", "clusterName", "scanNamespaces"}


def policy_from_value(doc: _Doc, value: Any, path: str) -> Policy:
    if value is None:
        value = {}
    _mapping(doc, value, path, _TOP_KEYS)
    sub = lambda key: f"{path}.{key}" if path else key  # noqa: E731
    policies = DEFAULT_KEEP_POLICIES
    if "keepPolicies" in value:
        raw = value["keepPolicies"]
        if not isinstance(raw, list):
            raise doc.error(sub("keepPolicies"), f"expected a list of keep policies, got {_kind(raw)}")
        policies = tuple(_keep_policy(doc, item, f"{sub('keepPolicies')}[{i}]") for i, item in enumerate(raw))
    keep_list: list[NamePattern] = []
    if value.get("keepList") is not None:
        raw = value["keepList"]
        if not isinstance(raw, list):
            raise doc.error(sub("keepList"), f"expected a list of tags, /regexes/ or digests, got {_kind(raw)}")
        for i, entry in enumerate(raw):
            keep_list.append(_pattern(doc, entry, f"{sub('keepList')}[{i}]"))
    defaults = Policy(keep_policies=policies)
    return Policy(
        keep_policies=policies,
        keep_built_within=_duration(doc, value, sub("keepBuiltWithin"), "keepBuiltWithin", defaults.keep_built_within),
        keep_list=tuple(keep_list),
        orphan_steps_after=_duration(doc, value, sub("orphanStepsAfter"), "orphanStepsAfter",
                                     defaults.orphan_steps_after),
        release_revisions=(_limit(doc, value["releaseRevisions"], sub("releaseRevisions"))
                           if value.get("releaseRevisions") is not None else defaults.release_revisions),
        cluster_report_max_age=_duration(doc, value, sub("clusterReportMaxAge"), "clusterReportMaxAge",
                                         defaults.cluster_report_max_age),
    )


def _keep_policy(doc: _Doc, item: Any, path: str) -> KeepPolicy:
    _mapping(doc, item, path, {"references", "imagesPerReference"})
    refs = item.get("references")
    if refs is None:
        raise doc.error(path, "missing 'references' (e.g. references: {branch: /.*/})")
    _mapping(doc, refs, f"{path}.references", {"branch", "tag", "limit"})
    kinds = [k for k in ("branch", "tag") if k in refs]
    if len(kinds) != 1:
        raise doc.error(f"{path}.references", "give exactly one of 'branch' or 'tag' (a name or a /regex/)")
    kind = kinds[0]
    name = _pattern(doc, refs[kind], f"{path}.references.{kind}")
    ref_limit = _limit(doc, refs["limit"], f"{path}.references.limit") if refs.get("limit") is not None else None
    images = (_limit(doc, item["imagesPerReference"], f"{path}.imagesPerReference")
              if item.get("imagesPerReference") is not None else Limit(last=1))
    return KeepPolicy(kind, name, ref_limit, images)  # type: ignore[arg-type]


def _limit(doc: _Doc, value: Any, path: str) -> Limit:
    _mapping(doc, value, path, {"last", "in", "operator"})
    last = value.get("last")
    if last is not None and (isinstance(last, bool) or not isinstance(last, int) or last < 0):
        raise doc.error(f"{path}.last", f"expected a whole number >= 0, got {last!r}")
    within = _duration(doc, value, f"{path}.in", "in", None)
    operator = value.get("operator", "and")
    if not isinstance(operator, str) or operator.lower() not in ("and", "or"):
        raise doc.error(f"{path}.operator", f"expected And or Or, got {operator!r}")
    if last is None and within is None:
        raise doc.error(path, "give 'last', 'in' or both")
    return Limit(last=last, within=within, operator=operator.lower())  # type: ignore[arg-type]


def _duration(doc: _Doc, value: dict, path: str, key: str, default: Any) -> Any:
    if value.get(key) is None:
        return default
    try:
        return parse_duration(value[key])
    except ValueError as exc:
        raise doc.error(path, str(exc)) from None


def _pattern(doc: _Doc, value: Any, path: str) -> NamePattern:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)) or str(value) == "":
        raise doc.error(path, f"expected a name or a /regex/, got {_kind(value)}")
    try:
        return NamePattern(str(value))
    except re.error as exc:
        raise doc.error(path, f"invalid regex {value!r}: {exc}") from None


def _mapping(doc: _Doc, value: Any, path: str, allowed: set[str]) -> None:
    if not isinstance(value, dict):
        raise doc.error(path, f"expected a mapping, got {_kind(value)}")
    unknown = sorted(set(value) - allowed)
    if unknown:
        key = f"{path}.{unknown[0]}" if path else unknown[0]
        raise doc.error(key, f"unknown key {unknown[0]!r}; expected one of: {', '.join(sorted(allowed))}")


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


@dataclass(frozen=True)
class Settings:
    """Where to clean, from kade.yaml's `cleanup:` key (the command line wins)."""

    repo: str | None = None
    stages_repo: str | None = None
    git: str | None = None
    kube_contexts: tuple[str, ...] = ()
    cluster_name: str | None = None
    scan_namespaces: tuple[str, ...] = ()


def load_kade_yaml_settings(path: str | Path) -> Settings:
    p = Path(path)
    if not p.is_file():
        return Settings()
    doc = _Doc(str(p), p.read_text(encoding="utf-8"))
    value = doc.value.get("cleanup") if isinstance(doc.value, dict) else None
    if not isinstance(value, dict):
        return Settings()
    out: dict[str, Any] = {}
    for key, attr in (("repo", "repo"), ("stagesRepo", "stages_repo"), ("git", "git"), ("clusterName", "cluster_name")):
        if value.get(key) is not None:
            if not isinstance(value[key], str) or not value[key]:
                raise doc.error(f"cleanup.{key}", f"expected a string, got {_kind(value[key])}")
            out[attr] = value[key]
    for key, attr, what in (("kubeContexts", "kube_contexts", "kube context names"),
                            ("scanNamespaces", "scan_namespaces", "namespace names")):
        names = value.get(key)
        if names is not None:
            if not isinstance(names, list) or not all(isinstance(c, str) and c for c in names):
                raise doc.error(f"cleanup.{key}", f"expected a list of {what}")
            out[attr] = tuple(names)
    return Settings(**out)
