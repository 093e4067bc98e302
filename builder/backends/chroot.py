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
import signal
import stat
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from builder.backends.agent_relay import SocketProxy
from builder import seccomp
from builder.linux import CAP_SETPCAP, has_effective, last_capability
from builder.rootfs_ops import Meta, Override, Parts, Root, TreeCopy, lstat_at
from builder.rootpath import lexical, split
from builder.sandbox import (DEVICES, RUN_HOSTNAME, Mount, OutputCallback, SandboxError, User, prepare_call,
                             spawn_init)
from common import fsutil

_DEVICE_NUMBERS = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8), "urandom": (1, 9),
                   "tty": (5, 0)}


class _Scaffold:
    """Entries created inside the rootfs for one run, removed again with parent times restored.

    Every operation goes through builder.rootfs_ops (paths resolved inside the rootfs, objects
    changed through fds), before the run and, above all, after it: by then the RUN may have put a
    symlink anywhere, and cleanup must never follow one out of the rootfs."""

    def __init__(self, root: Path):
        self.path = root
        self.root = Root(root)
        self.created: list[Parts] = []
        self.emptied: list[Parts] = []  # empty directories of the image used as mount targets
        self.times: dict[Parts, tuple[int, int]] = {}
        self.fds: list[int] = []        # directories whose /proc/self/fd path was handed out

    def _remember(self, parts: Parts) -> None:
        if parts not in self.times:
            st = self.root.lstat(parts)
            if st is not None and stat.S_ISDIR(st.st_mode):
                self.times[parts] = (st.st_atime_ns, st.st_mtime_ns)

    def place(self, target: str) -> tuple[Parts, bool]:
        """(resolved parts, existed) of image path `target`, its parents created inside the rootfs.
        What exists there must be an empty directory (a mount target the image already has)."""
        parts = lexical(split(target))
        for i in range(len(parts)):  # remember the times of the directories we may touch first
            self._remember(self.root.resolve(parts[:i]))
        created: list[Parts] = []
        with self.root.parent(parts, create=True, created=created) as (fd, name, base):
            self.created.extend(created)
            self._remember(base)
            st = lstat_at(fd, name)
            if st is not None and stat.S_ISLNK(st.st_mode):
                raise SandboxError(f"mount target {target} is a symlink in the image; the chroot mode can't mount "
                                   "there")
            if st is not None and (not stat.S_ISDIR(st.st_mode) or self.root.listdir(base + (name,))):
                raise SandboxError(f"mount target {target} already holds files in the image; the pod chroot mode "
                                   "copies mounts in and can't hide them: pick an empty or new path")
        placed = base + (name,)
        if st is not None:
            self._remember(placed)
            self.emptied.append(placed)
        else:
            self.created.append(placed)
        return placed, st is not None

    def make_dir(self, parts: Parts, mode: int = 0o755) -> None:
        with self.root.parent(parts) as (fd, name, _):
            if lstat_at(fd, name) is None:
                os.mkdir(name, mode, dir_fd=fd)


    def fd_path(self, parts: Parts) -> Path:
        """A path to `parts` through an fd of its directory (kept open until cleanup), for APIs that
        take a path (a unix socket's bind and unlink): it stays in that directory whatever the RUN
        does to the path meanwhile."""
        with self.root.parent(parts) as (fd, name, _):
            kept = os.dup(fd)
        self.fds.append(kept)
        return Path(f"/proc/self/fd/{kept}") / os.fsdecode(name)

    def cleanup(self) -> None:
        try:
            for parts in self.emptied:
                try:
                    children = self.root.listdir(parts)
                except OSError:
                    continue
                self.created.extend(parts + (child,) for child in children)
            for parts in reversed(self.created):
                st = self.root.lstat(parts)
                if st is None or stat.S_ISLNK(st.st_mode):
                    continue  # gone, or a symlink: we create none, so the RUN made it and it stays
                try:
                    self.root.remove(parts)
                except OSError:
                    pass
            for parts, (atime, mtime) in sorted(self.times.items(), key=lambda kv: -len(kv[0])):
                try:
                    self.root.utime(parts, mtime, atime)
                except OSError:
                    pass
        finally:
            for fd in self.fds:
                os.close(fd)
            self.root.close()


def _devices(scaffold: _Scaffold) -> None:
    st = scaffold.root.lstat("/dev")
    if st is not None and stat.S_ISLNK(st.st_mode):
        return
    if st is None:
        parts, _ = scaffold.place("/dev")
        scaffold.make_dir(parts)
    dev = scaffold.root.open_dir(b"dev")
    try:
        for name in DEVICES:
            if lstat_at(dev, os.fsencode(name)) is not None:
                continue
            scaffold._remember((b"dev",))
            major, minor = _DEVICE_NUMBERS[name]
            try:
                os.mknod(name, 0o666 | stat.S_IFCHR, os.makedev(major, minor), dir_fd=dev)
                os.chmod(name, 0o666, dir_fd=dev)
            except PermissionError:
                continue  # no CAP_MKNOD: the command runs without this device
            scaffold.created.append((b"dev", os.fsencode(name)))
    finally:
        os.close(dev)


