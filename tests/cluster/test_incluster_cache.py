"""The cache PVC of builder pods on the real test cluster: later pods read the layer dirs that
earlier ones kept there, and the prune CronJob of k8s-manifests/builder empties what no build used
for long, waiting for running builds."""
from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml

from tests.fixtures.cluster import kubectl, wait_job
from tests.fixtures.incluster import (MANIFESTS, builder_namespace, kade_build, records, result, unique,
                                     write_context)

pytestmark = pytest.mark.cluster

CHAIN = """\
FROM {base} AS first
RUN echo one > /one.txt

FROM {base}
COPY --from=first /one.txt /srv/one.txt
RUN cat /srv/one.txt > /srv/copy.txt
"""


def unpack_records(recs: list[dict], stage: str) -> list[dict]:
    return [r for r in recs if r["kind"] == "unpack" and r["message"].startswith(f"[default/{stage}]")]


def test_later_pods_read_the_layer_dirs_earlier_pods_kept_on_the_cache_pvc(kube_cluster, builder_image, tmp_path):
    with builder_namespace(kube_cluster, builder_image) as env:  # its own, empty cache PVC
        ctx = write_context(tmp_path / "ctx", CHAIN, env.base_image)
        done = kade_build(env, ctx, f"{env.registry}/{unique('shared')}:v1")
        result(done)
        recs = records(done)
        first = unpack_records(recs, "first")
        final = unpack_records(recs, "1")
        # the first pod found an empty PVC: it unpacked the base layer into the layer store ...
        assert [(r["reused"], r["unpacked"]) for r in first] == [(0, 1)], first
        kept = {p.name: json.loads((p / "layer.json").read_text())
                for p in (env.cache_dir / "tenants").glob("*/trees/layers/*")   # the build's tenant's
                if (p / "layer.json").is_file()}
        # ... and every step's upper dir became a layer dir too (user-namespace pods: overlay snapshots):
        # the base, the first stage's RUN, the last stage's COPY and RUN
        assert len(kept) == 4 and sum(r["parent"] is None for r in kept.values()) == 1, kept
        # the next pod read both: the base for its own rootfs, base + RUN for COPY --from=first; no copy
        assert sorted((r["reused"], r["unpacked"]) for r in final) == [(1, 0), (2, 0)], final


def _aged(path: Path, days: float) -> Path:
    then = time.time() - days * 86400
    os.utime(path, (then, then), follow_symlinks=False)
    return path


def _render_prune_cronjob(tmp_path: Path, env) -> dict:
    """k8s-manifests/builder through kustomize, with the settings a user makes: namespace and image."""
    name, _, digest = env.image.partition("@")
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(json.dumps({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "namespace": env.namespace,
        "resources": [os.path.relpath(MANIFESTS, overlay)],
        "images": [{"name": "registry.example.com/kade/builder", "newName": name, "digest": digest}]}))
    done = subprocess.run([kubectl(), "kustomize", str(overlay)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return next(d for d in yaml.safe_load_all(done.stdout) if d and d["kind"] == "CronJob")


def test_the_prune_cronjob_empties_what_no_build_used_and_waits_for_running_builds(
        kube_cluster, builder_image, tmp_path):
    from kubernetes import client, config

    from builder.cache import LocalCache

    with builder_namespace(kube_cluster, builder_image) as env:
        cache = LocalCache(env.cache_dir)
        old_blob = cache.root / "blobs" / "sha256" / ("a" * 64)
        old_blob.write_bytes(b"old")
        _aged(old_blob, 10)
        new_blob = cache.root / "blobs" / "sha256" / ("b" * 64)
        new_blob.write_bytes(b"new")
        # an unpacked tree as images have them: a directory of another owner that only it may enter
        old_tree = cache.rootfs_store.root / ("sha256-" + "c" * 64)   # the default tenant's trees
        (old_tree / "home" / "app").mkdir(parents=True)
        (old_tree / "home" / "app" / "f").write_text("x")
        os.chown(old_tree / "home" / "app" / "f", 1234, 1234)
        os.chown(old_tree / "home" / "app", 1234, 1234)
        (old_tree / "home" / "app").chmod(0o500)
        _aged(old_tree, 10)
        fresh_tree = cache.rootfs_store.root / ("sha256-" + "d" * 64)
        fresh_tree.mkdir()
        old_mount = _aged(cache.mount_dir("apt"), 10)

        cronjob = _render_prune_cronjob(tmp_path, env)
        job = {"apiVersion": "batch/v1", "kind": "Job",
               "metadata": {"name": f"prune-{uuid.uuid4().hex[:6]}", "namespace": env.namespace},
               "spec": cronjob["spec"]["jobTemplate"]["spec"]}
        api = config.new_client_from_config(config_file=env.kubeconfig)
        batch = client.BatchV1Api(api)
        with cache.lock("global", shared=True):  # a build is running (pods hold this lock shared)
            batch.create_namespaced_job(env.namespace, job)
            time.sleep(8)
            assert not batch.read_namespaced_job_status(job["metadata"]["name"], env.namespace).status.succeeded
            assert old_blob.exists() and old_tree.exists()
        logs = wait_job(api, env.namespace, job["metadata"]["name"], 120)
        assert json.loads(logs[logs.index("{"):])["removed"] == 3, logs
        assert not old_blob.exists() and not old_tree.exists() and not old_mount.exists()
        assert new_blob.exists() and fresh_tree.exists()


def test_no_cache_runs_the_pods_again_though_the_stages_repo_has_every_step(kube_cluster, builder_image, tmp_path):
    """--no-cache with pods: the steps a first build pushed are not taken as 'pushed meanwhile by another
    build' (the check after each step Lease), they run again in a pod."""
    with builder_namespace(kube_cluster, builder_image) as env:
        ctx = write_context(tmp_path / "ctx", "FROM {base}\nRUN echo again > /again.txt\n", env.base_image)
        tag = f"{env.registry}/{unique('nocache')}:v1"
        result(kade_build(env, ctx, tag))
        rebuilt = kade_build(env, ctx, tag, "--no-cache")
        result(rebuilt)
        again = records(rebuilt)
        # (identical again under SOURCE_DATE_EPOCH: its attestations may be "cached", never a step)
        assert not [r for r in again if r["kind"] == "reused" or (r["kind"] == "cached" and "step" in r)], again
        assert [r for r in again if r["kind"] == "pod" and r["message"].endswith("started")], again
        assert [r for r in again if r["kind"] == "step-done" and "echo again > /again.txt" in r["message"]], again
