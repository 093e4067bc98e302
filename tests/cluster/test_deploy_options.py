"""End to end on the real test cluster: the per-resource tracking annotations change the outcome.

Each test deploys the annotated resources next to the same resources without the annotation (other
releases, run at the same time to keep the suite short): the annotation makes the difference.
Logs and events are read from `--output json` (JSON lines on stderr, the result on stdout)."""
from __future__ import annotations

import pytest
from kubernetes import client

from tests.fixtures.deploy import FAST_PROBE_OK, deployment, with_scratch

pytestmark = pytest.mark.cluster

# the kubelet restarts a container at once after its first crash (which the default budget of 1 failure
# per replica allows), then backs off 10 s: a second crash is one occurrence more than the default allows
CRASH_TWICE = ("echo x >> /state/starts; if [ $(wc -l < /state/starts) -gt 2 ]; then echo recovered; sleep infinity; fi; "
               "echo 'early start: crashing' >&2; exit 1")
NEVER_READY_PROBE = {**FAST_PROBE_OK, "initialDelaySeconds": 3600}  # not failing: just not ready yet


def warm_up_probe() -> dict:
    """Fails until the container has created /tmp/ready (after its warm-up)."""
    return {"exec": {"command": ["test", "-e", "/tmp/ready"]}, "periodSeconds": 1, "timeoutSeconds": 2,
            "failureThreshold": 1}


def by_kind(run, kind: str) -> list[dict]:
    return [e for e in run.events if e["kind"] == kind]


def test_non_blocking_and_no_activity_timeout(kade, kube_cluster, kube_namespace, record_property):
    ns, image = kube_namespace, kube_cluster.base_image
    non_blocking = kade.start_deploy(ns, kade.write("nb.yaml",
        deployment("waiting", image, probe=NEVER_READY_PROBE,
                   annotations={"kade.io/track-termination-mode": "NonBlocking"}),
        deployment("web", image, probe=FAST_PROBE_OK)), release="nb")
    # the same never-ready Deployment, blocking, with a short no-activity-timeout (the deploy allows 120 s)
    quiet = kade.deploy(ns, kade.write("quiet.yaml",
        deployment("quiet", image, probe=NEVER_READY_PROBE, annotations={"werf.io/no-activity-timeout": "8s"})),
        release="quiet")
    run = kade.finish(non_blocking)
    record_property("verdict_seconds", max(run.seconds, quiet.seconds))

    assert run.rc == 0, str(run)
    assert [e["resource"] for e in by_kind(run, "ready")] == [f"Deployment.apps {ns}/web"], str(run)
    [info] = [e for e in by_kind(run, "info") if e.get("resource") == f"Deployment.apps {ns}/waiting"]
    assert "not waited for (track-termination-mode NonBlocking)" in info["message"], info
    apps = client.AppsV1Api(kube_cluster.api_client())
    assert not apps.read_namespaced_deployment("waiting", ns).status.ready_replicas, "it really was not ready"

    assert quiet.rc == 1, str(quiet)
    failure = quiet.result["failures"][0]
    assert failure["resource"] == f"Deployment.apps {ns}/quiet" and failure["reason"] == "NoActivity", str(quiet)
    assert "no-activity-timeout" in failure["message"], str(quiet)
    assert quiet.seconds < 90, "no-activity-timeout, not the deploy's 120 s timeout, ended it"


