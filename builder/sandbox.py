"""Run one command inside a rootfs, the way a RUN step needs it, with no container runtime.

`run_in_rootfs` starts the sandbox's processes (builder/sandbox_init.py: a launcher, a holder, and
the init that becomes the command) and streams the command's output. How the RUN is held:

- **user namespace** (kade as root, the default): root in the RUN is the first id of a subordinate
  range of 65,536 uids/gids on the host (builder/subids.py; `/etc/subuid`, `/etc/subgid` or kade's
  default pool, one range per kade process), never host root. The rootfs, the overlay's scratch dir
  and every mount source are seen through idmapped mounts, so the image's own uids stay on disk.
  `Isolation(userns="host")` (`kade build --userns host`) runs RUN as host root instead.
- **rootless** (kade not root): a user namespace mapping only the caller's uid to root.
- namespaces: mount, PID (the command is PID 1; everything it leaves is killed when it exits), UTS,
  IPC, cgroup, and network: a private one with outbound NAT through kade's bridge (builder/netns.py),
  loopback only for `network="none"`, the host's (or the pod's) for `network="host"` or
  `Isolation(network="shared")`;
- /proc with runc's masked and read-only paths, a minimal /dev, /sys read-only, generated /etc/hosts
  and /etc/resolv.conf, the RUN --mount list (cache dirs, secrets on a tmpfs, the ssh agent socket,
  binds, tmpfs), every mount nosuid and nodev; pivot_root into the rootfs; Docker's default
  capabilities (inheritable and ambient sets emptied), no_new_privs and a seccomp filter
  (builder/seccomp.py);
- with `overlay=` (a snapshot.OverlaySpec: of a layered rootfs' layer dirs, builder/stageroot.py, or
  of one copied rootfs dir, snapshot.capture(..., in_sandbox=True)) the step's overlay is mounted
  inside the sandbox: the upper directory is the step's diff, with the image's uids. Layer dirs are
  staged read-only, each once, and mounted as `lowerdir+` layers (any number of them); a layered
  rootfs' mount points are made through its host-side view (a detached mount) before the run and
  removed through it after. A read-only bind `from=` a layered stage mounts that stage's layers.

Everything mounted lives only in the sandbox's mount namespaces and vanishes with them; every process
dies with kade (parent-death signals). Mountpoints the rootfs lacked are created before the run
(resolved inside the rootfs, never through a symlink out of it) and removed afterwards with their
parents' mtimes restored, so a snapshot sees nothing of them. The sandbox's spec (secret bytes
included) reaches the launcher through a pipe: never argv, never a file on disk, never a log. Output
is streamed line by line to a callback `output(stream, data)` ("stdout"/"stderr"): each call is one
line *with* its b"\n" (the last piece of a stream may lack it, and a line over 64 KiB comes in
pieces), so joining the calls of a stream gives its exact bytes.
"""
from __future__ import annotations

import base64
import contextlib
import marshal
import os
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Literal, Mapping, Sequence

from builder.errors import BuildError
from builder.isolation import Isolation   # defined apart: BuildOptions takes one without loading the sandbox
from builder.rootpath import lexical, resolve_full, split
from builder.sandbox_init import DEVICES, STARTED
from builder.rootfs_ops import Parts, Root, lstat_at
from common import fsutil
from registry import cancel as _cancel   # the command's cancellation token (kade/interrupt.py)

if TYPE_CHECKING:
    from builder.stageroot import OverlaySpec

MountType = Literal["bind", "cache", "tmpfs", "secret", "ssh"]
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
RUN_HOSTNAME = "buildkitsandbox"   # what a RUN sees as its host name, in BuildKit too (the same files out)
MAX_LINE = 64 * 1024
_PKG_ROOT = str(Path(__file__).resolve().parent.parent)
# The interpreter that runs the sandbox's init (stdlib only). Override with KADE_SANDBOX_PYTHON when
# sys.executable is not reachable by the build user (rootless builds with a root-owned Python).
INIT_PYTHON_ENV = "KADE_SANDBOX_PYTHON"
PRIVATE_PARENT = Path("/run/kade/sandbox")   # reachable by root of a user namespace (unlike /root, $TMPDIR)
__all__ = ["DEVICES", "Isolation", "Mount", "SandboxError", "User", "run_in_rootfs"]


