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


def test_clusterrole_is_read_only_and_covers_the_scan():
    from registry.cleanup.inuse import _LISTERS

    _, docs = _docs()
    rules = docs[("ClusterRole", "kade-cleanup-scan")]["rules"]
    assert all(set(r["verbs"]) <= {"get", "list", "watch"} for r in rules)
    granted = {res for r in rules for res in r["resources"]}
    plural = {"Pod": "pods", "ReplicationController": "replicationcontrollers", "Deployment": "deployments",
              "ReplicaSet": "replicasets", "StatefulSet": "statefulsets", "DaemonSet": "daemonsets",
              "Job": "jobs", "CronJob": "cronjobs"}
    assert {plural[k] for k in _LISTERS} == granted
    binding = docs[("ClusterRoleBinding", "kade-cleanup-scan")]
    assert binding["subjects"][0]["name"] == "kade-cleanup"
