"""The hostile file-operation cases of tests/integration/test_hostile_fileops.py, in builder pods on
the real test cluster (`kade build --backend kubernetes`), where what a symlink out of the rootfs
would reach is the pod's ServiceAccount token and the shared cache PVC: a stage's symlink to the
token, read by COPY --from or a bind mount; heredocs, COPY and WORKDIR through symlinks to /cache;
ignored context files behind a bind mount and in the context upload. And reproducibility: two fresh
clones (other mtimes, other umask) built in pods and locally give one digest."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster.test_incluster_hostile import assert_nothing_escaped, victim  # noqa: F401 - fixture
from tests.fixtures.canary import assert_secret_absent, layer_tar_files
from tests.fixtures.clones import fresh_clone
from tests.fixtures.incluster import get_blob, kade_build, pushed_blobs, records, result, unique

pytestmark = pytest.mark.cluster

TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
JWT = b"eyJhbGciOi"  # how every ServiceAccount token (a JWT) begins
EVIL = "FROM {base} AS evil\nRUN {setup}\n"

CASES = {
    "copy-from-a-symlink-to-the-token": (
        EVIL.replace("{setup}", f"ln -s {TOKEN} /tok") + "FROM {base}\nCOPY --from=evil /tok /leak\n", "not found"),
    "copy-from-a-symlink-to-the-token-dir": (
        EVIL.replace("{setup}", f"ln -s {os.path.dirname(TOKEN)} /sa") + "FROM {base}\nCOPY --from=evil /sa/ /leak/\n",
        "not found"),
    "bind-from-a-symlink-to-the-token": (
        EVIL.replace("{setup}", f"ln -s {TOKEN} /tok")
        + "FROM {base}\nRUN --mount=type=bind,from=evil,source=/tok,target=/m cat /m\n", "not found"),
    "copy-from-the-stage-s-own-token-path": (
        EVIL.replace("{setup}", f"mkdir -p {os.path.dirname(TOKEN)} && echo stage-own > {TOKEN} && ln -s {TOKEN} /tok")
        + "FROM {base}\nCOPY --from=evil /tok /leak\n", "ok"),
    "heredoc-through-a-symlink-to-the-cache-pvc": (
        "FROM {base}\nRUN ln -s /cache/pwned-heredoc /victim\nCOPY <<EOF /victim\npwned\nEOF\n", "ok"),
    "copy-into-a-symlink-to-the-cache-pvc": (
        "FROM {base}\nRUN ln -s /cache /d\nCOPY a.txt /d/pwned-copy\n", "ok"),
    "workdir-through-a-symlink-to-the-cache-pvc": (
        "FROM {base}\nRUN ln -s /cache /w\nWORKDIR /w/pwned-workdir\n", "ok"),
    "cache-mount-through-a-symlink-to-the-cache-pvc": (
        "FROM {base}\nRUN ln -s /cache /c\nRUN --mount=type=cache,target=/c/pwned-mount touch /c/pwned-mount/x\n",
        "ok"),
    "ignored-context-behind-a-bind-mount": (
        "FROM {base}\nRUN --mount=type=bind,target=/ctx ls -laR /ctx > /listing; cat /ctx/secret.env "
        "/ctx/.git/config; true\n", "ok"),
}


def _context(root: Path, dockerfile: str, secret: bytes) -> Path:
    (root / ".git").mkdir(parents=True)
    (root / "a.txt").write_text("a\n")
    (root / "secret.env").write_bytes(secret)
    (root / ".git" / "config").write_bytes(secret)
    (root / ".dockerignore").write_text(".git\nsecret.env\n")
    (root / "Dockerfile").write_text(dockerfile)
    return root


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_file_operation_in_a_pod(case, builder_env, tmp_path, victim, host_secret):  # noqa: F811
    template, expect = CASES[case]
    ctx = _context(tmp_path / "ctx", template.replace("{base}", builder_env.base_image), host_secret.value)
    repo = unique(case[:40])
    done = kade_build(builder_env, ctx, f"{builder_env.registry}/{repo}:v1")
    assert_nothing_escaped(builder_env, victim)
    uploads = [r for r in records(done) if r["kind"] == "upload" and r.get("digest")]
    blobs = pushed_blobs(builder_env.registry, repo + "-stages", tuple(u["digest"] for u in uploads))
    blobs.update(pushed_blobs(builder_env.registry, repo))
    for marker in (JWT, host_secret.value):
        assert_secret_absent(marker, done.stdout, done.stderr, list(blobs.values()))
    if expect != "ok":
        assert done.returncode != 0 and expect in done.stderr, done.stderr[-3000:]
        return
    result(done)
    for upload in uploads:  # what reached the pod of the context: never an ignored file
        names = set(layer_tar_files(get_blob(builder_env.registry, repo + "-stages", upload["digest"])))
        assert not names & {"secret.env", ".git", ".git/config"}, names
    if case == "ignored-context-behind-a-bind-mount":
        assert uploads and uploads[0]["entries"] == 3  # Dockerfile, .dockerignore, a.txt


RUN_HEAVY = """\
FROM {base} AS gen
WORKDIR /work/deep
COPY src/ ./src/
RUN mkdir -p /opt/app/bin && cp -r src /opt/app/ && echo built > /opt/app/stamp && ln -s ../stamp /opt/app/bin/s \\
 && chmod 0750 /opt/app/bin && useradd -u 1234 -M builder && mkdir /opt/app/var && chown 1234 /opt/app/var
