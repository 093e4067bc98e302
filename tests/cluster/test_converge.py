"""`kade converge` end to end on the test cluster, with the example project (examples/shop) in a temp
git repository: first converge, a commit that changes one image (only its changed steps rebuild and
only its Deployment rolls), and a commit with a broken image that fails and is rolled back. The
report and the cluster must agree on the digests that run.

Images go to a repository shared by test runs (REGISTRY/kade-test/shop), so the python3 base image is
built once per cluster registry; each run changes the example with a fresh token, so the changed images
are really built every time.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "shop"


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=kade test", "-c", "user.email=test@kade.invalid", *args],
                   check=True, capture_output=True)


def commit_all(repo: Path, message: str) -> None:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)


def kade(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kade", *args], capture_output=True, text=True, env=env,
                          cwd=str(REPO), timeout=600)


def deployment(apps, namespace: str, name: str):
    return apps.read_namespaced_deployment(name, namespace)


def running_digests(core, namespace: str, app: str, ref: str) -> set[str]:
    """Digests (containerd's imageID) of the ready containers of `app` whose pod asks for image `ref`
    (pods of an older ReplicaSet that are still going away are not counted)."""
    out = set()
    for pod in core.list_namespaced_pod(namespace, label_selector=f"app={app}").items:
        wanted = {c.name for c in pod.spec.containers if c.image == ref}
        for status in pod.status.container_statuses or []:
            if status.name in wanted and status.ready:
                out.add((status.image_id or "").rpartition("@")[2])
    return out


def revision_of(registry: str, repository: str, digest: str) -> str:
    from registry.client import ClientOptions, RegistryClient

    with RegistryClient(ClientOptions(insecure=(registry,))) as client:
        body, _ = client.repository(repository).get_manifest(digest)
    return json.loads(body)["annotations"]["org.opencontainers.image.revision"]


def test_converge_change_one_image_then_roll_back_a_broken_one(kube_cluster, tmp_path):
    from kubernetes import client

    api = kube_cluster.api_client()
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    project = tmp_path / "shop"
    shutil.copytree(EXAMPLE, project)
    git(project, "init", "-q", "-b", "main")
    commit_all(project, "shop")
    env_name = f"t{secrets.token_hex(3)}"
    namespace = f"shop-{env_name}"
    env = {**os.environ, "KADE_BASE_IMAGE": kube_cluster.base_image, "CI": "1"}
    common = ["--dir", str(project), "--env", env_name, "--repo", f"{kube_cluster.registry}/kade-test/shop",
              "--insecure-registry", kube_cluster.registry, "--kubeconfig", kube_cluster.kubeconfig,
              "--timeout", "150s", "--add-tag", "{{ image }}-{{ git.branch }}"]
    token = secrets.token_hex(4)
    try:
        # 1. First converge: a fresh page so web is new; base and worker may come from the registry.
        (project / "web" / "site" / "index.txt").write_text(f"Welcome to the shop ({token}).\n")
        commit_all(project, "first")
        first = kade("converge", *common, "--report", str(tmp_path / "r1.json"), env=env)
        assert first.returncode == 0, first.stderr[-3000:]
        r1 = json.loads((tmp_path / "r1.json").read_text())
        assert r1["ok"], r1
        assert set(r1["images"]) == {"base", "web", "worker"}
        for name in ("web", "worker"):
            dep = deployment(apps, namespace, name)
            assert dep.spec.template.spec.containers[0].image == r1["images"][name]["ref"]
            assert running_digests(core, namespace, name, r1["images"][name]["ref"]) == {r1["images"][name]["digest"]}
        assert "web-main" in r1["images"]["web"]["tags"]
        worker_before = deployment(apps, namespace, "worker")
        web_before = deployment(apps, namespace, "web")

        # 2. A commit changing only web's site: web's changed steps rebuild, base and worker are reused,
        #    only the web Deployment rolls.
        (project / "web" / "site" / "about.txt").write_text(f"About the shop, revision {token}.\n")
        commit_all(project, "change the about page")
        second = kade("converge", *common, "--report", str(tmp_path / "r2.json"), env=env)
        assert second.returncode == 0, second.stderr[-3000:]
        r2 = json.loads((tmp_path / "r2.json").read_text())
        assert r2["commit"] != r1["commit"]
        for name in ("base", "worker"):
            assert r2["images"][name]["reused"], (name, r2, second.stderr[-3000:])
            assert r2["images"][name]["steps"]["built"] == 0
            assert r2["images"][name]["digest"] == r1["images"][name]["digest"]
        web = r2["images"]["web"]
        assert not web["reused"], r2
        assert web["digest"] != r1["images"]["web"]["digest"]
        # site stage: WORKDIR cached, COPY site/ and RUN rebuilt; final stage: LABEL, ENV, WORKDIR cached,
        # COPY --from and the 5 steps after it (their parent changed) rebuilt.
        assert web["steps"] == {"built": 8, "cached": 4, "total": 12}
        worker_after = deployment(apps, namespace, "worker")
        assert worker_after.metadata.generation == worker_before.metadata.generation
        assert worker_after.spec.template.to_dict() == worker_before.spec.template.to_dict()
        web_after = deployment(apps, namespace, "web")
        assert web_after.metadata.generation == web_before.metadata.generation + 1
        assert running_digests(core, namespace, "web", web["ref"]) == {web["digest"]}
        # which commit runs: the running digest's image says which commit built it
        assert revision_of(kube_cluster.registry, web["repository"], web["digest"]) == r2["commit"]
        worker_built_by = revision_of(kube_cluster.registry, r2["images"]["worker"]["repository"],
                                      r2["images"]["worker"]["digest"])
        assert len(worker_built_by) == 40
        assert worker_built_by != r2["commit"]  # reused: built by an earlier commit

        # 3. A broken worker (exits 1 at start): the converge fails and rolls back to revision 2's images.
        (project / "worker" / "work.sh").write_text(f"#!/bin/sh\necho 'worker {token}: broken on purpose'\nexit 1\n")
        commit_all(project, "break the worker")
        third = kade("converge", *common, "--report", str(tmp_path / "r3.json"), env=env)
        assert third.returncode == 1, third.stderr[-3000:]
        assert "rolled back" in third.stdout + third.stderr
        r3 = json.loads((tmp_path / "r3.json").read_text())
        assert not r3["ok"], r3
        assert r3["deploy"]["rolled_back_to"] is not None, r3
        assert r3["images"]["worker"]["steps"]["built"] == 3  # COPY work.sh, RUN chmod, ENTRYPOINT
        restored = deployment(apps, namespace, "worker")
        assert restored.spec.template.spec.containers[0].image == r2["images"]["worker"]["ref"]
        assert running_digests(core, namespace, "worker", r2["images"]["worker"]["ref"]) == {r2["images"]["worker"]["digest"]}
    finally:
        core.delete_namespace(namespace, propagation_policy="Background")
