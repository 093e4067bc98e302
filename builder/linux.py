"""Thin ctypes wrappers for the Linux syscalls Python 3.11 lacks: mount, umount2, pivot_root, unshare,
the new mount API (open_tree, mount_setattr, move_mount: idmapped mounts; fsopen, fsconfig, fsmount:
overlays of many layers as detached mounts), prctl and capset."""
from __future__ import annotations

import ctypes
import os

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_RELATIME = 1 << 21
MNT_DETACH = 0x2
PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_SECCOMP = 22
PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
SECCOMP_MODE_FILTER = 2

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# the new mount API (Linux >= 5.12 for mount_setattr; the numbers are the same on every architecture)
_SYS_OPEN_TREE, _SYS_MOVE_MOUNT, _SYS_MOUNT_SETATTR = 428, 429, 442
_SYS_FSOPEN, _SYS_FSCONFIG, _SYS_FSMOUNT = 430, 431, 432
FSOPEN_CLOEXEC = FSMOUNT_CLOEXEC = 1
FSCONFIG_SET_FLAG, FSCONFIG_SET_STRING, FSCONFIG_SET_FD, FSCONFIG_CMD_CREATE = 0, 1, 5, 6
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = 0o2000000
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8
MOUNT_ATTR_IDMAP = 0x00100000

# statvfs f_flag bits -> the mount flags a bind remount must repeat (locked flags cannot be dropped)
_STATVFS_TO_MS = {os.ST_RDONLY: MS_RDONLY, os.ST_NOSUID: MS_NOSUID, os.ST_NODEV: MS_NODEV,
                  os.ST_NOEXEC: MS_NOEXEC, os.ST_NOATIME: MS_NOATIME, os.ST_NODIRATIME: MS_NODIRATIME,
                  os.ST_RELATIME: MS_RELATIME}

# Docker's default capability set: what a RUN step as root keeps (the rest, e.g. CAP_SYS_ADMIN,
# CAP_SYS_MODULE, CAP_SYS_RAWIO, CAP_SYS_BOOT, CAP_NET_ADMIN, leaves the bounding set).
DEFAULT_CAPS = frozenset({0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 29, 31})
CAP_SETPCAP = 8
CAP_SYS_CHROOT = 18
# What a RUN keeps when only a chroot holds it (no pivot_root): without these it can't chroot back out.
CHROOTED_RUN_CAPS = DEFAULT_CAPS - {CAP_SYS_CHROOT, CAP_SETPCAP}

_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "ppc64le": 203, "s390x": 217, "riscv64": 41}

def _load_libc() -> ctypes.CDLL:
    try:   # glibc's name: no find_library, which runs ldconfig (~40 ms on every RUN's sandbox start)
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        from ctypes.util import find_library
        return ctypes.CDLL(find_library("c") or "libc.so.6", use_errno=True)


_libc = _load_libc()
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.syscall.restype = ctypes.c_long
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64), ("propagation", ctypes.c_uint64),
                ("userns_fd", ctypes.c_uint64)]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _b(value: str | bytes | os.PathLike[str] | None) -> bytes | None:
    if value is None:
        return None
    return os.fsencode(value)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _check_fd(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def mount(source: str | None, target: str | os.PathLike[str], fstype: str | None = None, flags: int = 0,
          data: str | None = None) -> None:
    _check(_libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)),
           f"mount {source or fstype} on {os.fspath(target)}")


def umount(target: str | os.PathLike[str], flags: int = 0) -> None:
    _check(_libc.umount2(_b(target), flags), f"umount {os.fspath(target)}")


def mount_points(mountinfo: str) -> list[str]:
    """The mount points listed in a /proc/<pid>/mountinfo text (field 5, octal escapes decoded)."""
    import re   # here: the sandbox's init imports this module and starts faster without re

    points = []
    for line in mountinfo.splitlines():
        fields = line.split(" ")
        if len(fields) > 4:
            points.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4]))
    return points


def detach_mounts_under(path: str | os.PathLike[str]) -> list[str]:
    """Lazily unmount every mount at or below `path`, deepest first; returns their mount points. For a
    work dir whose RUN's overlay is still mounted (a cancelled build): a deleter never crosses mounts."""
    top = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo") as f:
            points = mount_points(f.read())
    except OSError:
        return []
    inside = sorted({p for p in points if p == top or p.startswith(top + "/")}, key=len, reverse=True)
    for point in inside:
        try:
            umount(point, MNT_DETACH)
        except OSError:
            pass  # gone meanwhile, or not ours to unmount: the deleter skips it as before
    return inside


def mount_flags(path: str | os.PathLike[str]) -> int:
    """The MS_* flags of the mount `path` is on (for a bind remount that keeps them)."""
    flags = os.statvfs(path).f_flag
    return sum(ms for st, ms in _STATVFS_TO_MS.items() if flags & st)


