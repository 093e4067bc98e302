"""RUN's own network (host side): a private network namespace per RUN with outbound access through
NAT, like Docker's default bridge, and nothing else.

- A bridge `kaderun0` holds the gateway address (10.89.0.1/24 by default; `$KADE_RUN_SUBNET` picks
  another /24..../16). Each RUN gets a veth pair: `kv<N>` on the bridge, `eth0` in the RUN's
  namespace with 10.89.0.<N>, slot N taken with a lock file (flock: freed however kade ends). Bridge
  ports are isolated from each other (two RUNs never talk), IPv6 is off on the host's side.
- Packets from the bridge leave only through the interface of the host's default route, masqueraded
  (the firewall rules live in iptables' `mangle` table, which runs before the `filter` table, so a
  firewall or kube-proxy that accepts in `filter` can't let anything past them): the host's own
  addresses (loopback, eth0's, a cluster bridge's) get nothing from a RUN, nor does any network that
  is routed through another interface (a cluster's pod and service ranges), nor link-local addresses
  (cloud metadata services).
- (The sandbox's launcher plugs each RUN in: builder/sandbox_init.py.)
- The rules and the bridge are set up once per kade process, idempotently (iptables-restore with
  `--noflush` replaces kade's own chains in one transaction), so state left by a killed kade is
  taken over; a veth disappears with its namespace when the RUN's processes are gone. What the
  kernel lists as in place is left alone: the bridge when it is up with its address, kade's chains
  when iptables-save lists them exactly as after the last setup (recorded in /run/kade/net), each
  jump when listed (2 calls, ~10 ms measured, where ~10 with a 26 ms iptables-restore took 61-79 ms).
- DNS: the host's resolv.conf, minus loopback servers (a RUN can't reach the host's 127.0.0.53);
  when only loopback servers are listed (systemd-resolved), the upstream servers systemd-resolved
  itself uses (/run/systemd/resolve/resolv.conf).
"""
from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

BRIDGE = "kaderun0"
SUBNET_ENV = "KADE_RUN_SUBNET"
DEFAULT_SUBNET = "10.89.0.0/24"
LOCK_DIR = Path("/run/kade/net")
LINK_LOCAL = "169.254.0.0/16"
_CHAIN_IN, _CHAIN_FWD, _CHAIN_ACCEPT, _CHAIN_NAT = "KADE-RUN-IN", "KADE-RUN-FWD", "KADE-RUN-ACCEPT", "KADE-RUN-NAT"
_OWN_CHAINS = {_CHAIN_IN, _CHAIN_FWD, _CHAIN_ACCEPT, _CHAIN_NAT}


class NetworkError(Exception):
    pass


@dataclass(frozen=True)
class Uplink:
    interface: str   # the default route's interface
    mtu: int


@dataclass(frozen=True)
class Lease:
    """One RUN's place on the bridge (the lock fd keeps it while the RUN lives)."""
    veth: str
    address: str
    prefix: int
    gateway: str
    mtu: int
    fd: int

    def release(self) -> None:
        os.close(self.fd)

    def spec(self) -> dict:
        return {"veth": self.veth, "address": self.address, "prefix": self.prefix, "gateway": self.gateway,
                "mtu": self.mtu, "bridge": BRIDGE}


def subnet() -> ipaddress.IPv4Network:
    text = os.environ.get(SUBNET_ENV, "").strip() or DEFAULT_SUBNET
    try:
        net = ipaddress.IPv4Network(text)
    except ValueError:
        raise NetworkError(f"${SUBNET_ENV}={text!r} is not an IPv4 network (e.g. 10.89.0.0/24)") from None
    if not 16 <= net.prefixlen <= 28:
        raise NetworkError(f"${SUBNET_ENV}={text}: use a prefix between /16 and /28")
    return net


def firewall_rules(net: ipaddress.IPv4Network, uplink: str) -> str:
    """The iptables-restore input for kade's chains (pure; replaced whole on every setup)."""
    b = BRIDGE
    return "\n".join([
        "*mangle",
        f":{_CHAIN_IN} - [0:0]",
        f":{_CHAIN_FWD} - [0:0]",
        f"-A {_CHAIN_IN} -j DROP",   # nothing from a RUN reaches the host itself
        f"-A {_CHAIN_FWD} -i {b} -o {uplink} -d {LINK_LOCAL} -j DROP",
        f"-A {_CHAIN_FWD} -i {b} -o {uplink} -s {net} -j RETURN",
        f"-A {_CHAIN_FWD} -i {b} -j DROP",
        f"-A {_CHAIN_FWD} -o {b} -i {uplink} -d {net} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
        f"-A {_CHAIN_FWD} -o {b} -j DROP",
        "COMMIT",
        "*filter",   # what mangle let through, accepted even where FORWARD's policy is DROP (Docker hosts)
        f":{_CHAIN_ACCEPT} - [0:0]",
        f"-A {_CHAIN_ACCEPT} -i {b} -o {uplink} -j ACCEPT",
        f"-A {_CHAIN_ACCEPT} -o {b} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        "COMMIT",
        "*nat",
        f":{_CHAIN_NAT} - [0:0]",
        f"-A {_CHAIN_NAT} -s {net} -o {uplink} -j MASQUERADE",
        "COMMIT",
        "",
    ])


