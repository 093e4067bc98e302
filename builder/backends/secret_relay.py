"""The build's `--secret` values, from the CLI to a builder pod, without a Kubernetes Secret.

A per-build Secret would need the identity running `kade build` to create and delete Secrets in the
builds namespace, and RBAC can't narrow `create` to some names (the name isn't known when the
request is authorised). So nothing is stored: the pod, before its first step, listens on a loopback
port (reachable only by a port-forward: the identity needs `pods/portforward`, as for `--ssh`) and
asks for the values with a `secrets-request` record (a random id and the port) on its log stream,
which RUN output reaches only inside `output` records. The CLI opens a port-forward, sends the id,
then the values; the pod keeps them in memory, closes the port and starts the steps. The values
cross the API server's port-forward stream (TLS), never etcd, a pod spec or a log.

Wire format, CLI to pod: the 16-byte id, a 4-byte big-endian length, that many bytes of JSON
`{"<hex of the secret id>": "<base64 value>", ...}`; the pod answers one byte once it has them.
"""
from __future__ import annotations

import base64
import hmac
import json
import secrets
import socket
import struct
import time
from typing import Any, Callable

from builder.errors import BuildError

REQUEST_KIND = "secrets-request"
_ID_BYTES = 16
MAX_BYTES = 16 << 20   # of all values together
WAIT_S = 60.0


def encode(values: dict[str, bytes]) -> bytes:
    body = json.dumps({sid.encode().hex(): base64.b64encode(v).decode() for sid, v in values.items()}).encode()
    return struct.pack(">I", len(body)) + body


def decode(body: bytes) -> dict[str, bytes]:
    doc = json.loads(body)
    if not isinstance(doc, dict) or not all(isinstance(v, str) for v in doc.values()):
        raise ValueError("expected an object of base64 strings")
    return {bytes.fromhex(k).decode(): base64.b64decode(v, validate=True) for k, v in doc.items()}


def _recv_exact(conn: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = conn.recv(min(size - len(data), 1 << 16))
        if not chunk:
            raise ConnectionError("closed early")
        data += chunk
    return bytes(data)


def receive(report: Callable[..., None], wait_s: float = WAIT_S) -> dict[str, bytes]:
    """In the pod: ask the CLI for the secret values and wait for them (at most `wait_s`)."""
    ident = secrets.token_bytes(_ID_BYTES)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        report(REQUEST_KIND, "asking the CLI for the build's --secret values", id=ident.hex(),
               port=listener.getsockname()[1])
        deadline = time.monotonic() + wait_s
        while (left := deadline - time.monotonic()) > 0:
            listener.settimeout(left)
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                break
            with conn:
                conn.settimeout(max(1.0, deadline - time.monotonic()))
                try:
                    if not hmac.compare_digest(_recv_exact(conn, _ID_BYTES), ident):
                        continue   # not the CLI: keep waiting for it
                    size = struct.unpack(">I", _recv_exact(conn, 4))[0]
                    if size > MAX_BYTES:
                        raise BuildError(f"the CLI sent {size} bytes of secrets, more than {MAX_BYTES}")
                    values = decode(_recv_exact(conn, size))
                    conn.sendall(b"\x01")   # received: the CLI may close its end
                    return values
                except (OSError, ValueError, UnicodeDecodeError):
                    continue
    raise BuildError(f"the build's --secret values did not arrive from the CLI within {wait_s:.0f}s",
                     hint="the identity running kade build needs pods/portforward in the builds namespace")


def send(open_pod_socket: Callable[[int], Any], record: dict[str, Any], values: dict[str, bytes]) -> None:
    """In the CLI: answer one `secrets-request` record through a port-forward to the pod."""
    sock = open_pod_socket(int(record["port"]))
    try:
        sock.sendall(bytes.fromhex(str(record["id"])) + encode(values))
        sock.settimeout(WAIT_S)
        sock.recv(1)   # the pod has them (closing at once could cut the stream short)
    finally:
        sock.close()
