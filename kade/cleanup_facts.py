"""kade's own release history as cleanup facts: the images every revision of every kade release
references (its rendered manifests and its `images`), read through `deployer.release`, handed to the
plan as plain `ReleaseRevision`s. registry/cleanup/ lists the Secrets; the format is deployer's."""
from __future__ import annotations

from collections import defaultdict
from typing import Any

from deployer.errors import DeployError
from deployer.release import LABEL_NAME, LABEL_OWNER, SECRET_TYPE, ReleaseRecord, records_from_secrets
from registry.cleanup.helm import MAX_JSON, parse_time
from registry.cleanup.manifests import images_in
from registry.cleanup.releases import ReleaseRevision
from registry.cleanup.scan import ClusterReader


def kade_releases(reader: ClusterReader) -> tuple[list[ReleaseRevision], list[str]]:
    """Every revision of every kade release the reader sees; a release that can't be read is a problem."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for secret in reader.list("Secret", f"{LABEL_OWNER}=kade,{LABEL_NAME}", f"type={SECRET_TYPE}"):
        meta = secret.get("metadata") or {}
        groups[(str(meta.get("namespace", "")), str((meta.get("labels") or {}).get(LABEL_NAME, "")))].append(secret)
    revisions: list[ReleaseRevision] = []
    problems: list[str] = []
    for (namespace, name), secrets in sorted(groups.items()):
        where = f"kade release {namespace}/{name} (kube context {reader.label})"
        try:
            # a half-written record (its deploy died) is dropped, as the deployer does
            records = records_from_secrets(secrets, [], max_json=MAX_JSON)
            revisions += [revision_of(reader.label, namespace, name, r) for r in records]
        except (DeployError, ValueError) as exc:
            problems.append(f"{where}: {exc}")
    return revisions, problems


def revision_of(cluster: str, namespace: str, name: str, record: ReleaseRecord) -> ReleaseRevision:
    """One record as a fact; ValueError when it lacks what a revision must have."""
    if isinstance(record.revision, bool) or not isinstance(record.revision, int):
        raise ValueError(f"a record has no revision number ({record.revision!r})")
    images = images_in(record.manifests)
    named = record.images.values() if isinstance(record.images, dict) else ()
    images += [v for v in named if isinstance(v, str) and v and v not in images]
    return ReleaseRevision(cluster, "kade", namespace, name, record.revision, parse_time(record.created), tuple(images))