class SandboxError(BuildError):
    """The command could not be started in the rootfs (setup failed, or the executable is missing)."""


class RunInterrupted(KeyboardInterrupt):
    """The RUN was killed because kade is stopping (kill_all: a signal, a cancelled command)."""


class OverlayUnavailable(SandboxError):
    """The sandbox could not mount the step's overlay (the command did not run): use the stat snapshot."""


class IdmapUnavailable(SandboxError):
    """A path's filesystem (or this kernel) can't be idmapped (the command did not run)."""


@dataclass(frozen=True)
class User:
    uid: int = 0
    gid: int = 0
    groups: tuple[int, ...] = ()


@dataclass(frozen=True)
class Mount:
    """One RUN --mount. `target` is an absolute path inside the rootfs.
    bind: `source` a host file or directory — or, with `source_root`, a path inside that directory
    resolved there (and, with `source_layers`, that directory is an overlay of those layer dirs, bottom
    first, which the sandbox mounts itself); read-only when `readonly`, else the sandbox works on a copy
    (writes are discarded);
    cache: `source` a host directory kept between builds (read-write unless `readonly`; created with
    `mode` (default 0o755), `uid`, `gid` when missing);
    tmpfs: a fresh tmpfs (`size` bytes if given); secret: `data` as a read-only file on a tmpfs
    (`mode`, default 0o400, `uid`, `gid`); ssh: `source` is the agent socket on the host."""
    type: MountType
    target: str
    source: str | None = None
    readonly: bool = False
    data: bytes | None = field(default=None, repr=False)
    mode: int | None = None
    uid: int = 0
    gid: int = 0
    size: int | None = None
    source_root: str | None = None   # bind: `source` is a path inside this directory (a stage rootfs,
                                     # the build context), resolved there — symlinks never lead out
    source_layers: tuple[str, ...] | None = None   # bind: source_root is a view of these layer dirs

    def __post_init__(self) -> None:
        if not self.target.startswith("/"):
            raise ValueError(f"mount target {self.target!r} must be absolute")
        if self.type in ("bind", "cache", "ssh") and not self.source:
            raise ValueError(f"a {self.type} mount needs a source")
        if self.type == "secret" and self.data is None:
            raise ValueError("a secret mount needs its data")


OutputCallback = Callable[[str, bytes], None]


# ------------------------------------------------------------------------ host side: mountpoints

