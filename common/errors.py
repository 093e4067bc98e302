"""The error of a bad setting read from the environment (the CLI reports it like any expected failure)."""
from __future__ import annotations


class SettingError(ValueError):
    """An environment setting (SOURCE_DATE_EPOCH, KADE_TIMEOUT) holds a value kade can't use; the message
    names the variable and what it expects."""