def test_tolerances_let_a_resource_recover_or_be_ignored(kade, kube_cluster, kube_namespace, record_property):
    ns, image = kube_namespace, kube_cluster.base_image
    strict_crash = kade.start_deploy(ns, kade.write("strict-crash.yaml",
        with_scratch(deployment("strict-crash", image, CRASH_TWICE))), release="strict-crash")
    strict_probe = kade.start_deploy(ns, kade.write("strict-probe.yaml",
        deployment("strict-probe", image, "sleep 22; touch /tmp/ready; sleep infinity", probe=warm_up_probe())),
        release="strict-probe")
    tolerant = kade.deploy(ns, kade.write("tolerant.yaml",
        with_scratch(deployment("budget", image, CRASH_TWICE,
                                annotations={"kade.io/failures-allowed-per-replica": "10"})),
        # fails like strict-probe (ReadinessProbeFailed after ~9 s), then becomes ready after 16 s ...
        deployment("hopeful", image, "sleep 16; touch /tmp/ready; sleep infinity", probe=warm_up_probe(),
                   annotations={"kade.io/fail-mode": "HopeUntilEndOfDeployProcess"}),
        # ... before this, the slowest resource: Hope lasts until everything else is done
        deployment("patient", image, "sleep 26; touch /tmp/ready; sleep infinity", probe=warm_up_probe(),
                   annotations={"kade.io/ignore-readiness-probe-fails-for-app": "90s"}),
        deployment("ignored", image, "echo 'cannot start: no licence' >&2; exit 4",
                   annotations={"werf.io/fail-mode": "IgnoreAndContinueDeployProcess"})), release="tolerant")
    crash, probe = kade.finish(strict_crash), kade.finish(strict_probe)
    record_property("verdict_seconds", tolerant.seconds)

    # without annotations, the same resources fail the deploy
    assert crash.rc == 1 and crash.result["failures"][0]["reason"] in ("CrashLoopBackOff", "ContainerFailed"), str(crash)
    assert probe.rc == 1 and probe.result["failures"][0]["reason"] == "ReadinessProbeFailed", str(probe)

    assert tolerant.rc == 0, str(tolerant)
    ready = {e["resource"].rsplit("/", 1)[1] for e in by_kind(tolerant, "ready")}
    assert ready == {"budget", "hopeful", "patient"}, str(tolerant)
    budget = [e["message"] for e in by_kind(tolerant, "warning") if e.get("resource", "").endswith("/budget")]
    assert any("failure(s) allowed]" in m and "/10 " in m for m in budget), budget
    hoping = [e for e in by_kind(tolerant, "warning") if e.get("resource", "").endswith("/hopeful")
              and "still hoping" in e["message"]]
    assert hoping and hoping[0]["message"].startswith("deployment/hopeful: ReadinessProbeFailed"), str(tolerant)
    assert not any(e.get("resource", "").endswith("/patient") for e in by_kind(tolerant, "warning")), \
        "probe failures inside the ignore window are not even counted"
    [ignored] = tolerant.result["ignored"]
    assert ignored["resource"] == f"Deployment.apps {ns}/ignored", str(tolerant)
    assert "cannot start: no licence" in ignored["logs"] and "exit code 4" in ignored["container_state"], ignored
    assert "1 failing resource(s) ignored" in tolerant.result["message"] and "/ignored" in tolerant.result["message"]


def _ticker(name: str, image: str, *, annotations: dict[str, str] | None = None, replicas: int = 1,
            kind: str = "Deployment") -> dict:
    """Prints "<name> starting", becomes ready (the pod whose name ends in -1 only after 12 s more), then,
    8 s after its readiness probe first passed (well after kade saw it ready, 2 s settle included),
    prints "<name> tick" every half second."""
    script = (f"echo '{name} starting'; case $HOSTNAME in *-1) sleep 12;; esac; touch /tmp/ready; "
              "until [ -e /tmp/probed ]; do sleep 0.2; done; sleep 8; "
              f"while true; do echo '{name} tick'; sleep 0.5; done")
    probe = {"exec": {"command": ["bash", "-c", "test -e /tmp/ready && touch /tmp/probed"]},
             "periodSeconds": 1, "timeoutSeconds": 5, "failureThreshold": 3}
    manifest = deployment(name, image, script, replicas=replicas, annotations=annotations, probe=probe)
    if kind == "StatefulSet":
        manifest["kind"] = "StatefulSet"
        spec = manifest["spec"]
        spec.pop("progressDeadlineSeconds")
        spec["serviceName"] = name
    return manifest


