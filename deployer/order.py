"""In what order resources are applied and waited for (pure).

Stages, each applied together and tracked until ready before the next one starts:
  1. CustomResourceDefinitions (until Established), 2. Namespaces,
  3. `kade.io/hook: pre-deploy` resources by weight, 4. everything else by `kade.io/weight`
  (lower first; default 0), split further by `kade.io/deploy-dependency-<id>`,
  5. `kade.io/hook: post-deploy` resources by weight.
A dependency is `kade.io/deploy-dependency-<id>: "state=ready|present,kind=K,name=N[,group=G][,namespace=NS]"`.
`state=ready` puts the dependent in a later stage than its dependency; `state=present` only applies
it after. Which hooks run depends on the operation (install, upgrade, rollback: deployer.lifecycle);
the others are skipped. Within a stage, resources are applied in Helm's install order of kinds.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from deployer.errors import RenderError
from deployer.lifecycle import INSTALL, hook_events, hook_phase, kind_rank
from deployer.resources import Resource, ResourceKey

HOOKS = ("pre-deploy", "post-deploy")
_PHASES = ["crds", "namespaces", "pre-deploy", "main", "post-deploy"]


@dataclass(frozen=True)
class Dependency:
    state: str  # "ready" | "present"
    kind: str
    name: str
    group: str | None = None
    namespace: str | None = None

    def matches(self, resource: Resource) -> bool:
        return (resource.kind.lower() == self.kind.lower() and resource.name == self.name
                and (self.group is None or resource.group == self.group)
                and (self.namespace is None or resource.namespace == self.namespace))


@dataclass
class Stage:
    name: str
    resources: list[Resource]
    hook: str | None = None

    def __str__(self) -> str:
        return self.name


@dataclass
class Plan:
    stages: list[Stage]
    skipped: list[tuple[Resource, str]] = field(default_factory=list)  # (resource, why)


def hook_of(resource: Resource, operation: str = INSTALL) -> str | None:
    """"pre-deploy", "post-deploy", "skip" (a hook of other operations) or None (not a hook)."""
    return hook_phase(resource, operation)


def weight_of(resource: Resource) -> int:
    value = resource.annotation("weight")
    if value is None and hook_events(resource):
        value = resource.annotations.get("helm.sh/hook-weight")
    if value is None:
        return 0
    try:
        return int(value.strip())
    except ValueError:
        raise RenderError(f"{resource.source}: {resource.key}: weight must be an integer, got {value!r}") from None


def parse_dependency(value: str, where: str) -> Dependency:
    fields: dict[str, str] = {}
    for part in value.split(","):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            raise RenderError(f"{where}: deploy-dependency {value!r}: expected key=value pairs")
        k, v = part.split("=", 1)
        fields[k.strip()] = v.strip()
    unknown = set(fields) - {"state", "kind", "name", "group", "version", "namespace"}
    if unknown:
        raise RenderError(f"{where}: deploy-dependency {value!r}: unknown key(s) {', '.join(sorted(unknown))}")
    if not fields.get("kind") or not fields.get("name"):
        raise RenderError(f"{where}: deploy-dependency {value!r}: kind and name are required")
    state = fields.get("state", "ready")
    if state not in ("ready", "present"):
        raise RenderError(f"{where}: deploy-dependency {value!r}: state must be ready or present")
    return Dependency(state, fields["kind"], fields["name"], fields.get("group"), fields.get("namespace"))


def dependencies_of(resource: Resource) -> list[Dependency]:
    where = f"{resource.source}: {resource.key}"
    return [parse_dependency(v, where) for _, v in sorted(resource.annotations_with_prefix("deploy-dependency-").items())]


def phase_of(resource: Resource, operation: str = INSTALL) -> str:
    hook = hook_of(resource, operation)
    if hook in HOOKS:
        return hook
    if resource.kind == "CustomResourceDefinition" and resource.group == "apiextensions.k8s.io":
        return "crds"
    if resource.kind == "Namespace" and resource.group == "":
        return "namespaces"
    return "main"


def plan_stages(resources: list[Resource], operation: str = INSTALL) -> Plan:
    """The stages of an install, upgrade or rollback (deployer.lifecycle)."""
    skipped = [(r, f"a hook that does not run on {operation}") for r in resources if hook_of(r, operation) == "skip"]
    active = sorted((r for r in resources if hook_of(r, operation) != "skip"), key=lambda r: kind_rank(r.kind))
    _check_duplicates(active)
    phases = {r.key: phase_of(r, operation) for r in active}
    stages: list[Stage] = []
    for phase in _PHASES:
        members = [r for r in active if phases[r.key] == phase]
        if phase == "post-deploy":  # a hook of both pre- and post-<operation> runs twice, as in Helm
            members += [r for r in active if phases[r.key] == "pre-deploy" and f"post-{operation}" in hook_events(r)]
        if not members:
            continue
        hook = phase if phase in HOOKS else None
        if phase in ("crds", "namespaces"):
            stages.append(Stage(phase, members))
            continue
        weights = sorted({weight_of(r) for r in members})
        for weight in weights:
            group = [r for r in members if weight_of(r) == weight]
            levels = _levels(group, active, phases, phase, weight)
            label = "resources" if hook is None else f"{hook} hooks"
            for index, level in enumerate(levels):
                name = label
                if len(weights) > 1 or weight != 0:
                    name += f" (weight {weight})"
                if len(levels) > 1:
                    name += f" [step {index + 1}/{len(levels)}]"
                stages.append(Stage(name, level, hook))
    return Plan(stages, skipped)


def only_pre_deploy_hooks(applied: list[Stage]) -> bool:
    """Did a deploy apply nothing but pre-deploy hooks (it failed in them, before CRDs of its own, namespaces
    or its workload were applied)? Then the running release is untouched and needs no rollback."""
    return bool(applied) and all(stage.hook == "pre-deploy" for stage in applied)


def _check_duplicates(resources: list[Resource]) -> None:
    seen: dict[object, Resource] = {}
    for r in resources:
        if r.key in seen:
            raise RenderError(f"{r.key} is defined twice: in {seen[r.key].source} and {r.source}")
        seen[r.key] = r


def _levels(group: list[Resource], everything: list[Resource], phases: dict, phase: str, weight: int) -> list[list[Resource]]:
    """Split one weight group by its deploy dependencies; within a level, present-dependencies first."""
    in_group = {r.key: r for r in group}
    edges: dict[object, list[tuple[object, str]]] = {r.key: [] for r in group}
    for r in group:
        for dep in dependencies_of(r):
            targets = [o for o in everything if dep.matches(o) and o.key != r.key]
            if not targets:
                raise RenderError(f"{r.source}: {r.key} depends on {dep.kind}/{dep.name}, which is not in this release")
            for target in targets:
                if target.key in in_group:
                    edges[r.key].append((target.key, dep.state))
                    continue
                if _later(phases[target.key], weight_of(target), phase, weight):
                    raise RenderError(
                        f"{r.source}: {r.key} depends on {target.key}, which is deployed later "
                        f"(its phase/weight comes after); lower the dependency's kade.io/weight")
    level: dict[object, int] = {}
    visiting: set[object] = set()

    def visit(key: object, chain: list[object]) -> int:
        if key in level:
            return level[key]
        if key in visiting:
            cycle = " -> ".join(str(k) for k in chain + [key])
            raise RenderError(f"deploy dependencies form a cycle: {cycle}")
        visiting.add(key)
        value = 0
        for target, state in edges[key]:
            value = max(value, visit(target, chain + [key]) + (1 if state == "ready" else 0))
        visiting.discard(key)
        level[key] = value
        return value

    for r in group:
        visit(r.key, [])
    count = max(level.values()) + 1 if level else 0
    out: list[list[Resource]] = [[] for _ in range(count)]
    for r in _topological(group, edges):
        out[level[r.key]].append(r)
    return out


def _topological(group: list[Resource], edges: dict) -> list[Resource]:
    done: set[ResourceKey] = set()
    out: list[Resource] = []
    by_key = {r.key: r for r in group}

    def visit(key: ResourceKey) -> None:
        if key in done:
            return
        done.add(key)
        for target, _ in edges[key]:
            visit(target)
        out.append(by_key[key])

    for r in group:
        visit(r.key)
    return out


def _later(phase_a: str, weight_a: int, phase_b: str, weight_b: int) -> bool:
    """Is (phase_a, weight_a) deployed after (phase_b, weight_b)?"""
    ia, ib = _PHASES.index(phase_a), _PHASES.index(phase_b)
    if ia != ib:
        return ia > ib
    return weight_a > weight_b