# (table, chain, rule) jumps into kade's chains, each inserted first once (kept when present)
JUMPS = (
    ("mangle", "INPUT", ["-i", BRIDGE, "-j", _CHAIN_IN]),
    ("mangle", "FORWARD", ["-i", BRIDGE, "-j", _CHAIN_FWD]),
    ("mangle", "FORWARD", ["-o", BRIDGE, "-j", _CHAIN_FWD]),
    ("filter", "FORWARD", ["-j", _CHAIN_ACCEPT]),
    ("nat", "POSTROUTING", ["-j", _CHAIN_NAT]),
)


def resolv_conf(host_text: str, upstream_text: str | None) -> tuple[str, str | None]:
    """(resolv.conf for a RUN, a warning or None): the host's file without loopback or IPv6
    nameservers (a RUN has neither), or systemd-resolved's upstream servers when nothing else is left."""
    def split(text: str) -> tuple[list[str], list[str]]:
        servers, other = [], []
        for line in text.splitlines():
            words = line.split()
            if not words or words[0].startswith(("#", ";")):
                continue
            if words[0] == "nameserver" and len(words) > 1:
                try:
                    ip = ipaddress.ip_address(words[1].split("%")[0])
                except ValueError:
                    continue
                if ip.version == 4 and not ip.is_loopback and not ip.is_link_local:
                    servers.append(words[1])
            else:
                other.append(line.strip())
        return servers, other

    servers, other = split(host_text)
    if not servers and upstream_text:
        servers, _ = split(upstream_text)
    warning = None
    if not servers:
        warning = ("the host's resolv.conf names no nameserver a RUN can reach (only loopback or IPv6 ones): "
                   "RUN steps have no DNS; list an upstream server in /etc/resolv.conf")
    lines = [f"nameserver {s}" for s in servers] + [o for o in other if o.split()[0] in ("search", "domain", "options")]
    return "\n".join(lines) + "\n", warning


def host_resolv_conf() -> tuple[str, str | None]:
    def read(path: str) -> str | None:
        try:
            return Path(path).read_text()
        except OSError:
            return None
    return resolv_conf(read("/etc/resolv.conf") or "", read("/run/systemd/resolve/resolv.conf"))


def _run(argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60)


def _routes() -> list[str]:
    """The host's IPv4 routes (main table), one per line."""
    return _run(["ip", "-4", "-o", "route", "show"]).stdout.splitlines()


def uplink(routes: list[str]) -> Uplink:
    """The interface of the first default route."""
    for line in routes:
        words = line.split()
        if words[:1] == ["default"] and "dev" in words[:-1]:
            name = words[words.index("dev") + 1]
            break
    else:
        raise NetworkError("the host has no IPv4 default route: RUN steps would have no network; "
                           "use RUN --network=none")
    try:
        mtu = int(Path(f"/sys/class/net/{name}/mtu").read_text())
    except (OSError, ValueError):
        mtu = 1500
    return Uplink(name, mtu)


def missing_jumps(saved: str) -> list[tuple[str, str, list[str]]]:
    """The JUMPS that `iptables-save` output does not show (pure). Only an exact line counts as present;
    whatever this reports missing is checked with `iptables -C` before anything is added."""
    tables: dict[str, set[str]] = {}
    current: set[str] = set()
    for line in saved.splitlines():
        if line.startswith("*"):
            current = tables.setdefault(line[1:].strip(), set())
        elif line.startswith("-A "):
            current.add(" ".join(line.split()))
    return [(table, chain, rule) for table, chain, rule in JUMPS
            if " ".join(["-A", chain, *rule]) not in tables.get(table, set())]


def _bridge_up() -> bool:
    try:
        return int(Path(f"/sys/class/net/{BRIDGE}/flags").read_text(), 16) & 0x1 == 1   # IFF_UP
    except (OSError, ValueError):
        return False


