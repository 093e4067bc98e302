"""The processes that hold a RUN step (builder/sandbox.py starts them; stdlib and builder.linux only).

    kade ─ launcher (host root, its own mount namespace)
             └─ holder (its own user namespace, then mount/PID/UTS/IPC/cgroup/network namespaces)
                  └─ init: PID 1 of the new PID namespace, sets up the rootfs and execs the command

- launcher: dies with kade (PR_SET_PDEATHSIG, and it checks kade is still its parent); in a private
  copy of the host's mount namespace it writes the holder's uid/gid map (root in the RUN = the
  subordinate range's first id) and mounts the rootfs, the overlay's scratch dir and every RUN
  mount source over themselves, *idmapped* through the holder's user namespace: files owned by uid N
  on disk show as N in the RUN, and what the RUN writes as N lands on disk as N. Those mounts exist
  only in the launcher's namespace and the ones copied from it, and vanish with them. Then it plugs
  the RUN's network namespace into kade's bridge (builder/netns.py) and lets the init go on.
- holder: becomes root of its user namespace (setresuid(0) after the map is written and before any
  exec: an exec while unmapped would drop its capabilities), creates the other namespaces and forks
  the init; it relays the init's exit status (128+N for signal N).
- init: mounts the overlay (lower: the idmapped rootfs; upper: the step's diff, with `userxattr` in a
  user namespace), /proc with runc's masked and read-only paths, a minimal /dev, /sys read-only,
  /etc/hosts and resolv.conf, the RUN mounts — every one nosuid and nodev — configures eth0 or
  loopback, pivot_root()s into the rootfs (moves it over / and chroots where seccomp forbids
  pivot_root, as in a pod), creates the working directory, drops to Docker's default capabilities
  (bounding set; inheritable and ambient emptied), switches to the step's user, sets no_new_privs
  and the seccomp filter (builder/seccomp.py) and execs the command, which is then PID 1: when it
  exits, every process it left behind is killed with its PID namespace.

Every process of the three dies with its parent (SIGKILL), so nothing outlives kade. Failures are
written to the status pipe as `!kind:message` (kinds: overlay, idmap, network, setup); `+` means the
command is about to be executed.
"""
from __future__ import annotations

import binascii
import ctypes
import errno
import fcntl
import marshal
import os
import select
import signal
import socket
import struct
import sys

from builder import linux as L   # imported here: nothing of kade is reachable after pivot_root
from builder import seccomp

TYPE_CHECKING = False   # typing itself is not imported: it costs this process ms to start

if TYPE_CHECKING:
    from typing import NoReturn

STARTED = "+"
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
# runc's defaults (the OCI runtime spec's masked and read-only paths, as containerd and podman set them)
MASKED = ("/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
          "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
          "/sys/devices/virtual/powercap")
READ_ONLY = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")


class Failure(Exception):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class Status:
    def __init__(self, fd: int):
        self.fd = fd

    def say(self, text: str) -> None:
        try:
            os.write(self.fd, text.encode(errors="replace"))
        except OSError:
            pass

    def fail(self, kind: str, message: str) -> None:
        self.say(f"!{kind}:{message}")
        os._exit(127)


# ----------------------------------------------------------------------------------------- launcher

def main() -> None:
    """The launcher: `python -c ... <spec fd> <status fd>` started by kade."""
    spec, status = received()
    _reporting(status, "", _launch, spec, status)


def received() -> tuple[dict, Status]:
    """The spec and status pipe of a process sandbox.spawn_init started (argv: their fds); it dies with
    kade from now on."""
    spec_fd, status = int(sys.argv[1]), Status(int(sys.argv[2]))
    os.set_inheritable(status.fd, False)
    L.die_with_parent()
    with os.fdopen(spec_fd, "rb") as f:
        spec = marshal.loads(f.read())   # marshal, not json: kade wrote it, and json imports re (ms to start)
    if os.getppid() != spec["parent"]:
        os._exit(137)   # kade died before the parent-death signal was armed
    return spec, status


