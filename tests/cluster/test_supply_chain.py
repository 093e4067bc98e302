"""The supply chain on the test cluster's Debian base: the SBOM lists what `dpkg` says is in the image
(run with podman) and validates with spdx-tools, the provenance names the exact base digest, and
`kade deploy --verify` refuses an unsigned image and applies a signed one pinned by digest."""
from __future__ import annotations

import json
import secrets
import subprocess

import pytest

from registry.client import ClientOptions, RegistryClient
from tests.fixtures.build import podman_run
from tests.fixtures.deploy import deployment

pytestmark = pytest.mark.cluster


def test_debian_image_sbom_provenance_and_verified_deploy(kube_cluster, kube_namespace, kade, tmp_path, sign_key,
                                                          monkeypatch):
    """Signing and verification keys both come from a Kubernetes Secret, as `cosign generate-key-pair
    k8s://NS/NAME` makes it (cosign.key, cosign.password, cosign.pub)."""
    from kubernetes import client

    monkeypatch.delenv("KADE_SIGN_PASSWORD", raising=False)
    monkeypatch.delenv("COSIGN_PASSWORD", raising=False)
    client.CoreV1Api(kube_cluster.api_client()).create_namespaced_secret(kube_namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name="cosign"),
        string_data={"cosign.key": sign_key.private.read_text(), "cosign.password": sign_key.password,
                     "cosign.pub": sign_key.public.read_text()}))
    secret = f"k8s://{kube_namespace}/cosign"
    registry = kube_cluster.registry
    repo = f"{registry}/kade-test/supply-{secrets.token_hex(4)}"
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    insecure = ("--insecure-registry", registry)
    common = ("--cache-dir", str(tmp_path / "cache"), *insecure, "--output", "json")

    (ctx / "Dockerfile").write_text(f"FROM {kube_cluster.base_image}\nENV SIGNED=yes\n")
    signed = kade.run("build", str(ctx), "-t", f"{repo}:signed", "--sign-key", secret, *common)
    assert signed.rc == 0, signed
    digest = signed.result["images"][0]["digest"]
    (ctx / "Dockerfile").write_text(f"FROM {kube_cluster.base_image}\nENV SIGNED=no\n")
    unsigned = kade.run("build", str(ctx), "-t", f"{repo}:unsigned", *common)
    assert unsigned.rc == 0, unsigned

    # the SBOM: valid SPDX, and exactly the packages dpkg lists as installed in the image
    sbom_run = kade.run("image", "inspect", f"{repo}:signed", "--sbom", *insecure)
    assert sbom_run.rc == 0, sbom_run
    sbom_file = tmp_path / "sbom.spdx.json"
    sbom_file.write_text(sbom_run.stdout)
    from spdx_tools.spdx.parser.parse_anything import parse_file
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    assert [m.validation_message for m in validate_full_spdx_document(parse_file(str(sbom_file)))] == []
    listed = {(p["name"], p["versionInfo"]) for p in json.loads(sbom_run.stdout)["packages"]
              if p["SPDXID"] != "SPDXRef-Image"}
    dpkg = podman_run(f"{repo}:signed", "dpkg-query", "-W", "-f", "${db:Status-Abbrev}|${Package}|${Version}\\n")
    assert dpkg.returncode == 0, dpkg.stderr
    installed = {tuple(line.split("|")[1:]) for line in dpkg.stdout.splitlines() if line.startswith("i")}
    assert len(installed) > 50 and listed == installed
    purls = [r["referenceLocator"] for p in json.loads(sbom_run.stdout)["packages"] for r in p["externalRefs"]]
    assert any(p.startswith("pkg:deb/debian/bash@") and "distro=debian-12" in p for p in purls)

    # the provenance names the exact digest the base tag had
    with RegistryClient(ClientOptions(insecure=(registry,))) as client:
        base_repo, _, base_tag = kube_cluster.base_image.rpartition(":")
        base_digest = client.repository(base_repo).head_manifest(base_tag).digest
    prov = kade.run("image", "inspect", f"{repo}:signed", "--provenance", *insecure)
    assert prov.rc == 0, prov
    deps = json.loads(prov.stdout)["predicate"]["buildDefinition"]["resolvedDependencies"]
    assert {"uri": f"oci://{base_repo}@{base_digest}", "digest": {"sha256": base_digest.split(":")[1]},
            "annotations": {"role": "base", "stage": "0"}} in deps

    # deploy --verify: the unsigned image is refused before anything is applied
    manifest = kade.write("app.yaml", deployment("web", f"{repo}:unsigned"))
    verify = ("--verify-key", secret, *insecure)
    refused = kade.deploy(kube_namespace, manifest, *verify)
    assert refused.rc == 1, refused
    assert f"{repo}:unsigned" in refused.stderr and "no valid signature" in refused.stderr
    kubectl = ["kubectl", "--kubeconfig", kube_cluster.kubeconfig, "-n", kube_namespace]
    from tests.fixtures.cluster import kubectl as kubectl_bin

    kubectl[0] = kubectl_bin()
    assert subprocess.run([*kubectl, "get", "deployment", "web"], capture_output=True).returncode != 0

    # the signed one is applied, pinned by digest
    manifest = kade.write("app.yaml", deployment("web", f"{repo}:signed"))
    applied = kade.deploy(kube_namespace, manifest, *verify)
    assert applied.rc == 0, applied
    image = subprocess.run([*kubectl, "get", "deployment", "web", "-o", "jsonpath={.spec.template.spec.containers[0].image}"],
                           capture_output=True, text=True, check=True).stdout
    assert image == f"{repo}:signed@{digest}"


def test_a_pod_build_names_its_backend_and_builder_image_by_digest(builder_env, tmp_path):
    """In-cluster builds: the provenance says `kubernetes` and names the builder pods' image by digest,
    and the SBOM is made by the CLI from the layers the pods pushed."""
    from tests.fixtures.incluster import kade_build, result, unique, write_context

    ctx = write_context(tmp_path / "ctx", "FROM {base}\nRUN echo built-in-a-pod > /pod.txt\n", builder_env.base_image)
    tag = f"{builder_env.registry}/{unique('supply')}:v1"
    digest = result(kade_build(builder_env, ctx, tag))["images"][0]["digest"]
    with RegistryClient(ClientOptions(insecure=(builder_env.registry,))) as client:
        from registry import referrers as rf

        repo = client.repository(tag.rsplit(":", 1)[0])
        found = {a.artifact_type: a for a in rf.list_referrers(repo, digest)}
        prov = json.loads(rf.fetch_artifact(repo, found[rf.IN_TOTO_JSON], digest))
        sbom = json.loads(rf.fetch_artifact(repo, found[rf.SPDX_JSON], digest))
    from registry.reference import Reference

    builder = Reference.parse(builder_env.image)  # REF:TAG@sha256:... (images/builder/build.sh)
    assert prov["predicate"]["buildDefinition"]["internalParameters"]["backend"] == "kubernetes"
    assert prov["predicate"]["runDetails"]["builder"]["id"] == "https://kade.io/builders/kubernetes"
    (dep,) = prov["predicate"]["runDetails"]["builder"]["builderDependencies"]
    assert dep["uri"] == f"oci://{builder.name}@{builder.digest}" and builder.digest
    assert any(p["name"] == "bash" for p in sbom["packages"])
