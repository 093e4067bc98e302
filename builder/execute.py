"""Executing one planned step on a rootfs: the thin seam between orchestration (build.py) and the
filesystem/executor modules of the "layers" helper (unpack, snapshot, sandbox, layer, rootpath).

Everything here works on a local directory and returns layer changes, so the same code runs in a
local process or inside a builder pod. COPY/ADD/WORKDIR are done here directly (their changes are
known exactly, no tree diff needed); RUN goes through the sandbox and the snapshot diff.
"""
from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import stat
import tarfile
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, cast

import zstandard

from builder import image_config as ic
from builder.changes import Change
from builder.errors import BuildError, StepFailedError
from builder.masking import SecretMask
from builder.context import Source, is_wildcard
from builder.globs import Glob, GlobError
from builder.layernorm import context_xattr, keep_xattr
from builder.plan import CopySpec, Step
from builder.plan import Mount as PlanMount
from builder.modes import parse_chmod
from builder.users import file_owner, resolve_user
from builder.rootfs_ops import (Meta, Override, Parts, Root, TreeCopy, image_path, replace_with_file, set_meta,
                                split)
from common import fsutil

if TYPE_CHECKING:
    from builder.stageroot import StageRoot, Tree

OUTPUT_TAIL = 20  # last output lines kept for the error of a failed RUN
TAIL_LINE_MAX = 2000  # characters of each of those lines
LINE_MAX = 64 * 1024  # bytes of one output line shown; the rest of a longer line is counted, not kept


class OutputLines:
    """A RUN's output bytes as lines of at most LINE_MAX bytes, in bounded memory: the rest of a longer
    line is dropped and counted, and the line says so. `guard` more bytes are dropped at a cut, so that a
    secret (of up to `guard` + 1 bytes) cut in two never shows its first part unredacted."""

    def __init__(self, emit: Callable[[str], None], guard: int = 0) -> None:
        self.emit, self.guard = emit, guard
        self.pending = bytearray()
        self.dropped = 0

    def feed(self, data: bytes) -> None:
        parts = data.split(b"\n")
        for i, part in enumerate(parts):
            room = max(0, LINE_MAX - len(self.pending))
            self.pending += part[:room]
            self.dropped += max(0, len(part) - room)
            if i < len(parts) - 1:
                self._flush()

    def close(self) -> None:
        if self.pending or self.dropped:
            self._flush()

    def _flush(self) -> None:
        kept = bytes(self.pending)
        if self.dropped:
            cut = min(len(kept), self.guard)
            kept, dropped = kept[:len(kept) - cut], self.dropped + cut
            self.emit(kept.decode(errors="replace") + f" [... {dropped} more bytes of this line cut]")
        else:
            self.emit(kept.decode(errors="replace"))
        self.pending.clear()
        self.dropped = 0


def tail_line(line: str) -> str:
    """One line as an error message keeps it: at most TAIL_LINE_MAX characters, saying what was cut."""
    if len(line) <= TAIL_LINE_MAX:
        return line
    return line[:TAIL_LINE_MAX] + f" [... {len(line) - TAIL_LINE_MAX} more characters cut]"


@dataclass
class RunContext:
    """What a RUN needs from the outside world besides the rootfs."""
    secrets: dict[str, bytes] = field(default_factory=dict)
    ssh_socket: str | None = None
    cache_dir: Callable[[str, str, ExitStack], Path] | None = None  # (mount id, sharing, the step's exits) -> dir
    stage_rootfs: Callable[[str, object], "Tree"] | None = None  # (stage label, image) -> its tree
    context_root: Path | None = None
    report: Callable[..., None] | None = None
    runner: Callable[..., int] | None = None  # same signature as sandbox.run_in_rootfs (the pod's chroot mode)
    isolation: object = None  # sandbox.Isolation for kade's own sandbox (None: its defaults)


# -- rootfs preparation ---------------------------------------------------------------------------

def apply_layers(rootfs: Path, blobs: list[tuple[Path, str, str]]) -> None:
    """Apply compressed layer blobs (path, media type, digest), in order, onto a rootfs; an error names
    the layer by its digest."""
    from builder.unpack import apply_layer

    for path, media_type, digest in blobs:
        with open(path, "rb") as f:
            apply_layer(f, rootfs, media_type, digest=digest)


