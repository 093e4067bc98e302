"""RUN for a foreign platform: user-mode emulation through binfmt_misc (Debian's qemu-user-static).

The kernel runs a foreign ELF binary through the interpreter registered for its magic in
/proc/sys/fs/binfmt_misc. The handler must carry the F flag (the interpreter opened once, at
registration): RUN executes inside a rootfs that has no qemu, and a handler without F would look the
interpreter up there. Debian's qemu-user-static ships handlers with F in /usr/lib/binfmt.d; when the
package is installed but its handler is not registered (no systemd-binfmt ran, binfmt_misc was not
mounted), kade registers it, as systemd-binfmt would. The checks are pure (`handler_problem`,
`needs_emulation`); `ensure_emulation` does the I/O once per architecture and process.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from builder.errors import BuildError
from registry.model import Platform

BINFMT = Path("/proc/sys/fs/binfmt_misc")
HANDLER_CONFS = (Path("/usr/lib/binfmt.d"), Path("/etc/binfmt.d"))
PACKAGE = "qemu-user-static"
# OCI architecture -> qemu's name for it (the handler is `qemu-<name>`)
QEMU_NAME = {"amd64": "x86_64", "arm64": "aarch64", "arm": "arm", "386": "i386", "ppc64le": "ppc64le",
             "s390x": "s390x", "riscv64": "riscv64", "mips64le": "mips64el", "loong64": "loongarch64"}
NATIVE_TOO = {"amd64": {"386"}}  # what a host runs without emulation besides its own architecture


@dataclass(frozen=True)
class Handler:
    enabled: bool
    interpreter: str
    flags: str


def parse_handler(text: str) -> Handler:
    """A /proc/sys/fs/binfmt_misc/<name> file."""
    fields = dict(line.split(" ", 1) for line in text.splitlines()[1:] if " " in line)
    first = text.splitlines()[0].strip() if text.strip() else ""
    return Handler(first == "enabled", fields.get("interpreter", "").strip(), fields.get("flags:", "").strip())


def needs_emulation(platform: Platform, host: Platform) -> bool:
    p, h = platform.normalized(), host.normalized()
    return p.architecture != h.architecture and p.architecture not in NATIVE_TOO.get(h.architecture, set())


def handler_name(platform: Platform) -> str:
    arch = platform.normalized().architecture
    if arch not in QEMU_NAME:
        raise BuildError(f"RUN for {platform} needs user-mode emulation, and kade knows no qemu handler for {arch}",
                         hint="build that platform on a machine of that architecture")
    return "qemu-" + QEMU_NAME[arch]


def handler_problem(name: str, handler: Handler | None) -> str | None:
    """What keeps a registered (or missing) handler from running RUN steps; None when it can."""
    if handler is None:
        return f"{name} is not registered in binfmt_misc"
    if not handler.enabled:
        return f"the binfmt_misc handler {name} is disabled"
    if "F" not in handler.flags:
        return (f"the binfmt_misc handler {name} lacks the F flag (its interpreter {handler.interpreter} would be "
                "looked up inside the build's rootfs)")
    return None


_checked: set[str] = set()
_lock = threading.Lock()


def ensure_emulation(platform: Platform, host: Platform, binfmt: Path = BINFMT,
                     confs: tuple[Path, ...] = HANDLER_CONFS) -> None:
    """Make sure RUN for `platform` can run on `host`: nothing to do for the host's own, else the qemu
    handler registered (registered here from the package's file when only that is missing)."""
    if not needs_emulation(platform, host):
        return
    name = handler_name(platform)
    entry = binfmt / name
    with _lock:
        if str(entry) in _checked:
            return
        handler = _read_handler(entry)
        conf = next((c / f"{name}.conf" for c in confs if (c / f"{name}.conf").is_file()), None)
        if handler is None and conf is not None:
            _register(binfmt, conf)
            handler = _read_handler(entry)
        problem = handler_problem(name, handler)
        if problem:
            raise BuildError(f"RUN for {platform} on this {host} machine needs user-mode emulation: {problem}",
                             hint=f"install Debian's {PACKAGE} package (apt-get install {PACKAGE}), which ships "
                                  f"{name} with the F flag; kade registers it when binfmt_misc lacks it")
        _checked.add(str(entry))


def _read_handler(path: Path) -> Handler | None:
    try:
        return parse_handler(path.read_text())
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BuildError(f"cannot read {path}: {exc.strerror}") from None


def _register(binfmt: Path, conf: Path) -> None:
    """Register the handler line of a binfmt.d file (mounting binfmt_misc first if needed, as
    systemd-binfmt does)."""
    line = next((x.strip() for x in conf.read_text().splitlines() if x.strip().startswith(":")), None)
    if line is None:
        raise BuildError(f"{conf} holds no binfmt_misc handler line", hint=f"reinstall {PACKAGE}")
    try:
        if not (binfmt / "register").exists():
            from builder.linux import mount

            mount("binfmt_misc", binfmt, "binfmt_misc")
        (binfmt / "register").write_text(line)
    except OSError as exc:
        raise BuildError(f"cannot register {conf.name} in {binfmt}: {exc.strerror}",
                         hint="as root: mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc; "
                              f"cat {conf} > /proc/sys/fs/binfmt_misc/register") from None
