"""kade/output.py: messages are text, never markup, and their control characters can't act on
whatever shows them (a terminal, a CI log, a JSON consumer)."""
from __future__ import annotations

import io
import json

import pytest

from kade.output import _json_reporter, _plain_reporter, _rich_reporter, neutralise, relay_reporter

HOSTILE = "\x1b]0;pwned\x07\x1b[2J\x1b[31mred\x1b[0m [/x] [bold]b[/bold] \x9b6n\x00\x7f\x08tab\there"


@pytest.mark.parametrize("text, keep, expected", [
    ("plain", False, "plain"),
    ("tab\tand\nnewline", False, "tab\tand\nnewline"),
    ("crlf\r\n", False, "crlf\n"),
    ("crlf\r", False, "crlf"),
    ("over\rwrite", False, "over\\x0dwrite"),
    ("\x1b[31mred\x1b[0m", False, "\\x1b[31mred\\x1b[0m"),
    ("\x1b[31mred\x1b[0m", True, "\x1b[31mred\x1b[0m"),
    ("\x1b[1;38;5;196mx\x1b[m", True, "\x1b[1;38;5;196mx\x1b[m"),
    ("\x1b[2J\x1b[H", True, "\\x1b[2J\\x1b[H"),                      # clear screen, cursor home
    ("\x1b]0;title\x07", True, "\\x1b]0;title\\x07"),                 # window title
    ("\x1b]8;;http://x\x1b\\link", True, "\\x1b]8;;http://x\\x1b\\link"),  # hyperlink
    ("\x9b31m\x85", True, "\\x9b31m\\x85"),                             # C1 CSI, NEL
    ("\x00\x7f", False, "\\x00\\x7f"),
    ("[/x] [bold]", False, "[/x] [bold]"),                              # not markup: nothing to neutralise
])
def test_neutralise(text, keep, expected):
    assert neutralise(text, keep_colours=keep) == expected


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_show_markup_and_escapes_as_text():
    out = io.StringIO()
    _plain_reporter(out)("output", HOSTILE)
    line = out.getvalue()
    assert "\x1b" not in line and "\x07" not in line and "\x9b" not in line and "\x00" not in line
    assert "[/x] [bold]b[/bold]" in line and "\\x1b[31mred" in line


def test_json_records_carry_no_control_character_once_decoded():
    out = io.StringIO()
    _json_reporter(out)("output", HOSTILE, key="k")
    rec = json.loads(out.getvalue())
    assert not any(ord(c) < 32 and c not in "\t\n" or 0x7f <= ord(c) <= 0x9f for c in rec["message"])
    assert rec["key"] == "k"


def test_a_pod_relays_its_records_raw_for_the_cli_to_neutralise():
    out = io.StringIO()
    relay_reporter(out)("output", "\x1b[31mred\x1b[0m")
    assert json.loads(out.getvalue())["message"] == "\x1b[31mred\x1b[0m"


def test_rich_keeps_colours_only_and_never_reads_markup():
    out = FakeTTY()
    report = _rich_reporter(out)
    report("output", HOSTILE)       # a MarkupError here would abort a build ("[/x]" closes nothing)
    report("warning", "[/yellow] still text")
    shown = out.getvalue()
    assert "[/x] [bold]b[/bold]" in shown and "[/yellow] still text" in shown
    assert "\x1b]0;" not in shown and "\x1b[2J" not in shown and "\x07" not in shown and "\x9b" not in shown
    assert "\\x1b]0;pwned" in shown and "\\x1b[2J" in shown
    assert "red" in shown
