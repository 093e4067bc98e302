"""SBOM, provenance and signatures on the real registry (Debian's docker-registry, distribution 2.8:
no referrers API, so the tag schema fallback), read by real consumers: containers/image under an
enforcing sigstore policy (tests/tools/cimage, see tests/fixtures/supply.py for why not Debian's skopeo)
and spdx-tools' validator."""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from registry import mediatypes as mt
from registry import referrers as rf
from registry import signing
from registry.client import ClientOptions, RegistryClient
from registry.digest import sha256_digest as sha256
from registry.model import Index, parse_manifest
from tests.fixtures.registry import push_test_image
from tests.fixtures.supply import c_image_policy


def _subject(repo, tag: str = "v1"):
    push_test_image(repo, [os.urandom(64)], tag)
    return repo.head_manifest(tag)


def test_referrers_tag_schema_on_distribution_28(registry):
    with RegistryClient() as client:
        repo = client.repository(f"{registry.host}/ref/app")
        subject = _subject(repo)
        assert repo.get_referrers(subject.digest) is None  # distribution 2.8 has no referrers API
        sbom = rf.attach(repo, subject, rf.SPDX_JSON, b'{"spdxVersion":"SPDX-2.3"}', {"io.kade.attestation": "sbom"})
        prov = rf.attach(repo, subject, rf.IN_TOTO_JSON, b'{"_type":"x"}', {})
        body, _ = repo.get_manifest(rf.fallback_tag(subject.digest), mt.OCI_INDEX)
        index = parse_manifest(body)
        assert isinstance(index, Index) and [d.digest for d in index.manifests] == [sbom.digest, prov.digest]
        found = rf.list_referrers(repo, subject.digest)
        assert [(a.artifact_type, a.annotations.get("io.kade.attestation")) for a in found] == \
            [(rf.SPDX_JSON, "sbom"), (rf.IN_TOTO_JSON, None)]
        (only,) = rf.list_referrers(repo, subject.digest, rf.IN_TOTO_JSON)
        assert rf.fetch_artifact(repo, only, subject.digest) == b'{"_type":"x"}'
        manifest = json.loads(repo.get_manifest(prov.digest)[0])
        assert manifest["subject"]["digest"] == subject.digest and manifest["artifactType"] == rf.IN_TOTO_JSON
        # an artifact that names another subject is not taken for this image's
        with pytest.raises(Exception, match="does not name"):
            rf.fetch_artifact(repo, only, "sha256:" + "0" * 64)


def test_two_writers_attaching_at_once_lose_nothing(registry):
    """Two builds attach to the same image at the same time: each re-reads after writing (and again
    after its settle time) and merges again when the other overwrote it, so the index ends with every
    artifact."""
    with RegistryClient() as client:
        repo = client.repository(f"{registry.host}/ref/race")
        subject = _subject(repo)
        start = threading.Barrier(2)
        errors: list[BaseException] = []

        def writer(n: int) -> None:
            try:
                start.wait()
                for i in range(6):
                    rf.attach(repo, subject, rf.IN_TOTO_JSON, f'{{"writer":{n},"i":{i}}}'.encode(), {})
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert len(rf.list_referrers(repo, subject.digest)) == 12


def test_referrers_api_when_the_registry_has_it(referrers_registry):
    """Through a registry that answers the referrers API (a fake of that one API, see the fixture), the
    artifact is found there and no fallback tag is written."""
    with RegistryClient(ClientOptions(insecure=(referrers_registry.host,))) as client:
        repo = client.repository(f"{referrers_registry.host}/ref/api")
        subject = _subject(repo)
        desc, indexed = rf.push_artifact(repo, subject, rf.SPDX_JSON, b"{}", {"io.kade.attestation": "sbom"})
        assert indexed
        assert [a.descriptor.digest for a in rf.list_referrers(repo, subject.digest, rf.SPDX_JSON)] == [desc.digest]
        assert rf.list_referrers(repo, subject.digest, rf.IN_TOTO_JSON) == []
        assert rf.fallback_tag(subject.digest) not in list(repo.list_tags())


