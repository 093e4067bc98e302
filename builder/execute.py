"""Executing one planned step on a rootfs: the thin seam between orchestration (build.py) and the
filesystem/executor modules of the "layers" helper (unpack, snapshot, sandbox, layer, rootpath).

Everything here works on a local directory and returns layer changes, so the same code runs in a
local process or inside a builder pod. COPY/ADD/WORKDIR are done here directly (their changes are
known exactly, no tree diff needed); RUN goes through the sandbox and the snapshot diff.
"""
from __future__ import annotations

import os
import shutil
import stat
import tarfile
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from builder import image_config as ic
from builder.changes import Change
from builder.errors import BuildError, StepFailedError
from builder.plan import CopySpec, Step
from builder.plan import Mount as PlanMount

OUTPUT_TAIL = 20


@dataclass
class RunContext:
    """What a RUN needs from the outside world besides the rootfs."""
    secrets: dict[str, bytes] = field(default_factory=dict)
    ssh_socket: str | None = None
    cache_dir: Callable[[str], Path] | None = None  # mount id -> persistent dir
    stage_rootfs: Callable[[str | None, object], Path] | None = None  # (stage label, image) -> dir
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

def _owner(spec: str | None, rootfs: Path) -> tuple[int, int]:
    if not spec:
        return 0, 0
    user, _, group = spec.partition(":")
    if user.isdigit() and (not group or group.isdigit()):
        uid = int(user)
        return uid, int(group) if group else uid
    resolved = ic.resolve_user(rootfs, spec)
    if group:
        return resolved.uid, resolved.gid
    return resolved.uid, resolved.gid


def _resolve_parent(rootfs: Path, path: str, created: list[str]) -> Path:
    """Host path of the parent directory of image path `path`, created if missing, never outside rootfs."""
    from builder.rootpath import resolve

    def on_create(parts: list[bytes]) -> None:
        created.append(os.fsdecode(b"/".join(parts)))

    parent, _last = resolve(rootfs, path, create_parents=True, on_create=on_create)
    return Path(parent)


def _inside(rootfs: Path, host: Path) -> str:
    """The image path of a host path under rootfs."""
    return "/" + str(host.relative_to(rootfs)) if host != rootfs else "/"


def ensure_dir(rootfs: Path, path: str, uid: int = 0, gid: int = 0) -> list[Change]:
    """mkdir -p inside the rootfs; returns the changes for what was created."""
    if path.strip("/") == "":
        return []
    created: list[str] = []
    parent = _resolve_parent(rootfs, path.rstrip("/") + "/x", created)
    changes = []
    for rel in created:
        host = rootfs / rel
        if uid or gid:
            os.lchown(host, uid, gid)
        changes.append(Change(path=rel, source=str(host)))
    del parent
    return changes


def _copy_entry(src: Path, kind: str, dst: Path, uid: int, gid: int, chmod: int | None) -> None:
    if dst.is_symlink() or (dst.exists() and not dst.is_dir()):
        dst.unlink()
    elif dst.is_dir() and kind != "dir":
        shutil.rmtree(dst)
    if kind == "symlink":
        os.symlink(os.readlink(src), dst)
        os.lchown(dst, uid, gid)
        return
    if kind == "dir":
        if not dst.is_dir():
            dst.mkdir()
    else:
        shutil.copyfile(src, dst, follow_symlinks=True)
    os.lchown(dst, uid, gid)  # before chmod: chown clears setuid/setgid bits
    os.chmod(dst, chmod if chmod is not None else stat.S_IMODE(src.stat().st_mode))


