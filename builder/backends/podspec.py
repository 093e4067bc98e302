"""The builder pod of one stage, as a plain manifest dict (a pure function, table-tested).

Security posture (docs/incluster.md explains each choice): not privileged, no hostPath, seccomp
RuntimeDefault, no privilege escalation, every capability dropped except the ones a chroot build
needs (CAPABILITIES, with the reason for each), an emptyDir for the rootfs, the cache PVC for blobs
and RUN cache mounts, registry credentials from a dockerconfigjson Secret. With `user_namespaces`
the pod asks for `hostUsers: false`, so "root" in the pod is an unprivileged uid on the node, and
gets SYS_ADMIN over its own user namespace to run RUN in the full namespace sandbox."""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from builder.errors import BuildError
from registry.model import Platform

# capability -> why a chroot build needs it (everything else is dropped)
CAPABILITIES: dict[str, str] = {
    "CHOWN": "unpack layers and COPY --chown with the owners the image records",
    "DAC_OVERRIDE": "read and write files of any owner/mode while unpacking and snapshotting a rootfs",
    "FOWNER": "set modes, times and xattrs on files owned by other users in the rootfs",
    "FSETID": "keep setuid/setgid bits on files whose owner or group is not the builder's",
    "SETUID": "run a RUN step as the image's USER (setuid in the child)",
    "SETGID": "run a RUN step with the USER's groups (setgid/setgroups in the child)",
    "SYS_CHROOT": "chroot() into the rootfs for RUN steps (the pod mode has no mount namespace)",
    "MKNOD": "device nodes of base layers and /dev/null etc. for RUN (the device cgroup still limits use)",
    "SETFCAP": "file capabilities (security.capability xattrs) that packages like iputils set",
    "KILL": "stop a RUN's processes when they run as another user (timeouts, cancellation)",
    "SETPCAP": "take SYS_CHROOT (and SETPCAP) out of each RUN's bounding set, so a RUN can't chroot back out",
}
# Added with user namespaces only, where it is a capability over the pod's own user namespace (no
# power over the node's mounts or devices): the full namespace sandbox (builder/sandbox.py) in place
# of the chroot runner, and overlayfs snapshots.
USERNS_CAPABILITIES: dict[str, str] = {
    "SYS_ADMIN": "mount, PID, UTS and IPC namespaces for RUN, /proc, /dev binds and overlay snapshots",
    "NET_ADMIN": "bring up loopback in the new network namespace of a RUN --network=none",
}
SANDBOX_ENV = "KADE_POD_SANDBOX"  # builder/backends/podstage.py: "chroot" or "namespaces"
LABEL_BUILD = "kade.io/build"
LABEL_STAGE = "kade.io/stage"
LABEL_COMPONENT = "app.kubernetes.io/component"
MANAGED = {"app.kubernetes.io/managed-by": "kade", LABEL_COMPONENT: "builder"}
CACHE_MOUNT = "/cache"
WORK_MOUNT = "/work"
DOCKER_CONFIG_MOUNT = "/kade/docker"
BUILD_KEY_MOUNT = "/kade/build-key"


@dataclass(frozen=True)
class KubeSettings:
    """Where and how builder pods run (the `kade build --backend kubernetes` options)."""
    image: str  # the builder image (images/builder/Dockerfile)
    namespace: str = "kade-builds"
    cache_pvc: str | None = "kade-build-cache"
    service_account: str | None = "kade-builder"
    registry_secret: str | None = None  # a kubernetes.io/dockerconfigjson Secret
    kubeconfig: str | None = None
    kube_context: str | None = None
    user_namespaces: bool | None = None  # hostUsers: false; None: where the nodes support it (detected)
    deadline_s: int = 3600  # activeDeadlineSeconds: a pod never outlives this
    lease_s: int = 30  # step and build Lease duration (the CLI holds and renews them)
    attempts: int = 3  # a pod lost mid-stage (deleted, evicted, node lost) is retried this often
    start_timeout_s: int = 300
    cpu: str | None = None
    memory: str | None = None
    node_selector: dict[str, str] = field(default_factory=dict)
    tenant: str | None = None  # builder/tenant.py: the pods scope the cache PVC by it (None: the stages repo)
    share: tuple[str, ...] = ()
    build_key_secret: str | None = None  # a Secret holding cosign.key (+ cosign.password): the tenant's build key
    allow_emulation: bool = False  # a stage of an architecture no node has runs under qemu on another node


ARCH_LABEL = "kubernetes.io/arch"
EMULATION_ENV = "KADE_NODE_EMULATION"  # set in a pod placed on a node of another architecture