def _context(tmp_path: Path, base: str, extra: str = "") -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir(exist_ok=True)
    nm = ctx / "app" / "node_modules" / "left-pad"
    nm.mkdir(parents=True, exist_ok=True)
    (nm / "package.json").write_text('{"name": "left-pad", "version": "1.3.0", "license": "WTFPL"}')
    dist = ctx / "py" / "six-1.16.0.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: six\nVersion: 1.16.0\nLicense: MIT\n")
    go = shutil.which("go")
    gofmt = Path(go).resolve().parent / "gofmt" if go else None
    copy_go = ""
    if gofmt and gofmt.is_file():
        shutil.copy(gofmt, ctx / "gofmt")
        copy_go = "COPY gofmt /usr/local/bin/gofmt\n"
    (ctx / "Dockerfile").write_text(f"FROM {base}\nCOPY app/ /app/\nCOPY py/ /usr/lib/python3/dist-packages/\n"
                                    f"{copy_go}COPY --from={base} /bin/busybox /opt/busybox\n{extra}")
    return ctx


def _env(monkeypatch, key=None, epoch: str = "1700000000") -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", epoch)
    if key is not None:
        monkeypatch.setenv("KADE_SIGN_PASSWORD", key.password)


def test_build_attaches_sbom_and_provenance_and_a_noop_rebuild_pushes_nothing(
        registry, base_image, kade_build, tmp_path, monkeypatch, sign_key):
    _env(monkeypatch, sign_key)
    ctx = _context(tmp_path, base_image.ref)
    tag = f"{registry.host}/sc/app:1"
    res = kade_build(str(ctx), "--tag", tag, "--cache-dir", str(tmp_path / "c"), "--sign-key", str(sign_key.private),
                     "--output", "json")
    digest = res.ok()["images"][0]["digest"]
    with RegistryClient() as client:
        repo = client.repository(f"{registry.host}/sc/app")
        kinds = {a.annotations["io.kade.attestation"]: a for a in rf.list_referrers(repo, digest)}
        assert set(kinds) == {"sbom", "provenance"}
        sbom = json.loads(rf.fetch_artifact(repo, kinds["sbom"], digest))
        names = {(p["name"], p.get("versionInfo")) for p in sbom["packages"]}
        assert {("left-pad", "1.3.0"), ("six", "1.16.0")} <= names
        if (ctx / "gofmt").exists():
            assert ("stdlib", subprocess.run(["go", "env", "GOVERSION"], capture_output=True, text=True).stdout.strip()) \
                in names
        assert sbom["creationInfo"]["created"] == "2023-11-14T22:13:20Z"  # SOURCE_DATE_EPOCH
        prov = json.loads(rf.fetch_artifact(repo, kinds["provenance"], digest))
        images = {(d["uri"], d["annotations"]["role"]) for d in prov["predicate"]["buildDefinition"]["resolvedDependencies"]
                  if d.get("uri", "").startswith("oci://")}
        base = f"oci://{registry.host}/base/busybox@{base_image.digest}"  # the exact base digest, both uses
        assert images == {(base, "base"), (base, "copy-from")}
        assert prov["subject"][0]["digest"]["sha256"] == digest.split(":")[1]
        for d in (digest, kinds["sbom"].descriptor.digest, kinds["provenance"].descriptor.digest):
            assert signing.read_signatures(repo, d), f"no signature on {d}"
        tags_before = sorted(repo.list_tags())
        index_before = repo.get_manifest(rf.fallback_tag(digest), mt.OCI_INDEX)[1].digest
        sig_before = repo.get_manifest(signing.signature_tag(digest))[1].digest

    again = kade_build(str(ctx), "--tag", tag, "--cache-dir", str(tmp_path / "c"), "--sign-key",
                       str(sign_key.private))
    assert again.code == 0, again.stderr
    assert "already in" in again.stderr and " sbom " not in again.stderr
    with RegistryClient() as client:
        repo = client.repository(f"{registry.host}/sc/app")
        assert sorted(repo.list_tags()) == tags_before
        assert repo.get_manifest(rf.fallback_tag(digest), mt.OCI_INDEX)[1].digest == index_before
        assert repo.get_manifest(signing.signature_tag(digest))[1].digest == sig_before

    # read back through the CLI: the SBOM validates with spdx-tools, the diff sees a new package
    from kade.cli import main

    out = tmp_path / "sbom.json"
    with open(out, "w") as f, _stdout(f):
        assert main(["image", "inspect", tag, "--sbom"]) == 0
    from spdx_tools.spdx.parser.parse_anything import parse_file
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    assert [m.validation_message for m in validate_full_spdx_document(parse_file(str(out)))] == []
    (ctx / "app" / "node_modules" / "pad2").mkdir()
    (ctx / "app" / "node_modules" / "pad2" / "package.json").write_text('{"name": "pad2", "version": "2.0.0"}')
    tag2 = f"{registry.host}/sc/app:2"
    assert kade_build(str(ctx), "--tag", tag2, "--cache-dir", str(tmp_path / "c"), "--sbom", "cyclonedx").code == 0
    diff = tmp_path / "diff.json"
    with open(diff, "w") as f, _stdout(f):
        assert main(["image", "sbom", "diff", tag, tag2, "--output", "json"]) == 0
    result = json.loads(diff.read_text())
    assert result["added"] == [{"type": "npm", "name": "pad2", "versions": ["2.0.0"]}]
    assert result["removed"] == [] and result["changed"] == []


