"""Registries and images whose JSON nests deeper than Python's recursion limit, on a real registry
(docker-registry keeps a config blob as it is, and a manifest's unknown fields as they are): every
kade command that reads them says which document it refused, and never crashes with a RecursionError."""
from __future__ import annotations

import hashlib
import io
import json

import pytest

from registry import mediatypes as mt
from registry.client import ClientOptions, RegistryClient
from tests.fixtures.silent import run_kade

DEPTH = 5000   # Go's encoding/json (the registry) takes up to 10,000 levels; Python's json ~1,000


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def _push(host: str, repo: str, tag: str, config: bytes, manifest_extra: bytes = b"") -> None:
    """An image of no layers with this config blob; `manifest_extra` goes in as an unknown field."""
    with RegistryClient(ClientOptions(insecure=(host,))) as client:
        r = client.repository(f"{host}/{repo}")
        cfg = r.upload_blob(io.BytesIO(config), "sha256:" + hashlib.sha256(config).hexdigest(), len(config))
        doc = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
               "config": {"mediaType": mt.OCI_CONFIG, "digest": cfg.digest, "size": cfg.size}, "layers": []}
        body = json.dumps(doc).encode()
        if manifest_extra:
            body = body[:-1] + b', "x": ' + manifest_extra + b"}"
        r.put_manifest(tag, body, mt.OCI_MANIFEST)


GOOD_CONFIG = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                          "rootfs": {"type": "layers", "diff_ids": []}}).encode()
DEEP_CONFIG = GOOD_CONFIG[:-1] + b', "x": ' + _nested(DEPTH) + b"}"


@pytest.mark.parametrize("case", ["deep-config", "deep-manifest"])
@pytest.mark.parametrize("command", ["inspect", "build", "copy"])
def test_deeply_nested_json_is_refused_by_name(registry, tmp_path, case, command):
    repo = f"hostile/json-{case}"
    if case == "deep-config":
        _push(registry.host, repo, "1", DEEP_CONFIG)
    else:
        _push(registry.host, repo, "1", GOOD_CONFIG, manifest_extra=_nested(DEPTH))
    ref = f"{registry.host}/{repo}:1"
    insecure = ["--insecure-registry", registry.host]
    if command == "inspect":
        run = run_kade("image", "inspect", *insecure, ref)
    elif command == "copy":
        run = run_kade("image", "copy", *insecure, ref, f"{registry.host}/hostile/copied-{case}:1")
    else:
        (tmp_path / "Dockerfile").write_text(f"FROM {ref}\nENV A=1\n")
        run = run_kade("build", str(tmp_path), *insecure, "--cache-dir", str(tmp_path / "cache"),
                       "--tag", f"{registry.host}/hostile/built-{case}:1")
    assert "Traceback" not in run.stderr and "RecursionError" not in run.stderr, run.stderr[-3000:]
    if command == "copy" and case == "deep-config":
        return   # a copy moves the config blob as bytes: it may succeed
    assert run.returncode != 0, run.stdout[-2000:]
    assert "nested deeper" in run.stderr, run.stderr[-3000:]


@pytest.mark.parametrize("command", ["inspect", "build"])
def test_a_config_blob_of_more_than_kade_reads_is_refused_before_it_is_read(registry, tmp_path, command):
    """A manifest anyone who can push may write can name a config of gigabytes: kade read it all into
    memory. A config past MAX_CONFIG_BYTES is refused by its descriptor's size, naming it, before its
    blob (valid JSON, 17 MiB of labels: the build went on with it) is downloaded."""
    from registry.imageconfig import MAX_CONFIG_BYTES

    labels = {f"l{i}": "x" * 1000 for i in range(MAX_CONFIG_BYTES // 1000 + 10)}
    huge = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Labels": labels},
                       "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    assert len(huge) > MAX_CONFIG_BYTES
    _push(registry.host, f"hostile/big-config-{command}", "1", huge)
    ref = f"{registry.host}/hostile/big-config-{command}:1"
    insecure = ["--insecure-registry", registry.host]
    if command == "inspect":
        run = run_kade("image", "inspect", *insecure, ref)
    else:
        (tmp_path / "Dockerfile").write_text(f"FROM {ref}\nENV A=1\n")
        run = run_kade("build", str(tmp_path), *insecure, "--cache-dir", str(tmp_path / "cache"),
                       "--tag", f"{registry.host}/hostile/built-big:1")
    digest = "sha256:" + hashlib.sha256(huge).hexdigest()
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert f"{len(huge)} bytes, more than the {MAX_CONFIG_BYTES}" in run.stderr and digest in run.stderr, run.stderr
    assert not (tmp_path / "cache" / "blobs" / "sha256" / digest.split(":")[1]).exists()


@pytest.mark.parametrize("runtime", [{"Shell": 5}, {"Env": "A=1"}, {"OnBuild": [1]}, {"ExposedPorts": ["80/tcp"]}])
def test_a_base_whose_config_fields_have_the_wrong_types_is_refused_by_name(registry, tmp_path, runtime):
    """Each crashed a build (TypeError, ValueError, AttributeError); Docker and BuildKit refuse them."""
    field = next(iter(runtime))
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": runtime,
                         "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    _push(registry.host, f"hostile/typed-{field.lower()}", "1", config)
    ref = f"{registry.host}/hostile/typed-{field.lower()}:1"
    (tmp_path / "Dockerfile").write_text(f"FROM {ref}\nEXPOSE 81\nRUN true\n")
    run = run_kade("build", str(tmp_path), "--insecure-registry", registry.host, "--cache-dir", str(tmp_path / "c"),
                   "--tag", f"{registry.host}/hostile/typed-out:1")
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert f"Dockerfile:1: FROM {ref}: image config: config.{field} must be" in run.stderr, run.stderr