def _reporting(status: Status, where: str, step, *args) -> None:
    """Run one process's part; a failure goes to the status pipe (kade raises it), then exit."""
    try:
        step(*args)
    except Failure as exc:
        status.fail(exc.kind, str(exc))
    except OSError as exc:
        status.fail("setup", f"sandbox setup failed{where}: {exc}")
    os._exit(127)


def _launch(spec: dict, status: Status) -> None:
    mode = spec["mode"]
    if mode == "userns":   # the idmapped mounts below live in this private copy only
        _unshare(L.CLONE_NEWNS)
        L.mount(None, "/", None, L.MS_REC | L.MS_PRIVATE)
    to_holder_r, to_holder_w = os.pipe()
    from_holder_r, from_holder_w = os.pipe()
    go_r, go_w = os.pipe()
    holder = os.fork()
    if holder == 0:
        os.close(to_holder_w)
        os.close(from_holder_r)
        os.close(go_w)
        _reporting(status, "", _hold, spec, status, to_holder_r, from_holder_w, go_r)
    os.close(to_holder_r)
    os.close(from_holder_w)
    os.close(go_r)
    if mode in ("userns", "rootless"):
        if os.read(from_holder_r, 1) != b"u":
            _exit_like(holder)
        _map_ids(holder, spec)
        if mode == "userns":
            _idmap(holder, spec["idmap"])
        os.write(to_holder_w, b"g")
    init_pid = _read_pid(from_holder_r)
    if init_pid is None:
        _exit_like(holder)
    if spec["network"]["mode"] == "private":
        try:
            _plug(spec["network"], init_pid)
        except Failure:
            os.kill(holder, signal.SIGKILL)
            raise
    os.write(go_w, b"g")
    os.close(go_w)
    _exit_like(holder)


def _read_pid(fd: int) -> int | None:
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 32)
        if not chunk:
            return None
        data += chunk
    return int(data)


def _exit_like(pid: int) -> NoReturn:
    _, st = os.waitpid(pid, 0)
    os._exit(os.waitstatus_to_exitcode(st) if os.WIFEXITED(st) else 128 + os.WTERMSIG(st))


def _map_ids(pid: int, spec: dict) -> None:
    if spec["mode"] == "rootless":   # only our own ids, and setgroups must be denied first
        uid, gid = os.geteuid(), os.getegid()
        maps: tuple[tuple[str, str], ...] = (("setgroups", "deny"), ("uid_map", f"0 {uid} 1\n"), ("gid_map", f"0 {gid} 1\n"))
    else:
        ids = spec["ids"]
        maps = (("uid_map", f"0 {ids['uid']} {ids['size']}\n"), ("gid_map", f"0 {ids['gid']} {ids['size']}\n"))
    for name, text in maps:
        try:
            with open(f"/proc/{pid}/{name}", "w") as f:
                f.write(text)
        except OSError as exc:
            raise Failure("setup", f"cannot write the user namespace's {name} ({text.strip()}): {exc.strerror}") from None


def _idmap(pid: int, pairs: list[list[str]]) -> None:
    """Each (source, staging path) pair: the source idmapped onto its staging path (in the private
    directory, which root of the user namespace can reach: the sources' own parents, e.g. /root, may
    be closed to it)."""
    userns = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    try:
        for source, dest, readonly in pairs:   # read-only: the layer dirs of a layered rootfs
            try:
                L.idmapped_bind(source, dest, userns, L.MOUNT_ATTR_NOSUID | L.MOUNT_ATTR_NODEV
                                | (L.MOUNT_ATTR_RDONLY if readonly else 0))
            except OSError as exc:
                raise Failure("idmap", f"{source}\t{os.strerror(exc.errno or 0)}") from None
    finally:
        os.close(userns)


def _unshare(flags: int) -> None:
    try:
        L.unshare(flags)
    except OSError as exc:
        raise Failure("namespaces", f"cannot create the sandbox's namespaces: {os.strerror(exc.errno or 0)} (a container "
                                    "without CAP_SYS_ADMIN, or with user namespaces disabled, cannot run RUN "
                                    "steps this way)") from None


