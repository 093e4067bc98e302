"""Verify images before they run: signatures by configured keys, provenance by a trusted builder from
a commit in the repository's history. Pure checks over gathered evidence, a thin resolver that
gathers it from the registry, and the pre-apply transform of rendered manifests that `kade deploy
--verify` runs (every container image resolved to a digest, verified, and pinned by that digest).

An image passes when:
- a signature on its manifest digest verifies with one of the keys and names the image's repository;
- when trusted builders or a repository are configured: one of its provenance statements (an
  attached in-toto artifact, itself signed by one of the keys) names the digest as its subject,
  was made by a trusted builder (when any are configured) and names a commit that is in the git
  history of the repository (when one is given: reachable from one of its refs).
A multi-platform image (an index) is signed as one; its provenance is per platform: every platform
manifest it lists must pass the provenance checks with statements about that manifest.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from common import git
from builder.provenance import read_claims
from registry import referrers as rf
from registry import signing
from registry.errors import NotFound, RegistryError
from registry.mediatypes import is_index
from registry.model import Index, parse_manifest
from registry.reference import Reference
from registry.sigkeys import PublicKey

Report = Callable[..., None]
POD_SPEC_LISTS = ("containers", "initContainers", "ephemeralContainers")


@dataclass
class Policy:
    keys: list[PublicKey]
    builders: list[str] = field(default_factory=list)   # trusted builder ids; empty: any
    repository: Path | None = None                       # git checkout whose history must hold the commit

    @property
    def needs_provenance(self) -> bool:
        return bool(self.builders) or self.repository is not None


@dataclass
class Provenance:
    digest: str                       # the artifact's manifest digest
    statement: bytes
    signatures: list[signing.Signature]


@dataclass
class Evidence:
    reference: str                    # as written
    repository: str                   # host/repo
    digest: str
    signatures: list[signing.Signature]
    provenance: list[Provenance]
    platforms: list["Evidence"] = field(default_factory=list)  # an index: each manifest's provenance


@dataclass
class Verdict:
    reference: str
    digest: str
    ok: bool
    reasons: list[str] = field(default_factory=list)
    signers: list[str] = field(default_factory=list)
    builder: str = ""
    commit: str = ""

    @property
    def pinned(self) -> str:
        ref = Reference.parse(self.reference)
        return f"{ref.name}{':' + ref.tag if ref.tag else ''}@{self.digest}"

    def to_dict(self) -> dict[str, Any]:
        return {"reference": self.reference, "digest": self.digest, "ok": self.ok, "reasons": self.reasons,
                "signers": self.signers, "builder": self.builder, "commit": self.commit}


def check(evidence: Evidence, policy: Policy, in_history: Callable[[str], bool]) -> Verdict:
    """The verdict on one image (pure, given `in_history`)."""
    verdict = Verdict(evidence.reference, evidence.digest, False)
    good, problems = signing.verify(evidence.signatures, evidence.digest, policy.keys, evidence.repository)
    if not good:
        verdict.reasons.append("no valid signature by a configured key" +
                               (f" ({'; '.join(problems)})" if problems else " (the image has no signature)"))
        return verdict
    verdict.signers = sorted({v.key.source for v in good})
    if policy.needs_provenance:
        for part in evidence.platforms or [evidence]:
            reason = _check_provenance(part, policy, in_history, verdict)
            if reason:
                verdict.reasons.append(reason if part is evidence else f"platform {part.reference}: {reason}")
                return verdict
    verdict.ok = True
    return verdict


def _check_provenance(evidence: Evidence, policy: Policy, in_history: Callable[[str], bool],
                      verdict: Verdict) -> str | None:
    """None when one provenance statement passes, else why none does."""
    if not evidence.provenance:
        return "no provenance attached"
    why: list[str] = []
    for p in evidence.provenance:
        if not signing.verify(p.signatures, p.digest, policy.keys)[0]:
            why.append(f"provenance {p.digest[:19]} is not signed by a configured key")
            continue
        try:
            claims = read_claims(p.statement)
        except ValueError as exc:
            why.append(f"provenance {p.digest[:19]}: {exc}")
            continue
        if evidence.digest not in claims.subject_digests:
            why.append(f"provenance {p.digest[:19]} is about another image")
            continue
        if policy.builders and claims.builder_id not in policy.builders:
            why.append(f"built by untrusted builder {claims.builder_id!r}")
            continue
        if policy.repository is not None and not (claims.commit and in_history(claims.commit)):
            why.append(f"commit {claims.commit or '(none)'} is not in the history of {policy.repository}")
            continue
        verdict.builder, verdict.commit = claims.builder_id, claims.commit
        return None
    return "; ".join(dict.fromkeys(why))


def commit_in_history(repository: Path) -> Callable[[str], bool]:
    """Whether a commit exists in `repository` and is reachable from one of its refs."""
    def check_one(commit: str) -> bool:
        if not all(c in "0123456789abcdef" for c in commit) or len(commit) not in (40, 64):
            return False
        if git.output(repository, "cat-file", "-e", f"{commit}^{{commit}}", timeout=30) is None:
            return False
        return bool(git.output(repository, "for-each-ref", "--count=1", "--contains", commit,
                               "--format=%(refname)", timeout=60))
    return check_one


# ---- the thin resolver ----------------------------------------------------------------------------

def gather(client: Any, reference: str, need_provenance: bool) -> Evidence:
    """Resolve `reference` to its manifest digest and fetch its signatures (and provenance)."""
    ref = Reference.parse(reference)
    repo = client.repository(ref.name)
    desc = repo.head_manifest(ref.identifier)
    if desc is None:
        raise NotFound(f"image {reference} not found (tag or digest missing in {ref.name})")
    evidence = Evidence(reference, ref.name, desc.digest, signing.read_signatures(repo, desc.digest), [])
    if need_provenance and is_index(desc.media_type):
        body, got = repo.get_manifest(desc.digest)
        index = parse_manifest(body, got.media_type)
        for child in index.manifests if isinstance(index, Index) else []:
            part = Evidence(child.platform_string or child.digest, ref.name, child.digest, [], [])
            part.provenance = _provenance(repo, child.digest)
            evidence.platforms.append(part)
    elif need_provenance:
        evidence.provenance = _provenance(repo, desc.digest)
    return evidence


def _provenance(repo: Any, digest: str) -> list[Provenance]:
    """The provenance statements attached to `digest`, with their signatures."""
    out = []
    for artifact in rf.list_referrers(repo, digest, rf.IN_TOTO_JSON):
        try:
            statement = rf.fetch_artifact(repo, artifact, digest)
        except RegistryError:
            continue  # a broken artifact proves nothing; another may
        out.append(Provenance(artifact.descriptor.digest, statement,
                              signing.read_signatures(repo, artifact.descriptor.digest)))
    return out


def verify_reference(client: Any, reference: str, policy: Policy) -> Verdict:
    in_history = commit_in_history(policy.repository) if policy.repository is not None else (lambda c: True)
    try:
        evidence = gather(client, reference, policy.needs_provenance)
    except RegistryError as exc:
        return Verdict(reference, "", False, [str(exc)])
    return check(evidence, policy, in_history)


# ---- the deploy transform --------------------------------------------------------------------------

def container_images(body: Any) -> Iterator[dict[str, Any]]:
    """Every container (dict with an `image`) in a manifest: pod specs at any depth (Pods, workload
    templates, CronJob job templates, custom resources that embed pod specs)."""
    if isinstance(body, dict):
        for key, value in body.items():
            if key in POD_SPEC_LISTS and isinstance(value, list):
                for c in value:
                    if isinstance(c, dict) and isinstance(c.get("image"), str):
                        yield c
            else:
                yield from container_images(value)
    elif isinstance(body, list):
        for item in body:
            yield from container_images(item)


class VerificationFailed(RegistryError):
    """Images refused by `kade deploy --verify` (every one named with its reason)."""


def verify_manifests(resources: list[Any], policy: Policy, client: Any, report: Report) -> list[Verdict]:
    """Verify every image the rendered manifests run and pin each by digest in place; raise
    VerificationFailed naming each refused image and why (nothing is applied then)."""
    containers = [(r, c) for r in resources for c in container_images(r.body)]
    verdicts: dict[str, Verdict] = {}
    for _, c in containers:
        image = c["image"]
        if image not in verdicts:
            verdicts[image] = verify_reference(client, image, policy)
            v = verdicts[image]
            report("verify", f"{image}: {'verified' if v.ok else 'REFUSED: ' + '; '.join(v.reasons)}",
                   image=image, ok=v.ok, digest=v.digest)
    refused = [v for v in verdicts.values() if not v.ok]
    if refused:
        where = {c["image"]: r.source for r, c in containers}
        lines = [f"{v.reference} (in {where[v.reference]}): {'; '.join(v.reasons)}" for v in refused]
        raise VerificationFailed("deploy refused, image verification failed:\n  " + "\n  ".join(lines) +
                                 "\nsign the images (kade build --sign-key) or fix deploy.verify")
    for _, c in containers:
        c["image"] = verdicts[c["image"]].pinned
    return list(verdicts.values())
