"""Tenants on the test cluster: each team set up with `kubectl apply -k` of k8s-manifests/tenant (as a
platform team does it), building as its own CI identity (a ServiceAccount bound to nothing but what
the overlay binds). Tenant B tries the attacks of issue 13 on tenant A; the RBAC is the least that
works (the builds pass with it) and refuses the rest; a new namespace without a StorageClass says at
once why its pods can't start."""
from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import pytest
import yaml
from kubernetes import client, config

from registry import mediatypes as mt
from registry.client import ClientOptions, RegistryClient
from registry.sigkeys import generate, private_pem
from tests.fixtures.cluster import kubectl
from tests.fixtures.incluster import (BuilderEnv, PodLogs, image_file, kade_build, records, result,
                                     stage_keys, unique, write_context)

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
TENANT = REPO / "k8s-manifests" / "tenant"
PV_ROOT = Path("/var/lib/kade-cluster/incluster-pv")


@dataclass(frozen=True)
class Team:
    env: BuilderEnv           # builds run as the team's CI identity (env.kubeconfig)
    namespace: str
    admin: str                # the cluster admin's kubeconfig
    key_pem: bytes            # the team's build key (its Secret kade-build-key)


def _overlay(tmp: Path, ns: str) -> Path:
    """k8s-manifests/tenant for namespace `ns`, its CI identity a ServiceAccount `ci` of the namespace."""
    tmp.mkdir(parents=True)
    ci = [{"kind": "ServiceAccount", "name": "ci", "namespace": ns}]
    (tmp / "ci.yaml").write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "ServiceAccount",
                                                 "metadata": {"name": "ci"}}))
    (tmp / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "namespace": ns,
        "resources": [os.path.relpath(TENANT, tmp), "ci.yaml"],
        "patches": [
            {"target": {"kind": "RoleBinding", "name": "kade-build-submitter"},
             "patch": json.dumps([{"op": "replace", "path": "/subjects", "value": ci}])},
            {"target": {"kind": "ClusterRoleBinding"},
             "patch": json.dumps([{"op": "replace", "path": "/metadata/name", "value": f"kade-build-nodes-{ns}"},
                                  {"op": "replace", "path": "/subjects", "value": ci}])},
            {"target": {"kind": "PersistentVolumeClaim"},
             "patch": json.dumps([{"op": "replace", "path": "/spec/resources/requests/storage", "value": "5Gi"}])},
        ]}))
    return tmp


def _kubeconfig(admin: str, token: str, path: Path) -> str:
    cfg = yaml.safe_load(Path(admin).read_text())
    cfg["users"] = [{"name": "ci", "user": {"token": token}}]
    cfg["contexts"] = [{"name": "ci", "context": {"cluster": cfg["clusters"][0]["name"], "user": "ci"}}]
    cfg["current-context"] = "ci"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@contextmanager