def veth_batch(net: dict, pid: int) -> str:
    """`ip -batch` input that plugs a RUN's network namespace (process `pid`) into kade's bridge
    (pure; builder/netns.py set the bridge up). A veth of the same name a killed kade left goes first."""
    v, mtu = net["veth"], net["mtu"]
    return (f"link del {v}\n"
            f"link add {v} mtu {mtu} type veth peer name eth0 mtu {mtu} netns {pid}\n"
            f"link set {v} master {net['bridge']}\n"
            f"link set dev {v} type bridge_slave isolated on\n"
            f"link set {v} up\n")


def _plug(net: dict, pid: int) -> None:
    import subprocess

    done = subprocess.run(["ip", "-force", "-batch", "-"], input=veth_batch(net, pid), capture_output=True,
                          text=True, timeout=60)
    if not os.path.exists(f"/sys/class/net/{net['veth']}"):
        raise Failure("network", f"cannot create the RUN's network interface {net['veth']}: {done.stderr.strip()}")
    try:   # no IPv6 on the host's side of a RUN's link
        with open(f"/proc/sys/net/ipv6/conf/{net['veth']}/disable_ipv6", "w") as f:
            f.write("1")
    except OSError:
        pass


# ------------------------------------------------------------------------------------------- holder

def _hold(spec: dict, status: Status, from_launcher: int, to_launcher: int, go: int) -> None:
    launcher = os.getppid()
    L.die_with_parent()
    if spec["mode"] in ("userns", "rootless"):
        _unshare(L.CLONE_NEWUSER)
        os.write(to_launcher, b"u")
        if os.read(from_launcher, 1) != b"g":
            os._exit(127)
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
        if spec["mode"] == "userns":
            os.setgroups([])
        L.die_with_parent()   # the uid change disarmed it
        if os.getppid() != launcher:
            os._exit(137)     # the launcher died meanwhile
    flags = L.CLONE_NEWNS | L.CLONE_NEWPID | L.CLONE_NEWUTS | L.CLONE_NEWIPC | L.CLONE_NEWCGROUP
    if spec["network"]["mode"] != "shared":
        flags |= L.CLONE_NEWNET
    _unshare(flags)
    lifeline, held = os.pipe()   # EOF for the init once this process is gone (its getppid() says 0)
    init = os.fork()
    if init == 0:
        os.close(to_launcher)
        os.close(held)
        _reporting(status, f" in {spec['root']}", _init, spec, status, go, lifeline)
    os.close(go)
    os.write(to_launcher, b"%d\n" % init)
    _exit_like(init)


# --------------------------------------------------------------------------------------------- init

def _orphaned(lifeline: int) -> bool:
    return bool(select.select([lifeline], [], [], 0)[0])


def _init(spec: dict, status: Status, go: int, lifeline: int) -> None:
    L.die_with_parent()
    if _orphaned(lifeline):
        os._exit(137)
    def network_ready() -> None:   # the launcher plugs eth0 in while the mounts are made
        if os.read(go, 1) != b"g":
            os._exit(127)   # the launcher died or failed (it said why)
        os.close(go)

    pivoted = _setup(spec, network_ready)
    workdir = spec["workdir"]
    try:
        os.makedirs(workdir, 0o755, exist_ok=True)
        os.chdir(workdir)
    except OSError as exc:
        raise Failure("setup", f"working directory {workdir} is not usable in the rootfs: {exc.strerror}") from None
    _drop_privileges(spec, pivoted, lifeline)
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    argv, env = spec["argv"], spec["env"]
    status.say(STARTED)
    try:
        _execvpe(argv, env)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise Failure("exec", f"executable {argv[0]!r} not found in the rootfs (PATH={env.get('PATH', '')})") from None
        raise Failure("exec", f"cannot run {argv[0]!r}: {exc.strerror}") from None


def _execvpe(argv: list[str], env: dict[str, str]) -> None:
    """os.execvpe's search of $PATH (the step's) for a name without a slash, without os.get_exec_path:
    that imports `warnings`, and no module is reachable after pivot_root (`RUN ["npm", "ci"]`)."""
    name = argv[0]
    if "/" in name:
        os.execve(name, argv, env)
    refused: OSError | None = None   # found but not runnable (EACCES, ENOEXEC): said over "not found"
    missing: OSError = FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)
    for folder in env.get("PATH", "").split(":"):
        try:
            os.execve(os.path.join(folder or ".", name), argv, env)
        except (FileNotFoundError, NotADirectoryError) as exc:
            missing = exc
        except OSError as exc:
            refused = refused or exc
    raise refused or missing


