"""The RUN sandbox on a tiny real rootfs (busybox-static or the host's sh with its libraries)."""
import gzip
import io
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from builder.layer import write_layer
from builder.sandbox import IdmapUnavailable, Mount, SandboxError, User, run_in_rootfs
from builder.snapshot import capture

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox tests run as root (CI does)")

SECRET = b"kade-secret-7f3a9c1e-do-not-leak"


@pytest.fixture
def base(tiny_base: Path, tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    shutil.copytree(tiny_base, root, symlinks=True)
    return root


def run(root: Path, script: str, **kw) -> tuple[int, list[tuple[str, bytes]]]:
    lines: list[tuple[str, bytes]] = []
    code = run_in_rootfs(root, ["/bin/sh", "-c", script], output=lambda s, chunk: lines.append((s, chunk)), **kw)
    return code, lines


def stdout(lines) -> list[str]:
    return [chunk.decode().rstrip("\n") for s, chunk in lines if s == "stdout"]


def test_pid_namespace_command_is_pid_1_and_proc_works(base):
    code, lines = run(base, 'echo $$; for p in /proc/[0-9]*; do echo "${p#/proc/}"; done; head -1 /proc/self/status')
    out = stdout(lines)
    assert code == 0
    assert out[0] == "1"
    pids = [int(x) for x in out[1:-1]]
    assert 1 in pids and len(pids) <= 3   # the shell, maybe a subshell: nothing of the host
    assert out[-1].startswith("Name:")


def test_exit_code_and_streams(base):
    code, lines = run(base, "echo out1; echo err1 >&2; printf 'no-newline'; exit 7")
    assert code == 7
    assert ("stdout", b"out1\n") in lines and ("stderr", b"err1\n") in lines
    assert lines[-1] == ("stdout", b"no-newline") or ("stdout", b"no-newline") in lines


def test_output_pieces_join_to_the_exact_stream(base):
    code, lines = run(base, "i=0; while [ $i -lt 300 ]; do printf 'x%.0s' $(seq 1 100 2>/dev/null) ; "
                            "printf 'line %d\\n' $i; i=$((i+1)); done; head -c 200000 /dev/zero | tr '\\0' 'z'")
    assert code == 0
    out = b"".join(chunk for s, chunk in lines if s == "stdout")
    assert out.count(b"\n") == 300 and out.endswith(b"z" * 200000)
    assert all(len(chunk) <= 64 * 1024 for _, chunk in lines)
    assert all(chunk.endswith(b"\n") for _, chunk in lines[:300])


def test_dev_and_sys_minimal_and_readonly(base):
    code, lines = run(base, "ls /dev; echo data > /dev/null && echo null-ok; "
                            "touch /sys/x 2>/dev/null && echo sys-writable || echo sys-readonly")
    out = stdout(lines)
    assert code == 0
    for name in ("null", "zero", "full", "random", "urandom", "tty", "pts", "shm"):
        assert name in out
    assert "null-ok" in out and "sys-readonly" in out


def test_hosts_resolv_and_mountpoints_never_captured(base):
    (base / "etc" / "hosts").write_text("127.0.0.1 original\n")
    with capture(base, base.parent / "scratch", "stat") as cap:
        code, lines = run(cap.root, "echo '10.0.0.1 added' >> /etc/hosts; cat /etc/hosts; "
                                    "echo 'nameserver 1.2.3.4' > /etc/resolv.conf; hostname; echo new > /newfile; "
                                    "env | grep -q '^HOSTNAME=' || echo no-HOSTNAME")
        changes = cap.changes()
    assert code == 0
    out = stdout(lines)
    assert "10.0.0.1 added" in out and "buildkitsandbox" in out   # BuildKit's host name, hosts file and env
    assert out[:2] == ["127.0.0.1\tlocalhost buildkitsandbox", "::1\tlocalhost ip6-localhost ip6-loopback"]
    assert "no-HOSTNAME" in out
    assert (base / "etc" / "hosts").read_text() == "127.0.0.1 original\n"
    assert not (base / "etc" / "resolv.conf").exists()
    for p in ("proc", "dev", "sys"):
        assert not (base / p).exists()       # created for the run, removed after
    paths = {c.path for c in changes}
    assert paths == {"newfile"}


def test_network_none_has_only_loopback_up(base):
    code, lines = run(base, "ls /sys/class/net; cat /sys/class/net/lo/flags", network="none")
    out = stdout(lines)
    assert code == 0
    assert out[:-1] == ["lo"]
    assert int(out[-1], 16) & 0x1   # IFF_UP


@pytest.fixture
def host_marker():
    """A bridge only the host's network namespace has (other tests add and remove
    their own interfaces meanwhile, so the host's whole list is no fixed answer)."""
    name = f"kadet{os.getpid() % 100000}"
    subprocess.run(["ip", "link", "delete", name], capture_output=True, check=False)   # one a killed run left
    subprocess.run(["ip", "link", "add", name, "type", "bridge"], check=True)
    yield name
    subprocess.run(["ip", "link", "delete", name], capture_output=True, check=False)


def test_default_network_is_private_and_host_network_is_the_hosts(base, host_marker):
    code, lines = run(base, "ls /sys/class/net")
    assert code == 0 and stdout(lines) == ["eth0", "lo"]
    index = Path(f"/sys/class/net/{host_marker}/ifindex").read_text().strip()
    code, lines = run(base, f"ls /sys/class/net; cat /sys/class/net/{host_marker}/ifindex", network="host")
    out = stdout(lines)
    assert code == 0 and host_marker in out[:-1] and out[-1] == index


def test_secret_on_tmpfs_and_in_no_layer_or_log(base):
    with capture(base, base.parent / "scratch", "stat") as cap:
        code, lines = run(cap.root,
                          "grep ' /run/secrets/token ' /proc/mounts | cut -d' ' -f3; "
                          f"[ \"$(cat /run/secrets/token)\" = '{SECRET.decode()}' ] && echo secret-readable; "
                          "stat -c %a /run/secrets/token; echo written > /tmp/artifact",
                          mounts=[Mount("secret", "/run/secrets/token", data=SECRET)])
        blob = io.BytesIO()
        write_layer(cap.changes(), blob, "gzip")
    assert code == 0
    out = stdout(lines)
    assert out[0] == "tmpfs" and "secret-readable" in out and "400" in out
    assert SECRET not in gzip.decompress(blob.getvalue())
    assert all(SECRET not in chunk for _, chunk in lines)
    assert not (base / "run").exists()
    assert SECRET not in repr(Mount("secret", "/run/secrets/token", data=SECRET)).encode()


def test_mount_targets_resolve_inside_the_rootfs(base, tmp_path):
    os.symlink("/", base / "run")               # hostile base image: /run -> /
    host_dir = Path("/kade-secret-escape-test")
    assert not host_dir.exists()
    code, _ = run(base, "cat /run/kade-secret-escape-test/x >/dev/null",
                  mounts=[Mount("secret", "/run/kade-secret-escape-test/x", data=SECRET)])
    assert code == 0
    assert not host_dir.exists()
    assert (base / "run").is_symlink()


def test_cache_mount_persists_and_is_not_captured(base, tmp_path):
    cache = tmp_path / "cache"
    mounts = [Mount("cache", "/var/cache/thing", source=str(cache))]
    with capture(base, tmp_path / "s1", "stat") as cap:
        assert run(cap.root, "echo 1 >> /var/cache/thing/count", mounts=mounts)[0] == 0
        first = cap.changes()
    code, lines = run(base, "cat /var/cache/thing/count; echo 2 >> /var/cache/thing/count", mounts=mounts)
    assert code == 0 and stdout(lines) == ["1"]
    assert (cache / "count").read_text() == "1\n2\n"
    assert all(not c.path.startswith("var/cache/thing/") for c in first)


def test_bind_readonly_and_discarded_writes(base, tmp_path):
    src = tmp_path / "ctx"
    src.mkdir()
    (src / "f").write_text("context\n")
    code, lines = run(base, "cat /ctx/f; echo x > /ctx/f 2>/dev/null || echo readonly",
                      mounts=[Mount("bind", "/ctx", source=str(src), readonly=True)])
    assert code == 0 and stdout(lines) == ["context", "readonly"]
    code, lines = run(base, "echo changed > /ctx/f; cat /ctx/f",
                      mounts=[Mount("bind", "/ctx", source=str(src))])
    assert code == 0 and stdout(lines) == ["changed"]
    assert (src / "f").read_text() == "context\n"


def test_tmpfs_mount_not_captured(base, tmp_path):
    with capture(base, tmp_path / "s", "stat") as cap:
        code, _ = run(cap.root, "echo big > /scratch/file", mounts=[Mount("tmpfs", "/scratch")])
        changes = cap.changes()
    assert code == 0 and changes == []


def test_user_switch(base):
    code, lines = run(base, "id -u; id -g; id -G", user=User(65534, 65534, (65534, 100)))
    assert code == 0
    assert stdout(lines) == ["65534", "65534", "65534 100"]


def test_env_and_workdir(base):
    (base / "work").mkdir()
    code, lines = run(base, 'pwd; echo "$GREETING"', env={"GREETING": "hi there"}, workdir="/work")
    assert code == 0 and stdout(lines) == ["/work", "hi there"]


@pytest.mark.parametrize("argv,workdir,match", [
    (["/no/such/binary"], "/", "not found"),
    (["/bin/sh", "-c", "true"], "/etc/passwd/sub", "working directory"),
])
def test_setup_failures_are_clear(base, argv, workdir, match):
    with pytest.raises(SandboxError, match=match):
        run_in_rootfs(base, argv, workdir=workdir)


def test_a_command_without_a_slash_is_found_on_the_steps_path(base):
    """Exec form with a bare name (`RUN ["npm", "ci"]`, `SHELL ["bash", "-c"]`): searched on the step's
    PATH inside the rootfs, the first runnable match taken; a match that can't be run is said as such."""
    (base / "opt" / "first").mkdir(parents=True)
    (base / "opt" / "first" / "tool").write_text("#!/bin/sh\necho not runnable\n")   # no x bit
    (base / "opt" / "second").mkdir()
    (base / "opt" / "second" / "tool").write_text("#!/bin/sh\necho second \"$@\"\n")
    os.chmod(base / "opt" / "second" / "tool", 0o755)
    lines: list[tuple[str, bytes]] = []
    code = run_in_rootfs(base, ["tool", "arg"], env={"PATH": "/nowhere:/opt/first:/opt/second"},
                         output=lambda s, chunk: lines.append((s, chunk)))
    assert code == 0 and stdout(lines) == ["second arg"]
    code = run_in_rootfs(base, ["sh", "-c", "echo via sh"], output=lambda s, chunk: lines.append((s, chunk)))
    assert code == 0 and stdout(lines)[-1] == "via sh"
    with pytest.raises(SandboxError, match="'no-such-tool' not found in the rootfs"):
        run_in_rootfs(base, ["no-such-tool"])
    with pytest.raises(SandboxError, match="cannot run 'tool': Permission denied"):
        run_in_rootfs(base, ["tool"], env={"PATH": "/opt/first:/nowhere"})


def test_runs_in_an_overlay_capture(base, tmp_path):
    with capture(base, tmp_path / "s", "overlay", in_sandbox=True) as cap:
        code, _ = run(cap.root, "echo hi > /hello; rm /etc/group; echo x >> /etc/hosts", overlay=cap.overlay)
        paths = {(c.path, c.kind) for c in cap.changes()}
        assert (base / "etc" / "group").exists()   # the lower rootfs untouched until commit
        cap.commit()
    assert code == 0
    # /etc itself changed (an entry was removed); no sandbox mountpoint (proc, dev, sys, hosts) shows
    assert paths == {("hello", "add"), ("etc/group", "delete"), ("etc", "add")}
    assert not (base / "etc" / "group").exists() and (base / "hello").read_text() == "hi\n"
    assert not (base / "proc").exists() and not (base / "etc" / "hosts").exists()


ROOTLESS = """
import sys
sys.path.insert(0, {repo!r})
from builder.sandbox import Mount, run_in_rootfs
lines = []
code = run_in_rootfs({root!r}, ["/bin/sh", "-c", "id -u; echo $$; cat /run/secrets/s; ls /sys/class/net | wc -l"],
                     mounts=[Mount("secret", "/run/secrets/s", data=b"rootless-secret\\n")],
                     network={network!r}, output=lambda s, l: lines.append(l.decode()))
print(code, *lines)
"""


@pytest.mark.parametrize("network", ["none", "default"])
def test_rootless_user_namespace(tiny_base, network):
    """As an unprivileged user (nobody) the sandbox maps that user to root in a user namespace.
    Runs the system Python: the test venv's interpreter may live where nobody cannot read."""
    python, setpriv = shutil.which("python3", path="/usr/bin"), shutil.which("setpriv")
    if python is None or setpriv is None:
        pytest.skip("needs /usr/bin/python3 and setpriv (util-linux) to run as another user")
    work = Path(tempfile.mkdtemp(prefix="kade-rootless-"))
    try:
        os.chmod(work, 0o755)
        root = work / "root"
        shutil.copytree(tiny_base, root, symlinks=True)
        subprocess.run(["chown", "-R", "65534:65534", str(root)], check=True)
        # a copy of the package where nobody can read it (the checkout may sit in a private home)
        repo = str(work / "pkg")
        shutil.copytree(Path(__file__).resolve().parents[2] / "builder", work / "pkg" / "builder",
                        ignore=shutil.ignore_patterns("__pycache__"))
        subprocess.run(["chmod", "-R", "a+rX", str(work / "pkg")], check=True)
        proc = subprocess.run([setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", python, "-c",
                               ROOTLESS.format(repo=repo, root=str(root), network=network)],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        code, uid, pid, secret, nics = proc.stdout.split()
        assert (code, uid, pid, secret) == ("0", "0", "1", "rootless-secret")
        assert (nics == "1") == (network == "none")
        assert not (root / "run").exists() and not (root / "proc").exists()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_mountpoints_under_existing_dirs_leave_no_trace(base, tmp_path):
    (base / "run").mkdir()
    (base / "var").mkdir()
    with capture(base, tmp_path / "s", "stat") as cap:
        code, _ = run(cap.root, "true", mounts=[Mount("secret", "/run/secrets/deep/x", data=SECRET),
                                                Mount("tmpfs", "/var/tmp/scratch")])
        changes = cap.changes()
    assert code == 0 and changes == []
    assert os.listdir(base / "run") == [] and os.listdir(base / "var") == []


def test_ssh_agent_socket_mount(base, tmp_path):
    import socket as socketlib
    sock_path = tmp_path / "agent.sock"
    server = socketlib.socket(socketlib.AF_UNIX)
    server.bind(str(sock_path))
    server.listen(1)
    try:
        with capture(base, tmp_path / "s", "stat") as cap:
            code, lines = run(cap.root, 'echo "$SSH_AUTH_SOCK"; [ -S "$SSH_AUTH_SOCK" ] && echo is-socket',
                              mounts=[Mount("ssh", "/run/buildkit/ssh_agent.0", source=str(sock_path))])
            changes = cap.changes()
    finally:
        server.close()
    assert code == 0 and stdout(lines) == ["/run/buildkit/ssh_agent.0", "is-socket"]
    assert changes == [] and not (base / "run").exists()


NO_NAMESPACES = """
import sys
sys.path.insert(0, {repo!r})
from builder import linux as L
from builder.sandbox import SandboxError, run_in_rootfs
# a seccomp filter that refuses unshare(2) with EPERM, as a container's profile does
prog = [(0x20, 0, 0, 0), (0x15, 0, 1, 272), (0x06, 0, 0, 0x00050001), (0x06, 0, 0, 0x7FFF0000)]
import struct
L.prctl(L.PR_SET_NO_NEW_PRIVS, 1)
L.set_seccomp(b"".join(struct.pack("=HBBI", *i) for i in prog), len(prog))
try:
    run_in_rootfs({root!r}, ["/bin/sh", "-c", "true"])
except SandboxError as exc:
    print("refused:", exc)
"""


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the filter names unshare's x86_64 number")
def test_namespaces_refused_is_a_clear_error(base):
    """Where the kernel refuses namespaces (here: a seccomp filter on unshare, as a container's
    profile would), the error says what is missing, and nothing is left in the rootfs."""
    repo = str(Path(__file__).resolve().parents[2])
    proc = subprocess.run([sys.executable, "-c", NO_NAMESPACES.format(repo=repo, root=str(base))],
                          capture_output=True, text=True, timeout=60)
    assert "refused: cannot create the sandbox's namespaces: Operation not permitted" in proc.stdout, proc.stderr
    assert not (base / "proc").exists()


@pytest.mark.parametrize("name,link", [("dev", "/real-dev"), ("proc", "../../../../../../.."), ("sys", "/")])
def test_system_mountpoints_must_be_real_directories(base, name, link):
    (base / "real-dev").mkdir()
    os.symlink(link, base / name)
    with pytest.raises(SandboxError, match=f"/{name} .* symbolic link"):
        run(base, "true")
    assert (base / name).is_symlink()
    if name != "proc":
        assert not (base / "proc").exists()   # made for this run, removed when it failed


@pytest.mark.parametrize("target", ["/", "/up/../..", "/to-root"])
def test_mounts_on_the_root_itself_are_refused(base, target):
    os.symlink("/", base / "to-root")
    with pytest.raises(SandboxError, match="rootfs itself"):
        run(base, "true", mounts=[Mount("tmpfs", target)])


def test_bind_source_resolves_inside_its_root(base, tmp_path):
    ctx = tmp_path / "ctx"
    (ctx / "etc").mkdir(parents=True)
    (ctx / "etc" / "marker").write_text("from the context\n")
    os.symlink("/etc", ctx / "link")            # means the context's /etc, never the host's
    code, lines = run(base, "cat /m/marker; [ -e /m/passwd ] && echo host-leak || echo no-host-file",
                      mounts=[Mount("bind", "/m", source="link", source_root=str(ctx), readonly=True)])
    assert code == 0 and stdout(lines) == ["from the context", "no-host-file"]


def test_new_cache_dir_gets_the_mount_owner_and_mode(base, tmp_path):
    cache = tmp_path / "caches" / "pip"
    code, lines = run(base, "stat -c '%u %g %a' /root/.cache", user=User(1000, 1000),
                      mounts=[Mount("cache", "/root/.cache", source=str(cache), uid=1000, gid=1000, mode=0o700)])
    assert code == 0 and stdout(lines) == ["1000 1000 700"]


def test_root_run_keeps_only_dockers_default_capabilities(base):
    code, lines = run(base, "grep -E '^Cap(Bnd|Eff)' /proc/self/status")
    assert code == 0
    expected = sum(1 << c for c in (0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 29, 31))
    caps = {line.split(":")[0]: int(line.split(":")[1], 16) for line in stdout(lines)}
    assert caps == {"CapBnd": expected, "CapEff": expected}


def test_device_nodes_in_the_rootfs_cannot_be_opened(base):
    os.mknod(base / "hostdisk-like", 0o666 | stat.S_IFCHR, os.makedev(1, 3))   # a "null" outside /dev
    code, lines = run(base, "echo x > /hostdisk-like && echo opened || echo refused; "
                            "echo x > /dev/null && echo dev-null-ok")
    assert code == 0
    assert stdout(lines) == ["refused", "dev-null-ok"]


def test_a_mount_source_that_cannot_be_idmapped_is_a_clear_error(base, tmp_path):
    """A cache dir on an overlayfs mount (as when kade's cache lives in a container's root): overlayfs
    can't be idmapped, so the RUN can't start in its user namespace; the error names the path and the
    way out, and the command never ran."""
    for d in ("l", "u", "w", "m"):
        (tmp_path / "ovl" / d).mkdir(parents=True)
    merged = tmp_path / "ovl" / "m"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={tmp_path}/ovl/l,upperdir={tmp_path}/ovl/u,"
                    f"workdir={tmp_path}/ovl/w", str(merged)], check=True)
    try:
        with pytest.raises(IdmapUnavailable) as info:
            run(base, "touch /ran", mounts=[Mount("cache", "/c", source=str(merged / "cache"))])
    finally:
        subprocess.run(["umount", str(merged)], check=True)
    assert f"cannot show {merged}/cache to the RUN's user namespace" in str(info.value)
    assert "Invalid argument" in str(info.value) and "--userns host" in str(info.value)
    assert not (base / "ran").exists() and not (base / "c").exists()
