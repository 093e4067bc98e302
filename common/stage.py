"""A pipeline stage: a worker thread fed through a bounded queue. The work it is given (hashing,
compressing, writing) releases the GIL, so it runs on another core beside the thread feeding it."""
from __future__ import annotations

import queue
import threading
from typing import Callable

Chunk = bytes | bytearray


class Stage:
    """`work` runs on every chunk `put`, in order, in a thread of its own. Memory in flight is at most
    `depth` chunks. An error in the worker surfaces at the next `put` or at `finish`."""

    def __init__(self, work: Callable[[Chunk], None], depth: int = 8, name: str = "kade-stage"):
        self._work = work
        self._queue: queue.Queue[Chunk | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is None:
                try:
                    self._work(item)
                except BaseException as exc:  # handed to the producer
                    self._error = exc

    def put(self, data: Chunk) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(data)

    def finish(self) -> None:
        """Wait until every chunk is done (raising the worker's error, if it hit one)."""
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
