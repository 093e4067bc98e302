"""Read what a cluster tells the cleanup (thin I/O over the kubernetes client): the images its
workloads use (`inuse.py` decides), its Helm release histories (`helm.py` decodes), its identity, and
through `release_sources` any other release history (kade's own records, read by the CLI through
`deployer.release`: this package knows nothing of that format).

Lists go page by page (Secrets and ConfigMaps in small pages: a Helm release is up to 1 MiB) in every
namespace, or only in the namespaces given. A kind that can't be listed is an error naming the RBAC
file, never "nothing there"; a release that can't be decoded is a *problem* of the scan, which
blocks deletion in the plan (its images are unknown) and names the object to fix.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

from registry.cleanup.errors import ClusterScanError
from registry.cleanup.helm import NAME_PREFIX, OWNER_SELECTOR, SECRET_TYPE, HelmReleaseError, decode_release
from registry.cleanup.inuse import KINDS, InUse, images_of
from registry.cleanup.releases import LOCAL, ReleaseRevision
from common.timeouts import CONNECT_TIMEOUT, answer_timeout
from common import jsonsafe

Report = Callable[..., None]

# kind -> (API class, resource in the client's method names, page size)
_KINDS: dict[str, tuple[str, str, int]] = {
    "Pod": ("CoreV1Api", "pod", 500),
    "ReplicationController": ("CoreV1Api", "replication_controller", 500),
    "Deployment": ("AppsV1Api", "deployment", 500),
    "ReplicaSet": ("AppsV1Api", "replica_set", 500),
    "StatefulSet": ("AppsV1Api", "stateful_set", 500),
    "DaemonSet": ("AppsV1Api", "daemon_set", 500),
    "Job": ("BatchV1Api", "job", 500),
    "CronJob": ("BatchV1Api", "cron_job", 500),
    "Secret": ("CoreV1Api", "secret", 50),
    "ConfigMap": ("CoreV1Api", "config_map", 50),
}
_RBAC_FILE = {"Secret": "clusterrole-releases.yaml", "ConfigMap": "clusterrole-releases.yaml"}


class ClusterReader:
    """One kube context (None: the current context, or the pod's service account in a cluster)."""

    def __init__(self, context: str | None, kubeconfig: str | None = None, namespaces: Sequence[str] = ()) -> None:
        self.label = context or LOCAL
        self.namespaces = tuple(namespaces)
        self.api_client = _api_client(context, kubeconfig)

    def list(self, kind: str, label_selector: str | None = None,
             field_selector: str | None = None) -> Iterator[dict[str, Any]]:
        from kubernetes import client

        api_name, resource, page = _KINDS[kind]
        api = getattr(client, api_name)(self.api_client)
        selectors = {k: v for k, v in (("label_selector", label_selector), ("field_selector", field_selector)) if v}
        if not self.namespaces:
            yield from self._pages(getattr(api, f"list_{resource}_for_all_namespaces"), kind, page, selectors)
        for ns in self.namespaces:
            yield from self._pages(getattr(api, f"list_namespaced_{resource}"), kind, page, {**selectors,
                                                                                             "namespace": ns})

    def _pages(self, method: Any, kind: str, page: int, extra: dict[str, Any]) -> Iterator[dict[str, Any]]:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError, ReadTimeoutError

        where = f"in namespace {extra['namespace']}" if "namespace" in extra else "in all namespaces"
        cont: str | None = None
        while True:
            try:
                timeout = (CONNECT_TIMEOUT, answer_timeout())  # to connect, then for one page of the list
                kwargs: dict[str, Any] = {"limit": page, "_preload_content": False, "_request_timeout": timeout,
                                          **extra}
                if cont:
                    kwargs["_continue"] = cont
                doc = jsonsafe.loads(method(**kwargs).data)
            except ApiException as exc:
                hint = ""
                if exc.status in (401, 403):
                    hint = (f" (the service account needs list on {kind}s {where}: see "
                            f"k8s-manifests/cleanup/{_RBAC_FILE.get(kind, 'clusterrole.yaml')}, or limit the scan "
                            "with --scan-namespace)")
                raise ClusterScanError(f"cannot list {kind}s {where} in kube context {self.label}: HTTP {exc.status} "
                                       f"{exc.reason}{hint}; or pass --without-kube") from None
            except (HTTPError, OSError, ValueError) as exc:
                reason = getattr(exc, "reason", None) or exc
                why = f"no answer within {timeout[1]:g} s" if isinstance(reason, ReadTimeoutError) else str(reason)
                raise ClusterScanError(f"cannot reach kube context {self.label} to list {kind}s: {why}; check the "
                                       "cluster, or pass --without-kube to skip in-use protection") from None
            yield from doc.get("items") or []
            cont = (doc.get("metadata") or {}).get("continue")
            if not cont:
                return

    def cluster_uid(self) -> str | None:
        """The UID of the kube-system namespace (a cluster's stable identity), or None if unreadable."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return client.CoreV1Api(self.api_client).read_namespace(
                "kube-system", _request_timeout=(CONNECT_TIMEOUT, answer_timeout())).metadata.uid
        except (ApiException, HTTPError, OSError):
            return None


def _api_client(context: str | None, kubeconfig: str | None) -> Any:
    from kube.client import api_client
    from kube.errors import KubeConfigError

    try:
        return api_client(kubeconfig, context)
    except KubeConfigError as exc:
        raise KubeConfigError(f"cannot scan the cluster ({context or 'current context'}): {exc}; or pass "
                              "--without-kube to clean up without in-use protection") from None


# ---- what one cluster says ----------------------------------------------------------------------

ReleaseSource = Callable[[ClusterReader], "tuple[list[ReleaseRevision], list[str]]"]


@dataclass
class ClusterScan:
    label: str  # the kube context (or "(current)")
    name: str | None  # the cluster's identity for reports: configured, or the kube-system UID
    namespaces: tuple[str, ...]
    in_use: InUse = field(default_factory=InUse)
    releases: list[ReleaseRevision] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    objects: int = 0


def scan_in_use(reader: ClusterReader, into: InUse) -> int:
    """Add every image the workloads use to `into`; return how many objects were read."""
    count = 0
    for kind in KINDS:
        for obj in reader.list(kind):
            meta = obj.get("metadata") or {}
            where = f"{reader.label}/{meta.get('namespace', '')}/{kind}/{meta.get('name', '')}"
            for image in images_of(kind, obj):
                into.add(image, where)
            count += 1
    into.scanned.append(reader.label)
    return count


def helm_releases(reader: ClusterReader) -> tuple[list[ReleaseRevision], list[str]]:
    """Every Helm release revision (Secrets and ConfigMaps driver) with its images; problems apart."""
    revisions: list[ReleaseRevision] = []
    problems: list[str] = []
    for kind, field_selector in (("Secret", f"type={SECRET_TYPE}"), ("ConfigMap", None)):
        for obj in reader.list(kind, OWNER_SELECTOR, field_selector):
            if not str((obj.get("metadata") or {}).get("name", "")).startswith(NAME_PREFIX):
                continue  # labelled owner=helm, but not a release object: Helm would not read it either
            try:
                r = decode_release(obj, kind)
            except HelmReleaseError as exc:
                problems.append(f"{exc} (kube context {reader.label}); fix or delete that object")
                continue
            revisions.append(ReleaseRevision(reader.label, "helm", r.namespace, r.name, r.revision, r.deployed,
                                             r.images))
    return revisions, problems


def scan_clusters(contexts: Iterable[str | None], kubeconfig: str | None = None, report: Report | None = None,
                  namespaces: Sequence[str] = (), release_sources: Sequence[ReleaseSource] = (),
                  cluster_name: str | None = None) -> list[ClusterScan]:
    """Scan each context: workloads, Helm releases and `release_sources`. `cluster_name` names the one
    context scanned (else each cluster is named by its kube-system UID, when readable)."""
    contexts = list(contexts) or [None]
    if cluster_name and len(contexts) > 1:
        raise ClusterScanError("--cluster-name names one cluster: scan one kube context with it")
    scans = []
    for context in contexts:
        reader = ClusterReader(context, kubeconfig, namespaces)
        scan = ClusterScan(reader.label, cluster_name or reader.cluster_uid(), reader.namespaces)
        scan.objects = scan_in_use(reader, scan.in_use)
        for source in (helm_releases, *release_sources):
            revisions, problems = source(reader)
            scan.releases += revisions
            scan.problems += problems
        if report:
            report("scan", f"kube context {reader.label}: {scan.objects} objects, {len(scan.in_use.tags)} tags and "
                           f"{len(scan.in_use.digests)} digests in use, {len(scan.releases)} release revisions"
                           + (f", {len(scan.problems)} unreadable" if scan.problems else ""))
        scans.append(scan)
    return scans
