"""In-use protection against the real Kubernetes API: images that running Deployments use (by tag and
by digest) survive `kade cleanup`, an unused one goes, and the pods can still pull their images."""
from __future__ import annotations

import json
import secrets
import time
from datetime import datetime, timedelta, timezone

import pytest
from kubernetes import client

from kade.cli import main
from registry.client import ClientOptions, RegistryClient
from registry.copy import copy_image
from registry.records import BuildRecord, RecordImage, push_record
from tests.fixtures.cleanup import GitHistory

pytestmark = pytest.mark.cluster
TIMEOUT_S = 180


def _deployment(name: str, image: str) -> client.V1Deployment:
    labels = {"app": name}
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1DeploymentSpec(
            replicas=1, selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(termination_grace_period_seconds=1, containers=[client.V1Container(
                    name="main", image=image, image_pull_policy="Always", command=["sleep", "infinity"])]))))


def _wait_running(core: client.CoreV1Api, ns: str, app: str, not_named: set[str] = frozenset()) -> str:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        for pod in core.list_namespaced_pod(ns, label_selector=f"app={app}").items:
            statuses = pod.status.container_statuses or []
            if (pod.metadata.name not in not_named and pod.metadata.deletion_timestamp is None
                    and statuses and statuses[0].state.running):
                return pod.metadata.name
        time.sleep(0.5)
    events = [f"{e.involved_object.name}: {e.reason}: {e.message}" for e in core.list_namespaced_event(ns).items]
    pytest.fail(f"no running pod for {app} in {ns} after {TIMEOUT_S}s; events:\n" + "\n".join(events))


def test_images_of_running_deployments_survive_cleanup(kube_cluster, kube_namespace, tmp_path, capsys,
                                                       monkeypatch):
    reg = kube_cluster.registry
    rc = RegistryClient(ClientOptions(insecure=(reg,)))
    name = f"{reg}/cleanup-{secrets.token_hex(4)}/app"
    copy_image(rc, kube_cluster.base_image, f"{name}:base")
    repo = rc.repository(name)
    body, desc = repo.get_manifest("base")

    def variant(tag: str) -> str:  # same runnable image, its own digest
        doc = json.loads(body)
        doc.setdefault("annotations", {})["io.kade.test.variant"] = tag
        return repo.put_manifest(tag, json.dumps(doc).encode(), desc.media_type)

    digests = {tag: variant(tag) for tag in ("by-tag", "by-digest", "unused")}
    stages = rc.repository(name + "-stages")
    old = datetime.now(timezone.utc) - timedelta(days=30)
    for i, (tag, digest) in enumerate(digests.items()):  # old builds of a commit no branch holds
        push_record(stages, BuildRecord("9" * 40, None, old + timedelta(seconds=i),
                                        (RecordImage("default", name, (tag,), digest, ()),)))
    history = GitHistory(tmp_path / "git")
    history.commit("init", "main", int(time.time()))
    history.write()

    api = kube_cluster.api_client()
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    ns = kube_namespace
    apps.create_namespaced_deployment(ns, _deployment("web-tag", f"{name}:by-tag"))
    apps.create_namespaced_deployment(ns, _deployment("web-digest", f"{name}@{digests['by-digest']}"))
    pods = {app: _wait_running(core, ns, app) for app in ("web-tag", "web-digest")}

    args = ["cleanup", "--repo", name, "--git", str(history.path), "--insecure-registry", reg, "--output", "json"]
    # Without the scan both would go: the scan is what keeps them.
    assert main(args + ["--without-kube", "--dry-run"]) == 0
    blind = {i["tag"]: i["action"] for i in json.loads(capsys.readouterr().out)["items"]}
    assert blind["by-tag"] == blind["by-digest"] == blind["unused"] == "delete"

    monkeypatch.setenv("KUBECONFIG", kube_cluster.kubeconfig)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert main(args) == 0
    result = {i["tag"]: i for i in json.loads(capsys.readouterr().out)["items"]}
    assert result["by-tag"]["action"] == "keep"
    assert any(r.startswith("in use by tag: (current)/" + ns + "/") for r in result["by-tag"]["reasons"])
    assert result["by-digest"]["action"] == "keep"
    assert any(f"/{ns}/Deployment/web-digest" in r or f"/{ns}/Pod/web-digest" in r
               for r in result["by-digest"]["reasons"])
    assert result["unused"]["action"] == "delete" and result["unused"]["status"] == "deleted"
    assert set(repo.list_tags()) == {"base", "by-tag", "by-digest"}

    # The images are still pullable: replacement pods (imagePullPolicy Always) start.
    for app, pod in pods.items():
        core.delete_namespaced_pod(pod, ns, grace_period_seconds=0)
        _wait_running(core, ns, app, not_named={pod})
    rc.close()


