"""Provenance statements, signing keys (cosign's encrypted format included) and the verification
checks, as pure functions."""
from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from builder.provenance import Material, ProvenanceInput, StepRecord, read_claims, statement
from kade.verify import Evidence, Policy, Provenance, check, commit_in_history, container_images
from registry import sigkeys, signing
from registry.errors import SigningKeyError
from registry.model import Descriptor

DIGEST = "sha256:" + "1" * 64
OTHER = "sha256:" + "2" * 64
COMMIT = "a" * 40


def _input(**kw) -> ProvenanceInput:
    base = dict(repository="r.io/team/app", digest=DIGEST, builder_id="https://ci.example/builder", kade_version="1.2",
                source_repository="https://git.example/app.git", commit=COMMIT, branch="main",
                dockerfile_sha256="f" * 64, build_args={"VERSION": "1"}, secret_ids=["npmrc", "npmrc"], ssh=True,
                materials=[Material("base", "r.io/debian", OTHER, "build"), Material("copy-from", "r.io/tools", DIGEST, "0")],
                steps=[StepRecord("build", "RUN make", "c" * 64, True), StepRecord("0", "COPY . /", "d" * 64, False)],
                finished="2024-01-01T00:00:00Z", backend="kubernetes", builder_image="r.io/kade/builder@" + OTHER)
    base.update(kw)
    return ProvenanceInput(**base)


def test_provenance_statement():
    doc = json.loads(statement(_input()))
    assert doc["_type"] == "https://in-toto.io/Statement/v1" and doc["predicateType"] == "https://slsa.dev/provenance/v1"
    assert doc["subject"] == [{"name": "r.io/team/app", "digest": {"sha256": "1" * 64}}]
    bd, run = doc["predicate"]["buildDefinition"], doc["predicate"]["runDetails"]
    assert bd["externalParameters"]["secrets"] == ["npmrc"] and bd["externalParameters"]["ssh"] is True
    assert bd["externalParameters"]["source"] == {"uri": "git+https://git.example/app.git@refs/heads/main",
                                                  "digest": {"gitCommit": COMMIT}}
    images = [d for d in bd["resolvedDependencies"] if d.get("uri", "").startswith("oci://")]
    assert {(d["uri"], d["annotations"]["role"]) for d in images} == {
        (f"oci://r.io/debian@{OTHER}", "base"), (f"oci://r.io/tools@{DIGEST}", "copy-from")}
    assert {"name": "Dockerfile", "digest": {"sha256": "f" * 64}} in bd["resolvedDependencies"]
    assert bd["internalParameters"]["backend"] == "kubernetes"
    assert run["builder"]["builderDependencies"][0]["digest"] == {"sha256": "2" * 64}
    assert [(b["digest"]["sha256"][0], b["annotations"]["cached"]) for b in run["byproducts"]] == [("c", "true"),
                                                                                                  ("d", "false")]
    assert statement(_input()) == statement(_input())
    claims = read_claims(statement(_input()))
    assert (claims.subject_digests, claims.builder_id, claims.commit) == ((DIGEST,), "https://ci.example/builder", COMMIT)
    for bad in (b'{"_type": "x"}', b'{"_type": "https://in-toto.io/Statement/v1", '
                                   b'"predicateType": "https://slsa.dev/provenance/v1"}', b"[]"):
        with pytest.raises((ValueError, AttributeError)):
            read_claims(bad)


