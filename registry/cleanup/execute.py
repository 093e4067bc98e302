"""Carry out a plan, safely while builds push.

- Only what the plan says to delete, only in the repositories the plan was made for (anything else
  is refused before the first request), and only if it is still as planned: each tag's digest is
  re-checked (HEAD) right before its deletion; a tag that moved is skipped.
- The stages repository is re-listed at the start and at most every `recheck_interval` seconds: a
  build record the plan did not see protects every tag, digest and step image it names; a tag that
  appeared in a repository since the plan protects its digest.
- A tag that moves onto a digest planned for deletion protects it: every other tag the plan saw in
  that repository is re-checked (HEAD) at the start and again before each batch of deletions by
  digest, at most every max(`recheck_interval`, 4 x the time the last re-check took): the re-check
  costs at most a fifth of the run, however many tags the repository keeps.
- A digest is deleted by digest only when every one of its tags is planned to go; otherwise each tag
  goes alone (`Repository.delete_tag`, which never touches other tags of the digest). A kept tag whose
  digest the plan never read (a step image kept by name) and that the re-check finds on a digest
  planned for deletion makes that digest's tags go alone too.
- Order: final images, then step images, then what follows them (attestations and signatures), then
  build records; a crash half-way leaves records that still explain what remains, so the next run
  finishes the job (and a follower left behind by a deleted subject is an orphan it deletes). A
  follower whose subject's deletion was skipped or failed is skipped: it stays with its subject. An
  untagged artifact is read before it goes: it is deleted only if its own `subject` is the one the
  plan found it under (what a referrers index lists is not trusted).

What can't be closed on a registry without conditional deletes: a build that pushes a tag onto a
digest in the instant between the last re-check and the DELETE. The window is one request long for
tags, at most `recheck_interval` for new build records, and one re-check interval for tags moved
onto a digest that is deleted whole.
"""
from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Literal

from registry import cancel
from registry.cleanup.errors import CleanupError
from registry.cleanup.plan import Plan, PlanItem
from registry.cleanup.snapshot import canonical_repo
from registry.errors import InvalidManifest, NotFound, RegistryError, Unsupported
from registry.model import parse_manifest
from registry.records import is_record_tag, read_record

Status = Literal["deleted", "skipped", "failed"]
Progress = Callable[[int, int], None]
_ORDER = {"image": 0, "other": 0, "step": 1, "attestation": 2, "signature": 2, "record": 3, "report": 3}
_FOLLOWERS = ("attestation", "signature")


@dataclass(frozen=True)
class Outcome:
    item: PlanItem
    status: Status
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {**self.item.to_dict(), "status": self.status, "detail": self.detail}


class Guard:
    """What builds pushed since the plan: tags and digests that must not be deleted any more."""

    def __init__(self, client: Any, plan: Plan, recheck_interval: float) -> None:
        self.client = client
        self.plan = plan
        self.interval = recheck_interval
        self.known_records = set(plan.record_tags)
        self.known_tags: dict[str, set[str]] = defaultdict(set)
        for item in plan.items:
            self.known_tags[item.repository].add(item.tag)
        self.protected_tags: dict[tuple[str, str], str] = {}
        self.protected_digests: dict[tuple[str, str], str] = {}
        self.doomed = {(i.repository, i.digest) for i in plan.deletions if i.method == "manifest"}
        self.deleted: set[tuple[str, str]] = set()  # (repository, tag) this run removed
        # doomed digest -> a kept tag whose digest the plan never read and that points to it: the
        # digest stays, its planned tags go one by one (what the plan would have said had it read it)
        self.shared: dict[tuple[str, str], str] = {}
        self._last = 0.0
        self._last_moves = 0.0
        self._moves_took = 0.0
        self._lock = threading.Lock()

    def _repo(self, name: str) -> Any:
        return self.client.repository(name)

    def start(self) -> None:
        """Re-check the tags of repositories where a digest is deleted as a whole, then refresh."""
        self.recheck_moves()
        self.refresh()

    def recheck_moves(self) -> None:
        """HEAD every tag the plan saw in repositories with digests to delete (those this run has not
        removed): one that now points at such a digest, other than as planned, protects it."""
        start = time.monotonic()
        repos = {r for r, _ in self.doomed}
        items = [i for i in self.plan.items if i.repository in repos and (i.repository, i.tag) not in self.deleted]
        with cancel.Pool(max_workers=8) as pool:
            descs = list(pool.map(lambda i: self._repo(i.repository).head_manifest(i.tag), items))
        for item, desc in zip(items, descs):
            if desc is None or desc.digest == item.digest or (item.repository, desc.digest) not in self.doomed:
                continue
            if item.digest is None and item.action == "keep":
                self.shared.setdefault((item.repository, desc.digest), item.tag)
            else:
                self.protected_digests.setdefault((item.repository, desc.digest), f"tag {item.tag} now points to it")
        self._last_moves = time.monotonic()
        self._moves_took = self._last_moves - start

    def maybe_refresh(self, deleting_digests: bool = True) -> None:
        if time.monotonic() - self._last >= self.interval:
            self.refresh()
        if deleting_digests and time.monotonic() - self._last_moves >= max(self.interval, 4 * self._moves_took):
            self.recheck_moves()

    def refresh(self) -> None:
        with self._lock:
            self._last = time.monotonic()
            stages = self._repo(self.plan.stages_repo)
            for tag in _tags(stages):
                if is_record_tag(tag) and tag not in self.known_records:
                    self.known_records.add(tag)
                    try:
                        _, record = read_record(stages, tag)
                    except NotFound:
                        continue
                    why = f"named by build record {tag}, pushed after the plan"
                    for img in record.images:
                        repo = canonical_repo(img.repository)
                        self.protected_digests[(repo, img.digest)] = why
                        for t in img.tags:
                            self.protected_tags[(repo, t)] = why
                        for step in img.steps:
                            self.protected_tags[(self.plan.stages_repo, step)] = why
            for repo_name in {i.repository for i in self.plan.deletions if i.method == "manifest"}:
                repo = self._repo(repo_name)
                for tag in _tags(repo):
                    if tag not in self.known_tags[repo_name]:
                        self.known_tags[repo_name].add(tag)
                        desc = repo.head_manifest(tag)
                        if desc is not None:
                            self.protected_digests[(repo_name, desc.digest)] = f"tag {tag} appeared after the plan"

    def why_protected(self, item: PlanItem) -> str | None:
        by_digest = self.protected_digests.get((item.repository, item.digest)) if item.digest is not None else None
        return self.protected_tags.get((item.repository, item.tag)) or by_digest


