"""Run one command inside a rootfs, the way a RUN step needs it, with no container runtime.

`run_in_rootfs` starts util-linux `unshare` (new mount, PID, UTS and IPC namespaces; a new network
namespace with only loopback up for network="none"; a user namespace mapping the caller to root when
not running as root) and in it a small Python init (`_init_main`, PID 1 of the new PID namespace)
that:
  1. bind-mounts the rootfs onto itself and mounts /proc, a minimal /dev (tmpfs with null zero full
     random urandom tty bind-mounted from the host, a private devpts, /dev/shm), /sys read-only,
     generated /etc/hosts and /etc/resolv.conf, and the RUN --mount list (cache dirs, secrets on a
     tmpfs, the ssh agent socket, binds, tmpfs);
  2. pivot_root()s into the rootfs and detaches the old root (no chroot escape for a root RUN; where
     seccomp forbids pivot_root, as in a pod, it moves the rootfs over / and chroots instead, and the
     command then loses CAP_SYS_CHROOT so it can't chroot back out);
  3. sets hostname, groups, gid, uid, working directory, and execs the command, which becomes PID 1.

Everything mounted lives only in the sandbox's mount namespace and vanishes with it. Mountpoints
the rootfs lacked are created before the run (resolved inside the rootfs, never through a symlink
out of it) and removed afterwards with their parents' mtimes restored, so a snapshot sees nothing of
them. The sandbox's spec (secret bytes included) reaches the init through a pipe: never argv, never
a file on disk, never a log. Output is streamed line by line to a callback `output(stream, data)`
("stdout"/"stderr"): each call is one line *with* its b"\n" (the last piece of a stream may lack it,
and a line over 64 KiB comes in pieces), so joining the calls of a stream gives its exact bytes.
"""
from __future__ import annotations

import base64
import errno
import json
import os
import selectors
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Literal, Mapping, Sequence

from builder.errors import BuildError
from builder.rootfs_ops import Parts, Root, lstat_at
from builder.rootpath import lexical, resolve_full, split

MountType = Literal["bind", "cache", "tmpfs", "secret", "ssh"]
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
MAX_LINE = 64 * 1024
_STARTED = "+"   # the init's first word on the status pipe: the namespaces exist
_PKG_ROOT = str(Path(__file__).resolve().parent.parent)
# The interpreter that runs the sandbox's init (stdlib only). Override with KADE_SANDBOX_PYTHON when
# sys.executable is not reachable by the build user (rootless builds with a root-owned Python).
INIT_PYTHON_ENV = "KADE_SANDBOX_PYTHON"


class SandboxError(BuildError):
    """The command could not be started in the rootfs (setup failed, or the executable is missing)."""


@dataclass(frozen=True)
class User:
    uid: int = 0
    gid: int = 0
    groups: tuple[int, ...] = ()


@dataclass(frozen=True)
class Mount:
    """One RUN --mount. `target` is an absolute path inside the rootfs.
    bind: `source` a host file or directory — or, with `source_root`, a path inside that directory
    resolved there; read-only when `readonly`, else the sandbox works on a copy (writes are discarded);
    cache: `source` a host directory kept between builds (read-write unless `readonly`; created with
    `mode` (default 0o755), `uid`, `gid` when missing);
    tmpfs: a fresh tmpfs (`size` bytes if given); secret: `data` as a read-only file on a tmpfs
    (`mode`, default 0o400, `uid`, `gid`); ssh: `source` is the agent socket on the host."""
    type: MountType
    target: str
    source: str | None = None
    readonly: bool = False
    data: bytes | None = field(default=None, repr=False)
    mode: int | None = None
    uid: int = 0
    gid: int = 0
    size: int | None = None
    source_root: str | None = None   # bind: `source` is a path inside this directory (a stage rootfs,
                                     # the build context), resolved there — symlinks never lead out

    def __post_init__(self) -> None:
        if not self.target.startswith("/"):
            raise ValueError(f"mount target {self.target!r} must be absolute")
        if self.type in ("bind", "cache", "ssh") and not self.source:
            raise ValueError(f"a {self.type} mount needs a source")
        if self.type == "secret" and self.data is None:
            raise ValueError("a secret mount needs its data")


OutputCallback = Callable[[str, bytes], None]


# ------------------------------------------------------------------------ host side: mountpoints

