"""`kade build --backend kubernetes --user-namespaces` on the real test cluster (containerd 2 + runc
1.3, so `hostUsers: false` works): the same step keys and step image digests as the local backend,
and isolation checked from the node: the pod's processes run as a non-root uid of the host, RUN runs
in the namespace sandbox (own PID namespace and /proc) over an overlay snapshot, and what a RUN
writes as root is root-owned in the image."""
from __future__ import annotations

import re
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from builder.backends.podspec import CACHE_MOUNT
from tests.cluster.test_incluster_build import MULTI, _start
from tests.fixtures.incluster import (builder_pods, get_manifest, layer_files, kade_build, result, stage_keys, unique,
                                      write_context)

pytestmark = pytest.mark.cluster

CGROUPS = Path("/sys/fs/cgroup/pids/kubepods")
# MULTI, plus a RUN that deletes files and replaces a directory of the base: whiteouts and an
# opaque directory, which the overlay upper dir records with user.overlay.* xattrs in a user namespace
MULTI_DELETES = MULTI.replace('CMD ["cat"', 'RUN rm -rf /usr/share/doc && mkdir -p /usr/share/doc/kade && rm /etc/issue.net\n'
                                            'CMD ["cat"')
SLOW_RUN = ("FROM {base}\nRUN sleep 8 && id -u > /uid && cat /proc/self/uid_map > /uid_map && echo $$ > /pid "
            "&& mkdir /made && touch /made/by-root\n")


def userns_build(env, ctx: Path, tag: str, *extra: str) -> subprocess.CompletedProcess:
    return kade_build(env, ctx, tag, "--user-namespaces", *extra)


def test_multistage_build_with_user_namespaces_matches_local(builder_env, tmp_path):
    ctx = write_context(tmp_path / "ctx", MULTI_DELETES, builder_env.base_image)
    repo = unique("userns-multi")
    out = result(userns_build(builder_env, ctx, f"{builder_env.registry}/{repo}:v1"))
    assert out["steps"]["built"] == 9, out
    local_repo = unique("userns-local")
    result(kade_build(builder_env, ctx, f"{builder_env.registry}/{local_repo}:v1", backend="local"))
    in_pods = stage_keys(builder_env.registry, repo + "-stages")
    on_host = stage_keys(builder_env.registry, local_repo + "-stages")
    assert len(in_pods) == 9 and in_pods == on_host
    layer = _last_layer(builder_env.registry, repo, "v1")
    assert {"usr/share/doc/.wh..wh..opq", "etc/.wh.issue.net"} <= set(layer), sorted(layer)[:20]


def _host_pids(container_id: str) -> list[int]:
    """The node's pids of a container's processes (cgroup v1: .../kubepods/.../<id>/cgroup.procs)."""
    pids: list[int] = []
    for pod in [*CGROUPS.glob("pod*"), *CGROUPS.glob("*/pod*")]:   # (other tests' pods come and go meanwhile: glob one level at a time)
        try:
            pids += [int(p) for p in (pod / container_id / "cgroup.procs").read_text().split()]
        except OSError:
            continue
    return pids


def _status_ids(pid: int) -> tuple[int, int]:
    """(real uid, real gid) of a host process, as the node sees them."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["Uid"].split()[0]), int(fields["Gid"].split()[0])


def _sandbox_overlay(pid: int) -> bool:
    """Whether a process's root is a step overlay mounted in a user namespace: over layer dirs of the
    cache PVC's layer store of the build's tenant (builder/layerstore.py), its marks in user.* xattrs."""
    try:
        root = [line for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines() if line.split()[4] == "/"]
    except OSError:
        return False
    store = re.compile(rf"lowerdir\+?={re.escape(CACHE_MOUNT)}/tenants/[^/,]+/trees/layers/")
    return any(" - overlay overlay " in line and "userxattr" in line and store.search(line) for line in root)


def _wait_for_run(container_id: str, deadline_s: float = 60) -> list[int]:
    """The container's pids once its RUN runs in the namespace sandbox (rooted in the step's overlay)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        pids = _host_pids(container_id)
        if any(_sandbox_overlay(pid) for pid in pids):
            return pids
        time.sleep(0.2)
    raise AssertionError(f"no process of container {container_id} ran in a sandbox on an overlay")