# -- COPY / ADD / WORKDIR -------------------------------------------------------------------------
# Every file operation goes through builder.rootfs_ops: paths resolve inside the rootfs (and inside
# the source rootfs or the context for what is read), never through a symlink onto the host.

def owner_for(rootfs: Path, spec: str | None, what: str, warn: Callable[[str], None] | None) -> tuple[int, int]:
    """`users.file_owner`, a name the image doesn't know said in a warning (`what`: the instruction)."""
    unknown: list[str] = []
    ids = file_owner(rootfs, spec or "", unknown)
    if unknown and warn is not None:
        warn(f"{what}: no {' and no '.join(unknown)} in the image's /etc/passwd or /etc/group; owned by "
             f"{ids[0]}:{ids[1]} instead, as BuildKit does (create the user in an earlier RUN, or use numeric ids)")
    return ids


def made_time(epoch: int | None) -> int:
    """The mtime (ns) of what a step makes up rather than copies (WORKDIR and COPY's new parent
    directories, heredoc and URL files): SOURCE_DATE_EPOCH, else 0, so the same key gives the same
    layer on any machine."""
    return (epoch or 0) * 1_000_000_000


def _changes(root: Root, parts_list: list[Parts]) -> list[Change]:
    return [Change(path=image_path(p), source=root.host_path(p)) for p in parts_list if p]


@dataclass
class _Copied:
    """What a COPY/ADD did, as resolved parts in the rootfs: entries written, directories made (in
    order), those a source directory's contents landed in, and paths an ADD archive's whiteouts removed."""
    written: list[Parts] = field(default_factory=list)
    created: list[Parts] = field(default_factory=list)
    landed: set[Parts] = field(default_factory=set)
    removed: list[Parts] = field(default_factory=list)

    def changes(self, root: Root) -> list[Change]:
        """The step's changes. A removed path is a whiteout, unless a later source put something there
        again: then it is written, a directory opaque (what it held below stays hidden); a written path a
        later archive removed is gone."""
        paths = [p for p in dict.fromkeys(self.created + self.written) if p]
        if not self.removed:
            return _changes(root, paths)
        out = _changes(root, [p for p in paths if root.lstat(p) is not None])
        for parts in dict.fromkeys(self.removed):
            st = root.lstat(parts)
            if st is None:
                out.append(Change(path=image_path(parts), kind="delete"))
            elif stat.S_ISDIR(st.st_mode):
                out.append(Change(path=image_path(parts), kind="opaque"))
        return out


def ensure_dir(rootfs: Path, path: str, uid: int = 0, gid: int = 0, epoch: int | None = None) -> list[Change]:
    """mkdir -p inside the rootfs (symlinks followed inside it); the changes for what was created."""
    with Root(rootfs) as root:
        try:
            created = root.makedirs(path, Meta(uid, gid, 0o755, made_time(epoch)))
        except OSError as exc:
            raise BuildError(f"cannot create the directory {path}: {exc.strerror}: {exc.filename}",
                             hint="a symlink loop or a file where a directory is needed") from None
        return _changes(root, created)


@dataclass
class _Item:
    """One COPY/ADD source: an entry inside `root`, or literal `data` (a heredoc)."""
    name: bytes                     # its base name (a file's name inside a directory destination)
    root: Root | None = None
    parts: Parts = ()
    is_dir: bool = False
    only: list[Parts] | None = None  # a context directory: the entries .dockerignore keeps
    data: bytes | None = None
    archive: bool = False
    keep: Parts = ()                # COPY --parents: the parent path kept under the destination
    digest: str = ""                # sha256 hex the bytes must have (an ADD <url> download, checked before)