class _Mountpoints:
    """Creates missing mountpoints inside the rootfs and removes exactly those afterwards, through
    builder/rootfs_ops.py: resolved inside the rootfs before the RUN, and after it (when the RUN may
    have put a symlink anywhere) never followed out of it."""

    def __init__(self, rootfs: Path):
        self.rootfs = rootfs
        self.root = Root(rootfs)
        self.created: list[tuple[Parts, bool]] = []   # (resolved parts, is_dir)
        self.parent_times: dict[Parts, tuple[int, int]] = {}
        self.after_create: dict[Parts, int] = {}

    def _remember_deepest_existing(self, parts: Parts) -> None:
        """The directory whose mtime creating `parts` changes: the deepest one that exists."""
        for i in range(len(parts) - 1, -1, -1):
            st = self.root.lstat(parts[:i])
            if st is not None and stat.S_ISDIR(st.st_mode):
                self.parent_times.setdefault(parts[:i], (st.st_atime_ns, st.st_mtime_ns))
                return

    def freeze(self) -> None:
        """Call once all mountpoints exist (before the command runs)."""
        for parts in self.parent_times:
            st = self.root.lstat(parts)
            if st is not None:
                self.after_create[parts] = st.st_mtime_ns

    def ensure(self, target: str, is_dir: bool, *, allow_symlink: bool = True) -> str:
        """The host path of `target` inside the rootfs, created (empty) when missing."""
        parts = lexical(tuple(split(target)))
        try:
            if parts and allow_symlink:
                parts = self.root.resolve(parts)
            if not parts:
                raise SandboxError(f"cannot mount on {target} in {self.rootfs}: it resolves to the rootfs itself")
            self._remember_deepest_existing(parts)
            created: list[Parts] = []
            with self.root.parent(parts, create=True, created=created) as (fd, name, base):
                self.created.extend((c, True) for c in created)
                st = lstat_at(fd, name)
                if st is None:
                    if is_dir:
                        os.mkdir(name, 0o755, dir_fd=fd)
                    else:
                        os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=fd))
                    self.created.append((base + (name,), is_dir))
                elif stat.S_ISLNK(st.st_mode):
                    raise SandboxError(f"{target} in {self.rootfs} is a symbolic link; a RUN step needs a real "
                                       "directory (or nothing) there")
                elif stat.S_ISDIR(st.st_mode) != is_dir:
                    raise SandboxError(f"cannot mount on {target} in {self.rootfs}: it must be "
                                       f"{'a directory' if is_dir else 'a file'}")
                return self.root.host_path(base + (name,))
        except OSError as exc:
            raise SandboxError(f"cannot create mountpoint {target} in {self.rootfs}: {exc.strerror}") from None

    def cleanup(self) -> None:
        untouched = {p for p, mtime in self.after_create.items()
                     if (st := self.root.lstat(p)) is not None and st.st_mtime_ns == mtime}
        for parts, is_dir in reversed(self.created):
            try:
                with self.root.parent(parts) as (fd, name, _):
                    st = lstat_at(fd, name)
                    if st is None:
                        continue
                    if is_dir and stat.S_ISDIR(st.st_mode):
                        os.rmdir(name, dir_fd=fd)
                    elif not is_dir and stat.S_ISREG(st.st_mode) and st.st_size == 0:
                        os.unlink(name, dir_fd=fd)
            except OSError:
                pass  # the command put something there: it is the command's change now
        for parts, (atime, mtime) in self.parent_times.items():
            if parts in untouched:
                try:
                    self.root.utime(parts, mtime, atime)
                except OSError:
                    pass
        self.root.close()


def _resolv_conf() -> str:
    try:
        text = Path("/etc/resolv.conf").read_text()
    except OSError:
        text = ""
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    return "\n".join(lines) + "\n" if lines else "nameserver 8.8.8.8\n"


