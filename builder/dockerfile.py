"""Parse a Dockerfile with BuildKit's own parser (the `dockerfile` package) into stages.

Only structure lives here: instructions with line numbers, flags and heredocs, grouped into
stages, plus the global ARGs before the first FROM. Variable expansion happens later, with the
scope each instruction sees (`builder.expand`, `builder.plan`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import dockerfile as _bk

from builder.errors import DockerfileSyntaxError
from builder.expand import ExpandError, process_word
from common import fsutil, utf8
from common.digits import decimal
from common.utf8 import NotUtf8

KNOWN = {
    "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK", "LABEL",
    "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR",
}
# Flags each instruction accepts (name -> needs a value; False: a boolean, `--f` or `--f=true|false`).
# These are the flags of the Dockerfile reference (frontend 1.x); anything else is a syntax error.
# What kade then refuses of them (ADD --keep-git-dir, RUN --device, ...) plan.py refuses with the reason.
FLAGS: dict[str, dict[str, bool]] = {
    "FROM": {"platform": True},
    "COPY": {"from": True, "chown": True, "chmod": True, "link": False, "parents": False, "exclude": True},
    "ADD": {"chown": True, "chmod": True, "link": False, "checksum": True, "keep-git-dir": False, "unpack": False,
            "exclude": True},
    "RUN": {"mount": True, "network": True, "security": True, "device": True},
    "HEALTHCHECK": {"interval": True, "timeout": True, "start-period": True, "start-interval": True,
                    "retries": True},
}
REPEATABLE = {"mount", "exclude", "device"}  # stored as mount0, mount1, ... (in order)
# `# syntax=` values kade honours: the stable (or upstream/labs) 1.x Dockerfile frontend, by tag or digest
_FRONTEND_1X = re.compile(r"((docker\.io/)?docker/dockerfile(-upstream)?(:1(\.\d+){0,2}(-labs)?)?"
                          r"(@sha256:[0-9a-f]{64})?)")
_ESCAPE_DIRECTIVE = re.compile(r"^#\s*escape\s*=\s*(\S)\s*$", re.IGNORECASE)
_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")
_HEREDOC_MARK = re.compile(r"(\d?)<<(-?)(\"|')?([A-Za-z0-9_.-]+)\3?")


@dataclass(frozen=True)
class Heredoc:
    name: str
    content: str
    fd: int = 0
    chomp: bool = False  # <<-: leading tabs stripped
    expand: bool = True  # unquoted marker: variables expanded (COPY/ADD), shell expands for RUN

    def text(self) -> str:
        if not self.chomp:
            return self.content
        return "".join(ln.lstrip("\t") for ln in self.content.splitlines(keepends=True))


@dataclass(frozen=True)
class Instruction:
    cmd: str  # upper case: RUN, COPY, ...
    args: tuple[str, ...]
    flags: dict[str, str | bool] = field(default_factory=dict, hash=False, compare=False)
    json: bool = False
    original: str = ""
    line: int = 0
    end_line: int = 0
    heredocs: tuple[Heredoc, ...] = ()
    file: str = "Dockerfile"

    def where(self) -> str:
        return f"{self.file}:{self.line}"

    def flag(self, name: str, default: str | None = None) -> str | None:
        value = self.flags.get(name)
        if value is None:
            return default
        return value if isinstance(value, str) else "true"

    def flag_values(self, name: str) -> list[str]:
        """Every value of a repeatable flag (--mount, --exclude, --device), in order."""
        return [str(self.flags[k]) for k in sorted((k for k in self.flags if k.startswith(name) and
                                                    k[len(name):].isdigit()), key=lambda k: int(k[len(name):]))]

    def flag_bool(self, name: str) -> bool:
        """A boolean flag: absent false, `--f` true, `--f=true|false` as written; anything else an error."""
        value = self.flags.get(name)
        if value is None or value is False:
            return False
        if value is True or str(value).lower() in ("true", "1"):
            return True
        if str(value).lower() in ("false", "0"):
            return False
        raise self.error(f"--{name}={value}: expected true or false")

    def error(self, message: str, hint: str | None = None) -> DockerfileSyntaxError:
        return DockerfileSyntaxError(f"{self.cmd}: {message}", file=self.file, line=self.line, hint=hint)


@dataclass(frozen=True)
class Stage:
    index: int
    name: str | None  # lower-cased `AS name`
    base: str  # unexpanded FROM argument
    platform: str | None
    instruction: Instruction
    instructions: tuple[Instruction, ...]

    def label(self) -> str:
        return self.name or str(self.index)


@dataclass(frozen=True)
class Dockerfile:
    path: str
    global_args: tuple[Instruction, ...]
    stages: tuple[Stage, ...]
    escape: str = "\\"
    directives: dict[str, str] = field(default_factory=dict, hash=False, compare=False)

    def stage(self, ref: str) -> Stage | None:
        """Find a stage by name (case-insensitive) or index."""
        low = ref.lower()
        for st in self.stages:
            if st.name == low:
                return st
        index = decimal(ref)
        return self.stages[index] if index is not None and index < len(self.stages) else None


def parse_file(path: str | Path) -> Dockerfile:
    """The Dockerfile at `path`, read inside its folder as BuildKit reads it: a symlink leading out of
    the folder (to a file of this machine) is refused unread."""
    p = Path(path)
    if p.is_symlink() and not fsutil.inside(p.parent, p):
        raise DockerfileSyntaxError(f"the Dockerfile is a symlink out of its folder (to {p.resolve()})", file=str(p),
                                    hint="BuildKit and kade read a Dockerfile inside its folder only")
    try:
        text = utf8.decode(p.read_bytes())
    except FileNotFoundError:
        raise DockerfileSyntaxError("Dockerfile not found", file=str(p), hint="pass -f with the right path") from None
    except NotUtf8 as exc:
        raise DockerfileSyntaxError(f"not UTF-8 text (byte 0x{exc.byte:02x})", file=str(p), line=exc.line,
                                    hint="save the Dockerfile as UTF-8") from None
    except OSError as exc:
        raise DockerfileSyntaxError(f"cannot read Dockerfile: {exc}", file=str(p)) from None
    return parse_string(text, str(p))


MAX_INSTRUCTIONS = 10_000   # real Dockerfiles hold hundreds; 40,000 LABELs took 100 s to plan (each step has its config)


def parse_string(text: str, path: str = "Dockerfile") -> Dockerfile:
    directives = _directives(text)
    escape = directives.get("escape", "\\")
    if escape not in ("\\", "`"):
        raise DockerfileSyntaxError(f"invalid escape directive {escape!r}: use \\ or `", file=path, line=1)
    syntax = directives.get("syntax")
    if syntax and not _FRONTEND_1X.fullmatch(syntax):
        raise DockerfileSyntaxError(f"# syntax={syntax}: kade reads Dockerfiles with BuildKit's own parser, as the "
                                    "docker/dockerfile:1 frontend does; it cannot run another frontend",
                                    file=path, line=1, hint="use # syntax=docker/dockerfile:1 or drop the line")
    commands = _parse_or_locate(text, path)
    if len(commands) > MAX_INSTRUCTIONS:
        raise DockerfileSyntaxError(
            f"more than {MAX_INSTRUCTIONS} instructions ({len(commands)}): kade plans each as a step of its own, "
            "and refuses what would take minutes to plan", file=path, line=commands[MAX_INSTRUCTIONS].start_line,
            hint="one ENV, LABEL or ARG instruction may set many names; or split the build")
    instructions = [_convert(c, path) for c in commands]
    global_args: list[Instruction] = []
    stages: list[Stage] = []
    current: tuple[Instruction, list[Instruction]] | None = None

    def close() -> None:
        if current is not None:
            head, body = current
            stages.append(_make_stage(len(stages), head, body, escape))

    for ins in instructions:
        if ins.cmd == "FROM":
            close()
            current = (ins, [])
        elif current is None:
            if ins.cmd != "ARG":
                raise ins.error("only ARG may come before the first FROM", hint="add a FROM line first")
            global_args.append(ins)
        else:
            current[1].append(ins)
    close()
    if not stages:
        raise DockerfileSyntaxError("no FROM instruction", file=path, line=1, hint="a Dockerfile needs a FROM line")
    seen: set[str] = set()
    for st in stages:
        if st.name and st.name in seen:
            raise st.instruction.error(f"duplicate stage name {st.name!r}")
        if st.name:
            seen.add(st.name)
    return Dockerfile(path=path, global_args=tuple(global_args), stages=tuple(stages), escape=escape,
                      directives=directives)


def parse_instruction_line(line: str, path: str, lineno: int) -> Instruction:
    """Parse one instruction on its own (ONBUILD triggers stored in a base image's config)."""
    try:
        commands = _bk.parse_string(line + "\n")
    except _bk.GoParseError as exc:
        raise DockerfileSyntaxError(f"bad ONBUILD trigger {line!r}: {exc}", file=path, line=lineno) from None
    if len(commands) != 1:
        raise DockerfileSyntaxError(f"bad ONBUILD trigger {line!r}", file=path, line=lineno)
    ins = _convert(commands[0], path)
    return Instruction(ins.cmd, ins.args, ins.flags, ins.json, ins.original, lineno, lineno, ins.heredocs, path)


# -- helpers ---------------------------------------------------------------------------------------

def _directives(text: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for raw in text.splitlines():
        m = _DIRECTIVE.match(raw.strip())
        if not m:
            break
        found[m.group(1).lower()] = m.group(2)
    return found


def _parse_or_locate(text: str, path: str) -> tuple:
    """Parse; on error, find the first line whose prefix already fails the same way."""
    try:
        return _bk.parse_string(text)
    except _bk.GoParseError as exc:
        message = str(exc)
    if message == "file with no instructions":
        raise DockerfileSyntaxError("the Dockerfile has no instructions", file=path, line=1)
    lines = text.splitlines(keepends=True)
    lo, hi = 1, len(lines)
    while lo < hi:  # smallest prefix length that raises the same message
        mid = (lo + hi) // 2
        try:
            _bk.parse_string("".join(lines[:mid]))
            failed = False
        except _bk.GoParseError as exc:
            failed = str(exc) == message
        if failed:
            hi = mid
        else:
            lo = mid + 1
    raise DockerfileSyntaxError(message, file=path, line=lo)


def _convert(c: "_bk.Command", path: str) -> Instruction:
    cmd = c.cmd.upper()
    if cmd not in KNOWN:
        raise DockerfileSyntaxError(f"unknown instruction: {c.cmd}", file=path, line=c.start_line,
                                    hint="check the spelling or a missing line continuation")
    args = tuple(c.value)
    if cmd == "ONBUILD":
        sub = (c.sub_cmd or "").upper()
        if not sub:
            raise DockerfileSyntaxError("ONBUILD needs an instruction", file=path, line=c.start_line)
        if sub in ("ONBUILD", "FROM", "MAINTAINER"):
            raise DockerfileSyntaxError(f"{sub} isn't allowed as an ONBUILD trigger", file=path, line=c.start_line)
        trigger = c.original.split(None, 1)[1] if len(c.original.split(None, 1)) > 1 else ""
        return Instruction(cmd, (trigger,), {}, False, c.original, c.start_line, c.end_line, (), path)
    flags = _flags(cmd, tuple(_as_written(f, c.original) for f in c.flags), path, c.start_line)
    heredocs = _heredocs(c)
    # `CMD []` and `ENTRYPOINT []` reset what the base image set (BuildKit); RUN may be a lone heredoc
    empty_ok = cmd in ("CMD", "ENTRYPOINT") and bool(c.json) or cmd == "RUN" and bool(heredocs)
    if not args and not empty_ok:
        raise DockerfileSyntaxError(f"{cmd} requires at least one argument", file=path, line=c.start_line)
    if cmd == "SHELL" and not c.json:
        raise DockerfileSyntaxError('SHELL requires the arguments to be in JSON form, e.g. SHELL ["/bin/sh", "-c"]',
                                    file=path, line=c.start_line)
    if cmd in ("COPY", "ADD") and len(args) < 2:
        raise DockerfileSyntaxError(f"{cmd} requires at least two arguments (sources and a destination)",
                                    file=path, line=c.start_line)
    if cmd == "FROM" and len(args) not in (1, 3) or cmd == "FROM" and len(args) == 3 and args[1].upper() != "AS":
        raise DockerfileSyntaxError("FROM requires either one or three arguments: FROM <image> [AS <name>]",
                                    file=path, line=c.start_line)
    if cmd in ("CMD", "ENTRYPOINT", "RUN") and not c.json and args and args[0].lstrip().startswith("["):
        raise DockerfileSyntaxError(f"{cmd} looks like JSON but does not parse as a JSON array: {args[0]}",
                                    file=path, line=c.start_line, hint='use double quotes: ["a", "b"]')
    return Instruction(cmd, args, flags, bool(c.json), c.original, c.start_line, c.end_line, heredocs, path)


def _as_written(flag: str, original: str) -> str:
    """The parser hands flags over as their UTF-8 bytes read as Latin-1 (`--chown=é` comes as
    `--chown=Ã©`; values and the original line are right): the flag as the line has it."""
    try:
        fixed = flag.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return flag
    return fixed if fixed in original else flag


def _flags(cmd: str, raw: tuple[str, ...], path: str, line: int) -> dict[str, str | bool]:
    allowed = FLAGS.get(cmd, {})
    out: dict[str, str | bool] = {}
    for item in raw:
        if not item.startswith("--"):
            raise DockerfileSyntaxError(f"bad flag {item!r}", file=path, line=line)
        name, eq, value = item[2:].partition("=")
        if name not in allowed:
            raise DockerfileSyntaxError(f"unknown flag: --{name} for {cmd}", file=path, line=line)
        if allowed[name] and not eq:
            raise DockerfileSyntaxError(f"--{name} for {cmd} needs a value (--{name}=...)", file=path, line=line)
        if name in REPEATABLE:  # RUN may carry several --mount flags, COPY several --exclude
            out[f"{name}{sum(1 for k in out if k.startswith(name) and k[len(name):].isdigit())}"] = value
            continue
        out[name] = value if eq else True
    return out


def _heredocs(c: "_bk.Command") -> tuple[Heredoc, ...]:
    if not c.heredocs:
        return ()
    first_line = c.original.split("\n", 1)[0]
    marks = {m.group(4): m for m in _HEREDOC_MARK.finditer(first_line)}
    out = []
    for h in c.heredocs:
        m = marks.get(h.name)
        chomp = bool(m and m.group(2))
        quoted = bool(m and m.group(3))
        out.append(Heredoc(name=h.name, content=h.content, fd=h.file_descriptor, chomp=chomp, expand=not quoted))
    return tuple(out)


def _make_stage(index: int, head: Instruction, body: list[Instruction], escape: str) -> Stage:
    name = None
    if len(head.args) == 3:
        name = head.args[2].lower()
        if not re.fullmatch(r"[a-z][a-z0-9._-]*", name):
            raise head.error(f"invalid stage name {head.args[2]!r}", hint="use letters, digits, '.', '_' or '-'")
    platform = head.flag("platform")
    return Stage(index=index, name=name, base=head.args[0], platform=platform, instruction=head,
                 instructions=tuple(body))


def stage_base(stage: Stage, global_scope: dict[str, str], escape: str = "\\") -> str:
    """The FROM argument with the global ARGs (and their --build-arg values) expanded."""
    try:
        value = process_word(stage.base, global_scope, escape)
    except ExpandError as exc:
        raise stage.instruction.error(str(exc.detail)) from None
    if not value:
        raise stage.instruction.error(f"base name ({stage.base}) expands to an empty string",
                                      hint="set it with --build-arg or give the ARG a default")
    return value


# -- ARG scope -------------------------------------------------------------------------------------

def arg_pairs(ins: Instruction, scope: dict[str, str], escape: str = "\\") -> list[tuple[str, str | None]]:
    """`ARG A B=2` -> [("A", None), ("B", "2")]; defaults are expanded against `scope`."""
    out: list[tuple[str, str | None]] = []
    for item in ins.args:
        name, eq, default = item.partition("=")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ins.error(f"invalid ARG name {name!r}")
        if eq:
            try:
                out.append((name, process_word(default, scope, escape)))
            except ExpandError as exc:
                raise ins.error(exc.detail) from None
        else:
            out.append((name, None))
    return out


def global_scope(df: Dockerfile, build_args: dict[str, str]) -> dict[str, str]:
    """The ARGs declared before the first FROM, with --build-arg overriding their defaults.

    Also returns names declared without a default and not given (absent from the dict), so an
    expansion of them gives "" as Docker does.
    """
    scope: dict[str, str] = {}
    for ins in df.global_args:
        for name, default in arg_pairs(ins, scope, df.escape):
            if name in build_args:
                scope[name] = build_args[name]
            elif default is not None:
                scope[name] = default
    return scope
