"""When a resource is applied and when it is deleted (pure): hook events, delete policies, the order
of kinds, and the `werf.io/*` annotations nelm documents that kade does not support.

Hooks, as Helm runs them: `helm.sh/hook` (pre-install, post-install, pre-upgrade, post-upgrade,
pre-rollback, post-rollback, pre-delete, post-delete; `test` hooks never run in a deploy) or
`kade.io/hook` (the same names, and pre-deploy = pre-install,pre-upgrade, post-deploy =
post-install,post-upgrade). A deploy is an install (no deployed revision yet) or an upgrade; `kade
rollback` and an atomic rollback are rollbacks (their rollback hooks run, not the pre-/post-deploy
ones); `kade uninstall` runs the delete hooks.

Delete policies, `kade.io/delete-policy` (werf.io alias; Helm's `helm.sh/hook-delete-policy` read too),
comma-separated: before-creation (delete, wait until gone, create; Helm's before-hook-creation, the
default for hooks), before-creation-if-immutable (update in place; when the API server refuses the
change as immutable, delete and create: the default for plain Jobs), succeeded (delete once ready;
hook-succeeded), failed (delete once failed, after its logs were taken; hook-failed).
"""
from __future__ import annotations

from deployer.errors import RenderError
from deployer.resources import Resource

INSTALL, UPGRADE, ROLLBACK, DELETE = "install", "upgrade", "rollback", "delete"
HOOK_EVENTS = frozenset(f"{when}-{op}" for when in ("pre", "post") for op in (INSTALL, UPGRADE, ROLLBACK, DELETE))
_KADE_ALIASES = {"pre-deploy": {"pre-install", "pre-upgrade"}, "post-deploy": {"post-install", "post-upgrade"}}
_NEVER_RUN = {"test", "test-success", "test-failure", "crd-install"}

BEFORE_CREATION, IF_IMMUTABLE = "before-creation", "before-creation-if-immutable"
SUCCEEDED, FAILED = "succeeded", "failed"
DELETE_POLICIES = (BEFORE_CREATION, IF_IMMUTABLE, SUCCEEDED, FAILED)
_HELM_DELETE = {"before-hook-creation": BEFORE_CREATION, "hook-succeeded": SUCCEEDED, "hook-failed": FAILED}

# Helm's install order (pkg/release/util/kind_sorter.go); unknown kinds come after; uninstall reverses it
INSTALL_ORDER = ("Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange", "PodSecurityPolicy",
                 "PodDisruptionBudget", "ServiceAccount", "Secret", "SecretList", "ConfigMap", "StorageClass",
                 "PersistentVolume", "PersistentVolumeClaim", "CustomResourceDefinition", "ClusterRole",
                 "ClusterRoleList", "ClusterRoleBinding", "ClusterRoleBindingList", "Role", "RoleList",
                 "RoleBinding", "RoleBindingList", "Service", "DaemonSet", "Pod", "ReplicationController",
                 "ReplicaSet", "Deployment", "HorizontalPodAutoscaler", "StatefulSet", "Job", "CronJob",
                 "IngressClass", "Ingress", "APIService", "MutatingWebhookConfiguration",
                 "ValidatingWebhookConfiguration")
_RANK = {kind: i for i, kind in enumerate(INSTALL_ORDER)}

# werf.io/* annotations nelm documents (werf.io/docs deploy annotations) that kade does not act on;
# each is warned about by name. Those kade supports are read through Resource.annotation.
UNSUPPORTED_WERF = {
    "ownership": "kade always marks and checks ownership (kade.io/release-name, --adopt)",
    "deploy-on": "only pre-*/post-* values (hooks) are supported",
    "delete-on": "not supported",
    "delete-propagation": "kade deletes in the background (hooks in the foreground)",
    "delete-dependency-": "not supported: kade deletes in reverse install order",
    "sensitive": "not supported: Secret data is always hidden in plans",
    "sensitive-paths": "not supported: Secret data is always hidden in plans",
    "show-logs-only-for-containers": "not supported: use skip-logs-for-containers",
    "show-logs-only-for-number-of-replicas": "not supported",
    "log-regex-for-": "not supported: use log-regex",
    "log-regex-skip": "not supported: use a log-regex that excludes",
    "track-readiness": "not supported",
    "no-final-tracking": "not supported",
}
_EXTERNAL_DEPENDENCY = "external-dependency.werf.io/"
SUPPORTED = frozenset({"weight", "deploy-dependency-", "hook", "resource-policy", "delete-policy",
                       "replicas-on-creation", "fail-mode", "failures-allowed-per-replica", "track-termination-mode",
                       "no-activity-timeout", "show-logs-until", "skip-logs", "skip-logs-for-containers", "log-regex",
                       "show-service-messages", "ignore-readiness-probe-fails-for-", "ready-when", "failed-when",
                       "wait-for-status", "release-name", "release-namespace"})


