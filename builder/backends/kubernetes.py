"""`kade build --backend kubernetes`: plan here, run each stage that needs building in a pod.

The CLI does exactly what the local backend does up to the step lookup (same plan, same keys, same
registry HEADs). Then the remote executor (remote.py) uploads the stage plan and the context files
the missing steps read, and `PodRunner` runs one pod per stage with missing steps, in DAG order,
independent stages at once (--parallel). Each pod runs `kade build-stage` (podstage.py) with the
local executor and pushes the step images; the CLI then loads each stage's final step image and
publishes the final image and build record itself, as the local backend does.

Pods belong to a per-build Lease that the CLI renews: when the command is cancelled (Ctrl-C,
SIGTERM: registry/cancel.py) they are deleted at once and the Lease released; pods left by a CLI
that died are garbage-collected when any later build sweeps the expired Lease (and in any case when
activeDeadlineSeconds passes). The CLI also holds a Lease per step key (and tenant) around each pod,
and hands a pod the `--secret` values over a port-forward: pods never call the Kubernetes API.
"""
from __future__ import annotations

import dataclasses
import json
import secrets
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any, Iterator

from builder import events as ev
from builder.backends import secret_relay
from builder.backends.agent_relay import TUNNEL_KIND, serve_tunnel
from builder.backends.remote import RemoteExecutor
from builder.backends.lease import BUILD_PREFIX, STEP_PREFIX, Leases, step_lease_name
from builder.backends.podspec import (LABEL_BUILD, MANAGED, WEAKER_WITHOUT_USERNS, KubeSettings, dns_label,
                                      place_stage, stage_pod, user_namespace_support)
from builder.backends.podstart import StartProblem, start_problem
from builder.build import Build, ExecutorFactory
from builder.env import BuildEnv
from builder.executor import StageJob
from builder.options import BuildOptions, Report
from builder.publish import BuildResult
from builder.errors import BuildError, StepFailedError
from builder.masking import SecretMask
from builder.plan import PlannedStage
from builder.unpack import limit_env
from common.timeouts import CONNECT_TIMEOUT
from kube.client import ApiUnanswered, api_client
from registry import cancel
from registry.client import RegistryClient

RESULT_KIND = "stage-result"
TIMELINE_KIND = "timeline"   # (builder/backends/podstage.py) points of a pod's start, on its own clock
CONNECT_GRACE = 1.5  # seconds a cancelled build waits for a connection still being made
FAILED_KIND = "stage-failed"
DIAGNOSE_AFTER_S = 1.5  # a pod still pending this long: ask the cluster why (then every DIAGNOSE_EVERY_S)
DIAGNOSE_EVERY_S = 2.0


class PodSecurityRefused(BuildError):
    """The namespace's Pod Security level refused the pod (a user-namespace pod adds SYS_ADMIN)."""


class PodLost(Exception):
    """The pod went away without a verdict (deleted, evicted, node lost): worth another attempt."""


def kube_api_client(settings: KubeSettings) -> Any:
    return api_client(settings.kubeconfig, settings.kube_context)


def parse_pod_line(line: str) -> dict[str, Any] | None:
    """A JSON report record written by the pod, or None for any other line (kept as plain output)."""
    if not line.startswith("{"):
        return None
    try:
        rec = json.loads(line)
    except ValueError:
        return None
    return rec if isinstance(rec, dict) and isinstance(rec.get("kind"), str) else None


