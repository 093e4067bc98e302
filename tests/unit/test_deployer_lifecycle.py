"""Ownership, field-manager folding, delete policies, hooks and werf.io annotations (pure parts)."""
import pytest

from deployer.errors import RenderError
from deployer.fields import REPLICAS_KEEPER, fold_legacy, owns, release_field, union
from deployer.lifecycle import delete_policies, hook_phase, replicas_on_creation, unsupported_annotations
from deployer.ownership import Owner, mark, owned, owner_of, takeover_refusal
from deployer.plan import SavedPlan, digest, fingerprint, stale
from deployer.resources import Resource
from deployer.upsert import body_for


def obj(annotations=None, managers=()):
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "annotations": annotations or {},
                         "managedFields": [{"manager": m, "operation": "Update"} for m in managers]}}


OWNER_CASES = [
    ("this release", obj({"kade.io/release-name": "app", "kade.io/release-namespace": "ns"}), False, True),
    ("another release", obj({"kade.io/release-name": "other", "kade.io/release-namespace": "ns"}), True, False),
    ("same name, other namespace", obj({"kade.io/release-name": "app", "kade.io/release-namespace": "x"}), True, False),
    ("helm release of the same name", obj({"meta.helm.sh/release-name": "app", "meta.helm.sh/release-namespace": "ns"}), False, False),
    ("made by kubectl", obj(managers=["kubectl-client-side-apply"]), False, False),
    ("applied by an older kade, in the record", obj(managers=["kade"]), True, True),
    ("kade fields but not in the record", obj(managers=["kade"]), False, False),
]


@pytest.mark.parametrize("name,live,recorded,expected", OWNER_CASES, ids=[c[0] for c in OWNER_CASES])
def test_owned(name, live, recorded, expected):
    assert owned(live, "app", "ns", recorded) is expected
    assert (takeover_refusal(live, "app", "ns", recorded, "ConfigMap ns/c") is None) is expected


def test_refusal_names_the_owner_and_adopt():
    why = takeover_refusal(obj({"meta.helm.sh/release-name": "web", "meta.helm.sh/release-namespace": "prod"}),
                           "app", "ns", False, "ConfigMap ns/c")
    assert "helm release web in namespace prod" in why and "--adopt" in why
    assert owner_of(obj()) == Owner("")


def test_mark():
    body = {"kind": "ConfigMap", "metadata": {"name": "c", "annotations": None}}
    mark(body, "app", "ns")
    assert body["metadata"]["annotations"] == {"kade.io/release-name": "app", "kade.io/release-namespace": "ns"}


F_KADE = {"f:data": {"f:a": {}}}
F_HELM = {"f:data": {"f:b": {}}, "f:metadata": {"f:labels": {"f:x": {}}}}


def test_fold_legacy_managers_into_kades_apply_entry():
    managed = [{"manager": "kade", "operation": "Apply", "apiVersion": "v1", "fieldsV1": F_KADE},
               {"manager": "helm", "operation": "Update", "apiVersion": "v1", "fieldsV1": F_HELM},
               {"manager": "kubectl-client-side-apply", "operation": "Update", "fieldsV1": {"f:data": {"f:c": {}}}},
               {"manager": "kube-controller-manager", "operation": "Update", "subresource": "status", "fieldsV1": {"f:status": {}}},
               {"manager": "kubectl-edit", "operation": "Update", "subresource": "status", "fieldsV1": {"f:status": {}}}]
    out = fold_legacy(managed, "kade", "v1", "now")
    assert [m["manager"] for m in out] == ["kube-controller-manager", "kubectl-edit", "kade"]
    assert out[-1]["operation"] == "Apply" and out[-1]["fieldsV1"] == {
        "f:data": {"f:a": {}, "f:b": {}, "f:c": {}}, "f:metadata": {"f:labels": {"f:x": {}}}}
    assert fold_legacy(out, "kade", "v1", "now") is None, "nothing left to fold"
    assert managed[0]["fieldsV1"] == F_KADE, "inputs are not changed"


def test_fold_without_a_kade_entry_yet():
    out = fold_legacy([{"manager": "werf", "operation": "Update", "fieldsV1": F_HELM}], "kade", "apps/v1", "now")
    assert out == [{"manager": "kade", "operation": "Apply", "apiVersion": "apps/v1", "time": "now",
                    "fieldsType": "FieldsV1", "fieldsV1": F_HELM}]


def test_release_field_hands_replicas_to_a_keeper():
    managed = [{"manager": "kade", "operation": "Apply", "fieldsV1": {"f:spec": {"f:replicas": {}, "f:template": {}}}}]
    out = release_field(managed, "kade", ("spec", "replicas"), REPLICAS_KEEPER, "apps/v1", "now")
    assert out[0]["fieldsV1"] == {"f:spec": {"f:template": {}}}
    assert out[1]["manager"] == REPLICAS_KEEPER and owns(out, REPLICAS_KEEPER, ("spec", "replicas"))
    assert release_field(out, "kade", ("spec", "replicas"), REPLICAS_KEEPER, "apps/v1", "now") is None
    only = [{"manager": "kade", "operation": "Apply", "fieldsV1": {"f:spec": {"f:replicas": {}}}}]
    assert release_field(only, "kade", ("spec", "replicas"), REPLICAS_KEEPER, "v", "t")[0]["fieldsV1"] == {}


