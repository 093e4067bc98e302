"""Which release owns an object in the cluster (pure).

Every object kade applies carries `kade.io/release-name` and `kade.io/release-namespace`. An existing
object is this release's when those say so, or (objects applied by kade before it wrote them) when the
release's last record lists it and kade's field manager has fields in it. Anything else is foreign:
created by kubectl (no marks), by Helm (`meta.helm.sh/release-name` / `-namespace`, read as Helm's), or
by another kade release. A deploy refuses to take over a foreign object unless `--adopt`; prune and
uninstall delete only objects that are this release's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

RELEASE_NAME, RELEASE_NAMESPACE = "kade.io/release-name", "kade.io/release-namespace"
HELM_NAME, HELM_NAMESPACE = "meta.helm.sh/release-name", "meta.helm.sh/release-namespace"
FIELD_MANAGER = "kade"


@dataclass(frozen=True)
class Owner:
    tool: str  # "kade" | "helm" | "" (nothing says)
    release: str = ""
    namespace: str = ""

    def __str__(self) -> str:
        if not self.tool:
            return "no release (created by hand or by another tool)"
        return f"{self.tool} release {self.release} in namespace {self.namespace or '?'}"


def mark(body: dict[str, Any], release: str, namespace: str) -> None:
    """Put this release's ownership marks on a manifest."""
    annotations = body.setdefault("metadata", {}).setdefault("annotations", {}) or {}
    annotations[RELEASE_NAME], annotations[RELEASE_NAMESPACE] = release, namespace
    body["metadata"]["annotations"] = annotations


def owner_of(obj: dict[str, Any]) -> Owner:
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    if annotations.get(RELEASE_NAME):
        return Owner("kade", str(annotations[RELEASE_NAME]), str(annotations.get(RELEASE_NAMESPACE, "")))
    if annotations.get(HELM_NAME):
        return Owner("helm", str(annotations[HELM_NAME]), str(annotations.get(HELM_NAMESPACE, "")))
    return Owner("")


def managed_by_kade(obj: dict[str, Any]) -> bool:
    return any(m.get("manager") == FIELD_MANAGER for m in (obj.get("metadata") or {}).get("managedFields") or [])


def owned(obj: dict[str, Any], release: str, namespace: str, recorded: bool) -> bool:
    """Is the live object this release's? `recorded`: the release's last record lists it."""
    owner = owner_of(obj)
    if owner.tool == "kade":
        return (owner.release, owner.namespace) == (release, namespace)
    return owner.tool == "" and recorded and managed_by_kade(obj)


def takeover_refusal(obj: dict[str, Any], release: str, namespace: str, recorded: bool, what: str) -> str | None:
    """Why a deploy may not apply over this live object without --adopt; None when it may."""
    if owned(obj, release, namespace, recorded):
        return None
    return (f"{what} already exists and belongs to {owner_of(obj)}, not to kade release {release} in "
            f"namespace {namespace}: pass --adopt to take it over (its fields then follow this release's "
            "manifests), or rename it")
