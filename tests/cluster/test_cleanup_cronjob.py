"""End to end: the cleanup CronJob of k8s-manifests/cleanup, rendered with kustomize (an overlay that
sets only what a user sets: namespace, name suffix, kade's image, repository, git URL and credentials,
and --insecure-registry for a plain-HTTP registry), runs kade's own image (images/builder, built by
kade) in the test cluster and deletes exactly the expected tags of a repository, while the images two
running Deployments use (one by tag, one by digest) survive; afterwards the registry's own
`garbage-collect` (registry read-only meanwhile) frees the space and the survivors still pull.

The cleanup target is a registry of its own (docker-registry on the node address 10.245.0.1, a free
port, its own storage), so the shared cluster registry is never made read-only. containerd only pulls
from the shared registry (10.245.0.1:5000, see /var/lib/kade-cluster/containerd.toml), so kade's
image and the Deployments' images come from there: the Deployments run byte-identical copies of two
target images (same repository path, same digest) — in-use matching ignores the registry host for
tags and protects a digest in every repository (docs/cleanup.md). The git history the job reads is
served over smart HTTP (`git http-backend`) with basic auth on the node address; the job reads the
credentials from the git Secret through git's credential store, as the manifests set it up.
"""
from __future__ import annotations

import hashlib
import json
import secrets
import shutil
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from kubernetes import client

from registry.client import ClientOptions, RegistryClient
from registry.copy import copy_image
from registry.errors import RegistryError
from registry.records import BuildRecord, RecordImage, push_record
from tests.fixtures.cluster import kubectl, wait_job
from tests.fixtures.cleanup import (GitHistory, cleanup_overlay, delete_cluster_rbac, job_report, serve_git_http,
                                    sleeping_deployment, wait_running)
from tests.fixtures.registry import RegistryServer, push_test_image

pytestmark = pytest.mark.cluster
NODE_ADDRESS = "10.245.0.1"  # the node's own address: reachable from this host and from pods
TIMEOUT_S = 150
DAY = 86400


def _run(argv: list[str], **kw) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, **kw)
    assert done.returncode == 0, f"{' '.join(argv)} failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _du(path: Path) -> int:
    return int(_run(["du", "-sb", str(path)]).split()[0])


def _blob_bytes(seed: str, size: int = 256 * 1024) -> bytes:
    """Incompressible, distinct per seed: a deleted image's layer is space garbage-collect gets back."""
    block = hashlib.sha256(seed.encode()).digest()
    out = bytearray()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:size])


def test_cleanup_cronjob_deletes_exactly_the_expected_tags_then_gc_frees_space(
        kube_cluster, kube_namespace, builder_image, tmp_path):
    shared = kube_cluster.registry
    target = RegistryServer(tmp_path / "target-registry", address=NODE_ADDRESS)
    (tmp_path / "target-registry").mkdir()
    target.start()
    try:
        _scenario(kube_cluster, kube_namespace, builder_image, tmp_path, shared, target)
    finally:
        target.stop()


