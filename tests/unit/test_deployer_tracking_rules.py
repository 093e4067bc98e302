"""Pure pieces around tracking: annotation options, new-revision pods, the failure summary, diffs,
apply conflicts and what a deploy prunes."""

import pytest

from deployer.apply import conflicts, diff
from deployer.deploy import _prune_actions, validate_release_name
from deployer.errors import DeployError
from deployer.logs import split_timestamp
from deployer.options import HOPE, IGNORE, NON_BLOCKING, POD_IS_READY, log_line_shown, track_options
from deployer.release import ReleaseRecord
from deployer.resources import Resource
from deployer.revision import expected_replicas, new_revision_pods
from deployer.summary import Failure, clean, container_state, format_failure, split_reason


def res(kind="Deployment", api="apps/v1", **annotations):
    return Resource({"apiVersion": api, "kind": kind, "metadata": {"name": "web", "annotations": annotations}}, "w.yaml")


def test_default_options():
    opts = track_options(res())
    assert (opts.fail_mode, opts.failures_allowed_per_replica, opts.termination_mode) == (
        "FailWholeDeployProcessImmediately", 1, "WaitUntilResourceReady")
    assert track_options(res("Job", "batch/v1")).failures_allowed_per_replica == 0


def test_all_annotations_parse_with_werf_prefix():
    opts = track_options(res(**{
        "werf.io/fail-mode": HOPE, "werf.io/failures-allowed-per-replica": "3",
        "werf.io/track-termination-mode": NON_BLOCKING, "werf.io/no-activity-timeout": "90s",
        "werf.io/show-logs-until": POD_IS_READY, "werf.io/skip-logs": "true",
        "werf.io/skip-logs-for-containers": "sidecar, proxy", "werf.io/log-regex": "ERROR|WARN",
        "werf.io/show-service-messages": "yes", "werf.io/ignore-readiness-probe-fails-for-app": "2m",
        "kade.io/fail-mode": IGNORE,
    }))
    assert opts.fail_mode == IGNORE  # kade.io wins
    assert opts.failures_allowed_per_replica == 3 and opts.termination_mode == NON_BLOCKING
    assert opts.no_activity_timeout == 90 and opts.show_logs_until == POD_IS_READY
    assert opts.skip_logs and opts.skip_logs_for_containers == {"sidecar", "proxy"}
    assert opts.log_regex.search("an ERROR here") and opts.show_service_messages
    assert opts.ignore_readiness_probe_fails_for == {"app": 120}


@pytest.mark.parametrize("annotation,value,message", [
    ("fail-mode", "Sometimes", "expected one of"),
    ("failures-allowed-per-replica", "-1", "whole number"),
    ("no-activity-timeout", "soon", "invalid duration"),
    ("skip-logs", "maybe", "true or false"),
    ("log-regex", "(", "invalid regular expression"),
])
def test_bad_annotations_name_resource(annotation, value, message):
    with pytest.raises(DeployError, match=message) as exc:
        track_options(res(**{f"kade.io/{annotation}": value}))
    assert "w.yaml" in str(exc.value) and "Deployment.apps web" in str(exc.value)


def owned(name, owner_uid, **labels):
    return {"metadata": {"name": name, "uid": name, "labels": labels, "ownerReferences": [{"uid": owner_uid}]}}


def test_new_revision_pods_of_deployment():
    dep = {"metadata": {"uid": "d", "annotations": {"deployment.kubernetes.io/revision": "2"}}}
    rs_old = {"metadata": {"uid": "rs1", "annotations": {"deployment.kubernetes.io/revision": "1"}, "ownerReferences": [{"uid": "d"}]}}
    rs_new = {"metadata": {"uid": "rs2", "annotations": {"deployment.kubernetes.io/revision": "2"}, "ownerReferences": [{"uid": "d"}]}}
    pods = [owned("old", "rs1"), owned("new", "rs2"), owned("stranger", "rsX")]
    assert [p["metadata"]["name"] for p in new_revision_pods("apps", "Deployment", dep, pods, [rs_old, rs_new])] == ["new"]


@pytest.mark.parametrize("kind,obj,pods,expected", [
    ("StatefulSet", {"metadata": {"uid": "s"}, "status": {"updateRevision": "db-2"}},
     [owned("db-0", "s", **{"controller-revision-hash": "db-2"}), owned("db-1", "s", **{"controller-revision-hash": "db-1"})], ["db-0"]),
    ("DaemonSet", {"metadata": {"uid": "ds", "generation": 3}},
     [owned("a", "ds", **{"pod-template-generation": "3"}), owned("b", "ds", **{"pod-template-generation": "2"})], ["a"]),
    ("ConfigMap", {"metadata": {"uid": "c"}}, [owned("a", "c")], []),
])
def test_new_revision_pods_other_kinds(kind, obj, pods, expected):
    assert [p["metadata"]["name"] for p in new_revision_pods("apps" if kind != "ConfigMap" else "", kind, obj, pods, [])] == expected


