"""End to end on the real test cluster: `kade deploy` says deployed only when the workload runs, and
fails fast, naming the resource, pod, container, reason, event and logs, when it does not.
Each test records its time to verdict (record_property) — speed is measured in bench/, not asserted."""
from __future__ import annotations

import pytest
from kubernetes import client

from tests.fixtures.deploy import (FAST_PROBE_FAIL, FAST_PROBE_OK, configmap, deployment, job)

pytestmark = pytest.mark.cluster


def deploy(kade, ns, path, *extra, release="app", timeout="120s"):
    return kade.run("deploy", "-f", path, "--release", release, "-n", ns, "--timeout", timeout, "--output", "json", *extra)


def test_healthy_rollout_then_plan(kade, kube_cluster, kube_namespace, record_property):
    ns, image = kube_namespace, kube_cluster.base_image
    path = kade.write("app.yaml", configmap("settings", mode="fast"),
                      deployment("web", image, "echo serving mode $MODE; sleep infinity", replicas=2,
                                 probe=FAST_PROBE_OK, env={"MODE": "a"}))
    run = deploy(kade, ns, path)
    record_property("verdict_seconds", run.seconds)
    assert run.rc == 0, str(run)
    assert run.result["ok"] and run.result["revision"] == 1
    assert "release app revision 1 deployed" in run.result["message"]
    apps = client.AppsV1Api(kube_cluster.api_client())
    dep = apps.read_namespaced_deployment("web", ns)
    assert dep.status.ready_replicas == 2, "kade said deployed before the pods were ready"
    kinds = [e["kind"] for e in run.events]
    assert "ready" in kinds and "done" in kinds
    logs = [e for e in run.events if e["kind"] == "log"]
    assert logs and all(e["container"] == "app" and e["message"].endswith("serving mode a") for e in logs), run.stderr

    same = kade.run("plan", "-f", path, "--release", "app", "-n", ns, "--exit-code")
    assert same.rc == 0, str(same)
    assert "no changes" in same.stdout

    changed_path = kade.write("app2.yaml", configmap("settings", mode="fast"),
                              deployment("web", image, "echo serving mode $MODE; sleep infinity", replicas=2,
                                         probe=FAST_PROBE_OK, env={"MODE": "b"}))
    changed = kade.run("plan", "-f", changed_path, "--release", "app", "-n", ns, "--exit-code")
    assert changed.rc == 3, str(changed)  # 2 is a usage error
    assert "update    Deployment.apps" in changed.stdout and "value: b" in changed.stdout

    history = kade.run("history", "app", "-n", ns, "--output", "json")
    assert history.rc == 0, str(history)
    assert [(r["revision"], r["status"]) for r in history.result] == [(1, "deployed")]


def _failed(run, reason_options):
    assert run.rc == 1, str(run)
    result = run.result
    assert not result["ok"]
    failure = result["failures"][0]
    assert failure["reason"] in reason_options, str(run)
    return failure


def test_crash_loop_fails_fast_with_logs(kade, kube_cluster, kube_namespace, record_property):
    path = kade.write("crash.yaml", deployment("crash", kube_cluster.base_image, "echo booting; echo 'fatal: no config' >&2; exit 1"))
    run = deploy(kade, kube_namespace, path)
    record_property("verdict_seconds", run.seconds)
    failure = _failed(run, {"CrashLoopBackOff", "ContainerFailed"})
    assert failure["resource"] == f"Deployment.apps {kube_namespace}/crash"
    assert failure["pod"].startswith("crash-") and failure["container"] == "app"
    assert "fatal: no config" in "\n".join(failure["logs"])
    assert "first release" in run.result["message"] and "removed" in run.result["message"]
    assert run.seconds < 60, str(run)
    summary = [e for e in run.events if e["kind"] == "summary"]
    assert summary and "container: app" in summary[0]["message"] and "fatal: no config" in summary[0]["message"]
    apps = client.AppsV1Api(kube_cluster.api_client())
    assert not [d for d in apps.list_namespaced_deployment(kube_namespace).items if d.metadata.name == "crash"], \
        "a failed first release must remove what it created"


def test_image_pull_backoff_in_text_mode(kade, kube_cluster, kube_namespace, record_property):
    image = f"{kube_cluster.registry}/kade-tests/does-not-exist:v1"
    path = kade.write("pull.yaml", deployment("pull", image))
    run = kade.run("deploy", "-f", path, "--release", "app", "-n", kube_namespace, "--timeout", "120s")
    record_property("verdict_seconds", run.seconds)
    assert run.rc == 1, str(run)
    summary = run.stderr[run.stderr.index(f"Deployment.apps {kube_namespace}/pull failed: "):]
    assert "ImagePullBackOff" in summary.splitlines()[0] or "ErrImagePull" in summary.splitlines()[0], str(run)
    assert "  pod:       pull-" in summary and "  container: app" in summary and "does-not-exist" in summary
    assert "failed and, as there is no earlier deployed revision (first release), what it created was removed" in run.stdout


def test_readiness_probe_never_passes(kade, kube_cluster, kube_namespace, record_property):
    path = kade.write("probe.yaml", deployment("probe", kube_cluster.base_image, probe=FAST_PROBE_FAIL))
    run = deploy(kade, kube_namespace, path)
    record_property("verdict_seconds", run.seconds)
    failure = _failed(run, {"ReadinessProbeFailed"})
    assert failure["container"] == "app" and "Readiness probe failed" in failure["event"], str(run)