def _source(m: Mount) -> tuple[Root, Parts]:
    """Where a bind or cache mount's content is: a path inside a stage's rootfs (resolved there), or
    a host file or directory of kade's own (a cache dir, a context view)."""
    if m.source_root:
        root = Root(m.source_root)
        try:
            return root, root.resolve(m.source or "/")
        except BaseException:
            root.close()
            raise
    source = Path(m.source or "")
    return Root(source.parent), (os.fsencode(source.name),)


def _copy_in(m: Mount, scaffold: _Scaffold, target: Parts) -> None:
    """The mount's content copied to `target` in the rootfs, owners, modes and times kept."""
    src, parts = _source(m)
    try:
        if src.lstat(parts) is None:
            raise SandboxError(f"bind mount source {m.source} does not exist")
        with scaffold.root.parent(target) as (fd, name, base):
            TreeCopy(src, scaffold.root, Override(keep_owner=True), []).copy(parts, fd, name, base)
    finally:
        src.close()


def _save_cache(scaffold: _Scaffold, target: Parts, cache: Path) -> None:
    """Replace the cache dir by what the run left at `target`, atomically for concurrent readers. The
    rootfs is read through fds: a symlink the RUN left there is copied as a symlink, never followed."""
    st = scaffold.root.lstat(target)
    if st is None or not stat.S_ISDIR(st.st_mode):
        return  # the RUN removed or replaced its cache dir: keep the old one
    tmp = Path(tempfile.mkdtemp(prefix=f".{cache.name}.new-", dir=cache.parent))
    try:
        with Root(tmp.parent) as out:
            os.rmdir(tmp)
            TreeCopy(scaffold.root, out, Override(keep_owner=True), []).copy(target, out.fd, os.fsencode(tmp.name), ())
    except BaseException:
        fsutil.remove_tree(tmp)
        raise
    old = cache.parent / f".{cache.name}.old-{os.getpid()}-{os.urandom(4).hex()}"
    try:
        os.rename(cache, old)
    except FileNotFoundError:
        old = None  # type: ignore[assignment]
    os.rename(tmp, cache)
    if old is not None:
        fsutil.remove_tree(old)


def run_chroot(rootfs: str | os.PathLike[str], argv: Sequence[str], env: Mapping[str, str] | None = None,
               workdir: str = "/", user: User | tuple[int, int, Iterable[int]] = User(),
               mounts: Sequence[Mount] = (), network: str = "default",
               output: OutputCallback | None = None, *, hostname: str = RUN_HOSTNAME, timeout: float | None = None) -> int:
    """`sandbox.run_in_rootfs` for pods: see the module docstring for what differs."""
    root, user, env = prepare_call(rootfs, argv, user, env)
    if network != "default":
        raise SandboxError(f"RUN --network={network} needs a network namespace, which the pod chroot mode "
                           "can't create; drop the flag or build with the local backend")
    scaffold = _Scaffold(root)
    saves: list[tuple[Parts, Path]] = []
    proxies: list[SocketProxy] = []
    try:
        _devices(scaffold)
        for m in mounts:
            target, existed = scaffold.place(m.target)
            if m.type == "ssh":
                if existed:
                    raise SandboxError(f"ssh mount target {m.target} exists in the image; pick a new path")
                proxies.append(SocketProxy(scaffold.fd_path(target), m.source or "",
                                           mode=0o600 if m.mode is None else m.mode, uid=m.uid, gid=m.gid))
                env.setdefault("SSH_AUTH_SOCK", m.target)
            elif m.type == "secret":
                scaffold.root.write_file(target, m.data or b"", Meta(m.uid, m.gid, 0o400 if m.mode is None else m.mode))
            elif m.type == "tmpfs":
                scaffold.make_dir(target)
            elif m.type in ("cache", "bind"):
                if m.type == "cache":
                    Path(m.source or "").mkdir(parents=True, exist_ok=True)
                _copy_in(m, scaffold, target)
                if m.type == "cache" and not m.readonly:
                    saves.append((target, Path(m.source or "")))
        return _spawn(root, list(argv), env, workdir, user, output, timeout)
    finally:
        for proxy in proxies:
            proxy.close()
        try:
            for target, cache in saves:
                _save_cache(scaffold, target, cache)
        finally:
            scaffold.cleanup()


def _spawn(root: Path, argv: list[str], env: dict[str, str], workdir: str, user: User,
           output: OutputCallback | None, timeout: float | None) -> int:
    """The command run by its own reaper process (builder/backends/chroot_init.py), which ends what
    the command leaves running and nothing else."""
    if not has_effective(CAP_SETPCAP):
        raise SandboxError("the builder lacks CAP_SETPCAP, needed to take CAP_SYS_CHROOT from RUN steps "
                           "(else a RUN could chroot out of its rootfs): add SETPCAP to the pod's capabilities, "
                           "as builder/backends/podspec.py does")
    program = seccomp.program()
    spec = {"parent": os.getpid(), "argv": argv, "env": env, "root": str(root), "workdir": workdir,
            "uid": user.uid, "gid": user.gid, "groups": list(user.groups), "last_capability": last_capability(),
            "seccomp": seccomp.encode(program).hex() if program is not None else "",
            "seccomp_length": len(program or [])}
    return spawn_init("builder.backends.chroot_init", spec, output, timeout, stop=signal.SIGTERM)
