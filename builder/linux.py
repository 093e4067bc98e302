"""Thin ctypes wrappers for the Linux syscalls Python 3.11 lacks: mount, umount2, pivot_root."""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import re

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
PR_CAPBSET_DROP = 24

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

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def _b(value: str | bytes | os.PathLike[str] | None) -> bytes | None:
    if value is None:
        return None
    return os.fsencode(value)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source: str | None, target: str | os.PathLike[str], fstype: str | None = None, flags: int = 0,
          data: str | None = None) -> None:
    _check(_libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)),
           f"mount {source or fstype} on {os.fspath(target)}")


def umount(target: str | os.PathLike[str], flags: int = 0) -> None:
    _check(_libc.umount2(_b(target), flags), f"umount {os.fspath(target)}")


def mount_points(mountinfo: str) -> list[str]:
    """The mount points listed in a /proc/<pid>/mountinfo text (field 5, octal escapes decoded)."""
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
    number = _SYS_PIVOT_ROOT.get(platform.machine())
    if number is None:
        raise OSError(f"pivot_root: unknown syscall number on {platform.machine()}")
    _check(_libc.syscall(number, _b(new_root), _b(put_old)), "pivot_root")
