"""End to end on the real test cluster, one test per failure of issue 15: stuck vs slow scheduling,
startupProbe, inputs that arrive late, takeover of a Helm release, immutable Jobs, field managers and
replicas, and an admission webhook that is not up yet."""
from __future__ import annotations

import base64
import copy
import http.server
import json
import ssl
import subprocess
import threading
import time

import pytest
from kubernetes import client

from deployer.apply import get_live
from deployer.kube import Kube
from deployer.resources import ApiResource, Resource
from deployer.upsert import migrate_managers
from tests.fixtures.deploy import configmap, deployment, job
from tests.fixtures.jsonserver import JsonHandler

pytestmark = pytest.mark.cluster

SLOT = "kade.io/test-slot"  # an extended resource the tests advertise on the node: only their pods ask for it


def _failure(run):
    assert run.rc == 1, str(run)
    return run.result["failures"][0]


def _advertise_slot(kube_cluster) -> str:
    """Advertise one SLOT on the node (as a device plugin would); returns the node's name."""
    core = client.CoreV1Api(kube_cluster.api_client())
    node = core.list_node().items[0]
    name = node.metadata.name
    if (node.status.allocatable or {}).get(SLOT) != "1":
        core.patch_node_status(name, [{"op": "add", "path": "/status/capacity/" + SLOT.replace("/", "~1"), "value": "1"}])
        deadline = time.monotonic() + 60
        while (core.read_node(name).status.allocatable or {}).get(SLOT) != "1":
            assert time.monotonic() < deadline, "the kubelet did not take the extended resource into allocatable"
            time.sleep(1)
    return name


def test_more_cpu_than_any_node_fails_fast(kade, kube_cluster, kube_namespace, record_property):
    big = deployment("big", kube_cluster.base_image, resources={"requests": {"cpu": "64"}})
    run = kade.deploy(kube_namespace, kade.write("big.yaml", big))
    record_property("verdict_seconds", run.seconds)
    failure = _failure(run)
    assert failure["reason"] == "Unschedulable" and "can never be scheduled" in failure["message"], str(run)
    assert "more cpu than any node can allocate" in failure["message"]
    assert "Insufficient cpu" in failure["message"], "the scheduler's own reason is shown"
    assert run.seconds < 15 + 5, str(run)  # 15 s to the verdict; the rest is the CLI and removing what it created


def test_a_pod_waiting_for_room_waits_and_then_runs(kade, kube_cluster, kube_namespace, record_property):
    """The node's only SLOT is held by another pod for 40 s: the deploy waits, showing the scheduler's
    reason, and succeeds once the slot is free (a cordoned node or a taint behaves the same)."""
    _advertise_slot(kube_cluster)
    core = client.CoreV1Api(kube_cluster.api_client())
    blocker = client.V1Pod(metadata=client.V1ObjectMeta(name="blocker"), spec=client.V1PodSpec(
        termination_grace_period_seconds=0, containers=[client.V1Container(
            name="hold", image=kube_cluster.base_image, command=["sleep", "infinity"],
            resources=client.V1ResourceRequirements(requests={SLOT: "1"}, limits={SLOT: "1"}))]))
    core.create_namespaced_pod(kube_namespace, blocker)
    app = deployment("app", kube_cluster.base_image, resources={"requests": {SLOT: "1"}, "limits": {SLOT: "1"}})
    started = time.monotonic()
    process = kade.start_deploy(kube_namespace, kade.write("app.yaml", app), timeout="150s")
    time.sleep(40)
    assert process.poll() is None, "the deploy gave up on a pod that only waits for room"
    core.delete_namespaced_pod("blocker", kube_namespace, grace_period_seconds=0)
    run = kade.finish(process)
    record_property("verdict_seconds", time.monotonic() - started)
    assert run.rc == 0, str(run)
    waiting = [e["message"] for e in run.events if e["kind"] == "status" and "waiting to be scheduled" in e["message"]]
    assert waiting and f"Insufficient {SLOT}" in waiting[0], str(run)
    assert [e for e in run.events if e["kind"] == "status" and "still" in e["message"]], \
        "a stuck resource is reported again while it waits (CI logs show progress)"