def copy_step(rootfs: Path, spec: CopySpec, workdir: str, from_root: Path | None) -> list[Change]:
    """COPY/ADD into the rootfs with Docker's destination rules; returns the changes."""
    dest = spec.dest if spec.dest.startswith("/") else (workdir.rstrip("/") + "/" + spec.dest)
    dest_is_dir = spec.dest.endswith("/") or spec.dest in (".", "./")
    uid, gid = _owner(spec.chown, rootfs)
    changes: dict[str, Change] = {}
    created: list[str] = []

    def record(host: Path) -> None:
        rel = str(host.relative_to(rootfs))
        changes[rel] = Change(path=rel, source=str(host))

    def target_for(name: str, is_dir_source: bool) -> Path:
        # existing directory at dest, or dest ending in '/' -> put inside it
        parent = _resolve_parent(rootfs, dest.rstrip("/") + "/x", created) if (dest_is_dir or is_dir_source) else None
        if parent is not None:
            return parent if is_dir_source else parent / name
        p = _resolve_parent(rootfs, dest, created)
        last = Path(dest.rstrip("/")).name
        if (p / last).is_dir() and not (p / last).is_symlink():
            return p / last / name
        return p / last

    items: list[tuple[Path, str, list[tuple[str, Path, str]]]] = []
    if from_root is not None:
        from builder.rootpath import resolve
        for rel in spec.from_paths:
            parent, last = resolve(from_root, rel)
            host = Path(parent) / os.fsdecode(last)
            if not os.path.lexists(host):
                raise BuildError(f"COPY --from: {rel!r} not found in {spec.from_stage or 'the source image'}",
                                 hint="check the path inside the source stage")
            real = host if not host.is_symlink() else Path(os.path.realpath(host))
            if not str(real).startswith(str(from_root)):
                real = host
            items.append(_local_items(real))
    else:
        for src in spec.sources:
            is_url = src.rel.startswith(("http://", "https://"))
            if spec.add and not src.is_dir and not is_url and _is_archive(src.path):
                items.append((src.path, "archive", []))
                continue
            entries = [(e.rel, e.path, e.kind) for e in src.entries if e.rel]
            items.append((src.path, "dir" if src.is_dir else "file", entries))
    for name, body in spec.heredocs:
        items.append((Path(name), "heredoc", [("", Path(name), body)]))

    for src_path, kind, entries in items:
        if kind == "archive":
            target = target_for(src_path.name, True)
            target.mkdir(parents=True, exist_ok=True)
            _extract_archive(src_path, target, rootfs, record)
            continue
        if kind == "heredoc":
            target = target_for(str(src_path), False)
            target.write_text(entries[0][2])
            os.lchown(target, uid, gid)
            os.chmod(target, spec.chmod if spec.chmod is not None else 0o644)
            record(target)
            continue
        if kind == "dir":
            target = target_for(src_path.name, True)
            if not target.exists():
                target.mkdir(parents=True)
                os.lchown(target, uid, gid)
            record(target)
            for rel, host, ekind in entries:
                dst = target / rel
                _copy_entry(host, ekind, dst, uid, gid, spec.chmod)
                record(dst)
        else:
            target = target_for(src_path.name, False)
            _copy_entry(src_path, "file", target, uid, gid, spec.chmod)
            record(target)
    for rel in created:
        host = rootfs / rel
        if uid or gid:
            os.lchown(host, uid, gid)
        changes.setdefault(rel, Change(path=rel, source=str(host)))
    return list(changes.values())


def _local_items(root: Path) -> tuple[Path, str, list[tuple[str, Path, str]]]:
    if not root.is_dir():
        return root, "file", []
    entries: list[tuple[str, Path, str]] = []
    queue = deque([(root, "")])
    while queue:
        d, sub = queue.popleft()
        for name in sorted(os.listdir(d)):
            p = d / name
            rel = f"{sub}/{name}" if sub else name
            st = os.lstat(p)
            if stat.S_ISDIR(st.st_mode):
                entries.append((rel, p, "dir"))
                queue.append((p, rel))
            elif stat.S_ISLNK(st.st_mode):
                entries.append((rel, p, "symlink"))
            elif stat.S_ISREG(st.st_mode):
                entries.append((rel, p, "file"))
    entries.sort()
    return root, "dir", entries


