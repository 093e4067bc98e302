"""kade build against the real registry: multi-stage COPY builds, caching, OCI layout output.

These builds use no RUN, so they exercise planning, lookup, unpack, layer writing and pushing."""
import json
import os
import subprocess

import pytest

from tests.fixtures.build import podman_run, skopeo_inspect

DOCKERFILE = """\
ARG BASE
FROM ${BASE} AS assets
COPY assets/ /srv/assets/
FROM ${BASE} AS unused
COPY nothing-here /x
FROM ${BASE}
LABEL org.example.team=kade
ENV APP_HOME=/app MODE=prod
WORKDIR ${APP_HOME}
COPY --chown=1000:1000 app/ ./
COPY --from=assets /srv/assets /app/static
USER app
EXPOSE 8080
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["cat /app/main.txt"]
"""


@pytest.fixture
def project(tmp_path):
    ctx = tmp_path / "ctx"
    (ctx / "app").mkdir(parents=True)
    (ctx / "app" / "main.txt").write_text("hello from kade\n")
    (ctx / "app" / "lib.txt").write_text("lib\n")
    (ctx / "assets").mkdir()
    (ctx / "assets" / "logo.svg").write_text("<svg/>")
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    (ctx / ".dockerignore").write_text("*.tmp\n")
    return ctx


def test_multistage_copy_build_push_and_rebuild(registry, base_image, project, kade_build, tmp_path):
    tag = f"{registry.host}/it/copyapp:v1"
    args = [str(project), "--build-arg", f"BASE={base_image.ref}", "--tag", tag, "--output", "json"]
    res = kade_build(*args, "--cache-dir", str(tmp_path / "c1")).ok()
    assert res["steps"] == {"built": 10, "cached": 0}
    assert res["images"][0]["ref"] == tag
    digest = res["images"][0]["digest"]

    cfg = skopeo_inspect(f"docker://{tag}", config=True)
    c = cfg["config"]
    assert c["User"] == "app" and c["WorkingDir"] == "/app"
    assert c["Entrypoint"] == ["/bin/sh", "-c"] and c["Cmd"] == ["cat /app/main.txt"]
    assert "APP_HOME=/app" in c["Env"] and c["Labels"] == {"org.example.team": "kade"}
    assert c["ExposedPorts"] == {"8080/tcp": {}}
    raw = skopeo_inspect(f"docker://{tag}")
    assert raw["Digest"] == digest

    # nothing changed, fresh cache dir: nothing built, nothing pulled
    second = kade_build(*args, "--cache-dir", str(tmp_path / "c2"))
    assert second.code == 0, second.stderr
    assert second.json()["steps"] == {"built": 0, "cached": 10}
    layers = [d["digest"] for d in json.loads(subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{tag}"], capture_output=True,
        text=True, check=True).stdout)["layers"]]
    cached_blobs = {"sha256:" + p.name for p in (tmp_path / "c2" / "blobs" / "sha256").iterdir()}
    assert layers and not (set(layers) & cached_blobs)
    assert " pull " not in second.stderr and "unpack" not in second.stderr

    # one file changed: only the steps from the app COPY on are built
    (project / "app" / "main.txt").write_text("changed\n")
    third = kade_build(*args, "--cache-dir", str(tmp_path / "c3"))
    assert third.code == 0, third.stderr
    assert third.json()["steps"] == {"built": 6, "cached": 4}


def test_image_runs_under_podman(registry, base_image, project, kade_build, tmp_path):
    tag = f"{registry.host}/it/copyrun:v1"
    res = kade_build(str(project), "--build-arg", f"BASE={base_image.ref}", "--tag", tag,
                     "--cache-dir", str(tmp_path / "c"))
    assert res.code == 0, res.stderr
    assert res.stdout.strip().startswith(f"{tag}@sha256:")
    out = podman_run(tag)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "hello from kade\n"
    out = podman_run(tag, "id -u; ls -ln /app/main.txt; cat /app/static/logo.svg")
    assert out.returncode == 0, out.stderr
    uid, ls, svg = out.stdout.splitlines()
    assert uid == "1000" and ls.split()[2:4] == ["1000", "1000"] and svg == "<svg/>"


def test_no_tag_writes_oci_layout_skopeo_reads(base_image, project, kade_build, tmp_path):
    res = kade_build(str(project), "--build-arg", f"BASE={base_image.ref}", "--cache-dir", str(tmp_path / "c"),
                     "--output", "json")
    assert res.code == 0, res.stderr
    ref = res.json()["images"][0]["ref"]
    assert ref.startswith("oci:")
    info = skopeo_inspect(ref)
    assert info["Digest"] == res.json()["images"][0]["digest"]
    cfg = skopeo_inspect(ref, config=True)
    assert cfg["config"]["WorkingDir"] == "/app"


@pytest.mark.skipif(os.geteuid() != 0, reason="setting security.capability takes root")
def test_file_capabilities_and_user_xattrs_follow_buildkit(registry, base_image, kade_build, tmp_path):
    """As BuildKit: a file copied out of an image or stage keeps its file capabilities (a `setcap`
    binary), a context file's are cleared (its transfer chowns after setting them); no user.* xattr is
    written into a layer (BuildKit's differ writes security.capability only; the steps after the COPY
    still see them, which the differential probe of stop 33 compared)."""
    from pathlib import Path

    from tests.differential.imagetree import read_layout
    from tests.fixtures.build import push_image
    from tests.fixtures.layers import CAP_NET_RAW_EP, E, make_tar

    tool = push_image(registry.host, "it/capped", "1", make_tar([
        E("usr", "dir"), E("usr/bin", "dir"),
        E("usr/bin/ping", data=b"#!/bin/sh\n", mode=0o755,
          xattrs={"security.capability": CAP_NET_RAW_EP, "user.origin": b"the image"})]))
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "local").write_bytes(b"x")
    os.setxattr(ctx / "local", "security.capability", CAP_NET_RAW_EP)
    os.setxattr(ctx / "local", "user.origin", b"a checkout")
    (ctx / "Dockerfile").write_text(f"FROM {base_image.ref}\nCOPY --from={tool.ref} /usr/bin/ping /ping\n"
                                    "COPY local /local\n")
    res = kade_build(str(ctx), "--output", "json", "--cache-dir", str(tmp_path / "c")).ok()
    (image,) = res["images"]
    files = read_layout(Path(image["ref"].split(":", 2)[1]), image["digest"]).files
    assert dict(files["/ping"].xattrs) == {"security.capability": CAP_NET_RAW_EP.decode("utf-8", "surrogateescape")}
    assert dict(files["/local"].xattrs) == {}
