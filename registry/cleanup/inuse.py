"""Which images the clusters use (pure): Pods, Deployments, ReplicaSets, StatefulSets, DaemonSets,
active Jobs, CronJobs and ReplicationControllers; `scan.py` lists them in every namespace of every
given kube context.

Images are matched by tag and by digest: `repo:tag`, `repo@sha256:…`, `repo:tag@sha256:…`, and the
digest a Pod actually runs (`status.containerStatuses[].imageID`). Matching is conservative: the
registry host is ignored (pods often reach a registry under another name), a digest protects that
digest in every repository. A context that can't be read is an error, never "nothing in use".
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from registry.digest import is_digest
from registry.errors import InvalidReference
from registry.reference import Reference


@dataclass
class InUse:
    """Tags in use (by repository path, host ignored) and digests in use (anywhere)."""

    tags: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    digests: dict[str, list[str]] = field(default_factory=dict)
    scanned: list[str] = field(default_factory=list)  # contexts scanned

    def add(self, image: str, where: str) -> None:
        """Record that `where` uses `image`; each user is named once per tag or digest (a Pod names a
        digest in its spec and again in its status's imageID)."""
        for kind, key in image_keys(image):
            self.add_key(kind, key, where)

    def add_key(self, kind: str, key: Any, where: str) -> None:
        """Record a user of ("tag", (repository path, tag)) or ("digest", digest)."""
        table: dict[Any, list[str]] = self.tags if kind == "tag" else self.digests
        users = table.setdefault(key, [])
        if where not in users:
            users.append(where)

    @classmethod
    def merged(cls, *tables: "InUse") -> "InUse":
        out = cls()
        for t in tables:
            for key, users in t.tags.items():
                for u in users:
                    out.add_key("tag", key, u)
            for digest, users in t.digests.items():
                for u in users:
                    out.add_key("digest", digest, u)
            out.scanned.extend(t.scanned)
        return out

    def tag_users(self, repository: str, tag: str) -> list[str]:
        return self.tags.get((repo_path(repository), tag), [])

    def digest_users(self, digest: str) -> list[str]:
        return self.digests.get(digest, [])


def repo_path(repository: str) -> str:
    """`host:port/team/app` -> `team/app` (the registry host is ignored when matching)."""
    try:
        return Reference.parse(repository, default_tag=None).repository
    except InvalidReference:
        return repository.split("/", 1)[1] if "/" in repository else repository


def image_keys(image: str) -> list[tuple[str, Any]]:
    """What an image string in a pod spec or status protects: ("tag", (repo path, tag)) / ("digest", d)."""
    s = image.strip()
    for prefix in ("docker-pullable://", "docker://", "containerd://"):
        if s.startswith(prefix):
            s = s[len(prefix):]
    if s.startswith("sha256:"):  # a bare image ID from some runtimes: protect the digest
        return [("digest", s)] if is_digest(s) else []
    try:
        ref = Reference.parse(s)
    except InvalidReference:
        return []
    keys: list[tuple[str, Any]] = []
    if ref.tag:
        keys.append(("tag", (ref.repository, ref.tag)))
    if ref.digest:
        keys.append(("digest", ref.digest))
    return keys


_POD_SPEC_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": ("spec",),
    "Deployment": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "ReplicationController": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}
KINDS = tuple(_POD_SPEC_PATHS)


def _dig(obj: Any, path: Iterable[str]) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def job_finished(job: dict[str, Any]) -> bool:
    """A Job counts while it can still start pods: not Complete/Failed (conditions True)."""
    for c in _dig(job, ("status", "conditions")) or []:
        if isinstance(c, dict) and c.get("type") in ("Complete", "Failed") and c.get("status") == "True":
            return True
    return False


def images_of(kind: str, obj: dict[str, Any]) -> list[str]:
    """Every image an object references (containers, init and ephemeral containers, and for Pods
    the imageID each container actually runs). Finished Jobs reference nothing."""
    if kind == "Job" and job_finished(obj):
        return []
    spec = _dig(obj, _POD_SPEC_PATHS[kind])
    images: list[str] = []
    if isinstance(spec, dict):
        for key in ("initContainers", "containers", "ephemeralContainers"):
            for c in spec.get(key) or []:
                if isinstance(c, dict) and isinstance(c.get("image"), str) and c["image"]:
                    images.append(c["image"])
    if kind == "Pod":
        status = obj.get("status") or {}
        for key in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
            for c in status.get(key) or []:
                if isinstance(c, dict) and isinstance(c.get("imageID"), str) and c["imageID"]:
                    images.append(c["imageID"])
    return images