def team(cluster, image: str, tmp: Path, name: str, volume: bool = True) -> Iterator[Team]:
    """A namespace set up by `kubectl apply -k` of the tenant overlay; with `volume`, a PersistentVolume
    its cache PVC binds (the test cluster has no StorageClass, which is what `volume=False` shows)."""

    ns = f"kade-test-{name}-{secrets.token_hex(3)}"
    api = cluster.api_client()
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    done = subprocess.run([kubectl(), "--kubeconfig", cluster.kubeconfig, "apply", "-k", str(_overlay(tmp / ns, ns))],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    pv = f"kade-{ns}"
    try:
        if volume:
            (PV_ROOT / pv).mkdir(parents=True, exist_ok=True)
            node = core.list_node().items[0].metadata.name
            core.create_persistent_volume({
                "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
                "spec": {"capacity": {"storage": "5Gi"}, "accessModes": ["ReadWriteOnce"],
                         "persistentVolumeReclaimPolicy": "Retain",
                         "claimRef": {"namespace": ns, "name": "kade-build-cache"}, "local": {"path": str(PV_ROOT / pv)},
                         "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                             {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}}}})
            deadline = time.monotonic() + 60   # bound at the PV controller's next pass
            while core.read_namespaced_persistent_volume_claim("kade-build-cache", ns).status.phase != "Bound":
                assert time.monotonic() < deadline, "the cache PVC did not bind its PersistentVolume"
                time.sleep(0.5)
        key = private_pem(generate(), None)
        core.create_namespaced_secret(ns, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "kade-build-key"},
                                           "data": {"cosign.key": base64.b64encode(key).decode()}})
        core.create_namespaced_secret(ns, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "other-team-db"},
                                           "stringData": {"password": "not-for-ci"}})
        token = core.create_namespaced_service_account_token("ci", ns, {"spec": {"expirationSeconds": 3600}}).status.token
        kubeconfig = _kubeconfig(cluster.kubeconfig, token, tmp / f"{ns}.kubeconfig")
        yield Team(BuilderEnv(image=image, namespace=ns, cache_pvc="kade-build-cache", registry=cluster.registry,
                              base_image=cluster.base_image, kubeconfig=kubeconfig, cache_dir=PV_ROOT / pv),
                   ns, cluster.kubeconfig, key)
    finally:
        core.delete_namespace(ns, propagation_policy="Background")
        for delete in (lambda: rbac.delete_cluster_role_binding(f"kade-build-nodes-{ns}"),
                       lambda: core.delete_persistent_volume(pv)):
            try:
                delete()
            except client.ApiException:
                pass


def can_i(kubeconfig: str, verb: str, resource: str, ns: str, as_: str | None = None) -> bool:
    """`kubectl auth can-i`; `resource` is TYPE, TYPE/NAME, or TYPE:SUBRESOURCE (pods:exec)."""
    kind, _, sub = resource.partition(":")
    args = [kubectl(), "--kubeconfig", kubeconfig, "auth", "can-i", verb, kind, "-n", ns]
    args += [f"--subresource={sub}"] if sub else []
    done = subprocess.run(args + (["--as", as_] if as_ else []), capture_output=True, text=True, timeout=30)
    assert done.stdout.strip() in ("yes", "no"), done.stdout + done.stderr
    return done.stdout.strip() == "yes"


def api_status(kubeconfig: str, call) -> int:
    """The HTTP status of one API call made as the identity of `kubeconfig` (200 when it succeeded)."""
    try:
        call(client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig)),
             client.CoordinationV1Api(config.new_client_from_config(config_file=kubeconfig)))
    except client.ApiException as exc:
        return exc.status
    return 200


def test_a_new_namespace_without_a_storage_class_says_at_once_why_its_pods_cannot_start(kube_cluster, builder_image,
                                                                                        tmp_path):
    with team(kube_cluster, builder_image, tmp_path, "onboard", volume=False) as t:
        ctx = write_context(tmp_path / "ctx", "FROM {base}\nRUN echo hi > /hi\n", t.env.base_image)
        started = time.monotonic()
        done = kade_build(t.env, ctx, f"{t.env.registry}/{unique('onboard')}:v1", timeout=120)
        took = time.monotonic() - started
        assert done.returncode == 1, done.stderr[-3000:]
        assert (f"cache PVC {t.namespace}/kade-build-cache is not bound: no persistent volumes available for this "
                "claim and no storage class is set") in done.stderr, done.stderr[-3000:]
        assert "no default StorageClass" in done.stderr and "--cache-pvc ''" in done.stderr
        assert took < 60, f"{took:.0f} s to say why (was: 300 s and 'did not start')"
        # the hint works: an emptyDir instead of the PVC
        again = kade_build(replace(t.env, cache_pvc=""), ctx, f"{t.env.registry}/{unique('onboard')}:v2", timeout=240)
        assert result(again)["steps"]["built"] == 1


