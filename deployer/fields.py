"""Field ownership (metadata.managedFields) rewrites, pure.

Moving a release to kade from `kubectl apply` (client-side), `kubectl edit`, Helm or werf leaves their
field managers owning the fields they set. Server-side apply never removes a field that another
manager still owns, so fields later dropped from the manifests would stay forever. `fold_legacy`
does what kubectl's csaupgrade package does: the legacy managers' `Update` entries are merged into
kade's `Apply` entry, so that kade owns them alone and the next apply removes what the manifests no
longer set.

`release_field` hands one field (spec.replicas with `kade.io/replicas-on-creation`) from kade to a
manager of its own, so that applying a manifest without it leaves the live value alone instead of
removing it (an HPA or `kubectl scale` then keeps it).
"""
from __future__ import annotations

import copy
from typing import Any

LEGACY_MANAGERS = frozenset({"kubectl-client-side-apply", "kubectl-edit", "helm", "werf", "kubectl-create",
                             "kubectl-replace"})
REPLICAS_KEEPER = "kade-replicas-on-creation"


def union(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """The union of two fieldsV1 sets (nested maps of "f:name" / "k:{...}" / "v:..." / "." keys)."""
    out = copy.deepcopy(a)
    for key, value in (b or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = union(out[key], value)
        elif key not in out:
            out[key] = copy.deepcopy(value)
    return out


def _legacy(entry: dict[str, Any]) -> bool:
    return (entry.get("manager") in LEGACY_MANAGERS and entry.get("operation") == "Update"
            and not entry.get("subresource") and entry.get("fieldsType", "FieldsV1") == "FieldsV1")


def fold_legacy(managed: list[dict[str, Any]], manager: str, api_version: str, now: str) -> list[dict[str, Any]] | None:
    """managedFields with every legacy manager folded into `manager`'s Apply entry for `api_version`;
    None when there is nothing to fold."""
    legacy = [e for e in managed if _legacy(e)]
    if not legacy:
        return None
    mine = next((e for e in managed if e.get("manager") == manager and e.get("operation") == "Apply"
                 and not e.get("subresource")), None)
    fields: dict[str, Any] = copy.deepcopy((mine or {}).get("fieldsV1") or {})
    for entry in legacy:
        fields = union(fields, entry.get("fieldsV1") or {})
    kept = [e for e in managed if e is not mine and not _legacy(e)]
    return kept + [{"manager": manager, "operation": "Apply", "apiVersion": api_version, "time": now,
                    "fieldsType": "FieldsV1", "fieldsV1": fields}]


def owns(managed: list[dict[str, Any]], manager: str, path: tuple[str, ...]) -> bool:
    """Does `manager` own the field at `path` (e.g. ("spec", "replicas"))?"""
    for entry in managed:
        if entry.get("manager") != manager:
            continue
        node: Any = entry.get("fieldsV1") or {}
        for name in path:
            node = node.get(f"f:{name}") if isinstance(node, dict) else None
        if node is not None:
            return True
    return False


def release_field(managed: list[dict[str, Any]], manager: str, path: tuple[str, ...], keeper: str,
                  api_version: str, now: str) -> list[dict[str, Any]] | None:
    """managedFields with the field at `path` moved from `manager` to an Update entry of `keeper`;
    None when `manager` does not own it."""
    if not owns(managed, manager, path):
        return None
    out = []
    for entry in managed:
        entry = copy.deepcopy(entry)
        if entry.get("manager") == manager:
            _drop(entry.get("fieldsV1") or {}, path)
        out.append(entry)
    node: dict[str, Any] = {}
    leaf = node
    for name in path[:-1]:
        leaf = leaf.setdefault(f"f:{name}", {})
    leaf[f"f:{path[-1]}"] = {}
    out.append({"manager": keeper, "operation": "Update", "apiVersion": api_version, "time": now,
                "fieldsType": "FieldsV1", "fieldsV1": node})
    return out


def _drop(fields: dict[str, Any], path: tuple[str, ...]) -> None:
    parents = [fields]
    for name in path[:-1]:
        child = parents[-1].get(f"f:{name}")
        if not isinstance(child, dict):
            return
        parents.append(child)
    parents[-1].pop(f"f:{path[-1]}", None)
    for depth in range(len(parents) - 1, 0, -1):  # drop maps left empty
        if not parents[depth]:
            parents[depth - 1].pop(f"f:{path[depth - 1]}", None)