def test_expected_replicas():
    assert expected_replicas("apps", "Deployment", {"spec": {"replicas": 4}}) == 4
    assert expected_replicas("apps", "Deployment", {"spec": {"replicas": 0}}) == 1
    assert expected_replicas("apps", "DaemonSet", {"spec": {}, "status": {"desiredNumberScheduled": 3}}) == 3
    assert expected_replicas("batch", "Job", {"spec": {"parallelism": 2}}) == 2
    assert expected_replicas("apps", "Deployment", {"spec": {"replicas": "many"}}) == 1, "never a crash"
    assert expected_replicas("apps", "DaemonSet", {"status": {"desiredNumberScheduled": 2.5}}) == 1


def test_failure_summary_names_everything_and_strips_escapes():
    failure = Failure("Deployment team/web", "CrashLoopBackOff", "back-off 10s restarting failed container",
                      "web-abc", "app", "waiting: CrashLoopBackOff, last exit code 1 (Error), 2 restart(s)",
                      "BackOff: Back-off restarting failed container", ["starting", "fatal: no config \x1b[31mred\x1b[0m\x07"])
    text = format_failure(failure)
    for part in ("Deployment team/web failed: CrashLoopBackOff", "pod:       web-abc", "container: app (waiting",
                 "event:     BackOff", "| fatal: no config red"):
        assert part in text
    assert "\x1b" not in text and "\x07" not in text


def test_clean_keeps_tabs_and_text():
    assert clean("a\tb\x1b[2Jc\x00") == "a\tbc"


CONTAINER_STATES = [
    ("crash loop", {"name": "app", "restartCount": 2, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}},
     "waiting: CrashLoopBackOff, last exit code 1 (Error), 2 restart(s)"),
    ("failed job pod", {"name": "app", "restartCount": 0, "state": {"terminated": {"exitCode": 7, "reason": "Error"}}},
     "terminated: Error, exit code 7, 0 restart(s)"),
    ("oom killed", {"name": "app", "restartCount": 0, "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}},
     "terminated: OOMKilled, exit code 137, 0 restart(s)"),
    ("running", {"name": "app", "restartCount": 1, "state": {"running": {"startedAt": "2026-11-26T10:00:00Z"}}},
     "running, 1 restart(s)"),
    ("init container", {"name": "app", "restartCount": 0, "state": {"terminated": {"exitCode": 2, "reason": "Error"}}},
     "terminated: Error, exit code 2, 0 restart(s)"),
]


@pytest.mark.parametrize("name,status,expected", CONTAINER_STATES, ids=[c[0] for c in CONTAINER_STATES])
def test_container_state(name, status, expected):
    key = "initContainerStatuses" if name == "init container" else "containerStatuses"
    pod = {"status": {key: [status]}}
    assert container_state(pod, "app") == expected
    assert container_state(pod, "app (init)") == expected
    assert container_state(pod, "other") == ""


def test_diff_ignores_server_bookkeeping_and_hides_secrets():
    live = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "resourceVersion": "1", "uid": "u",
            "managedFields": []}, "data": {"password": "c2VjcmV0"}}
    same = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "resourceVersion": "2"}, "data": {"password": "c2VjcmV0"}}
    assert diff(live, same, "secret/s") == ""
    changed = {**same, "data": {"password": "bmV3"}}
    text = diff(live, changed, "secret/s")
    assert "c2VjcmV0" not in text and "bmV3" not in text and "<hidden, sha256" in text


def test_conflicts_name_the_other_manager():
    details = {"causes": [{"type": "FieldManagerConflict", "message": 'conflict with "kubectl-edit" using apps/v1',
                           "field": ".spec.replicas"}]}
    assert conflicts(details) == [(".spec.replicas", "kubectl-edit")]


def test_prune_actions_respect_keep_policy():
    def m(name, **ann):
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "ns", "annotations": ann}}
    previous = ReleaseRecord("r", "ns", 1, "deployed", [m("stays"), m("gone"), m("kept", **{"kade.io/resource-policy": "keep"})])
    actions = _prune_actions(previous, [Resource(m("stays"))])
    assert [(r.name, a) for r, a in actions] == [("kept", "keep"), ("gone", "delete")]


def test_prune_keeps_crds_and_namespaces_unless_asked_and_never_prunes_hooks():
    from deployer.deploy import DeployOptions

    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": "w.example.com"}}
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}}
    hook = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "migrate", "annotations": {"helm.sh/hook": "pre-upgrade"}}}
    dep = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}}
    previous = ReleaseRecord("r", "ns", 1, "deployed", [ns, crd, hook, dep])
    actions = _prune_actions(previous, [], DeployOptions("r", "ns"))
    # uninstall order: reverse of Helm's install order
    assert [(r.name, a) for r, a in actions] == [("web", "delete"), ("w.example.com", "keep"), ("team", "keep")]
    asked = _prune_actions(previous, [], DeployOptions("r", "ns", delete_crds=True, delete_namespaces=True))
    assert [a for _, a in asked] == ["delete", "delete", "delete"]


