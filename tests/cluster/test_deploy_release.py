"""End to end on the real test cluster: release history, rollback, pruning and the release lock."""
from __future__ import annotations

import subprocess
import time
from datetime import datetime, timedelta, timezone

import pytest
from kubernetes import client

from tests.fixtures.deploy import FAST_PROBE_OK, configmap, deployment

pytestmark = pytest.mark.cluster


def deploy(kade, ns, path, *extra, release="app", timeout="120s"):
    return kade.run("deploy", "-f", path, "--release", release, "-n", ns, "--timeout", timeout, "--output", "json", *extra)


@pytest.fixture
def second_image(kube_cluster) -> str:
    """The base image under a second name, so that a rollout changes the image reference."""
    target = kube_cluster.base_image.rsplit(":", 1)[0] + ":kade-deploy-v2"
    if "@" in kube_cluster.base_image:
        target = kube_cluster.base_image.split("@", 1)[0] + ":kade-deploy-v2"
    subprocess.run(["skopeo", "copy", "--src-tls-verify=false", "--dest-tls-verify=false", "-q",
                    f"docker://{kube_cluster.base_image}", f"docker://{target}"], check=True, timeout=300)
    return target


def image_of(kube_cluster, ns, name):
    apps = client.AppsV1Api(kube_cluster.api_client())
    return apps.read_namespaced_deployment(name, ns).spec.template.spec.containers[0].image


def test_rollback_restores_previous_image(kade, kube_cluster, kube_namespace, second_image, record_property):
    ns, v1 = kube_namespace, kube_cluster.base_image
    run1 = deploy(kade, ns, kade.write("v1.yaml", deployment("web", v1, probe=FAST_PROBE_OK)))
    assert run1.rc == 0, str(run1)
    run2 = deploy(kade, ns, kade.write("v2.yaml", deployment("web", second_image, probe=FAST_PROBE_OK)))
    assert run2.rc == 0, str(run2)
    assert image_of(kube_cluster, ns, "web") == second_image

    back = kade.run("rollback", "app", "-n", ns, "--timeout", "120s", "--output", "json")
    record_property("verdict_seconds", back.seconds)
    assert back.rc == 0, str(back)
    assert back.result["revision"] == 3
    assert image_of(kube_cluster, ns, "web") == v1
    history = kade.run("history", "app", "-n", ns, "--output", "json").result
    assert [(r["revision"], r["status"]) for r in history] == [(1, "superseded"), (2, "superseded"), (3, "deployed")]
    assert history[2]["description"] == "rollback to 1"


def test_atomic_deploy_rolls_back_a_failed_upgrade(kade, kube_cluster, kube_namespace, second_image, record_property):
    ns, v1 = kube_namespace, kube_cluster.base_image
    run1 = deploy(kade, ns, kade.write("v1.yaml", deployment("web", v1, probe=FAST_PROBE_OK)))
    assert run1.rc == 0, str(run1)
    bad = deploy(kade, ns, kade.write("v2.yaml", deployment("web", second_image, "exit 1", probe=FAST_PROBE_OK),
                                       configmap("extra", a="1")))
    record_property("verdict_seconds", bad.seconds)
    assert bad.rc == 1, str(bad)
    assert bad.result["rolled_back_to"] == 1
    assert "rolled back to revision 1" in bad.result["message"]
    assert image_of(kube_cluster, ns, "web") == v1
    core = client.CoreV1Api(kube_cluster.api_client())
    assert "extra" not in [c.metadata.name for c in core.list_namespaced_config_map(ns).items], \
        "what the failed revision created is removed by the rollback"
    history = kade.run("history", "app", "-n", ns, "--output", "json").result
    assert [(r["revision"], r["status"]) for r in history] == [(1, "superseded"), (2, "failed"), (3, "deployed")]