def test_startup_probe_gives_a_slow_app_its_time(kade, kube_cluster, kube_namespace, record_property):
    """The app needs 25 s to start; its startupProbe allows 120 s. The readiness probe alone would be
    judged failed after ~5 s: its window starts when the startup probe passed."""
    app = deployment("slow", kube_cluster.base_image, "sleep 25; touch /tmp/started; sleep infinity",
                     probe={"exec": {"command": ["test", "-f", "/tmp/started"]}, "periodSeconds": 1,
                            "failureThreshold": 1, "timeoutSeconds": 5})
    app["spec"]["template"]["spec"]["containers"][0]["startupProbe"] = {
        "exec": {"command": ["test", "-f", "/tmp/started"]}, "periodSeconds": 2, "failureThreshold": 60,
        "timeoutSeconds": 5}
    run = kade.deploy(kube_namespace, kade.write("slow.yaml", app))
    record_property("verdict_seconds", run.seconds)
    assert run.rc == 0, str(run)
    assert run.seconds > 25


def test_inputs_applied_after_the_workload_do_not_fail_it(kade, kube_cluster, kube_namespace, record_property):
    """A Secret and a ServiceAccount that appear 10 s after their Deployments (FailedMount and
    FailedCreate meanwhile): one transient warning is not a failure."""
    ns, image = kube_namespace, kube_cluster.base_image
    mounts = deployment("mounts", image)
    mounts["spec"]["template"]["spec"]["volumes"] = [{"name": "s", "secret": {"secretName": "late"}}]
    mounts["spec"]["template"]["spec"]["containers"][0]["volumeMounts"] = [{"name": "s", "mountPath": "/s"}]
    account = deployment("account", image)
    account["spec"]["template"]["spec"]["serviceAccountName"] = "late"
    process = kade.start_deploy(ns, kade.write("late.yaml", mounts, account))
    time.sleep(10)
    core = client.CoreV1Api(kube_cluster.api_client())
    core.create_namespaced_secret(ns, client.V1Secret(metadata=client.V1ObjectMeta(name="late"), string_data={"a": "1"}))
    core.create_namespaced_service_account(ns, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="late")))
    run = kade.finish(process)
    record_property("verdict_seconds", run.seconds)
    assert run.rc == 0, str(run)
    warnings = " ".join(e["message"] for e in run.events if e["kind"] == "event")
    assert "FailedMount" in warnings or "FailedCreate" in warnings, "the transient warnings were shown"


def test_helm_release_taken_over_with_adopt(kade, kube_cluster, kube_namespace, record_property):
    """Objects made by Helm 3 (field manager helm, meta.helm.sh marks): refused without --adopt; with
    it, kade owns their fields, and fields the manifests no longer set are removed."""
    ns, api = kube_namespace, kube_cluster.api_client()
    helm_meta = {"annotations": {"meta.helm.sh/release-name": "web", "meta.helm.sh/release-namespace": ns},
                 "labels": {"app.kubernetes.io/managed-by": "Helm"}}
    old_cm = configmap("settings", mode="a", stale="remove me")
    old_cm["metadata"].update(copy.deepcopy(helm_meta))
    client.CoreV1Api(api).create_namespaced_config_map(ns, old_cm, field_manager="helm")
    old_web = deployment("web", kube_cluster.base_image, env={"MODE": "a", "OLD": "remove me"})
    old_web["metadata"].update(copy.deepcopy(helm_meta))
    client.AppsV1Api(api).create_namespaced_deployment(ns, old_web, field_manager="helm")

    manifests = kade.write("web.yaml", configmap("settings", mode="b"),
                           deployment("web", kube_cluster.base_image, env={"MODE": "b"}))
    refused = kade.deploy(ns, manifests, release="web")
    assert refused.rc == 1, str(refused)
    assert f"belongs to helm release web in namespace {ns}" in refused.stderr and "--adopt" in refused.stderr
    assert client.CoreV1Api(api).read_namespaced_config_map("settings", ns).data["mode"] == "a", "nothing applied"

    plan = kade.run("plan", "-f", manifests, "--release", "web", "-n", ns)
    assert plan.rc == 1 and "refused" in plan.stdout, str(plan)

    adopted = kade.deploy(ns, manifests, "--adopt", release="web")
    record_property("verdict_seconds", adopted.seconds)
    assert adopted.rc == 0, str(adopted)
    cm = client.CoreV1Api(api).read_namespaced_config_map("settings", ns)
    assert cm.data == {"mode": "b"}, "the field Helm set and the manifests dropped is removed"
    assert "meta.helm.sh/release-name" not in (cm.metadata.annotations or {})
    assert cm.metadata.annotations["kade.io/release-name"] == "web"
    assert {m.manager for m in cm.metadata.managed_fields} == {"kade"}
    env = client.AppsV1Api(api).read_namespaced_deployment("web", ns).spec.template.spec.containers[0].env
    assert [(e.name, e.value) for e in env] == [("MODE", "b")]


