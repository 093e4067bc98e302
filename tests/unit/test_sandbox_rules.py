"""The pure rules of RUN isolation, table-tested: the seccomp program (interpreted), subordinate id
ranges, the RUN network's resolv.conf, firewall rules and veth commands."""
import errno
import ipaddress
import re
from pathlib import Path

import pytest

from builder import seccomp
from builder.netns import BRIDGE, firewall_rules, resolv_conf
from builder.sandbox_init import veth_batch
from builder.subids import DEFAULT_BASE, DEFAULT_SLOTS, IdRange, candidates, parse_subids

X86, I386, ARM64 = (seccomp.AUDIT_ARCH[a] for a in ("x86_64", "i386", "aarch64"))
EPERM, ENOSYS = seccomp.ret_errno(errno.EPERM), seccomp.ret_errno(errno.ENOSYS)
NS = {"user": 0x10000000, "mount": 0x20000, "net": 0x40000000, "pid": 0x20000000, "uts": 0x04000000,
      "ipc": 0x08000000, "cgroup": 0x02000000}


@pytest.fixture(scope="module")
def x86():
    return seccomp.program("x86_64")


@pytest.mark.parametrize("arch", ["x86_64", "i386", "aarch64"])
def test_every_denied_call_is_refused_on_every_architecture(arch):
    program = seccomp.program("aarch64" if arch == "aarch64" else "x86_64")
    for name in seccomp.DENIED:
        nr = seccomp.number(name, arch)
        if nr is not None:
            assert seccomp.run(program, nr, seccomp.AUDIT_ARCH[arch]) == EPERM, name


@pytest.mark.parametrize("name,arch,arg0,verdict", [
    ("clone", "x86_64", 0x11, seccomp.RET_ALLOW),                       # fork: SIGCHLD only
    ("clone", "x86_64", 0x003D0F00, seccomp.RET_ALLOW),                 # pthread_create's flags
    ("clone", "x86_64", NS["user"] | 0x11, EPERM),
    ("clone", "i386", NS["mount"] | 0x11, EPERM),
    ("clone", "x86_64", 0x80 | 0x11, seccomp.RET_ALLOW),                # 0x80 is an exit signal bit for clone
    ("unshare", "x86_64", 0x400, seccomp.RET_ALLOW),                    # CLONE_FILES
    ("unshare", "x86_64", 0x80, EPERM),                                 # CLONE_NEWTIME
    ("clone3", "x86_64", 0, ENOSYS),
    ("personality", "x86_64", 0, seccomp.RET_ALLOW),
    ("personality", "x86_64", 0xFFFFFFFF, seccomp.RET_ALLOW),           # a query
    ("personality", "x86_64", 0x0040000, EPERM),                        # ADDR_NO_RANDOMIZE
    ("personality", "aarch64", 0x0040000, EPERM),
])
def test_argument_checks(name, arch, arg0, verdict):
    program = seccomp.program("aarch64" if arch == "aarch64" else "x86_64")
    assert seccomp.run(program, seccomp.number(name, arch), seccomp.AUDIT_ARCH[arch], arg0) == verdict


@pytest.mark.parametrize("ns", sorted(NS))
def test_no_namespace_flag_passes_clone_or_unshare(x86, ns):
    for name in ("clone", "unshare"):
        assert seccomp.run(x86, seccomp.number(name, "x86_64"), X86, NS[ns] | 0x11) == EPERM


@pytest.mark.parametrize("nr,arch,verdict", [
    (0, X86, seccomp.RET_ALLOW),                        # read
    (59, X86, seccomp.RET_ALLOW),                       # execve
    (101, X86, seccomp.RET_ALLOW),                      # ptrace (confined by the PID namespace)
    (seccomp.LAST_KNOWN + 1, X86, ENOSYS),              # a call newer than the table
    (0x40000000 | 1, X86, ENOSYS),                      # x32
    (3, I386, seccomp.RET_ALLOW),                       # i386 read
    (63, ARM64, seccomp.RET_KILL_PROCESS),              # an arm64 call on an x86_64 machine's filter
])
def test_other_calls(x86, nr, arch, verdict):
    assert seccomp.run(x86, nr, arch) == verdict


def test_unknown_machine_has_no_filter():
    assert seccomp.program("riscv64") is None
    assert len(seccomp.encode(seccomp.program("x86_64"))) == 8 * len(seccomp.program("x86_64"))


@pytest.mark.parametrize("header,arch", [("/usr/include/x86_64-linux-gnu/asm/unistd_64.h", "x86_64"),
                                         ("/usr/include/x86_64-linux-gnu/asm/unistd_32.h", "i386"),
                                         ("/usr/include/asm-generic/unistd.h", "aarch64")])