def test_union_keeps_both():
    assert union({"f:a": {"f:b": {}}}, {"f:a": {"f:c": {}}, ".": {}}) == {"f:a": {"f:b": {}, "f:c": {}}, ".": {}}


def res(kind="Job", api="batch/v1", **annotations):
    return Resource({"apiVersion": api, "kind": kind, "metadata": {"name": "x", "annotations": annotations}}, "x.yaml")


POLICY_CASES = [
    ("plain Job: recreate when immutable", res(), {"before-creation-if-immutable"}),
    ("Deployment: none", res("Deployment", "apps/v1"), set()),
    ("hook: before creation (Helm's before-hook-creation)", res(**{"helm.sh/hook": "pre-upgrade"}), {"before-creation"}),
    ("helm delete policies", res(**{"helm.sh/hook": "post-install", "helm.sh/hook-delete-policy": "hook-succeeded,hook-failed"}), {"succeeded", "failed"}),
    ("werf alias", res(**{"werf.io/delete-policy": "before-creation,succeeded"}), {"before-creation", "succeeded"}),
    ("kade wins over helm", res(**{"kade.io/delete-policy": "failed", "helm.sh/hook-delete-policy": "hook-succeeded"}), {"failed"}),
]


@pytest.mark.parametrize("name,r,expected", POLICY_CASES, ids=[c[0] for c in POLICY_CASES])
def test_delete_policies(name, r, expected):
    assert delete_policies(r) == expected


@pytest.mark.parametrize("annotations,message", [
    ({"kade.io/delete-policy": "sometimes"}, "delete-policy: unknown sometimes"),
    ({"helm.sh/hook-delete-policy": "never"}, "hook-delete-policy: unknown never"),
    ({"kade.io/replicas-on-creation": "three"}, "replicas-on-creation"),
])
def test_bad_lifecycle_annotations(annotations, message):
    with pytest.raises(RenderError, match=message):
        delete_policies(res(**annotations))
        replicas_on_creation(res(**annotations))


def test_hook_phase_by_operation():
    r = res(**{"helm.sh/hook": "pre-install,post-upgrade"})
    assert [hook_phase(r, op) for op in ("install", "upgrade", "rollback", "delete")] == \
        ["pre-deploy", "post-deploy", "skip", "skip"]
    assert hook_phase(res(**{"helm.sh/hook": "test"}), "install") == "skip"
    assert hook_phase(res("Deployment", "apps/v1"), "install") is None


def test_replicas_on_creation_body():
    r = Resource({"apiVersion": "apps/v1", "kind": "Deployment",
                  "metadata": {"name": "w", "annotations": {"werf.io/replicas-on-creation": "3"}}, "spec": {"replicas": 1}})
    assert body_for(r, None)["spec"]["replicas"] == 3
    assert "replicas" not in body_for(r, {"metadata": {}})["spec"]
    assert r.body["spec"]["replicas"] == 1


def test_werf_annotations_nelm_documents_are_supported_or_named():
    r = res(**{"werf.io/weight": "1", "werf.io/sensitive": "true", "werf.io/deploy-on": "install",
               "werf.io/show-logs-only-for-containers": "a", "werf.io/log-regex-for-app": "x",
               "werf.io/delete-propagation": "Orphan", "werf.io/made-up": "1", "werf.io/replicas-on-creation": "2",
               "db.external-dependency.werf.io/resource": "deployment/db", "werf.io/ownership": "anyone",
               "werf.io/delete-dependency-db": "kind=x", "werf.io/deploy-on-extra": "x"})
    warnings = "\n".join(unsupported_annotations(r))
    for name in ("sensitive", "deploy-on", "show-logs-only-for-containers", "log-regex-for-app", "delete-propagation",
                 "made-up", "external-dependency", "ownership", "delete-dependency-db"):
        assert f"{name}" in warnings, name
    assert "werf.io/weight" not in warnings and "replicas-on-creation" not in warnings
    assert unsupported_annotations(res(**{"werf.io/deploy-on": "pre-upgrade"})) == []


def test_saved_plan_goes_stale():
    resources = [Resource({"kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"x": "1"}})]
    live = {"kind": "ConfigMap", "metadata": {"name": "a", "resourceVersion": "5"}, "data": {"x": "1"}}
    saved = SavedPlan("p.json", "app", "ns", digest(resources), {"ConfigMap ns/a": fingerprint(live)})
    assert stale(saved, "app", "ns", digest(resources), {"ConfigMap ns/a": fingerprint(live)}) == []
    bumped = {**live, "metadata": {"name": "a", "resourceVersion": "6"}, "status": {"x": 1}}
    assert stale(saved, "app", "ns", digest(resources), {"ConfigMap ns/a": fingerprint(bumped)}) == [], \
        "status and resourceVersion changes do not stale a plan"
    edited = {**live, "data": {"x": "2"}}
    assert stale(saved, "app", "ns", digest(resources), {"ConfigMap ns/a": fingerprint(edited)}) == \
        ["ConfigMap ns/a was changed in the cluster since"]
    other = [Resource({"kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"x": "2"}})]
    assert "rendered manifests differ" in stale(saved, "app", "ns", digest(other), {})[0]
    assert "made for release app" in stale(saved, "web", "ns", digest(resources), {})[0]