class PodRunner:
    """Runs stages as pods (a remote.StageRunner), inside the build's session: its Lease (owner of its
    pods, renewed meanwhile), the step Leases around each pod, and at the end its pods deleted."""

    def __init__(self, env: BuildEnv, settings: KubeSettings, api_client: Any = None):
        self.env, self.o, self.report, self.epoch = env, env.options, env.report, env.epoch
        self.stages_repo = env.stages_repo
        self.k = settings
        self.build_id = secrets.token_hex(5)
        self.pod_env = limit_env()  # the CLI's $KADE_LAYER_MAX_* bound the layers the pods unpack too
        self._given_api = api_client
        self._forward_lock = threading.Lock()
        self._forward_core: Any = None  # the API client of --ssh port-forwards
        self.owner: dict[str, str] | None = None
        self.mask = SecretMask(list(self.o.secrets.values()))  # pod output is masked there and again here
        self._ready: Future = Future()
        self.detected_userns = False  # hostUsers chosen from the nodes (not by --[no-]user-namespaces)
        self.nodes: list[dict[str, Any]] | None = None  # as listed once per build (None: not readable)
        self.nodes_unreadable = ""
        self._stop_renewing = threading.Event()

    # -- lifecycle ---------------------------------------------------------------------------------
    @contextmanager
    def session(self) -> Iterator[None]:
        """The build's Lease (owner of its pods and Secret, renewed meanwhile), its --secret Secret, and
        at the end its pods deleted: around `run()` and around each image of a kade.yaml project.
        The connection is made in the background while the CLI plans (it costs ~1 s: the client's
        imports, a sweep, the Lease); the first pod waits for it."""
        if not self.stages_repo:
            raise BuildError("--backend kubernetes needs --tag or --repo: the pods push step images to the stages repo")
        threading.Thread(target=self._connect_in_background, daemon=True).start()
        try:
            with api_errors(self.k.namespace):
                with cancel.on_cancel(self._on_cancel):
                    yield
                self._connected()  # a broken connection fails the build even when no pod was needed
        finally:
            self._stop_renewing.set()
            self._disconnect()

    def _on_cancel(self) -> None:
        """The command is cancelled: delete the pods now (in a thread of their own: callbacks are to be
        quick), which also ends the log streams the stage threads wait on."""
        if self._ready.done() and self.owner is not None:  # (not connected yet: no pod was made)
            threading.Thread(target=self._delete_pods, name="kade-cancel-pods", daemon=True).start()

    def _connect_in_background(self) -> None:
        try:
            self._connect()
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits for the connection
            self._ready.set_exception(exc)
        else:
            self._ready.set_result(None)

    def _connect(self) -> None:
        from kubernetes import client as kc

        self.api_client = self._given_api or kube_api_client(self.k)
        self.core = kc.CoreV1Api(self.api_client)
        self.leases = Leases(self.api_client, self.k.namespace, f"kade-cli-{self.build_id}", self.k.lease_s,
                             self.report)
        swept = self.leases.sweep_expired(BUILD_PREFIX, "app.kubernetes.io/managed-by=kade")
        self.leases.sweep_expired(STEP_PREFIX, "app.kubernetes.io/managed-by=kade")  # of CLIs that died
        if swept:
            self.report("cleanup", f"removed {len(swept)} build(s) left by a CLI that died, and their pods")
        name = BUILD_PREFIX + self.build_id
        cancel.check()
        lease = self.leases.acquire(name, "build", labels={**MANAGED, LABEL_BUILD: self.build_id})
        if cancel.cancelled():  # cancelled while the Lease was being made: nobody will release it
            self.leases.release(name)
            cancel.check()
        self.owner = {"name": name, "uid": lease.metadata.uid}
        threading.Thread(target=self._renew, args=(name, self._stop_renewing), daemon=True).start()
        self.nodes = self._list_nodes()
        self.detected_userns = self.k.user_namespaces is None
        if self.detected_userns:
            self.k = dataclasses.replace(self.k, user_namespaces=self._nodes_support_userns())

    def _list_nodes(self) -> list[dict[str, Any]] | None:
        """The nodes (their labels: architecture, user namespace support); None when they can't be read."""
        from kubernetes.client.exceptions import ApiException

        try:
            return self.api_client.sanitize_for_serialization(self.core.list_node().items)
        except ApiException as exc:
            self.nodes_unreadable = f"{exc.status} {exc.reason}"
            return None

    def _nodes_support_userns(self) -> bool:
        """`hostUsers: false` wherever the nodes say they support it; else the chroot mode, said aloud."""
        if self.nodes is None:
            self._without_userns(f"the nodes can't be read ({self.nodes_unreadable}: bind the "
                                 "kade-build-nodes ClusterRole, k8s-manifests/builder/role.yaml)")
            return False
        supported, why = user_namespace_support(self.nodes, self.k.node_selector)
        if not supported:
            self._without_userns(why)
        return supported

    def _without_userns(self, why: str) -> None:
        self.report("warning", f"builder pods run without user namespaces: {why}. Weaker: {WEAKER_WITHOUT_USERNS}. "
                               "Pass --user-namespaces to require them, --no-user-namespaces to silence this")

    def _connected(self) -> None:
        self._ready.result()

    def _disconnect(self) -> None:
        """Undo what the connection made (as far as it got): pods, the Lease.
        Cancelled, it waits only a moment for a connection still being made (which then releases its
        own Lease)."""
        try:
            self._ready.result(timeout=CONNECT_GRACE if cancel.cancelled() else None)
        except BaseException:  # noqa: BLE001 - reported by the build already, or about to be
            pass
        if self.owner is None:
            return
        self._delete_pods()
        self.leases.release(self.owner["name"])

    def _renew(self, name: str, stop: threading.Event) -> None:
        while not stop.wait(max(1.0, self.k.lease_s / 3)):
            self.leases.renew(name)

    def _delete_pods(self) -> None:
        try:
            self.core.delete_collection_namespaced_pod(self.k.namespace, label_selector=f"{LABEL_BUILD}={self.build_id}",
                                                       grace_period_seconds=0)
        except Exception as exc:  # noqa: BLE001 - best effort; the build Lease's GC is the fallback
            self.report("warning", f"could not delete the build's pods in {self.k.namespace}: {exc}")

    # -- one pod -----------------------------------------------------------------------------------
    def run(self, job: StageJob, plan_digest: str) -> int:
        """The stage's pod, with this build holding the Lease of each step key the pod will run: a
        concurrent build needing one of them waits, then finds it pushed. Returns the steps it ran."""
        ps = job.stage
        self._connected()
        keys = [step_lease_name(s.key, self.env.tenant.digest) for s in job.steps]
        holder = Leases(self.api_client, self.k.namespace, f"kade-cli-{self.build_id}-{dns_label(ps.label, 40)}",
                        self.k.lease_s, self.report)
        with holder.held(keys, f"[{self.o.image_name}/{ps.label}]", labels={**MANAGED, LABEL_BUILD: self.build_id}):
            # --no-cache runs every step again, whatever another build pushed (the Lease still keeps two
            # builds of one key from running at once)
            if not self.o.no_cache and self.env.find_step(ps.final_key) is not None:
                for step in job.steps:
                    self.report(ev.REUSED, f"{ev.step_message(ps, step)} (pushed meanwhile by another build)",
                                **ev.step_fields(self.o.image_name, ps, step))
                return 0
            return self._run_pod(ps, plan_digest)

    def _run_pod(self, ps: PlannedStage, plan_digest: str) -> int:
        for attempt in range(1, self.k.attempts + 1):
            cancel.check()
            name = self._create_stage_pod(ps, attempt, plan_digest)
            try:
                self.report("pod", f"[{self.o.image_name}/{ps.label}] {self.k.namespace}/{name} started")
                started = time.monotonic()
                result = self._follow(ps, name)
                self.report("pod", f"[{self.o.image_name}/{ps.label}] {name} done in "
                                   f"{time.monotonic() - started:.1f}s")
                return int(result.get("built", 0))
            except PodLost as lost:
                cancel.check()
                if attempt == self.k.attempts:
                    raise BuildError(f"stage {ps.label}: pod {self.k.namespace}/{name} was lost ({lost}) "
                                     f"{attempt} times", hint="check the cluster's events and node health") from None
                self.report("retry", f"[{self.o.image_name}/{ps.label}] pod {name} was lost ({lost}); "
                                     f"attempt {attempt + 1} of {self.k.attempts}")
            finally:
                self._delete_pod(name)
        raise BuildError(f"stage {ps.label}: no pod attempts allowed (attempts = {self.k.attempts})")

    def _create_stage_pod(self, ps: PlannedStage, attempt: int, plan_digest: str) -> str:
        """Create the stage's pod; returns its name. A user-namespace pod that the namespace's Pod Security
        level refuses, where user namespaces were only detected, gives way to a chroot-mode pod."""
        placement = place_stage(ps.label, ps.platform, self.nodes or [], self.k.node_selector, self.k.allow_emulation)
        if placement.emulated and attempt == 1:
            self.report("warning", f"[{self.o.image_name}/{ps.label}] no {ps.platform} node: its RUN steps run under "
                                   f"emulation on a {placement.arch} node (--allow-emulation)")
        while True:
            manifest = stage_pod(self.k, build_id=self.build_id, owner=self.owner, image_name=self.o.image_name,
                                 stage=ps.label, plan_digest=plan_digest, stages_repo=self.stages_repo or "",
                                 insecure=tuple(self.o.insecure), epoch=self.epoch, attempt=attempt,
                                 secrets_relay=bool(self.o.secrets), ssh_relay=bool(self.o.ssh),
                                 extra_env=self.pod_env, placement=placement)
            try:
                self._create(manifest)
                return manifest["metadata"]["name"]
            except PodSecurityRefused as exc:
                if not (self.detected_userns and self.k.user_namespaces):
                    raise
                self._without_userns(f"namespace {self.k.namespace} refuses their pods ({exc.detail}); its "
                                     "pod-security.kubernetes.io/enforce label must be privileged for them")
                self.k = dataclasses.replace(self.k, user_namespaces=False)

    def _create(self, manifest: dict[str, Any]) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self.core.create_namespaced_pod(self.k.namespace, manifest)
        except ApiException as exc:
            detail = exc.body if isinstance(exc.body, str) else exc.reason
            if exc.status == 403 and "PodSecurity" in str(detail):
                reason = str(detail)
                try:
                    reason = json.loads(reason).get("message", reason)
                except ValueError:
                    pass
                raise PodSecurityRefused(f"cannot create pod {self.k.namespace}/{manifest['metadata']['name']}: "
                                         f"{reason}", hint="user-namespace pods need the namespace's "
                                         "pod-security.kubernetes.io/enforce label at privileged "
                                         "(or build with --no-user-namespaces)") from None
            raise BuildError(f"cannot create pod {self.k.namespace}/{manifest['metadata']['name']}: "
                             f"{exc.status} {detail}", hint="check the namespace, ServiceAccount and RBAC "
                             "(k8s-manifests/builder)") from None

    def _delete_pod(self, name: str) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self.core.delete_namespaced_pod(name, self.k.namespace, grace_period_seconds=0)
        except ApiException:
            pass

    def _read(self, name: str) -> Any | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.core.read_namespaced_pod(name, self.k.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def _wait_started(self, ps: PlannedStage, name: str) -> None:
        """Until the pod runs. While it is pending, the cluster is asked why (events, the cache PVC):
        a reason waiting can't cure fails the build at once, another is said once and waited out."""
        started = time.monotonic()
        deadline, next_look = started + self.k.start_timeout_s, started + DIAGNOSE_AFTER_S
        where = f"stage {ps.label}: pod {self.k.namespace}/{name}"
        said: StartProblem | None = None
        while True:
            cancel.check()
            pod = self._read(name)
            if pod is None:
                raise PodLost("deleted before it started")
            if pod.status and pod.status.phase in ("Running", "Succeeded", "Failed"):
                return
            now = time.monotonic()
            if now >= next_look or (pod.status and pod.status.container_statuses):
                next_look = now + DIAGNOSE_EVERY_S
                problem = self._start_problem(pod)
                if problem is not None and problem.fatal:
                    raise BuildError(f"{where} cannot start: {problem.message}", hint=problem.hint)
                if problem is not None and problem != said:
                    self.report("warning", f"{where} is not running yet: {problem.message} ({problem.hint})")
                said = problem or said
            if now > deadline:
                why = f": {said.message}" if said else ""
                raise BuildError(f"{where} did not start within {self.k.start_timeout_s}s{why}",
                                 hint=said.hint if said else f"kubectl -n {self.k.namespace} describe pod {name}")
            cancel.sleep(0.3)

    def _start_problem(self, pod: Any) -> StartProblem | None:
        """What the cluster says about a pending pod (what the identity may read of it)."""
        from kubernetes.client.exceptions import ApiException

        ns = self.k.namespace
        names = {pod.metadata.name} | ({self.k.cache_pvc} if self.k.cache_pvc else set())
        try:
            events = [e for n in sorted(names)
                      for e in self.core.list_namespaced_event(ns, field_selector=f"involvedObject.name={n}").items]
        except ApiException:
            events = []   # no right to list events: the pod's own status still tells a lot
        serialize = self.api_client.sanitize_for_serialization
        pvc = None   # missing
        if self.k.cache_pvc:
            try:
                pvc = serialize(self.core.read_namespaced_persistent_volume_claim(self.k.cache_pvc, ns))
            except ApiException as exc:
                if exc.status != 404:
                    pvc = {"status": {"phase": "Bound"}}   # not ours to read: don't guess it is the problem
        return start_problem(serialize(pod), serialize(events), self.k.cache_pvc, pvc, self.k.image)

    def _follow(self, ps: PlannedStage, name: str) -> dict[str, Any]:
        """Stream the pod's output (prefixed with image/stage) until it ends; return its result record."""
        self._wait_started(ps, name)
        prefix = f"[{self.o.image_name}/{ps.label}]"
        result: dict[str, Any] | None = None
        failure: dict[str, Any] | None = None
        tail: deque[str] = deque(maxlen=20)
        timeline: dict[str, float] = {}   # the pod's own clock: process started, ..., first step
        try:
            # the log may stay silent as long as the pod may run: read timeout = its deadline
            stream = self.core.read_namespaced_pod_log(name, self.k.namespace, follow=True, _preload_content=False,
                                                       _request_timeout=(CONNECT_TIMEOUT, self.k.deadline_s))
            pending = b""
            for chunk in stream.stream(amt=65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    line = raw.decode(errors="replace")
                    rec = parse_pod_line(line)
                    if rec is None:
                        line = self.mask.mask(line)
                        tail.append(line)
                        self.report("output", f"{prefix} {line}")
                    elif rec["kind"] == RESULT_KIND:
                        result = rec
                    elif rec["kind"] == FAILED_KIND:
                        failure = rec
                    elif rec["kind"] == TUNNEL_KIND and self.o.ssh:
                        threading.Thread(target=self._ssh_tunnel, args=(name, rec), daemon=True).start()
                    elif rec["kind"] == secret_relay.REQUEST_KIND and self.o.secrets:
                        threading.Thread(target=self._send_secrets, args=(name, rec), daemon=True).start()
                    elif rec.get("untrusted") and rec.get("key") in self.env.store.distrusted:
                        continue   # the pod looked the step up again: said once, here
                    elif rec["kind"] == TIMELINE_KIND:
                        timeline[str(rec.get("message"))] = float(rec.get("at") or 0)
                        if rec.get("message") == "first step":
                            self.report("pod", f"{prefix} {startup_line(timeline)}", timeline=dict(timeline))
                    else:
                        fields = {k: v for k, v in rec.items() if k not in ("kind", "message", "time")}
                        message = self.mask.mask(str(rec.get("message", "")))
                        if rec["kind"] == "output":
                            tail.append(message)
                        self.report(rec["kind"], f"{prefix} {message}", **fields)
        except Exception as exc:  # noqa: BLE001 - a broken log stream is judged by the pod's status below
            cancel.check()
            self.report("warning", f"{prefix} log stream of {name} ended: {exc}")
        return self._verdict(ps, name, result, failure, list(tail))

    def _pod_socket(self, pod: str, port: int) -> Any:
        """A socket to `port` on the pod's loopback, through a port-forward."""
        from kubernetes.client import CoreV1Api
        from kubernetes.stream import portforward

        # a client of its own (made once per build): `portforward` swaps its ApiClient's request
        # method while it connects, which other threads' calls must not meet
        with self._forward_lock:
            if self._forward_core is None:
                self._forward_core = CoreV1Api(kube_api_client(self.k))
            forward = portforward(self._forward_core.connect_get_namespaced_pod_portforward, pod,
                                  self.k.namespace, ports=str(port))
        sock = forward.socket(port)
        sock.setblocking(True)
        return sock

    def _ssh_tunnel(self, pod: str, rec: dict[str, Any]) -> None:
        """One agent connection of a RUN in `pod`: a port-forward to the pod's relay, spliced to --ssh."""
        try:
            serve_tunnel(lambda port: self._pod_socket(pod, port), rec, self.o.ssh or "")
        except Exception as exc:  # noqa: BLE001 - the RUN sees a closed agent; say why here
            self.report("warning", f"ssh agent tunnel to {pod} failed: {exc}")

    def _send_secrets(self, pod: str, rec: dict[str, Any]) -> None:
        """The build's --secret values to `pod`, through a port-forward (secret_relay.py)."""
        try:
            secret_relay.send(lambda port: self._pod_socket(pod, port), rec, self.o.secrets)
        except Exception as exc:  # noqa: BLE001 - the pod fails, saying the values did not arrive; say why here
            self.report("warning", f"could not hand the --secret values to {pod}: {exc}")

    def _verdict(self, ps: PlannedStage, name: str, result: dict[str, Any] | None, failure: dict[str, Any] | None,
                 tail: list[str]) -> dict[str, Any]:
        if result is not None and failure is None:
            # The pod's last words, after every push: its log stream carries them, and RUN output only
            # ever inside `output` records, so nothing else can write one. The kubelet reports the
            # phase a second or two later; the stage needn't wait for that.
            return result
        deadline = time.monotonic() + 30
        while True:
            pod = self._read(name)
            if pod is None:
                raise PodLost("deleted while it ran")
            phase = pod.status.phase if pod.status else None
            if phase in ("Succeeded", "Failed"):
                break
            if time.monotonic() > deadline:
                raise PodLost(f"its log ended but it is still {phase}")
            cancel.sleep(0.3)
        if phase == "Succeeded" and result is not None:
            return result
        where = f"pod {self.k.namespace}/{name}"
        if failure is not None:
            raise failure_error(where, ps.label, failure, tail)
        reason = (pod.status.reason or "") if pod.status else ""
        code = _exit_code(pod)
        if reason == "Evicted" or code in (137, 143) or code is None:
            raise PodLost(f"{phase} {reason or ''} exit {code}".strip())
        raise BuildError(f"{where}: stage {ps.label} ended {phase} (exit {code}) without a result",
                         hint="last output:\n" + "\n".join(tail))


def startup_line(timeline: dict[str, float]) -> str:
    """How long a pod took from its process start (the pod just turned Running) to its first step, and
    where the time went: each point's offset from the start."""
    start = timeline.get("process started")
    if start is None or "first step" not in timeline:
        return "first step started"
    points = ", ".join(f"{name} +{at - start:.2f}s" for name, at in sorted(timeline.items(), key=lambda kv: kv[1])
                       if name not in ("process started", "first step"))
    return f"first step {timeline['first step'] - start:.2f}s after the pod started ({points})"


def failure_error(where: str, stage: str, failure: dict[str, Any], tail: list[str]) -> BuildError:
    """The error for a pod's `stage-failed` record. The record carries the message without the
    Dockerfile position (file and line come as fields) and its hint apart, so the position shows once."""
    step = failure.get("step") or "?"
    code = failure.get("exit_code")
    file, line = failure.get("file"), failure.get("line")
    if code is not None:
        return StepFailedError(f"{where}: step {step} failed with exit code {code}", exit_code=int(code),
                               output_tail=list(failure.get("output_tail") or tail), file=file, line=line)
    return BuildError(f"{where}: stage {stage} failed: {failure.get('message')}", file=file, line=line,
                      hint=failure.get("hint"))


def _exit_code(pod: Any) -> int | None:
    for cs in (pod.status.container_statuses or []) if pod.status else []:
        t = cs.state.terminated if cs.state else None
        if t is not None:
            return t.exit_code
    return None


def pod_executor(settings: KubeSettings, api_client: Any = None) -> ExecutorFactory:
    """The executor factory of `--backend kubernetes` (a build, or each image of a kade.yaml project)."""

    def make(env: BuildEnv) -> RemoteExecutor:
        runner = PodRunner(env, settings, api_client)
        return RemoteExecutor(env, runner, session=runner.session)

    make.settings = settings  # type: ignore[attr-defined]  # (read by the CLI: the builder image of attestations)
    return make


def build(options: BuildOptions, settings: KubeSettings, report: Report,
          client: RegistryClient | None = None, api_client: Any = None) -> BuildResult:
    return Build(options, report, client, pod_executor(settings, api_client)).run()


@contextmanager
def api_errors(namespace: str) -> Iterator[None]:
    """The API client's own errors as a BuildError (an unanswered request says which already). The
    client's module is looked up, not imported: a background thread may be importing it (a second
    importer could deadlock), and if it is not loaded no error of its can have been raised."""
    from urllib3.exceptions import HTTPError

    try:
        yield
    except ApiUnanswered:
        raise
    except Exception as exc:
        loaded = sys.modules.get("kubernetes.client.exceptions")
        api_exception = getattr(loaded, "ApiException", None)
        if not isinstance(exc, HTTPError) and not (api_exception and isinstance(exc, api_exception)):
            raise
        detail = f"{exc.status} {exc.reason}" if not isinstance(exc, HTTPError) else _short(exc)
        raise BuildError(f"Kubernetes API error in namespace {namespace}: {detail}",
                         hint="check the kubeconfig/context, that the cluster is up, and the RBAC of "
                              "k8s-manifests/builder") from None


def _short(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or exc
    text = " ".join(str(reason).split())
    return f"{type(exc).__name__}: {text[:300]}"