def test_removed_resource_is_pruned_but_keep_policy_stays(kade, kube_cluster, kube_namespace):
    ns = kube_namespace
    first = kade.write("a.yaml", configmap("a", x="1"), configmap("b", x="2"),
                       configmap("c", {"kade.io/resource-policy": "keep"}, x="3"))
    run1 = deploy(kade, ns, first)
    assert run1.rc == 0, str(run1)
    plan = kade.run("plan", "-f", kade.write("only-a.yaml", configmap("a", x="1")), "--release", "app", "-n", ns,
                    "--exit-code")
    assert plan.rc == 3 and f"delete    ConfigMap {ns}/b" in plan.stdout and f"keep      ConfigMap {ns}/c" in plan.stdout, str(plan)
    assert "x: '2'" in plan.stdout, "a delete shows the body it deletes"
    run = deploy(kade, ns, kade.write("only-a2.yaml", configmap("a", x="1")))
    assert run.rc == 0, str(run)
    names = [c.metadata.name for c in client.CoreV1Api(kube_cluster.api_client()).list_namespaced_config_map(ns).items]
    assert "a" in names and "b" not in names and "c" in names


def test_two_concurrent_deploys_of_one_release(kade, kube_cluster, kube_namespace, record_property):
    ns = kube_namespace
    slow = {**FAST_PROBE_OK, "initialDelaySeconds": 6}
    path = kade.write("slow.yaml", deployment("web", kube_cluster.base_image, probe=slow,
                                              annotations={"kade.io/ignore-readiness-probe-fails-for-app": "90s"}))
    args = ("deploy", "-f", path, "--release", "app", "-n", ns, "--timeout", "120s")
    coord = client.CoordinationV1Api(kube_cluster.api_client())
    first = kade.start(*args)
    deadline = time.monotonic() + 60
    while not [l for l in coord.list_namespaced_lease(ns).items if l.metadata.name == "kade-release-app"]:
        assert first.poll() is None and time.monotonic() < deadline, "the first deploy never took the lease"
        time.sleep(0.1)
    short = kade.run(*args[:-1], "3s")  # the first is still tracking a 6 s readiness delay
    assert short.rc == 1, str(short)
    assert "is being deployed by" in short.stderr and "waited 3s" in short.stderr
    second = kade.run(*args)  # waits for the lease instead of failing at once
    out, err = first.communicate(timeout=180)
    assert first.returncode == 0, err
    assert second.rc == 0, str(second)
    assert "waiting" in second.stderr and "is being deployed by" in second.stderr
    history = kade.run("history", "app", "-n", ns, "--output", "json").result
    assert [(r["revision"], r["status"]) for r in history] == [(1, "superseded"), (2, "deployed")]


def test_lease_of_a_dead_deploy_expires(kade, kube_cluster, kube_namespace):
    ns = kube_namespace
    coord = client.CoordinationV1Api(kube_cluster.api_client())
    stale = datetime.now(timezone.utc) - timedelta(seconds=120)
    coord.create_namespaced_lease(ns, client.V1Lease(
        metadata=client.V1ObjectMeta(name="kade-release-app"),
        spec=client.V1LeaseSpec(holder_identity="dead-host:1:abc", lease_duration_seconds=30,
                                acquire_time=stale, renew_time=stale)))
    run = deploy(kade, ns, kade.write("cm.yaml", configmap("a", x="1")))
    assert run.rc == 0, str(run)
    assert not [l for l in coord.list_namespaced_lease(ns).items if l.metadata.name == "kade-release-app"], \
        "the lease is released at the end of the deploy"


def test_release_record_past_one_mebibyte_is_split(kade, kube_cluster, kube_namespace):
    import base64
    import os

    ns = kube_namespace
    blobs = [configmap(f"blob{i}", data=base64.b64encode(os.urandom(600 * 1024)).decode()) for i in range(2)]
    run = deploy(kade, ns, kade.write("big.yaml", *blobs))
    assert run.rc == 0, str(run)
    secrets = client.CoreV1Api(kube_cluster.api_client()).list_namespaced_secret(
        ns, label_selector="kade.io/release=app,kade.io/revision=1").items
    assert len(secrets) >= 2, "a record over 1 MiB must be split over several Secrets"
    history = kade.run("history", "app", "-n", ns, "--output", "json")
    assert history.rc == 0 and history.result[0]["resources"] == 2, str(history)


