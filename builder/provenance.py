"""SLSA v1 provenance of one image, in an in-toto Statement v1: a pure function of what the build knew.

    statement(ProvenanceInput(...)) -> bytes   (the build fills the input: builder/attest.py)

Layout (https://slsa.dev/spec/v1.0/provenance):
- subject: the image repository and manifest digest;
- buildDefinition.externalParameters: the source (repository, commit, branch), the Dockerfile path,
  target, platform, build args (values: they are not secrets), the ids of secrets and whether an ssh
  agent was forwarded (never a secret's value);
- buildDefinition.internalParameters: backend (local | kubernetes), compression, no-cache;
- buildDefinition.resolvedDependencies: the git commit, the Dockerfile and kade.yaml by sha256, and
  every image the build read by manifest digest (FROM bases, COPY --from, RUN --mount from=) with
  its role and stage;
- runDetails.builder: the builder id, kade's version, and the builder image by digest (pods);
- runDetails.byproducts: one entry per step: its key as the digest, its instruction and whether it
  was found in the stages repo (cached) or run by this build.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from common import jsonsafe

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://kade.io/buildtypes/dockerfile/v1"
DEFAULT_BUILDER_ID = "https://kade.io/builders/{backend}"


@dataclass(frozen=True)
class Material:
    role: str        # base | copy-from | mount-from
    reference: str   # repository it was resolved from (host/repo)
    digest: str      # manifest digest
    stage: str = ""


@dataclass(frozen=True)
class StepRecord:
    stage: str
    instruction: str
    key: str         # 64-hex step key
    cached: bool


@dataclass
class ProvenanceInput:
    repository: str                  # host/repo of the image
    digest: str                      # its manifest digest
    builder_id: str
    kade_version: str
    backend: str = "local"
    builder_image: str = ""          # host/repo@sha256:... of the builder pods' image
    source_repository: str = ""      # git remote URL
    commit: str = ""
    branch: str = ""
    dockerfile: str = "Dockerfile"   # path relative to the context
    dockerfile_sha256: str = ""
    config_file: str = ""            # kade.yaml (projects)
    config_sha256: str = ""
    target: str = ""
    platform: str = ""
    build_args: dict[str, str] = field(default_factory=dict)
    secret_ids: list[str] = field(default_factory=list)
    ssh: bool = False
    compression: str = "gzip"
    no_cache: bool = False
    materials: list[Material] = field(default_factory=list)
    steps: list[StepRecord] = field(default_factory=list)
    finished: str = ""               # RFC 3339: the image's created time


def _hex(digest: str) -> dict[str, str]:
    algo, _, value = digest.partition(":")
    return {algo: value}


def _source_uri(i: ProvenanceInput) -> str:
    uri = i.source_repository or "unknown"
    uri = uri if uri.startswith("git+") else "git+" + uri
    return uri + (f"@refs/heads/{i.branch}" if i.branch else "")


def predicate(i: ProvenanceInput) -> dict[str, Any]:
    external: dict[str, Any] = {"dockerfile": i.dockerfile, "platform": i.platform}
    if i.commit or i.source_repository:
        external["source"] = {"uri": _source_uri(i), "digest": {"gitCommit": i.commit} if i.commit else {}}
    if i.target:
        external["target"] = i.target
    if i.build_args:
        external["buildArgs"] = dict(sorted(i.build_args.items()))
    if i.secret_ids:
        external["secrets"] = sorted(set(i.secret_ids))
    if i.ssh:
        external["ssh"] = True
    resolved: list[dict[str, Any]] = []
    if i.commit:
        resolved.append({"uri": _source_uri(i), "digest": {"gitCommit": i.commit}})
    if i.dockerfile_sha256:
        resolved.append({"name": i.dockerfile, "digest": {"sha256": i.dockerfile_sha256}})
    if i.config_sha256:
        resolved.append({"name": i.config_file or "kade.yaml", "digest": {"sha256": i.config_sha256}})
    for m in sorted(set(i.materials), key=lambda m: (m.stage, m.role, m.reference, m.digest)):
        resolved.append({"uri": f"oci://{m.reference}@{m.digest}", "digest": _hex(m.digest),
                         "annotations": {"role": m.role, **({"stage": m.stage} if m.stage else {})}})
    builder: dict[str, Any] = {"id": i.builder_id, "version": {"kade": i.kade_version}}
    if i.builder_image:
        ref, _, digest = i.builder_image.partition("@")
        builder["builderDependencies"] = [{"uri": f"oci://{i.builder_image}", "name": ref,
                                           **({"digest": _hex(digest)} if digest else {})}]
    run: dict[str, Any] = {"builder": builder}
    if i.finished:
        run["metadata"] = {"finishedOn": i.finished}
    if i.steps:
        run["byproducts"] = [{"name": f"step {n}", "digest": {"sha256": s.key},
                              "annotations": {"stage": s.stage, "instruction": s.instruction,
                                              "cached": "true" if s.cached else "false"}}
                             for n, s in enumerate(i.steps, 1)]
    return {"buildDefinition": {"buildType": BUILD_TYPE, "externalParameters": external,
                                "internalParameters": {"backend": i.backend, "compression": i.compression,
                                                       "noCache": i.no_cache},
                                "resolvedDependencies": resolved},
            "runDetails": run}


def statement(i: ProvenanceInput) -> bytes:
    doc = {"_type": STATEMENT_TYPE,
           "subject": [{"name": i.repository, "digest": _hex(i.digest)}],
           "predicateType": PREDICATE_TYPE,
           "predicate": predicate(i)}
    return json.dumps(doc, indent=1, ensure_ascii=False).encode()


@dataclass(frozen=True)
class Claims:
    """What a verifier checks in a provenance statement."""
    subject_digests: tuple[str, ...]
    builder_id: str
    commit: str
    source: str


def read_claims(data: bytes) -> Claims:
    """The subject, builder id and commit of a provenance statement; ValueError when it is not one."""
    try:
        doc = jsonsafe.loads(data)
        if doc.get("_type") != STATEMENT_TYPE or doc.get("predicateType") != PREDICATE_TYPE:
            raise ValueError(f"not an in-toto SLSA v1 statement ({doc.get('_type')!r}, {doc.get('predicateType')!r})")
        subjects = tuple(f"{algo}:{value}" for s in doc["subject"] for algo, value in s["digest"].items())
        pred = doc["predicate"]
        source = pred["buildDefinition"]["externalParameters"].get("source") or {}
        return Claims(subjects, str(pred["runDetails"]["builder"]["id"]),
                      str((source.get("digest") or {}).get("gitCommit", "")), str(source.get("uri", "")))
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"malformed provenance statement (missing {exc})") from None
