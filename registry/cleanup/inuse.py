"""Which images the clusters use: Pods, Deployments, ReplicaSets, StatefulSets, DaemonSets, active
Jobs, CronJobs and ReplicationControllers in every namespace of every given kube context.

Images are matched by tag and by digest: `repo:tag`, `repo@sha256:…`, `repo:tag@sha256:…`, and the
digest a Pod actually runs (`status.containerStatuses[].imageID`). Matching is conservative: the
registry host is ignored (pods often reach a registry under another name), a digest protects that
digest in every repository. A context that can't be read is an error, never "nothing in use".
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from registry.cleanup.errors import ClusterScanError
from registry.digest import is_digest
from registry.errors import InvalidReference
from registry.reference import Reference
from registry.transport import CONNECT_TIMEOUT, answer_timeout


@dataclass
class InUse:
    """Tags in use (by repository path, host ignored) and digests in use (anywhere)."""

    tags: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    digests: dict[str, list[str]] = field(default_factory=dict)
    scanned: list[str] = field(default_factory=list)  # contexts scanned

    def add(self, image: str, where: str) -> None:
        """Record that `where` uses `image`; each user is named once per tag or digest (a Pod names a
        digest in its spec and again in its status's imageID)."""
        for kind, key in image_keys(image):
            table: dict[Any, list[str]] = self.tags if kind == "tag" else self.digests  # type: ignore[assignment]
            users = table.setdefault(key, [])
            if where not in users:
                users.append(where)

    def tag_users(self, repository: str, tag: str) -> list[str]:
        return self.tags.get((repo_path(repository), tag), [])

    def digest_users(self, digest: str) -> list[str]:
        return self.digests.get(digest, [])


def repo_path(repository: str) -> str:
    """`host:port/team/app` -> `team/app` (the registry host is ignored when matching)."""
    try:
        return Reference.parse(repository, default_tag=None).repository
    except InvalidReference:
        return repository.split("/", 1)[1] if "/" in repository else repository


def image_keys(image: str) -> list[tuple[str, Any]]:
    """What an image string in a pod spec or status protects: ("tag", (repo path, tag)) / ("digest", d)."""
    s = image.strip()
    for prefix in ("docker-pullable://", "docker://", "containerd://"):
        if s.startswith(prefix):
            s = s[len(prefix):]
    if s.startswith("sha256:"):  # a bare image ID from some runtimes: protect the digest
        return [("digest", s)] if is_digest(s) else []
    try:
        ref = Reference.parse(s)
    except InvalidReference:
        return []
    keys: list[tuple[str, Any]] = []
    if ref.tag:
        keys.append(("tag", (ref.repository, ref.tag)))
    if ref.digest:
        keys.append(("digest", ref.digest))
    return keys


_POD_SPEC_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": ("spec",),
    "Deployment": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "ReplicationController": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}
KINDS = tuple(_POD_SPEC_PATHS)


def _dig(obj: Any, path: Iterable[str]) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def job_finished(job: dict[str, Any]) -> bool:
    """A Job counts while it can still start pods: not Complete/Failed (conditions True)."""
    for c in _dig(job, ("status", "conditions")) or []:
        if isinstance(c, dict) and c.get("type") in ("Complete", "Failed") and c.get("status") == "True":
            return True
    return False


def images_of(kind: str, obj: dict[str, Any]) -> list[str]:
    """Every image an object references (containers, init and ephemeral containers, and for Pods
    the imageID each container actually runs). Finished Jobs reference nothing."""
    if kind == "Job" and job_finished(obj):
        return []
    spec = _dig(obj, _POD_SPEC_PATHS[kind])
    images: list[str] = []
    if isinstance(spec, dict):
        for key in ("initContainers", "containers", "ephemeralContainers"):
            for c in spec.get(key) or []:
                if isinstance(c, dict) and isinstance(c.get("image"), str) and c["image"]:
                    images.append(c["image"])
    if kind == "Pod":
        status = obj.get("status") or {}
        for key in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
            for c in status.get(key) or []:
                if isinstance(c, dict) and isinstance(c.get("imageID"), str) and c["imageID"]:
                    images.append(c["imageID"])
    return images


# --- the scan (thin I/O over the kubernetes client) -------------------------------------------------