def _tags(repo: Any) -> list[str]:
    try:
        return list(repo.list_tags())
    except NotFound:
        return []


def _check(repo: Any, item: PlanItem) -> str | None:
    """None when the tag still points where the plan saw it, else why it is skipped."""
    if item.untagged:
        return _check_artifact(repo, item)
    desc = repo.head_manifest(item.tag)
    if desc is None:
        return "already gone"
    if desc.digest != item.digest:
        return f"moved to {desc.digest[:19]} since the plan"
    return None


def _check_artifact(repo: Any, item: PlanItem) -> str | None:
    """None when the untagged artifact still exists and names the subject it was listed under."""
    try:
        body, got = repo.get_manifest(item.tag)
        subject = parse_manifest(body, got.media_type).subject
    except NotFound:
        return "already gone"
    except InvalidManifest as exc:
        return f"can't be read: {exc}"
    if subject is None or subject.digest != item.subject:
        return f"its subject is {subject.digest[:19] if subject else 'not set'}, not {(item.subject or '')[:19]} " \
               "that listed it: left alone"
    return None


def _delete_tag(client: Any, guard: Guard, item: PlanItem, note: str = "") -> Outcome:
    why = guard.why_protected(item)
    if why:
        return Outcome(item, "skipped", why)
    repo = client.repository(item.repository)
    try:
        moved = _check(repo, item)
        if moved:
            return Outcome(item, "skipped", moved)
        how = repo.delete_tag(item.tag)
        guard.deleted.add((item.repository, item.tag))
        return Outcome(item, "deleted", f"{note}tag removed ({how})")
    except NotFound:
        return Outcome(item, "skipped", "already gone")
    except Unsupported:
        raise  # deletion disabled: every other delete would fail the same way
    except RegistryError as exc:
        return Outcome(item, "failed", str(exc))


def _delete_digest(client: Any, guard: Guard, items: list[PlanItem]) -> list[Outcome]:
    repo = client.repository(items[0].repository)
    digest = items[0].digest
    why = guard.why_protected(items[0])
    protected_tags = [i for i in items if guard.protected_tags.get((i.repository, i.tag))]
    if why or protected_tags:
        return [Outcome(i, "skipped", why or guard.why_protected(protected_tags[0]) or "") for i in items]
    kept = guard.shared.get((items[0].repository, digest)) if digest is not None else None
    if kept:
        return [_delete_tag(client, guard, i, f"kept tag {kept} has the same digest: ") for i in items]
    out: list[Outcome] = []
    still: list[PlanItem] = []
    try:
        for item in items:
            moved = _check(repo, item)
            if moved:
                out.append(Outcome(item, "skipped", moved))
            else:
                still.append(item)
        if still:
            repo.delete_manifest(digest)
        guard.deleted.update((i.repository, i.tag) for i in still)
        gone = _delete_children(repo, items[0].children) if still else ""
        out.extend(Outcome(i, "deleted", "manifest deleted by digest" + gone) for i in still)
    except NotFound:
        out.extend(Outcome(i, "skipped", "already gone") for i in still)
    except Unsupported:
        raise  # deletion disabled: every other delete would fail the same way
    except RegistryError as exc:
        out.extend(Outcome(i, "failed", str(exc)) for i in still)
    return out


