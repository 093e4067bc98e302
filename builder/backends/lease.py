"""coordination.k8s.io Leases: one per step key and tenant (so concurrent builds run a step once) and
one per build (the owner of the build's pods, so pods of a dead CLI are garbage-collected). The CLI
holds them all; builder pods never call the API.

The decision whether a lease can be taken is a pure function (`lease_state`); the API calls around
it use optimistic concurrency (resourceVersion), so two contenders never both win. A holder renews
its lease in a background thread; when it dies the lease expires after `duration_s` and the next
contender takes it over.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from builder.errors import BuildError
from registry import cancel

STEP_PREFIX = "kade-step-"
BUILD_PREFIX = "kade-build-"


class LeaseError(BuildError):
    pass


@dataclass(frozen=True)
class LeaseView:
    holder: str | None
    renew: datetime | None
    duration_s: int | None


def lease_state(view: LeaseView | None, me: str, now: datetime) -> str:
    """"absent" (create it), "free" (no holder or expired: take it over), "mine", or "held"."""
    if view is None:
        return "absent"
    if not view.holder:
        return "free"
    if view.holder == me:
        return "mine"
    if view.renew is None or view.duration_s is None:
        return "free"
    if view.renew + timedelta(seconds=view.duration_s) <= now:
        return "free"
    return "held"


def step_lease_name(key: str, tenant_digest: str = "") -> str:
    """`kade-step-[<tenant>-]<key>`: one Lease per step key and tenant (builder/tenant.py)."""
    return STEP_PREFIX + (f"{tenant_digest[:12]}-" if tenant_digest else "") + key


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _view(lease: Any) -> LeaseView:
    spec = lease.spec
    return LeaseView(holder=spec.holder_identity if spec else None,
                     renew=(spec.renew_time or spec.acquire_time) if spec else None,
                     duration_s=spec.lease_duration_seconds if spec else None)


class Leases:
    """Take, renew and release Leases in one namespace as `holder`."""

    def __init__(self, api_client: Any, namespace: str, holder: str, duration_s: int = 30,
                 report: Callable[..., None] | None = None, poll_s: float = 1.0):
        from kubernetes import client

        self.api = client.CoordinationV1Api(api_client)
        self.client = client
        self.namespace = namespace
        self.holder = holder
        self.duration_s = duration_s
        self.poll_s = poll_s
        self.report = report or (lambda *a, **k: None)

    def _body(self, name: str, labels: dict[str, str] | None = None, resource_version: str | None = None) -> Any:
        c = self.client
        now = _now()
        return c.V1Lease(metadata=c.V1ObjectMeta(name=name, labels=labels, resource_version=resource_version),
                         spec=c.V1LeaseSpec(holder_identity=self.holder, lease_duration_seconds=self.duration_s,
                                            acquire_time=now, renew_time=now))

    def try_acquire(self, name: str, labels: dict[str, str] | None = None) -> Any | None:
        """The lease object when taken (or already ours), None when someone else holds it."""
        from kubernetes.client.exceptions import ApiException

        try:
            lease = self.api.read_namespaced_lease(name, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise LeaseError(f"cannot read Lease {self.namespace}/{name}: {exc.status} {exc.reason}") from None
            lease = None
        state = lease_state(_view(lease) if lease is not None else None, self.holder, _now())
        try:
            if state == "absent":
                return self.api.create_namespaced_lease(self.namespace, self._body(name, labels))
            if state in ("free", "mine"):
                body = self._body(name, labels or lease.metadata.labels, lease.metadata.resource_version)
                return self.api.replace_namespaced_lease(name, self.namespace, body)
        except ApiException as exc:
            if exc.status == 404 and state == "absent":  # a create meets 404 only without the namespace
                raise LeaseError(f"namespace {self.namespace} does not exist (creating Lease {name} in it): "
                                 f"{_status_message(exc)}", hint="create it (kubectl apply -k k8s-manifests/builder) "
                                 "or pass the builders' namespace with --namespace") from None
            if exc.status in (409, 404):  # somebody else was faster: look again
                return None
            raise LeaseError(f"cannot take Lease {self.namespace}/{name}: {exc.status} {exc.reason}") from None
        return None

    def acquire(self, name: str, what: str, labels: dict[str, str] | None = None,
                cancelled: Callable[[], bool] = lambda: False) -> Any:
        waited = False
        while True:
            lease = self.try_acquire(name, labels)
            if lease is not None:
                return lease
            if not waited:
                self.report("wait", f"{what}: another build holds Lease {name}; waiting")
                waited = True
            if cancelled():
                raise LeaseError(f"cancelled while waiting for Lease {self.namespace}/{name}")
            cancel.sleep(self.poll_s)

    def renew(self, name: str) -> bool:
        """Renew a lease we hold; False when it is not ours any more or the API can't be reached. Never
        raises: the renewer threads keep trying through a short API outage (a restarted API server or
        container runtime) instead of dying, which would let the lease expire under a running build."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            lease = self.api.read_namespaced_lease(name, self.namespace)
            if lease.spec.holder_identity != self.holder:
                return False
            lease.spec.renew_time = _now()
            self.api.replace_namespaced_lease(name, self.namespace, lease)
            return True
        except (ApiException, HTTPError, OSError):
            return False

    def release(self, name: str) -> None:
        """Delete the lease if it is still ours (a waiter then creates it anew)."""
        from kubernetes.client.exceptions import ApiException

        try:
            lease = self.api.read_namespaced_lease(name, self.namespace)
            if lease.spec.holder_identity != self.holder:
                return
            self.api.delete_namespaced_lease(name, self.namespace, body=self.client.V1DeleteOptions(
                preconditions=self.client.V1Preconditions(resource_version=lease.metadata.resource_version)))
        except ApiException:
            pass  # gone already, or taken over after expiry: nothing of ours to release

    @contextmanager
    def held(self, names: list[str], what: str, labels: dict[str, str] | None = None) -> Iterator[None]:
        """Hold every lease of `names` for the block (taken in sorted order, so two holders of
        overlapping sets never wait for each other in a circle), renewed every third of their duration
        by one thread, released at the end."""
        taken: list[str] = []
        stop = threading.Event()

        def renewer() -> None:
            while not stop.wait(max(1.0, self.duration_s / 3)):
                for name in list(taken):
                    self.renew(name)

        t = threading.Thread(target=renewer, name=f"renew-{self.holder}", daemon=True)
        t.start()
        try:
            for name in sorted(set(names)):
                self.acquire(name, what, labels)
                taken.append(name)
            yield
        finally:
            stop.set()
            t.join(timeout=5)
            for name in taken:
                self.release(name)

    def sweep_expired(self, prefix: str, label_selector: str) -> list[str]:
        """Delete expired leases named `prefix...` (their owned objects go with them); returns the names."""
        gone = []
        now = _now()
        for lease in self.api.list_namespaced_lease(self.namespace, label_selector=label_selector).items:
            name = lease.metadata.name
            if name.startswith(prefix) and lease_state(_view(lease), self.holder, now) == "free":
                try:
                    self.api.delete_namespaced_lease(name, self.namespace, propagation_policy="Background")
                    gone.append(name)
                except Exception:  # noqa: BLE001 - racing another sweeper is fine
                    pass
        return gone


def _status_message(exc: Any) -> str:
    """The API server's own message of an ApiException (its Status body), else its reason."""
    import json

    try:
        return str(json.loads(exc.body).get("message") or exc.reason)
    except (TypeError, ValueError, AttributeError):
        return str(exc.reason)