def _scenario(kube_cluster, ns: str, kade_image: str, tmp_path: Path, shared: str, target: RegistryServer) -> None:
    rc = RegistryClient(ClientOptions(insecure=(shared, target.host)))
    path = f"cj-{secrets.token_hex(4)}/app"
    name = f"{target.host}/{path}"
    repo, stages = rc.repository(name), rc.repository(name + "-stages")
    now = int(time.time())
    old = datetime.now(timezone.utc) - timedelta(days=30)

    # --- git: main (13 commits, 20 days old, tag v1.0), feature/x (3 commits in the last 3 days)
    history = GitHistory(tmp_path / "git" / "app")
    mains = [history.commit(f"m{i}", "main", now - 20 * DAY + i * 3600, (f"m{i - 1}",) if i > 1 else ())
             for i in range(1, 14)]
    feats = [history.commit(f"f{i}", "feature/x", now - (4 - i) * DAY, (f"f{i - 1}" if i > 1 else "m13",))
             for i in range(1, 4)]
    history.tag("v1.0", "m5")
    history.write()
    _run(["git", "-C", str(history.path), "config", "uploadpack.allowFilter", "true"])
    sha = history.sha

    # --- images: each build = final image tag(s) + a unique step image + a shared base step + a record
    base_step = "b" * 64
    push_test_image(stages, [_blob_bytes("base-step")], tag=base_step)
    digests: dict[str, str] = {}
    records: dict[str, str] = {}  # final tag -> its build record's tag
    steps: dict[str, str] = {}  # final tag -> its unique step key

    # main-2 and main-3 are runnable (the cluster's base image, one variant each) and exist in the shared
    # registry too, byte for byte, for the Deployments.
    copy_image(rc, kube_cluster.base_image, f"{name}:runnable-base")
    copy_image(rc, kube_cluster.base_image, f"{shared}/{path}:runnable-base")
    base_body, base_desc = repo.get_manifest("runnable-base")
    repo.delete_manifest(base_desc.digest)  # only the variants stay tagged

    def runnable(tag: str) -> str:
        doc = json.loads(base_body)
        doc.setdefault("annotations", {})["io.kade.test.variant"] = tag
        body = json.dumps(doc).encode()
        rc.repository(f"{shared}/{path}").put_manifest(tag, body, base_desc.media_type)
        return repo.put_manifest(tag, body, base_desc.media_type)

    def build(tag: str, commit: str, created: datetime, digest: str | None = None) -> None:
        if digest is None:
            digest = runnable(tag) if tag in ("main-2", "main-3") else \
                push_test_image(repo, [_blob_bytes(f"final {tag}")], tag=tag)[1]
        else:
            body, desc = repo.get_manifest(digest)
            repo.put_manifest(tag, body, desc.media_type)
        key = hashlib.sha256(f"step of {tag}".encode()).hexdigest()
        push_test_image(stages, [_blob_bytes(f"step {tag}")], tag=key)
        steps[tag], digests[tag] = key, digest
        record = BuildRecord(commit, None, created, (RecordImage("default", name, (tag,), digest, (base_step, key)),))
        push_record(stages, record)
        records[tag] = record.tag

    for i, c in enumerate(mains, 1):
        build(f"main-{i}", sha[c], old + timedelta(minutes=i))
    for i, c in enumerate(feats, 1):
        build(f"feat-{i}", sha[c], old + timedelta(minutes=20 + i))
    build("gone-1", "9" * 40, old)  # a commit no branch or tag holds any more
    build("old-alias", "7" * 40, old, digest=digests["main-13"])  # same digest as a kept tag
    build("fresh", "8" * 40, datetime.now(timezone.utc) - timedelta(minutes=10))  # built within 2h
    push_test_image(repo, [_blob_bytes("handmade")], tag="handmade")  # no record: not kade's
    layers = {t: json.loads(repo.get_manifest(d)[0])["layers"][0]["digest"] for t, d in digests.items()}

    # --- the cluster: Deployments run main-2 by tag and main-3 by digest (copies in the shared registry)
    api = kube_cluster.api_client()
    apps, core, batch = client.AppsV1Api(api), client.CoreV1Api(api), client.BatchV1Api(api)
    apps.create_namespaced_deployment(ns, sleeping_deployment("by-tag", f"{shared}/{path}:main-2"))
    apps.create_namespaced_deployment(ns, sleeping_deployment("by-digest", f"{shared}/{path}@{digests['main-3']}"))
    for app in ("by-tag", "by-digest"):
        wait_running(core, ns, app, timeout_s=TIMEOUT_S)

    # What the shipped policy.yaml (the documented defaults) must delete, and nothing else:
    # main keeps its 10 newest images (main-4..13), main-2/main-3 are in use, main-1 goes; feature/x
    # keeps 2 images (feat-2, feat-3); gone-1's commit is in no branch; old-alias goes alone (its digest
    # stays for main-13); fresh was built 10 minutes ago; handmade was never kade's.
    gone = ("main-1", "feat-1", "gone-1")
    expect_deleted = {*gone, "old-alias"}
    # In the stages repo: the records of those builds and the step images only they name.
    expect_deleted_stages = {steps[t] for t in expect_deleted} | {records[t] for t in expect_deleted}
    tags_before, stages_before = set(repo.list_tags()), set(stages.list_tags())
    assert expect_deleted <= tags_before and expect_deleted_stages <= stages_before

    # --- the CronJob, rendered from k8s-manifests/cleanup by kustomize, applied with kubectl
    kubectl_cmd = [kubectl(), "--kubeconfig", kube_cluster.kubeconfig]
    suffix = "-" + ns.rsplit("-", 1)[-1]
    git_user, git_token = "kade-cleanup", secrets.token_urlsafe(16)
    with serve_git_http(tmp_path / "git", NODE_ADDRESS, git_user, git_token) as git_base:
        overlay = cleanup_overlay(tmp_path / "overlay", namespace=ns, suffix=suffix, image=kade_image, repo=name,
                           git=f"{git_base}/app", git_credentials=git_base.replace("//", f"//{git_user}:{git_token}@"),
                           insecure=target.host)
        cronjob = f"kade-cleanup{suffix}"
        try:
            _run(kubectl_cmd + ["apply", "-k", str(overlay)])
            spec = batch.read_namespaced_cron_job(cronjob, ns).spec
            assert (spec.schedule, spec.concurrency_policy) == ("17 3 * * *", "Forbid"), spec
            assert not spec.suspend
            pod_spec = spec.job_template.spec.template.spec
            assert pod_spec.containers[0].image == kade_image
            assert pod_spec.service_account_name == f"kade-cleanup{suffix}"

            # Don't wait for 03:17: a Job from the CronJob's template, as `kubectl create job --from` does.
            _run(kubectl_cmd + ["-n", ns, "create", "job", f"cleanup-now{suffix}", f"--from=cronjob/{cronjob}"])
            logs = wait_job(api, ns, f"cleanup-now{suffix}", TIMEOUT_S)
        finally:
            delete_cluster_rbac(kubectl_cmd, suffix)

    assert git_token not in logs
    report = job_report(logs)
    # The job published this cluster's report (named by the kube-system UID) before planning.
    uid = core.read_namespace("kube-system").metadata.uid
    report_tag = f"cluster-{uid}"
    assert report_tag in set(stages.list_tags())
    stages_before.add(report_tag)
    deleted = {i["tag"] for i in report["items"] if i.get("status") == "deleted"}
    assert report["result"]["failed"] == 0, logs
    assert deleted == expect_deleted | expect_deleted_stages, logs
    assert set(repo.list_tags()) == tags_before - expect_deleted, logs
    assert set(stages.list_tags()) == stages_before - expect_deleted_stages, logs
    kept = {i["tag"]: i["reasons"] for i in report["items"] if i["action"] == "keep"}
    # (the reason names the first users: the Deployment, its ReplicaSet or its Pod)
    assert any(r.startswith("in use by tag: ") and f"/{ns}/" in r and "/by-tag" in r for r in kept["main-2"]), \
        kept["main-2"]
    assert any(r.startswith("in use by digest: ") and f"/{ns}/" in r and "/by-digest" in r for r in kept["main-3"]), \
        kept["main-3"]
    items = {(i["repository"], i["tag"]): i for i in report["items"]}
    assert items[(name, "old-alias")]["method"] == "tag", items[(name, "old-alias")]
    assert repo.head_manifest("main-13").digest == digests["main-13"]  # old-alias went alone

    # --- the registry's garbage collection, read-only meanwhile (k8s-manifests/cleanup/README.md)
    for t in gone:  # deleting manifests freed nothing yet: the blobs are still served
        assert repo.head_blob(layers[t]) is not None
    size_before = _du(target.storage)
    target.restart(readonly=True)
    body, desc = repo.get_manifest("main-13")
    with pytest.raises(RegistryError):  # read-only indeed: nothing can be pushed while the collector runs
        repo.put_manifest("during-gc", body, desc.media_type)
    _run([shutil.which("docker-registry") or "/usr/bin/docker-registry", "garbage-collect",
          str(target.config_path)])
    size_after = _du(target.storage)
    freed = size_before - size_after
    # each deleted build had a final layer and a step layer of 256 KiB that nothing else uses
    assert freed >= 2 * len(gone) * 256 * 1024, f"garbage-collect freed {freed} bytes ({size_before} -> {size_after})"
    print(f"garbage-collect: {size_before} -> {size_after} bytes")
    for t in gone:
        assert repo.head_blob(layers[t]) is None, f"{t}'s layer survived garbage-collect"

    # Every survivor is still whole, and real clients pull them.
    for tag in tags_before - expect_deleted:
        body, _ = repo.get_manifest(tag)
        for layer in json.loads(body)["layers"]:
            assert repo.head_blob(layer["digest"]) is not None, f"{name}:{tag} lost {layer['digest']}"
    for key in stages_before - expect_deleted_stages:
        assert stages.head_manifest(key) is not None
    skopeo = ["skopeo", "--insecure-policy"]
    for tag in ("main-2", "main-13", "fresh"):
        _run(skopeo + ["copy", "-q", "--src-tls-verify=false", f"docker://{name}:{tag}", f"dir:{tmp_path / tag}"])
    inspected = json.loads(_run(skopeo + ["inspect", "--tls-verify=false", f"docker://{name}@{digests['main-3']}"]))
    assert inspected["Digest"] == digests["main-3"]
    rc.close()
