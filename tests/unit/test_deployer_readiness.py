"""Readiness rules, table-driven: each row is an object as the API server would return it."""
import pytest

from deployer.readiness import FAILED, PROGRESSING, READY, evaluate


def deploy(gen=2, observed=2, replicas=3, revision="2", updated=3, paused=False, conditions=(), strategy=None, deleting=False,
           total=None, ready=None, available=None):
    meta = {"name": "web", "uid": "d1", "generation": gen, "annotations": {"deployment.kubernetes.io/revision": revision}}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    spec = {"replicas": replicas, "paused": paused}
    if strategy:
        spec["strategy"] = strategy
    status = {"observedGeneration": observed, "updatedReplicas": updated, "conditions": list(conditions),
              "replicas": updated if total is None else total, "readyReplicas": updated if ready is None else ready,
              "availableReplicas": (updated if ready is None else ready) if available is None else available}
    return {"metadata": meta, "spec": spec, "status": status}


def rs(revision, ready, owner="d1"):
    return {"metadata": {"name": f"web-{revision}", "uid": f"rs{revision}",
                         "annotations": {"deployment.kubernetes.io/revision": revision},
                         "ownerReferences": [{"uid": owner}]},
            "status": {"readyReplicas": ready}}


DEADLINE = {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
            "message": 'ReplicaSet "web-2" has timed out progressing.'}

DEPLOYMENT_CASES = [
    ("all new available", deploy(), [rs("1", 0), rs("2", 3)], READY),
    ("old pods still running (kstatus)", deploy(total=4), [rs("1", 1), rs("2", 3)], PROGRESSING),
    ("3 of 4 ready is not enough (kstatus, not Helm's maxUnavailable)", deploy(replicas=4, updated=4, ready=3), [rs("2", 3)], PROGRESSING),
    ("ready but not yet available (minReadySeconds)", deploy(available=1), [rs("2", 3)], PROGRESSING),
    ("observedGeneration as a string", deploy(observed="2"), [rs("2", 3)], READY),
    ("observedGeneration not a number", deploy(observed="soon"), [rs("2", 3)], READY),
    ("replicas not a number", deploy(total="many"), [rs("2", 3)], READY),
    ("generation not observed", deploy(gen=3, observed=2), [rs("2", 3)], PROGRESSING),
    ("no new replicaset yet", deploy(revision="3"), [rs("2", 3)], PROGRESSING),
    ("rs of another deployment", deploy(), [rs("2", 3, owner="other")], PROGRESSING),
    ("not all updated", deploy(updated=2), [rs("2", 3)], PROGRESSING),
    ("progress deadline", deploy(conditions=[DEADLINE]), [rs("2", 0)], FAILED),
    ("paused", deploy(paused=True), [], READY),
    ("terminating", deploy(deleting=True), [rs("2", 3)], PROGRESSING),
    ("zero replicas", deploy(replicas=0, updated=0), [rs("2", 0)], READY),
]


@pytest.mark.parametrize("name,obj,replicasets,expected", DEPLOYMENT_CASES, ids=[c[0] for c in DEPLOYMENT_CASES])
def test_deployment(name, obj, replicasets, expected):
    assert evaluate(obj, "apps", "Deployment", replicasets).state == expected


def test_deployment_deadline_message():
    status = evaluate(deploy(conditions=[DEADLINE]), "apps", "Deployment", [])
    assert "ProgressDeadlineExceeded" in status.message and "timed out" in status.message


def sts(replicas=3, partition=None, updated=3, ready=3, current="a", update="a", gen=1, observed=1, on_delete=False):
    strategy = {"type": "OnDelete"} if on_delete else {"type": "RollingUpdate", "rollingUpdate": {"partition": partition} if partition is not None else {}}
    return {"metadata": {"name": "db", "generation": gen}, "spec": {"replicas": replicas, "updateStrategy": strategy},
            "status": {"observedGeneration": observed, "updatedReplicas": updated, "readyReplicas": ready,
                       "currentRevision": current, "updateRevision": update}}


STS_CASES = [
    ("rolled out", sts(), READY),
    ("revisions differ", sts(current="a", update="b"), PROGRESSING),
    ("partition 2: one updated suffices, revisions may differ", sts(partition=2, updated=1, current="a", update="b"), READY),
    ("partition 1 needs 2 updated", sts(partition=1, updated=1, update="b"), PROGRESSING),
    ("not all ready", sts(ready=2), PROGRESSING),
    ("not observed", sts(gen=2, observed=1), PROGRESSING),
    ("no status at all", {"metadata": {"name": "db", "generation": 1}, "spec": {"replicas": 1}}, PROGRESSING),
    ("on delete", sts(on_delete=True, updated=0, ready=0), READY),
]


