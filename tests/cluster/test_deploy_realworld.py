"""Real-world manifests that nobody here wrote (tests/data/deploy/realworld/SOURCE.md), images pointed
at a stand-in in the test registry: install, upgrade, roll back and uninstall with the right verdicts."""
from __future__ import annotations

import copy
import threading
import time

import pytest
from kubernetes import client

from tests.fixtures.deploy import real_manifests, with_images

pytestmark = pytest.mark.cluster

NGINX_NS = "ingress-nginx"
NGINX_CLUSTER_OBJECTS = [("ClusterRole", "ingress-nginx"), ("ClusterRoleBinding", "ingress-nginx"),
                         ("ClusterRole", "ingress-nginx-admission"), ("ClusterRoleBinding", "ingress-nginx-admission")]


def applied(run) -> list[str]:
    return [e["message"] for e in run.events if e["kind"] == "apply"]


def _remove_ingress_nginx(kube_cluster) -> None:
    """What an aborted earlier run may have left (the manifest's names are fixed, cluster-wide)."""
    api = kube_cluster.api_client()
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    admission = client.AdmissionregistrationV1Api(api)
    for call, name in [(rbac.delete_cluster_role, "ingress-nginx"), (rbac.delete_cluster_role_binding, "ingress-nginx"),
                       (rbac.delete_cluster_role, "ingress-nginx-admission"),
                       (rbac.delete_cluster_role_binding, "ingress-nginx-admission"),
                       (admission.delete_validating_webhook_configuration, "ingress-nginx-admission"),
                       (core.delete_namespace, NGINX_NS)]:
        try:
            call(name)
        except client.ApiException:
            pass
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if not [n for n in core.list_namespace().items if n.metadata.name == NGINX_NS]:
            return
        time.sleep(1)
    raise AssertionError(f"namespace {NGINX_NS} was not deleted")


def _play_certgen(kube_cluster, stop: threading.Event) -> None:
    """Create the Secret kube-webhook-certgen's `create` Job would (the stand-in only exits 0)."""
    core = client.CoreV1Api(kube_cluster.api_client())
    while not stop.is_set():
        try:
            core.create_namespaced_secret(NGINX_NS, client.V1Secret(
                metadata=client.V1ObjectMeta(name="ingress-nginx-admission"),
                string_data={"cert": "stand-in", "key": "stand-in", "ca": "stand-in"}))
            return
        except client.ApiException as exc:
            if exc.status == 409:
                return
            stop.wait(0.5)  # the namespace is not there yet


def test_ingress_nginx_install_upgrade_rollback_uninstall(kade, kube_cluster, kube_namespace, standin_image,
                                                          record_property):
    """ingress-nginx 0.41.2's static manifest (helm template output): a Namespace, RBAC, a NodePort
    Service, a ValidatingWebhookConfiguration, the controller Deployment with probes and a preStop hook,
    and Helm hooks run at pre-/post-install and -upgrade with before-hook-creation,hook-succeeded."""
    _remove_ingress_nginx(kube_cluster)
    docs = with_images(real_manifests("ingress-nginx-baremetal-deploy.yaml"), standin_image)
    stop = threading.Event()
    certgen = threading.Thread(target=_play_certgen, args=(kube_cluster, stop), daemon=True)
    certgen.start()
    batch = client.BatchV1Api(kube_cluster.api_client())
    try:
        install = kade.deploy(kube_namespace, kade.write("nginx.yaml", *docs), release="nginx", timeout="180s")
        record_property("install_seconds", install.seconds)
        assert install.rc == 0, str(install)
        stages = [e["message"] for e in install.events if e["kind"] == "stage"]
        assert any("pre-deploy hooks" in s and "job/ingress-nginx-admission-create" in s for s in stages), stages
        assert any("post-deploy hooks" in s and "job/ingress-nginx-admission-patch" in s
                   and "serviceaccount/ingress-nginx-admission" in s for s in stages), \
            "hooks of pre- and post-install run in both phases"
        assert not batch.list_namespaced_job(NGINX_NS).items, "hook-succeeded: the hook Jobs are deleted"
        apps = client.AppsV1Api(kube_cluster.api_client())
        assert apps.read_namespaced_deployment("ingress-nginx-controller", NGINX_NS).status.ready_replicas == 1

        upgraded = copy.deepcopy(docs)
        config = next(d for d in upgraded if d["kind"] == "ConfigMap")
        config["data"] = {"use-forwarded-headers": "true"}
        upgrade = kade.deploy(kube_namespace, kade.write("nginx2.yaml", *upgraded), release="nginx", timeout="180s")
        assert upgrade.rc == 0, str(upgrade)
        assert upgrade.result["revision"] == 2
        assert any("upgrade" in e["message"] for e in upgrade.events if e["kind"] == "release")
        assert any("Job.batch ingress-nginx/ingress-nginx-admission-create" in m for m in applied(upgrade)), \
            "pre-upgrade hooks run on an upgrade"
        plan = kade.run("plan", "-f", kade.write("nginx3.yaml", *upgraded), "--release", "nginx", "-n",
                        kube_namespace, "--exit-code")
        assert plan.rc == 0 and "no changes" in plan.stdout, str(plan)

        back = kade.run("rollback", "nginx", "-n", kube_namespace, "--timeout", "180s", "--output", "json")
        assert back.rc == 0, str(back)
        assert back.result["revision"] == 3
        assert not [m for m in applied(back) if "Job.batch" in m], "a rollback runs no install/upgrade hooks"
        live = client.CoreV1Api(kube_cluster.api_client()).read_namespaced_config_map("ingress-nginx-controller", NGINX_NS)
        assert not live.data, "the rollback restores revision 1's ConfigMap"

        gone = kade.run("uninstall", "nginx", "-n", kube_namespace, "--delete-namespaces", "--output", "json")
        assert gone.rc == 0, str(gone)
        deleted = gone.result["deleted"]
        assert "Deployment.apps ingress-nginx/ingress-nginx-controller" in deleted
        assert "ValidatingWebhookConfiguration.admissionregistration.k8s.io ingress-nginx-admission" in deleted
        assert "Namespace ingress-nginx" in deleted
        rbac = client.RbacAuthorizationV1Api(kube_cluster.api_client())
        assert "ingress-nginx" not in [r.metadata.name for r in rbac.list_cluster_role().items]
    finally:
        stop.set()
        _remove_ingress_nginx(kube_cluster)