def last_capability() -> int:
    with open("/proc/sys/kernel/cap_last_cap") as f:
        return int(f.read())


def has_effective(cap: int) -> bool:
    """Whether this process holds capability `cap` in its effective set."""
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith("CapEff:"))
    return bool(int(line.split()[1], 16) >> cap & 1)


def drop_capabilities(keep: frozenset[int] = DEFAULT_CAPS, last: int | None = None) -> None:
    """Remove every capability but `keep` from this process's bounding set (inherited across exec).
    Needs CAP_SETPCAP; pass `last` (`last_capability()`) where /proc is not reachable, e.g. in a chroot."""
    for cap in range((last_capability() if last is None else last) + 1):
        if cap not in keep:
            _check(_libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"drop capability {cap}")


def pivot_root(new_root: str, put_old: str) -> None:
    number = _SYS_PIVOT_ROOT.get(os.uname().machine)
    if number is None:
        raise OSError(f"pivot_root: unknown syscall number on {os.uname().machine}")
    _check(_libc.syscall(number, _b(new_root), _b(put_old)), "pivot_root")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def prctl(option: int, arg2: int = 0, arg3: int = 0, what: str = "prctl") -> None:
    _check(_libc.prctl(option, arg2, arg3, 0, 0), what)


def die_with_parent(sig: int = 9) -> None:
    """Be sent `sig` (SIGKILL) when the parent thread dies (re-arm after a uid change: it resets it)."""
    prctl(PR_SET_PDEATHSIG, sig, what="PR_SET_PDEATHSIG")


def set_mount_attrs(path: str | os.PathLike[str], attrs: int, *, recursive: bool = False) -> None:
    """Add MOUNT_ATTR_* flags to the mount at `path`, keeping every other flag (unlike a remount)."""
    attr = _MountAttr(attrs, 0, 0, 0)
    _check(_libc.syscall(_SYS_MOUNT_SETATTR, AT_FDCWD, _b(path), AT_RECURSIVE if recursive else 0,
                         ctypes.byref(attr), ctypes.sizeof(attr)), f"mount_setattr {os.fspath(path)}")


def idmapped_bind(source: str | os.PathLike[str], dest: str | os.PathLike[str], userns_fd: int,
                  attrs: int = 0) -> None:
    """Bind-mount `source` onto `dest`, idmapped through the user namespace `userns_fd` (a file owned
    by uid N on disk shows as N inside that namespace), with MOUNT_ATTR_* `attrs` too. The filesystem
    must support idmapped mounts (ext4, xfs, btrfs, tmpfs >= 6.3; not overlayfs itself)."""
    where = os.fspath(source)
    fd = _check_fd(_libc.syscall(_SYS_OPEN_TREE, AT_FDCWD, _b(source), OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC),
                   f"open_tree {where}")
    try:
        attr = _MountAttr(MOUNT_ATTR_IDMAP | attrs, 0, 0, userns_fd)
        _check(_libc.syscall(_SYS_MOUNT_SETATTR, fd, b"", AT_EMPTY_PATH, ctypes.byref(attr), ctypes.sizeof(attr)),
               f"idmapped mount of {where}")
        _check(_libc.syscall(_SYS_MOVE_MOUNT, fd, b"", AT_FDCWD, _b(dest), MOVE_MOUNT_F_EMPTY_PATH),
               f"move_mount onto {os.fspath(dest)}")
    finally:
        os.close(fd)


def detached_bind(source: str | os.PathLike[str] | int, attrs: int = 0) -> int:
    """A bind mount of `source` (a path, or a directory fd) attached nowhere: an fd of its root, and the
    mount goes when the last fd of it closes (nothing to unmount, nothing left if the process dies)."""
    fd = _check_fd(_libc.syscall(_SYS_OPEN_TREE, source if isinstance(source, int) else AT_FDCWD,
                                 b"" if isinstance(source, int) else _b(source),
                                 OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | (AT_EMPTY_PATH if isinstance(source, int) else 0)),
                   f"open_tree {source}")
    if attrs:
        try:
            attr = _MountAttr(attrs, 0, 0, 0)
            _check(_libc.syscall(_SYS_MOUNT_SETATTR, fd, b"", AT_EMPTY_PATH, ctypes.byref(attr), ctypes.sizeof(attr)),
                   f"mount_setattr {source}")
        except BaseException:
            os.close(fd)
            raise
    return fd


