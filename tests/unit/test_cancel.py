"""The cancellation token (registry/cancel.py) and the signals that set it (kade/interrupt.py)."""
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kade.cli import wants_json
from registry import cancel
from registry.cancel import Cancelled, Token

ROOT = Path(__file__).resolve().parents[2]


def test_cancel_runs_each_callback_once_and_wakes_waiters():
    token = Token()
    calls = []
    with token.on_cancel(lambda: calls.append("a")), token.on_cancel(lambda: 1 / 0):
        woke = []
        t = threading.Thread(target=lambda: woke.append(_raises(lambda: token.sleep(30))))
        t.start()
        token.cancel(signal.SIGTERM)
        token.cancel(signal.SIGINT)  # idempotent: the first signal is the one that counts
        t.join(5)
    assert calls == ["a"] and woke == [True]
    assert token.signum == signal.SIGTERM
    with pytest.raises(Cancelled) as err:
        token.check()
    assert err.value.signum == signal.SIGTERM and "SIGTERM" in str(err.value)


def test_mark_says_cancelled_at_once_and_cancel_then_runs_the_callbacks():
    token, calls = Token(), []
    with token.on_cancel(lambda: calls.append(1)):
        token.mark(signal.SIGINT)  # what a signal handler does: no lock, no callback
        assert token.cancelled and calls == []
        with pytest.raises(Cancelled):
            token.sleep(30)
        token.cancel(signal.SIGTERM)  # what the watcher thread does next
    assert calls == [1] and token.signum == signal.SIGINT


def test_callback_registered_after_cancellation_runs_at_once():
    token = Token()
    token.cancel()
    calls = []
    with token.on_cancel(lambda: calls.append(1)):
        assert calls == [1]


def test_callback_left_behind_does_not_run():
    token = Token()
    calls = []
    with token.on_cancel(lambda: calls.append(1)):
        pass
    token.cancel()
    assert calls == []


def test_wait_returns_the_event_or_raises_when_cancelled():
    token, event = Token(), threading.Event()
    assert token.wait(event, 0.05) is False
    event.set()
    assert token.wait(event, 0.05) is True
    other = threading.Event()
    threading.Timer(0.1, token.cancel).start()
    start = time.monotonic()
    with pytest.raises(Cancelled):
        token.wait(other, 30)
    assert time.monotonic() - start < 5


def test_scope_gives_each_command_a_fresh_token():
    outer = cancel.current()
    with cancel.scope() as first:
        assert cancel.current() is first
        first.cancel()
        assert cancel.cancelled()
    assert cancel.current() is outer and not outer.cancelled
    with cancel.scope() as second:
        assert not second.cancelled


def test_cancelled_is_an_interrupt_not_an_error():
    assert issubclass(Cancelled, KeyboardInterrupt) and not issubclass(Cancelled, Exception)


@pytest.mark.parametrize("argv,expected", [
    (["build", "-o", "json"], True),
    (["build", "--output", "json", "."], True),
    (["build", "--output=json"], True),
    (["build", "-ojson"], True),
    (["build", "-o", "text"], False),
    (["build", "--", "-o", "json"], False),
    (["build", "-o"], False),
    ([], False),
])
def test_wants_json(argv, expected):
    assert wants_json(argv) is expected


def _raises(func) -> bool:
    try:
        func()
    except Cancelled:
        return True
    return False


PROGRAM = """
import sys, threading, time
sys.path.insert(0, {root!r})
from kade.interrupt import cancel_on_signals, exit_code
from registry import cancel
stubborn = {stubborn}
with cancel.scope() as token, cancel_on_signals(token):
    try:
        print("ready", flush=True)
        cancel.sleep(60)
    except KeyboardInterrupt as exc:
        print("cancelled", exc.signum, flush=True)
        if stubborn:
            time.sleep(60)  # a cleanup that takes long: a second signal must not wait for it
        sys.exit(exit_code(exc.signum))
"""


def _start(stubborn: bool) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", PROGRAM.format(root=str(ROOT), stubborn=stubborn)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_first_signal_cancels_and_exits_128_plus_signal(sig, code):
    proc = _start(stubborn=False)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == code
    assert out.strip() == f"cancelled {int(sig)}"
    assert "send it again to exit at once" in err


def test_second_signal_exits_at_once():
    proc = _start(stubborn=True)
    proc.send_signal(signal.SIGTERM)
    assert proc.stdout.readline().strip() == f"cancelled {int(signal.SIGTERM)}"
    start = time.monotonic()
    os.kill(proc.pid, signal.SIGINT)
    proc.wait(timeout=10)
    assert time.monotonic() - start < 5
    assert proc.returncode == 130
    assert "again: exiting now" in proc.stderr.read()


WORKER_CAUGHT = """
import signal, sys, threading, time
sys.path.insert(0, {root!r})
from kade.interrupt import cancel_on_signals, exit_code
from registry import cancel
never = threading.Event()
def worker():
    time.sleep(0.3)
    signal.pthread_kill(threading.get_ident(), signal.SIGTERM)  # the kernel may pick any thread: this one
    never.wait()
with cancel.scope() as token, cancel_on_signals(token):
    threading.Thread(target=worker, daemon=True).start()
    try:
        never.wait()  # a lock wait without timeout: only a signal to the main thread interrupts it
    except KeyboardInterrupt as exc:
        print("cancelled", exc.signum, flush=True)
        sys.exit(exit_code(exc.signum))
"""


def test_a_signal_delivered_to_another_thread_still_interrupts_the_main_thread():
    proc = subprocess.run([sys.executable, "-c", WORKER_CAUGHT.format(root=str(ROOT))], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 143, proc.stderr
    assert proc.stdout.strip() == f"cancelled {int(signal.SIGTERM)}"
