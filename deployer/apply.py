"""Server-side apply (PATCH application/apply-patch+yaml, fieldManager=kade), dry runs for plans,
deletes, and the diff between a live object and what applying would make of it."""
from __future__ import annotations

import copy
import difflib
import hashlib
import json
import re
import time
from dataclasses import dataclass
from typing import Any

import yaml

from deployer.errors import ConflictError, DeployError
from deployer.kube import Kube, KubeError
from deployer.resources import ApiResource, Resource

FIELD_MANAGER = "kade"
_VOLATILE_META = ("managedFields", "resourceVersion", "generation", "creationTimestamp", "uid", "selfLink")


@dataclass
class Applied:
    obj: dict[str, Any]
    created: bool


def apply(kube: Kube, resource: Resource, api: ApiResource, *, dry_run: bool = False, force: bool = False) -> Applied:
    path = api.path(resource.namespace, resource.name)
    query = {"fieldManager": FIELD_MANAGER, "force": "true" if force else None, "dryRun": "All" if dry_run else None}
    body = json.dumps(resource.body)
    try:
        status, obj = kube.request_status("PATCH", path, query, body, "application/apply-patch+yaml")
    except KubeError as exc:
        raise apply_error(resource, exc) from None
    return Applied(obj, status == 201)


class ApplyRefused(DeployError):
    """The API server refused an apply; `cause` is its KubeError."""

    def __init__(self, message: str, cause: KubeError):
        super().__init__(message)
        self.cause = cause


def apply_error(resource: Resource, exc: KubeError) -> DeployError:
    where = f"{resource.key} (from {resource.source})"
    if immutable(exc):
        return ApplyRefused(f"{where}: {exc}: a field that cannot change in place changed; add the annotation "
                            "kade.io/delete-policy: before-creation-if-immutable to let kade delete and create it", exc)
    if exc.status == 409 and exc.reason == "Conflict" and exc.details.get("causes"):
        owners = conflicts(exc.details)
        listing = "; ".join(f"{field} is owned by {manager!r}" for field, manager in owners)
        return ConflictError(f"{where}: server-side apply conflict: {listing}. Another tool manages these fields: "
                             f"remove them from the manifest, or re-run with --force-conflicts to take them over", owners)
    if exc.status == 404 and "namespaces" in str(exc).lower():
        return DeployError(f"{where}: {exc}: create the namespace first (add a Namespace manifest) or pass --namespace")
    if exc.status == 403:
        return DeployError(f"{where}: forbidden: {exc}: the deploying identity needs RBAC permission to patch it")
    return DeployError(f"{where}: the API server refused it: {exc}")


def conflicts(details: dict[str, Any]) -> list[tuple[str, str]]:
    """[(field, manager)] from a 409 apply conflict's details.causes."""
    out = []
    for cause in details.get("causes") or []:
        match = re.search(r'conflict with "([^"]+)"', cause.get("message", ""))
        out.append((cause.get("field") or "?", match.group(1) if match else cause.get("message", "?")))
    return out


def immutable(exc: BaseException) -> bool:
    """Did the API server refuse a change because a field cannot be changed in place (a Job's template,
    a selector, a StatefulSet's volumeClaimTemplates, a Service's clusterIP)?"""
    text = str(exc)
    return getattr(exc, "status", 0) == 422 and bool(re.search(
        r"field is immutable|may not be changed|updates to statefulset spec for fields other than|"
        r"Forbidden: .*immutable|cannot be changed|is immutable", text))


def rewrite_managed_fields(kube: Kube, api: ApiResource, live: dict[str, Any],
                           managed: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Replace the live object's managedFields, only if it did not change since it was read: None when
    it did (a controller wrote its status meanwhile): read it again and recompute."""
    meta = live.get("metadata") or {}
    namespace, name = meta.get("namespace", "") if api.namespaced else "", meta.get("name", "")
    patch = [{"op": "test", "path": "/metadata/resourceVersion", "value": meta.get("resourceVersion")},
             {"op": "replace", "path": "/metadata/managedFields", "value": managed}]
    try:
        return kube.request("PATCH", api.path(namespace, name),
                            body=patch, content_type="application/json-patch+json")  # a list: sent as JSON Patch
    except KubeError as exc:
        # a failed JSON Patch test is a 422 like any invalid patch: the resourceVersion tells them apart
        if exc.status in (409, 422) and _version(get_live(kube, api, namespace, name)) != meta.get("resourceVersion"):
            return None
        raise DeployError(f"cannot rewrite the field managers of {api.kind} {name}: {exc}") from None


def _version(obj: dict[str, Any] | None) -> str | None:
    return (obj or {}).get("metadata", {}).get("resourceVersion")


def get_live(kube: Kube, api: ApiResource, namespace: str, name: str) -> dict[str, Any] | None:
    return kube.get(api.path(namespace, name))


def delete(kube: Kube, api: ApiResource, namespace: str, name: str, *, propagation: str = "Background") -> bool:
    """Delete; False when it was already gone."""
    try:
        kube.request("DELETE", api.path(namespace, name), body={"propagationPolicy": propagation})
        return True
    except KubeError as exc:
        if exc.status == 404:
            return False
        raise DeployError(f"cannot delete {api.kind} {namespace + '/' if namespace else ''}{name}: {exc}") from None


def delete_and_wait(kube: Kube, api: ApiResource, namespace: str, name: str, timeout: float) -> None:
    """Delete in the foreground and wait until the object is gone (hooks are recreated each deploy)."""
    if not delete(kube, api, namespace, name, propagation="Foreground"):
        return
    deadline = time.monotonic() + timeout
    delay = 0.1
    while time.monotonic() < deadline:
        if get_live(kube, api, namespace, name) is None:
            return
        time.sleep(delay)
        delay = min(delay * 2, 1.0)
    raise DeployError(f"{api.kind} {namespace}/{name} was not deleted within {timeout:.0f}s (finalizers?)")


def normalize(obj: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a diff should compare: no status, no server bookkeeping."""
    if obj is None:
        return None
    out = copy.deepcopy(obj)
    out.pop("status", None)
    meta = out.get("metadata") or {}
    for key in _VOLATILE_META:
        meta.pop(key, None)
    if out.get("kind") == "Secret" and out.get("apiVersion") == "v1":
        for field in ("data", "stringData"):
            if isinstance(out.get(field), dict):
                out[field] = {k: _hidden(v) for k, v in out[field].items()}
    annotations = meta.get("annotations") or {}
    annotations.pop("deployment.kubernetes.io/revision", None)
    annotations.pop("kubectl.kubernetes.io/last-applied-configuration", None)
    if not annotations:
        meta.pop("annotations", None)
    return out


def _hidden(value: Any) -> str:
    """Secret values never appear in a plan; a short hash still shows that one changed."""
    return f"<hidden, sha256 {hashlib.sha256(str(value).encode()).hexdigest()[:12]}>"


def diff(live: dict[str, Any] | None, planned: dict[str, Any] | None, label: str) -> str:
    """Unified YAML diff of two objects (after `normalize`); "" when equal."""
    a, b = normalize(live), normalize(planned)
    if a == b:
        return ""
    before = yaml.safe_dump(a, sort_keys=True).splitlines(keepends=True) if a is not None else []
    after = yaml.safe_dump(b, sort_keys=True).splitlines(keepends=True) if b is not None else []
    return "".join(difflib.unified_diff(before, after, f"live/{label}", f"planned/{label}"))