class _Mountpoints:
    """Creates missing mountpoints inside the rootfs and removes exactly those afterwards, through
    builder/rootfs_ops.py: resolved inside the rootfs before the RUN, and after it (when the RUN may
    have put a symlink anywhere) never followed out of it."""

    def __init__(self, rootfs: Path):
        self.rootfs = rootfs
        self.root = Root(rootfs)
        self.created: list[tuple[Parts, bool]] = []   # (resolved parts, is_dir)
        self.parent_times: dict[Parts, tuple[int, int]] = {}
        self.after_create: dict[Parts, int] = {}

    def _remember_deepest_existing(self, parts: Parts) -> None:
        """The directory whose mtime creating `parts` changes: the deepest one that exists."""
        for i in range(len(parts) - 1, -1, -1):
            st = self.root.lstat(parts[:i])
            if st is not None and stat.S_ISDIR(st.st_mode):
                self.parent_times.setdefault(parts[:i], (st.st_atime_ns, st.st_mtime_ns))
                return

    def restore_parent_times(self, only: set[Parts] | None = None) -> None:
        """Give the parents of created mountpoints (`only` these) their times back. Before the command
        runs too, so an overlay's copy-up of such a parent carries its image mtime (call before `freeze`)."""
        for parts, (atime, mtime) in self.parent_times.items():
            if only is None or parts in only:
                try:
                    self.root.utime(parts, mtime, atime)
                except OSError:
                    pass

    def freeze(self) -> None:
        """Call once all mountpoints exist (before the command runs)."""
        for parts in self.parent_times:
            st = self.root.lstat(parts)
            if st is not None:
                self.after_create[parts] = st.st_mtime_ns

    def ensure(self, target: str, is_dir: bool, *, allow_symlink: bool = True) -> str:
        """The host path of `target` inside the rootfs, created (empty) when missing."""
        parts = lexical(tuple(split(target)))
        try:
            if parts and allow_symlink:
                parts = self.root.resolve(parts)
            if not parts:
                raise SandboxError(f"cannot mount on {target} in {self.rootfs}: it resolves to the rootfs itself")
            self._remember_deepest_existing(parts)
            created: list[Parts] = []
            with self.root.parent(parts, create=True, created=created) as (fd, name, base):
                self.created.extend((c, True) for c in created)
                st = lstat_at(fd, name)
                if st is None:
                    if is_dir:
                        os.mkdir(name, 0o755, dir_fd=fd)
                    else:
                        os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=fd))
                    self.created.append((base + (name,), is_dir))
                elif stat.S_ISLNK(st.st_mode):
                    raise SandboxError(f"{target} in {self.rootfs} is a symbolic link; a RUN step needs a real "
                                       "directory (or nothing) there")
                elif stat.S_ISDIR(st.st_mode) != is_dir:
                    raise SandboxError(f"cannot mount on {target} in {self.rootfs}: it must be "
                                       f"{'a directory' if is_dir else 'a file'}")
                return self.root.host_path(base + (name,))
        except OSError as exc:
            raise SandboxError(f"cannot create mountpoint {target} in {self.rootfs}: {exc.strerror}") from None

    def close(self) -> None:
        """Let go of the rootfs meanwhile (a layered rootfs' view must not stay open while the RUN's
        overlay, over the same upper dir, is mounted)."""
        self.root.close()

    def cleanup(self, rootfs: Path | None = None) -> None:
        """Remove what `ensure` created; `rootfs`: the same tree seen again through another path."""
        self.root.close()
        self.rootfs = rootfs or self.rootfs
        self.root = Root(self.rootfs)
        untouched = {p for p, mtime in self.after_create.items()
                     if (st := self.root.lstat(p)) is not None and st.st_mtime_ns == mtime}
        for parts, is_dir in reversed(self.created):
            try:
                with self.root.parent(parts) as (fd, name, _):
                    st = lstat_at(fd, name)
                    if st is None:
                        continue
                    if is_dir and stat.S_ISDIR(st.st_mode):
                        os.rmdir(name, dir_fd=fd)
                    elif not is_dir and stat.S_ISREG(st.st_mode) and st.st_size == 0:
                        os.unlink(name, dir_fd=fd)
            except OSError:
                pass  # the command put something there: it is the command's change now
        self.restore_parent_times(untouched)
        self.root.close()


def _resolv_conf() -> str:
    try:
        text = Path("/etc/resolv.conf").read_text()
    except OSError:
        text = ""
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    return "\n".join(lines) + "\n" if lines else "nameserver 8.8.8.8\n"


def _hosts(hostname: str) -> str:
    """A RUN's /etc/hosts, as BuildKit writes it (executor/oci/hosts.go)."""
    return f"127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n"


# ------------------------------------------------------------------------ host side: run

def prepare_call(rootfs: str | os.PathLike[str], argv: Sequence[str], user: "User | tuple[int, int, Iterable[int]]",
                 env: Mapping[str, str] | None) -> tuple[Path, "User", dict[str, str]]:
    """The checks and defaults every RUN runner shares: an existing rootfs, a command, a User, the env."""
    root = host_dir(rootfs)
    if not root.is_dir():
        raise SandboxError(f"rootfs {root} is not a directory")
    if not argv:
        raise SandboxError("nothing to run (empty command)")
    if not isinstance(user, User):
        uid, gid, groups = user
        user = User(uid, gid, tuple(groups))
    env = dict(env or {})
    env.setdefault("PATH", DEFAULT_PATH)   # and no HOSTNAME: BuildKit's RUN has none
    return root, user, env


def host_dir(path: str | os.PathLike[str]) -> Path:
    """`path` made absolute: resolved, unless it is a /proc/<pid>/fd/<n> link (a detached mount's root
    is reached only through it: resolving it would name `/`)."""
    raw = os.path.abspath(os.fspath(path))
    return Path(raw) if raw.startswith("/proc/") else Path(raw).resolve()