def _hosts(hostname: str) -> str:
    return (f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n")


# ------------------------------------------------------------------------ host side: run

def prepare_call(rootfs: str | os.PathLike[str], argv: Sequence[str], user: "User | tuple[int, int, Iterable[int]]",
                 env: Mapping[str, str] | None, hostname: str) -> tuple[Path, "User", dict[str, str]]:
    """The checks and defaults every RUN runner shares: an existing rootfs, a command, a User, the env."""
    root = Path(rootfs).resolve()
    if not root.is_dir():
        raise SandboxError(f"rootfs {root} is not a directory")
    if not argv:
        raise SandboxError("nothing to run (empty command)")
    if not isinstance(user, User):
        uid, gid, groups = user
        user = User(uid, gid, tuple(groups))
    env = dict(env or {})
    env.setdefault("PATH", DEFAULT_PATH)
    env.setdefault("HOSTNAME", hostname)
    return root, user, env


def run_in_rootfs(rootfs: str | os.PathLike[str], argv: Sequence[str], env: Mapping[str, str] | None = None,
                  workdir: str = "/", user: User | tuple[int, int, Iterable[int]] = User(),
                  mounts: Sequence[Mount] = (), network: Literal["default", "none"] = "default",
                  output: OutputCallback | None = None, *, hostname: str = "kade",
                  timeout: float | None = None) -> int:
    """Run `argv` in `rootfs` and return its exit code (128+N when killed by signal N).
    Raises SandboxError when the sandbox cannot be set up or the executable cannot be started."""
    root, user, env = prepare_call(rootfs, argv, user, env, hostname)
    if network not in ("default", "none"):
        raise SandboxError(f"unknown network mode {network!r}; use default or none")
    if shutil.which("unshare") is None:
        raise SandboxError("util-linux 'unshare' is not installed; install util-linux to run RUN steps")
    rootless = os.geteuid() != 0

    private = Path(tempfile.mkdtemp(prefix="kade-sandbox-"))
    points = _Mountpoints(root)
    try:
        (private / "hosts").write_text(_hosts(hostname))
        (private / "resolv.conf").write_text(_resolv_conf())
        (private / "secrets").mkdir()
        spec_mounts = []
        system = {name: points.ensure("/" + name, True, allow_symlink=False) for name in ("proc", "dev", "sys")}
        etc_hosts = points.ensure("/etc/hosts", False)
        etc_resolv = points.ensure("/etc/resolv.conf", False)
        for i, m in enumerate(mounts):
            item: dict[str, object] = {"type": m.type, "readonly": m.readonly, "size": m.size}
            if m.type == "bind":
                source = Path(resolve_full(m.source_root, m.source or "/") if m.source_root else m.source or "")
                if not source.exists():
                    raise SandboxError(f"bind mount source {source} does not exist")
                is_dir = source.is_dir()
                if not m.readonly:  # writes to a bind mount are discarded (BuildKit semantics): use a copy
                    copy = private / f"bind{i}"
                    if is_dir:
                        shutil.copytree(source, copy, symlinks=True)
                    else:
                        shutil.copy2(source, copy)
                    source = copy
                item["source"] = str(source)
            elif m.type == "cache":
                is_dir = True
                cache = Path(m.source or "")
                if not cache.exists():  # a new cache dir gets the mount's mode/uid/gid (BuildKit's options)
                    cache.mkdir(parents=True)
                    os.chmod(cache, 0o755 if m.mode is None else m.mode)
                    if not rootless:
                        os.chown(cache, m.uid, m.gid)
                item["source"] = m.source
            elif m.type == "ssh":
                is_dir = False
                item["source"] = m.source
                env.setdefault("SSH_AUTH_SOCK", m.target)
            elif m.type == "secret":
                is_dir = False
                item.update(data=base64.b64encode(m.data or b"").decode(), mode=0o400 if m.mode is None else m.mode,
                            uid=m.uid, gid=m.gid, staging=str(private / "secrets"), name=f"s{i}")
            else:
                is_dir = True
            item["target"] = points.ensure(m.target, is_dir)
            spec_mounts.append(item)
        points.freeze()
        spec = {
            "root": str(root), "argv": list(argv), "env": env, "workdir": workdir,
            "uid": user.uid, "gid": user.gid, "groups": list(user.groups), "hostname": hostname,
            "network": network, "rootless": rootless, "mounts": spec_mounts,
            "hosts": str(private / "hosts"), "resolv": str(private / "resolv.conf"),
            "etc_hosts": etc_hosts, "etc_resolv": etc_resolv, "system": system,
        }
        return _spawn(spec, output, timeout, rootless, network)
    finally:
        points.cleanup()
        shutil.rmtree(private, ignore_errors=True)


def _spawn(spec: dict, output: OutputCallback | None, timeout: float | None, rootless: bool, network: str) -> int:
    cmd = ["unshare", "--mount", "--pid", "--fork", "--uts", "--ipc", "--kill-child", "--propagation", "private"]
    if network == "none":
        cmd.append("--net")
    if rootless:
        cmd += ["--user", "--map-root-user"]
    spec_r, spec_w = os.pipe()
    status_r, status_w = os.pipe()
    init = f"import sys; sys.path.insert(0, {_PKG_ROOT!r}); from builder.sandbox import _init_main; _init_main()"
    python = os.environ.get(INIT_PYTHON_ENV) or sys.executable
    cmd += ["--", python, "-I", "-S", "-c", init, str(spec_r), str(status_w)]
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                pass_fds=(spec_r, status_w), env={"PATH": os.environ.get("PATH", DEFAULT_PATH)},
                                start_new_session=True)
    finally:
        os.close(spec_r)
        os.close(status_w)
    try:
        with os.fdopen(spec_w, "wb") as f:
            f.write(json.dumps(spec).encode())
    except BrokenPipeError:
        pass
    try:
        stderr_tail = _pump(proc, output, timeout)
        code = proc.wait()
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    finally:
        with os.fdopen(status_r, "rb") as f:
            status = f.read().decode(errors="replace")
    if not status.startswith(_STARTED):
        why = b" ".join(stderr_tail).decode(errors="replace").strip() or f"exit code {code}"
        raise SandboxError(f"cannot create the sandbox's namespaces with unshare: {why} (a container without "
                           "CAP_SYS_ADMIN or with user namespaces disabled cannot run RUN steps)")
    if status[len(_STARTED):]:
        raise SandboxError(status[len(_STARTED):])
    return 128 - code if code < 0 else code