@dataclass(frozen=True)
class Placement:
    """Where a stage's pod goes: the node architecture it asks for, and whether RUN is emulated there."""
    arch: str
    emulated: bool = False


def place_stage(stage: str, platform: str, nodes: list[dict[str, Any]], selector: dict[str, str],
                allow_emulation: bool) -> Placement:
    """The `kubernetes.io/arch` of a stage's pod (pure): a node of the stage's own architecture among those
    `selector` admits; else, with emulation allowed, amd64 nodes (or the first architecture there is), whose
    kernel runs the stage's binaries through qemu-user-static; else a clear error."""
    want = Platform.parse(platform).normalized().architecture
    labels = [n.get("metadata", {}).get("labels") or {} for n in nodes if not (n.get("spec") or {}).get("unschedulable")]
    archs = sorted({lb.get(ARCH_LABEL, "") for lb in labels if all(lb.get(k) == v for k, v in selector.items())} - {""})
    if want in archs or not archs:  # no node readable: ask for the stage's own; the scheduler says the rest
        return Placement(want)
    where = f" matching the node selector {','.join(f'{k}={v}' for k, v in sorted(selector.items()))}" if selector else ""
    if allow_emulation:
        return Placement("amd64" if "amd64" in archs else archs[0], emulated=True)
    raise BuildError(f"stage {stage} is for {platform}, and no node{where} is {ARCH_LABEL}={want} "
                     f"(the nodes are: {', '.join(archs)})",
                     hint=f"add {want} nodes, or pass --allow-emulation to run it under qemu-user-static on "
                          f"{archs[0]} nodes (their kernel needs the qemu-{want} binfmt_misc handler with the F flag)")


WEAKER_WITHOUT_USERNS = (
    "root in a RUN is root of the pod, and so uid 0 on the node, held only by a chroot without "
    "CAP_SYS_CHROOT; the RUN shares the pod's PID namespace and network (it can reach what the pod "
    "reaches), has no /proc, and a kernel escape would make it root on the node")


def user_namespace_support(nodes: list[dict[str, Any]], selector: dict[str, str]) -> tuple[bool, str]:
    """Whether builder pods can ask for `hostUsers: false`, from the nodes they may land on (serialized
    V1Node dicts): every schedulable node matching `selector` must report `userNamespaces` for its
    default runtime handler (the kubelet fills status.runtimeHandlers from the container runtime).
    Returns (supported, the reason when not)."""
    eligible = [n for n in nodes if not (n.get("spec") or {}).get("unschedulable")
                and all(((n.get("metadata") or {}).get("labels") or {}).get(k) == v for k, v in selector.items())]
    if not eligible:
        return False, "no schedulable node matches the builder pods' node selector"
    lacking = []
    for node in eligible:
        handlers = (node.get("status") or {}).get("runtimeHandlers") or []
        default = next((h for h in handlers if not h.get("name")), None)
        if not ((default or {}).get("features") or {}).get("userNamespaces"):
            lacking.append((node.get("metadata") or {}).get("name", "?"))
    if lacking:
        return False, (f"node(s) {', '.join(sorted(lacking)[:5])} report no user namespace support "
                       "(status.runtimeHandlers: containerd >= 2.0 or CRI-O, runc >= 1.2, Kubernetes >= 1.33)")
    return True, ""


def dns_label(text: str, limit: int = 63) -> str:
    """A DNS-1123 label from any text: lowercase alphanumerics and '-', short, with a hash when changed."""
    clean = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-") or "x"
    if clean == text and len(clean) <= limit:
        return clean
    suffix = hashlib.sha256(text.encode()).hexdigest()[:6]
    return f"{clean[: limit - 7].strip('-')}-{suffix}"


def pod_name(build_id: str, stage: str, attempt: int) -> str:
    return f"kade-{build_id}-{dns_label(stage, 40)}-{attempt}"


