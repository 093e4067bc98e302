"""The seccomp filter of a RUN step: the system calls Docker's default profile (moby
profiles/seccomp/default.json) refuses to a container without CAP_SYS_ADMIN and the other
capabilities a RUN never holds, as a classic BPF program (a pure function, table-tested).

Unlike Docker's profile this is a deny list (what is not listed is allowed), with two guards that keep
it from going stale: a system call numbered above the newest one known here gets ENOSYS (as Docker
does for clone3; libc then falls back to an older call), and x32 calls on x86_64 get ENOSYS. A
32-bit (i386) process on x86_64 meets the same list under its own numbers; any other architecture
is killed. The refusals return EPERM, as Docker's do.
"""
from __future__ import annotations

import errno
import os
import struct

# Why each call is refused (the kernel would refuse most of them anyway to a RUN, which holds none of
# the capabilities they need; the filter closes the bugs behind those checks too).
DENIED: dict[str, str] = {
    "kexec_load": "load a new kernel", "kexec_file_load": "load a new kernel",
    "init_module": "load a kernel module", "finit_module": "load a kernel module",
    "delete_module": "unload a kernel module", "create_module": "obsolete module call",
    "query_module": "obsolete module call", "get_kernel_syms": "obsolete module call",
    "bpf": "load BPF programs into the kernel", "perf_event_open": "profile the host (kernel addresses)",
    "fanotify_init": "watch every file system of the host", "lookup_dcookie": "profiling internals",
    "keyctl": "the kernel keyring is not namespaced", "add_key": "the kernel keyring is not namespaced",
    "request_key": "the kernel keyring is not namespaced",
    "open_by_handle_at": "open any inode of a file system by handle (the 'shocker' escape)",
    "userfaultfd": "a tool for kernel race exploits",
    "mount": "change mounts", "umount": "change mounts", "umount2": "change mounts",
    "pivot_root": "change the root", "move_mount": "change mounts", "open_tree": "change mounts",
    "open_tree_attr": "change mounts", "fsopen": "change mounts", "fsconfig": "change mounts",
    "fsmount": "change mounts", "fspick": "change mounts", "mount_setattr": "change mounts",
    "setns": "enter another namespace",
    "reboot": "reboot the host", "swapon": "change the host's swap", "swapoff": "change the host's swap",
    "acct": "process accounting of the host",
    "settimeofday": "set the host's clock", "clock_settime": "set the host's clock",
    "clock_settime64": "set the host's clock", "stime": "set the host's clock",
    "clock_adjtime": "adjust the host's clock", "clock_adjtime64": "adjust the host's clock",
    "iopl": "raw I/O ports", "ioperm": "raw I/O ports", "vm86": "virtual 8086 mode", "vm86old": "virtual 8086 mode",
    "uselib": "obsolete", "ustat": "obsolete", "sysfs": "obsolete", "_sysctl": "obsolete", "nfsservctl": "obsolete",
    "bdflush": "obsolete",
    "quotactl": "file system quotas of the host", "quotactl_fd": "file system quotas of the host",
    "vhangup": "hang up the host's terminals", "syslog": "read or clear the kernel log",
    "sethostname": "the hostname is kade's", "setdomainname": "the hostname is kade's",
    "io_uring_setup": "io_uring bypasses this filter", "io_uring_enter": "io_uring bypasses this filter",
    "io_uring_register": "io_uring bypasses this filter",
    "kcmp": "compare other processes' kernel objects", "process_madvise": "act on other processes' memory",
    "migrate_pages": "move other processes' memory", "move_pages": "move other processes' memory",
}
# RUN may clone and unshare, but never into a new namespace (a user namespace would hand it every
# capability again, inside it); clone3 hides its flags in memory a filter can't read: ENOSYS makes libc
# fall back to clone. personality: only the values Docker allows (no ADDR_NO_RANDOMIZE & co.).
ARG_CHECKED = ("clone", "unshare", "clone3", "personality")
CLONE_NAMESPACES = 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000 | 0x00020000
UNSHARE_NAMESPACES = CLONE_NAMESPACES | 0x80   # + CLONE_NEWTIME (for clone, 0x80 is the exit signal)
PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)

