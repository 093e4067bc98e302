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
from deployer.lifecycle import (DELETE, FAILED as DELETE_IF_FAILED, INSTALL, ROLLBACK, SUCCEEDED, UPGRADE,
                                delete_policies, hook_events, kind_rank, unsupported_annotations)
from deployer.logs import LogFollowers
from deployer.options import track_options
from deployer.order import Plan, Stage, only_pre_deploy_hooks, plan_stages
from deployer.ownership import mark, owned, owner_of, takeover_refusal
from deployer.release import (DEFAULT_HISTORY, DEPLOYED, FAILED, PENDING, SUPERSEDED, ReleaseLock,
                              ReleaseRecord, ReleaseStore)
from deployer.resources import ApiResource, Resource, ResourceKey
from deployer.summary import Failure, format_failure
from deployer.tracker import DEFAULT_SETTLE, Target, Tracker, TrackResult
from deployer.apply import ApplyRefused
from deployer.errors import ConflictError
from deployer.fields import LEGACY_MANAGERS
from deployer.lifecycle import BEFORE_CREATION, IF_IMMUTABLE, replicas_on_creation
from deployer.plan import Change, PlanResult, SavedPlan, digest as plan_digest, fingerprint, shown, stale as plan_stale
from deployer.upsert import put

Report = Callable[..., None]
KEEP_POLICIES = ("keep",)
RECORD_GRACE = 60.0  # seconds past --timeout for recording the outcome and removing what a failure created


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
    adopt: bool = False  # take over existing objects that belong to no release, to Helm or another release
    delete_crds: bool = False  # prune/uninstall may delete CustomResourceDefinitions (and so every object of them)
    delete_namespaces: bool = False  # prune/uninstall may delete Namespaces (and so everything in them)


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




def validate_release_name(name: str) -> None:
    import re

    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?", name or ""):
        raise DeployError(f"invalid release name {name!r}: use 1-40 lowercase letters, digits and '-', "
                          "starting and ending with a letter or digit")


