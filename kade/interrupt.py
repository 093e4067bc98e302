"""The one place where SIGINT and SIGTERM become the cancellation of the running command.

The first signal cancels the command's token (registry/cancel.py): every wait that checks it ends,
the callbacks registered with it run (RUN processes killed, pods deleted, uploads abandoned), and
the main thread unwinds with `Cancelled`, so each `finally` undoes what the command made. The
command then exits 128 + the signal (130 for SIGINT, 143 for SIGTERM). A second signal exits at
once, without waiting for any cleanup.

Python runs signal handlers in the main thread only, and the kernel may deliver a signal to any
thread: then a main thread blocked on a lock (waiting for a worker's future) would not notice it
until the lock is released, maybe minutes later. So the signals also wake a watcher thread (through
`signal.set_wakeup_fd`), which cancels the token (so the handler itself takes no lock: it may have
interrupted code holding one) and interrupts the main thread with a signal sent to it alone (WAKE,
whose handler does nothing): the interrupted wait returns, and the pending handler runs.
"""
from __future__ import annotations

import os
import signal
import socket
import threading
from contextlib import contextmanager
from typing import Any, Iterator

from registry.cancel import Cancelled, Token

SIGNALS = (signal.SIGINT, signal.SIGTERM)
WAKE = signal.SIGURG  # ignored by default; sent to the main thread only, to interrupt a blocked wait


def exit_code(signum: int | None) -> int:
    return 128 + (signum or signal.SIGINT)


@contextmanager
def cancel_on_signals(token: Token) -> Iterator[Token]:
    """Trap SIGINT/SIGTERM for the block (only the main thread can; elsewhere this does nothing)."""
    if threading.current_thread() is not threading.main_thread():
        yield token
        return
    watched, received = [False], [0]

    def on_signal(signum: int, _frame: Any) -> None:
        received[0] += 1  # first: a signal whose handler runs inside this one (during the write) is the second
        if received[0] > 1:
            _say(f"kade: {signal.Signals(signum).name} again: exiting now, without cleaning up\n")
            os._exit(exit_code(signum))
        if watched[0]:
            token.mark(signum)  # the watcher thread cancels (locks, callbacks): never inside a handler
        else:
            token.cancel(signum)
        _say(f"kade: {signal.Signals(signum).name}: stopping and cleaning up "
             "(send it again to exit at once)\n")
        raise Cancelled(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in SIGNALS}
    previous[WAKE] = signal.signal(WAKE, lambda *_: None)
    with _watcher(token) as watching:
        watched[0] = watching
        try:
            yield token
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


@contextmanager
def _watcher(token: Token) -> Iterator[bool]:
    """While the block runs, a thread learns of every trapped signal (whichever thread the kernel gave
    it to), cancels the token and interrupts the main thread. Yields whether it runs."""
    receiver, sender = socket.socketpair()
    sender.setblocking(False)
    try:
        old_fd = signal.set_wakeup_fd(sender.fileno(), warn_on_full_buffer=False)
    except ValueError:  # not the main thread of the main interpreter
        receiver.close()
        sender.close()
        yield False
        return
    main = threading.main_thread().ident
    assert main is not None
    watcher = threading.Thread(target=_watch, args=(receiver, token, main), name="kade-signals", daemon=True)
    watcher.start()
    try:
        yield True
    finally:
        signal.set_wakeup_fd(old_fd)
        sender.close()  # the watcher reads EOF and ends
        watcher.join(timeout=1)
        receiver.close()


def _watch(receiver: socket.socket, token: Token, main: int) -> None:
    while True:
        try:
            data = receiver.recv(64)
        except OSError:
            return
        if not data:
            return
        for signum in (b for b in data if b in SIGNALS):
            token.cancel(signum)
            try:
                signal.pthread_kill(main, WAKE)
            except (OSError, ProcessLookupError):
                return


def _say(text: str) -> None:
    try:
        os.write(2, text.encode())  # no buffered I/O inside a signal handler
    except OSError:
        pass