def _pump(proc: subprocess.Popen, output: OutputCallback | None, timeout: float | None) -> deque[bytes]:
    """Feed the command's output to `output` until both pipes close; returns the last stderr pieces."""
    import time
    deadline = None if timeout is None else time.monotonic() + timeout
    sel = selectors.DefaultSelector()
    pending = {"stdout": b"", "stderr": b""}
    stderr_tail: deque[bytes] = deque(maxlen=5)
    sel.register(proc.stdout, selectors.EVENT_READ, "stdout")  # type: ignore[arg-type]
    sel.register(proc.stderr, selectors.EVENT_READ, "stderr")  # type: ignore[arg-type]
    while sel.get_map():
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        events = sel.select(wait)
        if not events and deadline is not None and time.monotonic() >= deadline:
            raise SandboxError(f"the command ran longer than {timeout} s and was killed")
        for key, _ in events:
            name = key.data
            chunk = os.read(key.fd, 65536)
            if not chunk:
                sel.unregister(key.fileobj)
                if pending[name] and name == "stderr":
                    stderr_tail.append(pending[name])
                if pending[name] and output:
                    output(name, pending[name])
                pending[name] = b""
                continue
            buf = pending[name] + chunk
            cut = buf.rfind(b"\n") + 1
            lines = [line + b"\n" for line in buf[:cut].split(b"\n")[:-1]]
            rest = buf[cut:]
            while len(rest) > MAX_LINE:     # an endless line comes in pieces (without a newline)
                lines.append(rest[:MAX_LINE])
                rest = rest[MAX_LINE:]
            pending[name] = rest
            if name == "stderr":
                stderr_tail.extend(lines)
            if output:
                for line in lines:
                    output(name, line)
    sel.close()
    return stderr_tail


# ------------------------------------------------------------------------ sandbox side: init

def _bring_up_loopback() -> None:
    import fcntl
    import struct
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sH14s", b"lo", 0, b"")
        flags = struct.unpack("16sH14s", fcntl.ioctl(s, siocgifflags, ifreq))[1]
        fcntl.ioctl(s, siocsifflags, struct.pack("16sH14s", b"lo", flags | iff_up, b""))


