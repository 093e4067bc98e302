"""The pod RUN runner (chroot, no namespaces) on a real rootfs: it leaves nothing of its own
scaffolding behind (devices, mount targets, parent mtimes), emulates cache/secret/tmpfs mounts by
copying, and refuses what it cannot do."""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import threading
import time
import tarfile
from pathlib import Path

import pytest

from builder.backends.chroot import run_chroot
from builder.sandbox import Mount, SandboxError

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root (CAP_SYS_CHROOT)")


@pytest.fixture
def rootfs(tmp_path, busybox_tar) -> Path:
    root = tmp_path / "rootfs"
    root.mkdir()
    with tarfile.open(fileobj=io.BytesIO(busybox_tar)) as tf:
        tf.extractall(root, filter="fully_trusted")
    return root


def tree(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files + ["."]:
            p = Path(dirpath) / name
            st = os.lstat(p)
            out[str(p.relative_to(root))] = (st.st_mode, st.st_mtime_ns)
    return out


def run(root: Path, script: str, **kw) -> tuple[int, list[str]]:
    lines: list[str] = []
    code = run_chroot(root, ["/bin/sh", "-c", script], output=lambda _n, data: lines.append(data.decode()), **kw)
    return code, "".join(lines).splitlines()


def test_runs_chrooted_as_the_user_and_leaves_no_scaffolding(rootfs):
    before = tree(rootfs)
    code, out = run(rootfs, "id -u; id -g; pwd; ls /dev/null; echo hi > /dev/null; ls /", user=(1000, 1000, [50]),
                    workdir="/home/app")
    assert code == 0, out
    assert out[:3] == ["1000", "1000", "/home/app"] and "/dev/null" in out
    assert tree(rootfs) == before  # /dev and its nodes removed again, mtimes restored


def test_processes_the_step_left_are_killed_when_it_ends(rootfs):
    """This mode shares the pod's PID namespace: kade adopts (PR_SET_CHILD_SUBREAPER) and kills what a
    RUN leaves running, a daemon that keeps the output pipe open and one that detached from it alike."""
    marker = f"31.{os.getpid() % 1000 + 1000}"
    started = time.monotonic()
    code, out = run(rootfs, f"sleep {marker} & (sleep {marker} >/dev/null 2>&1 </dev/null &) ; echo left")
    assert code == 0 and out == ["left"]
    assert time.monotonic() - started < 10   # not the 31 s the daemons would take
    found = subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True, text=True).stdout
    assert found == ""


def test_exit_code_and_signal(rootfs):
    assert run(rootfs, "exit 3")[0] == 3
    assert run(rootfs, "kill -9 $$")[0] == 137


def test_mounts_are_copied_in_and_removed(rootfs, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "seen").write_text("1\n")
    before = tree(rootfs)
    mounts = [Mount("cache", "/var/cache/thing", str(cache)),
              Mount("secret", "/run/secrets/token", data=b"s3cret", mode=0o400),
              Mount("tmpfs", "/scratch")]
    code, out = run(rootfs, "cat /var/cache/thing/seen; echo 2 >> /var/cache/thing/seen; cat /run/secrets/token; echo;"
                            " touch /scratch/x; stat -c %a /run/secrets/token", mounts=mounts)
    assert code == 0, out
    assert out == ["1", "s3cret", "400"]
    assert (cache / "seen").read_text() == "1\n2\n"  # written back to the cache
    assert tree(rootfs) == before


@pytest.mark.parametrize("kwargs, message", [
    ({"network": "none"}, "network"),
    ({"mounts": [Mount("ssh", "/etc/passwd", "/nonexistent")]}, "already holds files"),
    ({"mounts": [Mount("tmpfs", "/etc")]}, "already holds files"),
])
def test_refuses_what_needs_namespaces(rootfs, kwargs, message):
    before = tree(rootfs)
    with pytest.raises(SandboxError, match=message):
        run(rootfs, "true", **kwargs)
    assert tree(rootfs) == before


def test_missing_executable(rootfs):
    with pytest.raises(SandboxError, match="cannot start"):
        run_chroot(rootfs, ["/no/such/binary"])


def test_root_in_the_run_cannot_chroot_back_out(rootfs):
    """The classic escape (chroot into a subdirectory, then walk `..` past the old root) starts with a
    chroot(); the RUN lacks CAP_SYS_CHROOT, so it fails while the rest of root's powers stay."""
    code, out = run(rootfs, "mkdir -p /esc && chroot /esc /bin/true; echo chroot=$?; "
                            "touch /owned && chown 1234:1234 /owned && stat -c %u /owned")
    assert code == 0, out
    assert "chroot=1" in out and out[-1] == "1234", out  # chroot refused, CHOWN kept
    assert any("Operation not permitted" in line for line in out), out  # stderr and stdout may interleave


