"""SSH agent forwarding for builder pods, on this host with a real ssh-agent: the chain a RUN's
agent connection takes (socket in the rootfs -> pod relay -> tunnel -> the CLI's agent), with a
plain TCP connection standing in for the port-forward (the cluster test uses the real one)."""
from __future__ import annotations

import os
import socket
import subprocess
import threading
from pathlib import Path

from builder.backends.agent_relay import TUNNEL_KIND, PodAgentRelay, SocketProxy, serve_tunnel
from tests.fixtures.ssh import KEY_COMMENT


def list_keys(sock: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["ssh-add", "-l"], env={**os.environ, "SSH_AUTH_SOCK": str(sock)}, capture_output=True,
                          text=True, timeout=20)


def cli_side(agent_sock: str, requests: list[dict]):
    """What the CLI does with the pod's `ssh-tunnel` records (TCP instead of a port-forward)."""
    def report(kind: str, message: str, **fields) -> None:
        if kind == TUNNEL_KIND:
            requests.append(fields)
            threading.Thread(target=serve_tunnel, daemon=True, args=(
                lambda port: socket.create_connection(("127.0.0.1", port)), fields, agent_sock)).start()
    return report


def test_a_run_lists_the_cli_agents_keys_through_proxy_relay_and_tunnel(ssh_agent, tmp_path):
    requests: list[dict] = []
    relay = PodAgentRelay(tmp_path / "relay.sock", cli_side(ssh_agent, requests))
    in_rootfs = tmp_path / "rootfs-agent.sock"
    try:
        with SocketProxy(in_rootfs, str(relay.path)):
            assert oct(in_rootfs.stat().st_mode & 0o777) == "0o600"
            first, second = list_keys(in_rootfs), list_keys(in_rootfs)
        assert not in_rootfs.exists()  # the proxy's socket is gone with the step
    finally:
        relay.close()
    assert first.returncode == 0 and KEY_COMMENT in first.stdout, first.stderr
    assert second.stdout == first.stdout
    assert len(requests) == 2 and requests[0]["id"] != requests[1]["id"]  # one tunnel per connection
    assert all(r["port"] == relay.port for r in requests)


def test_a_tunnel_with_an_unknown_id_gets_nothing(ssh_agent, tmp_path):
    relay = PodAgentRelay(tmp_path / "relay.sock", lambda *a, **k: None)
    try:
        with socket.create_connection(("127.0.0.1", relay.port), timeout=5) as s:
            s.sendall(os.urandom(16))
            assert s.recv(1) == b""  # closed: no waiting RUN connection has that id
    finally:
        relay.close()


def test_without_a_tunnel_the_run_sees_a_closed_agent_and_a_warning(tmp_path):
    said: list[tuple[str, str]] = []
    relay = PodAgentRelay(tmp_path / "relay.sock", lambda kind, message, **f: said.append((kind, message)),
                          wait_s=0.5)
    try:
        done = list_keys(relay.path)
    finally:
        relay.close()
    assert done.returncode != 0
    assert [k for k, _ in said] == [TUNNEL_KIND, "warning"] and "no ssh agent tunnel" in said[1][1]