USER 1234
RUN umask 077 && echo private > /tmp/private && mkdir -p /tmp/b && echo b > /tmp/b/f
FROM {base}
COPY --from=gen /opt/app /opt/app
COPY --chmod=0755 src/run.sh /usr/local/bin/run
COPY <<EOF /etc/app.conf
mode=prod
EOF
RUN --mount=type=cache,target=/cache echo n >> /cache/n && cp /opt/app/stamp /stamp
"""


def _build(env, clone: Path, tag: str, backend: str, umask: int, epoch: str) -> str:
    cmd = [sys.executable, "-m", "kade", "build", str(clone), "-t", tag, "--insecure-registry", env.registry,
           "--output", "json"]
    if backend == "kubernetes":
        cmd += ["--backend", "kubernetes", "--namespace", env.namespace, "--cache-pvc", env.cache_pvc,
                "--builder-image", env.image, "--kubeconfig", env.kubeconfig, "--lease-seconds", "6"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, preexec_fn=lambda: os.umask(umask),
                          env={**os.environ, "SOURCE_DATE_EPOCH": epoch,
                               "KADE_CACHE_DIR": str(clone.parent / f"cache-{clone.name}")})
    return result(done)["images"][0]["digest"]


def test_fresh_clones_give_one_digest_in_pods_and_locally(builder_env, tmp_path):
    origin = tmp_path / "origin"
    (origin / "src").mkdir(parents=True)
    (origin / "Dockerfile").write_text(RUN_HEAVY.replace("{base}", builder_env.base_image))
    (origin / "src" / "run.sh").write_text("#!/bin/sh\nexec cat /etc/app.conf\n")
    (origin / "src" / "main.txt").write_text("main\n")
    git = ["git", "-C", str(origin), "-c", "user.name=t", "-c", "user.email=t@kade.invalid"]
    subprocess.run(git + ["init", "-q", "-b", "main"], check=True)
    subprocess.run(git + ["add", "-A"], check=True)
    subprocess.run(git + ["commit", "-q", "-m", "repro"], check=True)
    epoch = subprocess.run(git + ["show", "-s", "--format=%ct"], capture_output=True, text=True).stdout.strip()
    digests = {}
    for i, (backend, umask) in enumerate([("kubernetes", 0o022), ("kubernetes", 0o077), ("local", 0o027)]):
        clone = fresh_clone(origin, tmp_path / f"clone{i}", seed=i)
        digests[f"{backend}-{i}"] = _build(builder_env, clone, f"{builder_env.registry}/{unique(f'repro{i}')}:v1",
                                           backend, umask, epoch)
    assert len(set(digests.values())) == 1, json.dumps(digests, indent=1)
