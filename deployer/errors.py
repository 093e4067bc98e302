"""Errors the deployer raises on purpose: the CLI prints their message (one line or a short block),
exits 1 and shows no traceback."""
from __future__ import annotations


class DeployError(Exception):
    """A deploy, plan, rollback or tracking failure with a message that says what to do next."""


class RenderError(DeployError):
    """A manifest or template could not be rendered: the message names the file and line."""


class ConflictError(DeployError):
    """Server-side apply found fields owned by another field manager: `fields` is [(field, manager)]."""

    def __init__(self, message: str, fields: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.fields = fields or []


class ReleaseLockedError(DeployError):
    """Another deploy holds the release's Lease."""


class UsageError(DeployError):
    """Bad input that the CLI maps to exit code 2 (kept here so deployer/ never imports kade/)."""
