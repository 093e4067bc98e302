"""RUN in a builder pod: chroot only, no new namespaces (the pod's executor mode).

A pod that is not privileged has no CAP_SYS_ADMIN, so it can't create mount namespaces, mount /proc,
bind-mount or use overlayfs (builder/sandbox.py needs all of these). This runner has the same
signature as `sandbox.run_in_rootfs` and does what is possible with CAP_SYS_CHROOT:

- the command runs chroot()ed into the rootfs (which lives in the pod's emptyDir), after
  setgroups/setgid/setuid to the step's user; it shares the pod's PID, network, IPC and UTS
  namespaces (the pod is the isolation boundary);
- /dev/null, zero, full, random, urandom and tty are created (mknod) when the image lacks them and
  removed afterwards; /proc and /sys are not available (commands that need them fail);
- RUN --mount entries are emulated by copying: a cache dir (from the cache PVC) is copied in and,
  after the command, copied back and swapped in atomically (concurrent writers: the last one wins,
  each run sees a whole snapshot); a secret is a file written for the run (mode/uid/gid kept) and
  removed; bind copies the source in; tmpfs is an empty directory. Targets must not already hold
  files in the image. An ssh mount is a socket in the rootfs that forwards to the agent socket
  (agent_relay.SocketProxy) while the command runs. --network=none needs a network namespace and
  is refused clearly.
Everything created for the run is removed afterwards and its parent directories get their mtimes
back, so the stat snapshot sees only what the command itself changed.

Root in a chroot that keeps CAP_SYS_CHROOT can chroot() back out (mkdir x; chroot x; cd ../..),
and outside are the pod's registry credentials, ServiceAccount token and the shared cache PVC. So
the command starts with SYS_CHROOT (and SETPCAP, which could re-grant nothing but isn't needed)
removed from its bounding set: Docker's default capabilities otherwise (linux.CHROOTED_RUN_CAPS). Without /proc,
mounts or an open descriptor outside, a chroot then holds root too.
"""
from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from builder.backends.agent_relay import SocketProxy
from builder import seccomp
from builder.linux import (CAP_SETPCAP, CHROOTED_RUN_CAPS, PR_SET_NO_NEW_PRIVS, become_subreaper, children,
                           clear_inheritable_and_ambient, drop_capabilities, has_effective, kill_children_except,
                           last_capability, prctl, set_seccomp)
from builder.sandbox import DEVICES, Mount, OutputCallback, SandboxError, User, _pump, prepare_call

_DEVICE_NUMBERS = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8), "urandom": (1, 9),
                   "tty": (5, 0)}


class _Scaffold:
    """Paths created inside the rootfs for one run, removed again with parent mtimes restored."""

    def __init__(self, root: Path):
        self.root = root
        self.created: list[Path] = []
        self.emptied: list[Path] = []  # empty directories of the image used as mount targets
        self.times: dict[Path, tuple[int, int]] = {}

    def _remember(self, parent: Path) -> None:
        if parent not in self.times:
            st = os.lstat(parent)
            self.times[parent] = (st.st_atime_ns, st.st_mtime_ns)

    def place(self, target: str) -> Path:
        """Host path for image path `target` (parents created inside the rootfs, never via a symlink out)."""
        from builder.rootpath import resolve

        parts: list[list[bytes]] = []
        probe = self.root  # remember the mtimes of the directories we may touch before touching them
        for name in ("",) + Path(target).parts[1:-1]:
            probe = probe / name if name else probe
            if probe.is_symlink() or not probe.is_dir():
                break
            self._remember(probe)
        parent, last = resolve(self.root, target, create_parents=True, on_create=lambda p: parts.append(list(p)))
        for p in parts:
            self.created.append(self.root / os.fsdecode(b"/".join(p)))
        host = Path(parent) / os.fsdecode(last)
        self._remember(Path(parent))
        if host.is_symlink():
            raise SandboxError(f"mount target {target} is a symlink in the image; the chroot mode can't mount there")
        if host.exists() and (not host.is_dir() or any(host.iterdir())):
            raise SandboxError(f"mount target {target} already holds files in the image; the pod chroot mode "
                               "copies mounts in and can't hide them: pick an empty or new path")
        return host

    def add(self, host: Path) -> None:
        self.created.append(host)

    def cleanup(self) -> None:
        for d in self.emptied:
            for child in d.iterdir():
                self.created.append(child)
        for host in reversed(self.created):
            try:
                if host.is_dir() and not host.is_symlink():
                    shutil.rmtree(host)
                else:
                    host.unlink()
            except FileNotFoundError:
                pass
        for parent, (atime, mtime) in sorted(self.times.items(), key=lambda kv: -len(kv[0].parts)):
            try:
                os.utime(parent, ns=(atime, mtime), follow_symlinks=False)
            except FileNotFoundError:
                pass


def _devices(scaffold: _Scaffold) -> None:
    dev = scaffold.root / "dev"
    if dev.is_symlink():
        return
    if not dev.exists():
        scaffold.place("/dev")
        dev.mkdir()
        scaffold.add(dev)
    for name in DEVICES:
        node = dev / name
        if os.path.lexists(node):
            continue
        scaffold._remember(dev)
        major, minor = _DEVICE_NUMBERS[name]
        try:
            os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
            os.chmod(node, 0o666)
        except PermissionError:
            continue  # no CAP_MKNOD: the command runs without this device
        scaffold.add(node)