def test_keys_round_trip_and_refusals(tmp_path):
    key = sigkeys.generate()
    for password in (b"s3cret", None):
        pem = sigkeys.private_pem(key, password)
        back = sigkeys.load_private_key(pem, password, "k")
        assert key.public.verify(b"x", back.sign(b"x"))
    encrypted = sigkeys.private_pem(key, b"s3cret")
    assert encrypted.startswith(b"-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----")
    with pytest.raises(SigningKeyError, match="wrong passphrase"):
        sigkeys.load_private_key(encrypted, b"nope", "k")
    with pytest.raises(SigningKeyError, match="passphrase"):
        sigkeys.load_private_key(encrypted, None, "k")
    sec1 = key.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                 serialization.NoEncryption())
    assert sigkeys.load_private_key(sec1, None, "k").public.pem() == key.public.pem()
    for other in (ec.generate_private_key(ec.SECP384R1()), rsa.generate_private_key(65537, 2048)):
        pem = other.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
        with pytest.raises(SigningKeyError, match="P-256"):
            sigkeys.load_private_key(pem, None, "other")
    # a hostile encrypted key asking scrypt for gigabytes is refused before deriving anything
    doc = json.loads(base64.b64decode(b"".join(encrypted.split(b"\n")[1:-2])))
    doc["kdf"]["params"]["N"] = 1 << 30
    body = base64.b64encode(json.dumps(doc).encode())
    hostile = b"-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n" + body + b"\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n"
    with pytest.raises(SigningKeyError, match="out-of-range"):
        sigkeys.load_private_key(hostile, b"s3cret", "k")
    with pytest.raises(SigningKeyError):
        sigkeys.load_public_key(b"not a key", "p")


def test_secretbox_rejects_any_flipped_byte():
    key, nonce = bytes(range(32)), bytes(range(24))
    box = sigkeys.secretbox_seal(b"attack at dawn", nonce, key)
    assert sigkeys.secretbox_open(box, nonce, key) == b"attack at dawn"
    for i in range(len(box)):
        flipped = bytearray(box)
        flipped[i] ^= 1
        assert sigkeys.secretbox_open(bytes(flipped), nonce, key) is None


def _sig(key: sigkeys.SigningKey, digest: str, reference: str) -> signing.Signature:
    body = signing.payload(reference, digest, "test")
    return signing.Signature(body, key.sign(body), Descriptor(signing.SIMPLE_SIGNING, "sha256:" + "0" * 64, len(body)))


KEY, STRANGER = sigkeys.generate(), sigkeys.generate()
REPO = "r.io/team/app"


def _evidence(signatures, provenance=()) -> Evidence:
    return Evidence(f"{REPO}:1", REPO, DIGEST, list(signatures), list(provenance))


def _prov(builder: str = "https://ci.example/builder", commit: str = COMMIT, subject: str = DIGEST,
          signed_by: sigkeys.SigningKey = KEY) -> Provenance:
    art = "sha256:" + "9" * 64
    return Provenance(art, statement(_input(builder_id=builder, commit=commit, digest=subject)),
                      [_sig(signed_by, art, REPO)])


POLICY = Policy([KEY.public], ["https://ci.example/builder"], Path("/repo"))


@pytest.mark.parametrize("evidence, policy, ok, reason", [
    (_evidence([]), Policy([KEY.public]), False, "has no signature"),
    (_evidence([_sig(STRANGER, DIGEST, f"{REPO}:1")]), Policy([KEY.public]), False, "not by any of the keys"),
    (_evidence([_sig(KEY, OTHER, f"{REPO}:1")]), Policy([KEY.public]), False, "signs sha256:2222"),
    (_evidence([_sig(KEY, DIGEST, "evil.io/other:1")]), Policy([KEY.public]), False, "not for repository"),
    (_evidence([_sig(KEY, DIGEST, f"{REPO}:1")]), Policy([KEY.public]), True, ""),
    (_evidence([_sig(KEY, DIGEST, f"{REPO}@{DIGEST}")]), Policy([STRANGER.public, KEY.public]), True, ""),
    (_evidence([_sig(KEY, DIGEST, REPO)]), POLICY, False, "no provenance attached"),
    (_evidence([_sig(KEY, DIGEST, REPO)], [_prov(signed_by=STRANGER)]), POLICY, False, "not signed by a configured"),
    (_evidence([_sig(KEY, DIGEST, REPO)], [_prov(builder="https://evil")]), POLICY, False, "untrusted builder"),
    (_evidence([_sig(KEY, DIGEST, REPO)], [_prov(commit="b" * 40)]), POLICY, False, "not in the history"),
    (_evidence([_sig(KEY, DIGEST, REPO)], [_prov(subject=OTHER)]), POLICY, False, "about another image"),
    (_evidence([_sig(KEY, DIGEST, REPO)], [_prov(builder="https://evil"), _prov()]), POLICY, True, ""),
])
def test_check(evidence, policy, ok, reason):
    verdict = check(evidence, policy, lambda commit: commit == COMMIT)
    assert verdict.ok is ok
    assert reason in "; ".join(verdict.reasons)
    if ok and policy.needs_provenance:
        assert (verdict.builder, verdict.commit) == ("https://ci.example/builder", COMMIT)


