"""The hostile-RUN suite in builder pods on the real test cluster (twin of
tests/integration/test_isolation_run.py), in both pod modes: user-namespace pods (what kade picks
by itself: the node reports user namespace support) and the chroot mode (--no-user-namespaces, with
the warning that says what is weaker). Each case is one RUN of a single Dockerfile built once per
mode; its canary is a file of the pod (ServiceAccount token, registry credentials, the build's
secrets, the cache PVC, the pod's work dir), another build's cache dir on the PVC, or a daemon that
must not outlive its step. Real apt-get and pip installs run here too (they need the cluster's Debian
base image), locally and in a pod.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest

from builder.cache import LocalCache
from tests.fixtures.build import base_rootfs_tar, push_layers
from tests.fixtures.canary import assert_secret_absent
from tests.fixtures.incluster import kade_build, records, result, unique
from tests.fixtures.isolation import probe_layer

pytestmark = pytest.mark.cluster

DENIED = ("keyctl", "add_key", "bpf", "perf_event_open", "open_by_handle_at", "kexec_load", "init_module",
          "reboot", "swapon", "acct", "clock_settime", "personality-noaslr", "sethostname", "mount", "umount2",
          "pivot_root", "open_tree", "fsopen", "setns", "unshare-newuser", "unshare-newnet", "clone-newuser",
          "clone-newns")
POD_FILES = ("/var/run/secrets/kubernetes.io/serviceaccount/token", "/run/secrets/kubernetes.io/serviceaccount",
             "/kade/docker/config.json", "/kade/secrets", "/cache/blobs", "/cache/mounts", "/work/rootfs",
             "/proc/1/root/var/run/secrets/kubernetes.io/serviceaccount/token")

# (case, RUN, the output lines it must print in user-namespace pods / in chroot-mode pods)
CASES = [
    ("pod-files", "RUN for f in " + " ".join(POD_FILES) + "; do [ -e $f ] && echo \"visible $f\" || "
                  "echo \"absent $f\"; done",
     [f"absent {f}" for f in POD_FILES], [f"absent {f}" for f in POD_FILES]),
    ("chroot-escape", "RUN mkdir /esc && (chroot /esc /bin/true 2>/dev/null && echo chrooted || echo refused)",
     ["refused"], ["refused"]),
    ("proc-sys-writes", "RUN for f in /proc/sys/vm/drop_caches /proc/sysrq-trigger; do (echo 1 > $f) 2>/dev/null "
                        "&& echo \"wrote $f\" || echo \"refused $f\"; done",
     ["refused /proc/sys/vm/drop_caches", "refused /proc/sysrq-trigger"],
     ["refused /proc/sys/vm/drop_caches", "refused /proc/sysrq-trigger"]),   # (no /proc at all in chroot mode)
    ("seccomp", "RUN kade-probe " + " ".join(DENIED) + " getpid fork",
     [f"{n}: EPERM" for n in DENIED] + ["getpid: ok", "fork: ok"],
     [f"{n}: EPERM" for n in DENIED] + ["getpid: ok", "fork: ok"]),
    ("daemon-started", "RUN (trap '' TERM HUP; i=0; while :; do i=$((i+1)); echo $i > /beat; sleep 0.2; done) "
                       ">/dev/null 2>&1 & sleep 1; echo started",
     ["started"], ["started"]),
    ("daemon-gone", "RUN a=$(cat /beat); sleep 2; b=$(cat /beat); [ \"$a\" = \"$b\" ] && echo 'daemon gone' || "
                    "echo 'daemon alive'",
     ["daemon gone"], ["daemon gone"]),
    ("other-build-cache", "RUN --mount=type=cache,id=mine,target=/c ls -a /c; "
                          "find / -xdev -name token-of-another-build 2>/dev/null | wc -l",
     [".", "..", "0"], [".", "..", "0"]),
]


@pytest.fixture(scope="module")
def probe_image(kube_cluster, probe_binary) -> str:
    host = kube_cluster.registry
    name = unique("probe")
    return push_layers(host, name, "1", [base_rootfs_tar(), probe_layer(probe_binary)]).ref


def _dockerfile(base: str) -> str:
    lines = [f"FROM {base}"]
    for case, run, _, _ in CASES:
        lines += [f"RUN echo 'CASE {case}'", run]
    return "\n".join(lines) + "\n"


def _outputs(done) -> dict[str, list[str]]:
    """The output lines of each case (after its CASE marker), from the pod's output records."""
    by_case: dict[str, list[str]] = {}
    current = None
    for rec in records(done):
        if rec["kind"] != "output":
            continue
        line = rec["message"].split("] ", 1)[-1]
        if line.startswith("CASE "):
            current = line[5:]
            by_case[current] = []
        elif current is not None:
            by_case[current].append(line)
    return by_case


@pytest.mark.parametrize("mode", ["detected", "chroot"])
def test_hostile_runs_in_pods(builder_env, probe_image, tmp_path, mode):
    other = builder_env.cache_dir and LocalCache(builder_env.cache_dir).mount_dir("another-build")
    secret = b"kade-canary-" + secrets.token_hex(16).encode()
    if other:
        (other / "token-of-another-build").write_bytes(secret)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(_dockerfile(probe_image))
    (tmp_path / "secret").write_bytes(secret)
    extra = ["--no-user-namespaces"] if mode == "chroot" else []
    done = kade_build(builder_env, ctx, f"{builder_env.registry}/{unique('hostile-' + mode)}:v1", *extra,
                      "--secret", f"id=tok,src={tmp_path / 'secret'}", timeout=600)
    result(done)
    warnings = [r["message"] for r in records(done) if r["kind"] == "warning"]
    assert not [w for w in warnings if "without user namespaces" in w], warnings   # detected, or asked for
    outputs = _outputs(done)
    wrong = {case: outputs.get(case) for case, _, in_userns, in_chroot in CASES
             if outputs.get(case) != (in_chroot if mode == "chroot" else in_userns)}
    assert wrong == {}, wrong
    assert_secret_absent(secret, done.stdout, done.stderr)


