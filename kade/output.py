"""How users see progress: rich in a terminal, plain timestamped lines in CI, JSON lines with
`--output json`. Packages never print; they call a `report(kind, message, **fields)` callable,
which the CLI makes here. Progress goes to stderr; a command's result goes to stdout.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any, Callable, Protocol, TextIO

OUTPUT_CHOICES = ("text", "json")


class Report(Protocol):
    def __call__(self, kind: str, message: str, **fields: Any) -> None: ...


def make_reporter(output: str = "text", stream: TextIO | None = None) -> Report:
    stream = stream or sys.stderr
    if output == "json":
        return _json_reporter(stream)
    if stream.isatty() and not os.environ.get("CI"):
        return _rich_reporter(stream)
    return _plain_reporter(stream)


def _plain_reporter(stream: TextIO) -> Report:
    def report(kind: str, message: str, **fields: Any) -> None:
        stamp = time.strftime("%H:%M:%S")
        stream.write(f"{stamp} {kind:<8} {message}\n")
        stream.flush()

    return report


def _json_reporter(stream: TextIO) -> Report:
    lock = threading.Lock()  # records come from build threads and relays at once: whole lines only

    def report(kind: str, message: str, **fields: Any) -> None:
        record = {"time": round(time.time(), 3), "kind": kind, "message": message, **fields}
        line = json.dumps(record, default=str) + "\n"
        with lock:
            stream.write(line)
            stream.flush()

    return report


def _rich_reporter(stream: TextIO) -> Report:
    from rich.console import Console

    console = Console(file=stream, highlight=False)
    styles = {"error": "bold red", "warning": "yellow", "done": "green", "cached": "dim"}

    def report(kind: str, message: str, **fields: Any) -> None:
        style = styles.get(kind, "")
        console.print(f"[{style}]{kind:<8}[/{style}] {message}" if style else f"{kind:<8} {message}")

    return report


def print_result(output: str, data: Any, text: Callable[[Any], str]) -> None:
    """Print a command's result on stdout: JSON, or the given text rendering."""
    if output == "json":
        print(json.dumps(data, indent=2, default=str))
    else:
        rendered = text(data)
        if rendered:
            print(rendered)
