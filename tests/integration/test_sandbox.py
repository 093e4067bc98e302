"""The RUN sandbox on a tiny real rootfs (busybox-static or the host's sh with its libraries)."""
import gzip
import io
import os
import shutil
from pathlib import Path

import pytest

from builder.layer import write_layer
from builder.sandbox import Mount, SandboxError, User, run_in_rootfs
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
    code = run_in_rootfs(root, ["/bin/sh", "-c", script], output=lambda s, l: lines.append((s, l)), **kw)
    return code, lines


def stdout(lines) -> list[str]:
    return [l.decode() for s, l in lines if s == "stdout"]


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
    assert ("stdout", b"out1") in lines and ("stderr", b"err1") in lines and ("stdout", b"no-newline") in lines


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
                                    "echo 'nameserver 1.2.3.4' > /etc/resolv.conf; hostname; echo new > /newfile")
        changes = cap.changes()
    assert code == 0
    out = stdout(lines)
    assert "10.0.0.1 added" in out and "kade" in out
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


def test_default_network_is_the_hosts(base):
    code, lines = run(base, "ls /sys/class/net")
    assert code == 0 and len(stdout(lines)) >= 1


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
    assert all(SECRET not in l for _, l in lines if b"secret-readable" not in l)
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
    (["/bin/sh", "-c", "true"], "/missing-dir", "working directory"),
])
def test_setup_failures_are_clear(base, argv, workdir, match):
    with pytest.raises(SandboxError, match=match):
        run_in_rootfs(base, argv, workdir=workdir)


def test_runs_in_an_overlay_capture(base, tmp_path):
    with capture(base, tmp_path / "s", "overlay") as cap:
        code, _ = run(cap.root, "echo hi > /hello; rm /etc/group")
        paths = {(c.path, c.kind) for c in cap.changes()}
    assert code == 0
    assert ("hello", "add") in paths and ("etc/group", "delete") in paths
    assert (base / "etc" / "group").exists()   # the lower rootfs untouched until commit
