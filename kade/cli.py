"""Entry point: `kade <command> ...`.

Each command lives in `kade/commands/<name>.py` and exposes `register(subparsers)`, which adds its
parser and sets `func` (taking the parsed args, returning an exit code). Expected failures are
raised as the packages' own error types and printed as one clear message, never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

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


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on usage errors already; keep that, but with our prefix."""

    def error(self, message: str) -> None:  # noqa: D401 - argparse API
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"kade: error: {message}\n")


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
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(_first_word(argv))
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.func(args) or EXIT_OK)
    except errors.USAGE as exc:
        return _failed(args, exc, EXIT_USAGE)
    except errors.EXPECTED as exc:
        return _failed(args, exc, EXIT_FAILED)
    except KeyboardInterrupt:
        print("kade: interrupted", file=sys.stderr)
        return 130


def _failed(args: argparse.Namespace, exc: BaseException, code: int) -> int:
    """The error on stderr; with `--output json` also a JSON result on stdout, so that a pipeline
    reading stdout always gets one."""
    print(f"kade: error: {exc}", file=sys.stderr)
    if getattr(args, "output", None) == "json":
        import json

        print(json.dumps({"ok": False, "error": str(exc), "exit_code": code}, indent=2))
    return code


def _first_word(argv: list[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


class _VersionAction(argparse.Action):
    """--version, looked up only when asked for (importlib.metadata costs every start ~30 ms)."""

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        print(_version())
        parser.exit(EXIT_OK)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"kade {version('kade')}"
    except PackageNotFoundError:
        return "kade (not installed)"


if __name__ == "__main__":
    sys.exit(main())
