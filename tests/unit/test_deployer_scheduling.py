"""deployer.scheduling: a pod that can never fit vs one that waits, table-driven. Nodes are shaped
as the test cluster's (recorded with `kubectl get node -o json`: 2 CPUs, ~23 GiB)."""
import pytest

from deployer.scheduling import never_fits, parse_quantity, pod_requests, scheduling

NODE = {"metadata": {"name": "kade-node", "labels": {"kubernetes.io/hostname": "kade-node", "kubernetes.io/os": "linux",
                                                      "kubernetes.io/arch": "amd64"}},
        "status": {"allocatable": {"cpu": "2", "memory": "24632464Ki", "pods": "110", "ephemeral-storage": "267847642337"}}}
GPU_NODE = {"metadata": {"name": "gpu", "labels": {"accelerator": "a100"}},
            "status": {"allocatable": {"cpu": "64", "memory": "512Gi", "nvidia.com/gpu": "8"}}}
UNSCHEDULABLE = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                 "message": "0/1 nodes are available: 1 Insufficient cpu."}


def pod(requests=None, limits=None, selector=None, affinity=None, init=None, scheduled=False):
    container = {"name": "app", "resources": {**({"requests": requests} if requests else {}),
                                              **({"limits": limits} if limits else {})}}
    spec = {"containers": [container]}
    if selector:
        spec["nodeSelector"] = selector
    if affinity:
        spec["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": affinity}}}
    if init:
        spec["initContainers"] = [{"name": "init", "resources": {"requests": init}}]
    conditions = [] if scheduled else [UNSCHEDULABLE]
    return {"metadata": {"name": "web-1", "uid": "p1"}, "spec": spec, "status": {"phase": "Pending", "conditions": conditions}}


@pytest.mark.parametrize("text,value", [
    ("500m", 0.5), ("2", 2.0), ("1Gi", 2.0 ** 30), ("128974848", 128974848.0), ("129e6", 129e6), ("123Mi", 123 * 2.0 ** 20),
    ("1.5", 1.5), ("1k", 1000.0), (3, 3.0), ("x", None), ("1Q", None),
])
def test_quantities(text, value):
    assert parse_quantity(text) == value


def test_requests_add_containers_and_take_the_largest_init():
    p = pod(requests={"cpu": "500m"}, init={"cpu": "1500m"})
    p["spec"]["containers"].append({"name": "side", "resources": {"limits": {"cpu": "250m", "memory": "1Gi"}}})
    assert pod_requests(p) == {"cpu": 1.5, "memory": 2.0 ** 30}


NEVER_CASES = [
    ("fits", pod(requests={"cpu": "1"}), [NODE], None),
    ("more cpu than any node", pod(requests={"cpu": "3"}), [NODE], "more cpu"),
    ("limits only count as requests", pod(limits={"cpu": "64"}), [NODE], "more cpu"),
    ("more memory", pod(requests={"memory": "100Gi"}), [NODE], "more memory"),
    ("a resource no node has", pod(requests={"nvidia.com/gpu": "1"}), [NODE], "more nvidia.com/gpu"),
    ("fits the bigger node", pod(requests={"cpu": "8"}), [NODE, GPU_NODE], None),
    ("selector matches no node", pod(selector={"disk": "ssd"}), [NODE], "matches none of the 1 node"),
    ("selector matches the small node only", pod(requests={"cpu": "8"}, selector={"kubernetes.io/os": "linux"}), [NODE, GPU_NODE], "more cpu"),
    ("affinity In", pod(affinity=[{"matchExpressions": [{"key": "accelerator", "operator": "In", "values": ["a100"]}]}]), [NODE, GPU_NODE], None),
    ("affinity matches nothing", pod(affinity=[{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["eu"]}]}]), [NODE], "matches none"),
    ("affinity DoesNotExist", pod(affinity=[{"matchExpressions": [{"key": "accelerator", "operator": "DoesNotExist"}]}]), [GPU_NODE], "matches none"),
    ("affinity terms are ORed", pod(affinity=[{"matchExpressions": [{"key": "zone", "operator": "Exists"}]},
                                              {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["kade-node"]}]}]), [NODE], None),
    ("affinity Gt", pod(affinity=[{"matchExpressions": [{"key": "cores", "operator": "Gt", "values": ["4"]}]}]),
     [{**NODE, "metadata": {"name": "n", "labels": {"cores": "8"}}}], None),
    ("no nodes", pod(), [], "no nodes"),
]


@pytest.mark.parametrize("name,obj,nodes,expected", NEVER_CASES, ids=[c[0] for c in NEVER_CASES])
def test_never_fits(name, obj, nodes, expected):
    why = never_fits(obj, nodes)
    assert (why is None) if expected is None else (why is not None and expected in why)


def ev(reason):
    return {"type": "Normal", "reason": reason, "involvedObject": {"kind": "Pod", "uid": "p1"}}


STATE_CASES = [
    ("scheduled", pod(scheduled=True), [NODE], [], None),
    ("too big, no autoscaler", pod(requests={"cpu": "3"}), [NODE], [], "never"),
    ("too big, autoscaler adding a node", pod(requests={"cpu": "3"}), [NODE], [ev("TriggeredScaleUp")], "waiting"),
    ("too big, karpenter nominated", pod(requests={"cpu": "3"}), [NODE], [ev("Nominated")], "waiting"),
    ("too big, autoscaler cannot help", pod(requests={"cpu": "3"}), [NODE], [ev("TriggeredScaleUp"), ev("NotTriggerScaleUp")], "never"),
    ("fits an empty node: waiting for room or a taint", pod(requests={"cpu": "1"}), [NODE], [], "waiting"),
    ("nodes unknown (RBAC)", pod(requests={"cpu": "3"}), None, [], "waiting"),
]


@pytest.mark.parametrize("name,obj,nodes,events,expected", STATE_CASES, ids=[c[0] for c in STATE_CASES])
def test_scheduling_state(name, obj, nodes, events, expected):
    got = scheduling(obj, nodes, events)
    assert (got.state if got else None) == expected
    if got:
        assert "Insufficient cpu" in got.message  # the scheduler's own reason is always shown
