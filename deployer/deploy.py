"""The deploy flow: plan -> apply stage by stage -> track -> prune -> record, with atomic rollback.

Also the other release verbs: plan (a diff), rollback, history, uninstall, and tracking of existing
resources. Progress goes to a `report(kind, message, **fields)` callable; nothing here prints.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from deployer import apply as applier
from deployer.errors import DeployError
from deployer.kube import Kube, KubeError
from deployer.logs import LogFollowers
from deployer.options import track_options
from deployer.order import Plan, Stage, hook_of, only_pre_deploy_hooks, plan_stages
from deployer.release import (DEFAULT_HISTORY, DEPLOYED, FAILED, PENDING, SUPERSEDED, ReleaseLock,
                              ReleaseRecord, ReleaseStore)
from deployer.resources import ApiResource, Resource, ResourceKey
from deployer.summary import Failure, format_failure
from deployer.tracker import DEFAULT_SETTLE, Target, Tracker, TrackResult

Report = Callable[..., None]
KEEP_POLICIES = ("keep",)


@dataclass
class DeployOptions:
    release: str
    namespace: str = "default"
    timeout: float = 300.0
    atomic: bool = True
    force_conflicts: bool = False
    history_max: int = DEFAULT_HISTORY
    no_activity_timeout: float = 240.0
    settle: float = DEFAULT_SETTLE
    values: dict[str, Any] = field(default_factory=dict)
    images: dict[str, str] = field(default_factory=dict)


@dataclass
class Outcome:
    ok: bool
    release: str
    revision: int
    message: str
    failures: list[Failure] = field(default_factory=list)
    rolled_back_to: int | None = None
    removed_created: bool = False
    elapsed: float = 0.0
    api_requests: int = 0
    ignored: list[Failure] = field(default_factory=list)  # failed, but fail-mode IgnoreAndContinueDeployProcess

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "release": self.release, "revision": self.revision, "message": self.message,
                "rolled_back_to": self.rolled_back_to, "removed_created": self.removed_created,
                "elapsed": round(self.elapsed, 3), "api_requests": self.api_requests,
                "failures": [f.to_dict() for f in self.failures], "ignored": [f.to_dict() for f in self.ignored]}


@dataclass
class Progress:
    """What one run over the stages did: resources it created, stages it started, failures it ignored."""
    created: list[tuple[ResourceKey, ApiResource]] = field(default_factory=list)
    stages: list[Stage] = field(default_factory=list)
    ignored: list[Failure] = field(default_factory=list)


@dataclass
class Change:
    action: str  # create | update | delete | keep | unchanged
    key: ResourceKey
    diff: str = ""


def validate_release_name(name: str) -> None:
    import re

    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?", name or ""):
        raise DeployError(f"invalid release name {name!r}: use 1-40 lowercase letters, digits and '-', "
                          "starting and ending with a letter or digit")


class Deployer:
    def __init__(self, kube: Kube, report: Report):
        self.kube, self.report = kube, report

    # ---- resolving kinds and namespaces -------------------------------------------------------

    def prepare(self, resources: list[Resource], namespace: str) -> list[Resource]:
        """Copy the resources with the default namespace set on namespaced kinds (and dropped from
        cluster-scoped ones); kinds defined by a CRD of the same release are resolved from it."""
        crd_scopes = _crd_scopes(resources)
        out = []
        for r in resources:
            r = r.copy()
            scope = crd_scopes.get((r.group, r.kind))
            if scope is None:
                try:
                    namespaced = self.kube.resource_for(r.api_version, r.kind).namespaced
                except DeployError as exc:
                    raise DeployError(f"{r.source}: {r.key}: {exc}") from None
            else:
                namespaced = scope == "Namespaced"
            if namespaced:
                r.namespace = r.namespace or namespace
            else:
                r.namespace = ""
            out.append(r)
        return out

    def _api(self, r: Resource) -> ApiResource:
        return self.kube.resource_for(r.api_version, r.kind)

    # ---- deploy --------------------------------------------------------------------------------

    def deploy(self, resources: list[Resource], opts: DeployOptions, *, description: str = "",
               rollback_of: int | None = None) -> Outcome:
        validate_release_name(opts.release)
        start = time.monotonic()
        resources = self.prepare(resources, opts.namespace)
        plan = plan_stages(resources)
        for r, why in plan.skipped:
            self.report("info", f"skipping {r.key}: {why}")
        self._ensure_namespace(opts.namespace)
        store = ReleaseStore(self.kube, opts.namespace, opts.release)
        with ReleaseLock(self.kube, opts.namespace, opts.release) as lock:
            history = store.history()
            for stale in [h for h in history if h.status == PENDING]:
                stale.status, stale.description = FAILED, "interrupted: its deploy stopped before finishing"
                store.save(stale)
            previous = _last_deployed(history)
            revision = max((h.revision for h in history), default=0) + 1
            record = ReleaseRecord(opts.release, opts.namespace, revision, PENDING,
                                   [r.body for r in resources if hook_of(r) != "skip"],
                                   description or "deploying", values=opts.values, images=opts.images,
                                   rollback_of=rollback_of)
            store.save(record)
            self.report("release", f"release {opts.release} revision {revision} in namespace {opts.namespace}"
                                   + (f" (previous: revision {previous.revision})" if previous else " (first release)"),
                        release=opts.release, revision=revision)
            progress = Progress()
            failures = self._run(plan, start + opts.timeout, opts, progress)
            created = progress.created
            if lock.lost:
                failures = failures or [Failure(f"release {opts.release}", "LeaseLost", lock.lost)]
            if not failures:
                self._prune(previous, resources)
                record.status, record.description = DEPLOYED, description or "deployed"
                store.save(record)
                if previous is not None:
                    previous.status = SUPERSEDED
                    store.save(previous)
                store.prune_history(opts.history_max)
                elapsed = time.monotonic() - start
                self.report("done", f"release {opts.release} revision {revision} deployed in {elapsed:.1f}s",
                            release=opts.release, revision=revision, elapsed=round(elapsed, 3))
                message = f"release {opts.release} revision {revision} deployed"
                if progress.ignored:
                    message += (f" ({len(progress.ignored)} failing resource(s) ignored by fail-mode "
                                f"IgnoreAndContinueDeployProcess: {', '.join(f.resource for f in progress.ignored)})")
                return Outcome(True, opts.release, revision, message, elapsed=elapsed,
                               api_requests=self.kube.request_count, ignored=progress.ignored)
            verdict_elapsed = time.monotonic() - start
            record.status = FAILED
            record.description = failures[0].headline()[:1000]
            store.save(record)
            outcome = Outcome(False, opts.release, revision, "", failures, elapsed=verdict_elapsed,
                              ignored=progress.ignored)
            for failure in failures:
                self.report("summary", format_failure(failure), failure=failure.to_dict())
            if not opts.atomic:
                outcome.message = (f"release {opts.release} revision {revision} failed; not rolled back (--no-atomic): "
                                   f"{failures[0].headline()}")
            elif previous is not None and only_pre_deploy_hooks(progress.stages):
                self._remove_created([(k, api) for k, api in created if k not in _keys(previous)])
                outcome.message = (f"release {opts.release} revision {revision} failed in its pre-deploy hooks, before "
                                   f"anything else was applied; revision {previous.revision} stays deployed, untouched "
                                   f"(no rollback needed): {failures[0].headline()}")
            elif previous is None:
                self._remove_created(created)
                outcome.removed_created = True
                outcome.message = (f"release {opts.release} revision {revision} failed and, as there is no earlier deployed "
                                   f"revision (first release), what it created was removed: {failures[0].headline()}")
            else:
                outcome.rolled_back_to = previous.revision
                outcome.message = self._atomic_rollback(store, previous, record, created, opts, failures[0])
            store.prune_history(opts.history_max)
            outcome.api_requests = self.kube.request_count
            return outcome

    def _run(self, plan: Plan, deadline: float, opts: DeployOptions, progress: Progress) -> list[Failure]:
        """Apply and track stage by stage; `progress` collects what was done."""
        logs = LogFollowers(self.kube)  # one for all stages: logs shown until EndOfDeploy outlive their stage
        try:
            return self._run_stages(plan, deadline, opts, progress, logs)
        finally:
            logs.close()

    def _run_stages(self, plan: Plan, deadline: float, opts: DeployOptions, progress: Progress,
                    logs: LogFollowers) -> list[Failure]:
        total = len(plan.stages)
        for index, stage in enumerate(plan.stages, start=1):
            names = ", ".join(r.key.short for r in stage.resources)
            self.report("stage", f"[{index}/{total}] {stage.name}: {names}", stage=stage.name)
            progress.stages.append(stage)
            targets: list[Target] = []
            try:
                for r in stage.resources:
                    api = self._api(r)
                    if stage.hook:
                        applier.delete_and_wait(self.kube, api, r.namespace, r.name, max(deadline - time.monotonic(), 1))
                    applied = applier.apply(self.kube, r, api, force=opts.force_conflicts)
                    if applied.created:
                        progress.created.append((r.key, api))
                    self.report("apply", f"{'created' if applied.created else 'applied'} {r.key}", resource=str(r.key))
                    targets.append(Target(r.key, api, track_options(r, opts.no_activity_timeout), applied.obj))
            except DeployError as exc:
                return [Failure(str(r.key), "ApplyFailed", str(exc))]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return [Failure(names, "Timeout", "the deploy timeout was used up before this stage")]
            result = Tracker(self.kube, self.report, targets, remaining, settle=opts.settle, logs=logs).run()
            progress.ignored += result.ignored
            if not result.ok:
                return result.failures
        return []

    def _atomic_rollback(self, store: ReleaseStore, previous: ReleaseRecord, failed: ReleaseRecord,
                         created: list[tuple[ResourceKey, ApiResource]], opts: DeployOptions, cause: Failure) -> str:
        revision = failed.revision + 1
        self.report("rollback", f"rolling back release {opts.release} to revision {previous.revision} "
                                f"(as revision {revision})", release=opts.release, revision=revision)
        resources = [Resource(m, f"release {opts.release} revision {previous.revision}") for m in previous.manifests]
        record = ReleaseRecord(opts.release, opts.namespace, revision, PENDING, previous.manifests,
                               f"rollback to {previous.revision} after revision {failed.revision} failed",
                               values=previous.values, images=previous.images, rollback_of=previous.revision)
        store.save(record)
        try:
            failures = self._run(plan_stages(resources), time.monotonic() + opts.timeout, opts, Progress())
        except DeployError as exc:
            failures = [Failure(f"release {opts.release}", "RollbackFailed", str(exc))]
        keys = {r.key for r in resources}
        self._remove_created([(k, api) for k, api in created if k not in keys])
        head = f"release {opts.release} revision {failed.revision} failed: {cause.headline()}"
        if failures:
            record.status, record.description = FAILED, f"rollback to {previous.revision} failed: {failures[0].headline()}"[:1000]
            store.save(record)
            for failure in failures:
                self.report("summary", format_failure(failure), failure=failure.to_dict())
            return f"{head}; rolling back to revision {previous.revision} ALSO failed: {failures[0].headline()}"
        record.status = DEPLOYED
        store.save(record)
        previous.status = SUPERSEDED
        store.save(previous)
        return f"{head}; rolled back to revision {previous.revision} (now revision {revision})"

    def _remove_created(self, created: list[tuple[ResourceKey, ApiResource]]) -> None:
        for key, api in reversed(created):
            self.report("delete", f"removing {key}", resource=str(key))
            applier.delete(self.kube, api, key.namespace, key.name)

    def _prune(self, previous: ReleaseRecord | None, current: list[Resource]) -> None:
        if previous is None:
            return
        for r, action in _prune_actions(previous, current):
            if action == "keep":
                self.report("info", f"keeping {r.key}: resource-policy keep")
                continue
            try:
                api = self._api(r)
            except DeployError:
                continue  # its kind is gone (CRD removed): nothing left to delete
            if applier.delete(self.kube, api, r.namespace, r.name):
                self.report("delete", f"pruned {r.key} (no longer in the manifests)", resource=str(r.key))

    def _ensure_namespace(self, namespace: str) -> None:
        if self.kube.get(f"/api/v1/namespaces/{namespace}") is not None:
            return
        try:
            self.kube.request("POST", "/api/v1/namespaces",
                              body={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
            self.report("apply", f"created namespace {namespace} for the release")
        except KubeError as exc:
            if exc.status != 409:
                raise DeployError(f"cannot create the release namespace {namespace}: {exc}") from None

    # ---- plan ----------------------------------------------------------------------------------

    def plan(self, resources: list[Resource], opts: DeployOptions) -> list[Change]:
        validate_release_name(opts.release)
        resources = self.prepare(resources, opts.namespace)
        plan = plan_stages(resources)
        namespace_exists: dict[str, bool] = {}

        def missing_namespace(name: str) -> bool:
            if name and name not in namespace_exists:
                namespace_exists[name] = self.kube.get(f"/api/v1/namespaces/{name}") is not None
            return bool(name) and not namespace_exists[name]

        changes: list[Change] = []
        for stage in plan.stages:
            for r in stage.resources:
                try:
                    api = self._api(r)
                except DeployError:
                    changes.append(Change("create", r.key, "(its kind comes from a CRD this release creates)\n"))
                    continue
                if missing_namespace(r.namespace):
                    changes.append(Change("create", r.key, f"(namespace {r.namespace} does not exist yet)\n"))
                    continue
                live = applier.get_live(self.kube, api, r.namespace, r.name)
                planned = applier.apply(self.kube, r, api, dry_run=True, force=opts.force_conflicts).obj
                if live is None:
                    changes.append(Change("create", r.key, applier.diff(None, planned, r.key.short)))
                else:
                    d = applier.diff(live, planned, r.key.short)
                    changes.append(Change("update" if d else "unchanged", r.key, d))
        if not missing_namespace(opts.namespace):
            previous = _last_deployed(ReleaseStore(self.kube, opts.namespace, opts.release).history())
            if previous is not None:
                for r, action in _prune_actions(previous, resources):
                    changes.append(Change(action, r.key))
        return changes

    # ---- rollback, history, uninstall ----------------------------------------------------------

    def history(self, release: str, namespace: str) -> list[ReleaseRecord]:
        validate_release_name(release)
        return ReleaseStore(self.kube, namespace, release).history()

    def rollback(self, opts: DeployOptions, revision: int | None) -> Outcome:
        history = self.history(opts.release, opts.namespace)
        if not history:
            raise DeployError(f"release {opts.release} has no history in namespace {opts.namespace} "
                              "(check --namespace; `kade history` lists revisions)")
        current = _last_deployed(history)
        if revision is None:
            older = [h for h in history if h.status in (DEPLOYED, SUPERSEDED)
                     and (current is None or h.revision < current.revision)]
            if not older:
                raise DeployError(f"release {opts.release} has no earlier deployed revision to roll back to; "
                                  "pass --revision N (see `kade history`)")
            target = older[-1]
        else:
            matches = [h for h in history if h.revision == revision]
            if not matches:
                known = ", ".join(str(h.revision) for h in history)
                raise DeployError(f"release {opts.release} has no revision {revision} (known: {known})")
            target = matches[0]
        resources = [Resource(m, f"release {opts.release} revision {target.revision}") for m in target.manifests]
        opts.values, opts.images = target.values, target.images
        return self.deploy(resources, opts, description=f"rollback to {target.revision}", rollback_of=target.revision)

    def uninstall(self, release: str, namespace: str) -> list[ResourceKey]:
        validate_release_name(release)
        store = ReleaseStore(self.kube, namespace, release)
        with ReleaseLock(self.kube, namespace, release):
            history = store.history()
            if not history:
                raise DeployError(f"release {release} not found in namespace {namespace}")
            latest = _last_deployed(history) or history[-1]
            resources = [Resource(m, f"release {release} revision {latest.revision}") for m in latest.manifests]
            removed: list[ResourceKey] = []
            for r in reversed(resources):
                if (r.annotation("resource-policy") or r.annotations.get("helm.sh/resource-policy")) in KEEP_POLICIES:
                    self.report("info", f"keeping {r.key}: resource-policy keep")
                    continue
                try:
                    api = self._api(r)
                except DeployError:
                    continue
                if applier.delete(self.kube, api, r.namespace, r.name):
                    removed.append(r.key)
                    self.report("delete", f"deleted {r.key}", resource=str(r.key))
            store.delete_all()
        return removed

    def track(self, targets: list[Target], timeout: float) -> TrackResult:
        result = Tracker(self.kube, self.report, targets, timeout).run()
        for failure in result.failures:
            self.report("summary", format_failure(failure), failure=failure.to_dict())
        return result


def _last_deployed(history: list[ReleaseRecord]) -> ReleaseRecord | None:
    deployed = [h for h in history if h.status == DEPLOYED]
    return deployed[-1] if deployed else None


def _keys(record: ReleaseRecord) -> set[ResourceKey]:
    return {Resource(m, f"release revision {record.revision}").key for m in record.manifests}


def _prune_actions(previous: ReleaseRecord, current: list[Resource]) -> list[tuple[Resource, str]]:
    keys = {r.key for r in current}
    out = []
    for manifest in reversed(previous.manifests):
        r = Resource(manifest, f"release revision {previous.revision}")
        if r.key in keys:
            continue
        policy = r.annotation("resource-policy") or r.annotations.get("helm.sh/resource-policy")
        out.append((r, "keep" if policy in KEEP_POLICIES else "delete"))
    return out


def _crd_scopes(resources: list[Resource]) -> dict[tuple[str, str], str]:
    scopes = {}
    for r in resources:
        if r.kind == "CustomResourceDefinition" and r.group == "apiextensions.k8s.io":
            spec = r.body.get("spec") or {}
            names = spec.get("names") or {}
            if spec.get("group") and names.get("kind"):
                scopes[(spec["group"], names["kind"])] = spec.get("scope", "Namespaced")
    return scopes