def _delete_children(repo: Any, children: tuple[str, ...]) -> str:
    """The platforms' manifests of an index just deleted (after it: the index never names a missing one)."""
    deleted, failed = 0, []
    for child in children:
        try:
            repo.delete_manifest(child)
            deleted += 1
        except NotFound:
            pass
        except RegistryError as exc:
            failed.append(f"{child[:19]}: {exc}")
    if not children:
        return ""
    return f", with {deleted} platform manifest(s) of the index" + (f" ({'; '.join(failed)} not deleted)" if failed else "")


def execute(client: Any, plan: Plan, progress: Progress | None = None, workers: int = 4,
            recheck_interval: float = 2.0, batch: int = 16) -> list[Outcome]:
    """Delete what the plan says, in order (images, steps, records); return one outcome per item."""
    outside = sorted({i.repository for i in plan.deletions} - plan.repositories)
    if outside:
        raise CleanupError(f"refusing to carry out a plan that deletes in {', '.join(outside)}, outside the "
                           f"repositories it was made for ({', '.join(sorted(plan.repositories))})")
    unread = [f"{i.repository}:{i.tag}" for i in plan.deletions if i.digest is None]
    if unread:
        raise CleanupError(f"the plan deletes tags whose digest it never read ({', '.join(unread[:3])}...): "
                           "make it with registry.cleanup.run.plan_cleanup")
    guard = Guard(client, plan, recheck_interval)
    guard.start()
    units: list[tuple[int, list[PlanItem]]] = []  # (order, items deleted together)
    by_digest: dict[tuple[str, str | None], list[PlanItem]] = defaultdict(list)
    for item in plan.deletions:
        if item.method == "manifest":
            by_digest[(item.repository, item.digest)].append(item)
        else:
            units.append((_ORDER[item.kind], [item]))
    units.extend((min(_ORDER[i.kind] for i in items), items) for items in by_digest.values())
    units.sort(key=lambda u: (u[0], u[1][0].repository, u[1][0].tag))
    total = sum(len(items) for _, items in units)
    outcomes: list[Outcome] = []
    held: dict[tuple[str, str | None], str] = {}
    parents = {(i.repository, i.digest): i.subject for i in plan.deletions if i.kind in _FOLLOWERS}

    def run(items: list[PlanItem]) -> list[Outcome]:
        kept = _held(items[0], held, parents) if items[0].kind in _FOLLOWERS else None
        if kept:
            return [Outcome(i, "skipped", kept) for i in items]
        if len(items) == 1 and items[0].method == "tag":
            return [_delete_tag(client, guard, items[0])]
        return _delete_digest(client, guard, items)

    with cancel.Pool(max_workers=max(1, workers)) as pool:
        for phase in sorted({order for order, _ in units}):  # one phase after the other
            todo = [items for order, items in units if order == phase]
            held = _not_deleted(outcomes)
            for start in range(0, len(todo), batch):
                guard.maybe_refresh(any(len(u) > 1 or u[0].method == "manifest" for u in todo[start:start + batch]))
                for result in pool.map(run, todo[start:start + batch]):
                    outcomes.extend(result)
                if progress:
                    progress(len(outcomes), total)
    return outcomes


def _not_deleted(outcomes: list[Outcome]) -> dict[tuple[str, str | None], str]:
    """(repository, digest) -> why: the digests this run was to delete whole but did not."""
    return {(o.item.repository, o.item.digest): o.detail for o in outcomes
            if o.item.method == "manifest" and o.status != "deleted" and o.detail != "already gone"}


def _held(item: PlanItem, held: dict[tuple[str, str | None], str],
          parents: dict[tuple[str, str | None], str | None]) -> str | None:
    """Why a follower stays: its subject, or the subject of that (a signature of an SBOM), was to be
    deleted whole in an earlier phase and was not."""
    subject = item.subject
    for _ in range(len(parents) + 1):  # (a listed cycle ends)
        why = held.get((item.repository, subject))
        if why:
            return f"its subject {(subject or '')[:19]} was not deleted ({why})"
        if (item.repository, subject) not in parents:
            return None
        subject = parents[(item.repository, subject)]
    return None
