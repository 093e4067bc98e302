"""SSH agent forwarding for builder pods (`kade build --ssh default --backend kubernetes`).

The agent lives on the machine that runs the CLI; a RUN with `--mount=type=ssh` runs in a pod the
CLI can reach only through the API server. Three small hops carry each agent connection:

    RUN (chroot) --unix--> SocketProxy --unix--> PodAgentRelay --port-forward--> CLI --unix--> agent
                  socket in the rootfs            /work/ssh-agent.sock    127.0.0.1:<port> in the pod

- `SocketProxy` (chroot runner): a socket at the mount target inside the rootfs, for the step's
  duration only, that forwards each connection to an agent socket outside the chroot.
- `PodAgentRelay` (pod): an agent socket whose every connection is tunnelled to the CLI. It asks for
  a tunnel with a `ssh-tunnel` report record (id, port): the pod's stdout is the CLI's log stream,
  and RUN output reaches it only wrapped in `output` records, so a RUN can't forge a request. The
  CLI opens a port-forward to the port, sends the id, and splices it to its own agent
  (`serve_tunnel`). Unknown ids are dropped.
Keys never leave the agent; only the agent protocol crosses, as with `ssh -A`.
"""
from __future__ import annotations

import os
import secrets
import select
import socket
import threading
from pathlib import Path
from typing import Any, Callable

TUNNEL_KIND = "ssh-tunnel"
_ID_BYTES = 16
_WAIT_S = 30.0


def splice(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until either side closes; closes both."""
    try:
        while True:
            ready, _, _ = select.select([a, b], [], [])
            for src in ready:
                data = src.recv(65536)
                if not data:
                    return
                (b if src is a else a).sendall(data)
    except OSError:
        return
    finally:
        a.close()
        b.close()


def _serve(listener: socket.socket, handle: Callable[[socket.socket], None], stop: threading.Event) -> None:
    listener.settimeout(0.2)
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except socket.timeout:
            continue
        except OSError:
            return
        conn.settimeout(None)
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


class _Server:
    """A listening socket served by a thread; `close()` stops accepting (open connections run on)."""

    def __init__(self, listener: socket.socket, handle: Callable[[socket.socket], None]):
        self.listener = listener
        self._stop = threading.Event()
        self._thread = threading.Thread(target=_serve, args=(listener, handle, self._stop), daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.listener.close()

    def __enter__(self) -> "_Server":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _unix_listener(path: Path, mode: int = 0o600, uid: int = -1, gid: int = -1) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(os.fspath(path))
    os.chmod(path, mode)
    os.chown(path, uid, gid)  # -1 keeps the current owner or group
    sock.listen(16)
    return sock


class SocketProxy(_Server):
    """A unix socket at `path` forwarding every connection to the unix socket `upstream`."""

    def __init__(self, path: Path, upstream: str, *, mode: int = 0o600, uid: int = -1, gid: int = -1):
        self.path, self.upstream = path, upstream
        super().__init__(_unix_listener(path, mode, uid, gid), self._handle)

    def _handle(self, conn: socket.socket) -> None:
        up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            up.connect(self.upstream)
        except OSError:
            conn.close()
            up.close()
            return
        splice(conn, up)

    def close(self) -> None:
        super().close()
        self.path.unlink(missing_ok=True)


class PodAgentRelay:
    """In the pod: an agent socket at `path` whose connections are tunnelled to the CLI's agent."""

    def __init__(self, path: Path, report: Callable[..., None], wait_s: float = _WAIT_S):
        self.path, self.report, self.wait_s = path, report, wait_s
        self._pending: dict[bytes, tuple[socket.socket, threading.Event]] = {}
        self._lock = threading.Lock()
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.bind(("127.0.0.1", 0))  # reachable by port-forward, not from other pods
        tcp.listen(16)
        self.port = tcp.getsockname()[1]
        self._tunnels = _Server(tcp, self._tunnel)
        self._agents = _Server(_unix_listener(path), self._client)

    def _client(self, conn: socket.socket) -> None:
        ident = secrets.token_bytes(_ID_BYTES)
        paired = threading.Event()
        with self._lock:
            self._pending[ident] = (conn, paired)
        self.report(TUNNEL_KIND, "ssh agent connection: asking the CLI for a tunnel", id=ident.hex(), port=self.port)
        if not paired.wait(self.wait_s):
            with self._lock:
                unpaired = self._pending.pop(ident, None)
            if unpaired:  # (else a tunnel arrived just now and owns the connection)
                conn.close()
                self.report("warning", f"no ssh agent tunnel from the CLI within {self.wait_s:.0f}s: "
                                       "the RUN sees a closed agent")

    def _tunnel(self, conn: socket.socket) -> None:
        conn.settimeout(self.wait_s)
        try:
            ident = _recv_exact(conn, _ID_BYTES)
        except OSError:
            conn.close()
            return
        conn.settimeout(None)
        with self._lock:
            waiting = self._pending.pop(ident, None)
        if waiting is None:
            conn.close()
            return
        client, paired = waiting
        paired.set()
        splice(client, conn)

    def close(self) -> None:
        self._agents.close()
        self._tunnels.close()
        self.path.unlink(missing_ok=True)


def _recv_exact(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed early")
        data += chunk
    return data


def serve_tunnel(open_pod_socket: Callable[[int], Any], record: dict[str, Any], agent_socket: str) -> None:
    """In the CLI: answer one `ssh-tunnel` record: a socket to the pod's port (a port-forward), the id,
    then the bytes of the local agent both ways."""
    agent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    agent.connect(agent_socket)
    remote = open_pod_socket(int(record["port"]))
    remote.sendall(bytes.fromhex(str(record["id"])))
    splice(agent, remote)
