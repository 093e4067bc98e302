"""`kade build --backend kubernetes` end to end on the real test cluster: stages run as pods of
kade's own builder image (built by kade), push step images to the cluster's registry, and the
result matches the local backend (same keys, same digests) with SOURCE_DATE_EPOCH set."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.cluster

EPOCH = "1700000000"

MULTI = """\
FROM {base} AS deps
RUN mkdir -p /opt/deps && echo dep > /opt/deps/a.txt && seq 1 3 > /opt/deps/seq

FROM {base} AS tool
COPY tool.sh /usr/local/bin/tool
RUN /usr/local/bin/tool > /opt/tool.out && test -c /dev/null

FROM {base}
COPY --from=deps /opt/deps /opt/deps
COPY --from=tool /opt/tool.out /srv/tool.out
COPY app/ /srv/app/
RUN cat /srv/app/hello.txt /opt/deps/seq > /srv/joined && ls /srv > /srv/listing
CMD ["cat", "/srv/joined"]
"""


def write_context(root: Path, dockerfile: str, base: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "Dockerfile").write_text(dockerfile.format(base=base))
    (root / "tool.sh").write_text("#!/bin/sh\necho tool-ran\n")
    (root / "tool.sh").chmod(0o755)
    (root / "app").mkdir(exist_ok=True)
    (root / "app" / "hello.txt").write_text("hello from the context\n")
    (root / "unused.bin").write_bytes(os.urandom(4096))  # never needed by a step: never uploaded
    return root


def kade_build(env, context: Path, tag: str, *extra: str, backend: str = "kubernetes",
               timeout: float = 240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "kade", "build", str(context), "-t", tag, "--insecure-registry", env.registry,
           "--output", "json"]
    if backend == "kubernetes":
        cmd += ["--backend", "kubernetes", "--namespace", env.namespace, "--cache-pvc", env.cache_pvc,
                "--builder-image", env.image, "--kubeconfig", env.kubeconfig, "--lease-seconds", "6"]
    cmd += list(extra)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "SOURCE_DATE_EPOCH": EPOCH, "KADE_CACHE_DIR": str(context.parent / "cache")})


def records(proc: subprocess.CompletedProcess) -> list[dict]:
    out = []
    for line in proc.stderr.splitlines() + proc.stdout.splitlines():
        if line.startswith("{") and '"kind"' in line:
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def result(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    start = proc.stdout.index("{\n")
    return json.loads(proc.stdout[start:])


def stage_keys(registry: str, repo: str) -> dict[str, str]:
    """step key -> manifest digest of every step image in a stages repo."""
    tags = requests.get(f"http://{registry}/v2/{repo}/tags/list", timeout=10).json().get("tags") or []
    out = {}
    for t in tags:
        if len(t) == 64:
            r = requests.head(f"http://{registry}/v2/{repo}/manifests/{t}", timeout=10,
                              headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
            out[t] = r.headers["Docker-Content-Digest"]
    return out


def unique(name: str) -> str:
    return f"incluster/{name}-{uuid.uuid4().hex[:8]}"


def test_multistage_build_in_pods_matches_local_and_reuses_everything(builder_env, tmp_path):
    ctx = write_context(tmp_path / "ctx", MULTI, builder_env.base_image)
    repo = unique("multi")
    tag = f"{builder_env.registry}/{repo}:v1"
    first = kade_build(builder_env, ctx, tag)
    out = result(first)
    recs = records(first)
    pods = {r["message"].split()[0] for r in recs if r["kind"] == "pod" and "started" in r["message"]}
    assert {"[default/deps]", "[default/tool]", "[default/2]"} <= pods, pods
    assert out["steps"]["built"] == 8, out
    # output streamed from the pods, prefixed with image and stage
    assert any(r["kind"] == "output" and r["message"].startswith("[default/tool]") for r in recs) or \
        "[default/tool]" in first.stderr
    uploads = [r["message"] for r in recs if r["kind"] == "upload"]
    assert uploads and "2 entries" in uploads[0], uploads  # tool.sh, app/hello.txt: not unused.bin

    # the same Dockerfile with the local backend: same step keys, same step image digests
    local_repo = unique("multi-local")
    local = kade_build(builder_env, ctx, f"{builder_env.registry}/{local_repo}:v1", backend="local")
    lout = result(local)
    in_cluster = stage_keys(builder_env.registry, repo + "-stages")
    on_host = stage_keys(builder_env.registry, local_repo + "-stages")
    assert set(in_cluster) == set(on_host) and len(in_cluster) == 8
    assert in_cluster == on_host
    assert lout["images"][0]["digest"] != "" and out["images"][0]["digest"].startswith("sha256:")

    # a second in-cluster build reuses every step: no pod at all
    second = kade_build(builder_env, ctx, tag)
    out2 = result(second)
    assert out2["steps"] == {"built": 0, "cached": 8}
    assert not [r for r in records(second) if r["kind"] in ("pod", "upload")]
