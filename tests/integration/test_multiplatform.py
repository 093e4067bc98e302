"""Multi-platform builds end to end: one `kade build --platform linux/amd64,linux/arm64` pushes an OCI
index whose arm64 image podman runs under qemu-user-static; RUN for arm64 ran under emulation during
the build; a cross-compile stage on $BUILDPLATFORM runs its target-independent steps once."""
from __future__ import annotations

import json
import subprocess

import pytest

from tests.fixtures.build import skopeo_inspect

PLATFORMS = "linux/amd64,linux/arm64"


def podman_run_platform(ref: str, platform: str, *cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", "run", "--rm", "--runtime", "runc", "--ulimit", "nofile=1024:1024",
                           "--ulimit", "nproc=1024:1024", "--tls-verify=false", "--pull", "always",
                           "--platform", platform, ref, *cmd], capture_output=True, text=True, timeout=300)


def events(stderr: str, kind: str) -> list[dict]:
    out = []
    for line in stderr.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("kind") == kind:
            out.append(record)
    return out


@pytest.fixture
def context(tmp_path):
    def make(dockerfile: str):
        (tmp_path / "Dockerfile").write_text(dockerfile)
        return str(tmp_path)
    return make


def test_an_index_for_two_platforms_runs_arm64_under_emulation(registry, multi_base, context, kade_build):
    ctx = context(f"""\
FROM {multi_base.ref}
ARG TARGETARCH TARGETPLATFORM
RUN uname -m > /built-arch && echo "$TARGETARCH $TARGETPLATFORM" > /target
CMD ["cat", "/built-arch"]
""")
    ref = f"{registry.host}/mp/app:v1"
    result = kade_build(ctx, "--platform", PLATFORMS, "-t", ref, "--insecure-registry", registry.host,
                        "--output", "json").ok()
    out = subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--raw", f"docker://{ref}"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    index = json.loads(out.stdout)
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert result["images"][0]["digest"].startswith("sha256:")
    platforms = {(m["platform"]["os"], m["platform"]["architecture"]) for m in index["manifests"]}
    assert platforms == {("linux", "amd64"), ("linux", "arm64")}
    arm = podman_run_platform(ref, "linux/arm64", "sh", "-c", "uname -m; cat /built-arch /target")
    assert arm.returncode == 0, arm.stderr
    assert arm.stdout.split("\n")[:3] == ["aarch64", "aarch64", "arm64 linux/arm64"]  # built under qemu too
    amd = podman_run_platform(ref, "linux/amd64", "sh", "-c", "uname -m; cat /built-arch /target")
    assert amd.returncode == 0, amd.stderr
    assert amd.stdout.split("\n")[:3] == ["x86_64", "x86_64", "amd64 linux/amd64"]