def _copy_in(source: Path, host: Path) -> None:
    if source.is_dir():
        shutil.copytree(source, host, symlinks=True, dirs_exist_ok=True)
    else:
        shutil.copy2(source, host, follow_symlinks=False)


def _save_cache(host: Path, cache: Path) -> None:
    """Replace the cache dir by what the run left in `host`, atomically for concurrent readers."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{cache.name}.new-", dir=cache.parent))
    shutil.copytree(host, tmp, symlinks=True, dirs_exist_ok=True)
    old = cache.parent / f".{cache.name}.old-{os.getpid()}-{os.urandom(4).hex()}"
    try:
        os.rename(cache, old)
    except FileNotFoundError:
        old = None  # type: ignore[assignment]
    os.rename(tmp, cache)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def run_chroot(rootfs: str | os.PathLike[str], argv: Sequence[str], env: Mapping[str, str] | None = None,
               workdir: str = "/", user: User | tuple[int, int, Iterable[int]] = User(),
               mounts: Sequence[Mount] = (), network: str = "default",
               output: OutputCallback | None = None, *, hostname: str = "kade", timeout: float | None = None) -> int:
    """`sandbox.run_in_rootfs` for pods: see the module docstring for what differs."""
    root, user, env = prepare_call(rootfs, argv, user, env, hostname)
    if network != "default":
        raise SandboxError(f"RUN --network={network} needs a network namespace, which the pod chroot mode "
                           "can't create; drop the flag or build with the local backend")
    scaffold = _Scaffold(root)
    saves: list[tuple[Path, Path]] = []
    proxies: list[SocketProxy] = []
    try:
        _devices(scaffold)
        for m in mounts:
            host = scaffold.place(m.target)
            existed = host.exists()
            if existed:
                scaffold._remember(host)
            if m.type == "ssh":
                if existed:
                    raise SandboxError(f"ssh mount target {m.target} exists in the image; pick a new path")
                proxies.append(SocketProxy(host, m.source or "", mode=0o600 if m.mode is None else m.mode,
                                           uid=m.uid, gid=m.gid))
                env.setdefault("SSH_AUTH_SOCK", m.target)
            elif m.type == "secret":
                host.write_bytes(m.data or b"")
                os.chown(host, m.uid, m.gid)
                os.chmod(host, 0o400 if m.mode is None else m.mode)
            elif m.type == "tmpfs":
                host.mkdir(exist_ok=True)
            elif m.type in ("cache", "bind"):
                source = Path(m.source or "")
                if m.type == "cache":
                    source.mkdir(parents=True, exist_ok=True)
                elif not source.exists():
                    raise SandboxError(f"bind mount source {source} does not exist")
                _copy_in(source, host)
                if m.type == "cache" and not m.readonly:
                    saves.append((host, source))
            if not existed:
                scaffold.add(host)
            else:  # an empty directory of the image: empty it again afterwards
                scaffold._remember(host)
                scaffold.emptied.append(host)
        return _spawn(root, list(argv), env, workdir, user, output, timeout)
    finally:
        for proxy in proxies:
            proxy.close()
        try:
            for host, cache in saves:
                if host.is_dir():
                    _save_cache(host, cache)
        finally:
            scaffold.cleanup()


def _spawn(root: Path, argv: list[str], env: dict[str, str], workdir: str, user: User,
           output: OutputCallback | None, timeout: float | None) -> int:
    if not has_effective(CAP_SETPCAP):
        raise SandboxError("the builder lacks CAP_SETPCAP, needed to take CAP_SYS_CHROOT from RUN steps "
                           "(else a RUN could chroot out of its rootfs): add SETPCAP to the pod's capabilities, "
                           "as builder/backends/podspec.py does")
    last = last_capability()

    program = seccomp.program()
    filter_bytes = seccomp.encode(program) if program is not None else b""

    def enter() -> None:  # runs in the child between fork and exec
        drop_capabilities(CHROOTED_RUN_CAPS, last)  # effective until exec, so the chroot below still works
        clear_inheritable_and_ambient()
        os.chroot(root)
        os.chdir(workdir)
        os.setgroups(list(user.groups))
        os.setgid(user.gid)
        os.setuid(user.uid)
        prctl(PR_SET_NO_NEW_PRIVS, 1)
        if program is not None:   # the local sandbox's filter, on top of the pod's RuntimeDefault profile
            set_seccomp(filter_bytes, len(program))

    become_subreaper()   # a daemon the RUN starts is adopted by us, not by the pod's init, and killed below
    before = children()
    try:
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, preexec_fn=enter, start_new_session=True)
    except (FileNotFoundError, PermissionError) as exc:
        raise SandboxError(f"cannot start {argv[0]!r} in the rootfs: {exc.strerror}") from None
    except subprocess.SubprocessError as exc:
        raise SandboxError(f"cannot enter the rootfs for {argv[0]!r}: {exc}") from None

    def end_the_rest() -> None:
        """When the command exits, the step is over, and so is every process it started (this mode
        shares the pod's PIDs): a daemon holding the output pipes open would keep _pump waiting."""
        proc.wait()
        kill_children_except(before)

    threading.Thread(target=end_the_rest, daemon=True).start()
    try:
        _pump(proc, output, timeout)  # whole lines, newline included
        code = proc.wait()
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        kill_children_except(before)
        raise
    return 128 - code if code < 0 else code