def test_log_options(kade, kube_cluster, kube_namespace, record_property):
    ns, image = kube_namespace, kube_cluster.base_image
    two = deployment("two", image, "echo 'app line'; sleep infinity", probe=FAST_PROBE_OK,
                     annotations={"kade.io/skip-logs-for-containers": "sidecar"})
    two["spec"]["template"]["spec"]["containers"].append(
        {"name": "sidecar", "image": image, "command": ["bash", "-c", "echo 'sidecar line'; sleep infinity"]})
    later = deployment("later", image, probe={**FAST_PROBE_OK, "initialDelaySeconds": 8},
                       annotations={"kade.io/weight": "1"})
    path = kade.write("logs.yaml",
                      _ticker("ctl", image),  # default: ControllerIsReady
                      _ticker("end", image, annotations={"kade.io/show-logs-until": "EndOfDeploy"}),
                      _ticker("podready", image, kind="StatefulSet", replicas=2,
                              annotations={"werf.io/show-logs-until": "PodIsReady"}),
                      _ticker("ctlsts", image, kind="StatefulSet", replicas=2,
                              annotations={"kade.io/show-logs-until": "ControllerIsReady"}),
                      deployment("muted", image, "echo 'muted line'; sleep infinity", probe=FAST_PROBE_OK,
                                 annotations={"kade.io/skip-logs": "true"}),
                      two,
                      deployment("filtered", image, "echo 'IMPORTANT: shown'; echo 'noise: hidden'; sleep infinity",
                                 probe=FAST_PROBE_OK, annotations={"kade.io/log-regex": "^IMPORTANT"}),
                      deployment("chatty", image, probe=FAST_PROBE_OK,
                                 annotations={"kade.io/show-service-messages": "true"}),
                      later)
    run = kade.deploy(ns, path)
    record_property("verdict_seconds", run.seconds)
    assert run.rc == 0, str(run)
    logs = by_kind(run, "log")

    def lines(name: str) -> list[str]:
        return [e["message"].split(": ", 1)[1] for e in logs if e["resource"].endswith(f"/{name}")]

    # ControllerIsReady: the lines before the controller was ready, none after
    assert "ctl starting" in lines("ctl") and "ctl tick" not in lines("ctl"), lines("ctl")
    # EndOfDeploy: lines after it was ready, and after its stage, while a later stage was tracked
    assert "end starting" in lines("end") and "end tick" in lines("end"), lines("end")
    later_stage = next(e["time"] for e in by_kind(run, "stage") if "weight 1" in e["message"])
    assert any(e["time"] > later_stage for e in logs if e["message"].endswith("end tick")), \
        "EndOfDeploy logs must go on through the later stages"
    # PodIsReady: pod 0 ticks after it is ready while pod 1 is not yet (12 s later): hidden; with
    # ControllerIsReady shown
    assert lines("podready").count("podready starting") == 2 and "podready tick" not in lines("podready"), \
        [e for e in run.events if e.get("resource", "").endswith("/podready")]
    assert "ctlsts tick" in lines("ctlsts"), lines("ctlsts")
    assert all(e["pod"] == "ctlsts-0" for e in logs if e["message"].endswith("ctlsts tick"))
    # skip-logs, skip-logs-for-containers, log-regex
    assert lines("muted") == [], lines("muted")
    assert "app line" in lines("two") and "sidecar line" not in lines("two"), lines("two")
    assert lines("filtered") == ["IMPORTANT: shown"], lines("filtered")
    # show-service-messages: Normal events of that resource's pods; warnings only for the others
    events = by_kind(run, "event")
    normal = [e for e in events if e["type"] == "Normal"]
    assert {"Scheduled", "Started"} <= {e["reason"] for e in normal if e["resource"].endswith("/chatty")}, events
    assert all(e["resource"].endswith("/chatty") for e in normal), normal