def test_an_incomplete_record_never_blocks_the_next_deploy(kade, kube_cluster, kube_namespace):
    """A deploy killed while writing a two-part record leaves one part: the next deploy says so,
    removes it and goes on (a new revision number, past the broken one)."""
    ns = kube_namespace
    assert deploy(kade, ns, kade.write("a.yaml", configmap("a", x="1"))).rc == 0
    client.CoreV1Api(kube_cluster.api_client()).create_namespaced_secret(ns, client.V1Secret(
        metadata=client.V1ObjectMeta(name="kade.release.v1.app.v2.0", labels={
            "owner": "kade", "kade.io/release": "app", "kade.io/revision": "2", "kade.io/part": "0",
            "kade.io/parts": "2", "kade.io/status": "pending"}),
        type="kade.io/release.v1", data={"release": "H4sIAAAAAAAA"}))
    run = deploy(kade, ns, kade.write("b.yaml", configmap("a", x="2")))
    assert run.rc == 0, str(run)
    assert "revision 2: its record is incomplete" in run.stderr
    assert run.result["revision"] == 3
    history = kade.run("history", "app", "-n", ns, "--output", "json").result
    assert [(r["revision"], r["status"]) for r in history] == [(1, "superseded"), (3, "deployed")]


def test_a_saved_plan_is_deployed_only_while_it_is_true(kade, kube_cluster, kube_namespace):
    ns = kube_namespace
    assert deploy(kade, ns, kade.write("a.yaml", configmap("a", x="1"), configmap("b", x="1"))).rc == 0
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "token"}, "stringData": {"token": "s3cret-value"}}
    path = kade.write("a2.yaml", configmap("a", x="2"), secret)
    plan = kade.run("plan", "-f", path, "--release", "app", "-n", ns, "--save-plan", "plan.json", "--exit-code")
    assert plan.rc == 3 and f"update    ConfigMap {ns}/a" in plan.stdout and f"delete    ConfigMap {ns}/b" in plan.stdout
    assert f"create    Secret {ns}/token" in plan.stdout and "<hidden, sha256" in plan.stdout
    saved = (kade.workdir / "plan.json").read_text()
    assert "s3cret-value" not in saved + plan.stdout, "Secret values never land in a plan"
    other = kade.write("a3.yaml", configmap("a", x="3"), secret)
    refused = deploy(kade, ns, other, "--use-plan", "plan.json")
    assert refused.rc == 1 and "rendered manifests differ" in refused.stderr, str(refused)
    client.CoreV1Api(kube_cluster.api_client()).patch_namespaced_config_map("a", ns, {"data": {"x": "edited"}},
                                                                           field_manager="kubectl-edit")
    drifted = deploy(kade, ns, path, "--use-plan", "plan.json")
    assert drifted.rc == 1 and f"ConfigMap {ns}/a was changed in the cluster since" in drifted.stderr, str(drifted)
    drift = kade.run("plan", "-f", kade.write("a1.yaml", configmap("a", x="1"), configmap("b", x="1")),
                     "--release", "app", "-n", ns)
    assert "drift: changed in the cluster since the last deploy" in drift.stdout and "edited" in drift.stdout, str(drift)
    client.CoreV1Api(kube_cluster.api_client()).patch_namespaced_config_map("a", ns, {"data": {"x": "1"}},
                                                                           field_manager="kubectl-edit")
    approved = deploy(kade, ns, path, "--use-plan", "plan.json")
    assert approved.rc == 0, str(approved)
