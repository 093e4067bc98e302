"""USER at execution: a name or ids resolved to uid, gid and groups from the rootfs's own /etc/passwd
and /etc/group, read inside the rootfs (a symlink there never leads to the host's)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from builder.errors import BuildError
from builder.rootfs_ops import Root


@dataclass(frozen=True)
class ResolvedUser:
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str = "/"


def _read_db(rootfs: Path, name: str) -> list[list[str]]:
    """/etc/passwd or /etc/group of the rootfs, read inside it (a symlink resolves in the rootfs,
    never on the host); no file, no rows."""
    try:
        with Root(rootfs) as root:
            data = root.read_file(f"/etc/{name}")
    except OSError:
        return []
    text = (data or b"").decode(errors="replace")
    return [ln.split(":") for ln in text.splitlines() if ln and not ln.startswith("#")]


def resolve_user(rootfs: Path, spec: str) -> ResolvedUser:
    """`USER name[:group]` or numeric ids -> uid, gid and supplementary groups from the rootfs."""
    spec = spec or "root"
    user, _, group = spec.partition(":")
    passwd = _read_db(rootfs, "passwd")
    groups_db = _read_db(rootfs, "group")
    uid: int | None = None
    gid: int | None = None
    name: str | None = None
    home = "/"
    for row in passwd:
        if len(row) < 4:
            continue
        if row[0] == user or (user.isdigit() and row[2] == user):
            uid, name, home = int(row[2]), row[0], (row[5] if len(row) > 5 else "/")
            gid = int(row[3]) if row[3].isdigit() else 0
            break
    if uid is None:
        if user == "root":  # as BuildKit: root is uid 0 also in an image without it in /etc/passwd
            uid, gid = 0, 0
        elif not user.isdigit():
            raise BuildError(f"unable to find user {user}: no matching entries in /etc/passwd",
                             hint="create the user in an earlier RUN or use a numeric uid")
        else:
            uid, gid = int(user), 0
    if group:
        gid = None
        for row in groups_db:
            if len(row) >= 3 and (row[0] == group or (group.isdigit() and row[2] == group)):
                gid = int(row[2])
                break
        if gid is None:
            if group == "root":
                gid = 0
            elif not group.isdigit():
                raise BuildError(f"unable to find group {group}: no matching entries in /etc/group")
            else:
                gid = int(group)
        return ResolvedUser(uid, gid, (gid,), home)
    supplementary = {gid or 0}
    if name:
        for row in groups_db:
            if len(row) >= 4 and name in row[3].split(",") and row[2].isdigit():
                supplementary.add(int(row[2]))
    return ResolvedUser(uid, gid or 0, tuple(sorted(supplementary)), home)