def _setup(spec: dict) -> bool:
    """Mount what the RUN needs and enter the rootfs; False when only a chroot holds it (no pivot_root)."""
    from builder import linux as L

    root = spec["root"]
    L.mount(None, "/", None, L.MS_REC | L.MS_PRIVATE)
    L.mount(root, root, None, L.MS_BIND | L.MS_REC)
    try:   # device nodes that came with the image (or a RUN's mknod) cannot be opened: no host disks
        L.mount(None, root, None, L.MS_REMOUNT | L.MS_BIND | L.MS_NODEV | L.mount_flags(root))
    except OSError:
        if not spec["rootless"]:  # a user namespace cannot open host devices anyway
            raise
    system = spec["system"]   # /proc, /dev, /sys as resolved inside the rootfs
    L.mount("proc", system["proc"], "proc", L.MS_NOSUID | L.MS_NODEV | L.MS_NOEXEC)
    dev = system["dev"]
    L.mount("tmpfs", dev, "tmpfs", L.MS_NOSUID | L.MS_NOEXEC | L.MS_NODEV, "mode=755,size=65536k")
    for name in DEVICES:
        path = f"{dev}/{name}"
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o666))
        L.mount(f"/dev/{name}", path, None, L.MS_BIND)
    os.mkdir(f"{dev}/pts")
    try:
        L.mount("devpts", f"{dev}/pts", "devpts", L.MS_NOSUID | L.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620")
        os.symlink("pts/ptmx", f"{dev}/ptmx")
    except OSError:
        pass  # no pseudo-terminals in this sandbox: RUN steps have no tty anyway
    os.mkdir(f"{dev}/shm")
    L.mount("shm", f"{dev}/shm", "tmpfs", L.MS_NOSUID | L.MS_NODEV, "mode=1777,size=65536k")
    for i, name in enumerate(("stdin", "stdout", "stderr")):
        os.symlink(f"/proc/self/fd/{i}", f"{dev}/{name}")
    os.symlink("/proc/self/fd", f"{dev}/fd")
    ro = L.MS_RDONLY | L.MS_NOSUID | L.MS_NODEV | L.MS_NOEXEC
    try:
        L.mount("sysfs", system["sys"], "sysfs", ro)
    except OSError:
        L.mount("/sys", system["sys"], None, L.MS_BIND | L.MS_REC)
        L.mount(None, system["sys"], None, L.MS_REMOUNT | L.MS_BIND | ro)
    L.mount(spec["hosts"], spec["etc_hosts"], None, L.MS_BIND)
    L.mount(spec["resolv"], spec["etc_resolv"], None, L.MS_BIND)
    for m in spec["mounts"]:
        target = m["target"]
        if m["type"] == "tmpfs":
            L.mount("tmpfs", target, "tmpfs", L.MS_NOSUID | L.MS_NODEV,
                    f"mode=1777,size={m['size']}" if m["size"] else "mode=1777")
            continue
        if m["type"] == "secret":
            staging = m["staging"]
            if not os.path.ismount(staging):
                L.mount("tmpfs", staging, "tmpfs", L.MS_NOSUID | L.MS_NODEV | L.MS_NOEXEC, "mode=700,size=16m")
            source = f"{staging}/{m['name']}"
            fd = os.open(source, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, base64.b64decode(m["data"]))
                os.fchown(fd, m["uid"], m["gid"])
                os.fchmod(fd, m["mode"])
            finally:
                os.close(fd)
            readonly = True
        else:
            source, readonly = m["source"], m["readonly"]
        L.mount(source, target, None, L.MS_BIND | L.MS_REC)
        if readonly:
            L.mount(None, target, None, L.MS_REMOUNT | L.MS_BIND | L.MS_RDONLY | L.MS_NOSUID | L.MS_NODEV)
    socket.sethostname(spec["hostname"])
    if spec["network"] == "none":
        _bring_up_loopback()
    os.chdir(root)
    try:
        L.pivot_root(".", ".")
        L.umount(".", L.MNT_DETACH)
        pivoted = True
    except PermissionError:
        # A pod's RuntimeDefault seccomp profile lacks pivot_root: move the rootfs over / and chroot
        # (runc's no-pivot mode). The old root stays beneath it, so the RUN loses CAP_SYS_CHROOT too.
        L.mount(root, "/", None, L.MS_MOVE)
        os.chroot(".")
        pivoted = False
    os.chdir("/")
    return pivoted


def _init_main() -> None:
    """Entry point inside the namespaces (PID 1): set up, then exec the command in its place."""
    spec_fd, status_fd = int(sys.argv[1]), int(sys.argv[2])
    os.set_inheritable(status_fd, False)
    os.write(status_fd, _STARTED.encode())

    def fail(message: str) -> None:
        os.write(status_fd, message.encode(errors="replace"))
        os._exit(127)

    with os.fdopen(spec_fd, "rb") as f:
        spec = json.loads(f.read())
    try:
        pivoted = _setup(spec)
    except OSError as exc:
        fail(f"sandbox setup failed in {spec['root']}: {exc}")
    workdir = spec["workdir"]
    try:
        os.chdir(workdir)
    except OSError as exc:
        fail(f"working directory {workdir} is not usable in the rootfs: {exc.strerror}")
    try:
        from builder.linux import CHROOTED_RUN_CAPS, DEFAULT_CAPS, drop_capabilities
        drop_capabilities(DEFAULT_CAPS if pivoted else CHROOTED_RUN_CAPS)
    except OSError as exc:
        fail(f"cannot drop capabilities for the RUN step: {exc}")
    try:
        if not spec["rootless"]:  # a user namespace from --map-root-user denies setgroups
            os.setgroups(spec["groups"])
        os.setgid(spec["gid"])
        os.setuid(spec["uid"])
    except OSError as exc:
        fail(f"cannot switch to user {spec['uid']}:{spec['gid']}: {exc.strerror}"
             + (" (rootless builds map only your own uid; run as root for other USERs)" if spec["rootless"] else ""))
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    argv, env = spec["argv"], spec["env"]
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            fail(f"executable {argv[0]!r} not found in the rootfs (PATH={env.get('PATH', '')})")
        fail(f"cannot run {argv[0]!r}: {exc.strerror}")