class _stdout:
    def __init__(self, f) -> None:
        import contextlib

        self.cm = contextlib.redirect_stdout(f)

    def __enter__(self):
        return self.cm.__enter__()

    def __exit__(self, *exc):
        return self.cm.__exit__(*exc)


def test_c_image_pulls_signed_images_and_refuses_unsigned_and_tampered(
        registry, base_image, kade_build, tmp_path, monkeypatch, sign_key, cimage):
    _env(monkeypatch, sign_key)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {base_image.ref}\nENV SIGNED=1\n")
    signed, unsigned = f"{registry.host}/sc/signed:1", f"{registry.host}/sc/unsigned:1"
    assert kade_build(str(ctx), "-t", signed, "--cache-dir", str(tmp_path / "c"), "--sign-key",
                      str(sign_key.private)).code == 0
    (ctx / "Dockerfile").write_text(f"FROM {base_image.ref}\nENV SIGNED=0\n")  # another image, another digest
    assert kade_build(str(ctx), "-t", unsigned, "--cache-dir", str(tmp_path / "c")).code == 0
    policy, registries_d = c_image_policy(tmp_path, registry.host, sign_key.public)

    def pull(ref: str) -> subprocess.CompletedProcess:
        return subprocess.run([cimage, "--policy", str(policy), "--registries-d", str(registries_d), f"docker://{ref}",
                               f"oci:{tmp_path / 'out'}:x"], capture_output=True, text=True, timeout=120)

    ok = pull(signed)
    assert ok.returncode == 0, ok.stderr
    refused = pull(unsigned)
    assert refused.returncode != 0 and "signature was required, but no signature exists" in refused.stderr
    # tampered 1: the signed image's signature manifest copied onto the unsigned one (valid, but made
    # for another reference and digest)
    with RegistryClient() as client:
        repo = client.repository(f"{registry.host}/sc/signed")
        other = client.repository(f"{registry.host}/sc/unsigned")
        digest, target = repo.head_manifest("1").digest, other.head_manifest("1").digest
        assert digest != target
        body, desc = repo.get_manifest(signing.signature_tag(digest))
        for blob in parse_manifest(body).blobs():
            other.mount_blob(blob.digest, repo.name)
        other.put_manifest(signing.signature_tag(target), body, desc.media_type)
    tampered = pull(unsigned)
    assert tampered.returncode != 0 and "Source image rejected: Signature for" in tampered.stderr
    # tampered 2: a payload naming the unsigned image's reference but the signed image's digest, signed
    # with the right key (what re-pointing a tag at another image looks like)
    from registry import sigkeys

    key = sigkeys.load_private_key(sign_key.private.read_bytes(), sign_key.password.encode(), "k")
    with RegistryClient() as client:
        other = client.repository(f"{registry.host}/sc/unsigned")
        body = signing.payload(unsigned, digest, "test")
        layer = signing.signature_layer(key, body)
        config, manifest = signing.signature_manifest([layer])
        for blob in (body, config):
            other.upload_blob(io.BytesIO(blob), sha256(blob), len(blob))
        other.put_manifest(signing.signature_tag(target), manifest, mt.OCI_MANIFEST)
    tampered = pull(unsigned)
    assert tampered.returncode != 0 and "does not match" in tampered.stderr, tampered.stderr


