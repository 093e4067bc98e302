"""`kade build` of a kade.yaml project against the real registry: dependency waves, steps shared by
images of a wave built once, content tags reused when nothing changed, extra tag templates, commit
annotations and labels, and giterminism (uncommitted/untracked files refused unless --dev)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from registry import mediatypes as mt
from registry.client import RegistryClient
from registry.records import list_records

KADE_YAML = """
project: demo
images:
  tools:
    context: tools
    args: {BASE: "{{ env.DEMO_BASE }}"}
  app:
    context: app
    args: {BASE: "{{ env.DEMO_BASE }}"}
  final:
    context: final
    dependencies:
      - image: app
        args: {APP: ref, APP_DIGEST: digest}
"""


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@kade.invalid", *args],
                          check=True, capture_output=True, text=True)
    return done.stdout.strip()


def commit_all(repo: Path, message: str = "change") -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def project(tmp_path, base_image, monkeypatch) -> Path:
    root = tmp_path / "repo"
    (root / "tools").mkdir(parents=True)
    (root / "app").mkdir()
    (root / "final").mkdir()
    (root / "kade.yaml").write_text(KADE_YAML)
    # tools and app share their first RUN (same base, same instruction): one key, built once.
    (root / "tools" / "Dockerfile").write_text("ARG BASE\nFROM ${BASE}\nRUN echo shared > /shared\nRUN echo tools > /tools\n")
    (root / "app" / "Dockerfile").write_text("ARG BASE\nFROM ${BASE}\nRUN echo shared > /shared\nCOPY app.txt /app.txt\n")
    (root / "app" / "app.txt").write_text("version 1\n")
    (root / "final" / "Dockerfile").write_text("ARG APP\nFROM ${APP}\nARG APP_DIGEST\nRUN echo \"$APP_DIGEST\" > /app-digest\n")
    git(root, "init", "-q", "-b", "main")
    commit_all(root, "demo")
    monkeypatch.setenv("DEMO_BASE", base_image.ref)
    return root


def build(kade_build, registry, project: Path, *extra: str):
    return kade_build("--dir", str(project), "--repo", f"{registry.host}/demo", "--output", "json", *extra)


def test_project_builds_in_waves_shares_steps_and_reuses_unchanged_images(kade_build, registry, project, tmp_path):
    first = build(kade_build, registry, project, "--add-tag", "{{ image }}-{{ git.branch }}",
                  "--add-tag", "release-{{ git.tag }}", "--report", str(tmp_path / "r1.json"))
    assert first.code == 0, first.stderr
    r1 = first.json()
    assert json.loads((tmp_path / "r1.json").read_text()) == r1
    imgs = r1["images"]
    # the RUN both tools and app start with ran once: 2 + 2 + 1 steps planned, 4 executed
    assert r1["steps"]["built"] == 4
    assert sorted(imgs[n]["steps"]["built"] for n in ("tools", "app")) == [1, 2]
    assert imgs["final"]["steps"]["built"] == 1
    assert "gives no tag for image" in first.stderr  # git.tag is undefined on an untagged commit
    commit = git(project, "rev-parse", "HEAD")
    with RegistryClient() as client:
        for name, img in imgs.items():
            repo = client.repository(img["repository"])
            assert img["tags"] == [img["tag"], f"{name}-main"]
            for tag in img["tags"]:
                assert repo.head_manifest(tag, mt.OCI_MANIFEST).digest == img["digest"]
            body, _ = repo.get_manifest(img["digest"])
            manifest = json.loads(body)
            assert manifest["annotations"]["org.opencontainers.image.revision"] == commit
            with repo.open_blob(manifest["config"]["digest"]) as f:
                config = json.loads(f.read())
            assert config["config"]["Labels"]["org.opencontainers.image.revision"] == commit
        # final got app's digest as a build arg: it is in final's filesystem
        final_repo = client.repository(imgs["final"]["repository"])
        body, _ = final_repo.get_manifest(imgs["final"]["digest"])
        last_layer = json.loads(body)["layers"][-1]["digest"]
        import gzip
        import io
        import tarfile
        with final_repo.open_blob(last_layer) as f:
            tar = tarfile.open(fileobj=io.BytesIO(gzip.decompress(f.read())))
            assert tar.extractfile("app-digest").read().decode().strip() == imgs["app"]["digest"]
        # one build record for the whole project (none per image on top), naming every image
        records = list(list_records(client.repository(f"{registry.host}/demo-stages")))
        assert [tag for tag, _ in records] == [r1["record"]]
        assert {i.name: i.digest for i in records[0][1].images} == {n: imgs[n]["digest"] for n in imgs}

    # A commit that changes nothing the images use: every image comes from the registry as it was.
    (project / "README").write_text("docs only\n")
    commit_all(project, "docs")
    second = build(kade_build, registry, project)
    assert second.code == 0, second.stderr
    r2 = second.json()
    assert r2["steps"]["built"] == 0
    assert all(r2["images"][n]["reused"] and r2["images"][n]["digest"] == imgs[n]["digest"] for n in imgs)

    # Changing app rebuilds app's COPY, and final (its FROM follows app's digest); tools is reused.
    (project / "app" / "app.txt").write_text("version 2\n")
    commit_all(project, "app v2")
    third = build(kade_build, registry, project)
    assert third.code == 0, third.stderr
    r3 = third.json()["images"]
    assert r3["tools"]["reused"] and r3["tools"]["digest"] == imgs["tools"]["digest"]
    assert r3["app"]["steps"] == {"built": 1, "cached": 1, "total": 2}
    assert r3["final"]["steps"]["built"] == 1 and r3["final"]["tag"] != imgs["final"]["tag"]


def test_uncommitted_and_untracked_files_are_refused_unless_dev(kade_build, registry, project):
    (project / "app" / "app.txt").write_text("not committed\n")
    (project / "tools" / "new.sh").write_text("echo new\n")
    (project / "notes.txt").write_text("not used by any image: does not matter\n")
    refused = build(kade_build, registry, project)
    assert refused.code == 1
    assert "app/app.txt (modified)" in refused.stderr and "tools/new.sh (untracked)" in refused.stderr
    assert "notes.txt" not in refused.stderr and "--dev" in refused.stderr

    dev = build(kade_build, registry, project, "--dev", "--image", "app")
    assert dev.code == 0, dev.stderr
    assert set(dev.json()["images"]) == {"app"}
    committed = subprocess.run(["git", "-C", str(project), "stash", "-u", "-q"], check=True)
    assert committed.returncode == 0
    clean = build(kade_build, registry, project, "--image", "app")
    assert clean.code == 0, clean.stderr
    # the committed tree and the working tree differ in app.txt: different content, different tag
    assert clean.json()["images"]["app"]["tag"] != dev.json()["images"]["app"]["tag"]


def test_config_errors_name_file_and_key(kade_build, registry, project, monkeypatch):
    no_repo = kade_build("--dir", str(project))
    assert no_repo.code == 1 and "--repo" in no_repo.stderr
    single = kade_build("--dir", str(project), "--repo", f"{registry.host}/demo", "--tag", "x/y:z")
    assert single.code == 2 and "--tag" in single.stderr
    monkeypatch.delenv("DEMO_BASE")
    missing = build(kade_build, registry, project)
    assert missing.code == 1
    assert "kade.yaml: images.tools.args.BASE" in missing.stderr and "DEMO_BASE is not set" in missing.stderr


def test_a_context_outside_the_project_is_refused(kade_build, registry, project):
    (project / "kade.yaml").write_text(KADE_YAML.replace("context: tools", "context: ../../etc"))
    commit_all(project, "hostile context")
    out = build(kade_build, registry, project)
    assert out.code == 1
    assert "images.tools.context: '../../etc' is outside the project folder" in out.stderr


@pytest.mark.parametrize("how", ["absolute", "dotdot", "symlink"])
def test_a_dockerfile_outside_the_project_is_never_read(kade_build, registry, project, tmp_path, how):
    """A repository's kade.yaml named a file of this machine as a Dockerfile, and the parse error
    printed its first line (a token, a password hash) into the build log."""
    secret = tmp_path / "host-secret"
    secret.write_text("s3cr3t-value-of-this-machine\n")
    named = {"absolute": str(secret), "dotdot": f"../../{secret.name}", "symlink": "Dockerfile.link"}[how]
    if how == "symlink":
        (project / "tools" / "Dockerfile.link").symlink_to(secret)
    (project / "kade.yaml").write_text(KADE_YAML.replace("context: tools", f"context: tools\n    dockerfile: {named}"))
    commit_all(project, "hostile dockerfile")
    out = build(kade_build, registry, project)
    assert out.code == 1 and "images.tools.dockerfile" in out.stderr and "outside the project folder" in out.stderr
    assert "s3cr3t" not in out.stderr + out.stdout