# System call numbers (from the kernel's unistd headers): x86_64, i386 (compat on x86_64), and the
# generic table arm64 uses; None where the architecture lacks the call.
_TABLE: dict[str, tuple[int | None, int | None, int | None]] = {   # name: (x86_64, i386, arm64)
    "_sysctl": (156, 149, None), "acct": (163, 51, 89), "add_key": (248, 286, 217), "bdflush": (None, 134, None),
    "bpf": (321, 357, 280), "clock_adjtime": (305, 343, 266), "clock_adjtime64": (None, 405, None),
    "clock_settime": (227, 264, 112), "clock_settime64": (None, 404, None), "clone": (56, 120, 220),
    "clone3": (435, 435, 435), "create_module": (174, 127, None), "delete_module": (176, 129, 106),
    "fanotify_init": (300, 338, 262), "finit_module": (313, 350, 273), "fsconfig": (431, 431, 431),
    "fsmount": (432, 432, 432), "fsopen": (430, 430, 430), "fspick": (433, 433, 433),
    "get_kernel_syms": (177, 130, None), "init_module": (175, 128, 105), "io_uring_enter": (426, 426, 426),
    "io_uring_register": (427, 427, 427), "io_uring_setup": (425, 425, 425), "ioperm": (173, 101, None),
    "iopl": (172, 110, None), "kcmp": (312, 349, 272), "kexec_file_load": (320, None, 294),
    "kexec_load": (246, 283, 104), "keyctl": (250, 288, 219), "lookup_dcookie": (212, 253, 18),
    "migrate_pages": (256, 294, 238), "mount": (165, 21, 40), "mount_setattr": (442, 442, 442),
    "move_mount": (429, 429, 429), "move_pages": (279, 317, 239), "nfsservctl": (180, 169, 42),
    "open_by_handle_at": (304, 342, 265), "open_tree": (428, 428, 428), "open_tree_attr": (467, 467, 467),
    "perf_event_open": (298, 336, 241), "personality": (135, 136, 92), "pivot_root": (155, 217, 41),
    "process_madvise": (440, 440, 440), "query_module": (178, 167, None), "quotactl": (179, 131, 60),
    "quotactl_fd": (443, 443, 443), "reboot": (169, 88, 142), "request_key": (249, 287, 218),
    "setdomainname": (171, 121, 162), "sethostname": (170, 74, 161), "setns": (308, 346, 268),
    "settimeofday": (164, 79, 170), "stime": (None, 25, None), "swapoff": (168, 115, 225),
    "swapon": (167, 87, 224), "sysfs": (139, 135, None), "syslog": (103, 103, 116), "umount": (None, 22, None),
    "umount2": (166, 52, 39), "unshare": (272, 310, 97), "uselib": (134, 86, None), "userfaultfd": (323, 374, 282),
    "ustat": (136, 62, None), "vhangup": (153, 111, 58), "vm86": (None, 166, None), "vm86old": (None, 113, None),
}
_NUMBERS: dict[str, dict[str, int]] = {arch: {name: num for name, nums in _TABLE.items() for num in (nums[i],) if num is not None}
                                    for i, arch in enumerate(("x86_64", "i386", "aarch64"))}
# The newest system call known here (file_setattr, Linux 6.17): anything above gets ENOSYS.
LAST_KNOWN = 469
AUDIT_ARCH = {"x86_64": 0xC000003E, "i386": 0x40000003, "aarch64": 0xC00000B7}
# The architectures a process can use on each machine (64-bit x86 runs i386 code too).
MACHINE_ARCHES = {"x86_64": ("x86_64", "i386"), "aarch64": ("aarch64",)}
X32_SYSCALL_BIT = 0x40000000

# classic BPF
_LD_ABS_W, _JEQ, _JGE, _JGT, _JSET, _RET = 0x20, 0x15, 0x35, 0x25, 0x45, 0x06
RET_ALLOW = 0x7FFF0000
RET_KILL_PROCESS = 0x80000000
_OFF_NR, _OFF_ARCH, _OFF_ARG0 = 0, 4, 16   # struct seccomp_data (arg0's low 32 bits, little endian)