def _platform(name: str, digest: str, provenance) -> Evidence:
    return Evidence(name, REPO, digest, [], list(provenance))


AMD, ARM = "sha256:" + "a" * 64, "sha256:" + "b" * 64


@pytest.mark.parametrize("platforms, ok, reason", [
    ([_platform("linux/amd64", AMD, [_prov(subject=AMD)]), _platform("linux/arm64", ARM, [_prov(subject=ARM)])],
     True, ""),
    ([_platform("linux/amd64", AMD, [_prov(subject=AMD)]), _platform("linux/arm64", ARM, [])],
     False, "platform linux/arm64: no provenance attached"),
    ([_platform("linux/amd64", AMD, [_prov(subject=AMD)]), _platform("linux/arm64", ARM, [_prov(subject=AMD)])],
     False, "platform linux/arm64: provenance sha256:999999999999 is about another image"),
])
def test_an_index_needs_provenance_for_every_platform(platforms, ok, reason):
    evidence = _evidence([_sig(KEY, DIGEST, REPO)])  # the index's signature
    evidence.platforms = platforms
    verdict = check(evidence, POLICY, lambda commit: commit == COMMIT)
    assert verdict.ok is ok and reason in "; ".join(verdict.reasons)


def test_commit_in_history(tmp_path):
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(tmp_path), *args], capture_output=True, text=True, check=True,
                              env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                                   "GIT_COMMITTER_EMAIL": "t@t", "HOME": str(tmp_path)}).stdout.strip()
    git("init", "-q", "-b", "main")
    git("commit", "-q", "--allow-empty", "-m", "one")
    first = git("rev-parse", "HEAD")
    git("checkout", "-q", "-b", "side")
    git("commit", "-q", "--allow-empty", "-m", "two")
    side = git("rev-parse", "HEAD")
    git("checkout", "-q", "main")
    git("branch", "-q", "-D", "side")   # `side` exists as an object but no ref reaches it any more
    in_history = commit_in_history(tmp_path)
    assert in_history(first) and not in_history(side)
    assert not in_history("0" * 40) and not in_history("--all") and not in_history("")


def test_container_images_found_everywhere():
    pod = {"containers": [{"name": "a", "image": "x:1"}], "initContainers": [{"name": "i", "image": "y:1"}]}
    bodies = [
        {"kind": "Pod", "spec": pod},
        {"kind": "Deployment", "spec": {"template": {"spec": pod}}},
        {"kind": "CronJob", "spec": {"jobTemplate": {"spec": {"template": {"spec": pod}}}}},
        {"kind": "Custom", "spec": {"workers": [{"podSpec": pod}]}},
    ]
    for body in bodies:
        assert sorted(c["image"] for c in container_images(body)) == ["x:1", "y:1"]
    assert list(container_images({"kind": "ConfigMap", "data": {"containers": "x"}})) == []


class _TagStore:
    """An in-memory tag -> manifest bytes map with the Repository calls update_tag makes. A fake: it lets
    a second writer overwrite the tag at an exact moment (during our settle wait), which a real registry
    cannot be made to do on cue; the real registry is raced in tests/integration/test_supply_chain.py."""

    name, host = "team/app", "registry.test"

    def __init__(self) -> None:
        self.tags: dict[str, bytes] = {}

    def get_manifest(self, tag: str, accept: str = "") -> tuple[bytes, object]:
        from registry.errors import NotFound

        if tag not in self.tags:
            raise NotFound(tag)
        return self.tags[tag], None

    def put_manifest(self, tag: str, body: bytes, media_type: str) -> str:
        self.tags[tag] = body
        return "sha256:" + "0" * 64


