"""RUN output as users see it, from real builds: text never read as markup (in a real
pseudo-terminal, where kade uses rich), control sequences neutralised (CI logs, JSON), and
secrets masked whole (a multi-line PEM key, its base64, across the lines a RUN prints)."""
from __future__ import annotations

import base64
import json
import os
import pty
import select
import subprocess
import sys
import time

import pytest

HOSTILE_RUN = ("RUN echo '[/x]' && echo '[bold]plain[/bold]' && "
               "printf '\\033]0;pwned\\007\\033[2J\\033[31mred\\033[0m\\n' && echo done-ok\n")
# in a terminal a running step shows its last 3 output lines (kade/buildview.py): these three, for a second
TTY_RUN = ("RUN echo '[/x]' && echo '[bold]plain[/bold]' && "
           "printf '\\033]0;pwned\\007\\033[2J\\033[31mred\\033[0m\\n' && sleep 1\n")


def _context(tmp_path, base_image, body: str):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {base_image.ref}\n{body}")
    return ctx


def _run_in_pty(args: list[str], env: dict[str, str], timeout: float = 120) -> tuple[int, bytes]:
    """Run `python -m kade ...` with stdin, stdout and stderr on a fresh pseudo-terminal."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "kade", *args], stdin=slave, stdout=slave, stderr=slave,
                            env=env, close_fds=True, start_new_session=True)
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the terminal's last writer is gone
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    return proc.wait(timeout=30), bytes(out)


def test_run_output_in_a_terminal_is_text_and_only_colours_pass(registry, base_image, tmp_path):
    ctx = _context(tmp_path, base_image, TTY_RUN)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update(TERM="xterm-256color", COLUMNS="200")
    code, out = _run_in_pty(["build", str(ctx), "--tag", f"{registry.host}/out/tty:v1",
                             "--cache-dir", str(tmp_path / "cache")], env)
    text = out.decode(errors="replace")
    assert code == 0, text[-3000:]           # "[/x]" closes no tag: as markup it aborted the build
    assert "[/x]" in text and "[bold]plain[/bold]" in text
    assert b"\x1b]0;" not in out and b"\x1b[2J" not in out and b"\x07" not in out
    assert "\\x1b]0;pwned\\x07" in text and "\\x1b[2J" in text
    assert b"red" in out


@pytest.mark.parametrize("output", ["text", "json"])
def test_run_output_in_ci_and_json_carries_no_control_sequence(registry, base_image, kade_build, tmp_path,
                                                              output, monkeypatch):
    monkeypatch.setenv("CI", "1")
    ctx = _context(tmp_path, base_image, HOSTILE_RUN)
    res = kade_build(str(ctx), "--tag", f"{registry.host}/out/ci-{output}:v1", "--cache-dir", str(tmp_path / "c"),
                     "--output", output)
    assert res.code == 0, res.stderr
    shown = res.stderr if output == "text" else "".join(
        json.loads(line)["message"] for line in res.stderr.splitlines() if line.startswith("{"))
    assert "[/x]" in shown and "done-ok" in shown
    assert not any(ord(c) < 32 and c not in "\t\n" for c in shown)
    assert "\\x1b[31mred\\x1b[0m" in shown


def test_a_multi_line_secret_is_masked_whole(registry, base_image, kade_build, tmp_path):
    pem = subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"],
                         capture_output=True, check=True).stdout
    (tmp_path / "key.pem").write_bytes(pem)
    ctx = _context(tmp_path, base_image,
                   "RUN --mount=type=secret,id=key,required "
                   "cat /run/secrets/key && base64 /run/secrets/key && sed 's/^/  | /' /run/secrets/key "
                   "&& head -c 700 /run/secrets/key | tail -c 300 && echo && echo finished\n")
    res = kade_build(str(ctx), "--tag", f"{registry.host}/out/pem:v1", "--secret", f"id=key,src={tmp_path / 'key.pem'}",
                     "--cache-dir", str(tmp_path / "c"))
    assert res.code == 0, res.stderr
    assert "finished" in res.stderr and "****" in res.stderr
    body = [ln for ln in pem.decode().splitlines() if "-----" not in ln]
    visible = [ln for ln in body if ln[:20] in res.stderr or ln[-20:] in res.stderr]
    assert not visible, visible
    encoded = base64.b64encode(pem).decode()
    assert not [encoded[i:i + 16] for i in range(0, len(encoded) - 16, 8) if encoded[i:i + 16] in res.stderr]
