"""Hostile RUN steps on the local backend (issue #12): each case is a Dockerfile whose RUN tries to
reach something of the build host, built by `kade build` as root, and a canary it must not reach
(a host file with a secret, an empty host directory, a listener on every host address, the host's
/proc/sys values, the host's process table). The table runs with the default user namespace and
again with `--userns host`: the /proc, mount, device, seccomp and network rules hold in both.
Pods have their twin in tests/cluster/test_isolation_pods.py.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from builder.cache import LocalCache
from builder.linux import DEFAULT_CAPS
from tests.fixtures.canary import assert_secret_absent
from tests.fixtures.isolation import cluster_addresses, host_addresses

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="RUN isolation is tested as root (as CI runs)")

DENIED = ("keyctl", "add_key", "bpf", "perf_event_open", "open_by_handle_at", "userfaultfd", "kexec_load",
          "init_module", "reboot", "swapon", "acct", "clock_settime", "io_uring_setup", "personality-noaslr",
          "syslog", "sethostname", "mount", "umount2", "pivot_root", "open_tree", "fsopen", "setns",
          "unshare-newuser", "unshare-newnet", "clone-newuser", "clone-newns")
ALLOWED = ("getpid", "fork", "unshare-files", "personality-query", "ptrace-traceme")
DEFAULT_CAP_MASK = f"{sum(1 << c for c in DEFAULT_CAPS):016x}"


@dataclass
class Built:
    code: int
    records: list[dict]
    stderr: str
    stdout: str

    def output(self) -> list[str]:
        """The RUN steps' output lines, in order."""
        return [r["message"] for r in self.records if r["kind"] == "output"]

    def messages(self) -> str:
        return "\n".join(r.get("message", "") for r in self.records) + self.stderr


@pytest.fixture
def build(kade_build, probe_base, tmp_path):
    """build(RUN lines, *flags, context_files={}) -> Built, FROM the probe image, cache in tmp_path."""
    cache = tmp_path / "cache"

    def run(body: str, *flags: str, prepare=None) -> Built:
        ctx = tmp_path / f"ctx{len(list(tmp_path.glob('ctx*')))}"
        ctx.mkdir()
        (ctx / "Dockerfile").write_text(f"FROM {probe_base.ref}\n{body}\n")
        if prepare is not None:
            prepare(ctx, LocalCache(cache))
        done = kade_build(str(ctx), "--cache-dir", str(cache), "--insecure-registry", probe_base.ref.split("/")[0],
                          "--output", "json", *flags)
        records = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
        return Built(done.code, records, done.stderr, done.stdout)

    return run


@dataclass(frozen=True)
class Case:
    id: str
    run: str
    expect: list[str] | None = None        # the exact output lines
    check: object = None                   # or a function of (lines) -> None
    modes: tuple[str, ...] = ("auto", "host")
    flags: tuple[str, ...] = field(default=())


def _writes(lines: list[str]) -> None:
    assert lines == ["refused /proc/sys/vm/drop_caches", "refused /proc/sys/kernel/core_pattern",
                     "refused /proc/sysrq-trigger"], lines


def _masked(lines: list[str]) -> None:
    assert lines and all(line.endswith(" 0") for line in lines), lines


def _status(lines: list[str]) -> None:
    status = dict(line.split(":\t", 1) for line in lines)
    assert status["CapInh"] == status["CapAmb"] == "0" * 16, status
    assert status["CapBnd"] == status["CapEff"] == status["CapPrm"] == DEFAULT_CAP_MASK, status
    assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2", status


def _syscalls(lines: list[str]) -> None:
    verdicts = dict(line.split(": ", 1) for line in lines)
    assert {n: verdicts[n] for n in DENIED} == {n: "EPERM" for n in DENIED}
    assert verdicts["clone3"] == "ENOSYS"   # libc falls back to clone, whose flags the filter reads
    assert {n: verdicts[n] for n in ALLOWED} == {n: "ok" for n in ALLOWED}


def _pid_namespace(lines: list[str]) -> None:
    assert lines[0] == "1" and int(lines[1]) <= 4, lines   # PID 1, and nothing of the host's processes


def _own_root(lines: list[str]) -> None:
    inside, outside, count = lines[0].split()
    assert (inside, count) == ("0", "65536") and int(outside) >= 65536, lines   # root here is nobody there
    assert lines[1:] == ["0", "0:0"], lines