def _entry(n: int) -> Descriptor:
    return Descriptor("application/vnd.oci.image.manifest.v1+json", f"sha256:{n:064x}", 10,
                      artifact_type="application/spdx+json")


def test_update_tag_merges_again_when_another_writer_overwrote_it():
    from registry import referrers as rf
    from registry.model import Index

    store = _TagStore()
    subject = "sha256:" + "f" * 64
    tag = rf.fallback_tag(subject)
    store.tags[tag] = Index([_entry(1)]).to_bytes()
    clobbered = []

    def sleep(seconds: float) -> None:
        if not clobbered:  # the other writer read before our write and writes now, without our entry
            store.tags[tag] = Index([_entry(1), _entry(2)]).to_bytes()
            clobbered.append(seconds)

    wanted = {_entry(3).digest}

    def change(current: bytes | None) -> bytes | None:
        have = rf._fallback_entries(current, store, subject)
        if wanted <= {d.digest for d in have}:
            return None
        return Index(have + [_entry(3)]).to_bytes()

    def has(current: bytes) -> bool:
        return wanted <= {d.digest for d in rf._fallback_entries(current, store, subject)}

    assert rf.update_tag(store, tag, change, has, sleep=sleep)
    assert clobbered and clobbered[0] >= rf.MIN_SETTLE_S
    from registry.model import parse_manifest

    assert [d.digest for d in parse_manifest(store.tags[tag]).manifests] == [_entry(n).digest for n in (1, 2, 3)]


def test_update_tag_gives_up_with_a_clear_error():
    from registry import referrers as rf
    from registry.errors import RegistryError

    store = _TagStore()

    def always_clobbered(seconds: float) -> None:
        store.tags["t"] = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}'

    with pytest.raises(RegistryError, match="kept being overwritten"):
        rf.update_tag(store, "t", lambda cur: b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json",'
                      b'"manifests":[]} ', lambda cur: cur.endswith(b" "), attempts=3, sleep=always_clobbered)


def test_keygen_writes_an_encrypted_private_key_readable_only_by_its_owner(tmp_path, monkeypatch, capsys):
    from kade.cli import main

    monkeypatch.setenv("KADE_SIGN_PASSWORD", "pw")
    assert main(["image", "keygen", str(tmp_path / "k")]) == 0
    private, public = tmp_path / "k.key", tmp_path / "k.pub"
    assert private.stat().st_mode & 0o777 == 0o600
    key = sigkeys.load_private_key(private.read_bytes(), b"pw", "k")
    assert sigkeys.load_public_key(public.read_bytes(), "p").verify(b"m", key.sign(b"m"))
    assert main(["image", "keygen", str(tmp_path / "k")]) == 2  # never overwrites a key


def test_verify_policy_from_flags_and_kade_yaml(tmp_path):
    import argparse
    from types import SimpleNamespace

    from kade.config import VerifySpec
    from kade.errors import UsageError
    from kade.supply import verify_policy

    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "team.pub").write_bytes(KEY.public.pem())
    args = argparse.Namespace(verify=False, verify_key=[], trusted_builder=[], verify_repo=None, kubeconfig=None,
                              context=None)
    assert verify_policy(args) is None
    ws = SimpleNamespace(root=tmp_path, git=SimpleNamespace(root=tmp_path / "checkout"), config=SimpleNamespace(
        deploy=SimpleNamespace(verify=VerifySpec(("keys/team.pub",), ("https://ci.example/b",), True))))
    policy = verify_policy(args, ws)
    assert [k.pem() for k in policy.keys] == [KEY.public.pem()]   # relative to the project folder
    assert policy.builders == ["https://ci.example/b"] and policy.repository == tmp_path / "checkout"
    with pytest.raises(UsageError, match="--verify-key"):
        verify_policy(argparse.Namespace(**{**vars(args), "verify": True}))