def test_field_managers_moved_though_the_object_changed_since_it_was_read(kube_cluster, kube_namespace):
    """The Deployment controller writes a new Deployment's status right after Helm created it, often
    between kade's read and its managedFields rewrite (a JSON Patch that tests the resourceVersion, so
    nobody's write is lost): kade reads it again and moves the managers over, it does not fail."""
    ns, api = kube_namespace, kube_cluster.api_client()
    core = client.CoreV1Api(api)
    core.create_namespaced_config_map(ns, configmap("settings", mode="a"), field_manager="helm")
    kube, cms = Kube(kube_cluster.kubeconfig), ApiResource("", "v1", "ConfigMap", "configmaps", True)
    stale = get_live(kube, cms, ns, "settings")
    core.patch_namespaced_config_map("settings", ns, {"metadata": {"labels": {"touched": "1"}}},
                                     field_manager="a-controller")   # after our read
    events: list[str] = []
    manifest = configmap("settings", mode="b")
    manifest["metadata"]["namespace"] = ns
    now = migrate_managers(kube, Resource(manifest), cms, stale, lambda kind, message, **_: events.append(message))
    assert now is not None and now["metadata"]["resourceVersion"] != stale["metadata"]["resourceVersion"]
    managers = {m.manager for m in core.read_namespaced_config_map("settings", ns).metadata.managed_fields}
    assert managers == {"kade", "a-controller"}, "helm's fields moved to kade; the later writer's kept"
    assert len(events) == 1 and "fields of helm now belong to kade" in events[0], events


def test_another_release_s_object_is_refused_and_never_pruned_by_it(kade, kube_namespace):
    ns = kube_namespace
    first = kade.deploy(ns, kade.write("a.yaml", configmap("shared", x="1"), configmap("mine", x="1")), release="a")
    assert first.rc == 0, str(first)
    other = kade.deploy(ns, kade.write("b.yaml", configmap("shared", x="2")), release="b")
    assert other.rc == 1 and "belongs to kade release a" in other.stderr, str(other)
    taken = kade.deploy(ns, kade.write("b2.yaml", configmap("shared", x="2")), "--adopt", release="b")
    assert taken.rc == 0, str(taken)
    pruned = kade.deploy(ns, kade.write("a2.yaml", configmap("mine", x="1")), release="a")
    assert pruned.rc == 0, str(pruned)
    assert "not deleting ConfigMap" in pruned.stderr and "belongs to kade release b" in pruned.stderr, str(pruned)
    gone = kade.run("uninstall", "a", "-n", ns, "--output", "json")
    assert gone.result["deleted"] == [f"ConfigMap {ns}/mine"], str(gone)


def test_a_plain_job_changed_twice(kade, kube_cluster, kube_namespace, record_property):
    """A Job's template cannot change in place: the default delete-policy for plain Jobs recreates it."""
    ns, image = kube_namespace, kube_cluster.base_image
    for n in (1, 2, 3):
        path = kade.write(f"job{n}.yaml", job("migrate", image, f"echo migration {n}"))
        if n > 1:
            plan = kade.run("plan", "-f", path, "--release", "app", "-n", ns)
            assert plan.rc == 0 and f"recreate  Job.batch {ns}/migrate" in plan.stdout, str(plan)
        run = kade.deploy(ns, path)
        assert run.rc == 0, str(run)
        if n > 1:
            assert any(m.startswith("recreated Job.batch") for m in (e["message"] for e in run.events)), str(run)
    live = client.BatchV1Api(kube_cluster.api_client()).read_namespaced_job("migrate", ns)
    assert live.spec.template.spec.containers[0].command[-1] == "echo migration 3"
    statefulset_like = deployment("fixed", image)
    statefulset_like["spec"]["selector"]["matchLabels"]["extra"] = "x"
    statefulset_like["spec"]["template"]["metadata"]["labels"]["extra"] = "x"
    assert kade.deploy(ns, kade.write("d1.yaml", deployment("fixed", image)), release="sel").rc == 0
    immutable = kade.deploy(ns, kade.write("d2.yaml", statefulset_like), release="sel")
    failure = _failure(immutable)
    assert "field is immutable" in failure["message"] and "before-creation-if-immutable" in failure["message"]