CASES = [
    Case("proc-sys-writes", "RUN for f in /proc/sys/vm/drop_caches:1 /proc/sys/kernel/core_pattern:'|/bin/pwned' "
                            "/proc/sysrq-trigger:h; do p=${f%%:*}; if (echo \"${f#*:}\" > $p) 2>/dev/null; "
                            "then echo \"wrote $p\"; else echo \"refused $p\"; fi; done", check=_writes),
    Case("proc-masked-reads", "RUN for f in /proc/kcore /proc/keys /proc/timer_list /proc/sched_debug "
                              "/proc/latency_stats /proc/interrupts; do [ -e $f ] && echo \"$f $(head -c 64 $f "
                              "2>/dev/null | wc -c)\"; done; echo \"dirs $(find /proc/acpi /proc/scsi /sys/firmware "
                              "-mindepth 1 2>/dev/null | wc -l)\"", check=_masked),
    Case("proc-sys-and-sys-read-only", "RUN (echo x > /proc/sys/kernel/hostname) 2>/dev/null && echo wrote || "
                                       "echo refused; (echo x > /sys/kernel/uevent_helper) 2>/dev/null && "
                                       "echo wrote || echo refused", expect=["refused", "refused"]),
    Case("capabilities-nnp-seccomp", "RUN grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' "
                                     "/proc/self/status", check=_status),
    Case("seccomp-denied-syscalls", "RUN kade-probe " + " ".join(DENIED + ALLOWED + ("clone3",)), check=_syscalls),
    Case("nested-namespaces-and-mounts", "RUN unshare -U true 2>/dev/null && echo unshared || echo refused; "
                                         "mount -t tmpfs none /mnt 2>/dev/null && echo mounted || echo refused; "
                                         "umount /proc 2>/dev/null && echo unmounted || echo refused",
         expect=["refused", "refused", "refused"]),
    Case("pid-namespace", "RUN echo $$; ls -d /proc/[0-9]* | wc -l", check=_pid_namespace),
    Case("root-is-a-subordinate-uid", "RUN cat /proc/self/uid_map; id -u; touch /f; stat -c %u:%g /f",
         check=_own_root, modes=("auto",)),
    Case("network-none-is-loopback-only", "RUN --network=none ls /sys/class/net", expect=["lo"]),
    Case("default-network-is-private", "RUN ls /sys/class/net; ip -4 route | grep -c default",
         expect=["eth0", "lo", "1"]),
]


RUNS = [(case, userns) for case in CASES for userns in ("auto", "host") if userns in case.modes]


@pytest.mark.parametrize(("case", "userns"), RUNS, ids=[f"{c.id}-{u}" for c, u in RUNS])
def test_hostile_run(build, case, userns):
    core_pattern = Path("/proc/sys/kernel/core_pattern").read_text()
    done = build(case.run, "--userns", userns, *case.flags)
    assert done.code == 0, done.messages()[-3000:]
    lines = done.output()
    if case.expect is not None:
        assert lines == case.expect
    else:
        case.check(lines)   # type: ignore[operator]
    assert Path("/proc/sys/kernel/core_pattern").read_text() == core_pattern   # the host's, untouched


def test_userns_host_is_an_explicit_opt_out_that_says_why(build):
    done = build("RUN cat /proc/self/uid_map", "--userns", "host")
    assert done.code == 0, done.messages()[-2000:]
    assert done.output()[0].split() == ["0", "0", "4294967295"]   # host root: only because it was asked for
    warnings = [r["message"] for r in done.records if r["kind"] == "warning"]
    assert any("--userns host" in w and "root" in w and "trust" in w for w in warnings), warnings


def test_no_host_address_is_reachable(build, all_addresses_listener, loopback_listener):
    """A listener on every host address (0.0.0.0) and one on 127.0.0.1: a RUN tries the host's every
    IPv4 address, its RUN bridge gateway and the test cluster's API server; nothing connects."""
    port = all_addresses_listener.port
    targets = [(a, port) for a in host_addresses()] + [("10.89.0.1", port), ("127.0.0.1", loopback_listener.port)]
    targets += cluster_addresses()
    probes = "; ".join(f"nc -w 2 {a} {p} </dev/null >/dev/null 2>&1 && echo 'reached {a}:{p}' || "
                       f"echo 'blocked {a}:{p}'" for a, p in targets)
    done = build(f"RUN {probes}")
    assert done.code == 0, done.messages()[-2000:]
    assert done.output() == [f"blocked {a}:{p}" for a, p in targets]
    assert all_addresses_listener.connections == [] and loopback_listener.connections == []


