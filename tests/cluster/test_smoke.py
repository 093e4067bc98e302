"""Smoke tests of the real test cluster: the debootstrapped base image runs as a Deployment, a Job
and a CronJob, and pods reach the `kubernetes` Service (through kube-proxy) and the registry."""
from __future__ import annotations

import time
from typing import Callable, Iterator, TypeVar

import pytest
from kubernetes import client

from tests.fixtures.cluster import KubeCluster, namespace

pytestmark = pytest.mark.cluster

T = TypeVar("T")
TIMEOUT_S = 120


def wait_until(what: str, probe: Callable[[], T | None], core: client.CoreV1Api, ns: str) -> T:
    """Poll until probe() returns a truthy value; on timeout fail with the namespace's pods and events."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.5)
    pods = [(p.metadata.name, p.status.phase, p.status.container_statuses) for p in core.list_namespaced_pod(ns).items]
    events = [f"{e.involved_object.name}: {e.reason}: {e.message}" for e in core.list_namespaced_event(ns).items]
    pytest.fail(f"{what} not done after {TIMEOUT_S}s in namespace {ns}\npods: {pods}\nevents:\n" + "\n".join(events))


def pod_spec(image: str, script: str, restart: str = "Never") -> client.V1PodSpec:
    return client.V1PodSpec(
        restart_policy=restart,
        termination_grace_period_seconds=1,
        containers=[client.V1Container(name="main", image=image, command=["bash", "-c", script])],
    )


def job_logs(core: client.CoreV1Api, ns: str, job: str) -> str:
    pods = core.list_namespaced_pod(ns, label_selector=f"job-name={job}").items
    return "".join(core.read_namespaced_pod_log(p.metadata.name, ns) for p in pods)


def run_job(cluster: KubeCluster, ns: str, name: str, script: str) -> str:
    """Run script in the base image as a Job; return its logs once it succeeded."""
    api = cluster.api_client()
    batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
    batch.create_namespaced_job(ns, client.V1Job(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1JobSpec(backoff_limit=0, template=client.V1PodTemplateSpec(spec=pod_spec(cluster.base_image, script))),
    ))

    def finished() -> client.V1JobStatus | None:
        status = batch.read_namespaced_job_status(name, ns).status
        return status if (status.succeeded or status.failed) else None

    status = wait_until(f"job {name}", finished, core, ns)
    logs = job_logs(core, ns, name)
    assert status.succeeded == 1, f"job {name} failed; logs:\n{logs}"
    return logs


@pytest.fixture(scope="module")
def smoke_ns(kube_cluster: KubeCluster) -> Iterator[str]:
    with namespace(kube_cluster) as ns:
        yield ns


@pytest.fixture(scope="module", autouse=True)
def cronjob(kube_cluster: KubeCluster, smoke_ns: str) -> str:
    """Made before the other tests run, so the wait for its first minute overlaps them."""
    batch = client.BatchV1Api(kube_cluster.api_client())
    batch.create_namespaced_cron_job(smoke_ns, client.V1CronJob(
        metadata=client.V1ObjectMeta(name="tick"),
        spec=client.V1CronJobSpec(
            schedule="* * * * *",
            concurrency_policy="Forbid",
            job_template=client.V1JobTemplateSpec(spec=client.V1JobSpec(
                backoff_limit=0,
                template=client.V1PodTemplateSpec(spec=pod_spec(kube_cluster.base_image, "echo tick from $(hostname)")),
            )),
        ),
    ))
    return "tick"


def test_base_image_job_completes(kube_cluster: KubeCluster, smoke_ns: str) -> None:
    logs = run_job(kube_cluster, smoke_ns, "hello", "echo hello from $(cat /etc/debian_version); ls /bin/bash")
    assert "hello from 12." in logs
    assert "/bin/bash" in logs


def test_pod_reaches_kubernetes_service(kube_cluster: KubeCluster, smoke_ns: str) -> None:
    # Plain HTTP to the ClusterIP: Go's TLS server (the API server) answers it with a 400 that names HTTPS.
    logs = run_job(kube_cluster, smoke_ns, "service", r"""
        echo "service $KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT"
        exec 3<>"/dev/tcp/$KUBERNETES_SERVICE_HOST/$KUBERNETES_SERVICE_PORT"
        printf 'GET / HTTP/1.0\r\n\r\n' >&3
        timeout 10 cat <&3 || true  # the API server may reset the connection after its 400: the log decides
    """)
    assert "service 10.96.0.1:443" in logs
    assert "Client sent an HTTP request to an HTTPS server" in logs


def test_pod_reaches_registry(kube_cluster: KubeCluster, smoke_ns: str) -> None:
    host, port = kube_cluster.registry.rsplit(":", 1)
    logs = run_job(kube_cluster, smoke_ns, "registry", rf"""
        exec 3<>/dev/tcp/{host}/{port}
        printf 'GET /v2/ HTTP/1.0\r\nHost: {kube_cluster.registry}\r\n\r\n' >&3
        timeout 10 cat <&3
    """)
    assert logs.startswith("HTTP/1.0 200 OK")
    assert "Docker-Distribution-Api-Version: registry/2.0" in logs


def test_base_image_deployment_becomes_ready(kube_cluster: KubeCluster, smoke_ns: str) -> None:
    api = kube_cluster.api_client()
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    labels = {"app": "smoke"}
    spec = pod_spec(kube_cluster.base_image, "exec sleep infinity", restart="Always")
    spec.containers[0].readiness_probe = client.V1Probe(
        _exec=client.V1ExecAction(command=["test", "-f", "/etc/debian_version"]), period_seconds=1
    )
    apps.create_namespaced_deployment(smoke_ns, client.V1Deployment(
        metadata=client.V1ObjectMeta(name="smoke"),
        spec=client.V1DeploymentSpec(
            replicas=1,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(metadata=client.V1ObjectMeta(labels=labels), spec=spec),
        ),
    ))
    status = wait_until(
        "deployment smoke Ready",
        lambda: (s := apps.read_namespaced_deployment_status("smoke", smoke_ns).status).ready_replicas and s,
        core, smoke_ns,
    )
    assert status.ready_replicas == 1
    assert status.available_replicas == 1


def test_cronjob_fires(kube_cluster: KubeCluster, smoke_ns: str, cronjob: str) -> None:
    api = kube_cluster.api_client()
    batch, core = client.BatchV1Api(api), client.CoreV1Api(api)

    def succeeded_job() -> str | None:
        for job in batch.list_namespaced_job(smoke_ns).items:
            owners = job.metadata.owner_references or []
            if any(o.kind == "CronJob" and o.name == cronjob for o in owners) and job.status.succeeded:
                return job.metadata.name
        return None

    job = wait_until(f"a job of cronjob {cronjob}", succeeded_job, core, smoke_ns)
    assert "tick from " in job_logs(core, smoke_ns, job)
    assert batch.read_namespaced_cron_job(cronjob, smoke_ns).status.last_schedule_time is not None
