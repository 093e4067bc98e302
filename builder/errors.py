"""Build errors: one message naming the file and line at fault and what to do next.

The CLI prints any `BuildError` as a single line and exits 1 (see kade/errors.py).
"""
from __future__ import annotations


class BuildError(Exception):
    """Base class of every expected build failure."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None, hint: str | None = None):
        self.file = file
        self.line = line
        self.hint = hint
        self.detail = message
        super().__init__(self._render())

    def _render(self) -> str:
        where = ""
        if self.file and self.line:
            where = f"{self.file}:{self.line}: "
        elif self.file:
            where = f"{self.file}: "
        text = where + self.detail
        if self.hint:
            text += f" ({self.hint})"
        return text


class DockerfileSyntaxError(BuildError):
    """The Dockerfile does not parse, or an instruction is malformed."""


class UnknownStageError(BuildError):
    """--target or --from / FROM names a stage that does not exist."""


class BuildArgError(BuildError):
    """A --build-arg is malformed or a variable expansion failed (${VAR:?msg})."""


class MissingSourceError(BuildError):
    """A COPY/ADD source is missing from the context (or excluded by .dockerignore)."""


class StepFailedError(BuildError):
    """A RUN step exited non-zero."""

    def __init__(self, message: str, *, exit_code: int, output_tail: list[str], file: str | None = None,
                 line: int | None = None, hint: str | None = None, rootfs: str | None = None):
        self.exit_code = exit_code
        self.output_tail = output_tail
        self.rootfs = rootfs
        super().__init__(message, file=file, line=line, hint=hint)

    def _render(self) -> str:
        text = super()._render()
        if self.output_tail:
            text += "\nlast output lines:\n" + "\n".join("  " + ln for ln in self.output_tail)
        return text


class ContextError(BuildError):
    """The build context or a .dockerignore cannot be read."""