def sandbox_mode(isolation: Isolation) -> str:
    """"userns", "host" or "rootless" (see the module docstring)."""
    if os.geteuid() != 0:
        return "rootless"
    return "userns" if isolation.userns == "auto" else "host"


_said: set[str] = set()
_said_lock = threading.Lock()


def say_once(report: Callable[..., None] | None, key: str, message: str) -> None:
    """A warning about this machine's sandbox, once per process (not once per RUN)."""
    with _said_lock:
        if key in _said:
            return
        _said.add(key)
    if report is not None:
        report("warning", message)


class _Staging:
    """Where the sandbox finds each host path. In a user namespace: an idmapped mount of the path in the
    private directory (made by the launcher; the paths' own parents, e.g. /root, may be closed to root
    of the namespace), else the path itself."""

    def __init__(self, private: Path, idmapped: bool):
        self.dir = private / "mnt"
        self.idmapped = idmapped
        self.pairs: list[list] = []    # [source, staging path, read-only]
        self._read_only: dict[str, str] = {}

    def place(self, source: str | os.PathLike[str], is_dir: bool, *, readonly: bool = False) -> str:
        """The sandbox's path of `source`; `readonly` ones (layer dirs) are staged once each."""
        if not self.idmapped:
            return os.fspath(source)
        if readonly and os.fspath(source) in self._read_only:
            return self._read_only[os.fspath(source)]
        self.dir.mkdir(exist_ok=True)
        dest = self.dir / str(len(self.pairs))
        if is_dir:
            dest.mkdir()
        else:
            dest.touch()
        self.pairs.append([os.fspath(source), str(dest), readonly])
        if readonly:
            self._read_only[os.fspath(source)] = str(dest)
        return str(dest)


def _rel(root: Path, host: str) -> str:
    """An absolute path inside the rootfs from a host path under it (as _Mountpoints resolved it)."""
    rel = os.path.relpath(host, root)
    if rel == "." or rel.startswith(".."):
        raise SandboxError(f"mount target {host} is not inside {root}")
    return "/" + rel


def _network(network: str, mode: str, isolation: Isolation, report: Callable[..., None] | None):
    """(the spec's network part, the bridge lease to release after the run or None)."""
    if network not in ("default", "none", "host"):
        raise SandboxError(f"unknown network mode {network!r}; use default, none or host")
    if network == "none":
        return {"mode": "none"}, None
    if not _private_network(network, mode, isolation):
        if mode == "rootless" and network == "default" and isolation.network != "shared":
            say_once(report, "rootless-network", "rootless: RUN steps share the host's network (its loopback "
                     "services included): a private network with NAT needs kade to run as root")
        return {"mode": "shared"}, None
    from builder import netns
    try:
        lease = netns.lease(netns.ensure_bridge(report))
    except netns.NetworkError as exc:
        raise SandboxError(str(exc)) from None
    return {"mode": "private", **lease.spec()}, lease


def _private_network(network: str, mode: str, isolation: Isolation) -> bool:
    """Whether a RUN with this --network gets its own namespace on kade's bridge."""
    return network == "default" and isolation.network != "shared" and mode != "rootless"


def prepare_network(networks: Iterable[str], isolation: Isolation = Isolation(),
                    report: Callable[..., None] | None = None) -> None:
    """Set up the RUN bridge in the background now when a RUN to come will use it, so that it is
    ready when the first one starts (a few `ip`/`iptables` calls, more when nothing is in place yet).
    That RUN waits for the setup, or does it again and reports the error if this attempt failed."""
    if not any(_private_network(n, sandbox_mode(isolation), isolation) for n in networks):
        return
    from builder import netns

    def setup() -> None:
        try:
            netns.ensure_bridge(report)
        except Exception:   # noqa: BLE001 - the RUN that needs the bridge repeats the setup and says why
            pass
    threading.Thread(target=setup, name="kade-net-setup", daemon=True).start()


