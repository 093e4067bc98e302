"""End to end on the real test cluster: failing pre- and post-deploy hooks.

A failing hook fails the deploy with the hook's name, its pod's exit code and last log lines; a
failing post-deploy hook is rolled back like any other failure (--atomic); a failing pre-deploy hook
stops the deploy before the workload is applied, so the running release stays as it was (no rollback,
which would re-run the previous revision's hooks)."""
from __future__ import annotations

import pytest
from kubernetes import client

from tests.fixtures.deploy import FAST_PROBE_OK, deployment, job

pytestmark = pytest.mark.cluster

POST, PRE = {"kade.io/hook": "post-deploy"}, {"werf.io/hook": "pre-deploy"}
FAILING_NOTIFY = "echo 'notifying chat'; echo 'webhook answered 503' >&2; exit 7"


def web(image: str, mode: str) -> dict:
    return deployment("web", image, "echo serving $MODE; sleep infinity", probe=FAST_PROBE_OK, env={"MODE": mode})


def live_deployment(kube_cluster, ns: str, name: str):
    apps = client.AppsV1Api(kube_cluster.api_client())
    return next((d for d in apps.list_namespaced_deployment(ns).items if d.metadata.name == name), None)


def mode_of(dep) -> str:
    return next(e.value for e in dep.spec.template.spec.containers[0].env if e.name == "MODE")


def history(kade, ns: str) -> list[tuple[int, str]]:
    return [(r["revision"], r["status"]) for r in kade.run("history", "app", "-n", ns, "--output", "json").result]


def assert_hook_failure(run, resource: str, exit_code: int, log_line: str) -> dict:
    """The deploy failed on the hook, naming it, its pod, its exit code and its last log lines."""
    assert run.rc == 1, str(run)
    failure = run.result["failures"][0]
    assert failure["resource"] == resource, str(run)
    assert failure["reason"] in ("BackoffLimitExceeded", "Failed"), str(run)
    assert failure["pod"] and failure["container"] == "job", str(run)
    assert f"exit code {exit_code}" in failure["container_state"], str(run)
    assert log_line in failure["logs"], str(run)
    [summary] = [e["message"] for e in run.events if e["kind"] == "summary"][:1]
    assert f"{resource} failed" in summary and f"exit code {exit_code}" in summary and log_line in summary, summary
    return failure


def test_failing_post_deploy_hook_on_first_release(kade, kube_cluster, kube_namespace, record_property):
    ns, image = kube_namespace, kube_cluster.base_image
    run = kade.deploy(ns, kade.write("app.yaml", web(image, "a"), job("notify", image, FAILING_NOTIFY, POST)))
    record_property("verdict_seconds", run.seconds)
    assert_hook_failure(run, f"Job.batch {ns}/notify", 7, "webhook answered 503")
    ready = [e["resource"] for e in run.events if e["kind"] == "ready"]
    assert f"Deployment.apps {ns}/web" in ready, "the hook runs after the workload is ready"
    assert "first release" in run.result["message"] and "removed" in run.result["message"], str(run)
    assert live_deployment(kube_cluster, ns, "web") is None, "a failed first release removes what it created"
    batch = client.BatchV1Api(kube_cluster.api_client())
    assert not batch.list_namespaced_job(ns).items, "the failed hook is removed with the rest"
    assert history(kade, ns) == [(1, "failed")]


def test_failing_post_deploy_hook_rolls_back_an_upgrade(kade, kube_cluster, kube_namespace, record_property):
    ns, image = kube_namespace, kube_cluster.base_image
    first = kade.deploy(ns, kade.write("v1.yaml", web(image, "a"), job("notify", image, "echo notified", POST)))
    assert first.rc == 0, str(first)

    run = kade.deploy(ns, kade.write("v2.yaml", web(image, "b"), job("notify", image, FAILING_NOTIFY, POST)))
    record_property("verdict_seconds", run.seconds)
    assert_hook_failure(run, f"Job.batch {ns}/notify", 7, "webhook answered 503")
    assert run.result["rolled_back_to"] == 1 and "rolled back to revision 1" in run.result["message"], str(run)
    assert mode_of(live_deployment(kube_cluster, ns, "web")) == "a", "the rollback restores the previous workload"
    # a rollback runs the rollback hooks, not revision 1's post-deploy hook again (as Helm): the failed
    # hook of revision 2 stays for inspection
    notify = client.BatchV1Api(kube_cluster.api_client()).read_namespaced_job("notify", ns)
    assert "webhook answered 503" in notify.spec.template.spec.containers[0].command[-1]
    kinds = [(e["kind"], e.get("resource")) for e in run.events]
    after = kinds[kinds.index(("rollback", None)):]
    assert ("apply", f"Job.batch {ns}/notify") not in after and ("apply", f"Deployment.apps {ns}/web") in after, after
    assert history(kade, ns) == [(1, "superseded"), (2, "failed"), (3, "deployed")]