@pytest.mark.parametrize("name,ok", [("web", True), ("a", True), ("my-app-2", True), ("Web", False), ("-x", False),
                                     ("x" * 41, False), ("a.b", False), ("", False)])
def test_release_names(name, ok):
    if ok:
        validate_release_name(name)
    else:
        with pytest.raises(DeployError):
            validate_release_name(name)


@pytest.mark.parametrize("group,kind,obj,expected", [
    ("apps", "Deployment", {}, True),
    ("apps", "StatefulSet", {}, True),
    ("", "Pod", {"status": {"phase": "Running"}}, True),
    ("", "Pod", {"status": {"phase": "Succeeded"}}, False),
    ("batch", "Job", {}, False),
    ("", "ConfigMap", {}, False),
])
def test_which_kinds_settle(group, kind, obj, expected):
    from deployer.verdict import needs_settle

    assert needs_settle(group, kind, obj) is expected


SPLITS = [
    ("BackoffLimitExceeded: Job has reached the specified backoff limit",
     ("BackoffLimitExceeded", "Job has reached the specified backoff limit")),
    ("ProgressDeadlineExceeded: ReplicaSet \"web-1\" has timed out progressing.",
     ("ProgressDeadlineExceeded", "ReplicaSet \"web-1\" has timed out progressing.")),
    ("job failed", ("Failed", "job failed")),
    ("pod failed: Evicted: The node was low on resource", ("Failed", "pod failed: Evicted: The node was low on resource")),
    ("", ("Failed", "")),
]


@pytest.mark.parametrize("message,expected", SPLITS, ids=[s[0][:20] or "empty" for s in SPLITS])
def test_split_reason(message, expected):
    assert split_reason(message) == expected


READY_AT = 1_800_000_000.0  # the pod's Ready lastTransitionTime (whole seconds)
UNTIL = "kade.io/show-logs-until"
LOG_LINES = [  # (annotations, line, controller ready, line written at, pod ready at) -> shown
    ("default until the controller is ready", {}, "x", False, None, READY_AT, True),
    ("default stops once the controller is ready", {}, "x", True, None, None, False),
    ("PodIsReady before the pod was ready", {UNTIL: "PodIsReady"}, "x", False, READY_AT + 5, None, True),
    ("PodIsReady line written before ready, read after", {UNTIL: "PodIsReady"}, "x", False, READY_AT - 3, READY_AT, True),
    ("PodIsReady line in the second it became ready", {UNTIL: "PodIsReady"}, "x", False, READY_AT + 0.5, READY_AT, True),
    ("PodIsReady line after ready", {UNTIL: "PodIsReady"}, "x", False, READY_AT + 1, READY_AT, False),
    ("PodIsReady unknown line time after ready", {UNTIL: "PodIsReady"}, "x", False, None, READY_AT, False),
    ("PodIsReady ignores the controller", {UNTIL: "PodIsReady"}, "x", True, READY_AT - 1, READY_AT, True),
    ("EndOfDeploy after ready", {UNTIL: "EndOfDeploy"}, "x", True, READY_AT + 60, READY_AT, True),
    ("log-regex match", {"kade.io/log-regex": "^ERR"}, "ERR disk full", False, None, None, True),
    ("log-regex no match", {"kade.io/log-regex": "^ERR"}, "info: fine", False, None, None, False),
    ("log-regex with EndOfDeploy", {"kade.io/log-regex": "^ERR", UNTIL: "EndOfDeploy"}, "info", True, None, None, False),
]


@pytest.mark.parametrize("name,annotations,line,controller_ready,stamp,ready_at,shown", LOG_LINES,
                         ids=[c[0] for c in LOG_LINES])
def test_log_line_shown(name, annotations, line, controller_ready, stamp, ready_at, shown):
    opts = track_options(res(**annotations))
    assert log_line_shown(opts, line, controller_ready=controller_ready, stamp=stamp, pod_ready_at=ready_at) is shown


STAMPED = [
    ("2027-01-15T08:00:00.123456789Z serving on :8080", (1_800_000_000.123456, "serving on :8080")),
    ("2027-01-15T08:00:00Z two  spaces kept", (1_800_000_000.0, "two  spaces kept")),
    ("2027-01-15T08:00:00Z", (1_800_000_000.0, "")),
    ("2027-01-15T08:00:00Z ", (1_800_000_000.0, "")),
    ("no timestamp here", (None, "no timestamp here")),
    ("Tuesday: not a time", (None, "Tuesday: not a time")),
    ("", (None, "")),
]


@pytest.mark.parametrize("line,expected", STAMPED, ids=[c[0][:25] or "empty" for c in STAMPED])
def test_split_timestamp(line, expected):
    stamp, text = split_timestamp(line)
    assert (stamp if stamp is None else round(stamp, 6), text) == expected
