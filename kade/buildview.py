"""How a build looks while it runs, fed by the builder's event stream (builder/events.py).

In a terminal: a live view like BuildKit's, one row per step (cached, running with its time and its
last output lines, or done with its time and layer size), under a header with the elapsed time and
the steps done so far; everything else the build says prints above it. In CI (no terminal, or $CI)
plain timestamped lines, each finished step with its time; with `--output json` JSON lines. Every
mode ends with the same closing summary (`BuildTally`: steps built, cached, taken from elsewhere,
bytes pushed, time), printed on stderr, and a `summary` record in JSON.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, TextIO

from kade.output import Report, make_reporter

OUTPUT_LINES = 3  # last output lines shown under a running step


@dataclass
class StepRow:
    image: str
    stage: str
    text: str
    state: str = "running"            # running | cached | done | shared | reused
    started: float = 0.0
    seconds: float | None = None
    layer_bytes: int = 0
    output: deque[str] = field(default_factory=lambda: deque(maxlen=OUTPUT_LINES))


@dataclass
class BuildTally:
    """What a build's events add up to (pure: fed events, asked for the summary)."""
    started: float = field(default_factory=time.monotonic)
    planned: int = 0
    steps: dict[str, StepRow] = field(default_factory=dict)  # by image/key, in order of first event
    pushed_bytes: int = 0
    images: int = 0

    def feed(self, kind: str, message: str, fields: dict[str, Any], now: float | None = None) -> StepRow | None:
        """Account for one event; the step row it changed, if any."""
        now = time.monotonic() if now is None else now
        if kind == "plan":
            self.planned += int(fields.get("steps", 0))
            return None
        if kind == "pushed":
            self.images += 1
            self.pushed_bytes += int(fields.get("pushed_bytes", 0))
            return None
        key = fields.get("key")
        if not key or kind not in ("cached", "step", "step-done", "shared", "reused", "output"):
            return None
        ident = f"{fields.get('image', '')}/{key}"
        row = self.steps.get(ident)
        if row is None:
            if kind == "output":
                return None
            row = self.steps[ident] = StepRow(str(fields.get("image", "")), str(fields.get("stage", "")),
                                              str(fields.get("step", message)), started=now)
        if kind == "output":
            row.output.append(message)
        elif kind == "step":
            row.state, row.started = "running", now
        elif kind == "step-done":
            row.state = "done"
            row.seconds = float(fields.get("seconds", now - row.started))
            row.layer_bytes = int(fields.get("layer_bytes", 0))
            self.pushed_bytes += int(fields.get("pushed_bytes", 0))
        elif kind in ("cached", "shared", "reused"):
            row.state = kind
        return row

    def count(self, state: str) -> int:
        return sum(1 for r in self.steps.values() if r.state == state)

    def summary(self, now: float | None = None) -> tuple[str, dict[str, Any]]:
        """The closing line and its fields."""
        elapsed = (time.monotonic() if now is None else now) - self.started
        built, cached = self.count("done"), self.count("cached")
        elsewhere = self.count("shared") + self.count("reused")
        parts = [f"{built} step(s) built", f"{cached} cached"]
        if elsewhere:
            parts.append(f"{elsewhere} taken from identical steps running at once")
        parts.append(f"{human_bytes(self.pushed_bytes)} pushed")
        fields = {"built": built, "cached": cached, "elsewhere": elsewhere, "pushed_bytes": self.pushed_bytes,
                  "seconds": round(elapsed, 3)}
        return f"{', '.join(parts)} in {elapsed:.1f}s", fields


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


class BuildView:
    """The live view in a terminal (rich): step rows under a header; other events printed above."""

    def __init__(self, stream: TextIO, tally: BuildTally):
        from rich.console import Console
        from rich.live import Live

        self.tally = tally
        self.console = Console(file=stream, highlight=False)
        self.lock = threading.Lock()
        self.live = Live(self._render(), console=self.console, refresh_per_second=8, transient=False,
                         get_renderable=self._render)
        self.live.start()

    def __call__(self, kind: str, message: str, **fields: Any) -> None:
        from rich.markup import escape

        with self.lock:
            row = self.tally.feed(kind, message, fields)
            if row is not None or kind in ("plan", "output"):
                return  # shown in the rows
            style = {"warning": "yellow", "error": "bold red", "pushed": "green", "summary": "bold"}.get(kind, "")
            text = f"{kind:<8} {escape(message)}"
            self.console.print(f"[{style}]{text}[/{style}]" if style else text)

    def _render(self) -> Any:
        from rich.console import Group
        from rich.text import Text

        now = time.monotonic()
        t = self.tally
        finished = sum(1 for r in t.steps.values() if r.state != "running")
        total = max(t.planned, len(t.steps))
        lines = [Text(f"[+] Building {now - t.started:.1f}s ({finished}/{total})", style="bold")]
        for row in list(t.steps.values()):
            where = f"{row.image}/{row.stage}" if row.image not in ("", "default") else row.stage
            if row.state in ("cached", "shared", "reused"):
                lines.append(Text(f" => {row.state.upper()} [{where}] {row.text}", style="dim"))
                continue
            seconds = row.seconds if row.seconds is not None else now - row.started
            size = f"  {human_bytes(row.layer_bytes)}" if row.layer_bytes else ""
            line = Text(f" => [{where}] {row.text}", style="blue" if row.state == "done" else "")
            line.append(f"  {seconds:.1f}s{size}", style="dim")
            lines.append(line)
            if row.state == "running":
                lines += [Text(f"    | {out}", style="dim") for out in row.output]
        return Group(*lines)

    def close(self) -> None:
        self.live.stop()


@contextmanager
def build_reporter(output: str = "text", stream: TextIO | None = None) -> Iterator[Report]:
    """The report callable of a build command, and its closing summary on the way out (on success,
    and after a failure too: what was done until then)."""
    stream = stream or sys.stderr
    tally = BuildTally()
    view: BuildView | None = None
    if output != "json" and stream.isatty() and not os.environ.get("CI"):
        view = BuildView(stream, tally)
        report: Report = view
    else:
        inner = make_reporter(output, stream)
        lock = threading.Lock()

        def report(kind: str, message: str, **fields: Any) -> None:
            with lock:
                row = tally.feed(kind, message, fields)
            if kind == "step-done" and row is not None and output != "json":
                size = f", {human_bytes(row.layer_bytes)} layer" if row.layer_bytes else ""
                message = f"{message} ({row.seconds:.1f}s{size})"
            inner(kind, message, **fields)

    try:
        yield report
    finally:
        text, fields = tally.summary()
        if view is not None:
            view.close()
        report("summary", text, **fields)