def run_in_rootfs(rootfs: str | os.PathLike[str], argv: Sequence[str], env: Mapping[str, str] | None = None,
                  workdir: str = "/", user: User | tuple[int, int, Iterable[int]] = User(),
                  mounts: Sequence[Mount] = (), network: str = "default",
                  output: OutputCallback | None = None, *, hostname: str = RUN_HOSTNAME,
                  timeout: float | None = None, overlay: "OverlaySpec | None" = None,
                  isolation: Isolation = Isolation(), report: Callable[..., None] | None = None) -> int:
    """Run `argv` in `rootfs` and return its exit code (128+N when killed by signal N). With `overlay`
    the sandbox mounts that overlay as the rootfs; when it has a `view` (a layered rootfs,
    builder/stageroot.py), `rootfs` is only its mount point and mount points are made through the view.
    Raises SandboxError when the sandbox cannot be set up or the executable cannot be started
    (OverlayUnavailable, IdmapUnavailable: before the command ran)."""
    root, user, env = prepare_call(rootfs, argv, user, env)
    mode = sandbox_mode(isolation)
    ids = None
    if mode == "userns":
        from builder import subids
        try:
            ids = subids.process_range(report)
        except subids.RangeError as exc:
            raise SandboxError(str(exc)) from None
    net, lease = _network(network, mode, isolation, report)
    private = _private_dir(mode)
    staging = _Staging(private, mode == "userns")
    view = overlay.view if overlay is not None and overlay.view is not None else None
    points: _Mountpoints | None = None
    try:
        with (view() if view else contextlib.nullcontext(root)) as host:
            host = host_dir(host)
            points = _Mountpoints(host)
            spec = _prepare(host, points, staging, private, mounts, env, net, hostname, report)
            points.close()
        for item in spec["mounts"]:
            if "layers" in item:
                item["userxattr"] = True   # layer dirs: kade's overlays keep their marks in user.* (layerstore.py)
        spec.update({
            "parent": os.getpid(), "mode": mode, "ids": None if ids is None else vars(ids),
            "argv": list(argv), "env": env, "workdir": workdir, "uid": user.uid, "gid": user.gid,
            "groups": list(user.groups), "hostname": hostname, "network": net,
            "overlay": _overlay_spec(overlay, staging, mode),
            "root": staging.place(root, True) if overlay is None else str(root),
        })
        spec["idmap"] = staging.pairs
        return spawn_init("builder.sandbox_init", spec, output, timeout)
    finally:
        if points is not None:
            with (view() if view else contextlib.nullcontext(root)) as host:
                points.cleanup(host_dir(host))
        if lease is not None:
            lease.release()
        fsutil.remove_tree(private)


def _prepare(root: Path, points: "_Mountpoints", staging: "_Staging", private: Path, mounts: Sequence[Mount],
             env: dict[str, str], net: dict, hostname: str, report: Callable[..., None] | None) -> dict:
    """Mount points made in the rootfs, generated files, mount sources staged: the spec's mount part."""
    files = private / "files"
    files.mkdir()
    (files / "hosts").write_text(_hosts(hostname))
    (files / "resolv.conf").write_text(_run_resolv_conf(net, report))
    (files / "secrets").mkdir()
    spec_mounts = []
    system = {name: _rel(root, points.ensure("/" + name, True, allow_symlink=False)) for name in ("proc", "dev", "sys")}
    etc_hosts = _rel(root, points.ensure("/etc/hosts", False))
    etc_resolv = _rel(root, points.ensure("/etc/resolv.conf", False))
    sources: list[tuple[dict, str, bool]] = []   # (spec item, host source, is_dir): staged below
    for i, m in enumerate(mounts):
        item: dict[str, object] = {"type": m.type, "readonly": m.readonly, "size": m.size}
        if m.type == "bind":
            if m.source_layers and m.readonly:   # a stage's layers: the sandbox mounts them itself
                is_dir = _layered_source(item, m, staging, files, i)
            else:
                is_dir = _bind_source(item, m, files, i, sources)
        elif m.type == "cache":
            is_dir = True
            cache = Path(m.source or "")
            if not cache.exists():  # a new cache dir gets the mount's mode/uid/gid (BuildKit's options)
                cache.mkdir(parents=True)
                os.chmod(cache, 0o755 if m.mode is None else m.mode)
                if os.geteuid() == 0:
                    os.chown(cache, m.uid, m.gid)
            sources.append((item, str(cache), True))
        elif m.type == "ssh":
            is_dir = False
            sources.append((item, m.source or "", False))
            env.setdefault("SSH_AUTH_SOCK", m.target)
        elif m.type == "secret":
            is_dir = False
            item.update(data=base64.b64encode(m.data or b"").decode(), mode=0o400 if m.mode is None else m.mode,
                        uid=m.uid, gid=m.gid, name=f"s{i}")
        else:
            is_dir = True
        item["target"] = _rel(root, points.ensure(m.target, is_dir))
        spec_mounts.append(item)
    points.restore_parent_times()
    points.freeze()
    staged_files = staging.place(files, True)
    for item in spec_mounts:
        if item["type"] == "secret":
            item["staging"] = f"{staged_files}/secrets"
        if "layers" in item:
            item["at"] = staged_files + str(item.pop("at"))[len(str(files)):]
    for item, source, is_dir in sources:
        item["source"] = _staged_source(staging, files, staged_files, source, is_dir)
    return {"mounts": spec_mounts, "hosts": f"{staged_files}/hosts", "resolv": f"{staged_files}/resolv.conf",
            "etc_hosts": etc_hosts, "etc_resolv": etc_resolv, "system": system}


