"""Can an unschedulable pod ever run here, or is it only waiting? (pure)

A pod that can never fit fails fast: its requests exceed the allocatable resources of every node, or
its node selector / required node affinity matches no node, and no cluster autoscaler says it will
add a node (cluster-autoscaler's TriggeredScaleUp, Karpenter's Nominated). NotTriggerScaleUp (the
autoscaler looked and cannot help) confirms it. Everything else the scheduler reports (no room left
now, a cordoned or tainted node, a volume not bound yet, pod affinity) is waiting: the scheduler's
reason is shown and the no-activity timeout decides.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

WAIT_FOR_AUTOSCALER = frozenset({"TriggeredScaleUp", "Nominated"})
AUTOSCALER_CANNOT = frozenset({"NotTriggerScaleUp"})
_SUFFIX = {"": 1.0, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
           "Ki": 2.0 ** 10, "Mi": 2.0 ** 20, "Gi": 2.0 ** 30, "Ti": 2.0 ** 40, "Pi": 2.0 ** 50, "Ei": 2.0 ** 60}
_QUANTITY = re.compile(r"^([+-]?\d+(?:\.\d*)?|[+-]?\.\d+)(?:[eE]([+-]?\d+)|(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E))?$")


@dataclass(frozen=True)
class Scheduling:
    state: str  # "never" | "waiting"
    message: str


def parse_quantity(value: Any) -> float | None:
    """A Kubernetes quantity ("500m", "1Gi", "2", "1e3") as a number; None when malformed."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    match = _QUANTITY.match(str(value).strip())
    if not match:
        return None
    number = float(match.group(1))
    if match.group(2):
        return number * 10.0 ** int(match.group(2))
    return number * _SUFFIX[match.group(3) or ""]


def _container_requests(container: dict[str, Any]) -> dict[str, float]:
    resources = container.get("resources") or {}
    merged = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}  # limits default requests
    out = {}
    for name, value in merged.items():
        number = parse_quantity(value)
        if number is not None:
            out[name] = number
    return out


def pod_requests(pod: dict[str, Any]) -> dict[str, float]:
    """What the scheduler must find on one node: the containers' requests added up, or the largest
    init container's when that is more, plus the pod overhead."""
    spec = pod.get("spec") or {}
    total: dict[str, float] = {}
    for container in spec.get("containers") or []:
        for name, value in _container_requests(container).items():
            total[name] = total.get(name, 0.0) + value
    for container in spec.get("initContainers") or []:
        for name, value in _container_requests(container).items():
            total[name] = max(total.get(name, 0.0), value)
    for name, value in (spec.get("overhead") or {}).items():
        number = parse_quantity(value)
        if number is not None:
            total[name] = total.get(name, 0.0) + number
    return total


def _requirement(labels: dict[str, str], req: dict[str, Any]) -> bool:
    key, op, values = req.get("key", ""), req.get("operator", ""), [str(v) for v in req.get("values") or []]
    if op == "In":
        return key in labels and labels[key] in values
    if op == "NotIn":
        return key not in labels or labels[key] not in values
    if op == "Exists":
        return key in labels
    if op == "DoesNotExist":
        return key not in labels
    if op in ("Gt", "Lt") and key in labels and values:
        try:
            have, want = int(labels[key]), int(values[0])
        except ValueError:
            return False
        return have > want if op == "Gt" else have < want
    return False


def node_selected(pod: dict[str, Any], node: dict[str, Any]) -> bool:
    """Do the pod's nodeSelector and required node affinity allow this node?"""
    spec = pod.get("spec") or {}
    meta = node.get("metadata") or {}
    labels = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}
    if any(labels.get(k) != str(v) for k, v in (spec.get("nodeSelector") or {}).items()):
        return False
    required = (((spec.get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    terms = required.get("nodeSelectorTerms") or []
    if not terms:
        return True
    fields = {"metadata.name": str(meta.get("name", ""))}
    return any(all(_requirement(labels, r) for r in term.get("matchExpressions") or [])
               and all(_requirement(fields, r) for r in term.get("matchFields") or [])
               and (term.get("matchExpressions") or term.get("matchFields"))
               for term in terms)


def _too_big(requests: dict[str, float], node: dict[str, Any]) -> list[str]:
    allocatable = (node.get("status") or {}).get("allocatable") or {}
    short = []
    for name, wanted in sorted(requests.items()):
        if wanted <= 0:
            continue
        have = parse_quantity(allocatable.get(name, 0)) or 0.0
        if wanted > have:
            short.append(name)
    return short


def never_fits(pod: dict[str, Any], nodes: list[dict[str, Any]]) -> str | None:
    """Why no node of the cluster, however empty, could run this pod; None when one could."""
    requests = pod_requests(pod)
    selected = [n for n in nodes if node_selected(pod, n)]
    if not selected:
        return (f"its node selector / required node affinity matches none of the {len(nodes)} node(s)" if nodes
                else "the cluster has no nodes")
    too_big = {(n.get("metadata") or {}).get("name", "?"): _too_big(requests, n) for n in selected}
    if all(too_big.values()):
        wanted = ", ".join(sorted({r for names in too_big.values() for r in names}))
        return (f"it requests more {wanted} than any node can allocate "
                f"({', '.join(f'{k}={_shown(requests[k], k)}' for k in sorted({r for v in too_big.values() for r in v}))})")
    return None


def _shown(value: float, name: str) -> str:
    if name == "cpu":
        return f"{value:g}"
    if name == "memory" or name.endswith("storage"):
        return f"{value / 2 ** 30:.1f}Gi"
    return f"{value:g}"


def scheduling(pod: dict[str, Any], nodes: list[dict[str, Any]] | None, events: list[dict[str, Any]]) -> Scheduling | None:
    """For a pod the scheduler could not place (PodScheduled=False, Unschedulable): "never" with the
    reason, or "waiting" with the scheduler's message; None for a pod that is not unschedulable.
    `nodes` None: the nodes could not be listed (RBAC), so nothing is judged never to fit."""
    cond = next((c for c in (pod.get("status") or {}).get("conditions") or []
                 if c.get("type") == "PodScheduled"), None)
    if not cond or cond.get("status") != "False" or cond.get("reason") != "Unschedulable":
        return None
    said = str(cond.get("message") or "unschedulable")
    uid = (pod.get("metadata") or {}).get("uid")
    mine = [e for e in events if (e.get("involvedObject") or e.get("regarding") or {}).get("uid") == uid]
    reasons = {str(e.get("reason")) for e in mine}
    if reasons & WAIT_FOR_AUTOSCALER and not reasons & AUTOSCALER_CANNOT:
        return Scheduling("waiting", f"the cluster autoscaler is adding a node; scheduler: {said}")
    why = never_fits(pod, nodes) if nodes is not None else None
    if why is not None:
        return Scheduling("never", f"{why}; scheduler: {said}")
    if reasons & AUTOSCALER_CANNOT:
        return Scheduling("waiting", f"no autoscaler can add a node for it; waiting for room; scheduler: {said}")
    return Scheduling("waiting", f"waiting to be scheduled: {said}")
