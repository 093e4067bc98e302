"""The effect of each Dockerfile instruction on the image config (pure).

A config here is `registry.imageconfig.ImageConfig`; functions return new values and never touch
their inputs.
"""
from __future__ import annotations

import re
from dataclasses import replace
from pathlib import PurePosixPath

from builder.errors import BuildError
from common.durations import GO_UNITS, nanoseconds
from common.epoch import clamped, image_created
from registry.imageconfig import History, ImageConfig
from registry.model import Platform
from common.digits import decimal

DEFAULT_SHELL = ["/bin/sh", "-c"]
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MAX_RETRIES = 2 ** 31 - 1   # HEALTHCHECK --retries: BuildKit parses it as a 32-bit int


def empty_config(platform: Platform) -> ImageConfig:
    """The config of `FROM scratch` (BuildKit's emptyImage: the platform, PATH and WorkingDir "/")."""
    return ImageConfig.empty(platform,
                             {"Env": [f"PATH={DEFAULT_PATH}"], "WorkingDir": "/"})


def set_env(cfg: ImageConfig, pairs: list[tuple[str, str]]) -> ImageConfig:
    """ENV: a replaced variable keeps its place (as Docker does), new ones go last."""
    return cfg.with_env(pairs)


def set_labels(cfg: ImageConfig, pairs: list[tuple[str, str]]) -> ImageConfig:
    labels = cfg.labels
    labels.update(pairs)
    return cfg.with_runtime(Labels=labels)


def set_workdir(cfg: ImageConfig, path: str) -> ImageConfig:
    return cfg.with_runtime(WorkingDir=resolve_workdir(cfg.working_dir or "/", path))


def resolve_workdir(current: str, path: str) -> str:
    """WORKDIR is relative to the previous one; the result is clean and absolute, except that an absolute
    path written with a trailing slash keeps it in the config, as BuildKit's NormalizeWorkdir keeps an
    absolute WORKDIR as written (BuildKit also keeps `..` there; kade cleans it, since the same value
    names the directory it creates)."""
    joined = PurePosixPath(current or "/") / path
    parts: list[str] = []
    for part in joined.parts[1:]:
        if part == "..":
            if parts:
                parts.pop()
        elif part not in (".", ""):
            parts.append(part)
    clean = "/" + "/".join(parts)
    return clean + "/" if path.startswith("/") and path.endswith("/") and clean != "/" else clean


def set_user(cfg: ImageConfig, user: str) -> ImageConfig:
    return cfg.with_runtime(User=user)


def set_author(cfg: ImageConfig, author: str) -> ImageConfig:
    """MAINTAINER: the config's top-level author."""
    return replace(cfg, author=author)


def shell_of(cfg: ImageConfig) -> list[str]:
    return list(cfg.get("Shell") or DEFAULT_SHELL)


def command_argv(cfg: ImageConfig, args: tuple[str, ...], json_form: bool) -> list[str]:
    """RUN/CMD/ENTRYPOINT: exec form as is; shell form wrapped in the current SHELL."""
    if json_form:
        return list(args)
    return shell_of(cfg) + [" ".join(args)]


def set_cmd(cfg: ImageConfig, argv: list[str]) -> ImageConfig:
    return cfg.with_runtime(Cmd=argv)


def set_entrypoint(cfg: ImageConfig, argv: list[str], cmd_set_in_stage: bool) -> ImageConfig:
    """Docker's rule: ENTRYPOINT resets a CMD inherited from the base image (not one set in this stage)."""
    new = cfg.with_runtime(Entrypoint=argv or None)
    return new if cmd_set_in_stage else new.with_runtime(Cmd=None)


def add_exposed(cfg: ImageConfig, ports: list[str]) -> ImageConfig:
    exposed = dict(cfg.get("ExposedPorts", {}))
    for spec in ports:
        for p in expand_port(spec):
            exposed[p] = {}
    return cfg.with_runtime(ExposedPorts=exposed)


def expand_port(spec: str) -> list[str]:
    """`80`, `80/udp`, `8000-8002/tcp` -> ["80/tcp"], ["80/udp"], [...]."""
    port, _, proto = spec.partition("/")
    proto = (proto or "tcp").lower()
    if proto not in ("tcp", "udp", "sctp"):
        raise BuildError(f"invalid protocol {proto!r} in EXPOSE {spec}")
    lo, dash, hi = port.partition("-")
    start, end = decimal(lo), decimal(hi) if dash else decimal(lo)
    if start is None or end is None:
        raise BuildError(f"invalid port {spec!r} in EXPOSE", hint="use NUMBER[/tcp|udp] or START-END")
    if not (0 < start <= end <= 65535):
        raise BuildError(f"invalid port range {spec!r} in EXPOSE")
    return [f"{n}/{proto}" for n in range(start, end + 1)]