def _bind_source(item: dict, m: Mount, files: Path, i: int, sources: list[tuple[dict, str, bool]]) -> bool:
    """A bind mount's source on the host (a copy when writable: BuildKit discards a bind's writes)."""
    source = Path(resolve_full(m.source_root, m.source or "/") if m.source_root else m.source or "")
    if not source.exists():
        raise SandboxError(f"bind mount source {source} does not exist")
    is_dir = source.is_dir()
    if not m.readonly:
        copy = files / f"bind{i}"
        if is_dir:
            try:
                fsutil.copy_tree(source, copy)
            except OSError as exc:
                raise SandboxError(f"cannot copy the bind mount source {m.source or '/'} for a writable mount: "
                                   f"{exc.strerror or exc}") from None
        else:
            shutil.copy2(source, copy)
        source = copy
    sources.append((item, str(source), is_dir))
    return is_dir


def _layered_source(item: dict, m: Mount, staging: "_Staging", files: Path, i: int) -> bool:
    """A read-only bind from a layered stage: the path resolved in its view (`source_root`), and its
    layer dirs staged read-only for the sandbox to mount as an overlay at a point of its private dir."""
    assert m.source_root is not None and m.source_layers
    with Root(m.source_root) as tree:
        parts = tree.resolve(m.source or "/")
        st = tree.lstat(parts)
    if st is None:
        raise SandboxError(f"bind mount source {m.source} does not exist in {m.source_root}")
    at = files / f"layers{i}"
    at.mkdir()
    item.update(layers=[staging.place(layer, True, readonly=True) for layer in reversed(m.source_layers)],
                path="/" + os.fsdecode(b"/".join(parts)), at=str(at))
    return stat.S_ISDIR(st.st_mode)


def _staged_source(staging: _Staging, files: Path, staged_files: str, source: str, is_dir: bool) -> str:
    """A mount source as the sandbox sees it: copies in the private files dir go through its one
    staged mount; anything else gets a staged (idmapped) mount of its own."""
    if source.startswith(str(files) + "/"):
        return staged_files + source[len(str(files)):]
    return staging.place(source, is_dir)


def _overlay_spec(overlay: "OverlaySpec | None", staging: _Staging, mode: str) -> dict | None:
    """The overlay as the sandbox mounts it: its paths staged (idmapped in a user namespace; layer dirs
    read-only), and whether overlay keeps its marks in user.* xattrs (inside a user namespace)."""
    if overlay is None:
        return None
    scratch = overlay.scratch
    staged = staging.place(scratch, True)
    # a plain rootfs dir (no view) is the overlay's only lower dir, and mount points are made in it
    lowers = [staging.place(lower, True, readonly=overlay.view is not None) for lower in overlay.lowers]
    upper, work, merged = (staged + path[len(scratch):] for path in (overlay.upper, overlay.work, overlay.merged))
    userxattr = overlay.view is not None or _userxattr(mode)   # layer dirs: always (builder/layerstore.py)
    return {"merged": merged, "lowers": lowers, "upper": upper, "work": work, "userxattr": userxattr}


