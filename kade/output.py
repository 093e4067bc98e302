"""How users see progress: rich in a terminal, plain timestamped lines in CI, JSON lines with
`--output json`. Packages never print; they call a `report(kind, message, **fields)` callable,
which the CLI makes here. Progress goes to stderr; a command's result goes to stdout.

Messages carry text nobody vetted (a RUN's output, file names from a context, a registry's error):
they are shown as text, never as rich markup, and control characters are neutralised (`neutralise`)
before they reach a terminal, a CI log or a JSON consumer. In a terminal, plain colours (SGR
sequences) are kept; every other escape sequence (cursor moves, screen clearing, window titles,
hyperlinks, device queries) is shown as text, as it is everywhere outside a terminal.
"""
from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from typing import Any, Callable, Protocol, TextIO

OUTPUT_CHOICES = ("text", "json")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")   # every C0/C1 control but TAB and LF; DEL
_SGR = re.compile(r"\x1b\[[0-9;:]{0,64}m")                  # Select Graphic Rendition: colours and styles only


class Report(Protocol):
    def __call__(self, kind: str, message: str, **fields: Any) -> None: ...


def _visible(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()):02x}"


def neutralise(text: str, keep_colours: bool = False) -> str:
    """`text` with every control character but TAB and LF shown as `\\xNN` (a CRLF's CR is dropped),
    so no escape sequence acts on whatever displays it; with `keep_colours`, SGR sequences stay."""
    text = text.replace("\r\n", "\n")
    if text.endswith("\r"):
        text = text[:-1]
    if not keep_colours:
        return _CONTROL.sub(_visible, text)
    out, last = [], 0
    for m in _SGR.finditer(text):
        out += [_CONTROL.sub(_visible, text[last:m.start()]), m.group()]
        last = m.end()
    out.append(_CONTROL.sub(_visible, text[last:]))
    return "".join(out)


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
        stream.write(f"{stamp} {kind:<8} {neutralise(message)}\n")
        stream.flush()

    return report


def _json_reporter(stream: TextIO, raw: bool = False) -> Report:
    lock = threading.Lock()  # records come from build threads and relays at once: whole lines only

    def report(kind: str, message: str, **fields: Any) -> None:
        record = {"time": round(time.time(), 3), "kind": kind, "message": message if raw else neutralise(message),
                  **fields}
        line = json.dumps(record, default=str) + "\n"
        with lock:
            stream.write(line)
            stream.flush()

    return report


def relay_reporter(stream: TextIO) -> Report:
    """JSON lines with messages as they are: a builder pod's records, which the CLI reads and
    neutralises where it shows them (so a terminal there can still show a RUN's colours)."""
    return _json_reporter(stream, raw=True)


def rich_text(message: str) -> Any:
    """A message as a rich Text: never markup, plain colours kept, other control sequences shown."""
    from rich.text import Text

    return Text.from_ansi(neutralise(message, keep_colours=True))


def _rich_reporter(stream: TextIO) -> Report:
    from rich.console import Console
    from rich.text import Text

    console = Console(file=stream, highlight=False)
    styles = {"error": "bold red", "warning": "yellow", "done": "green", "cached": "dim"}

    def report(kind: str, message: str, **fields: Any) -> None:
        console.print(Text.assemble((f"{kind:<8}", styles.get(kind, "")), " ", rich_text(message)))

    return report


def print_result(output: str, data: Any, text: Callable[[Any], str]) -> None:
    """Print a command's result on stdout: JSON, or the given text rendering."""
    if output == "json":
        print(json.dumps(data, indent=2, default=str))
    else:
        rendered = text(data)
        if rendered:
            print(rendered)