def overlay(lowers: list[str], upper: str | None = None, work: str | None = None, *, userxattr: bool = False,
            attrs: int = 0) -> int:
    """An overlay of `lowers` (topmost first) with an optional upper/work dir, made with fsopen and
    fsconfig (each lower a `lowerdir+` of its own, Linux 6.8+, by fd where the kernel takes it (6.13+):
    no limit on option length or path length) and attached nowhere: the fd of its root. It is unmounted
    when the last fd of it closes, so a killed process leaves no mount behind. Redirects and metacopy
    off, no index: an upper dir always holds whole files and whole directories. `userxattr` keeps
    overlay's own marks in user.overlay.* (the only choice inside a user namespace)."""
    fs = _check_fd(_libc.syscall(_SYS_FSOPEN, b"overlay", FSOPEN_CLOEXEC), "fsopen overlay")
    try:
        _fsconfig(fs, FSCONFIG_SET_STRING, b"source", b"overlay", 0)
        for lower in lowers:
            _fsconfig_dir(fs, b"lowerdir+", lower)
        if upper is not None and work is not None:
            _fsconfig_dir(fs, b"upperdir", upper)
            _fsconfig_dir(fs, b"workdir", work)
        options = [(b"redirect_dir", b"nofollow" if userxattr else b"off"), (b"metacopy", b"off"), (b"index", b"off")]
        if userxattr:
            _fsconfig(fs, FSCONFIG_SET_FLAG, b"userxattr", None, 0)
        for key, value in options:
            _fsconfig(fs, FSCONFIG_SET_STRING, key, value, 0)
        _fsconfig(fs, FSCONFIG_CMD_CREATE, None, None, 0)
        return _check_fd(_libc.syscall(_SYS_FSMOUNT, fs, FSMOUNT_CLOEXEC, attrs), "fsmount overlay")
    finally:
        os.close(fs)


def _fsconfig(fs: int, cmd: int, key: bytes | None, value: bytes | None, aux: int) -> None:
    if _libc.syscall(_SYS_FSCONFIG, fs, cmd, key, value, aux) != 0:
        err = ctypes.get_errno()
        detail = _fs_log(fs)
        raise OSError(err, f"overlay option {os.fsdecode(key or b'create')}: {os.strerror(err)}"
                           + (f" ({detail})" if detail else ""))


def _fsconfig_dir(fs: int, key: bytes, path: str) -> None:
    """A directory option by fd (Linux 6.13+), else by path (each path at most 255 bytes)."""
    fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _libc.syscall(_SYS_FSCONFIG, fs, FSCONFIG_SET_FD, key, None, fd) == 0:
            return
    finally:
        os.close(fd)
    _fsconfig(fs, FSCONFIG_SET_STRING, key, _b(path), 0)


def _fs_log(fs: int) -> str:
    """The filesystem context's error messages (read from the fsopen fd), if any."""
    lines = []
    while True:
        try:
            msg = os.read(fs, 512)
        except OSError:
            break
        if not msg:
            break
        lines.append(msg.decode(errors="replace").strip())
    return "; ".join(lines[-3:])


def attach(mount_fd: int, target: str | os.PathLike[str]) -> None:
    """Attach a detached mount (from `overlay` or `detached_bind`) at `target`."""
    _check(_libc.syscall(_SYS_MOVE_MOUNT, mount_fd, b"", AT_FDCWD, _b(target), MOVE_MOUNT_F_EMPTY_PATH),
           f"move_mount onto {os.fspath(target)}")


def clear_inheritable_and_ambient() -> None:
    """Empty the inheritable and ambient capability sets (the bounding set alone does not stop a
    capability from passing through exec when it is inheritable or ambient)."""
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, what="clear ambient capabilities")
    header = _CapHeader(0x20080522, 0)   # _LINUX_CAPABILITY_VERSION_3: two 32-bit words
    data = (_CapData * 2)()
    _check(_libc.capget(ctypes.byref(header), data), "capget")
    for word in data:
        word.inheritable = 0
    _check(_libc.capset(ctypes.byref(header), data), "capset")


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def set_seccomp(program: bytes, count: int) -> None:
    """Install a seccomp filter (classic BPF, `count` instructions); needs no_new_privs or CAP_SYS_ADMIN."""
    buf = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(count, ctypes.cast(buf, ctypes.c_void_p))
    _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(prog), 0, 0), "seccomp filter")


def become_subreaper() -> None:
    """Orphans among this process's descendants become its children (not init's), so it can end them."""
    prctl(PR_SET_CHILD_SUBREAPER, 1, what="PR_SET_CHILD_SUBREAPER")


def children(pid: int | None = None) -> set[int]:
    """The pids whose parent is `pid` (this process by default), from /proc/*/stat."""
    me = os.getpid() if pid is None else pid
    found = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()   # after "(comm)", which may hold spaces
        if len(fields) > 1 and int(fields[1]) == me:
            found.add(int(name))
    return found


def kill_children_except(keep: set[int], rounds: int = 100) -> int:
    """SIGKILL and reap every child of this process not in `keep`, again and again while new ones
    appear (a subreaper adopts the orphans of those it kills). Returns how many were killed."""
    import signal

    killed = 0
    for _ in range(rounds):
        doomed = children() - keep
        if not doomed:
            break
        for pid in doomed:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
        for pid in doomed:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
    return killed