def test_kubectl_scale_and_replicas_on_creation(kade, kube_cluster, kube_namespace):
    ns, apps = kube_namespace, client.AppsV1Api(kube_cluster.api_client())
    path = kade.write("web.yaml", deployment("web", kube_cluster.base_image, replicas=1))
    assert kade.deploy(ns, path).rc == 0
    apps.patch_namespaced_deployment_scale("web", ns, {"spec": {"replicas": 2}}, field_manager="kubectl")
    again = kade.deploy(ns, path)
    assert again.rc == 0, str(again)  # was: a server-side apply conflict
    assert "spec.replicas was changed by kubectl" in again.stderr
    assert apps.read_namespaced_deployment("web", ns).spec.replicas == 1

    hpa_like = deployment("auto", kube_cluster.base_image, replicas=1, annotations={"kade.io/replicas-on-creation": "1"})
    auto = kade.write("auto.yaml", hpa_like)
    assert kade.deploy(ns, auto, release="auto").rc == 0
    apps.patch_namespaced_deployment_scale("auto", ns, {"spec": {"replicas": 2}}, field_manager="kubectl")
    kept = kade.deploy(ns, auto, release="auto")
    assert kept.rc == 0 and "spec.replicas was changed" not in kept.stderr, str(kept)
    assert apps.read_namespaced_deployment("auto", ns).spec.replicas == 2, "replicas-on-creation leaves replicas alone"


class _Validator(JsonHandler):
    def do_POST(self):  # noqa: N802
        review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_json(200, {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                             "response": {"uid": review["request"]["uid"], "allowed": True}})


def test_an_operator_whose_webhook_starts_late(kade, kube_cluster, kube_namespace, tmp_path, record_property):
    """One release holds an operator's CRD, its validating webhook and a custom resource. The webhook
    server (a real HTTPS server on the API server's host, where it listens on loopback) starts only 8 s
    after the deploy: until then every create is refused with "failed calling webhook", and kade retries."""
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    probe = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Validator)
    port = probe.server_address[1]
    probe.server_close()  # until the server starts, the API server's calls are refused
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    group = f"{kube_namespace}.kade.test"
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": f"gadgets.{group}"},
           "spec": {"group": group, "scope": "Namespaced", "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget"},
                    "versions": [{"name": "v1", "served": True, "storage": True, "schema": {
                        "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]}}
    webhook = {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
               "metadata": {"name": f"gadgets.{group}"},
               "webhooks": [{"name": f"validate.{group}", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                             "failurePolicy": "Fail", "timeoutSeconds": 5,
                             "clientConfig": {"url": f"https://127.0.0.1:{port}/validate",
                                              "caBundle": base64.b64encode(cert.read_bytes()).decode()},
                             "rules": [{"apiGroups": [group], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
                                        "resources": ["gadgets"]}]}]}
    gadget = {"apiVersion": f"{group}/v1", "kind": "Gadget", "metadata": {"name": "g"}, "spec": {"size": 1}}
    serving = threading.Event()
    holder: list = []

    def serve_late() -> None:
        time.sleep(8)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Validator)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        holder.append(server)
        serving.set()
        server.serve_forever(poll_interval=0.2)

    thread = threading.Thread(target=serve_late, daemon=True)
    thread.start()
    try:
        run = kade.deploy(kube_namespace, kade.write("operator.yaml", crd, webhook, gadget), timeout="90s")
        record_property("verdict_seconds", run.seconds)
        assert run.rc == 0, str(run)
        retries = [e["message"] for e in run.events if e["kind"] == "retry"]
        assert retries and "failed calling webhook" in retries[0] and "admission webhook" in retries[0], str(run)
        assert serving.is_set() and run.seconds > 8
    finally:
        for server in holder:
            server.shutdown()
        api = kube_cluster.api_client()
        for call, name in [(client.AdmissionregistrationV1Api(api).delete_validating_webhook_configuration, f"gadgets.{group}"),
                           (client.ApiextensionsV1Api(api).delete_custom_resource_definition, f"gadgets.{group}")]:
            try:
                call(name)
            except client.ApiException:
                pass
