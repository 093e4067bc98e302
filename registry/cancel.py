"""Cancellation of the running command: one token per command, checked by whatever waits or works.

The CLI (kade/interrupt.py) turns the first SIGINT or SIGTERM into `current().cancel(signum)`. Code
in any package checks it where it waits or before it starts something new:

    from registry import cancel

    cancel.check()                       # raises Cancelled once the command is cancelled
    cancel.sleep(delay)                  # a sleep that ends (raising Cancelled) when it is cancelled
    if cancel.wait(event, 5): ...        # Event.wait that returns early (raising) on cancellation
    with cancel.on_cancel(proc.kill):    # run this at once when cancelled (kill a process, close a
        ...                              # socket, delete pods in a thread); keep it quick

Thread pools are `Pool`s: once the command is cancelled, leaving one waits only a moment for its
running tasks (each of which checks the token), never for a read that a server does not answer.

`Cancelled` is a KeyboardInterrupt, so `except Exception` blocks never swallow it and the standard
library treats it as an interrupt. The token lives here, in the lowest package, so that registry/,
builder/ and kade/ can all import it.
"""
from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Callable, Iterator, Literal

Callback = Callable[[], None]


class Cancelled(KeyboardInterrupt):
    """The command was cancelled (a signal, usually); `signum` is the signal, if one."""

    def __init__(self, signum: int | None = None) -> None:
        self.signum = signum
        super().__init__(describe(signum))


def describe(signum: int | None) -> str:
    if signum is None:
        return "cancelled"
    return f"cancelled by {signal.Signals(signum).name}"


class Token:
    """Set once; every waiter and every registered callback learns of it at once."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: dict[int, Callback] = {}
        self._next = 0
        self._marked = False
        self.signum: int | None = None

    @property
    def cancelled(self) -> bool:
        return self._marked or self._event.is_set()

    def mark(self, signum: int | None = None) -> None:
        """Say it is cancelled, touching no lock (safe in a signal handler, whatever the interrupted code
        holds); `cancel` then wakes the waiters and runs the callbacks, from a thread."""
        if not self._marked:
            self.signum = signum
            self._marked = True

    def cancel(self, signum: int | None = None) -> None:
        """Cancel (idempotent): wake every waiter and run the registered callbacks, each once, errors
        ignored. Not from a signal handler (`mark` there). A callback should be quick: kill, close, or
        start a thread."""
        self.mark(signum)
        with self._lock:
            if self._event.is_set():
                return
            self._event.set()
            callbacks = list(self._callbacks.values())
            self._callbacks.clear()
        for callback in callbacks:
            try:
                callback()
            except Exception:  # noqa: BLE001 - cancellation goes on whatever one callback does
                pass

    def check(self) -> None:
        if self.cancelled:
            raise Cancelled(self.signum)

    def sleep(self, seconds: float) -> None:
        """Sleep, or raise Cancelled as soon as the command is cancelled."""
        self.check()
        if self._event.wait(max(0.0, seconds)):
            raise Cancelled(self.signum)

    def wait(self, event: threading.Event, timeout: float | None = None, poll: float = 0.2) -> bool:
        """`event.wait(timeout)` that raises Cancelled when the command is cancelled meanwhile."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.check()
            left = poll if deadline is None else min(poll, deadline - time.monotonic())
            if left <= 0:
                return event.is_set()
            if event.wait(left):
                return True

    @contextmanager
    def on_cancel(self, callback: Callback) -> Iterator[None]:
        """Run `callback` when cancelled while the block runs (at once if cancelled already)."""
        with self._lock:
            key = self._next
            self._next += 1
            late = self._event.is_set()
            if not late:
                self._callbacks[key] = callback
        if late:
            callback()
        try:
            yield
        finally:
            with self._lock:
                self._callbacks.pop(key, None)


_current = Token()
_current_lock = threading.Lock()


def current() -> Token:
    """The running command's token (threads started by the command see the same one)."""
    return _current


@contextmanager
def scope() -> Iterator[Token]:
    """A fresh token for one command (the CLI opens one per `kade ...` run; tests run many)."""
    global _current
    with _current_lock:
        previous, _current = _current, Token()
        token = _current
    try:
        yield token
    finally:
        with _current_lock:
            _current = previous


def check() -> None:
    current().check()


def sleep(seconds: float) -> None:
    current().sleep(seconds)


def wait(event: threading.Event, timeout: float | None = None) -> bool:
    return current().wait(event, timeout)


def on_cancel(callback: Callback) -> AbstractContextManager[None]:
    return current().on_cancel(callback)


def cancelled() -> bool:
    return current().cancelled


class Pool(ThreadPoolExecutor):
    """A ThreadPoolExecutor whose exit, when the command is cancelled (or interrupted), cancels the
    tasks not started and waits at most `grace` seconds for the running ones; otherwise it waits for
    all, as usual. A thread left running then dies with the process (kade/cli.py `entry`)."""

    def __init__(self, max_workers: int | None = None, *, grace: float = 1.0, **kwargs: Any) -> None:
        super().__init__(max_workers, **kwargs)
        self.grace = grace
        self._pending: set[Future] = set()
        self._pending_lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future = super().submit(fn, *args, **kwargs)
        with self._pending_lock:
            self._pending.add(future)
        future.add_done_callback(self._forget)
        return future

    def _forget(self, future: Future) -> None:
        with self._pending_lock:
            self._pending.discard(future)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Literal[False]:
        self.stop(interrupted=exc_type is not None and issubclass(exc_type, KeyboardInterrupt))
        return False

    def stop(self, interrupted: bool = False, cancel_pending: bool = False) -> None:
        """Shut down, waiting for the running tasks, or for `grace` seconds only once cancelled."""
        if not (interrupted or cancelled()):
            self.shutdown(wait=True, cancel_futures=cancel_pending)
            return
        self.shutdown(wait=False, cancel_futures=True)
        with self._pending_lock:
            running = list(self._pending)
        wait_futures(running, timeout=self.grace)