def ret_errno(code: int) -> int:
    return 0x00050000 | code


Insn = tuple[int, int, int, int]   # code, jt, jf, k


def _arch_block(arch: str) -> list[Insn]:
    """The checks for one architecture; every path ends in a return."""
    nums = _NUMBERS[arch]
    out: list[Insn] = [(_LD_ABS_W, 0, 0, _OFF_NR)]
    if arch == "x86_64":
        out += [(_JGE, 0, 1, X32_SYSCALL_BIT), (_RET, 0, 0, ret_errno(errno.ENOSYS))]
    out += [(_JGT, 0, 1, LAST_KNOWN), (_RET, 0, 0, ret_errno(errno.ENOSYS))]
    for name in sorted(DENIED):
        if name in nums:
            out += [(_JEQ, 0, 1, nums[name]), (_RET, 0, 0, ret_errno(errno.EPERM))]
    out += [(_JEQ, 0, 1, nums["clone3"]), (_RET, 0, 0, ret_errno(errno.ENOSYS))]
    for name, mask in (("clone", CLONE_NAMESPACES), ("unshare", UNSHARE_NAMESPACES)):
        out += [(_JEQ, 0, 4, nums[name]), (_LD_ABS_W, 0, 0, _OFF_ARG0), (_JSET, 0, 1, mask),
                (_RET, 0, 0, ret_errno(errno.EPERM)), (_RET, 0, 0, RET_ALLOW)]
    allowed = len(PERSONALITIES)
    out += [(_JEQ, 0, allowed + 3, nums["personality"]), (_LD_ABS_W, 0, 0, _OFF_ARG0)]
    out += [(_JEQ, allowed - i, 0, value) for i, value in enumerate(PERSONALITIES)]
    out += [(_RET, 0, 0, ret_errno(errno.EPERM)), (_RET, 0, 0, RET_ALLOW)]
    out.append((_RET, 0, 0, RET_ALLOW))
    return out


def program(machine: str | None = None) -> list[Insn] | None:
    """The filter for this machine (or `machine`), or None where kade has no table for it."""
    arches = MACHINE_ARCHES.get(machine or os.uname().machine)
    if arches is None:
        return None
    blocks = [_arch_block(a) for a in arches]
    out: list[Insn] = [(_LD_ABS_W, 0, 0, _OFF_ARCH)]
    # one dispatch jump per architecture, then a kill for any other, then the blocks in order
    for i, arch in enumerate(arches):
        to_block = (len(arches) - i - 1) + 1 + sum(len(b) for b in blocks[:i])   # the jumps left, the kill
        out.append((_JEQ, to_block, 0, AUDIT_ARCH[arch]))
    out.append((_RET, 0, 0, RET_KILL_PROCESS))
    for block in blocks:
        out += block
    for _code, jt, jf, _k in out:
        if jt > 255 or jf > 255:
            raise AssertionError("a seccomp jump is too long")   # the layout above keeps them short
    return out


def encode(insns: list[Insn]) -> bytes:
    """struct sock_filter[] as the kernel reads it."""
    return b"".join(struct.pack("=HBBI", code, jt, jf, k) for code, jt, jf, k in insns)


def run(insns: list[Insn], nr: int, arch: int, arg0: int = 0) -> int:
    """Interpret the program on one system call (for tests and to explain a verdict)."""
    data = struct.pack("=iIQ6Q", nr, arch, 0, arg0, 0, 0, 0, 0, 0)
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        if code == _LD_ABS_W:
            acc = struct.unpack_from("=I", data, k)[0]
        elif code == _RET:
            return k
        else:
            taken = {_JEQ: acc == k, _JGE: acc >= k, _JGT: acc > k, _JSET: bool(acc & k)}[code]
            pc += jt if taken else jf
        pc += 1


def number(name: str, arch: str) -> int | None:
    return _NUMBERS[arch].get(name)