def copy_step(rootfs: Path, spec: CopySpec, workdir: str, from_root: Path | None, *,
              context_root: Path | None = None, epoch: int | None = None,
              warn: Callable[[str], None] | None = None) -> list[Change]:
    """COPY/ADD into the rootfs with Docker's destination rules; returns the changes.

    The destination resolves inside the rootfs, a final symlink included (BuildKit's RootPath): an
    existing directory there receives the sources, anything else is replaced. Files keep their
    source's mtime (clamped to `epoch`), modes unless --chmod, owner 0:0 (a --from source's own owner)
    unless --chown; directories this step creates get the --chown owner (else 0:0). `context_root` is
    where the context sources live."""
    dest = spec.dest if spec.dest.startswith("/") else (workdir.rstrip("/") + "/" + spec.dest)
    # several sources as written need the trailing '/' (the plan says so); what one wildcard matches lands
    # match after match on a destination written without it, as BuildKit copies them: the last file wins
    dest_is_dir = spec.dest.endswith("/") or spec.dest in (".", "./") or spec.parents
    uid, gid = owner_for(rootfs, spec.chown, f"{'ADD' if spec.add else 'COPY'} --chown={spec.chown}", warn)
    chmod = parse_chmod(spec.chmod_text)[1] if spec.chmod_text else (
        None if spec.chmod is None else parse_chmod(f"{spec.chmod:o}")[1])
    # COPY --from keeps the owners the source stage or image gave its files (BuildKit, Docker since 18.09),
    # and its hard links (content of the source's key or digest; the context's are not in a step key)
    override = Override(uid, gid, chmod, epoch, keep_owner=from_root is not None and not spec.chown,
                        skip=_excluder(spec.excludes) if spec.from_paths else None,
                        keep_links=from_root is not None,
                        xattrs=keep_xattr if from_root is not None else context_xattr)
    made = Meta(uid, gid, 0o755, made_time(epoch))
    opened: list[Root] = []
    try:
        with Root(rootfs) as root:
            items = _items(spec, from_root, context_root, opened, warn)
            done = _Copied()
            chmodded: list[Parts] = []
            for item in items:
                first = len(done.created)
                _copy_item(root, item, dest, dest_is_dir, override, made, done)
                if not item.archive:   # an archive's directories are made 0755 (BuildKit's unpack)
                    chmodded += done.created[first:]
            if spec.chmod is not None:
                _chmod_made_dirs(root, chmodded, Meta(uid, gid, spec.chmod & 0o777, made.mtime_ns), done.landed)
            return done.changes(root)
    except OSError as exc:
        raise BuildError(f"{'ADD' if spec.add else 'COPY'} to {dest}: {exc.strerror}: {exc.filename}",
                         hint="check the destination in the image (a symlink loop, a file where a "
                              "directory is needed)") from None
    finally:
        for r in opened:
            r.close()


def _chmod_made_dirs(root: Root, created: list[Parts], meta: Meta, landed: set[Parts]) -> None:
    """An octal --chmod is also the mode of the directories the copy makes (BuildKit: fsutil's MkdirAll
    gets it as their permission bits; a symbolic one leaves them 0755). Set once the copy is done,
    deepest first: a mode without x would stop a rootless build from reaching inside them. One that a
    source directory `landed` on keeps that directory's mtime, as without --chmod."""
    for parts in reversed(created):
        root.set_dir_meta(parts, meta if parts not in landed else Meta(meta.uid, meta.gid, meta.mode))


