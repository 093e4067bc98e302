"""`kade image ...` end to end: the real CLI process against the real registry."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid

import pytest


def kade(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "DOCKER_CONFIG": "/nonexistent-kade-test", "CI": "1", **(env or {})}
    if "REGISTRY_AUTH_FILE" not in (env or {}):
        full_env.pop("REGISTRY_AUTH_FILE", None)
    return subprocess.run([sys.executable, "-m", "kade", *args], capture_output=True, text=True, env=full_env,
                          timeout=120)


def test_copy_tags_inspect_delete(registry, sample_layout, tmp_path):
    layout, tag, digest = sample_layout
    repo = f"{registry.host}/cli/{uuid.uuid4().hex[:8]}"
    done = kade("image", "copy", f"oci:{layout}:{tag}", f"{repo}:v1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == digest
    assert "copied" in done.stderr  # progress on stderr
    assert kade("image", "copy", f"{repo}:v1", f"{repo}:v2").returncode == 0
    tags = kade("image", "tags", repo)
    assert tags.returncode == 0 and tags.stdout.splitlines() == ["v1", "v2"]
    assert json.loads(kade("image", "tags", repo, "--output", "json").stdout) == ["v1", "v2"]

    inspected = kade("image", "inspect", f"{repo}:v1")
    assert inspected.returncode == 0, inspected.stderr
    doc = json.loads(inspected.stdout)
    assert doc["digest"] == digest and doc["config"]["architecture"] == "amd64"
    assert len(doc["manifest"]["layers"]) == len(doc["config"]["rootfs"]["diff_ids"]) == 3
    raw = kade("image", "inspect", "--raw", f"oci:{layout}:{tag}")
    assert json.loads(raw.stdout)["config"] == doc["manifest"]["config"]

    deleted = kade("image", "delete", f"{repo}:v2")
    assert deleted.returncode == 0, deleted.stderr
    assert kade("image", "tags", repo).stdout.splitlines() == ["v1"]
    assert kade("image", "delete", f"{repo}@{digest}").returncode == 0
    gone = kade("image", "inspect", f"{repo}:v1")
    assert gone.returncode == 1 and "not found" in gone.stderr and "Traceback" not in gone.stderr

    out = tmp_path / "pulled"
    assert kade("image", "copy", f"oci:{layout}:{tag}", f"{repo}:again").returncode == 0
    pulled = kade("image", "copy", "--output", "json", f"{repo}:again", f"oci:{out}:x")
    assert json.loads(pulled.stdout)["digest"] == digest
    assert all(json.loads(line)["kind"] for line in pulled.stderr.splitlines())  # JSON progress lines


@pytest.mark.parametrize("args, code, text", [
    (["image", "inspect", "Bad/Name"], 2, "lowercase"),
    (["image", "tags", "127.0.0.1:1/x:tag"], 2, "repository only"),
    (["image", "delete", "127.0.0.1:1/x"], 2, "say what to delete"),
    (["image", "copy", "a"], 2, "usage"),
    (["image", "inspect", "127.0.0.1:1/nothing:v1"], 1, "cannot reach registry 127.0.0.1:1"),
    (["image", "inspect", "oci:/nonexistent/layout:v1"], 1, "not an OCI image layout"),
    (["image", "copy", "127.0.0.1:1/x:v1", "oci:/proc/kade-test:v1"], 1, "cannot create an OCI layout at /proc/kade-test"),
    (["image", "tags", "--ca-file", "/nonexistent/ca.pem", "registry.example/x"], 2,
     "argument --ca-file: /nonexistent/ca.pem: no such file"),
])
def test_failures_exit_codes_without_traceback(args, code, text):
    done = kade(*args)
    assert done.returncode == code, done.stderr
    assert text in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("sub", ["inspect", "tags", "copy", "delete"])
def test_help(sub):
    done = kade("image", sub, "--help")
    assert done.returncode == 0 and "--insecure-registry" in done.stdout


def test_auth_failure_and_auth_file(registry_basic, sample_layout, tmp_path):
    layout, tag, _ = sample_layout
    dst = f"{registry_basic.host}/cli/auth:v1"
    denied = kade("image", "copy", f"oci:{layout}:{tag}", dst)
    assert denied.returncode == 1 and "anonymous" in denied.stderr and "Traceback" not in denied.stderr
    auth = base64.b64encode(f"{registry_basic.username}:{registry_basic.password}".encode()).decode()
    (tmp_path / "auth.json").write_text(json.dumps({"auths": {registry_basic.host: {"auth": auth}}}))
    ok = kade("image", "copy", f"oci:{layout}:{tag}", dst, env={"REGISTRY_AUTH_FILE": str(tmp_path / "auth.json")})
    assert ok.returncode == 0, ok.stderr
    assert registry_basic.password not in ok.stderr + ok.stdout