def _userxattr(mode: str) -> bool:
    """Whether the sandbox's overlays keep their marks in user.* xattrs: inside a user namespace."""
    from builder.snapshot import in_user_namespace

    return mode != "host" or in_user_namespace()


def _private_dir(mode: str) -> Path:
    """A fresh directory for the run's generated files and staged mounts (named after this process,
    so the next kade removes what a killed one left)."""
    if mode != "userns":
        return Path(tempfile.mkdtemp(prefix="kade-sandbox-"))
    PRIVATE_PARENT.mkdir(parents=True, exist_ok=True)
    _sweep_private_dirs()
    private = Path(tempfile.mkdtemp(prefix=f"kade-sandbox-{os.getpid()}-", dir=PRIVATE_PARENT))
    os.chmod(private, 0o711)   # root of the user namespace must walk through it
    return private


_swept = False


def _sweep_private_dirs() -> None:
    """Remove the private directories of kade processes that are gone (once per process)."""
    global _swept
    if _swept:
        return
    _swept = True
    for entry in PRIVATE_PARENT.glob("kade-sandbox-*-*"):
        pid = entry.name.split("-")[2]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            fsutil.remove_tree(entry)


def _run_resolv_conf(net: dict, report: Callable[..., None] | None) -> str:
    if net["mode"] != "private":
        return _resolv_conf()
    from builder import netns

    text, warning = netns.host_resolv_conf()
    if warning:
        say_once(report, "dns", warning)
    return text


def spawn_init(module: str, spec: dict, output: OutputCallback | None, timeout: float | None,
               stop: int = signal.SIGKILL) -> int:
    """Run `module`'s main() (stdlib and builder.linux only) in a fresh interpreter that holds the RUN:
    `spec` as JSON on one pipe, its status back on another (`+` started, `!kind:message` failed),
    the command's output pumped to `output`. `stop` is the signal that ends it and its command (the
    launcher's PID namespace goes with a SIGKILL; the pod's reaper kills what it holds on SIGTERM)."""
    spec_r, spec_w = os.pipe()
    status_r, status_w = os.pipe()
    init = f"import sys; sys.path.insert(0, {_PKG_ROOT!r}); from {module} import main; main()"
    python = os.environ.get(INIT_PYTHON_ENV) or sys.executable
    cmd = [python, "-I", "-S", "-c", init, str(spec_r), str(status_w)]
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                pass_fds=(spec_r, status_w), env={"PATH": os.environ.get("PATH", DEFAULT_PATH)},
                                start_new_session=True)
    finally:
        os.close(spec_r)
        os.close(status_w)
    try:
        with os.fdopen(spec_w, "wb") as f:
            f.write(marshal.dumps(spec))
    except BrokenPipeError:
        pass
    try:
        with _running(proc, stop) as live:
            stderr_tail = _pump(proc, output, timeout)
            code = proc.wait()
    except BaseException:
        _kill(proc, stop)
        raise
    finally:
        with os.fdopen(status_r, "rb") as f:
            status = f.read().decode(errors="replace")
    if live.killed:
        raise RunInterrupted("the RUN step was stopped: kade is stopping")
    return _verdict(status, code, stderr_tail)


def _verdict(status: str, code: int, stderr_tail: Iterable[bytes]) -> int:
    """The command's exit code, or the sandbox's own failure as an exception."""
    if "!" in status:
        kind, _, message = status.split("!", 1)[1].partition(":")
        if kind == "idmap":
            path, _, why = message.partition("\t")
            raise IdmapUnavailable(f"cannot show {path} to the RUN's user namespace through an idmapped mount "
                                   f"({why}: the kernel needs 5.12+, and the filesystem must support them: ext4, "
                                   "xfs, btrfs, tmpfs 6.3+; not NFS or overlayfs)",
                                   hint="put kade's cache dir on such a filesystem, or build with "
                                        "--userns host (RUN then runs as this host's root)")
        raise {"overlay": OverlayUnavailable}.get(kind, SandboxError)(message)
    if STARTED not in status:
        why = b" ".join(stderr_tail).decode(errors="replace").strip() or f"exit code {code}"
        raise SandboxError(f"the RUN sandbox did not start: {why}")
    return 128 - code if code < 0 else code