def _items(spec: CopySpec, from_root: Path | None, context_root: Path | None, opened: list[Root],
           warn: Callable[[str], None] | None = None) -> list[_Item]:
    def open_root_of(path: Path) -> Root:
        r = Root(path)
        opened.append(r)
        return r

    items: list[_Item] = []
    if from_root is not None:
        src = open_root_of(from_root)
        stage = spec.from_stage or "the source image"
        for i, rel in enumerate(spec.from_paths):
            matches = _from_matches(src, rel, stage)
            if not matches and warn is not None:
                warn(f"{'ADD' if spec.add else 'COPY'} --from source {rel!r} matches nothing in {stage}: "
                     "nothing copied for it (as BuildKit does)")
            for named in matches:
                try:
                    parts = src.resolve(named)  # the named source is followed, inside the source rootfs
                    st = src.lstat(parts)
                except OSError as exc:
                    if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):   # not "missing": say what
                        raise BuildError(f"COPY --from: cannot read {rel!r} in {stage}: {exc.strerror} "
                                         f"({errno.errorcode.get(exc.errno or 0, exc.errno)})") from None
                    st = None
                if st is None:
                    raise BuildError(f"COPY --from: {rel!r} not found in {stage}",
                                     hint="check the path inside the source stage")
                is_dir = stat.S_ISDIR(st.st_mode)
                kept = len(split(spec.from_keep[i])) if spec.from_keep else 0   # its last components, as matched
                keep = named[len(named) - kept:] if kept else ()
                items.append(_Item(name=named[-1] if named else b"", root=src, parts=parts, is_dir=is_dir,
                                   keep=keep if is_dir else keep[:-1]))
    ctx = None
    for s in spec.sources:
        if s.rel.startswith(("http://", "https://")):  # a downloaded file, alone in its folder
            name = os.fsencode(s.path.name)
            where = open_root_of(s.path.parent)
            items.append(_Item(name=name, root=where, parts=(name,), digest=s.entries[0].digest,
                               archive=bool(spec.add and spec.unpack and _is_archive(where, (name,)))))
            continue
        if ctx is None:
            if context_root is None:
                raise ValueError("copy_step: context sources need the context_root they live in")
            ctx = open_root_of(context_root.resolve())
        parts = tuple(split(str(s.path.relative_to(ctx.path)))) if s.path != ctx.path else ()
        keep = tuple(split(s.keep))
        name = os.fsencode(posixpath.basename(s.rel))  # a symlink named as a source: copied under its own name
        if spec.add and not s.is_dir and spec.unpack is not False and _is_archive(ctx, parts):
            items.append(_Item(name=name, root=ctx, parts=parts, archive=True, keep=keep))
        elif s.is_dir:
            items.append(_Item(name=name, root=ctx, parts=parts, is_dir=True,
                               only=[tuple(split(e.rel)) for e in s.entries if e.rel], keep=keep))
        else:
            items.append(_Item(name=name, root=ctx, parts=parts, keep=keep))
    for heredoc, body in spec.heredocs:
        items.append(_Item(name=os.fsencode(heredoc), data=body.encode("utf-8", "surrogateescape")))
    return items


def _from_matches(src: Root, rel: str, where: str) -> list[Parts]:
    """A COPY --from source as named: the path itself, or what its wildcards match, as BuildKit's
    fsutil resolves them: the components before the first wildcard resolved in the source rootfs, the
    rest matched below them one component at a time (Go's filepath.Match: `*` never crosses a `/`),
    never descending through a symlink; a match is then a named source (followed, named as matched).
    A wildcard that matches nothing names nothing (AllowEmptyWildcard)."""
    parts = tuple(split(rel))
    first = next((i for i, p in enumerate(parts) if is_wildcard(os.fsdecode(p))), None)
    if first is None:
        return [parts]
    try:
        current = [src.resolve(parts[:first])]
    except OSError:
        return []
    for part in parts[first:]:
        try:
            glob = Glob(os.fsdecode(part))
        except GlobError as exc:
            raise BuildError(f"COPY --from: source {rel!r} in {where}: {exc}") from None
        found: list[Parts] = []
        for base in current:
            st = src.lstat(base)
            if st is None or not stat.S_ISDIR(st.st_mode):   # a symlink is not descended
                continue
            found += [base + (name,) for name in src.listdir(base) if glob.match(os.fsdecode(name))]
        current = found
    return current


def _excluder(patterns: list[str]) -> Callable[[Parts], bool] | None:
    """COPY --from --exclude: whether a path inside the copied source is excluded."""
    if not patterns:
        return None
    from builder.context import IgnoreRules, parse_ignore

    rules = IgnoreRules(parse_ignore("\n".join(patterns), "--exclude"))
    return lambda parts: rules.excluded(image_path(parts))


def _copy_item(root: Root, item: _Item, dest: str, dest_is_dir: bool, override: Override, made: Meta,
               done: _Copied) -> None:
    if item.keep:  # COPY --parents: into dest/<kept parents>/
        dest = dest.rstrip("/") + "/" + image_path(item.keep) + "/"
        dest_is_dir = True
    target = root.resolve(dest)
    existing = root.lstat(target)
    into_dir = existing is not None and stat.S_ISDIR(existing.st_mode)
    if item.is_dir or item.archive:  # into the destination directory, created when missing
        if not into_dir:
            done.created.extend(root.makedirs(target, made))
        if item.archive:
            _extract_archive(root, item, target, override, made, done)
            return
        assert item.root is not None
        with root.parent(target) if target else _the_root(root) as (parent, name, base):
            TreeCopy(item.root, root, override, done.written).copy(item.parts, parent, name, base, only=item.only)
        done.landed.add(target)
        return
    if into_dir or dest_is_dir:
        target = target + (item.name,)
    with root.parent(target, create=True, meta=made, created=done.created) as (parent, name, base):
        if item.data is None:
            assert item.root is not None
            TreeCopy(item.root, root, override, done.written).copy(item.parts, parent, name, base)
            if item.digest:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
                try:   # a download's own mtime is when this machine fetched it: made up, not copied
                    os.utime(fd, ns=(made.mtime_ns or 0, made.mtime_ns or 0))
                    _check_download(item, os.dup(fd))
                finally:
                    os.close(fd)
        else:
            fd = replace_with_file(parent, name)
            try:
                os.write(fd, item.data)
                mode = 0o644 if override.modes is None else override.modes(0o644, False)
                set_meta(fd, Meta(override.uid, override.gid, mode, made.mtime_ns))
            finally:
                os.close(fd)
            done.written.append(base + (name,))
        if base in done.created:   # a directory this copy made: the entry written into it moved its mtime to the clock
            os.utime(parent, ns=(made.mtime_ns or 0, made.mtime_ns or 0))


