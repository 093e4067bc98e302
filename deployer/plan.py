"""What `kade plan` reports (create, update, recreate, delete, with bodies, Secret values hidden, and
drift: live fields changed outside kade), and saved plans: `--save-plan FILE` writes the digest of
the rendered manifests and a fingerprint of every live object the plan read (its spec and metadata,
without status and server bookkeeping, so a controller updating a status does not stale a plan); `kade deploy
--use-plan FILE` renders the same inputs again and deploys only if the digest is the same and no
object changed in the cluster since, so CI applies exactly what was approved. A saved plan holds no
manifest, so no Secret lands in a CI artifact.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from deployer.apply import normalize
from deployer.errors import DeployError
from deployer.resources import Resource, ResourceKey

CHANGES = frozenset({"create", "update", "recreate", "delete"})
PLAN_VERSION = 1


@dataclass
class Change:
    action: str  # create | update | recreate | delete | unchanged | keep | hook (runs every time) | refused | invalid
    key: ResourceKey
    diff: str = ""  # update: unified diff of live -> planned
    body: str = ""  # create, recreate, delete: the object as YAML (Secret values hidden)
    drift: str = ""  # live fields changed outside kade since the last deploy (diff of recorded -> live)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "resource": str(self.key), "diff": self.diff, "body": self.body,
                "drift": self.drift, "note": self.note}


@dataclass
class PlanResult:
    changes: list[Change]
    release: str
    namespace: str
    digest: str  # of the rendered manifests (deployer.plan.digest)
    versions: dict[str, str | None] = field(default_factory=dict)  # str(key) -> fingerprint (None: absent)

    @property
    def changed(self) -> bool:
        return any(c.action in CHANGES or c.action in ("refused", "invalid") for c in self.changes)


def shown(obj: dict[str, Any] | None) -> str:
    """An object as a plan shows it: no status or server bookkeeping, Secret values hidden."""
    data = normalize(obj)
    return yaml.safe_dump(data, sort_keys=True) if data is not None else ""


def fingerprint(live: dict[str, Any] | None) -> str | None:
    """What a plan remembers of a live object: a hash of what it shows of it (None: absent)."""
    if live is None:
        return None
    return hashlib.sha256(json.dumps(normalize(live), sort_keys=True).encode()).hexdigest()[:16]


def digest(resources: list[Resource]) -> str:
    """sha256 of the rendered manifests (as they will be applied, ownership marks included)."""
    text = json.dumps(sorted((json.dumps(r.body, sort_keys=True) for r in resources)), separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def save(path: Path, plan: PlanResult) -> None:
    data = {"version": PLAN_VERSION, "release": plan.release, "namespace": plan.namespace, "digest": plan.digest,
            "versions": plan.versions, "changes": [c.to_dict() for c in plan.changes if c.action != "unchanged"]}
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        tmp.replace(path)
    except OSError as exc:
        raise DeployError(f"--save-plan {path}: cannot write it: {exc}") from None


@dataclass(frozen=True)
class SavedPlan:
    path: str
    release: str
    namespace: str
    digest: str
    versions: dict[str, str | None]


def load(path: Path) -> SavedPlan:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DeployError(f"--use-plan {path}: cannot read a plan from it: {exc}") from None
    if not isinstance(data, dict) or data.get("version") != PLAN_VERSION or not isinstance(data.get("versions"), dict):
        raise DeployError(f"--use-plan {path}: not a plan saved by `kade plan --save-plan` (version {PLAN_VERSION})")
    return SavedPlan(str(path), str(data.get("release")), str(data.get("namespace")), str(data.get("digest")),
                     {str(k): (None if v is None else str(v)) for k, v in data["versions"].items()})


def stale(saved: SavedPlan, release: str, namespace: str, now_digest: str,
          versions: dict[str, str | None]) -> list[str]:
    """Why a saved plan no longer describes this deploy ([] when it still does)."""
    out = []
    if (saved.release, saved.namespace) != (release, namespace):
        out.append(f"it was made for release {saved.release} in namespace {saved.namespace}")
    if saved.digest != now_digest:
        out.append("the rendered manifests differ from the planned ones (other files, values or images)")
    for key, version in sorted(saved.versions.items()):
        current = versions.get(key, version)
        if current != version:
            what = "was created" if version is None else "was deleted" if current is None else "was changed"
            out.append(f"{key} {what} in the cluster since")
    return out