def _running_container(env, deadline_s: float = 90) -> tuple[object, str]:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        for pod in builder_pods(env)[1]:
            statuses = pod.status.container_statuses or []
            if pod.status.phase == "Running" and statuses and statuses[0].container_id:
                return pod, statuses[0].container_id.split("://", 1)[1]
        time.sleep(0.3)
    raise AssertionError("no running builder pod")


def _last_layer(registry: str, repo: str, tag: str) -> dict[str, tuple[tarfile.TarInfo, bytes | None]]:
    """name -> (tar header, file content) of the last layer of an image in the cluster registry."""
    manifest = get_manifest(registry, repo, tag) or {}
    return layer_files(registry, repo, manifest["layers"][-1]["digest"])


def test_user_namespace_pods_run_as_an_unprivileged_host_uid(builder_env, tmp_path):
    ctx = write_context(tmp_path / "ctx", SLOW_RUN, builder_env.base_image)
    repo = unique("userns-isolation")
    proc = _start(builder_env, ctx, f"{builder_env.registry}/{repo}:v1", "--user-namespaces")
    try:
        pod, container_id = _running_container(builder_env)
        assert pod.spec.host_users is False
        pids = _wait_for_run(container_id)  # the RUN's processes are there too now
        for pid in pids:  # root in the pod is an unprivileged uid on the node (the kubelet's ranges start at 65536)
            uid, gid = _status_ids(pid)
            assert uid >= 65536 and gid >= 65536, (pid, uid, gid)
            inside, outside, length = Path(f"/proc/{pid}/uid_map").read_text().split()
            assert (inside, int(outside), length) == ("0", uid, "65536")
    finally:
        stdout, stderr = proc.communicate(timeout=180)
    out = result(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    assert out["steps"]["built"] == 1
    layer = _last_layer(builder_env.registry, repo, "v1")
    assert layer["uid"][1] == b"0\n"  # the RUN ran as root of its user namespace...
    assert layer["uid_map"][1].split()[:2] != [b"0", b"0"]  # ...which maps to another uid on the node
    assert layer["pid"][1] == b"1\n"  # its own PID namespace, with its own /proc
    for name in ("uid", "uid_map", "pid", "made", "made/by-root"):
        header = layer[name][0]
        assert (header.uid, header.gid) == (0, 0), (name, header.uid, header.gid)


MOUNTS = """\
FROM {base}
RUN --mount=type=secret,id=token,required=true --mount=type=cache,target=/var/cache/k \
    test "$(wc -c < /run/secrets/token)" -eq 6 && date > /var/cache/k/stamp && ls /var/cache/k > /cached
RUN --network=none cat /proc/net/dev > /netdev
"""


def test_run_mounts_and_no_network_work_in_the_namespace_sandbox(builder_env, tmp_path):
    """What the chroot runner can only emulate or must refuse: real secret and cache mounts, and
    --network=none (a network namespace of its own, with loopback only)."""
    ctx = write_context(tmp_path / "ctx", MOUNTS, builder_env.base_image)
    (tmp_path / "token").write_text("s3cret")
    repo = unique("userns-mounts")
    done = userns_build(builder_env, ctx, f"{builder_env.registry}/{repo}:v1",
                        "--secret", f"id=token,src={tmp_path / 'token'}")
    assert result(done)["steps"]["built"] == 2
    assert "s3cret" not in done.stdout + done.stderr
    netdev = _last_layer(builder_env.registry, repo, "v1")["netdev"][1].decode()
    assert "lo:" in netdev and "eth0" not in netdev, netdev