class Deployer:
    def __init__(self, kube: Kube, report: Report):
        self.kube, self.report = kube, report
        if kube.report is None:
            kube.report = report  # retries of transient API errors are shown

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
        """Install or upgrade (a rollback when `rollback_of` names the revision whose manifests these are)."""
        validate_release_name(opts.release)
        start = time.monotonic()
        self.kube.limit(opts.timeout)
        resources = self.prepare(resources, opts.namespace)
        for r in resources:
            mark(r.body, opts.release, opts.namespace)
            check_annotations(r, opts)
            for warning in unsupported_annotations(r):
                self.report("warning", warning, resource=str(r.key))
        self._ensure_namespace(opts.namespace)
        store = ReleaseStore(self.kube, opts.namespace, opts.release)
        with ReleaseLock(self.kube, opts.namespace, opts.release, wait=opts.timeout, report=self.report) as lock:
            history = self._history(store)
            previous = _last_deployed(history)
            operation = ROLLBACK if rollback_of is not None else (UPGRADE if previous else INSTALL)
            plan = plan_stages(resources, operation)
            for r, why in plan.skipped:
                self.report("info", f"skipping {r.key}: {why}")
            self._check_ownership(plan, previous, opts)
            revision = store.next_revision(history)
            record = ReleaseRecord(opts.release, opts.namespace, revision, PENDING, [r.body for r in resources],
                                   description or "deploying", values=opts.values, images=opts.images,
                                   rollback_of=rollback_of)
            store.save(record)
            self.report("release", f"release {opts.release} revision {revision} in namespace {opts.namespace}: "
                                   f"{operation}" + (f" (previous: revision {previous.revision})" if previous
                                                     else " (first release)"),
                        release=opts.release, revision=revision, operation=operation)
            progress = Progress()
            failures = self._run(plan, start + opts.timeout, opts, progress)
            self.kube.extend(RECORD_GRACE)  # the outcome is recorded (and a failure undone) even past the timeout
            created = progress.created
            if lock.lost:
                failures = failures or [Failure(f"release {opts.release}", "LeaseLost", lock.lost)]
            if not failures:
                self._prune(previous, resources, opts)
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

    def _history(self, store: ReleaseStore) -> list[ReleaseRecord]:
        """The release's records; drops the parts of records a dead deploy left incomplete, and marks
        the records of deploys that died while pending as failed (the caller holds the lock)."""
        history = store.history()
        for revision in store.incomplete:
            self.report("warning", f"release {store.name} revision {revision}: its record is incomplete (a deploy "
                                   "died while writing it); removing what is left of it", revision=revision)
            store.delete_revision(revision)
        for stale in [h for h in history if h.status == PENDING]:
            stale.status, stale.description = FAILED, "interrupted: its deploy stopped before finishing"
            store.save(stale)
        return history

    def _check_ownership(self, plan: Plan, previous: ReleaseRecord | None, opts: DeployOptions) -> None:
        """Refuse, before anything is applied, to take over objects of no release, of Helm or of another
        release, unless --adopt."""
        recorded = _keys(previous) if previous else set()
        refusals = []
        for stage in plan.stages:
            for r in stage.resources:
                try:
                    api = self._api(r)
                except DeployError:
                    continue  # its kind comes from a CRD of this release: nothing of it exists yet
                live = applier.get_live(self.kube, api, r.namespace, r.name)
                if live is None:
                    continue
                why = takeover_refusal(live, opts.release, opts.namespace, r.key in recorded, str(r.key))
                if why is None:
                    continue
                if opts.adopt:
                    self.report("info", f"adopting {r.key} (it belonged to {owner_of(live)})", resource=str(r.key))
                else:
                    refusals.append(why)
        if refusals:
            more = f" (and {len(refusals) - 1} more)" if len(refusals) > 1 else ""
            raise DeployError("\n".join(refusals[:10]) + more)

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
        finished: list[tuple[Target, Resource]] = []  # tracked in this hook phase (or stage)
        for index, stage in enumerate(plan.stages, start=1):
            names = ", ".join(r.key.short for r in stage.resources)
            self.report("stage", f"[{index}/{total}] {stage.name}: {names}", stage=stage.name)
            progress.stages.append(stage)
            targets: list[Target] = []
            by_key: dict[ResourceKey, Resource] = {}
            try:
                for r in stage.resources:
                    api = self._api(r)
                    live = applier.get_live(self.kube, api, r.namespace, r.name)
                    done = put(self.kube, r, api, live, force=opts.force_conflicts, report=self.report,
                               wait=max(deadline - time.monotonic(), 1))
                    applied = done.applied
                    if applied.created and not done.recreated:
                        progress.created.append((r.key, api))
                    verb = "recreated" if done.recreated else "created" if applied.created else "applied"
                    self.report("apply", f"{verb} {r.key}", resource=str(r.key))
                    targets.append(Target(r.key, api, track_options(r, opts.no_activity_timeout), applied.obj))
                    by_key[r.key] = r
            except DeployError as exc:
                return [Failure(str(r.key), "ApplyFailed", str(exc))]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return [Failure(names, "Timeout", "the deploy timeout was used up before this stage")]
            result = Tracker(self.kube, self.report, targets, remaining, settle=opts.settle, logs=logs).run()
            progress.ignored += result.ignored
            finished += [(t, by_key[t.key]) for t in result.targets]
            next_hook = plan.stages[index].hook if index < total else "end"
            if not result.ok or next_hook != stage.hook:
                self._delete_after(finished, all_succeeded=result.ok)  # at the end of a hook phase, as Helm
                finished = []
            if not result.ok:
                return result.failures
        return []

    def _delete_after(self, finished: list[tuple[Target, Resource]], all_succeeded: bool) -> None:
        """delete-policy succeeded / failed (Helm's hook-succeeded / hook-failed), once tracked: the
        succeeded ones only when everything of their phase succeeded (a later hook may need them)."""
        for t, resource in finished:
            policies = delete_policies(resource)
            if (all_succeeded and t.verdict == "ready" and SUCCEEDED in policies) or \
                    (t.verdict == "failed" and DELETE_IF_FAILED in policies):
                if applier.delete(self.kube, t.api, t.key.namespace, t.key.name):
                    self.report("delete", f"deleted {t.key} (delete-policy {SUCCEEDED if t.verdict == 'ready' else DELETE_IF_FAILED})",
                                resource=str(t.key))

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
        self.kube.limit(opts.timeout)
        for r in resources:
            mark(r.body, opts.release, opts.namespace)
        try:
            resources = self.prepare(resources, opts.namespace)
            failures = self._run(plan_stages(resources, ROLLBACK), time.monotonic() + opts.timeout, opts, Progress())
        except DeployError as exc:
            failures = [Failure(f"release {opts.release}", "RollbackFailed", str(exc))]
        self.kube.extend(RECORD_GRACE)
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

    def _prune(self, previous: ReleaseRecord | None, current: list[Resource], opts: DeployOptions) -> None:
        if previous is None:
            return
        for r, action in _prune_actions(previous, current, opts):
            if action == "keep":
                self.report("info", f"keeping {r.key}: {keep_reason(r, opts)}")
                continue
            self._delete_owned(r, opts, "pruned {key} (no longer in the manifests)")

    def _delete_owned(self, r: Resource, opts: DeployOptions, done: str) -> bool:
        """Delete a resource of this release's record if the live object is still this release's."""
        try:
            api = self._api(r)
        except DeployError:
            return False  # its kind is gone (CRD removed): nothing left to delete
        live = applier.get_live(self.kube, api, r.namespace, r.name)
        if live is None:
            return False
        if not owned(live, opts.release, opts.namespace, recorded=True):
            self.report("warning", f"not deleting {r.key}: it now belongs to {owner_of(live)}", resource=str(r.key))
            return False
        if applier.delete(self.kube, api, r.namespace, r.name):
            self.report("delete", done.format(key=r.key), resource=str(r.key))
            return True
        return False

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

    def plan(self, resources: list[Resource], opts: DeployOptions) -> PlanResult:
        """What a deploy of `resources` would do, read from the cluster and dry-run applies."""
        validate_release_name(opts.release)
        self.kube.limit(opts.timeout)
        resources = self.prepare(resources, opts.namespace)
        for r in resources:
            mark(r.body, opts.release, opts.namespace)
        exists: dict[str, bool] = {}

        def missing_namespace(name: str) -> bool:
            if name and name not in exists:
                exists[name] = self.kube.get(f"/api/v1/namespaces/{name}") is not None
            return bool(name) and not exists[name]

        previous = None
        if not missing_namespace(opts.namespace):
            previous = _last_deployed(ReleaseStore(self.kube, opts.namespace, opts.release).history())
        recorded = {Resource(m).key: m for m in previous.manifests} if previous else {}
        result = PlanResult([], opts.release, opts.namespace, plan_digest(resources))
        operation = UPGRADE if previous else INSTALL
        stages = plan_stages(resources, operation).stages
        for r in [r for stage in stages if not stage.hook for r in stage.resources]:
            try:
                api = self._api(r)
            except DeployError:
                result.changes.append(Change("create", r.key, body=shown(r.body),
                                             note="its kind comes from a CRD this release creates"))
                continue
            if missing_namespace(r.namespace):
                result.changes.append(Change("create", r.key, body=shown(r.body),
                                             note=f"namespace {r.namespace} does not exist yet"))
                continue
            live = applier.get_live(self.kube, api, r.namespace, r.name)
            result.versions[str(r.key)] = fingerprint(live)
            result.changes.append(self._plan_one(r, api, live, recorded.get(r.key), opts))
        hooks = {r.key: (r, stage.hook) for stage in stages if stage.hook for r in stage.resources}
        for r, _hook in hooks.values():
            events = sorted(e for e in hook_events(r) if e.endswith(operation))
            result.changes.append(Change("hook", r.key, body=shown(r.body), note=f"runs at {', '.join(events)}"))
        for r, action in (_prune_actions(previous, resources, opts) if previous else []):
            if action == "keep":
                result.changes.append(Change("keep", r.key, note=keep_reason(r, opts)))
                continue
            try:
                live = applier.get_live(self.kube, self._api(r), r.namespace, r.name)
            except DeployError:
                continue
            if live is not None and owned(live, opts.release, opts.namespace, recorded=True):
                result.versions[str(r.key)] = fingerprint(live)
                result.changes.append(Change("delete", r.key, body=shown(live), note="no longer in the manifests"))
        return result

    def _plan_one(self, r: Resource, api: ApiResource, live: dict[str, Any] | None,
                  recorded: dict[str, Any] | None, opts: DeployOptions) -> Change:
        note = ""
        if live is not None:
            refusal = takeover_refusal(live, opts.release, opts.namespace, recorded is not None, str(r.key))
            if refusal and not opts.adopt:
                return Change("refused", r.key, note=refusal)
            note = f"adopted from {owner_of(live)}" if refusal else ""
        drift = ""
        if recorded is not None and live is not None:
            try:
                was = self._dry_run(Resource(recorded, r.source), api, live, True)
                drift = applier.diff(was, live, r.key.short)
            except DeployError:
                drift = ""
        policies = delete_policies(r)
        if live is not None and BEFORE_CREATION in policies:
            return Change("recreate", r.key, body=shown(r.body), note=f"delete-policy {BEFORE_CREATION}")
        try:
            planned = self._dry_run(r, api, live, opts.force_conflicts)
        except ApplyRefused as exc:
            if IF_IMMUTABLE in policies:
                return Change("recreate", r.key, body=shown(r.body),
                              note=f"a field that cannot change in place changed ({exc.cause}); "
                                   f"delete-policy {IF_IMMUTABLE}")
            return Change("invalid", r.key, drift=drift, note=str(exc))
        except DeployError as exc:
            return Change("invalid", r.key, drift=drift, note=str(exc))
        if live is None:
            return Change("create", r.key, body=shown(planned), note=note)
        d = applier.diff(live, planned, r.key.short)
        return Change("update" if d else "unchanged", r.key, d, drift=drift, note=note)

    def _dry_run(self, r: Resource, api: ApiResource, live: dict[str, Any] | None, force: bool) -> dict[str, Any]:
        """The object a deploy would make of `r`; conflicts with legacy field managers (which a deploy
        folds into kade's) and over spec.replicas (which a deploy takes back) are no obstacle."""
        try:
            return put(self.kube, r, api, live, force=force, report=lambda *a, **k: None, wait=1,
                       dry_run=True).applied.obj
        except ConflictError as exc:
            if all(manager in LEGACY_MANAGERS or field == ".spec.replicas" for field, manager in exc.fields):
                return put(self.kube, r, api, live, force=True, report=lambda *a, **k: None, wait=1,
                           dry_run=True).applied.obj
            raise

    def check_plan(self, saved: SavedPlan, resources: list[Resource], opts: DeployOptions) -> None:
        """Refuse to deploy when a saved plan no longer describes what this deploy would do."""
        prepared = self.prepare(resources, opts.namespace)
        for r in prepared:
            mark(r.body, opts.release, opts.namespace)
        versions: dict[str, str | None] = {}
        for r in prepared:
            try:
                live = applier.get_live(self.kube, self._api(r), r.namespace, r.name)
            except DeployError:
                live = None
            versions[str(r.key)] = fingerprint(live)
        problems = plan_stale(saved, opts.release, opts.namespace, plan_digest(prepared), versions)
        if problems:
            raise DeployError(f"--use-plan {saved.path}: the plan is out of date: " + "; ".join(problems)
                              + ". Make a new plan (kade plan --save-plan) and approve it again")

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

    def uninstall(self, opts: DeployOptions) -> list[ResourceKey]:
        """Run the pre-delete hooks, delete what the release owns (never CRDs or Namespaces unless asked,
        never resource-policy keep), run the post-delete hooks, delete the history."""
        validate_release_name(opts.release)
        self.kube.limit(opts.timeout)
        store = ReleaseStore(self.kube, opts.namespace, opts.release)
        with ReleaseLock(self.kube, opts.namespace, opts.release, wait=opts.timeout, report=self.report):
            history = self._history(store)
            if not history:
                raise DeployError(f"release {opts.release} not found in namespace {opts.namespace}")
            latest = _last_deployed(history) or history[-1]
            resources = self.prepare([Resource(m, f"release {opts.release} revision {latest.revision}")
                                      for m in latest.manifests if _kind_known(self.kube, m)], opts.namespace)
            hooks = plan_stages(resources, DELETE)
            deadline = time.monotonic() + opts.timeout
            pre = Plan([s for s in hooks.stages if s.hook == "pre-deploy"])
            failures = self._run(pre, deadline, opts, Progress())
            if failures:
                for failure in failures:
                    self.report("summary", format_failure(failure), failure=failure.to_dict())
                raise DeployError(f"release {opts.release}: a pre-delete hook failed, nothing was deleted: "
                                  f"{failures[0].headline()}")
            removed: list[ResourceKey] = []
            plain = [r for r in resources if not hook_events(r)]
            for r in sorted(plain, key=lambda r: kind_rank(r.kind), reverse=True):
                why = keep_reason(r, opts)
                if why:
                    self.report("info", f"keeping {r.key}: {why}")
                elif self._delete_owned(r, opts, "deleted {key}"):
                    removed.append(r.key)
            self.kube.extend(RECORD_GRACE)
            post = Plan([s for s in hooks.stages if s.hook == "post-deploy"])
            failures = self._run(post, time.monotonic() + max(deadline - time.monotonic(), 30), opts, Progress())
            for failure in failures:
                self.report("summary", format_failure(failure), failure=failure.to_dict())
            store.delete_all()
            if failures:
                raise DeployError(f"release {opts.release} uninstalled, but a post-delete hook failed: "
                                  f"{failures[0].headline()}")
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


