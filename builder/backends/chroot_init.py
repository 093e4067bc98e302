"""The process that holds a RUN step in a builder pod (builder/backends/chroot.py starts it through
sandbox.spawn_init; stdlib and builder.linux only, so it starts in a few tens of milliseconds).

    kade ─ reaper (the pod's root; a child subreaper)
             └─ the command: chroot()ed into the rootfs, as the step's user, in a session of its own

A pod's RUN shares the pod's PID namespace, so nothing else ends what it leaves running (a daemon, or
a background job that keeps the output pipe open and kade waiting). The reaper is a subreaper
(PR_SET_CHILD_SUBREAPER): every process the command orphans becomes its child, and when the command
exits it kills them all. It holds nothing but the RUN, so it ends only the RUN's processes: when kade
itself was the subreaper, the end of one RUN killed every child kade had started meanwhile, another
stage's RUN and kade's own helpers among them. SIGTERM (kade stopping the step) ends the command and
the rest at once. The reaper dies with kade (PR_SET_PDEATHSIG), and so does the command's first process
(re-armed after its uid change).

Status pipe: `+` once the command runs, `!setup:message` when it cannot start. Exit status: the
command's (128+N for signal N).
"""
from __future__ import annotations

import os
import signal
import subprocess

from builder import linux as L
from builder.sandbox_init import received

TYPE_CHECKING = False   # typing itself is not imported: it costs this process ms to start

if TYPE_CHECKING:
    from typing import Any, NoReturn


def main() -> None:
    """`python -c ... <spec fd> <status fd>`, started by kade."""
    spec, status = received()
    L.become_subreaper()
    signal.signal(signal.SIGTERM, lambda *_: _end(128 + signal.SIGTERM))
    name = spec["argv"][0]
    try:
        proc = subprocess.Popen(spec["argv"], env=spec["env"], stdin=subprocess.DEVNULL,
                                preexec_fn=lambda: _enter(spec), start_new_session=True)
    except (FileNotFoundError, PermissionError) as exc:
        status.fail("setup", f"cannot start {name!r} in the rootfs: {exc.strerror}")
    except subprocess.SubprocessError as exc:
        status.fail("setup", f"cannot enter the rootfs for {name!r}: {exc}")
    status.say("+")
    code = proc.wait()
    _end(128 - code if code < 0 else code)


def _enter(spec: dict[str, Any]) -> None:
    """In the command's process, between fork and exec (this process has one thread: safe)."""
    L.drop_capabilities(L.CHROOTED_RUN_CAPS, spec["last_capability"])  # effective until exec: chroot still works
    L.clear_inheritable_and_ambient()
    os.chroot(spec["root"])
    os.chdir(spec["workdir"])
    os.setgroups(spec["groups"])
    os.setgid(spec["gid"])
    os.setuid(spec["uid"])
    L.die_with_parent()   # the uid change disarmed it
    L.prctl(L.PR_SET_NO_NEW_PRIVS, 1)
    if spec["seccomp"]:   # the local sandbox's filter, on top of the pod's RuntimeDefault profile
        program = bytes.fromhex(spec["seccomp"])
        L.set_seccomp(program, spec["seccomp_length"])


def _end(code: int) -> NoReturn:
    """Kill what the command left (its orphans are this process's children now), then exit with `code`."""
    L.kill_children_except(set())
    os._exit(code)