def test_detected_pods_run_with_host_users_false(builder_env, probe_image, tmp_path):
    """No flag: kade reads the node's runtime handlers and asks for hostUsers: false; root in the RUN
    is then not root on the node."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {probe_image}\nRUN cat /proc/self/uid_map\n")
    done = kade_build(builder_env, ctx, f"{builder_env.registry}/{unique('detected')}:v1")
    result(done)
    assert not [r for r in records(done) if r["kind"] == "warning" and "user namespaces" in r["message"]]
    line = next(r["message"].split("] ", 1)[-1] for r in records(done) if r["kind"] == "output")
    inside, outside, count = line.split()
    assert inside == "0" and int(outside) >= 65536 and count == "65536", line


CA_BUNDLES = ("/usr/local/share/ca-certificates/sandboxing-egress-ca.crt",
              "/usr/local/share/ca-certificates/custom-ca.crt")


def _real_tools_context(tmp_path: Path, base: str) -> Path:
    """apt-get (plain HTTP from Debian's mirror) and pip (HTTPS from PyPI). Where this machine's
    HTTPS goes through an egress proxy with its own CA, the context carries that CA for pip."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    cas = [Path(p) for p in CA_BUNDLES if Path(p).exists()]
    (ctx / "extra-ca.pem").write_bytes(b"".join(p.read_bytes() for p in cas))
    (ctx / "Dockerfile").write_text(
        f"FROM {base}\n"
        "COPY extra-ca.pem /tmp/extra-ca.pem\n"
        "RUN apt-get update -q && apt-get install -y -q --no-install-recommends python3-pip ca-certificates "
        "&& id _apt\n"
        "RUN cat /etc/ssl/certs/ca-certificates.crt /tmp/extra-ca.pem > /tmp/ca.pem && "
        "pip install -q --no-cache-dir --break-system-packages --cert /tmp/ca.pem six==1.16.0 && "
        "python3 -c 'import six; print(\"six\", six.__version__)'\n")
    return ctx


@pytest.mark.parametrize("backend", ["local", "kubernetes"])
def test_real_apt_get_and_pip_install(builder_env, tmp_path, backend):
    if not any(Path(p).exists() for p in CA_BUNDLES) and os.environ.get("KADE_TEST_OFFLINE"):
        pytest.skip("no network")
    ctx = _real_tools_context(tmp_path, builder_env.base_image)
    done = kade_build(builder_env, ctx, f"{builder_env.registry}/{unique('real-tools-' + backend)}:v1",
                      backend=backend, timeout=900)
    result(done)
    said = [r["message"].split("] ", 1)[-1] for r in records(done) if r["kind"] == "output"]
    assert "six 1.16.0" in said, said[-20:]
    assert any(line.startswith("uid=") and "(_apt)" in line for line in said), said[-20:]


def test_a_namespace_that_refuses_user_namespace_pods_falls_back_with_a_warning(builder_env, probe_image,
                                                                               tmp_path):
    """Pod Security "baseline" forbids the SYS_ADMIN a user-namespace pod needs: kade, which only
    detected the nodes' support, says what is weaker and builds in the chroot mode."""
    from kubernetes import client, config

    core = client.CoreV1Api(config.new_client_from_config(config_file=builder_env.kubeconfig))
    label = "pod-security.kubernetes.io/enforce"
    core.patch_namespace(builder_env.namespace, {"metadata": {"labels": {label: "baseline"}}})
    try:   # (the builder namespace is shared by the session's tests: its label comes off again)
        ctx = tmp_path / "ctx"
        ctx.mkdir()
        (ctx / "Dockerfile").write_text(f"FROM {probe_image}\nRUN ls /proc 2>/dev/null | wc -l\n")
        done = kade_build(builder_env, ctx, f"{builder_env.registry}/{unique('baseline')}:v1")
        other = tmp_path / "forced"
        other.mkdir()
        (other / "Dockerfile").write_text(f"FROM {probe_image}\nRUN echo forced\n")   # (a step not cached yet)
        forced = kade_build(builder_env, other, f"{builder_env.registry}/{unique('baseline-forced')}:v1",
                            "--user-namespaces")
    finally:
        core.patch_namespace(builder_env.namespace, {"metadata": {"labels": {label: None}}})
    assert forced.returncode == 1   # asked for: refused clearly, no fallback
    assert "violates PodSecurity" in forced.stderr and "--no-user-namespaces" in forced.stderr
    result(done)
    warnings = [r["message"] for r in records(done) if r["kind"] == "warning"]
    fallback = [w for w in warnings if "without user namespaces" in w]
    assert len(fallback) == 1 and "PodSecurity" in fallback[0] and "privileged" in fallback[0], warnings
    assert "root of the pod" in fallback[0] and "root on the node" in fallback[0]
    said = [r["message"].split("] ", 1)[-1] for r in records(done) if r["kind"] == "output"]
    assert said == ["0"]   # the chroot mode: no /proc in RUN