@pytest.mark.parametrize("name,obj,expected", STS_CASES, ids=[c[0] for c in STS_CASES])
def test_statefulset(name, obj, expected):
    assert evaluate(obj, "apps", "StatefulSet").state == expected


def ds(desired=4, updated=4, ready=4, max_unavailable=None, gen=1, observed=1, current=None, available=None):
    rolling = {} if max_unavailable is None else {"maxUnavailable": max_unavailable}
    return {"metadata": {"name": "agent", "generation": gen},
            "spec": {"updateStrategy": {"type": "RollingUpdate", "rollingUpdate": rolling}},
            "status": {"observedGeneration": observed, "desiredNumberScheduled": desired,
                       "updatedNumberScheduled": updated, "numberReady": ready,
                       "currentNumberScheduled": desired if current is None else current,
                       "numberAvailable": ready if available is None else available}}


DS_CASES = [
    ("all available", ds(), READY),
    ("one not ready (kstatus: all)", ds(ready=3), PROGRESSING),
    ("ready but not available (minReadySeconds)", ds(available=3), PROGRESSING),
    ("a node without its pod", ds(current=3), PROGRESSING),
    ("not all updated", ds(updated=3), PROGRESSING),
    ("not observed", ds(gen=2), PROGRESSING),
]


@pytest.mark.parametrize("name,obj,expected", DS_CASES, ids=[c[0] for c in DS_CASES])
def test_daemonset(name, obj, expected):
    assert evaluate(obj, "apps", "DaemonSet").state == expected


def job(conditions=(), suspend=False, **status):
    return {"metadata": {"name": "migrate"}, "spec": {"suspend": suspend, "completions": 1},
            "status": {"conditions": list(conditions), **status}}


JOB_CASES = [
    ("complete", job([{"type": "Complete", "status": "True"}]), READY),
    ("backoff limit", job([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]), FAILED),
    ("failure target", job([{"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded"}]), FAILED),
    ("running", job(active=1), PROGRESSING),
    ("complete false", job([{"type": "Complete", "status": "False"}]), PROGRESSING),
    ("suspended", job(suspend=True), PROGRESSING),
]


@pytest.mark.parametrize("name,obj,expected", JOB_CASES, ids=[c[0] for c in JOB_CASES])
def test_job(name, obj, expected):
    assert evaluate(obj, "batch", "Job").state == expected


def test_job_failure_names_reason():
    status = evaluate(JOB_CASES[1][1], "batch", "Job")
    assert "BackoffLimitExceeded" in status.message