class _running:
    """A sandbox that kill_all (or the command's cancellation) can stop from any thread."""

    def __init__(self, proc: subprocess.Popen, stop: int = signal.SIGKILL):
        self.proc, self.stop = proc, stop
        self.killed = False
        self._cancel: contextlib.AbstractContextManager[None] | None = None

    def __enter__(self) -> "_running":
        with _live_lock:
            _live.add(self)
            if _refusing:   # kill_all came first: this RUN must not run either
                self.kill()
        # the command's cancellation (a signal) kills the RUN at once
        self._cancel = _cancel.on_cancel(self.kill)
        self._cancel.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._cancel is not None:
            self._cancel.__exit__(None, None, None)
        with _live_lock:
            _live.discard(self)

    def kill(self) -> None:
        """Send `stop` to the process group of what holds the RUN: with SIGKILL the launcher, holder
        and init, whose PID namespace takes every process of the RUN with it. Quick and lock-free
        enough for a signal handler."""
        self.killed = True
        try:
            os.killpg(self.proc.pid, self.stop)
        except ProcessLookupError:
            pass


# Every sandbox running in this process, so a signal handler can end them all at once (kill_all).
_live: set[_running] = set()
_refusing = False   # set by kill_all until resume(): a RUN starting meanwhile is killed at once
_live_lock = threading.RLock()   # re-entrant: kill_all may run in a signal handler of a thread holding it


def _kill(proc: subprocess.Popen, stop: int = signal.SIGKILL, grace: float = 10.0) -> None:
    """`stop` to its process group, then SIGKILL if it is not gone within `grace` seconds; reaped."""
    for sig in dict.fromkeys((stop, signal.SIGKILL)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue
    proc.wait()


def kill_all() -> int:
    """Stop every RUN of this process now, and any that starts until resume() (their _spawn raises
    RunInterrupted). Returns how many were running."""
    global _refusing
    with _live_lock:
        _refusing = True
        live = list(_live)
    for run in live:
        run.kill()
    return len(live)


def resume() -> None:
    """RUN steps may start again (after the build that kill_all stopped has wound down)."""
    global _refusing
    with _live_lock:
        _refusing = False


def _pump(proc: subprocess.Popen, output: OutputCallback | None, timeout: float | None) -> deque[bytes]:
    """Feed the command's output to `output` until both pipes close; returns the last stderr pieces."""
    import time
    deadline = None if timeout is None else time.monotonic() + timeout
    sel = selectors.DefaultSelector()
    pending = {"stdout": b"", "stderr": b""}
    stderr_tail: deque[bytes] = deque(maxlen=5)
    sel.register(proc.stdout, selectors.EVENT_READ, "stdout")  # type: ignore[arg-type]
    sel.register(proc.stderr, selectors.EVENT_READ, "stderr")  # type: ignore[arg-type]
    while sel.get_map():
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        events = sel.select(wait)
        if not events and deadline is not None and time.monotonic() >= deadline:
            raise SandboxError(f"the command ran longer than {timeout} s and was killed")
        for key, _ in events:
            name = key.data
            chunk = os.read(key.fd, 65536)
            if not chunk:
                sel.unregister(key.fileobj)
                if pending[name] and name == "stderr":
                    stderr_tail.append(pending[name])
                if pending[name] and output:
                    output(name, pending[name])
                pending[name] = b""
                continue
            buf = pending[name] + chunk
            cut = buf.rfind(b"\n") + 1
            lines = [line + b"\n" for line in buf[:cut].split(b"\n")[:-1]]
            rest = buf[cut:]
            while len(rest) > MAX_LINE:     # an endless line comes in pieces (without a newline)
                lines.append(rest[:MAX_LINE])
                rest = rest[MAX_LINE:]
            pending[name] = rest
            if name == "stderr":
                stderr_tail.extend(lines)
            if output:
                for line in lines:
                    output(name, line)
    sel.close()
    return stderr_tail