def test_one_platform_is_a_plain_manifest_of_that_platform(registry, multi_base, context, kade_build):
    ctx = context(f"FROM {multi_base.ref}\nRUN uname -m > /built-arch\n")
    ref = f"{registry.host}/mp/single:v1"
    kade_build(ctx, "--platform", "linux/arm64/v8", "-t", ref, "--insecure-registry", registry.host,
               "--output", "json").ok()
    out = subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--raw", f"docker://{ref}"],
                         capture_output=True, text=True, timeout=60)
    assert json.loads(out.stdout)["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    config = skopeo_inspect(f"docker://{ref}", config=True)
    assert (config["os"], config["architecture"]) == ("linux", "arm64")


def test_cross_compile_stage_runs_natively_and_its_shared_steps_once(registry, multi_base, context, kade_build):
    ctx = context(f"""\
FROM --platform=$BUILDPLATFORM {multi_base.ref} AS build
RUN echo toolchain > /toolchain && uname -m > /build-arch
ARG TARGETARCH
RUN echo "app for $TARGETARCH built on $(uname -m)" > /app
FROM {multi_base.ref}
COPY --from=build /app /app
""")
    for extra in ([], ["--no-cache"]):  # found in the stages repo by the second platform; or shared in-process
        ref = f"{registry.host}/mp/cross:v{len(extra)}"
        run = kade_build(ctx, "--platform", PLATFORMS, "-t", ref, "--insecure-registry", registry.host,
                         "--output", "json", *extra)
        run.ok()
        steps = [e["step"] for e in events(run.stderr, "step")]
        assert steps.count("RUN /bin/sh -c echo toolchain > /toolchain && uname -m > /build-arch") == 1, steps
        assert steps.count('RUN /bin/sh -c echo "app for $TARGETARCH built on $(uname -m)" > /app') == 2, steps
        arm = podman_run_platform(ref, "linux/arm64", "cat", "/app")
        assert arm.returncode == 0, arm.stderr
        assert arm.stdout.strip() == "app for arm64 built on x86_64"  # the compiler ran natively


def test_a_platform_the_base_lacks_names_the_image_and_its_platforms(registry, multi_base, context, kade_build):
    ctx = context(f"FROM {multi_base.ref}\nRUN true\n")
    run = kade_build(ctx, "--platform", "linux/amd64,linux/s390x", "-t", f"{registry.host}/mp/none:v1",
                     "--insecure-registry", registry.host)
    assert run.code == 1
    assert "has no image for platform linux/s390x (it has: linux/amd64, linux/arm64/v8)" in run.stderr
    assert "Dockerfile:1" in run.stderr or "line 1" in run.stderr


PROJECT = """
project: mp
images:
  app:
    context: app
    platforms: [linux/amd64, linux/arm64/v8]
    args: {BASE: "{{ env.MP_BASE }}"}
  final:
    context: final
    platforms: [linux/amd64, linux/arm64]
    dependencies:
      - image: app
        args: {APP: ref}
"""


def test_a_project_builds_an_index_per_image_and_reuses_it(registry, multi_base, kade_build, tmp_path, monkeypatch):
    from tests.integration.test_project_build import commit_all, git

    root = tmp_path / "repo"
    (root / "app").mkdir(parents=True)
    (root / "final").mkdir()
    (root / "kade.yaml").write_text(PROJECT)
    (root / "app" / "Dockerfile").write_text("ARG BASE\nFROM ${BASE}\nRUN uname -m > /arch\n")
    (root / "final" / "Dockerfile").write_text("ARG APP\nFROM ${APP}\nRUN cat /arch > /final-arch\n")
    git(root, "init", "-q", "-b", "main")
    commit_all(root, "mp")
    monkeypatch.setenv("MP_BASE", multi_base.ref)
    args = ("--dir", str(root), "--repo", f"{registry.host}/mp", "--insecure-registry", registry.host,
            "--output", "json")
    first = kade_build(*args)
    assert first.code == 0, first.stderr
    images = first.json()["images"]
    assert first.json()["steps"]["built"] == 4  # each RUN once per platform
    final = f"{images['final']['repository']}:{images['final']['tag']}"
    out = subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--raw", f"docker://{final}"],
                         capture_output=True, text=True, timeout=60)
    index = json.loads(out.stdout)
    assert sorted(m["platform"]["architecture"] for m in index["manifests"]) == ["amd64", "arm64"]
    arm = podman_run_platform(final, "linux/arm64", "cat", "/final-arch")  # FROM app: app's arm64 image
    assert (arm.returncode, arm.stdout) == (0, "aarch64\n"), arm.stderr
    # nothing changed: both indexes come from the registry by their content tags, and get the extra tag
    second = kade_build(*args, "--add-tag", "{{ image }}-again")
    assert second.code == 0, second.stderr
    assert second.json()["steps"]["built"] == 0
    assert {n: i["digest"] for n, i in second.json()["images"].items()} == {n: i["digest"] for n, i in images.items()}
    again = subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--raw",
                            f"docker://{images['final']['repository']}:final-again"], capture_output=True, timeout=60)
    assert again.returncode == 0 and again.stdout == out.stdout.encode(), again.stderr


def test_each_platform_is_attested_and_the_index_signed(registry, multi_base, context, kade_build, sign_key,
                                                         monkeypatch):
    from kade.cli import main
    from registry import referrers as rf
    from registry import signing
    from registry.client import RegistryClient
    from registry.model import parse_manifest

    monkeypatch.setenv("KADE_SIGN_PASSWORD", sign_key.password)
    ctx = context(f"FROM {multi_base.ref}\nRUN uname -m > /built-arch\n")
    ref = f"{registry.host}/mp/signed:v1"
    digest = kade_build(ctx, "--platform", PLATFORMS, "-t", ref, "--insecure-registry", registry.host,
                        "--sign-key", str(sign_key.private), "--output", "json").ok()["images"][0]["digest"]
    with RegistryClient() as client:
        repo = client.repository(f"{registry.host}/mp/signed")
        body, desc = repo.get_manifest(digest)
        children = parse_manifest(body, desc.media_type).manifests
        assert len(children) == 2
        for child in children:
            kinds = {a.annotations["io.kade.attestation"] for a in rf.list_referrers(repo, child.digest)}
            assert kinds == {"sbom", "provenance"}, child.platform
            provenance = next(a for a in rf.list_referrers(repo, child.digest)
                              if a.annotations["io.kade.attestation"] == "provenance")
            statement = json.loads(rf.fetch_artifact(repo, provenance, child.digest))
            platform = f"{child.platform['os']}/{child.platform['architecture']}"
            assert statement["predicate"]["buildDefinition"]["externalParameters"]["platform"] == platform
        assert signing.read_signatures(repo, digest)  # the tag's digest, the index, is what is signed
    assert main(["image", "verify", ref, "--key", str(sign_key.public)]) == 0
    # provenance per platform: every platform manifest's statement names the trusted builder
    assert main(["image", "verify", ref, "--key", str(sign_key.public),
                 "--trusted-builder", "https://kade.io/builders/local"]) == 0
    assert main(["image", "verify", ref, "--key", str(sign_key.public), "--trusted-builder", "https://evil"]) == 1


def test_check_reproducible_takes_one_platform(context, kade_build):
    run = kade_build(context("FROM scratch\n"), "--check-reproducible", "--platform", PLATFORMS)
    assert run.code == 2 and "pass one --platform at a time" in run.stderr