def _split(value: str) -> set[str]:
    return {part.strip() for part in value.split(",") if part.strip()}


def hook_events(resource: Resource) -> frozenset[str]:
    """The Helm hook events this resource runs at; empty for an ordinary resource."""
    where = f"{resource.source}: {resource.key}"
    kade = resource.annotation("hook")
    if kade is not None:
        events: set[str] = set()
        for name in _split(kade):
            if name in _KADE_ALIASES:
                events |= _KADE_ALIASES[name]
            elif name in HOOK_EVENTS:
                events.add(name)
            else:
                raise RenderError(f"{where}: kade.io/hook must be pre-deploy, post-deploy or one of "
                                  f"{', '.join(sorted(HOOK_EVENTS))}, got {kade!r}")
        return frozenset(events)
    deploy_on = resource.annotation("deploy-on")
    if deploy_on is not None and _split(deploy_on) <= HOOK_EVENTS:
        return frozenset(_split(deploy_on))
    helm = resource.annotations.get("helm.sh/hook")
    if helm is None:
        return frozenset()
    names = _split(helm)
    unknown = names - HOOK_EVENTS - _NEVER_RUN
    if unknown:
        raise RenderError(f"{where}: helm.sh/hook: unknown hook(s) {', '.join(sorted(unknown))}")
    return frozenset(names & HOOK_EVENTS) or frozenset({"never"})


def hook_phase(resource: Resource, operation: str) -> str | None:
    """"pre-deploy" / "post-deploy" when the resource is a hook of this operation, "skip" when it is a
    hook of other operations only, None for an ordinary resource."""
    events = hook_events(resource)
    if not events:
        return None
    if f"pre-{operation}" in events:
        return "pre-deploy"
    if f"post-{operation}" in events:
        return "post-deploy"
    return "skip"


def delete_policies(resource: Resource) -> frozenset[str]:
    where = f"{resource.source}: {resource.key}"
    value = resource.annotation("delete-policy")
    if value is not None:
        names = _split(value)
        bad = names - set(DELETE_POLICIES)
        if bad:
            raise RenderError(f"{where}: delete-policy: unknown {', '.join(sorted(bad))} (use "
                              f"{', '.join(DELETE_POLICIES)})")
        return frozenset(names)
    helm = resource.annotations.get("helm.sh/hook-delete-policy")
    if helm is not None:
        bad = _split(helm) - set(_HELM_DELETE)
        if bad:
            raise RenderError(f"{where}: helm.sh/hook-delete-policy: unknown {', '.join(sorted(bad))}")
        return frozenset(_HELM_DELETE[n] for n in _split(helm))
    if hook_events(resource):
        return frozenset({BEFORE_CREATION})
    if (resource.group, resource.kind) == ("batch", "Job"):
        return frozenset({IF_IMMUTABLE})
    return frozenset()


def kind_rank(kind: str) -> int:
    return _RANK.get(kind, len(INSTALL_ORDER))


def replicas_on_creation(resource: Resource) -> int | None:
    value = resource.annotation("replicas-on-creation")
    if value is None:
        return None
    if not value.strip().isdigit():
        raise RenderError(f"{resource.source}: {resource.key}: replicas-on-creation: expected a whole number, "
                          f"got {value!r}")
    return int(value)


def unsupported_annotations(resource: Resource) -> list[str]:
    """Warnings, one per werf.io/* (or kade.io/*) annotation nelm documents that kade ignores, and per
    werf.io/* annotation nobody documents."""
    out = []
    for key in sorted(resource.annotations):
        if key.endswith(_EXTERNAL_DEPENDENCY + "resource") or key.endswith(_EXTERNAL_DEPENDENCY + "namespace"):
            out.append(f"{resource.key}: {key} is ignored: external dependencies are not supported")
            continue
        for prefix in ("werf.io/", "kade.io/"):
            if not key.startswith(prefix):
                continue
            name = key[len(prefix):]
            if name == "deploy-on" and not _split(resource.annotations[key]) <= HOOK_EVENTS:
                out.append(f"{resource.key}: {key}: {UNSUPPORTED_WERF['deploy-on']}; the resource is deployed "
                           "on every install and upgrade")
                continue
            if name == "deploy-on":
                continue
            known = next((k for k in UNSUPPORTED_WERF if name == k or k.endswith("-") and name.startswith(k)), None)
            if known is not None:
                out.append(f"{resource.key}: {key} is ignored: {UNSUPPORTED_WERF[known]}")
            elif not any(name == k or k.endswith("-") and name.startswith(k) for k in SUPPORTED) \
                    and name not in ("commit", "env"):
                out.append(f"{resource.key}: {key} is not an annotation kade knows: ignored")
    return out