def test_a_builder_without_setpcap_refuses_to_run(rootfs):
    """Without CAP_SETPCAP the runner could not take SYS_CHROOT away: it refuses, naming the fix."""
    import subprocess
    import sys

    code = ("import sys; from builder.backends.chroot import run_chroot\n"
            "from builder.sandbox import SandboxError\n"
            "try:\n    run_chroot(sys.argv[1], ['/bin/true'])\n"
            "except SandboxError as e:\n    print(e); sys.exit(3)\n")
    done = subprocess.run(["setpriv", "--bounding-set", "-setpcap", sys.executable, "-c", code, str(rootfs)],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 3, done.stdout + done.stderr
    assert "CAP_SETPCAP" in done.stdout and "podspec" in done.stdout


def test_an_ssh_mount_is_a_socket_to_the_agent_while_the_run_lasts(rootfs, tmp_path):
    import socket

    upstream = tmp_path / "agent.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(upstream))
    server.listen(1)
    before = tree(rootfs)
    try:
        code, out = run(rootfs, 'echo "$SSH_AUTH_SOCK"; [ -S "$SSH_AUTH_SOCK" ] && stat -c %a "$SSH_AUTH_SOCK"',
                        mounts=[Mount("ssh", "/run/buildkit/ssh_agent.default", source=str(upstream))])
    finally:
        server.close()
    assert code == 0 and out == ["/run/buildkit/ssh_agent.default", "600"], out
    assert tree(rootfs) == before  # socket and /run/buildkit gone, mtimes back


@pytest.mark.parametrize("script", [
    "rm -rf /c && ln -s {host} /c",                     # the cache dir itself becomes a symlink to the host
    "rm -rf /c/* && ln -s {host} /c/link && ln -s {host}/pwned /c/file-link",  # links inside the cache
])
def test_cache_save_never_follows_what_the_run_left(rootfs, tmp_path, empty_host_dir, host_secret, script):
    """After the RUN (as root) the chroot runner copies the cache back out of the rootfs: through fds,
    symlinks copied as symlinks, never followed to the host."""
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "kept").write_text("old")
    host = str(empty_host_dir.path)
    code, out = run(rootfs, script.format(host=host), mounts=[Mount("cache", "/c", str(cache))])
    assert code == 0, out
    saved = {p.name: p for p in cache.iterdir()}
    if "link" in saved:
        assert saved["link"].is_symlink() and os.readlink(saved["link"]) == host
    else:
        assert (cache / "kept").read_text() == "old"  # the cache dir was replaced: the old one stays
    for p in cache.rglob("*"):
        assert p.is_symlink() or host_secret.value not in (p.read_bytes() if p.is_file() else b"")


def test_cleanup_after_the_run_stays_inside_the_rootfs(rootfs, tmp_path):
    """The RUN replaces the parent of a mountpoint the runner created with a symlink to a host
    directory that holds the same names: cleanup resolves inside the rootfs and removes nothing there."""
    host = tmp_path / "host-lookalike"
    (host / "b" / "m").mkdir(parents=True)
    (host / "b" / "m" / "precious").write_text("keep")
    code, out = run(rootfs, f"rm -rf /a && ln -s {host} /a", mounts=[Mount("tmpfs", "/a/b/m")])
    assert code == 0, out
    assert (host / "b" / "m" / "precious").read_text() == "keep"
    assert os.path.islink(rootfs / "a")  # what the RUN made is the RUN's change


def test_a_run_ending_kills_only_what_it_started(rootfs, tmp_path):
    """Two RUNs at once in one process (two stages' threads) and a process of kade's own, both started
    while the first RUN ran: its end must not kill them (nor the second RUN's daemon)."""
    other = tmp_path / "other-rootfs"
    shutil.copytree(rootfs, other, symlinks=True)
    results: dict[str, tuple[int, list[str]]] = {}
    first = threading.Thread(target=lambda: results.update(first=run(rootfs, "sleep 1; echo first")))
    second = threading.Thread(target=lambda: results.update(second=run(
        other, "sleep 30 >/dev/null 2>&1 </dev/null & sleep 2; kill -0 $! && echo daemon-alive")))
    first.start()
    time.sleep(0.3)
    kade_child = subprocess.Popen(["sleep", "30"])
    second.start()
    try:
        first.join(30)
        second.join(30)
        assert results == {"first": (0, ["first"]), "second": (0, ["daemon-alive"])}
        assert kade_child.poll() is None, "kade's own child was killed by a RUN's end"
    finally:
        kade_child.kill()
        kade_child.wait()


def test_a_run_stopped_at_its_timeout_takes_its_daemons_with_it(rootfs):
    marker = f"32.{os.getpid() % 1000 + 1000}"
    with pytest.raises(SandboxError, match="longer than 1"):
        run(rootfs, f"(sleep {marker} >/dev/null 2>&1 </dev/null &); sleep {marker}", timeout=1)
    time.sleep(0.2)
    found = subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True, text=True).stdout
    assert found == ""