def test_outbound_traffic_and_dns_work_through_nat(build):
    if subprocess.run(["getent", "hosts", "deb.debian.org"], capture_output=True).returncode != 0:
        pytest.skip("this host resolves no public name")
    done = build("RUN nslookup deb.debian.org >/dev/null && echo resolved; "
                 "nc -w 10 deb.debian.org 80 </dev/null && echo connected")
    assert done.code == 0, done.messages()[-2000:]
    assert done.output() == ["resolved", "connected"]


def test_network_host_needs_the_build_flag(build, all_addresses_listener):
    run = f"RUN --network=host nc -w 2 127.0.0.1 {all_addresses_listener.port} </dev/null && echo reached"
    refused = build(run)
    assert refused.code != 0
    error = refused.messages()
    assert "Dockerfile:2" in error and "--network=host" in error and "--allow-host-network" in error
    assert all_addresses_listener.connections == []
    allowed = build(run, "--allow-host-network")
    assert allowed.code == 0, allowed.messages()[-2000:]
    assert allowed.output() == ["kade-canary-listener", "reached"]


def test_host_files_stay_out_of_reach(build, host_secret, empty_host_dir):
    """The secret file and the empty directory exist on the host; inside the RUN their paths lead
    into the rootfs (writes land in the image, never on the host), and the secret is in no output."""
    done = build(f"RUN cat {host_secret.path} /proc/1/root{host_secret.path} 2>&1; "
                 f"mkdir -p {empty_host_dir.path} && echo x > {empty_host_dir.path}/pwned && echo wrote-in-rootfs")
    assert done.code == 0, done.messages()[-2000:]
    assert done.output()[-1] == "wrote-in-rootfs"
    assert_secret_absent(host_secret, done.stderr, done.stdout)
    empty_host_dir.assert_empty()


def _devices(ctx: Path, cache: LocalCache) -> None:
    os.mknod(cache.mount_dir("devices") / "null", 0o666 | 0o020000, os.makedev(1, 3))
    os.mknod(ctx / "null", 0o666 | 0o020000, os.makedev(1, 3))


def test_device_nodes_in_cache_and_bind_mounts_cannot_be_used(build):
    """A character device (host /dev/null's numbers) in a cache dir and in the context: opening it
    from a RUN fails (the mounts are nodev), and a RUN can't make one."""
    done = build("RUN --mount=type=cache,id=devices,target=/c --mount=type=bind,target=/ctx "
                 "for d in /c/null /ctx/null; do (echo x > $d) 2>/dev/null && echo \"opened $d\" || "
                 "echo \"refused $d\"; done; mknod /c/made c 1 3 2>/dev/null && echo made || echo mknod-refused; "
                 "grep -E ' /(c|ctx) ' /proc/mounts | grep -c nosuid,nodev", prepare=_devices)
    assert done.code == 0, done.messages()[-2000:]
    assert done.output() == ["refused /c/null", "refused /ctx/null", "mknod-refused", "2"]


def test_another_builds_cache_is_out_of_reach(build, host_secret):
    def other_cache(_ctx: Path, cache: LocalCache) -> None:
        (cache.mount_dir("another-build") / "token").write_bytes(host_secret.value)

    done = build("RUN --mount=type=cache,id=mine,target=/c ls -a /c; cat /c/../*/token 2>/dev/null; "
                 "find / -name token -xdev 2>/dev/null | wc -l", prepare=other_cache)
    assert done.code == 0, done.messages()[-2000:]
    assert done.output() == [".", "..", "0"]
    assert_secret_absent(host_secret, done.stderr, done.stdout)


def _marker() -> str:
    return f"32.{os.getpid() % 1000 + 1000}{int(time.time() * 1000) % 1000}"


def test_no_process_outlives_its_run(build):
    """A daemon holding the output pipe, one detached with setsid, one that ignores SIGTERM: all gone
    when the step ends, and the step ends when its command does."""
    marker = _marker()
    started = time.monotonic()
    done = build(f"RUN sleep {marker} & (setsid sleep {marker} </dev/null >/dev/null 2>&1 &); "
                 f"(trap '' TERM HUP INT; sleep {marker}) & echo left-running")
    assert done.code == 0, done.messages()[-2000:]
    assert done.output() == ["left-running"]
    assert time.monotonic() - started < 25
    found = subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True, text=True).stdout
    assert found == "", found