def test_unschedulable_requests(kade, kube_cluster, kube_namespace, record_property):
    path = kade.write("big.yaml", deployment("big", kube_cluster.base_image, resources={"requests": {"cpu": "500"}}))
    run = deploy(kade, kube_namespace, path)
    record_property("verdict_seconds", run.seconds)
    failure = _failed(run, {"Unschedulable"})
    assert "Insufficient cpu" in failure["message"] + failure["event"], str(run)


def test_failing_pre_deploy_hook_stops_the_deploy(kade, kube_cluster, kube_namespace, record_property):
    image = kube_cluster.base_image
    path = kade.write("hook.yaml",
                      job("migrate", image, "echo 'migration 42 failed' >&2; exit 3", {"kade.io/hook": "pre-deploy"}),
                      deployment("web", image))
    run = deploy(kade, kube_namespace, path)
    record_property("verdict_seconds", run.seconds)
    failure = _failed(run, {"BackoffLimitExceeded", "Failed"})
    assert failure["resource"] == f"Job.batch {kube_namespace}/migrate"
    assert "migration 42 failed" in "\n".join(failure["logs"]), str(run)
    apps = client.AppsV1Api(kube_cluster.api_client())
    assert not apps.list_namespaced_deployment(kube_namespace).items, "the Deployment must not be applied after a failed pre-deploy hook"


def test_ignore_and_continue_fail_mode(kade, kube_cluster, kube_namespace, record_property):
    image = kube_cluster.base_image
    path = kade.write("ignore.yaml", configmap("settings", a="1"),
                      deployment("flaky", image, "exit 1", annotations={"kade.io/fail-mode": "IgnoreAndContinueDeployProcess"}),
                      deployment("web", image, probe=FAST_PROBE_OK))
    run = deploy(kade, kube_namespace, path)
    record_property("verdict_seconds", run.seconds)
    assert run.rc == 0, str(run)
    assert any(e["kind"] == "warning" and "IgnoreAndContinueDeployProcess" in e["message"] for e in run.events), str(run)


def test_hope_fail_mode_fails_at_the_end(kade, kube_cluster, kube_namespace, record_property):
    image = kube_cluster.base_image
    slow_probe = {**FAST_PROBE_OK, "initialDelaySeconds": 8}
    path = kade.write("hope.yaml",
                      deployment("hopeful", image, "exit 1", annotations={"werf.io/fail-mode": "HopeUntilEndOfDeployProcess"}),
                      deployment("slow", image, probe=slow_probe))
    run = deploy(kade, kube_namespace, path)
    record_property("verdict_seconds", run.seconds)
    failure = _failed(run, {"CrashLoopBackOff", "ContainerFailed"})
    assert failure["resource"].endswith("/hopeful")
    order = [(e["kind"], e.get("resource", "")) for e in run.events]
    slow_ready = order.index(("ready", f"Deployment.apps {kube_namespace}/slow"))
    hope_failed = order.index(("failed", f"Deployment.apps {kube_namespace}/hopeful"))
    assert slow_ready < hope_failed, "with Hope the verdict waits until everything else is done"
    assert any(e["kind"] == "warning" and "hoping" in e["message"] for e in run.events)


def test_custom_resource_without_controller(kade, kube_cluster, kube_namespace, record_property):
    group = f"{kube_namespace}.kade.test"  # a fresh CRD per test run
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": f"widgets.{group}"},
           "spec": {"group": group, "scope": "Namespaced",
                    "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                    "versions": [{"name": "v1", "served": True, "storage": True,
                                  "subresources": {"status": {}},
                                  "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]}}
    widget = {"apiVersion": f"{group}/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": 1}}
    waiting = {**widget, "metadata": {"name": "waits", "annotations": {"kade.io/wait-for-status": "true",
                                                                       "kade.io/no-activity-timeout": "5s"}}}
    try:
        # most custom resources never get a status (ServiceMonitor, PrometheusRule, ...): ready once they exist
        run = deploy(kade, kube_namespace, kade.write("cr.yaml", crd, widget), timeout="30s")
        assert run.rc == 0, str(run)
        # one whose controller must answer first says so; with none, nothing ever changes
        run = deploy(kade, kube_namespace, kade.write("cr2.yaml", crd, widget, waiting), timeout="30s")
        record_property("verdict_seconds", run.seconds)
        failure = _failed(run, {"NoActivity"})
        assert failure["resource"] == f"Widget.{group} {kube_namespace}/waits"
        assert "waiting for a controller to write a status" in failure["message"], str(run)
    finally:
        ext = client.ApiextensionsV1Api(kube_cluster.api_client())
        try:
            ext.delete_custom_resource_definition(f"widgets.{group}")
        except client.ApiException:
            pass


def test_hooks_weights_and_dependencies_run_in_order(kade, kube_cluster, kube_namespace, record_property):
    image, ns = kube_cluster.base_image, kube_namespace
    path = kade.write("ordered.yaml",
                      job("after", image, "echo post", {"kade.io/hook": "post-deploy"}),
                      deployment("api", image, probe=FAST_PROBE_OK,
                                 annotations={"kade.io/deploy-dependency-db": "state=ready,kind=Deployment,name=db"}),
                      deployment("db", image, probe=FAST_PROBE_OK),
                      configmap("early", {"kade.io/weight": "-1"}, a="1"),
                      job("before", image, "echo pre", {"werf.io/hook": "pre-deploy"}))
    run = deploy(kade, ns, path)
    record_property("verdict_seconds", run.seconds)
    assert run.rc == 0, str(run)
    ready = [e["resource"].split(" ")[-1] for e in run.events if e["kind"] == "ready"]
    assert ready == [f"{ns}/before", f"{ns}/early", f"{ns}/db", f"{ns}/api", f"{ns}/after"], str(run)
