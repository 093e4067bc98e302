"""common/: the one duration parser (two unit sets), git's credential scrubbing, $KADE_TIMEOUT
(strip_credentials: tests/unit/test_project_rules.py)."""
import pytest

from common.durations import GO_UNITS, HUMAN_UNITS, format_duration, nanoseconds
from common.errors import SettingError
from common.git import redact
from common.timeouts import answer_timeout


@pytest.mark.parametrize("text,units,bare,expected", [
    ("1m30s", GO_UNITS, False, 90_000_000_000),
    ("500ms", GO_UNITS, False, 500_000_000),
    ("0.3s", GO_UNITS, False, 300_000_000),      # exact, as Go's ParseDuration (not 299999999)
    ("1.5us", GO_UNITS, False, 1_500),
    ("2µs", GO_UNITS, False, 2_000),
    ("0", GO_UNITS, False, 0),
    ("90", HUMAN_UNITS, True, 90_000_000_000),
    ("1.5", HUMAN_UNITS, True, 1_500_000_000),
    ("7d", HUMAN_UNITS, True, 7 * 86_400_000_000_000),
    ("1w2d", HUMAN_UNITS, True, 9 * 86_400_000_000_000),
    ("250ms", HUMAN_UNITS, True, 250_000_000),
])
def test_durations(text, units, bare, expected):
    assert nanoseconds(text, units, bare_seconds=bare) == expected


@pytest.mark.parametrize("text,units,bare", [
    ("90", GO_UNITS, False), ("1d", GO_UNITS, False), ("", HUMAN_UNITS, True), ("5 minutes", HUMAN_UNITS, True),
    ("1h 2m", HUMAN_UNITS, True), ("-1s", HUMAN_UNITS, True), ("1x", HUMAN_UNITS, True), ("7", HUMAN_UNITS, False),
])
def test_bad_durations(text, units, bare):
    with pytest.raises(ValueError, match="invalid duration"):
        nanoseconds(text, units, bare_seconds=bare)


@pytest.mark.parametrize("seconds,text", [(0.85, "850ms"), (12.34, "12.3s"), (245, "4m05s"), (3720, "1h02m")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize("text,expected", [
    ("fatal: https://u:p@host/r.git not found", "fatal: https://***@host/r.git not found"),
    ("https://host/r.git", "https://host/r.git"),
    ("ssh://git@host:22/r", "ssh://***@host:22/r"),
])
def test_redact(text, expected):
    assert redact(text) == expected


@pytest.mark.parametrize("value,expected", [(None, 30.0), ("60", 60.0), ("0.5", 0.5)])
def test_answer_timeout(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv("KADE_TIMEOUT", raising=False)
    else:
        monkeypatch.setenv("KADE_TIMEOUT", value)
    assert answer_timeout() == expected


@pytest.mark.parametrize("value", ["soon", "0", "-1", "inf"])
def test_answer_timeout_refuses(monkeypatch, value):
    monkeypatch.setenv("KADE_TIMEOUT", value)
    with pytest.raises(SettingError, match="KADE_TIMEOUT"):
        answer_timeout()