def test_run_processes_are_an_unprivileged_uid_on_the_host(kade_build, probe_base, tmp_path):
    """Seen from the host while the RUN runs: its processes belong to the subordinate range."""
    marker = _marker()
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {probe_base.ref}\nRUN sleep {marker}\n")
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-m", "kade", "build", str(ctx), "--cache-dir", str(tmp_path / "c"),
                             "--insecure-registry", probe_base.ref.split("/")[0]],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(repo)})
    try:
        deadline = time.monotonic() + 120
        pids: list[str] = []
        while not pids and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            pids = subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True, text=True).stdout.split()
        assert pids, proc.stderr.read() if proc.poll() is not None else "the RUN never started"
        for pid in pids:
            status = Path(f"/proc/{pid}/status").read_text()
            uids = [int(u) for u in next(x for x in status.splitlines() if x.startswith("Uid:")).split()[1:]]
            assert min(uids) >= 65536, status
            assert Path(f"/proc/{pid}/uid_map").read_text().split()[1] == str(uids[0])
    finally:
        proc.kill()
        proc.wait()
    time.sleep(0.5)   # the sandbox dies with kade (parent-death signals)
    assert subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True, text=True).stdout == ""


LAYERS = """\
RUN mkdir -p /d/sub /opq && echo a > /d/f && chown 42:43 /d/f && chmod 4755 /d/f && ln -s f /d/link && \\
    ln /d/f /d/hard && rm /etc/group && touch /opq/x && chown 1000:1000 /d/sub && chmod 1777 /d/sub
RUN rm -rf /opq && mkdir /opq && echo y > /opq/y && chown -R 65534:65534 /opq && rm /d/link
USER app
RUN echo mine > /tmp/app-file && mkdir /tmp/app-dir
"""


def test_layers_are_the_same_with_and_without_the_user_namespace(kade_build, registry, probe_base, tmp_path,
                                                                 monkeypatch):
    """The image's own uids stay on disk: a RUN's layer is byte-identical whether root in the RUN is
    host root (--userns host) or a subordinate uid (idmapped rootfs, overlay inside the sandbox)."""
    from tests.fixtures.canary import image_files, registry_get

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {probe_base.ref}\n{LAYERS}")
    layers = {}
    for userns in ("auto", "host"):
        tag = f"{registry.host}/isolation/layers-{userns}:1"
        done = kade_build(str(ctx), "--tag", tag, "--userns", userns, "--no-cache", "--cache-dir",
                          str(tmp_path / f"cache-{userns}"), "--output", "json")
        assert done.code == 0, done.stderr[-2000:]
        manifest = registry_get(f"http://{registry.host}", f"isolation/layers-{userns}", "manifests", "1").json()
        layers[userns] = [d["digest"] for d in manifest["layers"]]
    assert layers["auto"] == layers["host"] and len(layers["auto"]) == 5
    files = image_files(f"http://{registry.host}", "isolation/layers-auto", "1")
    owners = {name: (info.uid, info.gid, oct(info.mode)) for name, (info, _) in files.items()
              if name.startswith(("d/", "opq", "tmp/app"))}
    assert owners["d/f"] == (42, 43, "0o4755") and owners["d/sub"] == (1000, 1000, "0o1777")
    assert owners["opq/y"] == (65534, 65534, "0o644") and "opq/x" not in files
    assert owners["tmp/app-file"][:2] == owners["tmp/app-dir"][:2] == (1000, 1000)
    assert "etc/group" not in files and "d/link" not in files


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_to_kade_ends_every_process_of_the_run_within_2_s(probe_base, tmp_path, sig):
    """The RUN ignores SIGTERM/SIGINT and leaves a daemon and a setsid'd one: a signal to kade's process
    group (a terminal's Ctrl-C, a CI runner's SIGTERM) ends all of them within 2 s, and the next step
    never starts. (Exit codes, cleanup and the second signal are the CLI's: tests/integration/test_build_signals.py.)"""
    marker = _marker()
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        f"FROM {probe_base.ref}\nRUN trap '' TERM INT HUP; sleep {marker} & "
        f"(setsid sleep {marker} </dev/null >/dev/null 2>&1 &); echo started; sleep {marker}\n"
        f"RUN echo next-step-{marker}\n")
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-m", "kade", "build", str(ctx), "--cache-dir", str(tmp_path / "c"),
                             "--insecure-registry", probe_base.ref.split("/")[0], "--output", "json"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(repo)})
    try:
        seen = ""
        deadline = time.monotonic() + 120
        started = '"kind": "output", "message": "started"'   # (the step record names the command too)
        while started not in seen and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            seen += line
        assert started in seen, seen[-2000:]
        os.killpg(proc.pid, sig)
        sent = time.monotonic()
        left = "?"
        while time.monotonic() - sent < 2:
            left = subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True, text=True).stdout
            if not left:
                break
            time.sleep(0.05)
        assert left == "", f"still running 2 s after {sig.name}: {left}"
        _, rest = proc.communicate(timeout=30)
        assert f"next-step-{marker}" not in seen + rest
    finally:
        proc.kill()
        proc.wait()
        for pid in subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True, text=True).stdout.split():
            os.kill(int(pid), signal.SIGKILL)   # only if the test failed: what it started, by pid


