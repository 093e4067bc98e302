"""The cleanup CronJob manifests: the invariants that matter, and kade accepts the job's arguments."""
from pathlib import Path

import yaml

from kade.cli import build_parser

ROOT = Path(__file__).resolve().parents[2] / "k8s-manifests" / "cleanup"


def _docs():
    kust = yaml.safe_load((ROOT / "kustomization.yaml").read_text())
    docs = {}
    for name in kust["resources"]:
        for doc in yaml.safe_load_all((ROOT / name).read_text()):
            docs[(doc["kind"], doc["metadata"]["name"])] = doc
    return kust, docs


def test_every_resource_exists_and_parses():
    kust, docs = _docs()
    assert kust["namespace"] == "kade"
    assert {k for k, _ in docs} == {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Secret",
                                    "CronJob"}
    assert {n for k, n in docs if k == "ClusterRole"} == {"kade-cleanup-scan", "kade-cleanup-releases"}


def test_cronjob_forbids_concurrency_and_runs_kade_cleanup_with_valid_args():
    _, docs = _docs()
    cj = docs[("CronJob", "kade-cleanup")]
    assert cj["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "kade-cleanup"
    container = pod["containers"][0]
    args = [a.replace("$(KADE_REPO)", "reg:5000/team/app").replace("$(KADE_GIT)", "https://g/x.git")
            for a in container["args"]]
    parsed = build_parser().parse_args(args)
    assert parsed.command == "cleanup" and not parsed.without_kube and not parsed.dry_run
    assert parsed.policy.startswith("/etc/kade/cleanup/")
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["REGISTRY_AUTH_FILE"].startswith(mounts["registry"])
    assert env["GIT_CONFIG_VALUE_0"].endswith(mounts["git"] + "/git-credentials")
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_clusterroles_are_read_only_and_cover_the_scan():
    from registry.cleanup.scan import _KINDS

    _, docs = _docs()
    rules = docs[("ClusterRole", "kade-cleanup-scan")]["rules"] + docs[("ClusterRole", "kade-cleanup-releases")]["rules"]
    assert all(set(r["verbs"]) <= {"get", "list", "watch"} for r in rules)
    granted = {res for r in rules for res in r["resources"] if "resourceNames" not in r}
    plural = {"Pod": "pods", "ReplicationController": "replicationcontrollers", "Deployment": "deployments",
              "ReplicaSet": "replicasets", "StatefulSet": "statefulsets", "DaemonSet": "daemonsets",
              "Job": "jobs", "CronJob": "cronjobs", "Secret": "secrets", "ConfigMap": "configmaps"}
    assert {plural[k] for k in _KINDS} == granted
    # Secrets and ConfigMaps: list only (no get, no watch), and only in the releases role
    for r in rules:
        if {"secrets", "configmaps"} & set(r["resources"]):
            assert r["verbs"] == ["list"]
    assert not any({"secrets", "configmaps"} & set(r["resources"])
                   for r in docs[("ClusterRole", "kade-cleanup-scan")]["rules"])
    # the cluster's identity: one namespace, get only
    ns_rules = [r for r in rules if "namespaces" in r["resources"]]
    assert ns_rules == [{"apiGroups": [""], "resources": ["namespaces"], "resourceNames": ["kube-system"],
                         "verbs": ["get"]}]
    for name in ("kade-cleanup-scan", "kade-cleanup-releases"):
        binding = docs[("ClusterRoleBinding", name)]
        assert binding["subjects"][0]["name"] == "kade-cleanup" and binding["roleRef"]["name"] == name


def test_every_rbac_rule_says_why():
    for name in ("clusterrole.yaml", "clusterrole-releases.yaml"):
        lines = (ROOT / name).read_text().splitlines()
        for i, line in enumerate(lines):
            if line.strip().startswith("- apiGroups"):
                assert lines[i - 1].strip().startswith("#") or "#" in line, f"{name}:{i + 1}: a rule without a reason"


def test_the_cronjob_publishes_its_report_and_names_the_cluster_from_the_configmap():
    _, docs = _docs()
    container = docs[("CronJob", "kade-cleanup")]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert "--publish-report" in container["args"]
    env = {e["name"]: e for e in container["env"]}
    ref = env["KADE_CLUSTER_NAME"]["valueFrom"]["configMapKeyRef"]
    assert ref == {"name": "kade-cleanup", "key": "cluster", "optional": True}