def _check_download(item: _Item, fd: int) -> None:
    """The bytes of a downloaded file as they go into the layer (read from `fd`, which is closed) are
    those its --checksum and the step key were computed from."""
    import hashlib

    h = hashlib.sha256()
    with os.fdopen(fd, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    if h.hexdigest() != item.digest:
        raise BuildError(f"ADD {os.fsdecode(item.name)}: the downloaded file changed after it was checked "
                         f"(sha256:{h.hexdigest()}, not sha256:{item.digest})",
                         hint="something wrote into kade's download cache; run the build again")


@contextmanager
def _the_root(root: Root) -> Iterator[tuple[int, bytes, Parts]]:
    """The destination `/` itself, as (parent fd, name, base): an empty name is the directory itself."""
    yield root.fd, b"", ()


def _is_archive(ctx: Root, parts: Parts) -> bool:
    """A tar (plain, gzip, bzip2, xz or zstd), by its first header block alone (its checksum holds), as
    Go's tar reader tells: ADD extracts it. That block may be a PAX or GNU extended header (GNU tar
    --format=posix, Go and Python write one first for a long name or a big number)."""
    from builder.unpack import open_decompressed

    fd = ctx.open_file(parts)
    if fd is None:
        return False
    try:
        with os.fdopen(fd, "rb") as stream:
            head = open_decompressed(stream).read(tarfile.BLOCKSIZE)
        tarfile.TarInfo.frombuf(head, "utf-8", "surrogateescape")
        return True
    except (tarfile.TarError, OSError, EOFError, ValueError, zstandard.ZstdError):
        return False


def _extract_archive(root: Root, item: _Item, target: Parts, override: Override, made: Meta,
                     done: _Copied) -> None:
    """ADD of a local tar (plain, gzip, bzip2, xz or zstd), extracted as `tar -x` would into `target`,
    through the layer unpacker: modes, absolute symlinks and (as root) devices are kept, as a rootfs
    tarball (`FROM scratch` + `ADD rootfs.tar.xz /`) needs; owners are the archive's, or --chown's
    (as BuildKit does); names are taken as BuildKit's untar takes them (a leading '/' dropped, `..`
    folded, never above `target`) and every path is resolved inside `target`, so nothing lands outside
    it; archive-bomb limits apply. Whiteout names are honoured, and what they remove is in the layer."""
    from builder.unpack import apply_layer

    assert item.root is not None
    fd = item.root.open_file(item.parts)
    if fd is None:
        raise BuildError(f"ADD {os.fsdecode(item.name)}: not a regular file")
    if item.digest:
        _check_download(item, os.dup(fd))
        os.lseek(fd, 0, os.SEEK_SET)
    tfd = root.open_dir(target)
    try:
        with os.fdopen(fd, "rb") as stream:
            result = apply_layer(stream, f"/proc/self/fd/{tfd}", digest=f"ADD {os.fsdecode(item.name)}",
                                 owner=(override.uid, override.gid) if override.uid or override.gid else None,
                                 archive=True)
        if b"" not in result.paths:  # the target directory itself: modified, so given a fixed time
            os.utime(tfd, ns=(made.mtime_ns or 0, made.mtime_ns or 0))
        done.written.append(target)
        with Root(f"/proc/self/fd/{tfd}") as extracted:  # an entry's parents as they resolved (symlinks)
            entries = {tuple(p.split(b"/")) for p in result.paths if p}
            for parts in sorted(entries):
                where = extracted.resolve(parts[:-1]) + parts[-1:]
                for parent in (where[:i] for i in range(1, len(where))):  # directories the archive implied
                    if parent not in entries and target + parent not in done.written:
                        extracted.utime(parent, made.mtime_ns or 0)
                        done.written.append(target + parent)
                done.written.append(target + where)
            for path in sorted(result.removed):
                parts = tuple(path.split(b"/"))
                done.removed.append(target + extracted.resolve(parts[:-1]) + parts[-1:])
    finally:
        os.close(tfd)


# -- RUN ------------------------------------------------------------------------------------------

def run_step(root: "StageRoot", step: Step, ctx: RunContext, on_line: Callable[[str], None],
             write: Callable[[list[Change]], object], *, keep_result: bool = True) -> object | None:
    """Run a RUN step in the sandbox and capture what it changed.

    `root` is the stage's rootfs (builder/stageroot.py). `write` turns the changes into a layer (it
    runs while the capture is open: the changed files live in the upper directory until the step is
    committed). Returns what `write` returned, or None when nothing changed. Raises StepFailedError
    with the exit code and the last output lines. On a layered rootfs the upper dir stays pending for
    `root.commit(diff_id)`; on a copied one the changes are merged into it, unless `keep_result` is
    False (nothing reads this rootfs after the step): then it keeps its state from before the step and
    the overlay's directories are left in its work dir for whoever removes the work dir.
    """
    from builder import sandbox

    with root.readable() as view:
        user = resolve_user(view, step.image_config.user or "root")
    workdir = step.image_config.working_dir or "/"
    env = dict(step.env)
    env.setdefault("PATH", ic.DEFAULT_PATH)
    env.setdefault("HOME", user.home or "/")
    views = root.work / "views"  # context bind mounts: what .dockerignore selects
    secret_env: dict[str, str] = {}  # RUN --mount=type=secret,env=NAME
    stack = ExitStack()  # cache locks and private cache dirs, released when the step ends
    try:
        mounts = [hm for hm in (_host_mount(m, ctx, views, secret_env, stack) for m in step.mounts) if hm is not None]
    except BaseException:
        stack.close()
        raise
    mounts += [_script_mount(*f) for f in step.heredoc_files]
    env.update(secret_env)
    tail: deque[str] = deque(maxlen=OUTPUT_TAIL)
    secrets = SecretMask(list(ctx.secrets.values()))

    def output(line: str) -> None:
        line = secrets.mask(line)  # never echo a secret, in any of the shapes it prints in
        tail.append(tail_line(line))
        on_line(line)

    scratch = root.work / "scratch"
    lines = OutputLines(output, guard=secrets.longest)

    def stream(_name: str, data: bytes) -> None:
        lines.feed(data)

    # The sandbox removes the mountpoints it had to create, so a snapshot never sees them. kade's own
    # sandbox mounts the step's overlay itself (in its user namespace); another runner (the pod's
    # chroot mode) works on whatever the capture could set up here.
    in_sandbox = ctx.runner is None
    run = ctx.runner or sandbox.run_in_rootfs
    try:
        with stack:
            while True:
                with _capture(root, scratch, in_sandbox) as cap:
                    extra = {}
                    if in_sandbox:
                        extra = {"overlay": cap.overlay, "report": ctx.report}
                        if ctx.isolation is not None:
                            extra["isolation"] = ctx.isolation
                    else:
                        ensure_dir(cap.root, workdir)
                    target = cap.overlay.merged if in_sandbox and cap.overlay.view is not None else cap.root
                    try:
                        code = run(target, step.argv, env, workdir, (user.uid, user.gid, list(user.groups)),
                                   mounts, step.network, stream, **extra)
                    except sandbox.OverlayUnavailable as exc:
                        if cap.method != "overlay" or root.layered:
                            raise
                        _overlay_refused(ctx.report, str(exc))
                        continue   # the command did not run: again, with the stat snapshot
                    lines.close()
                    if code != 0:
                        raise StepFailedError(f"{step.text} failed with exit code {code}", exit_code=code,
                                              output_tail=list(tail), file=step.ins.file, line=step.ins.line)
                    with _path_limit(step):
                        changes = cap.changes()
                        result = write(changes) if changes else None
                        if keep_result:
                            cap.commit()
                        else:
                            cap.abandon()
                break
    finally:
        fsutil.remove_tree(views)  # kade's own tree: rmtree never follows its symlinks
    if keep_result or cap.method != "overlay":
        fsutil.remove_tree(scratch)
    return result


@contextmanager
def _path_limit(step: Step) -> Iterator[None]:
    """A RUN can leave a path longer than Linux's PATH_MAX (a deep directory chain): no tool can name it,
    so no layer can hold it. Said as the step's fault, not as an OSError of kade's."""
    try:
        yield
    except OSError as exc:
        if exc.errno != errno.ENAMETOOLONG:
            raise
        name = os.fsdecode(exc.filename or b"")
        raise BuildError(f"{step.text}: the RUN left a path longer than Linux allows (4096 bytes), which no layer "
                         f"can hold: ...{name[-120:]}", file=step.ins.file, line=step.ins.line,
                         hint="keep its directory chains shallower, or remove them before the RUN ends") from None


def _capture(root: "StageRoot", scratch: Path, in_sandbox: bool):
    """The snapshot of one RUN: the upper dir of a layered rootfs, else snapshot.capture on the copy."""
    from builder import snapshot
    from builder.stageroot import LayeredCapture, LayeredRoot

    if isinstance(root, LayeredRoot):   # root.layered
        return contextlib.closing(LayeredCapture(root, in_sandbox))
    method: snapshot.Method = "stat" if in_sandbox and _no_overlay else "auto"
    return snapshot.capture(root.path, scratch, method, in_sandbox=in_sandbox)


_no_overlay: str | None = None   # why the sandbox could not mount an overlay here (said once)


def _overlay_refused(report: Callable[..., None] | None, why: str) -> None:
    global _no_overlay
    first = _no_overlay is None
    _no_overlay = why
    if first and report is not None:
        report("warning", f"RUN steps can't use an overlay snapshot here ({why}); comparing file metadata "
                          "before and after each RUN instead (slower on large images)")


def _script_mount(path: str, body: str, mode: int):
    """A `RUN <<EOF` script with a #! line: a file on a tmpfs, executed in place, never in a layer."""
    from builder.sandbox import Mount as SandboxMount

    return SandboxMount("secret", path, data=body.encode(), mode=mode)


def _host_mount(m: PlanMount, ctx: RunContext, views: Path, env: dict[str, str], stack: ExitStack):
    """A planned RUN --mount -> the sandbox's Mount (None: nothing to mount), with host paths and
    secret bytes filled in; a secret's env= goes into `env`."""
    from builder.sandbox import Mount as SandboxMount

    o = m.options
    readonly = o.get("readonly", o.get("ro", "false")) == "true"
    if m.type == "cache":
        return _cache_mount(m, ctx, stack, readonly)
    if m.type == "tmpfs":
        from builder.plan import parse_size

        return SandboxMount("tmpfs", m.target, size=parse_size(o["size"]) if "size" in o else None)
    if m.type == "secret":
        return _secret_mount(m, ctx, env)
    if m.type == "ssh":
        if not ctx.ssh_socket:
            return _not_given(ctx, o, "an ssh agent", "pass --ssh default[=SOCKET] (or set $SSH_AUTH_SOCK)")
        return SandboxMount("ssh", m.target, ctx.ssh_socket, mode=int(o["mode"], 8) if "mode" in o else None,
                            uid=int(o.get("uid", 0)), gid=int(o.get("gid", 0)))
    # bind: a path inside a stage/image rootfs (resolved there by the sandbox), or the context view
    rw = o.get("rw", o.get("readwrite", "false")) == "true"
    if "from" in o:
        assert ctx.stage_rootfs is not None
        tree = ctx.stage_rootfs(o["from"], None)
        source = o.get("source", o.get("src", "/"))
        with Root(tree.path) as inside:
            try:
                found = inside.lstat(inside.resolve(source))
            except OSError:
                found = None
        if found is None:
            raise BuildError(f"RUN --mount=type=bind,from={o['from']}: source {source} not found there",
                             hint="check the path inside that stage or image")
        return SandboxMount("bind", m.target, source, source_root=str(tree.path), readonly=not rw,
                            source_layers=tree.layers)
    assert ctx.context_root is not None
    view = context_view(m.sources, ctx.context_root, views)
    return SandboxMount("bind", m.target, str(view), readonly=not rw)


def _cache_mount(m: PlanMount, ctx: RunContext, stack: ExitStack, readonly: bool):
    """A cache mount: its persistent dir, or with sharing=private and another writer at it, a fresh
    one for this step; sharing=locked waits for the other writer (ctx.cache_dir takes the lock).
    A new (empty) cache gets mode/uid/gid, and the content of from=/source= when given."""
    from builder.sandbox import Mount as SandboxMount

    o = m.options
    assert ctx.cache_dir is not None
    path = ctx.cache_dir(o.get("id", m.target), o.get("sharing", "shared"), stack)
    if not any(path.iterdir()):
        if "from" in o:
            assert ctx.stage_rootfs is not None
            with Root(ctx.stage_rootfs(o["from"], None).path) as src, Root(path.parent) as into:
                parts = src.resolve(o.get("source", o.get("src", "/")))
                os.rmdir(path)
                TreeCopy(src, into, Override(keep_owner=True), []).copy(parts, into.fd, os.fsencode(path.name), ())
        os.chmod(path, int(o["mode"], 8) if "mode" in o else 0o755)
        if os.geteuid() == 0:
            os.chown(path, int(o.get("uid", 0)), int(o.get("gid", 0)))
    return SandboxMount("cache", m.target, str(path), readonly=readonly)


def _secret_mount(m: PlanMount, ctx: RunContext, env: dict[str, str]):
    """BuildKit's secret mount: a file at `target` (the default /run/secrets/<id> unless only env= is
    given), and/or the value in the environment variable env= names. A secret not given with
    --secret: see `_not_given`."""
    from builder.sandbox import Mount as SandboxMount

    o = m.options
    sid = o.get("id") or Path(m.target).name
    if sid not in ctx.secrets:
        return _not_given(ctx, o, f"secret {sid!r}", f"pass --secret id={sid},src=PATH (or env=VAR)")
    if o.get("env"):
        env[o["env"]] = ctx.secrets[sid].decode("utf-8", "surrogateescape")
        if not m.target:
            return None
    mode = int(o["mode"], 8) if "mode" in o else 0o400
    return SandboxMount("secret", m.target, data=ctx.secrets[sid], mode=mode, uid=int(o.get("uid", 0)),
                        gid=int(o.get("gid", 0)))


def _not_given(ctx: RunContext, options: dict[str, str], what: str, how: str) -> None:
    """A secret or ssh mount whose source the build was not given. As BuildKit: an error with
    required=true, else the RUN runs without the mount (never silently: a warning says so)."""
    if options.get("required", "false").lower() == "true":
        raise BuildError(f"{what} is required by RUN --mount but was not given", hint=how)
    if ctx.report is not None:
        ctx.report("warning", f"{what} was not given: this RUN runs without its mount ({how}; add required=true "
                              "to the mount to make this an error)")
    return None


def context_view(sources: tuple[Source, ...], context_root: Path, views: Path) -> Path:
    """A directory (or file) holding exactly what .dockerignore selected of a context bind source,
    hard links to the context's files where the filesystem allows (copies otherwise), so a RUN never
    sees an ignored file (.git/config, .env) and a big context costs one link per file."""
    (src,) = sources
    views.mkdir(mode=0o700, exist_ok=True)
    with Root(context_root) as ctx, Root(views) as out:
        parts = tuple(split(str(src.path.relative_to(ctx.path.resolve())))) if src.path != ctx.path.resolve() else ()
        name = b"view-%d" % len(os.listdir(out.fd))
        only = [tuple(split(e.rel)) for e in src.entries if e.rel] if src.is_dir else None
        TreeCopy(ctx, out, Override(keep_owner=True), [], link=True).copy(parts, out.fd, name, (), only=only)
    return views / os.fsdecode(name)


# -- layers ---------------------------------------------------------------------------------------

def write_layer(changes: list[Change], out: BinaryIO, compression: str, epoch: int | None, *, toc: bool = False):
    from builder.layer import Compression, write_layer as _write

    # the CLI's --compression choices (gzip, zstd) are a Compression
    return _write(changes, out, cast(Compression, compression), epoch, toc=toc)
