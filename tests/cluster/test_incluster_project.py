"""A multi-image kade.yaml project built through builder pods on the real test cluster: dependency
waves, a step two images share built once, a multi-stage image on top of another image of the
project; then the local backend, pointed at the same repository, finds every step already there and
publishes the same digests (same keys, same step images, SOURCE_DATE_EPOCH set)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.fixtures.incluster import EPOCH, builder_pods, image_file, records, wait_running_pod

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[2]

KADE_YAML = """
project: multi
images:
  tools:
    context: tools
    args: {BASE: "{{ env.MULTI_BASE }}"}
  app:
    context: app
    args: {BASE: "{{ env.MULTI_BASE }}"}
  final:
    context: final
    args: {BASE: "{{ env.MULTI_BASE }}"}
    dependencies:
      - image: app
        args: {APP: ref, APP_DIGEST: digest}
"""
FINAL = """ARG BASE
ARG APP
FROM ${BASE} AS notes
RUN echo "notes for the app" > /notes.txt

FROM ${APP}
ARG APP_DIGEST
COPY --from=notes /notes.txt /srv/notes.txt
RUN echo "$APP_DIGEST" > /srv/app-digest
"""


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@kade.invalid", *args],
                   check=True, capture_output=True)


def make_project(root: Path) -> Path:
    for sub in ("tools", "app", "final"):
        (root / sub).mkdir(parents=True)
    (root / "kade.yaml").write_text(KADE_YAML)
    # tools and app start with the same RUN on the same base: one step key, built once
    (root / "tools" / "Dockerfile").write_text("ARG BASE\nFROM ${BASE}\nRUN echo shared > /shared\n"
                                               "RUN echo tools > /tools\n")
    (root / "app" / "Dockerfile").write_text("ARG BASE\nFROM ${BASE}\nRUN echo shared > /shared\n"
                                             "COPY app.txt /srv/app.txt\n")
    (root / "app" / "app.txt").write_text(f"app {uuid.uuid4().hex}\n")  # new content: really built
    (root / "final" / "Dockerfile").write_text(FINAL)
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "multi")
    return root


def project_command(env, project: Path, repo: str, *extra: str) -> tuple[list[str], dict[str, str]]:
    cmd = [sys.executable, "-m", "kade", "build", "--dir", str(project), "--repo", f"{env.registry}/{repo}",
           "--insecure-registry", env.registry, "--output", "json", *extra]
    return cmd, {**os.environ, "SOURCE_DATE_EPOCH": EPOCH, "MULTI_BASE": env.base_image,
                 "KADE_CACHE_DIR": str(project.parent / "cache")}


def kade_project(env, project: Path, repo: str, *extra: str) -> subprocess.CompletedProcess:
    cmd, environ = project_command(env, project, repo, *extra)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=str(REPO), env=environ)


def in_pods(env) -> list[str]:
    return ["--backend", "kubernetes", "--namespace", env.namespace, "--cache-pvc", env.cache_pvc,
            "--builder-image", env.image, "--kubeconfig", env.kubeconfig, "--lease-seconds", "6"]


def report(done: subprocess.CompletedProcess) -> dict:
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout[done.stdout.index("{\n"):])


def test_a_multi_image_project_builds_through_pods_like_the_local_backend(builder_env, tmp_path):
    project = make_project(tmp_path / "repo")
    repo = f"incluster/multi-{uuid.uuid4().hex[:8]}"
    done = kade_project(builder_env, project, repo, *in_pods(builder_env))
    pods = report(done)
    # 2 (tools) + 2 (app) + 3 (final: notes RUN, COPY, RUN) steps, the shared RUN once: 6 ran
    assert pods["steps"]["built"] == 6, pods
    started = [r["message"] for r in records(done) if r["kind"] == "pod" and "started" in r["message"]]
    assert {m.split()[0] for m in started} >= {"[tools/0]", "[app/0]", "[final/notes]", "[final/1]"}, started

    final = pods["images"]["final"]
    final_repo = final["repository"].removeprefix(builder_env.registry + "/")
    app_digest = pods["images"]["app"]["digest"]
    assert image_file(builder_env.registry, final_repo, final["digest"], "srv/app-digest").decode().strip() == app_digest
    assert image_file(builder_env.registry, final_repo, final["digest"], "srv/notes.txt") == b"notes for the app\n"

    # the local backend on the same repository: every step is there, and the same images come out
    local = report(kade_project(builder_env, project, repo))
    assert local["steps"]["built"] == 0, local
    assert {n: i["digest"] for n, i in local["images"].items()} == {n: i["digest"] for n, i in pods["images"].items()}


def test_sigterm_during_a_project_build_deletes_the_pods_of_every_image(builder_env, tmp_path):
    """The images of a wave build in worker threads: the command's cancellation reaches each of them."""
    project = make_project(tmp_path / "repo")
    for sub in ("tools", "app"):
        dockerfile = project / sub / "Dockerfile"
        dockerfile.write_text(dockerfile.read_text() + f"RUN sleep 60 # {sub}\n")
    git(project, "commit", "-qam", "slow")
    cmd, environ = project_command(builder_env, project, f"incluster/slow-{uuid.uuid4().hex[:8]}",
                                   *in_pods(builder_env))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(REPO),
                            env=environ)
    try:
        wait_running_pod(builder_env)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err[-2000:]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and [p for p in builder_pods(builder_env)[1] if not p.metadata.deletion_timestamp]:
        time.sleep(0.5)
    assert not [p for p in builder_pods(builder_env)[1] if not p.metadata.deletion_timestamp], err[-2000:]