def check_annotations(r: Resource, opts: DeployOptions) -> None:
    """Read every lifecycle and tracking annotation once, so that a bad value fails before anything
    is applied (naming the file, the resource and the annotation)."""
    hook_events(r)
    delete_policies(r)
    replicas_on_creation(r)
    track_options(r, opts.no_activity_timeout)


def keep_reason(r: Resource, opts: DeployOptions) -> str:
    """Why prune and uninstall leave this resource alone ("" when they may delete it)."""
    policy = r.annotation("resource-policy") or r.annotations.get("helm.sh/resource-policy")
    if policy in KEEP_POLICIES:
        return "resource-policy keep"
    if (r.group, r.kind) == ("apiextensions.k8s.io", "CustomResourceDefinition") and not opts.delete_crds:
        return "a CRD is kept (deleting it deletes every object of its kind); --delete-crds deletes it"
    if (r.group, r.kind) == ("", "Namespace") and not opts.delete_namespaces:
        return "a Namespace is kept (deleting it deletes everything in it); --delete-namespaces deletes it"
    return ""


def _prune_actions(previous: ReleaseRecord, current: list[Resource],
                   opts: DeployOptions | None = None) -> list[tuple[Resource, str]]:
    """What the previous revision had and this one has not: (resource, "keep" | "delete"), last applied
    first; hooks are not pruned (like Helm, they are not part of the release's objects)."""
    opts = opts or DeployOptions(previous.name, previous.namespace)
    keys = {r.key for r in current}
    candidates = [Resource(m, f"release revision {previous.revision}") for m in previous.manifests]
    out = []
    for r in sorted(reversed(candidates), key=lambda r: kind_rank(r.kind), reverse=True):
        if r.key in keys or hook_events(r):
            continue
        out.append((r, "keep" if keep_reason(r, opts) else "delete"))
    return out


def _kind_known(kube: Kube, manifest: dict[str, Any]) -> bool:
    try:
        kube.resource_for(str(manifest.get("apiVersion", "")), str(manifest.get("kind", "")))
        return True
    except DeployError:
        return False


def _crd_scopes(resources: list[Resource]) -> dict[tuple[str, str], str]:
    scopes = {}
    for r in resources:
        if r.kind == "CustomResourceDefinition" and r.group == "apiextensions.k8s.io":
            spec = r.body.get("spec") or {}
            names = spec.get("names") or {}
            if spec.get("group") and names.get("kind"):
                scopes[(spec["group"], names["kind"])] = spec.get("scope", "Namespaced")
    return scopes
