"""Rollback targets survive cleanup, on the real test cluster: a kade release deployed at revisions
1, 2 and 3 keeps all three images (revisions 1 and 2 run nowhere: only the release history protects
them) and `kade rollback --revision 1` afterwards reaches Ready, pulling its image again from the
registry; a release in Helm's exact storage format (a Secret, and a ConfigMap for the configmap
driver, written here the way Helm writes them) protects the images of its manifest and hooks."""
from __future__ import annotations

import base64
import gzip
import json
import secrets
import time
from datetime import datetime, timedelta, timezone

import pytest
from kubernetes import client

from registry.client import ClientOptions, RegistryClient
from registry.copy import copy_image
from registry.records import BuildRecord, RecordImage, push_record
from tests.fixtures.cleanup import GitHistory, helm_objects, helm_release
from tests.fixtures.deploy import FAST_PROBE_OK, deployment

pytestmark = pytest.mark.cluster


class Images:
    """Runnable variants of the cluster's base image in a fresh repository, each pushed by an old build
    of a commit no branch holds: without protection, cleanup deletes every one."""

    def __init__(self, kube_cluster, tmp_path, tags: list[str]) -> None:
        reg = kube_cluster.registry
        self.rc = RegistryClient(ClientOptions(insecure=(reg,)))
        self.name = f"{reg}/rel-{secrets.token_hex(4)}/app"
        copy_image(self.rc, kube_cluster.base_image, f"{self.name}:base")
        self.repo = self.rc.repository(self.name)
        body, desc = self.repo.get_manifest("base")
        stages = self.rc.repository(self.name + "-stages")
        old = datetime.now(timezone.utc) - timedelta(days=30)
        self.digests = {}
        for i, tag in enumerate(tags):
            doc = json.loads(body)
            doc.setdefault("annotations", {})["io.kade.test.variant"] = tag
            self.digests[tag] = self.repo.put_manifest(tag, json.dumps(doc).encode(), desc.media_type)
            push_record(stages, BuildRecord("9" * 40, None, old + timedelta(seconds=i),
                                            (RecordImage("default", self.name, (tag,), self.digests[tag]),)))
        history = GitHistory(tmp_path / "git")
        history.commit("init", "main", int(time.time()))
        self.git = str(history.write().path)

    def cleanup(self, kade, *extra: str):
        run = kade.run("cleanup", "--repo", self.name, "--git", self.git, "--insecure-registry",
                       self.name.split("/")[0], "--output", "json", *extra)
        assert run.rc == 0, str(run)
        return run, {i["tag"]: i for i in run.result["items"]}


def only_the_release(manifest: dict) -> dict:
    """The pod pulls its image from the registry on every start (a deleted image can't start), and no
    old ReplicaSet keeps a previous revision's image in use: only the release history remembers it."""
    manifest["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = "Always"
    manifest["spec"]["revisionHistoryLimit"] = 0
    return manifest


def wait_one_replicaset(apps, ns: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while len(apps.list_namespaced_replica_set(ns).items) > 1:
        assert time.monotonic() < deadline, "the old ReplicaSets were not removed"
        time.sleep(0.5)


def test_every_revision_of_a_release_survives_cleanup_and_rollback_works(kade, kube_cluster, kube_namespace,
                                                                        tmp_path):
    ns = kube_namespace
    images = Images(kube_cluster, tmp_path, ["v1", "v2", "v3", "unused"])
    for n in (1, 2, 3):
        run = kade.deploy(ns, kade.write(f"v{n}.yaml", only_the_release(deployment(
            "web", f"{images.name}:v{n}", probe=FAST_PROBE_OK))))
        assert run.rc == 0, str(run)
    apps = client.AppsV1Api(kube_cluster.api_client())
    wait_one_replicaset(apps, ns)

    # Blind (no cluster): every one of them would go.
    _, blind = images.cleanup(kade, "--without-kube", "--dry-run")
    assert all(blind[t]["action"] == "delete" for t in ("v1", "v2", "v3", "unused"))

    run, items = images.cleanup(kade, "--scan-namespace", ns)
    assert items["v1"]["action"] == "keep" and items["v1"]["reasons"] == [f"release {ns}/app revision 1"]
    assert items["v2"]["action"] == "keep" and items["v2"]["reasons"] == [f"release {ns}/app revision 2"]
    assert items["v3"]["action"] == "keep" and f"release {ns}/app revision 3" in items["v3"]["reasons"]
    assert items["unused"]["status"] == "deleted"
    assert set(images.repo.list_tags()) == {"base", "v1", "v2", "v3"}
    assert run.result["blockers"] == []

    back = kade.run("rollback", "app", "-n", ns, "--revision", "1", "--timeout", "120s", "--output", "json")
    assert back.rc == 0, str(back)
    assert apps.read_namespaced_deployment("web", ns).spec.template.spec.containers[0].image == f"{images.name}:v1"
    status = apps.read_namespaced_deployment_status("web", ns).status
    assert status.ready_replicas == 1 and status.updated_replicas == 1
    images.rc.close()


def test_helm_release_history_protects_its_images(kade, kube_cluster, kube_namespace, tmp_path):
    ns = kube_namespace
    images = Images(kube_cluster, tmp_path, ["web", "migrate", "cm-web", "unused"])
    web = (f"---\n# Source: shop/templates/web.yaml\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n"
           f"spec:\n  template:\n    spec:\n      containers:\n      - name: web\n        image: \"{images.name}:web\"\n")
    hook = {"name": "migrate", "kind": "Job", "path": "shop/templates/migrate.yaml", "events": ["pre-upgrade"],
            "manifest": f"apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: migrate\nspec:\n  template:\n    spec:\n"
                        f"      containers:\n      - name: m\n        image: {images.name}@{images.digests['migrate']}\n"}
    core = client.CoreV1Api(kube_cluster.api_client())
    secret = helm_objects(ns, "shop", 4, helm_release("shop", ns, 4, web, [hook], "superseded"), "secret")
    core.create_namespaced_secret(ns, secret)
    cm_manifest = web.replace(f"{images.name}:web", f"{images.name}:cm-web")
    core.create_namespaced_config_map(ns, helm_objects(ns, "cm", 1, helm_release("cm", ns, 1, cm_manifest, [],
                                                                                 "deployed"), "configmap"))

    # A Helm release that can't be read (truncated gzip) keeps everything, naming the Secret.
    broken = helm_objects(ns, "bad", 1, b"{}", "secret")
    broken["data"]["release"] = base64.b64encode(base64.b64encode(gzip.compress(b'{"name": "bad"}')[:-9])).decode()
    core.create_namespaced_secret(ns, broken)
    run, items = images.cleanup(kade, "--scan-namespace", ns, "--dry-run")
    assert run.result["summary"]["delete"] == 0
    assert items["unused"]["reasons"][-1].startswith("would be deleted otherwise")
    assert any(f"Helm release Secret {ns}/sh.helm.release.v1.bad.v1" in b and "truncated" in b
               for b in run.result["blockers"])
    core.delete_namespaced_secret(broken["metadata"]["name"], ns)

    _, items = images.cleanup(kade, "--scan-namespace", ns)
    assert items["web"]["reasons"] == [f"helm release {ns}/shop revision 4"]
    assert items["migrate"]["reasons"] == [f"helm release {ns}/shop revision 4"]  # by digest, in a hook
    assert items["cm-web"]["reasons"] == [f"helm release {ns}/cm revision 1"]
    assert items["unused"]["status"] == "deleted"
    assert set(images.repo.list_tags()) == {"base", "web", "migrate", "cm-web"}
    images.rc.close()
