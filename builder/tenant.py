"""Tenants: whose build caches a build may read and write.

A tenant is a name (`kade build --tenant`, kade.yaml `tenant:`, $KADE_TENANT), else the build's
stages repository, else "default" (a build without a registry). In a cluster it is also the namespace
its builder pods run in (`--namespace`): that namespace's cache PVC, Secrets and Leases are its own.

The parts of the local cache (or of a cache PVC) that a build's own content can shape are kept
per tenant: RUN cache mounts, unpacked base trees and URL downloads, and step Leases are named per
tenant. A cache mount id is therefore namespaced by tenant: another project's build can't plant files
in this one's pip cache whatever id it picks. Tenants share a part only when each of them says so
(`share`): those parts then live in one shared folder for every tenant that shares them.
Content-addressed blobs stay shared (a blob is checked against its digest when it is downloaded, and
no RUN ever sees the blob store).
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

PARTS = ("mounts", "trees", "downloads")   # what a tenant may share
DEFAULT = "default"


@dataclass(frozen=True)
class Tenant:
    name: str = DEFAULT
    shares: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        unknown = sorted(set(self.shares) - set(PARTS))
        if unknown:
            raise ValueError(f"cannot share {', '.join(unknown)}: shareable parts are {', '.join(PARTS)}")
        if not self.name or len(self.name) > 512 or any(ord(c) < 32 for c in self.name):
            raise ValueError(f"tenant name {self.name!r}: expected 1 to 512 printable characters")

    @property
    def slug(self) -> str:
        """A folder name of its own: readable, and unique through the name's hash."""
        readable = re.sub(r"[^A-Za-z0-9._-]+", "-", self.name).strip(".-")[:40] or "t"
        return f"{readable}-{self.digest[:16]}"

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.name.encode()).hexdigest()

    def folder(self, part: str) -> str:
        """The cache folder of `part`, relative to the cache root."""
        if part not in PARTS:
            raise ValueError(f"no tenant part {part!r}")
        return f"shared/{part}" if part in self.shares else self.own(part)

    def own(self, name: str) -> str:
        """A path of this tenant's alone (never shared), relative to the cache root."""
        return f"tenants/{self.slug}/{name}"


def resolve(explicit: str | None, stages_repo: str | None, shares: frozenset[str] = frozenset()) -> Tenant:
    """The tenant of a build: the name given, else its stages repository, else the default one."""
    return Tenant(explicit or stages_repo or DEFAULT, shares)


def parse_shares(text: str) -> frozenset[str]:
    """`mounts,trees` -> the parts; ValueError naming what is not a part."""
    parts = frozenset(p.strip() for p in text.split(",") if p.strip())
    Tenant(DEFAULT, parts)
    return parts
