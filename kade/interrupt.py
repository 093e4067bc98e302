"""The one place where SIGINT and SIGTERM become the cancellation of the running command.

The first signal cancels the command's token (registry/cancel.py): every wait that checks it ends,
the callbacks registered with it run (RUN processes killed, pods deleted, uploads abandoned), and
the main thread unwinds with `Cancelled`, so each `finally` undoes what the command made. The
command then exits 128 + the signal (130 for SIGINT, 143 for SIGTERM). A second signal exits at
once, without waiting for any cleanup.
"""
from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterator

from registry.cancel import Cancelled, Token

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def exit_code(signum: int | None) -> int:
    return 128 + (signum or signal.SIGINT)


@contextmanager
def cancel_on_signals(token: Token) -> Iterator[Token]:
    """Trap SIGINT/SIGTERM for the block (only the main thread can; elsewhere this does nothing)."""
    if threading.current_thread() is not threading.main_thread():
        yield token
        return

    def on_signal(signum: int, _frame: Any) -> None:
        if token.cancelled:
            _say(f"kade: {signal.Signals(signum).name} again: exiting now, without cleaning up\n")
            os._exit(exit_code(signum))
        _say(f"kade: {signal.Signals(signum).name}: stopping and cleaning up "
             "(send it again to exit at once)\n")
        token.cancel(signum)
        raise Cancelled(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in SIGNALS}
    try:
        yield token
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _say(text: str) -> None:
    try:
        os.write(2, text.encode())  # no buffered I/O inside a signal handler
    except OSError:
        pass
