"""What turns an upper dir into a layer dir (builder/layerstore.py): `normalize` makes it hold what its
layer holds, `fingerprint_of` records the result, `keep_xattr` says which xattrs a layer dir keeps
and `written_xattr` which a layer blob kade writes keeps.

A RUN's big upper dir (`APART_FROM` changes or more) is normalized in a child process (`Normalizing`)
while the build process writes its layer from the same files: both walk every entry (20,000 files take
each about 0.4 s), and on threads of one process they took turns at the GIL and both ran two to three
times slower; two processes use two cores. This module imports only the standard library, so the child starts in a few milliseconds.

The two can run at once because what normalize changes doesn't change what the writer writes: mtimes
(the writer writes whole seconds clamped to the epoch, what normalize sets) and xattrs that a layer
doesn't keep (the writer reads only `written_xattr` ones, which normalize never touches). Removing a socket
does move its directory's mtime: sockets go before the child starts (`layerstore.tidy`).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import struct
import subprocess
import sys
from pathlib import Path
from typing import Iterable

OPAQUE = "user.overlay.opaque"          # what marks an opaque dir for kade's overlays (userxattr)
OPAQUE_MARKS = (OPAQUE, "trusted.overlay.opaque")   # what a committed opaque dir carries
Fingerprint = tuple[str, int, int]      # (sha256 over the entries' lstat, disk usage in bytes, entries)

APART_FROM = 4096   # changes: a smaller upper dir is normalized in the build process (a child takes ~25 ms to start)
_STAT = struct.Struct("<QqqqqqQQQ")


def keep_xattr(name: str) -> bool:
    """Whether a layer dir keeps an extended attribute: file capabilities and `user.*` (not overlayfs'
    own marks), as BuildKit's snapshots keep them for the steps after; SELinux labels and `trusted.*`
    are host state."""
    if name == "security.capability":
        return True
    return name.startswith("user.") and not name.startswith("user.overlay.")


def context_xattr(name: str) -> bool:
    """Whether COPY brings an xattr of a build context file along: `user.*` ones, not file capabilities
    (BuildKit's context transfer sets a file's xattrs before its owner, and the chown clears them)."""
    return name != "security.capability" and keep_xattr(name)


def written_xattr(name: str) -> bool:
    """Whether a layer blob kade writes keeps an extended attribute: file capabilities only, as BuildKit's
    differ (containerd's archive) and moby write layers. So a `user.*` xattr a RUN sets (or a COPY'd
    file has) is seen by the later steps of the build, and is not in the image, as with BuildKit."""
    return name == "security.capability"


def fingerprint_of(stats: Iterable[tuple[bytes, os.stat_result]]) -> Fingerprint:
    """The fingerprint of a tree from the (relative path, lstat) of its entries: every entry's lstat
    but atime (reading a file is no change), in sorted order; disk usage counts each inode once."""
    items: list[bytes] = []
    usage = 0
    seen: set[int] = set()
    for rel, st in stats:
        items.append(rel + b"\0" + _STAT.pack(st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns,
                                               st.st_ctime_ns, st.st_ino, st.st_nlink, st.st_rdev))
        if st.st_ino not in seen:
            seen.add(st.st_ino)
            usage += st.st_blocks * 512
    items.sort()
    digest = hashlib.sha256()
    for item in items:
        digest.update(item)
    return "sha256:" + digest.hexdigest(), usage, len(items)


def normalize(fs: str | os.PathLike[str], epoch: int | None) -> list[tuple[bytes, os.stat_result]]:
    """Make an upper dir hold what its layer holds: opaque dirs (user.overlay.opaque: kade's overlays
    use userxattr) marked for both kinds of overlay mount, overlay's other xattrs and every xattr a layer
    does not keep removed (a trusted.overlay.opaque copied up from a lower dir too), sockets removed (a
    layer never has them), mtimes in whole seconds and clamped to `epoch` as the layer writer writes them.
    Returns the (relative path, lstat) of every entry as it is left (what `fingerprint_of` takes)."""
    as_root = os.geteuid() == 0

    def fix(path: bytes, st: os.stat_result, moved: bool) -> bool:
        """Normalize one entry; whether anything of it changed (`moved`: its mtime was, meanwhile)."""
        changed = False
        is_dir = stat.S_ISDIR(st.st_mode)
        try:
            names = os.listxattr(path, follow_symlinks=False)
        except OSError:
            names = []
        opaque = is_dir and OPAQUE in names and _xattr(path, OPAQUE) == b"y"
        for name in names:
            if name in OPAQUE_MARKS and opaque or keep_xattr(name):
                continue
            with contextlib.suppress(OSError):
                os.removexattr(path, name, follow_symlinks=False)
                changed = True
        if opaque:
            for name in OPAQUE_MARKS:
                if name in names or name.startswith("trusted.") and not as_root:
                    continue
                with contextlib.suppress(OSError):   # trusted.* is refused inside a user namespace
                    os.setxattr(path, name, b"y", follow_symlinks=False)
                    changed = True
        mtime = st.st_mtime_ns // 1_000_000_000
        if epoch is not None:
            mtime = min(mtime, epoch)
        if (moved or mtime * 1_000_000_000 != st.st_mtime_ns) and not (stat.S_ISCHR(st.st_mode) and st.st_rdev == 0):
            os.utime(path, ns=(st.st_atime_ns, mtime * 1_000_000_000), follow_symlinks=False)
            changed = True
        return changed

    out: list[tuple[bytes, os.stat_result]] = []
    root = os.fsencode(fs)
    # children before their dir (fixing a child moves its dir's mtime), with an explicit stack: a RUN
    # may leave a directory chain deeper than Python's recursion limit
    pending: list[tuple[bytes, bytes, os.stat_result, bool | None]] = [(b"", root, os.lstat(root), None)]
    while pending:
        rel, path, st, moved = pending.pop()
        if moved is None and stat.S_ISDIR(st.st_mode):
            with os.scandir(path) as it:
                children = [(e.name, e.path, e.stat(follow_symlinks=False)) for e in it]
            kept = []
            for name, child, cst in children:
                if stat.S_ISSOCK(cst.st_mode):
                    os.unlink(child)   # this dir's mtime moved: set back in `fix`, from `st`
                else:
                    kept.append((rel + b"/" + name if rel else name, child, cst, None))
            pending.append((rel, path, st, len(kept) < len(children)))
            pending.extend(reversed(kept))
            continue
        try:
            out.append((rel, os.lstat(path) if fix(path, st, bool(moved)) else st))
        except OSError as exc:   # os.utime's error names no file
            raise OSError(exc.errno, exc.strerror, exc.filename or path) from None
    return out


def _xattr(path: bytes, name: str) -> bytes | None:
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError:
        return None


class NormalizeError(Exception):
    """The child process could not normalize the upper dir (its error, one line)."""


class Normalizing:
    """`fingerprint_of(normalize(fs, epoch))` in a child process, started now; `result` waits for it.
    Nothing may write to `fs` meanwhile but what the module docstring allows."""

    def __init__(self, fs: Path, epoch: int | None):
        self.fs, self.epoch = fs, epoch
        root = str(Path(__file__).resolve().parents[1])
        code = f"import sys; sys.path.insert(0, {root!r}); from builder.layernorm import main; main()"
        # -I -S: no environment, no site-packages (only the standard library is needed); -B: no bytecode written
        self._proc = subprocess.Popen([sys.executable, "-I", "-S", "-B", "-c", code, str(fs), json.dumps(epoch)],
                                      stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def result(self) -> Fingerprint:
        out, err = self._proc.communicate()
        if self._proc.returncode != 0:
            why = err.decode(errors="replace").strip().splitlines()
            raise NormalizeError(why[-1] if why else f"exit status {self._proc.returncode}")
        found = json.loads(out)
        return found["fingerprint"], found["bytes"], found["entries"]

    def cancel(self) -> None:
        """Stop the child (the upper dir is being dropped) and reap it."""
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.communicate()


def main() -> None:
    """The child: argv = the upper dir, the epoch as JSON; prints the fingerprint as JSON."""
    fs, epoch = sys.argv[1], json.loads(sys.argv[2])
    try:
        digest, usage, entries = fingerprint_of(normalize(fs, epoch))
    except OSError as exc:
        sys.exit(f"{os.fsdecode(exc.filename)}: {exc.strerror}" if exc.filename else str(exc))
    print(json.dumps({"fingerprint": digest, "bytes": usage, "entries": entries}))