def test_builder_pods_have_no_api_rights_and_the_ci_identity_only_what_builds_need(kube_cluster, builder_image,
                                                                                 tmp_path):
    with team(kube_cluster, builder_image, tmp_path, "rbac") as t:
        ns, ci = t.namespace, t.env.kubeconfig
        (tmp_path / "tok").write_text("s3cret-of-the-build")
        ctx = write_context(tmp_path / "ctx", "FROM {base}\nRUN --mount=type=secret,id=tok,required=true "
                            "cat /run/secrets/tok && echo > /done\n",
                            t.env.base_image)
        with PodLogs(t.admin, ns) as pods:
            done = kade_build(t.env, ctx, f"{t.env.registry}/{unique('rbac')}:v1", "--secret",
                              f"id=tok,src={tmp_path / 'tok'}", "--build-key", f"k8s://{ns}/kade-build-key")
        assert result(done)["steps"]["built"] == 1, done.stderr[-3000:]   # the least that works, works
        assert "s3cret-of-the-build" not in done.stderr and "****" in done.stderr
        assert pods.specs and all("automount_service_account_token=False" in s and "kube-api-access" not in s
                                  for s in pods.specs.values())
        key_lines = [ln for ln in t.key_pem.decode().splitlines() if "-----" not in ln]
        assert not [ln for ln in key_lines for text in [*pods.specs.values(), *pods.logs.values(), done.stderr]
                    if ln in text]   # the build key: mounted from its Secret, in no spec or log

        builder = f"system:serviceaccount:{ns}:kade-builder"
        for verb, resource in [("delete", "leases"), ("create", "leases"), ("update", "leases"), ("get", "secrets"),
                               ("list", "secrets"), ("create", "secrets"), ("get", "secrets/kade-build-key"),
                               ("create", "pods"), ("list", "pods"), ("create", "pods:exec")]:
            assert not can_i(t.admin, verb, resource, ns, builder), f"builder pods may {verb} {resource}"
        for verb, resource in [("create", "secrets"), ("delete", "secrets"), ("list", "secrets"), ("get", "secrets"),
                               ("update", "secrets/kade-build-key"), ("delete", "secrets/kade-build-key"),
                               ("get", "secrets/other-team-db"), ("create", "pods:exec"), ("create", "roles"),
                               ("create", "serviceaccounts:token")]:
            assert not can_i(ci, verb, resource, ns), f"the CI identity may {verb} {resource}"
        assert can_i(ci, "get", "secrets/kade-build-key", ns)
        # and the API server says the same to real requests of the CI identity
        evil = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",   # a token
                "metadata": {"name": "kade-build-x-secrets",                                       # of the pods'
                             "annotations": {"kubernetes.io/service-account.name": "kade-builder"}}}  # account
        assert api_status(ci, lambda core, _: core.create_namespaced_secret(ns, evil)) == 403
        assert api_status(ci, lambda core, _: core.delete_namespaced_secret("other-team-db", ns)) == 403
        assert api_status(ci, lambda core, _: core.read_namespaced_secret("other-team-db", ns)) == 403
        assert api_status(ci, lambda core, _: core.read_namespaced_secret("kade-build-key", ns)) == 200


def test_tenant_b_can_reach_nothing_of_tenant_a(kube_cluster, builder_image, tmp_path):
    with team(kube_cluster, builder_image, tmp_path, "a", volume=False) as a, \
            team(kube_cluster, builder_image, tmp_path, "b", volume=False) as b:
        lease = client.CoordinationV1Api(config.new_client_from_config(config_file=a.admin))
        lease.create_namespaced_lease(a.namespace, {"metadata": {"name": "kade-step-" + "a" * 64},
                                                   "spec": {"holderIdentity": "kade-cli-a"}})
        for verb, resource in [("delete", "leases"), ("update", "leases"), ("list", "leases"), ("create", "pods"),
                               ("get", "pods:log"), ("create", "pods:portforward"), ("get", "secrets/kade-build-key"),
                               ("get", "persistentvolumeclaims")]:
            assert not can_i(b.env.kubeconfig, verb, resource, a.namespace), f"tenant B may {verb} {resource} of A"
        assert api_status(b.env.kubeconfig, lambda _, co: co.delete_namespaced_lease("kade-step-" + "a" * 64,
                                                                                    a.namespace)) == 403
        assert api_status(b.env.kubeconfig, lambda core, _: core.read_namespaced_secret("kade-build-key",
                                                                                       a.namespace)) == 403
        assert lease.read_namespaced_lease("kade-step-" + "a" * 64, a.namespace).spec.holder_identity == "kade-cli-a"