def stage_pod(s: KubeSettings, *, build_id: str, owner: dict[str, str] | None, image_name: str, stage: str,
              plan_digest: str, stages_repo: str, insecure: tuple[str, ...] = (), epoch: int | None = None,
              attempt: int = 1, secrets_relay: bool = False, ssh_relay: bool = False,
              extra_env: dict[str, str] | None = None, placement: Placement | None = None) -> dict[str, Any]:
    """The manifest of the pod that builds `stage` of a build (on a node of `placement.arch`)."""
    args = ["build-stage", "--plan", plan_digest, "--stage", stage, "--repo", stages_repo]
    if ssh_relay:  # RUN --mount=type=ssh reaches the CLI's agent through a port-forward (agent_relay.py)
        args.append("--ssh-relay")
    if secrets_relay:  # --secret values come from the CLI through a port-forward (secret_relay.py)
        args.append("--secrets-relay")
    if s.tenant:
        args += ["--tenant", s.tenant]
    if s.share:
        args += ["--share", ",".join(s.share)]
    for host in insecure:
        args += ["--insecure-registry", host]
    env: list[dict[str, Any]] = [
        {"name": "KADE_CACHE_DIR", "value": CACHE_MOUNT},
        {"name": "KADE_WORK_DIR", "value": WORK_MOUNT},
    ]
    if epoch is not None:
        env.append({"name": "SOURCE_DATE_EPOCH", "value": str(epoch)})
    for name, value in sorted((extra_env or {}).items()):  # e.g. the unpack limits ($KADE_LAYER_MAX_*)
        env.append({"name": name, "value": value})
    if placement is not None and placement.emulated:
        env.append({"name": EMULATION_ENV, "value": "1"})
    capabilities = dict(CAPABILITIES)
    if s.user_namespaces:
        capabilities.update(USERNS_CAPABILITIES)
        env.append({"name": SANDBOX_ENV, "value": "namespaces"})
    mounts: list[dict[str, Any]] = [{"name": "work", "mountPath": WORK_MOUNT}]
    volumes: list[dict[str, Any]] = [{"name": "work", "emptyDir": {}}]
    if s.cache_pvc:
        mounts.append({"name": "cache", "mountPath": CACHE_MOUNT})
        volumes.append({"name": "cache", "persistentVolumeClaim": {"claimName": s.cache_pvc}})
    else:
        mounts.append({"name": "cache", "mountPath": CACHE_MOUNT})
        volumes.append({"name": "cache", "emptyDir": {}})
    if s.registry_secret:
        env.append({"name": "DOCKER_CONFIG", "value": DOCKER_CONFIG_MOUNT})
        mounts.append({"name": "registry-auth", "mountPath": DOCKER_CONFIG_MOUNT, "readOnly": True})
        volumes.append({"name": "registry-auth", "secret": {
            "secretName": s.registry_secret, "items": [{"key": ".dockerconfigjson", "path": "config.json"}]}})
    if s.build_key_secret:  # the tenant's build key: mounted by the kubelet, never in this spec or a log
        env.append({"name": "KADE_BUILD_KEY_DIR", "value": BUILD_KEY_MOUNT})
        mounts.append({"name": "build-key", "mountPath": BUILD_KEY_MOUNT, "readOnly": True})
        volumes.append({"name": "build-key", "secret": {"secretName": s.build_key_secret, "defaultMode": 0o400}})
    container: dict[str, Any] = {
        "name": "build", "image": s.image, "imagePullPolicy": "IfNotPresent", "args": args, "env": env,
        "volumeMounts": mounts, "workingDir": WORK_MOUNT,
        "securityContext": {
            "privileged": False, "allowPrivilegeEscalation": False, "runAsUser": 0, "runAsNonRoot": False,
            "readOnlyRootFilesystem": False,
            "capabilities": {"drop": ["ALL"], "add": sorted(capabilities)},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    resources = {k: v for k, v in (("cpu", s.cpu), ("memory", s.memory)) if v}
    if resources:
        container["resources"] = {"requests": resources}
    labels = {**MANAGED, LABEL_BUILD: build_id, LABEL_STAGE: dns_label(stage)}
    meta: dict[str, Any] = {"name": pod_name(build_id, stage, attempt), "namespace": s.namespace,
                            "labels": labels,
                            "annotations": {"kade.io/image": image_name, "kade.io/stage": stage,
                                            "kade.io/attempt": str(attempt)}}
    if owner:
        meta["ownerReferences"] = [{"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                                    "name": owner["name"], "uid": owner["uid"]}]
    spec: dict[str, Any] = {
        "restartPolicy": "Never", "activeDeadlineSeconds": s.deadline_s, "enableServiceLinks": False,
        "automountServiceAccountToken": False, "terminationGracePeriodSeconds": 5,  # it never calls the API
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container], "volumes": volumes,
    }
    if s.service_account:
        spec["serviceAccountName"] = s.service_account
    if s.user_namespaces:
        spec["hostUsers"] = False
    selector = {**s.node_selector, **({ARCH_LABEL: placement.arch} if placement else {})}
    if selector:
        spec["nodeSelector"] = selector
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}
