"""How one resource gets into the cluster around the server-side apply itself: its delete policy
(before-creation, before-creation-if-immutable), the move of legacy field managers into kade's
(deployer.fields), `kade.io/replicas-on-creation`, and a conflict over spec.replicas with an HPA or
`kubectl scale` (taken back with a warning, as nelm does, which always applies with force).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

from deployer import apply as applier
from deployer.apply import Applied, ApplyRefused
from deployer.errors import ConflictError, DeployError
from deployer.fields import REPLICAS_KEEPER, fold_legacy, release_field
from deployer.kube import Kube
from deployer.lifecycle import BEFORE_CREATION, IF_IMMUTABLE, delete_policies, replicas_on_creation
from deployer.ownership import FIELD_MANAGER
from deployer.release import now_rfc3339
from deployer.resources import ApiResource, Resource

Report = Callable[..., None]
REPLICAS = ("spec", "replicas")
REREADS = 5   # a controller may write the object between our read and our managedFields rewrite


@dataclass
class Put:
    applied: Applied
    recreated: bool = False


def body_for(resource: Resource, live: dict[str, Any] | None) -> dict[str, Any]:
    """What is applied: with `replicas-on-creation`, spec.replicas is set only when the object is
    created, and left out afterwards (whoever scales it keeps its value)."""
    count = replicas_on_creation(resource)
    if count is None:
        return resource.body
    body = copy.deepcopy(resource.body)
    spec = body.setdefault("spec", {})
    if live is None:
        spec["replicas"] = count
    else:
        spec.pop("replicas", None)
    return body


def migrated_managers(resource: Resource, api: ApiResource,
                      live: dict[str, Any]) -> tuple[list[dict[str, Any]] | None, list[str]]:
    """(the live object's managedFields with legacy managers folded into kade's and, with
    replicas-on-creation, spec.replicas handed to a keeper, or None when nothing changes; the legacy
    managers folded)."""
    managed = (live.get("metadata") or {}).get("managedFields") or []
    version = api.api_version
    folded = fold_legacy(managed, FIELD_MANAGER, version, now_rfc3339())
    legacy: list[str] = []
    if folded is not None:
        legacy = sorted({m.get("manager", "") for m in managed} - {m.get("manager", "") for m in folded})
        managed = folded
    if replicas_on_creation(resource) is not None:
        handed = release_field(managed, FIELD_MANAGER, REPLICAS, REPLICAS_KEEPER, version, now_rfc3339())
        if handed is not None:
            managed, folded = handed, handed
    return folded, legacy


def migrate_managers(kube: Kube, resource: Resource, api: ApiResource, live: dict[str, Any],
                     report: Report) -> dict[str, Any] | None:
    """Fold legacy managers into kade's; with replicas-on-creation hand spec.replicas to a keeper. The
    object as it is now (None if it was deleted meanwhile)."""
    told = False
    for _ in range(REREADS):
        managed, legacy = migrated_managers(resource, api, live)
        if managed is None:
            return live
        if legacy and not told:
            report("info", f"{resource.key}: fields of {', '.join(legacy)} now belong to kade (fields the manifests "
                           "no longer set are removed)", resource=str(resource.key))
            told = True
        rewritten = applier.rewrite_managed_fields(kube, api, live, managed)
        if rewritten is not None:
            return rewritten
        found = applier.get_live(kube, api, resource.namespace, resource.name)   # changed since read: again
        if found is None:
            return None
        live = found
    raise DeployError(f"{resource.key} changed {REREADS} times while kade moved its field managers to kade "
                      "(a controller writing it without pause?): deploy again")


def put(kube: Kube, resource: Resource, api: ApiResource, live: dict[str, Any] | None, *, force: bool,
        report: Report, wait: float, dry_run: bool = False) -> Put:
    """Apply `resource` (over `live`, its current state or None) with its lifecycle rules."""
    policies = delete_policies(resource)
    key = resource.key
    if live is not None and BEFORE_CREATION in policies and not dry_run:
        report("delete", f"deleting {key} to create it again (delete-policy {BEFORE_CREATION})", resource=str(key))
        applier.delete_and_wait(kube, api, resource.namespace, resource.name, wait)
        live = None
    if live is not None and not dry_run:
        live = migrate_managers(kube, resource, api, live, report)
    target = Resource(body_for(resource, live), resource.source)
    try:
        return Put(applier.apply(kube, target, api, dry_run=dry_run, force=force))
    except ApplyRefused as exc:
        if IF_IMMUTABLE not in policies or dry_run:
            raise
        report("delete", f"{key}: {exc.cause}; deleting it to create it again (delete-policy {IF_IMMUTABLE})",
               resource=str(key))
        applier.delete_and_wait(kube, api, resource.namespace, resource.name, wait)
        return Put(applier.apply(kube, Resource(body_for(resource, None), resource.source), api), recreated=True)
    except ConflictError as exc:
        if not exc.fields or any(field != ".spec.replicas" for field, _ in exc.fields):
            raise
        owners = ", ".join(sorted({manager for _, manager in exc.fields}))
        report("warning", f"{key}: spec.replicas was changed by {owners} (an HPA or kubectl scale); the manifest's "
                          "value is applied again. Add kade.io/replicas-on-creation to leave replicas to them",
               resource=str(key))
        return Put(applier.apply(kube, target, api, dry_run=dry_run, force=True))