def _is_archive(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False


def _extract_archive(archive: Path, target: Path, rootfs: Path, record: Callable[[Path], None]) -> None:
    """ADD of a local tar (plain, gzip, bzip2, xz or zstd), extracted as `tar -x` would into `target`,
    through the layer unpacker: ownership, modes, absolute symlinks and (as root) devices are kept, as a
    rootfs tarball (`FROM scratch` + `ADD rootfs.tar.xz /`) needs, while every path is resolved inside
    `target`, so nothing lands outside it; archive-bomb limits apply. Whiteout names are honoured."""
    from builder.unpack import apply_layer

    with open(archive, "rb") as stream:
        apply_layer(stream, target, digest=f"ADD {archive.name}")
    for dirpath, dirs, files in os.walk(target):
        for name in dirs + files:
            record(Path(dirpath) / name)
    record(target)


# -- RUN ------------------------------------------------------------------------------------------

def run_step(rootfs: Path, step: Step, ctx: RunContext, on_line: Callable[[str], None],
             write: Callable[[list[Change]], object], *, keep_result: bool = True) -> object | None:
    """Run a RUN step in the sandbox and capture what it changed.

    `write` turns the changes into a layer (it runs while the capture is open: with overlay the
    changed files live in the upper directory until `commit`). Returns what `write` returned, or None
    when nothing changed. Raises StepFailedError with the exit code and the last output lines.
    Without `keep_result` (nothing reads this rootfs after the step) an overlay capture is not merged
    back: `rootfs` keeps its state from before the step, and the overlay's directories are left in
    `<rootfs>-scratch` beside it for whoever removes the work dir (the layer is the same either way).
    """
    from builder import sandbox, snapshot

    cfg = step.config.get("config", {})
    user = ic.resolve_user(rootfs, cfg.get("User") or "root")
    workdir = cfg.get("WorkingDir") or "/"
    env = dict(step.env)
    env.setdefault("PATH", ic.DEFAULT_PATH)
    env.setdefault("HOME", user.home or "/")
    mounts = [_host_mount(m, ctx) for m in step.mounts] + [_script_mount(*f) for f in step.heredoc_files]
    tail: deque[str] = deque(maxlen=OUTPUT_TAIL)
    secrets = [v.decode(errors="ignore") for v in ctx.secrets.values() if v.strip()]

    def output(line: str) -> None:
        for s in secrets:  # never echo a secret's bytes
            line = line.replace(s, "****")
        tail.append(line)
        on_line(line)

    scratch = rootfs.parent / (rootfs.name + "-scratch")
    pending = b""

    def stream(_name: str, data: bytes) -> None:
        nonlocal pending
        pending += data
        *lines, pending = pending.split(b"\n")
        for raw in lines:
            output(raw.decode(errors="replace"))

    # The sandbox removes the mountpoints it had to create, so a snapshot never sees them. kade's own
    # sandbox mounts the step's overlay itself (in its user namespace); another runner (the pod's
    # chroot mode) works on whatever capture() could set up here.
    in_sandbox = ctx.runner is None
    run = ctx.runner or sandbox.run_in_rootfs
    while True:
        method = "stat" if in_sandbox and _no_overlay else "auto"
        with snapshot.capture(rootfs, scratch, method, in_sandbox=in_sandbox) as cap:
            extra = {}
            if in_sandbox:
                extra = {"overlay": cap.overlay, "report": ctx.report}
                if ctx.isolation is not None:
                    extra["isolation"] = ctx.isolation
            else:
                ensure_dir(cap.root, workdir)
            try:
                code = run(cap.root, step.argv, env, workdir, (user.uid, user.gid, list(user.groups)),
                           mounts, step.network, stream, **extra)
            except sandbox.OverlayUnavailable as exc:
                if cap.method != "overlay":
                    raise
                _overlay_refused(ctx.report, str(exc))
                continue   # the command did not run: again, with the stat snapshot
            if pending:
                output(pending.decode(errors="replace"))
            if code != 0:
                raise StepFailedError(f"{step.text} failed with exit code {code}", exit_code=code,
                                      output_tail=list(tail), file=step.ins.file, line=step.ins.line)
            changes = cap.changes()
            result = write(changes) if changes else None
            if keep_result:
                cap.commit()
            else:
                cap.abandon()
        break
    if keep_result or cap.method != "overlay":
        shutil.rmtree(scratch, ignore_errors=True)
    return result


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


def _host_mount(m: PlanMount, ctx: RunContext):
    """A planned RUN --mount -> the sandbox's Mount, with host paths and secret bytes filled in."""
    from builder.sandbox import Mount as SandboxMount

    o = m.options
    readonly = o.get("readonly", o.get("ro", "false")) == "true"
    if m.type == "cache":
        assert ctx.cache_dir is not None
        return SandboxMount("cache", m.target, str(ctx.cache_dir(o.get("id", m.target))), readonly=readonly)
    if m.type == "tmpfs":
        return SandboxMount("tmpfs", m.target, size=int(o["size"]) if o.get("size", "").isdigit() else None)
    if m.type == "secret":
        sid = o.get("id") or Path(m.target).name
        if sid not in ctx.secrets:
            if o.get("required") == "true":
                raise BuildError(f"secret {sid!r} is required by RUN --mount but was not given",
                                 hint=f"pass --secret id={sid},src=PATH or env=VAR")
            return SandboxMount("tmpfs", m.target)
        mode = int(o["mode"], 8) if "mode" in o else 0o400
        return SandboxMount("secret", m.target, data=ctx.secrets[sid], mode=mode, uid=int(o.get("uid", 0)),
                            gid=int(o.get("gid", 0)))
    if m.type == "ssh":
        if not ctx.ssh_socket:
            raise BuildError("RUN --mount=type=ssh needs --ssh default[=SOCKET] (or $SSH_AUTH_SOCK)")
        return SandboxMount("ssh", m.target, ctx.ssh_socket)
    # bind: from the build context, or from a stage/image rootfs
    from builder.rootpath import resolve

    assert ctx.stage_rootfs is not None and ctx.context_root is not None
    root = ctx.stage_rootfs(o["from"], None) if "from" in o else ctx.context_root
    src = o.get("source", o.get("src", "/"))
    if src.strip("/") in ("", "."):
        host = root
    else:
        parent, last = resolve(root, src)
        host = Path(parent) / os.fsdecode(last)
    return SandboxMount("bind", m.target, str(host), readonly=o.get("rw", o.get("readwrite", "false")) != "true")


# -- layers ---------------------------------------------------------------------------------------

def write_layer(changes: list[Change], out: BinaryIO, compression: str, epoch: int | None):
    from builder.layer import write_layer as _write

    return _write(changes, out, compression, epoch)
