"""The subordinate uid/gid range that root in a RUN step is on the host (like `podman --userns=auto`).

Each kade process takes one range of 65,536 ids for its whole life, and no other kade process on the
machine gets the same range while it lives: a lock file per range, held with flock (released by the
kernel however the process ends). The ranges come from /etc/subuid and /etc/subgid entries of the
user running kade (by name or uid, cut into 65,536-id slots, uid and gid slots paired in order);
without any, from kade's default pool: 64 slots from 0x70000000 (1,879,048,192), above systemd's
container range, skipping any slot that another user's entry overlaps. A RUN needs 65,536 ids:
Debian's apt drops privileges to `_apt` and images own files as `nobody` (65534).
"""
from __future__ import annotations

import fcntl
import os
import pwd
import threading
from dataclasses import dataclass
from pathlib import Path

RANGE_SIZE = 65536
DEFAULT_BASE = 0x70000000
DEFAULT_SLOTS = 64
LOCK_DIR = Path("/run/kade/userns")


@dataclass(frozen=True)
class IdRange:
    uid: int   # host uid of root in the RUN
    gid: int
    size: int = RANGE_SIZE

    def uid_map(self) -> str:
        return f"0 {self.uid} {self.size}\n"

    def gid_map(self) -> str:
        return f"0 {self.gid} {self.size}\n"


def parse_subids(text: str) -> list[tuple[str, int, int]]:
    """(owner, start, count) of each well-formed line of /etc/subuid or /etc/subgid."""
    out = []
    for line in text.splitlines():
        fields = line.strip().split(":")
        if len(fields) != 3 or line.lstrip().startswith("#"):
            continue
        owner, start, count = fields
        if start.isdigit() and count.isdigit():
            out.append((owner, int(start), int(count)))
    return out


def _slots(entries: list[tuple[str, int, int]], names: set[str]) -> list[int]:
    """Starts of whole RANGE_SIZE slots in the entries that belong to `names`."""
    starts = []
    for owner, start, count in entries:
        if owner in names:
            starts += [start + i * RANGE_SIZE for i in range(count // RANGE_SIZE)]
    return starts


def _overlaps(start: int, entries: list[tuple[str, int, int]]) -> bool:
    return any(s < start + RANGE_SIZE and start < s + c for _owner, s, c in entries)


def candidates(subuid: str, subgid: str, names: set[str]) -> list[IdRange]:
    """The ranges kade may use, in the order it tries them (a pure function of the two files)."""
    uid_entries, gid_entries = parse_subids(subuid), parse_subids(subgid)
    uids, gids = _slots(uid_entries, names), _slots(gid_entries, names)
    if uids and gids:
        return [IdRange(u, g) for u, g in zip(uids, gids)]
    pool = [DEFAULT_BASE + i * RANGE_SIZE for i in range(DEFAULT_SLOTS)]
    return [IdRange(s, s) for s in pool if not _overlaps(s, uid_entries) and not _overlaps(s, gid_entries)]


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _own_names() -> set[str]:
    uid = os.geteuid()
    names = {str(uid)}
    try:
        names.add(pwd.getpwuid(uid).pw_name)
    except KeyError:
        pass
    return names


class RangeError(Exception):
    pass


_held: tuple[IdRange, int] | None = None
_lock = threading.Lock()


def process_range(report=None, lock_dir: Path = LOCK_DIR) -> IdRange:
    """This process's range, taken on first use and kept until the process ends. Waits (saying so)
    when every range is held by other kade processes."""
    global _held
    with _lock:
        if _held is not None:
            return _held[0]
        ranges = candidates(_read("/etc/subuid"), _read("/etc/subgid"), _own_names())
        if not ranges:
            raise RangeError("no subordinate id range is free for RUN's user namespace: every default slot "
                             "overlaps an /etc/subuid or /etc/subgid entry; give this user 65536 ids there")
        lock_dir.mkdir(parents=True, exist_ok=True)
        for blocking in (False, True):
            for r in ranges if not blocking else ranges[:1]:
                fd = os.open(lock_dir / f"{r.uid}-{r.gid}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
                except BlockingIOError:
                    os.close(fd)
                    continue
                _held = (r, fd)
                return r
            if report is not None:
                report("warning", f"all {len(ranges)} subordinate id ranges for RUN are in use by other kade "
                                  "processes; waiting for one (add ranges to /etc/subuid and /etc/subgid)")
        raise AssertionError("unreachable")