def test_prometheus_rules_and_example_app(kade, kube_cluster, kube_namespace, standin_image, record_property):
    """prometheus-operator's PrometheusRule CRD, kube-prometheus' grafana rules (a custom resource no
    controller writes a status for: ready once it exists) and the getting-started example app."""
    ext = client.ApiextensionsV1Api(kube_cluster.api_client())
    crd_name = "prometheusrules.monitoring.coreos.com"
    try:
        ext.delete_custom_resource_definition(crd_name)  # left by an aborted run
        time.sleep(2)
    except client.ApiException:
        pass
    docs = with_images(real_manifests("monitoring.coreos.com_prometheusrules.yaml", "grafana-prometheusRule.yaml",
                                      "example-app-deployment.yaml", "example-app-service.yaml"), standin_image)
    rule = next(d for d in docs if d["kind"] == "PrometheusRule")
    rule["metadata"].pop("namespace")
    try:
        install = kade.deploy(kube_namespace, kade.write("prom.yaml", *docs), release="prom", timeout="120s")
        record_property("install_seconds", install.seconds)
        assert install.rc == 0, str(install)
        ready = [e["resource"] for e in install.events if e["kind"] == "ready"]
        assert f"PrometheusRule.monitoring.coreos.com {kube_namespace}/grafana-rules" in ready
        assert f"Deployment.apps {kube_namespace}/example-app" in ready

        changed = copy.deepcopy(docs)
        app = next(d for d in changed if d["kind"] == "Deployment")
        app["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "VERSION", "value": "2"}]
        next(d for d in changed if d["kind"] == "PrometheusRule")["spec"]["groups"][0]["rules"][0]["for"] = "10m"
        upgrade = kade.deploy(kube_namespace, kade.write("prom2.yaml", *changed), release="prom", timeout="120s")
        assert upgrade.rc == 0, str(upgrade)

        back = kade.run("rollback", "prom", "-n", kube_namespace, "--timeout", "120s", "--output", "json")
        assert back.rc == 0, str(back)
        custom = client.CustomObjectsApi(kube_cluster.api_client())
        live = custom.get_namespaced_custom_object("monitoring.coreos.com", "v1", kube_namespace, "prometheusrules",
                                                   "grafana-rules")
        assert live["spec"]["groups"][0]["rules"][0]["for"] == "5m"

        gone = kade.run("uninstall", "prom", "-n", kube_namespace, "--output", "json")
        assert gone.rc == 0, str(gone)
        assert f"PrometheusRule.monitoring.coreos.com {kube_namespace}/grafana-rules" in gone.result["deleted"]
        assert ext.read_custom_resource_definition(crd_name), "CRDs are kept unless --delete-crds"
        assert "keeping CustomResourceDefinition" in gone.stderr
    finally:
        try:
            ext.delete_custom_resource_definition(crd_name)
        except client.ApiException:
            pass
