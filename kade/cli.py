"""Entry point: `kade <command> ...`.

Each command lives in `kade/commands/<name>.py` and exposes `register(subparsers)`, which adds its
parser and sets `func` (taking the parsed args, returning an exit code). Expected failures are
raised as the packages' own error types and printed as one clear message, never a traceback; with
`-o json` the same message is printed on stdout as `{"ok": false, "error": ..., "kind": ..., "exit_code": ...}`.
Exit codes: 0 done, 1 failed, 2 bad usage, 130/143 interrupted by SIGINT/SIGTERM (kade/interrupt.py).
"""
from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import sys
from typing import NoReturn

from kade import errors

# Order is the order of `kade --help`.
COMMAND_MODULES = ["build", "deploy", "converge", "cleanup", "image", "cache", "build_stage"]
# Which module registers a command, so `kade image ...` imports only what it runs (start-up time).
# A command missing here still works: then every module is loaded.
COMMAND_HOME = {
    "build": "build", "deploy": "deploy", "plan": "deploy", "rollback": "deploy", "history": "deploy",
    "uninstall": "deploy", "track": "deploy", "converge": "converge", "cleanup": "cleanup",
    "purge": "cleanup", "image": "image", "cache": "cache", "build-stage": "build_stage",
}

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class _UsageExit(SystemExit):
    """argparse's exit 2, carrying the message (for the JSON error)."""

    def __init__(self, message: str) -> None:
        super().__init__(EXIT_USAGE)
        self.message = message


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on usage errors already; keep that, but with our prefix."""

    def error(self, message: str) -> NoReturn:  # noqa: D401 - argparse API
        self.print_usage(sys.stderr)
        sys.stderr.write(f"kade: error: {message}\n")
        raise _UsageExit(message)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser for every command, or only for `command` when we know its module."""
    parser = _Parser(prog="kade", description="Build, publish, deploy and clean up without a Docker daemon.")
    parser.add_argument("--version", action=_VersionAction, nargs=0, help="show kade's version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    home = COMMAND_HOME.get(command or "")
    for name in [home] if home else COMMAND_MODULES:
        try:
            module = importlib.import_module(f"kade.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"kade.commands.{name}":
                continue  # command not written yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit code (see the module docstring)."""
    from kade.interrupt import cancel_on_signals
    from registry import cancel

    argv = sys.argv[1:] if argv is None else argv
    as_json = wants_json(argv)
    parser = build_parser(_first_word(argv))
    try:
        args = parser.parse_args(argv)
    except _UsageExit as exc:
        return _failed(as_json, "usage", EXIT_USAGE, exc.message, printed=True)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return _failed(as_json, "usage", EXIT_USAGE, "no command given", printed=True)
    as_json = getattr(args, "output", None) == "json" or as_json
    with cancel.scope() as token:
        try:
            with cancel_on_signals(token):
                return _run(args, as_json)
        except KeyboardInterrupt as exc:  # (also a signal landing just as the command ends)
            from kade.interrupt import exit_code

            signum = getattr(exc, "signum", None) or token.signum
            message = cancel.describe(signum).replace("cancelled", "interrupted")
            return _failed(as_json, "interrupted", exit_code(signum), message)


def _run(args: argparse.Namespace, as_json: bool) -> int:
    try:
        return int(args.func(args) or EXIT_OK)
    except Exception as exc:  # noqa: BLE001 - sorted below; anything else is a bug and re-raised
        if errors.is_usage(exc):
            return _failed(as_json, "usage", EXIT_USAGE, str(exc))
        if errors.is_expected(exc):
            return _failed(as_json, "failed", EXIT_FAILED, str(exc))
        raise


def _failed(as_json: bool, kind: str, code: int, message: str, printed: bool = False) -> int:
    """Say why the command failed: on stderr, and with -o json as a JSON result on stdout."""
    from kade.output import neutralise

    message = neutralise(message)  # it may quote a RUN's output, a file name, a server's answer
    if not printed:
        print(f"kade: error: {message}", file=sys.stderr)
    if as_json:
        print(json.dumps({"ok": False, "error": message, "kind": kind, "exit_code": code}, indent=2))
    return code


def wants_json(argv: list[str]) -> bool:
    """Whether the command line asks for `-o json` / `--output json` (also when it does not parse)."""
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        if arg in ("-o", "--output") and i + 1 < len(argv):
            if argv[i + 1] == "json":
                return True
        elif arg in ("-ojson", "-o=json", "--output=json"):
            return True
    return False


def _first_word(argv: list[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def entry() -> None:
    """The `kade` program: `main`, then exit. After an interrupt, exit without joining worker threads
    that are still blocked (a read the server never answers): what they did is cleaned up already."""
    code = main()
    if code >= 128:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    # The collector would walk every object of every loaded module once more while the interpreter
    # tears them down (~15 ms with requests loaded); exit handlers and flushes still run.
    gc.freeze()
    sys.exit(code)


class _VersionAction(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from common.version import __version__

        print(f"kade {__version__}")
        parser.exit(EXIT_OK)


if __name__ == "__main__":
    entry()
