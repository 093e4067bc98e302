"""Every cluster counts: two cluster identities on the test cluster (two namespaces with their own
service accounts, each running the CronJob of k8s-manifests/cleanup with its own cluster name and
only its own namespace scanned). Cluster b runs report-only (`kade cleanup report`): it publishes what
it uses. Cluster a runs the cleanup: an image only b uses is kept, with b named in the reason, while
an unused one goes. When b's report is older than a's clusterReportMaxAge, a's next run deletes
nothing and says that b is silent."""
from __future__ import annotations

import json
import secrets
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from kubernetes import client

from kade.cli import main
from registry.client import ClientOptions, RegistryClient
from registry.copy import copy_image
from registry.records import BuildRecord, RecordImage, push_record
from tests.fixtures.cleanup import (GitHistory, cleanup_overlay, delete_cluster_rbac, job_report, serve_git_http,
                                    sleeping_deployment, wait_running)
from tests.fixtures.cluster import kubectl, namespace, wait_job

pytestmark = pytest.mark.cluster
NODE_ADDRESS = "10.245.0.1"
TIMEOUT_S = 180


def run(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{' '.join(argv)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_an_image_only_another_cluster_uses_is_kept_and_a_silent_cluster_blocks(kube_cluster, builder_image,
                                                                                 tmp_path, capsys):
    reg = kube_cluster.registry
    rc = RegistryClient(ClientOptions(insecure=(reg,)))
    name = f"{reg}/clusters-{secrets.token_hex(4)}/app"
    repo, stages = rc.repository(name), rc.repository(name + "-stages")
    copy_image(rc, kube_cluster.base_image, f"{name}:base")
    body, desc = repo.get_manifest("base")
    old = datetime.now(timezone.utc) - timedelta(days=30)

    def build(tag: str, i: int) -> str:  # an old build of a commit no branch holds: deletable
        doc = json.loads(body)
        doc.setdefault("annotations", {})["io.kade.test.variant"] = tag
        digest = repo.put_manifest(tag, json.dumps(doc).encode(), desc.media_type)
        push_record(stages, BuildRecord("9" * 40, None, old + timedelta(seconds=i),
                                        (RecordImage("default", name, (tag,), digest),)))
        return digest

    for i, tag in enumerate(("only-b-uses", "unused")):
        build(tag, i)
    history = GitHistory(tmp_path / "git" / "app")
    history.commit("init", "main", int(time.time()))
    history.write()

    api = kube_cluster.api_client()
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    kubectl_cmd = [kubectl(), "--kubeconfig", kube_cluster.kubeconfig]
    token = secrets.token_urlsafe(12)
    suffixes: list[str] = []
    with namespace(kube_cluster) as ns_a, namespace(kube_cluster) as ns_b, \
            serve_git_http(tmp_path / "git", NODE_ADDRESS, "u", token) as git_base:
        apps.create_namespaced_deployment(ns_b, sleeping_deployment("web", f"{name}:only-b-uses"))
        wait_running(core, ns_b, "web", timeout_s=TIMEOUT_S)
        cluster_a, cluster_b = f"a-{ns_a[-8:]}", f"b-{ns_b[-8:]}"

        def apply(ns: str, cluster: str, path: Path, **kw) -> str:
            suffix = "-" + ns.rsplit("-", 1)[-1]
            if suffix not in suffixes:
                suffixes.append(suffix)
            overlay = cleanup_overlay(path, namespace=ns, suffix=suffix, image=builder_image, repo=name,
                                      git=f"{git_base}/app", git_credentials=git_base.replace("//", f"//u:{token}@"),
                                      insecure=reg, literals=(f"cluster={cluster}",),
                                      extra_args=(f"--scan-namespace={ns}",), **kw)
            run(kubectl_cmd + ["apply", "-k", str(overlay)])
            return suffix

        def job(ns: str, suffix: str, n: int) -> str:
            run(kubectl_cmd + ["-n", ns, "create", "job", f"now-{n}{suffix}", f"--from=cronjob/kade-cleanup{suffix}"])
            return wait_job(api, ns, f"now-{n}{suffix}", TIMEOUT_S)

        try:
            # cluster b: report only (a production cluster that never deletes)
            sb = apply(ns_b, cluster_b, tmp_path / "b", args=["cleanup", "report", "--repo=$(KADE_REPO)",
                                                              "--output=json"])
            published = job_report(job(ns_b, sb, 1))
            assert published["published"] == [f"cluster-{cluster_b}"] and published["problems"] == []
            assert set(repo.list_tags()) == {"base", "only-b-uses", "unused"}  # b deleted nothing

            # cluster a: the cleanup, which sees only its own namespace, and b's report
            sa = apply(ns_a, cluster_a, tmp_path / "a")
            plan = job_report(job(ns_a, sa, 1))
            items = {i["tag"]: i for i in plan["items"]}
            assert items["only-b-uses"]["action"] == "keep"
            # b's workloads, named as b saw them (by tag, and by digest once b's pod reports its image ID):
            # nothing of a's
            reasons = items["only-b-uses"]["reasons"]
            assert reasons and all(r.startswith((f"in use by tag: cluster {cluster_b}: ",
                                                 f"in use by digest: cluster {cluster_b}: ")) for r in reasons), reasons
            assert f"{ns_b}/Deployment/web" in reasons[0] and not any(ns_a in r or cluster_a in r for r in reasons)
            assert items["unused"]["status"] == "deleted"
            assert plan["clusterReports"] == [cluster_b] and plan["blockers"] == []
            assert set(repo.list_tags()) == {"base", "only-b-uses"}
            assert {f"cluster-{cluster_a}", f"cluster-{cluster_b}"} <= set(stages.list_tags())

            assert main(["cleanup", "clusters", "--repo", name, "--insecure-registry", reg, "--output", "json"]) == 0
            rows = {r["cluster"]: r for r in json.loads(capsys.readouterr().out)["clusters"]}
            assert rows[cluster_b]["status"] == rows[cluster_a]["status"] == "ok"
            assert rows[cluster_b]["namespaces"] == [ns_b]

            # b falls silent: a's policy now wants reports younger than b's; a new old build is deletable
            build("later", 2)
            time.sleep(2)
            apply(ns_a, cluster_a, tmp_path / "a", policy="clusterReportMaxAge: 1s\n")
            plan = job_report(job(ns_a, sa, 2))
            assert [i for i in plan["items"] if i.get("status") == "deleted"] == []
            assert any(f"cluster {cluster_b} is silent" in b for b in plan["blockers"]), plan["blockers"]
            later = next(i for i in plan["items"] if i["tag"] == "later")
            assert later["action"] == "keep" and later["reasons"][-1].startswith("would be deleted otherwise")
            assert set(repo.list_tags()) == {"base", "only-b-uses", "later"}
        finally:
            for suffix in suffixes:
                delete_cluster_rbac(kubectl_cmd, suffix)
    rc.close()
