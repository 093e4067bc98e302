"""In-use protection against the real Kubernetes API: images that running Deployments use (by tag and
by digest) survive `kade cleanup`, an unused one goes, and the pods can still pull their images."""
from __future__ import annotations

import json
import re
import secrets
import time
from datetime import datetime, timedelta, timezone

import pytest
from kubernetes import client

from kade.cli import main
from registry.client import ClientOptions, RegistryClient
from registry.copy import copy_image
from registry.records import BuildRecord, RecordImage, push_record
from tests.fixtures.cleanup import GitHistory, sleeping_deployment, wait_running

pytestmark = pytest.mark.cluster
TIMEOUT_S = 180


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
    apps.create_namespaced_deployment(ns, sleeping_deployment("web-tag", f"{name}:by-tag", "Always"))
    apps.create_namespaced_deployment(ns, sleeping_deployment("web-digest", f"{name}@{digests['by-digest']}", "Always"))
    pods = {app: wait_running(core, ns, app, timeout_s=TIMEOUT_S) for app in ("web-tag", "web-digest")}

    # Only this test's namespace: the shared cluster's other release histories are none of this test's business.
    args = ["cleanup", "--repo", name, "--git", str(history.path), "--insecure-registry", reg, "--output", "json",
            "--scan-namespace", ns]
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
        wait_running(core, ns, app, not_named=frozenset({pod}), timeout_s=TIMEOUT_S)
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


def test_the_cronjobs_read_only_roles_are_enough_for_the_scan(kube_cluster, kube_namespace, tmp_path):
    """The scan as the CronJob's service account: refused (an error naming the RBAC file) until each
    ClusterRole from k8s-manifests/cleanup is bound, then it sees a Deployment's image; the token reads
    no Secret by name and no namespace but kube-system."""
    from pathlib import Path

    import yaml

    from registry.cleanup.errors import ClusterScanError
    from registry.cleanup.scan import scan_clusters

    ns = kube_namespace
    api = kube_cluster.api_client()
    core, rbac, apps = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api), client.AppsV1Api(api)
    core.create_namespaced_service_account(ns, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="scanner")))
    token = core.create_namespaced_service_account_token("scanner", ns, client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600))).status.token
    kubeconfig = _kubeconfig_with_token(kube_cluster.kubeconfig, token, tmp_path / "scanner.kubeconfig")
    apps.create_namespaced_deployment(ns, sleeping_deployment("web", f"{kube_cluster.registry}/rbac/app:v7"))

    with pytest.raises(ClusterScanError, match=r"HTTP 403 .*k8s-manifests/cleanup/clusterrole.yaml"):
        scan_clusters([None], kubeconfig)

    manifests = Path(__file__).resolve().parents[2] / "k8s-manifests/cleanup"
    names = []

    def bind(file: str) -> None:
        role = yaml.safe_load((manifests / file).read_text())
        role["metadata"]["name"] = f"{role['metadata']['name']}-{ns}"
        names.append(role["metadata"]["name"])
        rbac.create_cluster_role(role)
        rbac.create_cluster_role_binding({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": role["metadata"]["name"]},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role["metadata"]["name"]},
            "subjects": [{"kind": "ServiceAccount", "name": "scanner", "namespace": ns}]})

    def scan_until(pattern: str | None):
        deadline = time.monotonic() + 30
        while True:  # RBAC takes effect once the API server's informer saw the binding
            try:
                scans = scan_clusters([None], kubeconfig)
                assert pattern is None, "the scan worked without the releases role"
                return scans
            except ClusterScanError as exc:
                if pattern and re.search(pattern, str(exc)):
                    return None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    try:
        bind("clusterrole.yaml")
        scan_until(r"cannot list Secrets in all namespaces .*HTTP 403 .*k8s-manifests/cleanup/clusterrole-releases.yaml")
        bind("clusterrole-releases.yaml")
        [scan] = scan_until(None)
        users = scan.in_use.tag_users(f"{kube_cluster.registry}/rbac/app", "v7")
        assert f"(current)/{ns}/Deployment/web" in users
        assert any(u.startswith(f"(current)/{ns}/ReplicaSet/web-") for u in users)
        assert scan.name == core.read_namespace("kube-system").metadata.uid  # the cluster's identity

        # What the token can't do: get a Secret by name, read another namespace, write anything.
        from kubernetes import config
        from kubernetes.client.exceptions import ApiException

        scanner = client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig))
        core.create_namespaced_secret(ns, client.V1Secret(metadata=client.V1ObjectMeta(name="s"),
                                                          string_data={"k": "v"}))
        for attempt in (lambda: scanner.read_namespaced_secret("s", ns), lambda: scanner.read_namespace("default"),
                        lambda: scanner.delete_namespaced_secret("s", ns),
                        lambda: scanner.create_namespaced_config_map(ns, client.V1ConfigMap(
                            metadata=client.V1ObjectMeta(name="x")))):
            with pytest.raises(ApiException) as denied:
                attempt()
            assert denied.value.status == 403
    finally:
        for name in names:
            rbac.delete_cluster_role_binding(name)
            rbac.delete_cluster_role(name)


def test_every_given_context_is_scanned_and_a_missing_one_is_an_error(kube_cluster, kube_namespace, tmp_path):
    import yaml

    from kube.errors import KubeConfigError
    from registry.cleanup.inuse import InUse
    from registry.cleanup.scan import scan_clusters

    admin = yaml.safe_load(open(kube_cluster.kubeconfig))
    ctx = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])
    admin["contexts"] = [{"name": n, "context": ctx["context"]} for n in ("one", "two")]
    admin["current-context"] = "one"
    path = tmp_path / "two-contexts.kubeconfig"
    path.write_text(yaml.safe_dump(admin))
    apps = client.AppsV1Api(kube_cluster.api_client())
    apps.create_namespaced_deployment(kube_namespace,
                                      sleeping_deployment("multi", f"{kube_cluster.registry}/ctx/app:v1"))
    scans = scan_clusters(["one", "two"], str(path))
    in_use = InUse.merged(*(s.in_use for s in scans))
    assert in_use.scanned == ["one", "two"] and scans[0].name == scans[1].name  # one cluster, two names for it
    users = in_use.tag_users(f"{kube_cluster.registry}/ctx/app", "v1")
    assert f"one/{kube_namespace}/Deployment/multi" in users and f"two/{kube_namespace}/Deployment/multi" in users
    # a context the kubeconfig lacks is a configuration error (kade exits 2, as for any bad kubeconfig)
    with pytest.raises(KubeConfigError, match="cannot scan the cluster \\(nope\\).*--without-kube"):
        scan_clusters(["one", "nope"], str(path))