def test_kade_verifies_signatures_made_by_containers_image(registry, base_image, tmp_path, sign_key, cimage):
    """containers/image signs (the code of `skopeo copy --sign-by-sigstore-private-key`) with a key in
    cosign's encrypted format that kade wrote; kade verifies that signature and refuses other keys."""
    from kade.cli import main
    from registry import sigkeys

    ref = f"{registry.host}/sc/by-cimage:1"
    _, registries_d = c_image_policy(tmp_path, registry.host, sign_key.public)
    out = subprocess.run([cimage, "--registries-d", str(registries_d), "--sign-key", str(sign_key.private), "--passphrase-file", str(sign_key.passphrase),
                          f"docker://{base_image.ref}", f"docker://{ref}"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert main(["image", "verify", ref, "--key", str(sign_key.public)]) == 0
    stranger = tmp_path / "stranger.pub"
    stranger.write_bytes(sigkeys.generate().public.pem())
    assert main(["image", "verify", ref, "--key", str(stranger)]) == 1
    with RegistryClient() as client:
        repo = client.repository(f"{registry.host}/sc/by-cimage")
        (sig,) = signing.read_signatures(repo, repo.head_manifest("1").digest)
        assert signing.parse_payload(sig.payload).optional["creator"].startswith("containers/image")


def test_a_new_image_with_known_layers_reuses_the_inventory_on_a_fresh_machine(
        registry, base_image, kade_build, tmp_path, monkeypatch):
    """The SBOM inventory is a function of the layers: kept as a referrer of the final step image in the
    stages repo, a rebuild that makes a new image digest (another created time) from the same layers
    reads no layer, even with an empty local cache."""
    ctx = _context(tmp_path, base_image.ref)
    tag = f"{registry.host}/sc/inv:1"
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    first = kade_build(str(ctx), "--tag", tag, "--cache-dir", str(tmp_path / "c1"), "--output", "json")
    assert "SBOM inventory of" not in first.stderr  # scanned (in the background, as its steps were pushed)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1800000000")
    second = kade_build(str(ctx), "--tag", tag, "--cache-dir", str(tmp_path / "c2"), "--output", "json")
    assert first.ok()["images"][0]["digest"] != second.ok()["images"][0]["digest"]
    assert "scanning layer" not in second.stderr and "SBOM inventory of" in second.stderr
    with RegistryClient() as client:
        repo = client.repository(f"{registry.host}/sc/inv")
        for run in (first, second):
            digest = run.json()["images"][0]["digest"]
            (sbom,) = rf.list_referrers(repo, digest, rf.SPDX_JSON)
            doc = json.loads(rf.fetch_artifact(repo, sbom, digest))
            assert {"left-pad", "six"} <= {p["name"] for p in doc["packages"]}
            assert doc["documentNamespace"].endswith(digest.split(":")[1])


def test_a_base_layer_that_is_no_tar_fails_the_sbom_clearly(registry, kade_build, tmp_path):
    """A hostile base whose layer is not a tar (never unpacked: no step reads the filesystem) fails the
    build at the SBOM with a message naming the image, not with a traceback. (`FROM` alone: no step, so
    nothing unpacks the base before the SBOM reads it.)"""
    from tests.fixtures.build import push_layers

    base = push_layers(registry.host, "sc/garbage", "1", [b"\x00garbage, not a tar archive" * 100])
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {base.ref}\n")
    res = kade_build(str(ctx), "-t", f"{registry.host}/sc/garbage-child:1", "--cache-dir", str(tmp_path / "c"))
    assert res.code == 1
    assert "SBOM of" in res.stderr and "Traceback" not in res.stderr


def test_a_project_attaches_one_set_per_image(registry, base_image, kade_build, tmp_path, monkeypatch, sign_key):
    """kade.yaml's attest: section: every image of the project gets its own SBOM, provenance (naming
    the commit and kade.yaml's digest) and signatures."""
    import hashlib

    monkeypatch.setenv("KADE_SIGN_PASSWORD", sign_key.password)
    root = tmp_path / "repo"
    for name in ("web", "worker"):
        (root / name).mkdir(parents=True)
        (root / name / "Dockerfile").write_text(f"FROM {base_image.ref}\nENV IMAGE={name}\n")
    (root / "kade.yaml").write_text(f"project: demo\nattest:\n  sbom: cyclonedx\n  sign_key: {sign_key.private}\n"
                                    "images:\n  web: {context: web}\n  worker: {context: worker}\n")

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                              check=True, capture_output=True, text=True).stdout.strip()
    git("init", "-q", "-b", "main")
    git("add", "-A")
    git("commit", "-qm", "demo")
    commit = git("rev-parse", "HEAD")
    res = kade_build("--dir", str(root), "--repo", f"{registry.host}/proj", "--cache-dir", str(tmp_path / "c"),
                     "--output", "json")
    images = res.ok()["images"]
    assert set(images) == {"web", "worker"}
    with RegistryClient() as client:
        for name, img in images.items():
            repo = client.repository(img["repository"])
            found = {a.artifact_type: a for a in rf.list_referrers(repo, img["digest"])}
            assert set(found) == {rf.CYCLONEDX_JSON, rf.IN_TOTO_JSON}, name
            prov = json.loads(rf.fetch_artifact(repo, found[rf.IN_TOTO_JSON], img["digest"]))
            deps = prov["predicate"]["buildDefinition"]["resolvedDependencies"]
            assert {"name": "kade.yaml", "digest": {"sha256": hashlib.sha256((root / "kade.yaml").read_bytes())
                                                    .hexdigest()}} in deps
            assert prov["predicate"]["buildDefinition"]["externalParameters"]["source"]["digest"] == {"gitCommit": commit}
            assert signing.read_signatures(repo, img["digest"])


def test_a_reused_project_image_gets_what_it_lacks_and_nothing_else(registry, base_image, kade_build, tmp_path,
                                                                      monkeypatch, sign_key):
    """A project image taken from the registry unchanged: no attestation made again, but a signature is
    added once a key is configured (and nothing at all on the next run)."""
    monkeypatch.setenv("KADE_SIGN_PASSWORD", sign_key.password)
    root = tmp_path / "repo"
    (root / "web").mkdir(parents=True)
    (root / "web" / "Dockerfile").write_text(f"FROM {base_image.ref}\nENV IMAGE=web\n")
    (root / "kade.yaml").write_text("project: demo\nimages:\n  web: {context: web}\n")
    for args in (("init", "-q", "-b", "main"), ("add", "-A"), ("commit", "-qm", "demo")):
        subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True)
    common = ("--dir", str(root), "--repo", f"{registry.host}/reuse", "--cache-dir", str(tmp_path / "c"))
    first = kade_build(*common, "--output", "json").ok()["images"]["web"]
    second = kade_build(*common, "--sign-key", str(sign_key.private))
    assert second.code == 0, second.stderr
    assert " attest " not in second.stderr and " sign " in second.stderr  # signed, nothing re-attached
    third = kade_build(*common, "--sign-key", str(sign_key.private))
    assert third.code == 0 and " sign " not in third.stderr and " attest " not in third.stderr
    with RegistryClient() as client:
        repo = client.repository(first["repository"])
        assert len(rf.list_referrers(repo, first["digest"])) == 2
        assert signing.read_signatures(repo, first["digest"])