OTHER_CASES = [
    ("pod ready", "", "Pod", {"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}, READY),
    ("pod not ready", "", "Pod", {"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}]}}, PROGRESSING),
    ("pod succeeded", "", "Pod", {"status": {"phase": "Succeeded"}}, READY),
    ("pod failed", "", "Pod", {"status": {"phase": "Failed", "reason": "Evicted"}}, FAILED),
    ("replicaset ready", "apps", "ReplicaSet", {"metadata": {"generation": 1}, "spec": {"replicas": 2}, "status": {"observedGeneration": 1, "readyReplicas": 2}}, READY),
    ("replicaset short", "apps", "ReplicaSet", {"metadata": {"generation": 1}, "spec": {"replicas": 2}, "status": {"observedGeneration": 1, "readyReplicas": 1}}, PROGRESSING),
    ("pvc bound", "", "PersistentVolumeClaim", {"status": {"phase": "Bound"}}, READY),
    ("pvc pending", "", "PersistentVolumeClaim", {"status": {"phase": "Pending"}}, PROGRESSING),
    ("pvc lost", "", "PersistentVolumeClaim", {"status": {"phase": "Lost"}}, FAILED),
    ("clusterip service", "", "Service", {"spec": {"type": "ClusterIP"}}, READY),
    ("lb pending", "", "Service", {"spec": {"type": "LoadBalancer"}, "status": {"loadBalancer": {}}}, PROGRESSING),
    ("lb ready", "", "Service", {"spec": {"type": "LoadBalancer"}, "status": {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}}}, READY),
    ("crd established", "apiextensions.k8s.io", "CustomResourceDefinition", {"status": {"conditions": [{"type": "Established", "status": "True"}]}}, READY),
    ("crd new", "apiextensions.k8s.io", "CustomResourceDefinition", {"status": {}}, PROGRESSING),
    ("crd names clash", "apiextensions.k8s.io", "CustomResourceDefinition", {"status": {"conditions": [{"type": "NamesAccepted", "status": "False", "reason": "AlreadyInUse"}]}}, FAILED),
    ("configmap exists", "", "ConfigMap", {"metadata": {"name": "c"}, "data": {}}, READY),
    ("rbac exists", "rbac.authorization.k8s.io", "Role", {"metadata": {"name": "r"}}, READY),
    ("custom resource without status (kstatus, kubedog)", "example.com", "Widget", {"metadata": {"name": "w", "generation": 1}}, READY),
    ("custom resource empty status", "example.com", "Widget", {"metadata": {"name": "w"}, "status": {}}, READY),
    ("cr asks to wait for its controller", "example.com", "Widget", {"metadata": {"name": "w", "annotations": {"kade.io/wait-for-status": "true"}}}, PROGRESSING),
    ("cr asks to wait (werf.io alias)", "example.com", "Widget", {"metadata": {"name": "w", "annotations": {"werf.io/wait-for-status": "true"}}}, PROGRESSING),
    ("cr observedGeneration not a number", "example.com", "Widget", {"metadata": {"generation": 2}, "status": {"observedGeneration": "v2"}}, READY),
    ("cr observedGeneration a float", "example.com", "Widget", {"metadata": {"generation": 2}, "status": {"observedGeneration": 1.5, "conditions": [{"type": "Ready", "status": "True"}]}}, READY),
    ("cr Ready condition of an older generation", "example.com", "Widget", {"metadata": {"generation": 3}, "status": {"conditions": [{"type": "Ready", "status": "True", "observedGeneration": 2}]}}, PROGRESSING),
    ("cr Ready condition of this generation", "example.com", "Widget", {"metadata": {"generation": 3}, "status": {"conditions": [{"type": "Ready", "status": "True", "observedGeneration": 3}]}}, READY),
    ("cr ready-when holds", "example.com", "Widget", {"metadata": {"annotations": {"kade.io/ready-when": '.status.phase == "Done"'}}, "status": {"phase": "Done"}}, READY),
    ("cr ready-when not yet (replaces the Ready condition)", "example.com", "Widget", {"metadata": {"annotations": {"kade.io/ready-when": '.status.phase == "Done"'}}, "status": {"phase": "Init", "conditions": [{"type": "Ready", "status": "True"}]}}, PROGRESSING),
    ("cr failed-when holds", "example.com", "Widget", {"metadata": {"annotations": {"werf.io/failed-when": '.status.phase == "Error"'}}, "status": {"phase": "Error"}}, FAILED),
    ("failed-when on a built-in kind", "", "ConfigMap", {"metadata": {"annotations": {"kade.io/failed-when": '.data.mode == "broken"'}}, "data": {"mode": "broken"}}, FAILED),
    ("a live edit broke the rule", "example.com", "Widget", {"metadata": {"annotations": {"kade.io/ready-when": ".status.phase =="}}}, FAILED),
    ("lb with externalIPs", "", "Service", {"spec": {"type": "LoadBalancer", "externalIPs": ["10.0.0.9"]}, "status": {"loadBalancer": {}}}, READY),
    ("cr ready", "example.com", "Widget", {"metadata": {"generation": 1}, "status": {"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "True"}]}}, READY),
    ("cr ready but stale generation", "example.com", "Widget", {"metadata": {"generation": 2}, "status": {"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "True"}]}}, PROGRESSING),
    ("cr reconciling", "example.com", "Widget", {"status": {"conditions": [{"type": "Reconciling", "status": "True"}, {"type": "Ready", "status": "True"}]}}, PROGRESSING),
    ("cr stalled", "example.com", "Widget", {"status": {"conditions": [{"type": "Stalled", "status": "True", "reason": "Bad"}]}}, FAILED),
    ("cr ready false", "example.com", "Widget", {"status": {"conditions": [{"type": "Ready", "status": "False"}]}}, PROGRESSING),
    ("cr status without conditions", "example.com", "Widget", {"status": {"phase": "Done"}}, READY),
    ("cr terminating", "example.com", "Widget", {"metadata": {"deletionTimestamp": "x"}, "status": {"phase": "Done"}}, PROGRESSING),
    ("not seen yet", "apps", "Deployment", None, PROGRESSING),
]


@pytest.mark.parametrize("name,group,kind,obj,expected", OTHER_CASES, ids=[c[0] for c in OTHER_CASES])
def test_other_kinds(name, group, kind, obj, expected):
    assert evaluate(obj, group, kind).state == expected