def add_volumes(cfg: ImageConfig, paths: list[str]) -> ImageConfig:
    volumes = dict(cfg.get("Volumes", {}))
    for p in paths:
        if not p.strip():
            raise BuildError("VOLUME specified can not be an empty string")
        volumes[p] = {}
    return cfg.with_runtime(Volumes=volumes)


# Linux's signal names as BuildKit reads STOPSIGNAL (moby/sys/signal: any case, SIG prefix optional)
_SIGNALS = frozenset(("ABRT ALRM BUS CHLD CLD CONT FPE HUP ILL INT IO IOT KILL PIPE POLL PROF PWR QUIT SEGV STKFLT "
                      "STOP SYS TERM TRAP TSTP TTIN TTOU URG USR1 USR2 VTALRM WINCH XCPU XFSZ RTMIN RTMAX").split()
                     + [f"RTMIN+{n}" for n in range(1, 16)] + [f"RTMAX-{n}" for n in range(1, 15)])


def set_stopsignal(cfg: ImageConfig, signal: str) -> ImageConfig:
    """STOPSIGNAL as written, when BuildKit would take it: a non-zero number or a known signal name."""
    number = re.fullmatch(r"[+-]?\d+", signal)
    name = signal.upper().removeprefix("SIG")
    if (int(signal) == 0) if number else name not in _SIGNALS:
        raise BuildError(f"invalid STOPSIGNAL {signal!r}", hint="use a signal name (SIGTERM, sigquit, KILL) or a number")
    return cfg.with_runtime(StopSignal=signal)


def set_shell(cfg: ImageConfig, argv: list[str]) -> ImageConfig:
    return cfg.with_runtime(Shell=argv)


def parse_duration(text: str) -> int:
    """Go duration ("30s", "1m30s", "500ms") -> nanoseconds."""
    try:
        return nanoseconds(text, GO_UNITS, bare_seconds=False)
    except ValueError:
        raise BuildError(f"invalid duration {text!r}", hint="use Go durations like 30s, 1m30s, 500ms") from None


def set_healthcheck(cfg: ImageConfig, args: tuple[str, ...], json_form: bool,
                    flags: dict[str, str | bool]) -> ImageConfig:
    kind = args[0].upper() if args else ""
    if kind == "NONE":
        if len(args) > 1:
            raise BuildError("HEALTHCHECK NONE takes no arguments")
        return cfg.with_runtime(Healthcheck={"Test": ["NONE"]})
    if kind != "CMD" or len(args) < 2:
        raise BuildError("HEALTHCHECK needs CMD <command> or NONE")
    test = ["CMD"] + list(args[1:]) if json_form else ["CMD-SHELL", " ".join(args[1:])]
    hc: dict[str, object] = {"Test": test}
    for flag, key in (("interval", "Interval"), ("timeout", "Timeout"), ("start-period", "StartPeriod"),
                      ("start-interval", "StartInterval")):
        if flag in flags:
            value = parse_duration(str(flags[flag]))
            if value:
                hc[key] = value
    if "retries" in flags:
        retries = str(flags["retries"])
        count = decimal(retries)
        if count is None or count > MAX_RETRIES:
            raise BuildError(f"invalid --retries {retries!r}: must be a whole number up to {MAX_RETRIES}")
        if count:
            hc["Retries"] = count
    return cfg.with_runtime(Healthcheck=hc)


def add_onbuild(cfg: ImageConfig, trigger: str) -> ImageConfig:
    return cfg.with_runtime(OnBuild=[*cfg.get("OnBuild", []), trigger])


def clear_onbuild(cfg: ImageConfig) -> ImageConfig:
    """Triggers run once, in the first stage built FROM the image; they don't propagate further."""
    return cfg.with_runtime(OnBuild=None)


def add_history(cfg: ImageConfig, created_by: str, empty_layer: bool, diff_id: str | None = None,
                comment: str = "kade", created: str | None = None) -> ImageConfig:
    return cfg.with_layer(History(created_by=created_by, comment=comment, created=created,
                                  empty_layer=True if empty_layer else None), diff_id)


def with_times(cfg: ImageConfig, epoch: int | None) -> ImageConfig:
    """The config a build publishes: its history times no later than the epoch, `created` by
    common/epoch.image_created (the epoch, else the newest history time)."""
    history = cfg.history or ()
    times = [clamped(h.created, epoch) for h in history]
    if any(t != h.created for t, h in zip(times, history)):
        cfg = cfg.with_build_state(cfg.diff_ids or (), tuple(replace(h, created=t) for h, t in zip(history, times)))
    return cfg.with_created(image_created(times, epoch))