PIP = "FROM {base}\nRUN --mount=type=cache,target=/root/.cache/pip ls -a /root/.cache/pip > /seen.txt\n"
PLANT = "FROM {base}\nRUN --mount=type=cache,target=/root/.cache/pip echo owned > /root/.cache/pip/sitecustomize.py\n"
STEPS = "FROM {base}\nRUN echo genuine > /app.txt\nRUN cat /app.txt > /copy.txt\n"


def test_in_pods_b_can_neither_plant_in_a_cache_mount_nor_get_a_forged_step_reused(kube_cluster, builder_image,
                                                                                   tmp_path):
    """Two tenants (stages repositories) sharing one namespace and cache PVC, the hardest case: B's RUN
    writes into the pip cache mount, A's doesn't see it; B's step images pushed under A's keys are
    rebuilt by A's pods, which sign with the key from the Secret; A's digests are those of a clean build."""
    with team(kube_cluster, builder_image, tmp_path, "pods") as t:
        env, ns = t.env, t.namespace
        a_repo, b_repo = unique("team-a/app"), unique("team-b/app")
        pip_a = write_context(tmp_path / "pip-a", PIP, env.base_image)
        clean = kade_build(env, pip_a, f"{env.registry}/{a_repo}-clean:v1", backend="local")
        result(kade_build(env, write_context(tmp_path / "plant", PLANT, env.base_image), f"{env.registry}/{b_repo}:v1"))
        seen = kade_build(env, pip_a, f"{env.registry}/{a_repo}:pip")
        assert result(seen)["images"][0]["digest"] == result(clean)["images"][0]["digest"]
        assert b"sitecustomize" not in image_file(env.registry, a_repo, "pip", "seen.txt")

        key = ["--build-key", f"k8s://{ns}/kade-build-key"]
        steps_a = write_context(tmp_path / "steps-a", STEPS, env.base_image)
        first = result(kade_build(env, steps_a, f"{env.registry}/{a_repo}:v1", *key))
        steps_b = write_context(tmp_path / "steps-b", STEPS.replace("genuine", "poisoned"), env.base_image)
        result(kade_build(env, steps_b, f"{env.registry}/{b_repo}:steps"))
        mine, theirs = sorted(stage_keys(env.registry, a_repo + "-stages")), stage_keys(env.registry, b_repo + "-stages")
        with RegistryClient(ClientOptions(insecure=(env.registry,))) as reg:
            src, dst = reg.repository(f"{env.registry}/{b_repo}-stages"), reg.repository(f"{env.registry}/{a_repo}-stages")
            for a_key, b_digest in zip(mine, sorted(theirs.values())):
                body, _ = src.get_manifest(b_digest, mt.OCI_MANIFEST)
                for d in json.loads(body)["layers"] + [json.loads(body)["config"]]:
                    assert dst.mount_blob(d["digest"], f"{b_repo}-stages")
                dst.put_manifest(a_key, body, mt.OCI_MANIFEST)
        again = kade_build(env, steps_a, f"{env.registry}/{a_repo}:v2", *key)
        out = result(again)
        assert out["steps"]["built"] == 2, again.stderr[-3000:]
        untrusted = [r for r in records(again) if r.get("untrusted")]
        assert len(untrusted) == 2 and all("it is not signed" in r["message"] for r in untrusted)
        assert out["images"][0]["digest"] == first["images"][0]["digest"]
        assert image_file(env.registry, a_repo, "v2", "copy.txt") == b"genuine\n"
        assert result(kade_build(env, steps_a, f"{env.registry}/{a_repo}:v3", *key))["steps"]["built"] == 0
