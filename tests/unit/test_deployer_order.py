"""Apply order: CRDs, Namespaces, hooks, weights and deploy dependencies."""
import pytest

from deployer.errors import RenderError
from deployer.order import only_pre_deploy_hooks, parse_dependency, plan_stages
from deployer.resources import Resource


def res(kind, name, api="v1", **annotations):
    return Resource({"apiVersion": api, "kind": kind, "metadata": {"name": name, "annotations": annotations}}, f"{name}.yaml")


def names(plan):
    return [[r.name for r in stage.resources] for stage in plan.stages]


def test_crds_then_namespaces_then_hooks_then_weights():
    plan = plan_stages([
        res("Deployment", "web", "apps/v1"),
        res("Job", "after", "batch/v1", **{"kade.io/hook": "post-deploy"}),
        res("ConfigMap", "early", **{"kade.io/weight": "-5"}),
        res("Job", "migrate", "batch/v1", **{"werf.io/hook": "pre-deploy"}),
        res("Namespace", "team"),
        res("CustomResourceDefinition", "widgets.example.com", "apiextensions.k8s.io/v1"),
    ])
    assert names(plan) == [["widgets.example.com"], ["team"], ["migrate"], ["early"], ["web"], ["after"]]
    assert [s.hook for s in plan.stages] == [None, None, "pre-deploy", None, None, "post-deploy"]


def test_same_weight_is_one_parallel_stage():
    plan = plan_stages([res("ConfigMap", "a"), res("ConfigMap", "b"), res("ConfigMap", "c", **{"kade.io/weight": "1"})])
    assert names(plan) == [["a", "b"], ["c"]]


def test_ready_dependency_splits_stage():
    plan = plan_stages([
        res("Deployment", "api", "apps/v1", **{"kade.io/deploy-dependency-db": "state=ready,kind=StatefulSet,name=db"}),
        res("StatefulSet", "db", "apps/v1"),
        res("ConfigMap", "cfg"),
    ])
    assert names(plan) == [["cfg", "db"], ["api"]]  # within a stage: Helm's kind order


def test_present_dependency_orders_within_stage():
    plan = plan_stages([
        res("Deployment", "api", "apps/v1", **{"kade.io/deploy-dependency-cfg": "state=present,kind=ConfigMap,name=cfg"}),
        res("ConfigMap", "cfg"),
    ])
    assert names(plan) == [["cfg", "api"]]


def test_helm_hooks_are_mapped_and_others_skipped():
    plan = plan_stages([
        res("Job", "pre", "batch/v1", **{"helm.sh/hook": "pre-install,pre-upgrade"}),
        res("Pod", "test", **{"helm.sh/hook": "test"}),
        res("ConfigMap", "cfg"),
    ])
    assert names(plan) == [["pre"], ["cfg"]]
    assert [r.name for r, _ in plan.skipped] == ["test"]


ERROR_CASES = [
    ("cycle", [res("ConfigMap", "a", **{"kade.io/deploy-dependency-x": "kind=ConfigMap,name=b"}),
               res("ConfigMap", "b", **{"kade.io/deploy-dependency-x": "kind=ConfigMap,name=a"})], "cycle"),
    ("missing dependency", [res("ConfigMap", "a", **{"kade.io/deploy-dependency-x": "kind=Secret,name=s"})], "not in this release"),
    ("dependency deployed later", [res("ConfigMap", "a", **{"kade.io/deploy-dependency-x": "kind=ConfigMap,name=b"}),
                                   res("ConfigMap", "b", **{"kade.io/weight": "5"})], "deployed later"),
    ("bad weight", [res("ConfigMap", "a", **{"kade.io/weight": "heavy"})], "weight must be an integer"),
    ("bad hook", [res("Job", "a", "batch/v1", **{"kade.io/hook": "pre-everything"})], "kade.io/hook must be pre-deploy"),
    ("bad helm hook", [res("Job", "a", "batch/v1", **{"helm.sh/hook": "pre-instal"})], "unknown hook"),
    ("duplicate", [res("ConfigMap", "a"), res("ConfigMap", "a")], "defined twice"),
]