def test_failing_pre_deploy_hook_leaves_the_running_workload_untouched(kade, kube_cluster, kube_namespace,
                                                                      record_property):
    ns, image = kube_namespace, kube_cluster.base_image
    first = kade.deploy(ns, kade.write("v1.yaml", web(image, "a")))
    assert first.rc == 0, str(first)
    before = live_deployment(kube_cluster, ns, "web")

    migrate = job("migrate", image, "echo 'applying migration 42'; echo 'migration 42: column exists' >&2; exit 3", PRE)
    run = kade.deploy(ns, kade.write("v2.yaml", migrate, web(image, "b")))
    record_property("verdict_seconds", run.seconds)
    assert_hook_failure(run, f"Job.batch {ns}/migrate", 3, "migration 42: column exists")
    applied = [e.get("resource") for e in run.events if e["kind"] == "apply"]
    assert applied == [f"Job.batch {ns}/migrate"], "nothing after a failed pre-deploy hook is applied, nor rolled back"
    after = live_deployment(kube_cluster, ns, "web")
    assert mode_of(after) == "a" and after.metadata.generation == before.metadata.generation, \
        "the running workload must not be touched"
    assert run.result["rolled_back_to"] is None, str(run)
    assert "revision 1 stays deployed" in run.result["message"], str(run)
    assert history(kade, ns) == [(1, "deployed"), (2, "failed")]
    batch = client.BatchV1Api(kube_cluster.api_client())
    assert not batch.list_namespaced_job(ns).items, "the failed revision's hook is removed like the rest it created"


def test_hooks_run_at_their_operations_only(kade, kube_cluster, kube_namespace, record_property):
    """Helm's hook events: an install-only hook does not run on an upgrade, a rollback runs its
    rollback hook and not the upgrade's, uninstall runs the delete hooks (a failing pre-delete hook
    stops it before anything is deleted)."""
    ns, image = kube_namespace, kube_cluster.base_image
    hooks = [job("seed", image, "echo seeding", {"helm.sh/hook": "pre-install"}),
             job("migrate", image, "echo migrating", {"helm.sh/hook": "pre-upgrade"}),
             job("on-rollback", image, "echo rolling back", {"helm.sh/hook": "pre-rollback"}),
             job("farewell", image, "echo bye", {"helm.sh/hook": "pre-delete",
                                                  "helm.sh/hook-delete-policy": "before-hook-creation,hook-succeeded"})]

    def hook_jobs(run) -> list[str]:
        return [e["resource"].rsplit("/", 1)[1] for e in run.events if e["kind"] == "apply" and "Job.batch" in e["resource"]]

    install = kade.deploy(ns, kade.write("v1.yaml", web(image, "a"), *hooks))
    assert install.rc == 0 and hook_jobs(install) == ["seed"], str(install)
    upgrade = kade.deploy(ns, kade.write("v2.yaml", web(image, "b"), *hooks))
    assert upgrade.rc == 0 and hook_jobs(upgrade) == ["migrate"], str(upgrade)
    back = kade.run("rollback", "app", "-n", ns, "--timeout", "120s", "--output", "json")
    assert back.rc == 0 and hook_jobs(back) == ["on-rollback"], str(back)
    assert mode_of(live_deployment(kube_cluster, ns, "web")) == "a"

    failing = [*hooks[:3], job("farewell", image, "echo 'cannot say bye' >&2; exit 4", {"helm.sh/hook": "pre-delete"})]
    assert kade.deploy(ns, kade.write("v3.yaml", web(image, "a"), *failing)).rc == 0
    refused = kade.run("uninstall", "app", "-n", ns, "--timeout", "60s", "--output", "json")
    assert refused.rc == 1 and "a pre-delete hook failed, nothing was deleted" in refused.stderr, str(refused)
    assert live_deployment(kube_cluster, ns, "web") is not None
    assert kade.deploy(ns, kade.write("v4.yaml", web(image, "a"), *hooks)).rc == 0
    gone = kade.run("uninstall", "app", "-n", ns, "--timeout", "60s", "--output", "json")
    record_property("uninstall_seconds", gone.seconds)
    assert gone.rc == 0 and hook_jobs(gone) == ["farewell"], str(gone)
    assert live_deployment(kube_cluster, ns, "web") is None
    names = [j.metadata.name for j in client.BatchV1Api(kube_cluster.api_client()).list_namespaced_job(ns).items]
    assert "farewell" not in names, "hook-succeeded deleted the delete hook"