def _kubeconfig_with_token(admin_kubeconfig: str, token: str, path) -> str:
    import yaml

    admin = yaml.safe_load(open(admin_kubeconfig))
    ctx = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])["context"]
    cluster = next(c for c in admin["clusters"] if c["name"] == ctx["cluster"])
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "scanner",
        "clusters": [cluster], "users": [{"name": "scanner", "user": {"token": token}}],
        "contexts": [{"name": "scanner", "context": {"cluster": cluster["name"], "user": "scanner"}}]}))
    return str(path)


def test_the_cronjobs_read_only_role_is_enough_for_the_scan(kube_cluster, kube_namespace, tmp_path):
    """The scan as the CronJob's service account: refused (an error naming the RBAC file) until the
    ClusterRole from k8s-manifests/cleanup is bound, then it sees a Deployment's image."""
    from pathlib import Path

    import yaml

    from registry.cleanup.errors import ClusterScanError
    from registry.cleanup.inuse import scan_clusters

    ns = kube_namespace
    api = kube_cluster.api_client()
    core, rbac, apps = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api), client.AppsV1Api(api)
    core.create_namespaced_service_account(ns, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="scanner")))
    token = core.create_namespaced_service_account_token("scanner", ns, client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600))).status.token
    kubeconfig = _kubeconfig_with_token(kube_cluster.kubeconfig, token, tmp_path / "scanner.kubeconfig")
    apps.create_namespaced_deployment(ns, _deployment("web", f"{kube_cluster.registry}/rbac/app:v7"))

    with pytest.raises(ClusterScanError, match=r"HTTP 403 .*k8s-manifests/cleanup/clusterrole.yaml"):
        scan_clusters([None], kubeconfig)

    role = yaml.safe_load((Path(__file__).resolve().parents[2] / "k8s-manifests/cleanup/clusterrole.yaml").read_text())
    role["metadata"]["name"] = f"kade-cleanup-scan-{ns}"
    rbac.create_cluster_role(role)
    rbac.create_cluster_role_binding({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": role["metadata"]["name"]},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role["metadata"]["name"]},
        "subjects": [{"kind": "ServiceAccount", "name": "scanner", "namespace": ns}]})
    try:
        deadline = time.monotonic() + 30
        while True:  # RBAC takes effect once the API server's informer saw the binding
            try:
                in_use = scan_clusters([None], kubeconfig)
                break
            except ClusterScanError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        users = in_use.tag_users(f"{kube_cluster.registry}/rbac/app", "v7")
        assert f"(current)/{ns}/Deployment/web" in users
        assert any(u.startswith(f"(current)/{ns}/ReplicaSet/web-") for u in users)
    finally:
        rbac.delete_cluster_role_binding(role["metadata"]["name"])
        rbac.delete_cluster_role(role["metadata"]["name"])


def test_every_given_context_is_scanned_and_a_missing_one_is_an_error(kube_cluster, kube_namespace, tmp_path):
    import yaml

    from registry.cleanup.errors import ClusterScanError
    from registry.cleanup.inuse import scan_clusters

    admin = yaml.safe_load(open(kube_cluster.kubeconfig))
    ctx = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])
    admin["contexts"] = [{"name": n, "context": ctx["context"]} for n in ("one", "two")]
    admin["current-context"] = "one"
    path = tmp_path / "two-contexts.kubeconfig"
    path.write_text(yaml.safe_dump(admin))
    apps = client.AppsV1Api(kube_cluster.api_client())
    apps.create_namespaced_deployment(kube_namespace, _deployment("multi", f"{kube_cluster.registry}/ctx/app:v1"))
    in_use = scan_clusters(["one", "two"], str(path))
    assert in_use.scanned == ["one", "two"]
    users = in_use.tag_users(f"{kube_cluster.registry}/ctx/app", "v1")
    assert f"one/{kube_namespace}/Deployment/multi" in users and f"two/{kube_namespace}/Deployment/multi" in users
    with pytest.raises(ClusterScanError, match="cannot scan the cluster \\(nope\\).*--without-kube"):
        scan_clusters(["one", "nope"], str(path))