@pytest.mark.parametrize("name,resources,message", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_errors(name, resources, message):
    with pytest.raises(RenderError, match=message):
        plan_stages(resources)


@pytest.mark.parametrize("value,message", [
    ("kind=Deployment", "kind and name are required"),
    ("state=done,kind=A,name=b", "state must be"),
    ("colour=red,kind=A,name=b", "unknown key"),
    ("kind", "key=value"),
])
def test_bad_dependency_annotations(value, message):
    with pytest.raises(RenderError, match=message):
        parse_dependency(value, "x.yaml")


def test_dependency_defaults_to_ready():
    dep = parse_dependency("kind=StatefulSet, name=db, namespace=data", "x")
    assert (dep.state, dep.kind, dep.name, dep.namespace) == ("ready", "StatefulSet", "db", "data")


def test_kade_annotation_wins_over_werf():
    r = res("ConfigMap", "a", **{"werf.io/weight": "3", "kade.io/weight": "7"})
    assert r.annotation("weight") == "7"
    r2 = res("ConfigMap", "a", **{"werf.io/deploy-dependency-a": "x", "kade.io/deploy-dependency-a": "y"})
    assert r2.annotations_with_prefix("deploy-dependency-") == {"a": "y"}


_PRE = {"kade.io/hook": "pre-deploy"}
APPLIED = [  # stages a failed deploy had started -> is the running release untouched?
    ("pre-deploy hooks only", [res("Job", "migrate", "batch/v1", **_PRE)], 1, True),
    ("two weights of pre-deploy hooks", [res("Job", "a", "batch/v1", **_PRE),
                                         res("Job", "b", "batch/v1", **{**_PRE, "kade.io/weight": "2"})], 2, True),
    ("workload reached", [res("Job", "migrate", "batch/v1", **_PRE), res("Deployment", "web", "apps/v1")], 2, False),
    ("namespace applied first", [res("Namespace", "team"), res("Job", "migrate", "batch/v1", **_PRE)], 2, False),
    ("CRD applied first", [res("CustomResourceDefinition", "w.example.com", "apiextensions.k8s.io/v1"),
                           res("Job", "migrate", "batch/v1", **_PRE)], 2, False),
    ("post-deploy hook", [res("Job", "notify", "batch/v1", **{"kade.io/hook": "post-deploy"})], 1, False),
    ("nothing applied", [res("Job", "migrate", "batch/v1", **_PRE)], 0, False),
]


@pytest.mark.parametrize("name,resources,started,expected", APPLIED, ids=[a[0] for a in APPLIED])
def test_only_pre_deploy_hooks(name, resources, started, expected):
    assert only_pre_deploy_hooks(plan_stages(resources).stages[:started]) is expected


def test_kinds_in_helm_install_order_within_a_stage():
    plan = plan_stages([res("Deployment", "web", "apps/v1"), res("Service", "web"), res("Widget", "w", "example.com/v1"),
                        res("ServiceAccount", "sa"), res("ConfigMap", "cfg"), res("Secret", "s"),
                        res("RoleBinding", "rb", "rbac.authorization.k8s.io/v1")])
    assert names(plan) == [["sa", "s", "cfg", "rb", "web", "web", "w"]]


HOOKS = [
    res("Job", "install-only", "batch/v1", **{"helm.sh/hook": "pre-install"}),
    res("Job", "upgrade-only", "batch/v1", **{"helm.sh/hook": "pre-upgrade"}),
    res("Job", "deploy", "batch/v1", **{"kade.io/hook": "pre-deploy"}),
    res("Job", "rollback", "batch/v1", **{"helm.sh/hook": "pre-rollback,post-rollback"}),
    res("Job", "delete", "batch/v1", **{"helm.sh/hook": "pre-delete"}),
    res("Job", "werf-upgrade", "batch/v1", **{"werf.io/deploy-on": "post-upgrade"}),
    res("ConfigMap", "cfg"),
]


@pytest.mark.parametrize("operation,expected", [
    ("install", [["install-only", "deploy"], ["cfg"]]),
    ("upgrade", [["upgrade-only", "deploy"], ["cfg"], ["werf-upgrade"]]),
    ("delete", [["delete"], ["cfg"]]),  # uninstall runs the hook stages only
    ("rollback", [["rollback"], ["cfg"], ["rollback"]]),  # not the old pre-deploy migrations; pre and post: twice
])
def test_hooks_by_operation(operation, expected):
    assert names(plan_stages(HOOKS, operation)) == expected