def test_network_state_left_by_a_killed_kade_is_taken_over(build, all_addresses_listener, monkeypatch):
    """What a killed kade (or a reboot, or someone's flush) may leave: interfaces named like kade's
    veths, kade's jump rules gone. The next kade process takes the state over: the RUN gets its
    interface and the firewall is whole again before it runs."""
    from builder import netns

    stale = [f"kv{i}" for i in range(3)]
    for name in stale:
        subprocess.run(["ip", "link", "add", name, "type", "dummy"], capture_output=True)
    for table, chain, rule in netns.JUMPS:
        while subprocess.run(["iptables", "-w", "-t", table, "-D", chain, *rule], capture_output=True).returncode == 0:
            pass
    monkeypatch.setattr(netns, "_ready", None)   # a new kade process sets the network up again
    try:
        port = all_addresses_listener.port
        done = build("RUN " + "; ".join(f"nc -w 2 {a} {port} </dev/null >/dev/null 2>&1 && echo 'reached {a}' "
                                        f"|| echo 'blocked {a}'" for a in host_addresses()))
        assert done.code == 0, done.messages()[-2000:]
        assert done.output() == [f"blocked {a}" for a in host_addresses()]
        assert all_addresses_listener.connections == []
        for table, chain, rule in netns.JUMPS:
            assert subprocess.run(["iptables", "-w", "-t", table, "-C", chain, *rule]).returncode == 0
    finally:
        for name in stale:
            found = subprocess.run(["ip", "-o", "link", "show", name], capture_output=True, text=True).stdout
            if "dummy" in subprocess.run(["ip", "-d", "-o", "link", "show", name], capture_output=True,
                                         text=True).stdout and found:
                subprocess.run(["ip", "link", "del", name], capture_output=True)


@pytest.mark.parametrize("networks,isolation,prepared", [
    (["default"], {}, True),
    (["none", "host"], {}, False),             # no RUN on the bridge: nothing set up
    (["default"], {"network": "shared"}, False),
])
def test_the_bridge_is_set_up_in_the_background_before_the_first_run(monkeypatch, networks, isolation, prepared):
    """LocalExecutor.running() calls prepare_network with its RUN steps' --network values."""
    import threading

    from builder import netns, sandbox
    from builder.isolation import Isolation

    monkeypatch.setattr(netns, "_ready", None)
    sandbox.prepare_network(networks, Isolation(**isolation))
    for thread in threading.enumerate():
        if thread.name == "kade-net-setup":
            thread.join(60)
    assert (netns._ready is not None) is prepared


def test_a_changed_kade_chain_is_replaced_whole_by_the_next_kade(monkeypatch):
    """The setup skips iptables-restore when the kernel lists kade's chains as the last setup left
    them; a rule someone added to one of them is a difference, and the chains are replaced."""
    from builder import netns

    monkeypatch.setattr(netns, "_ready", None)
    netns.ensure_bridge()
    before = netns.own_chains(subprocess.run(["iptables-save"], capture_output=True, text=True).stdout)
    assert "KADE-RUN-FWD" in before
    added = ["-t", "mangle", "-I", "KADE-RUN-FWD", "1", "-i", netns.BRIDGE, "-j", "RETURN"]   # would let all through
    subprocess.run(["iptables", "-w", *added], check=True)
    try:
        monkeypatch.setattr(netns, "_ready", None)
        netns.ensure_bridge()
        after = netns.own_chains(subprocess.run(["iptables-save"], capture_output=True, text=True).stdout)
        assert after == before
    finally:
        subprocess.run(["iptables", "-w", "-t", "mangle", "-D", "KADE-RUN-FWD", "-i", netns.BRIDGE, "-j", "RETURN"],
                       capture_output=True)