def _drop_privileges(spec: dict, pivoted: bool, lifeline: int) -> None:
    try:
        L.drop_capabilities(L.DEFAULT_CAPS if pivoted else L.CHROOTED_RUN_CAPS)
        L.clear_inheritable_and_ambient()
    except OSError as exc:
        raise Failure("setup", f"cannot drop capabilities for the RUN step: {exc}") from None
    try:
        if spec["mode"] != "rootless":   # a user namespace mapping one id denies setgroups
            os.setgroups(spec["groups"])
        os.setgid(spec["gid"])
        os.setuid(spec["uid"])
    except OSError as exc:
        raise Failure("setup", f"cannot switch to user {spec['uid']}:{spec['gid']}: {exc.strerror}"
                      + (" (rootless builds map only your own uid; run as root for other USERs)"
                         if spec["mode"] == "rootless" else "")) from None
    L.die_with_parent()   # a uid change disarmed it
    if _orphaned(lifeline):
        os._exit(137)
    L.prctl(L.PR_SET_NO_NEW_PRIVS, 1, what="PR_SET_NO_NEW_PRIVS")
    program = seccomp.program()
    if program is not None:
        L.set_seccomp(seccomp.encode(program), len(program))


def _inside(root: str, path: str) -> str:
    """`path` (absolute inside the rootfs) on the host side of the rootfs `root`."""
    return root.rstrip("/") + path