_LISTERS: dict[str, tuple[str, str]] = {
    "Pod": ("CoreV1Api", "list_pod_for_all_namespaces"),
    "ReplicationController": ("CoreV1Api", "list_replication_controller_for_all_namespaces"),
    "Deployment": ("AppsV1Api", "list_deployment_for_all_namespaces"),
    "ReplicaSet": ("AppsV1Api", "list_replica_set_for_all_namespaces"),
    "StatefulSet": ("AppsV1Api", "list_stateful_set_for_all_namespaces"),
    "DaemonSet": ("AppsV1Api", "list_daemon_set_for_all_namespaces"),
    "Job": ("BatchV1Api", "list_job_for_all_namespaces"),
    "CronJob": ("BatchV1Api", "list_cron_job_for_all_namespaces"),
}


def _api_client(context: str | None, kubeconfig: str | None) -> Any:
    from kubernetes import client, config
    from urllib3.util.retry import Retry

    label = context or "current context"
    cfg = client.Configuration()
    path = None
    try:
        if context is None and kubeconfig is None and _in_cluster():
            config.load_incluster_config(client_configuration=cfg)
        else:
            # The kubernetes package reads $KUBECONFIG once at import; read it now (it may list several files).
            path = kubeconfig or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
            config.load_kube_config(config_file=path, context=context, client_configuration=cfg,
                                    persist_config=False)
    except Exception as exc:  # noqa: BLE001 - the loader raises plain exceptions, and YAML errors for a bad file
        detail = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise ClusterScanError(
            f"cannot scan the cluster ({label}): no usable kubeconfig{' in ' + path if path else ''} ({detail}); "
            "pass --kubeconfig FILE or set KUBECONFIG (and --kube-context), or pass --without-kube to clean up "
            "without in-use protection") from None
    cfg.retries = Retry(total=2, connect=2, read=0, status=0)  # a read that timed out is not retried: it had its time
    return client.ApiClient(cfg)


def _in_cluster() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and os.path.exists(
        "/var/run/secrets/kubernetes.io/serviceaccount/token")


def _list_all(api: Any, method: str, label: str, kind: str) -> Iterator[dict[str, Any]]:
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError, ReadTimeoutError

    cont: str | None = None
    while True:
        try:
            timeout = (CONNECT_TIMEOUT, answer_timeout())  # to connect, then for one page of the list
            kwargs: dict[str, Any] = {"limit": 500, "_preload_content": False, "_request_timeout": timeout}
            if cont:
                kwargs["_continue"] = cont
            resp = getattr(api, method)(**kwargs)
            doc = json.loads(resp.data)
        except ApiException as exc:
            hint = (" (the service account needs list on this kind in all namespaces: see "
                    "k8s-manifests/cleanup/clusterrole.yaml)" if exc.status in (401, 403) else "")
            raise ClusterScanError(f"cannot list {kind}s in kube context {label}: HTTP {exc.status} "
                                   f"{exc.reason}{hint}; or pass --without-kube") from None
        except (HTTPError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            why = f"no answer within {timeout[1]:g} s" if isinstance(reason, ReadTimeoutError) else str(reason)
            raise ClusterScanError(f"cannot reach kube context {label} to list {kind}s: {why}; check the "
                                   "cluster, or pass --without-kube to skip in-use protection") from None
        yield from doc.get("items") or []
        cont = (doc.get("metadata") or {}).get("continue")
        if not cont:
            return


def scan_clusters(contexts: list[str | None], kubeconfig: str | None = None,
                  report: Callable[..., None] | None = None) -> InUse:
    """Scan each context (None = the current context, or in-cluster config inside a pod)."""
    from kubernetes import client

    in_use = InUse()
    for context in contexts or [None]:
        label = context or "(current)"
        api_client = _api_client(context, kubeconfig)
        apis = {"CoreV1Api": client.CoreV1Api(api_client), "AppsV1Api": client.AppsV1Api(api_client),
                "BatchV1Api": client.BatchV1Api(api_client)}
        count = 0
        for kind, (api_name, method) in _LISTERS.items():
            for obj in _list_all(apis[api_name], method, label, kind):
                meta = obj.get("metadata") or {}
                where = f"{label}/{meta.get('namespace', '')}/{kind}/{meta.get('name', '')}"
                for image in images_of(kind, obj):
                    in_use.add(image, where)
                count += 1
        in_use.scanned.append(label)
        if report:
            report("scan", f"kube context {label}: {count} objects, "
                           f"{len(in_use.tags)} tags and {len(in_use.digests)} digests in use so far")
    return in_use
