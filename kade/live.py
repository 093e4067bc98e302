"""A live status table for deploys in a terminal: one row per tracked resource (state, latest
message), with logs, events and warnings printed above it. Outside a terminal (CI, pipes) and with
`--output json` it is kade.output's plain lines / JSON events instead."""
from __future__ import annotations

import os
import sys
from typing import Any, TextIO

from kade.output import make_reporter, neutralise, rich_text

_STYLE = {"ready": "green", "failed": "bold red", "progressing": "yellow"}


class LiveTable:
    def __init__(self, stream: TextIO):
        from rich.console import Console
        from rich.live import Live

        self.console = Console(file=stream, highlight=False)
        self.rows: dict[str, tuple[str, str]] = {}
        self.live = Live(self._table(), console=self.console, refresh_per_second=8, transient=False)
        self.live.start()

    def _table(self) -> Any:
        from rich.table import Table
        from rich.text import Text

        table = Table(box=None, pad_edge=False, show_header=bool(self.rows))
        table.add_column("RESOURCE", no_wrap=True)
        table.add_column("STATE", no_wrap=True)
        table.add_column("DETAIL", overflow="fold")
        for resource, (state, message) in self.rows.items():
            style = _STYLE.get(state, "")
            table.add_row(Text(neutralise(resource)), Text(state, style), rich_text(message))
        return table

    def __call__(self, kind: str, message: str, **fields: Any) -> None:
        from rich.text import Text

        resource = fields.get("resource")
        if resource and kind in ("status", "ready", "failed", "apply"):
            state = {"ready": "ready", "failed": "failed", "apply": "applied"}.get(kind, fields.get("state", kind))
            detail = message.split(": ", 1)[1] if kind == "status" and ": " in message else message
            self.rows[resource] = (state, detail)
            self.live.update(self._table())
            if kind != "failed":
                return
        style = {"warning": "yellow", "failed": "bold red", "summary": "red", "done": "green", "log": "dim"}.get(kind, "")
        text = rich_text(message)
        text.stylize(style)
        self.console.print(Text.assemble((f"{kind:<8} ", style), text))

    def close(self) -> None:
        self.live.update(self._table())
        self.live.stop()


def make_deploy_reporter(output: str, stream: TextIO | None = None) -> Any:
    """A live table in an interactive terminal, otherwise kade.output's reporter. Call `.close()` if present."""
    stream = stream or sys.stderr
    if output == "text" and stream.isatty() and not os.environ.get("CI"):
        return LiveTable(stream)
    return make_reporter(output, stream)


def close_reporter(report: Any) -> None:
    close = getattr(report, "close", None)
    if callable(close):
        close()
