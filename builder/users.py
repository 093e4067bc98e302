"""USER at execution: a name or ids resolved to uid, gid and groups from the rootfs's own /etc/passwd
and /etc/group, read inside the rootfs (a symlink there never leads to the host's)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from builder.errors import BuildError
from builder.rootfs_ops import Root
from common.digits import MAX_ID, decimal


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
    """`USER name[:group]` or numeric ids -> uid, gid and supplementary groups from the rootfs (whose
    /etc/passwd and /etc/group rows with ids that are no ids are skipped, as libc skips them)."""
    spec = spec or "root"
    user, _, group = spec.partition(":")
    passwd = [(row, _id(row[2]), _id(row[3])) for row in _read_db(rootfs, "passwd") if len(row) >= 4]
    groups_db = [(row, _id(row[2])) for row in _read_db(rootfs, "group") if len(row) >= 3]
    wanted = numeric_id(user, "uid")
    uid: int | None = None
    gid: int | None = None
    name: str | None = None
    home = "/"
    for row, row_uid, row_gid in passwd:
        if row_uid is not None and (row[0] == user or row_uid == wanted):
            uid, name, home = row_uid, row[0], (row[5] if len(row) > 5 else "/")
            gid = row_gid or 0
            break
    if uid is None:
        if user == "root":  # as BuildKit: root is uid 0 also in an image without it in /etc/passwd
            uid, gid = 0, 0
        elif wanted is None:
            raise BuildError(f"unable to find user {user}: no matching entries in /etc/passwd",
                             hint="create the user in an earlier RUN or use a numeric uid")
        else:
            uid, gid = wanted, 0
    if group:
        wanted_gid = numeric_id(group, "gid")
        gid = next((g for row, g in groups_db if g is not None and (row[0] == group or g == wanted_gid)), None)
        if gid is None:
            if group == "root":
                gid = 0
            elif wanted_gid is None:
                raise BuildError(f"unable to find group {group}: no matching entries in /etc/group")
            else:
                gid = wanted_gid
        return ResolvedUser(uid, gid, (gid,), home)
    supplementary = {gid or 0}
    if name:
        for row, g in groups_db:
            if len(row) >= 4 and name in row[3].split(",") and g is not None:
                supplementary.add(g)
    return ResolvedUser(uid, gid or 0, tuple(sorted(supplementary)), home)


def file_owner(rootfs: Path, spec: str, unknown: list[str] | None = None) -> tuple[int, int]:
    """Who owns what a file operation makes for `spec` (COPY/ADD --chown, WORKDIR under a USER), as
    BuildKit's file op reads a user (llb.WithUser): ids as written (a uid alone is also the gid), a user
    name's uid and primary gid from /etc/passwd, a group name's gid from /etc/group. A name the rootfs
    doesn't know counts as 0 (user) or changes nothing (group), never an error, as in BuildKit; it is
    appended to `unknown` (for a warning)."""
    user, _, group = (spec or "root").partition(":")
    uid = numeric_id(user, "uid")
    gid = uid
    if uid is None:
        row = next((r for r in _read_db(rootfs, "passwd") if len(r) >= 4 and r[0] == user), None)
        uid, gid = (_id(row[2]) or 0, _id(row[3]) or 0) if row else (0, 0)
        if row is None and user not in ("", "root") and unknown is not None:
            unknown.append(f"user {user!r}")
    if group:
        wanted = numeric_id(group, "gid")
        if wanted is None:
            wanted = next((_id(r[2]) for r in _read_db(rootfs, "group") if len(r) >= 3 and r[0] == group), None)
            if wanted is None and group != "root" and unknown is not None:
                unknown.append(f"group {group!r}")
        gid = gid if wanted is None else wanted
    return uid, gid if gid is not None else 0


def numeric_id(text: str, what: str) -> int | None:
    """A uid or gid written as a number (None: a name); one out of uid_t's range is an error."""
    value = decimal(text)
    if value is not None and value > MAX_ID:
        raise BuildError(f"{what} {text} is out of range (0 to {MAX_ID})")
    return value


def _id(text: str) -> int | None:
    """An id of an /etc/passwd or /etc/group row: None for one that is not a valid number."""
    value = decimal(text)
    return value if value is not None and value <= MAX_ID else None