def _write_sysctl(path: str, value: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError:
        pass   # e.g. IPv6 compiled out: nothing to turn off


_setup_lock = threading.Lock()
_ready: Uplink | None = None


def check_subnet(net: ipaddress.IPv4Network, routes: list[str]) -> None:
    """Refuse a subnet that overlaps a route of the host's (other than kade's bridge's own)."""
    for line in routes:
        words = line.split()
        if not words or words[0] == "default" or "dev" not in words or words[words.index("dev") + 1] == BRIDGE:
            continue
        try:
            route = ipaddress.IPv4Network(words[0], strict=False)
        except ValueError:
            continue
        if route.overlaps(net):
            raise NetworkError(f"RUN's network {net} overlaps the host's route {line.strip()}; "
                               f"set ${SUBNET_ENV} to a free range (e.g. 10.90.0.0/24)")


def ensure_bridge(report=None) -> Uplink:
    """The bridge, its address and the firewall rules, set up once per process (idempotent; what
    is in place already, as listed by the kernel, is left as it is)."""
    global _ready
    with _setup_lock:
        if _ready is not None:
            return _ready
        for tool in ("ip", "iptables", "iptables-restore"):
            if shutil.which(tool) is None:
                raise NetworkError(f"RUN's private network needs `{tool}` (iproute2, iptables); install it, or "
                                   "use RUN --network=none")
        net = subnet()
        routes = _routes()
        check_subnet(net, routes)
        up = uplink(routes)
        LOCK_DIR.mkdir(parents=True, exist_ok=True)
        with open(LOCK_DIR / "setup.lock", "w") as lock:   # one kade at a time changes the shared state
            fcntl.flock(lock, fcntl.LOCK_EX)
            _bridge(net, routes)
            if Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() != "1":
                _write_sysctl("/proc/sys/net/ipv4/ip_forward", "1")
                if report:
                    report("warning", "turned on IPv4 forwarding (net.ipv4.ip_forward=1) for RUN's NAT network")
            _firewall(firewall_rules(net, up.interface))
        _ready = up
        return up


def has_gateway(net: ipaddress.IPv4Network, routes: list[str]) -> bool:
    """Whether the bridge is up with the gateway address: the kernel's route for it is listed (pure)."""
    want, gateway = [str(net), "dev", BRIDGE], str(net.network_address + 1)
    for line in routes:
        words = line.split()
        if words[:3] == want and "src" in words[:-1] and words[words.index("src") + 1] == gateway:
            return True
    return False


def _bridge(net: ipaddress.IPv4Network, routes: list[str]) -> None:
    if not _bridge_up():
        _run(["ip", "-force", "-batch", "-"], f"link add {BRIDGE} type bridge\nlink set {BRIDGE} up\n")
    _write_sysctl(f"/proc/sys/net/ipv6/conf/{BRIDGE}/disable_ipv6", "1")
    if not has_gateway(net, routes):
        gateway = f"{net.network_address + 1}/{net.prefixlen}"
        done = _run(["ip", "addr", "replace", gateway, "dev", BRIDGE])
        if done.returncode != 0:
            raise NetworkError(f"cannot give {BRIDGE} the address {gateway}: {done.stderr.strip()}")


def _firewall(rules: str) -> None:
    """kade's chains replaced whole (one transaction) unless the kernel lists them as the last setup
    left them; then the jumps into them, each added where missing."""
    saved = _iptables_save()
    record = LOCK_DIR / "rules.listing"
    stamp = hashlib.sha256(rules.encode()).hexdigest() + "\n"
    listed = own_chains(saved)
    if not listed or _read(record) != stamp + listed:
        done = _run(["iptables-restore", "-w", "--noflush"], rules)
        if done.returncode != 0:
            raise NetworkError(f"cannot install RUN's firewall rules: {done.stderr.strip()}")
        saved = _iptables_save()
        try:
            record.write_text(stamp + own_chains(saved))
        except OSError:
            pass   # only a shortcut for the next kade: it replaces the chains again
    for table, chain, rule in missing_jumps(saved):   # one listing, not one check per rule
        if _run(["iptables", "-w", "-t", table, "-C", chain, *rule]).returncode != 0:
            done = _run(["iptables", "-w", "-t", table, "-I", chain, "1", *rule])
            if done.returncode != 0:
                raise NetworkError(f"cannot add an iptables rule to {table}/{chain}: {done.stderr.strip()}")


def _iptables_save() -> str:
    """The kernel's rules as iptables-save lists them ("" without the tool: then nothing counts as in place)."""
    if shutil.which("iptables-save") is None:
        return ""
    done = _run(["iptables-save"])
    return done.stdout if done.returncode == 0 else ""


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def own_chains(saved: str) -> str:
    """kade's chains' rules in an iptables-save listing, by table, in order (pure)."""
    out, table = [], ""
    for line in saved.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        elif line.startswith("-A ") and line.split()[1] in _OWN_CHAINS:
            out.append(f"{table} {' '.join(line.split())}")
    return "\n".join(out)


def lease(up: Uplink) -> Lease:
    """A free slot on the bridge for one RUN."""
    net = subnet()
    hosts = list(net.hosts())[1:]   # the first is the gateway
    for i, address in enumerate(hosts):
        fd = os.open(LOCK_DIR / f"slot-{i}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return Lease(f"kv{i}", str(address), net.prefixlen, str(net.network_address + 1), up.mtu, fd)
    raise NetworkError(f"all {len(hosts)} addresses of RUN's network {net} are in use by running RUN steps; "
                       f"set ${SUBNET_ENV} to a larger range")