def _setup(spec: dict, network_ready) -> bool:
    """Mount what the RUN needs and enter the rootfs; False when only a chroot holds it (no pivot_root).
    `network_ready()` returns once the launcher has plugged the network namespace in."""
    L.mount(None, "/", None, L.MS_REC | L.MS_PRIVATE)
    ov = spec["overlay"]
    if ov:
        root = ov["merged"]
        try:
            _mount_overlay(ov["lowers"], ov["upper"], ov["work"], ov["userxattr"], root, L.MOUNT_ATTR_NOSUID
                           | L.MOUNT_ATTR_NODEV)
        except OSError as exc:
            raise Failure("overlay", exc.strerror or str(exc)) from None
    else:
        root = spec["root"]
        L.mount(root, root, None, L.MS_BIND | L.MS_REC)
        _restrict(root, L.MS_NOSUID | L.MS_NODEV)
    system = spec["system"]   # /proc, /dev, /sys as resolved inside the rootfs
    proc = _inside(root, system["proc"])
    L.mount("proc", proc, "proc", L.MS_NOSUID | L.MS_NODEV | L.MS_NOEXEC)
    dev = _inside(root, system["dev"])
    L.mount("tmpfs", dev, "tmpfs", L.MS_NOSUID | L.MS_NOEXEC | L.MS_NODEV, "mode=755,size=65536k")
    for name in DEVICES:
        path = f"{dev}/{name}"
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o666))
        L.mount(f"/dev/{name}", path, None, L.MS_BIND)
        _restrict(path, L.MS_NOSUID | L.MS_NOEXEC)
    os.mkdir(f"{dev}/pts")
    try:
        L.mount("devpts", f"{dev}/pts", "devpts", L.MS_NOSUID | L.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620")
        os.symlink("pts/ptmx", f"{dev}/ptmx")
    except OSError:
        pass  # no pseudo-terminals in this sandbox: RUN steps have no tty anyway
    os.mkdir(f"{dev}/shm")
    L.mount("shm", f"{dev}/shm", "tmpfs", L.MS_NOSUID | L.MS_NODEV | L.MS_NOEXEC, "mode=1777,size=65536k")
    for i, name in enumerate(("stdin", "stdout", "stderr")):
        os.symlink(f"/proc/self/fd/{i}", f"{dev}/{name}")
    os.symlink("/proc/self/fd", f"{dev}/fd")
    sys_dir = _inside(root, system["sys"])
    ro = L.MS_RDONLY | L.MS_NOSUID | L.MS_NODEV | L.MS_NOEXEC
    try:
        L.mount("sysfs", sys_dir, "sysfs", ro)
    except OSError:   # a network namespace we don't own (shared with the host or the pod)
        L.mount("/sys", sys_dir, None, L.MS_BIND | L.MS_REC)
        _restrict(sys_dir, ro, recursive=True)
    _mask(root)
    for source, target in ((spec["hosts"], spec["etc_hosts"]), (spec["resolv"], spec["etc_resolv"])):
        path = _inside(root, target)
        L.mount(source, path, None, L.MS_BIND)
        _restrict(path, L.MS_NOSUID | L.MS_NODEV | L.MS_NOEXEC)
    for m in spec["mounts"]:
        _mount_one(m, _inside(root, m["target"]))
    socket.sethostname(spec["hostname"])
    network_ready()
    _network(spec["network"])
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


def _mount_overlay(lowers: list[str], upper: str | None, work: str | None, userxattr: bool, target: str,
                   attrs: int) -> None:
    """An overlay at `target`: of a layered rootfs' layer dirs through the new mount API (any number
    of them); of one plain rootfs dir through mount(2), as before Linux 6.8."""
    if len(lowers) == 1 and upper is not None:
        redirect = "userxattr,redirect_dir=nofollow" if userxattr else "redirect_dir=off"
        flags = (L.MS_NOSUID if attrs & L.MOUNT_ATTR_NOSUID else 0) | (L.MS_NODEV if attrs & L.MOUNT_ATTR_NODEV else 0)
        L.mount("overlay", target, "overlay", flags,
                f"lowerdir={lowers[0]},upperdir={upper},workdir={work},{redirect},metacopy=off,index=off")
        return
    if len(lowers) == 1:   # one read-only layer: the dir itself
        L.mount(lowers[0], target, None, L.MS_BIND)
        L.set_mount_attrs(target, attrs)
        return
    fd = L.overlay(lowers, upper, work, userxattr=userxattr, attrs=attrs)
    try:
        L.attach(fd, target)
    finally:
        os.close(fd)


def _restrict(path: str, ms_flags: int, *, recursive: bool = False) -> None:
    """Add nosuid/nodev/noexec/rdonly to the mount at `path`, keeping its other (maybe locked) flags."""
    attrs = sum(attr for ms, attr in ((L.MS_RDONLY, L.MOUNT_ATTR_RDONLY), (L.MS_NOSUID, L.MOUNT_ATTR_NOSUID),
                                      (L.MS_NODEV, L.MOUNT_ATTR_NODEV), (L.MS_NOEXEC, L.MOUNT_ATTR_NOEXEC))
                if ms_flags & ms)
    try:
        L.set_mount_attrs(path, attrs, recursive=recursive)
    except OSError as exc:
        if exc.errno != errno.ENOSYS:
            raise
        L.mount(None, path, None, L.MS_REMOUNT | L.MS_BIND | ms_flags | L.mount_flags(path))   # before 5.12


def _mask(root: str) -> None:
    for path in MASKED:
        host = _inside(root, path)
        try:
            is_dir = os.path.isdir(host)
            if not os.path.lexists(host):
                continue
            if is_dir:
                L.mount("tmpfs", host, "tmpfs", L.MS_RDONLY | L.MS_NOSUID | L.MS_NODEV | L.MS_NOEXEC, "size=0")
            else:
                L.mount("/dev/null", host, None, L.MS_BIND)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                raise
    for path in READ_ONLY:
        host = _inside(root, path)
        if os.path.lexists(host):
            L.mount(host, host, None, L.MS_BIND | L.MS_REC)
            _restrict(host, L.MS_RDONLY | L.MS_NOSUID | L.MS_NODEV | L.MS_NOEXEC, recursive=True)


def _mount_one(m: dict, target: str) -> None:
    nosuid_nodev = L.MS_NOSUID | L.MS_NODEV
    if m.get("layers"):   # a read-only bind out of a layered stage: its layers mounted here first
        _mount_overlay(m["layers"], None, None, m["userxattr"], m["at"], L.MOUNT_ATTR_RDONLY | L.MOUNT_ATTR_NOSUID
                       | L.MOUNT_ATTR_NODEV)
        L.mount(m["at"] + m["path"], target, None, L.MS_BIND | L.MS_REC)   # resolved by kade, no symlink left
        _restrict(target, L.MS_RDONLY | nosuid_nodev, recursive=True)
        return
    if m["type"] == "tmpfs":
        L.mount("tmpfs", target, "tmpfs", nosuid_nodev, f"mode=1777,size={m['size']}" if m["size"] else "mode=1777")
        return
    if m["type"] == "secret":
        staging = m["staging"]
        if not os.path.ismount(staging):
            L.mount("tmpfs", staging, "tmpfs", nosuid_nodev, "mode=700,size=16m")
        source = f"{staging}/{m['name']}"
        fd = os.open(source, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, binascii.a2b_base64(m["data"]))
            os.fchown(fd, m["uid"], m["gid"])
            os.fchmod(fd, m["mode"])
        finally:
            os.close(fd)
        L.mount(source, target, None, L.MS_BIND)
        _restrict(target, L.MS_RDONLY | nosuid_nodev)   # not noexec: a `RUN <<EOF` script runs from here
        return
    L.mount(m["source"], target, None, L.MS_BIND | L.MS_REC)
    _restrict(target, nosuid_nodev | (L.MS_RDONLY if m["readonly"] else 0), recursive=True)


# ---------------------------------------------------------------------------------------- network

_SIOCGIFFLAGS, _SIOCSIFFLAGS, _SIOCSIFADDR, _SIOCSIFNETMASK, _SIOCADDRT = 0x8913, 0x8914, 0x8916, 0x891C, 0x890B


def _ifreq_addr(name: str, address: str) -> bytes:
    return struct.pack("16sH2s4s8s16x", name.encode(), socket.AF_INET, b"", socket.inet_aton(address), b"")


def _set_up(s: socket.socket, name: str) -> None:
    ifreq = struct.pack("16sH22x", name.encode(), 0)
    flags = struct.unpack_from("16sH", fcntl.ioctl(s, _SIOCGIFFLAGS, ifreq))[1]
    fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sH22x", name.encode(), flags | 0x1))


def _network(net: dict) -> None:
    """Loopback up in a new network namespace; eth0 addressed, up and routed in a private one."""

    if net["mode"] == "shared":
        return
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        _set_up(s, "lo")
        if net["mode"] != "private":
            return
        prefix = net["prefix"]
        mask = socket.inet_ntoa(((0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF).to_bytes(4, "big"))
        fcntl.ioctl(s, _SIOCSIFADDR, _ifreq_addr("eth0", net["address"]))
        fcntl.ioctl(s, _SIOCSIFNETMASK, _ifreq_addr("eth0", mask))
        _set_up(s, "eth0")

        class SockaddrIn(ctypes.Structure):
            _fields_ = [("family", ctypes.c_ushort), ("port", ctypes.c_ushort), ("addr", ctypes.c_ubyte * 4),
                        ("zero", ctypes.c_ubyte * 8)]

        class Rtentry(ctypes.Structure):
            _fields_ = [("pad1", ctypes.c_ulong), ("dst", SockaddrIn), ("gateway", SockaddrIn),
                        ("genmask", SockaddrIn), ("flags", ctypes.c_ushort), ("pad2", ctypes.c_short),
                        ("pad3", ctypes.c_ulong), ("pad4", ctypes.c_void_p), ("metric", ctypes.c_short),
                        ("dev", ctypes.c_char_p), ("mtu", ctypes.c_ulong), ("window", ctypes.c_ulong),
                        ("irtt", ctypes.c_ushort)]

        route = Rtentry()
        route.dst.family = route.genmask.family = route.gateway.family = socket.AF_INET
        route.gateway.addr[:] = list(socket.inet_aton(net["gateway"]))
        route.flags = 0x1 | 0x2   # RTF_UP | RTF_GATEWAY
        fcntl.ioctl(s, _SIOCADDRT, bytes(route))