def test_numbers_match_the_kernel_headers(header, arch):
    """An independent source for the table: the kernel's own headers (where installed)."""
    path = Path(header)
    if not path.exists():
        pytest.skip(f"{header} is not installed")
    found = {m.group(2): int(m.group(3)) for m in
             re.finditer(r"#define __NR(3264)?_(\w+)\s+(\d+)", path.read_text())}
    checked = 0
    for name in list(seccomp.DENIED) + list(seccomp.ARG_CHECKED):
        ours = seccomp.number(name, arch)
        if ours is not None and (name in found or ours <= max(found.values())):   # else newer than the headers
            assert ours == found.get(name), name
            checked += 1
        elif name in found:   # the generic table lists 32-bit-only time calls that arm64 lacks
            assert arch == "aarch64" and name.endswith("64"), f"{name} is missing from the {arch} table"
    assert checked > 30


# -- subordinate id ranges ------------------------------------------------------------------------

@pytest.mark.parametrize("subuid,subgid,names,expected", [
    ("root:100000:65536\n", "root:100000:65536\n", {"root", "0"}, [IdRange(100000, 100000)]),
    ("0:200000:131072\n", "root:300000:131072\n", {"root", "0"},
     [IdRange(200000, 300000), IdRange(265536, 365536)]),
    ("root:100000:65535\n", "root:100000:65535\n", {"root", "0"}, None),   # too small: the default pool
    ("# comment\nbad line\nalice:100000:65536\n", "", {"root", "0"}, None),
])
def test_candidate_ranges(subuid, subgid, names, expected):
    got = candidates(subuid, subgid, names)
    if expected is None:
        assert got[0] == IdRange(DEFAULT_BASE, DEFAULT_BASE) and len(got) == DEFAULT_SLOTS
    else:
        assert got == expected


def test_default_pool_skips_slots_other_users_hold():
    taken = f"bob:{DEFAULT_BASE + 10}:5\n"
    got = candidates(taken, "", {"root"})
    assert IdRange(DEFAULT_BASE, DEFAULT_BASE) not in got and len(got) == DEFAULT_SLOTS - 1
    assert parse_subids("a:1:2\nb:x:3\n") == [("a", 1, 2)]


# -- network ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("host,upstream,servers,warns", [
    ("nameserver 10.255.255.53\n", None, ["10.255.255.53"], False),
    ("nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch corp\n", "nameserver 192.0.2.53\n",
     ["192.0.2.53"], False),                                         # systemd-resolved: its upstream
    ("nameserver 127.0.0.1\nnameserver fd00::1\n", None, [], True),  # nothing a RUN can reach
    ("nameserver 1.1.1.1\nnameserver ::1\nnameserver fe80::1%eth0\n", None, ["1.1.1.1"], False),
])
def test_resolv_conf(host, upstream, servers, warns):
    text, warning = resolv_conf(host, upstream)
    assert [line.split()[1] for line in text.splitlines() if line.startswith("nameserver")] == servers
    assert (warning is not None) == warns
    if "search corp" in host:
        assert "search corp" in text and "options edns0 trust-ad" in text


def test_firewall_rules():
    rules = firewall_rules(ipaddress.IPv4Network("10.89.0.0/24"), "eth0")
    lines = rules.splitlines()
    assert lines.index("*mangle") < lines.index("*filter") < lines.index("*nat")
    assert "-A KADE-RUN-IN -j DROP" in lines                                  # nothing reaches the host
    assert f"-A KADE-RUN-FWD -i {BRIDGE} -o eth0 -d 169.254.0.0/16 -j DROP" in lines
    assert f"-A KADE-RUN-FWD -i {BRIDGE} -o eth0 -s 10.89.0.0/24 -j RETURN" in lines
    assert lines.index(f"-A KADE-RUN-FWD -i {BRIDGE} -j DROP") > lines.index(
        f"-A KADE-RUN-FWD -i {BRIDGE} -o eth0 -s 10.89.0.0/24 -j RETURN")    # only out of the uplink
    assert "-A KADE-RUN-NAT -s 10.89.0.0/24 -o eth0 -j MASQUERADE" in lines
    assert rules.count("COMMIT") == 3


def test_veth_batch_replaces_a_stale_veth_and_isolates_the_port():
    batch = veth_batch({"veth": "kv7", "mtu": 1400, "bridge": BRIDGE}, 4242).splitlines()
    assert batch[0] == "link del kv7"
    assert batch[1] == "link add kv7 mtu 1400 type veth peer name eth0 mtu 1400 netns 4242"
    assert "link set dev kv7 type bridge_slave isolated on" in batch
