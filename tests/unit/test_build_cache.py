"""The local cache: where it lives, prune, and its inter-process locks."""
import os
import subprocess
import sys
import time

from builder.cache import LocalCache, cache_root
from kade.cli import main


def test_cache_root_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("KADE_CACHE_DIR", str(tmp_path / "env"))
    assert cache_root(str(tmp_path / "flag")) == tmp_path / "flag"
    assert cache_root(None) == tmp_path / "env"
    monkeypatch.delenv("KADE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root(None) == tmp_path / "xdg" / "kade"


def test_prune_removes_blobs_and_mounts_unless_kept(tmp_path):
    cache = LocalCache(tmp_path / "c")
    digest = cache.blobs.put_bytes(b"layer bytes")
    (cache.mount_dir("pip") / "wheel").write_bytes(b"x" * 100)
    res = cache.prune(keep_mounts=True)
    assert res.removed == 1 and res.freed_bytes == len(b"layer bytes")
    assert not cache.blobs.has(digest) and (cache.mount_dir("pip") / "wheel").exists()
    assert cache.prune().freed_bytes == 100
    assert not (cache.mount_dir("pip") / "wheel").exists()


def test_prune_older_than_keeps_recent(tmp_path):
    cache = LocalCache(tmp_path / "c")
    old = cache.blobs.put_bytes(b"old")
    new = cache.blobs.put_bytes(b"new")
    past = time.time() - 7200
    os.utime(cache.blobs.path(old), (past, past))
    cache.prune(older_than_seconds=3600)
    assert not cache.blobs.has(old) and cache.blobs.has(new)


def test_prune_waits_for_a_running_build(tmp_path):
    """A build holds the global lock shared; prune (exclusive) waits until it is released."""
    import threading

    cache = LocalCache(tmp_path / "c")
    digest = cache.blobs.put_bytes(b"in use")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys; from builder.cache import LocalCache\n"
        f"c = LocalCache({str(tmp_path / 'c')!r})\n"
        "with c.lock('global', shared=True):\n"
        "    print('held', flush=True); sys.stdin.readline()\n")], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True)
    assert holder.stdout.readline().strip() == "held"
    pruner = threading.Thread(target=cache.prune)
    pruner.start()
    pruner.join(0.5)
    assert pruner.is_alive() and cache.blobs.has(digest)  # blocked while the build runs
    holder.stdin.write("done\n")
    holder.stdin.flush()
    pruner.join(30)
    assert not pruner.is_alive() and not cache.blobs.has(digest)
    holder.wait(timeout=10)


def test_kade_cache_prune_cli(tmp_path, capsys):
    cache = LocalCache(tmp_path / "c")
    cache.blobs.put_bytes(b"12345")
    assert main(["cache", "prune", "--cache-dir", str(tmp_path / "c"), "--output", "json"]) == 0
    assert '"freed_bytes": 5' in capsys.readouterr().out


def _wait_gone(paths, timeout=30.0):
    deadline = time.monotonic() + timeout
    while any(p.exists() for p in paths) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not any(p.exists() for p in paths)


def test_discard_moves_the_work_dir_away_at_once_and_deletes_it_in_the_background(tmp_path):
    cache = LocalCache(tmp_path / "c")
    done, other = cache.work_dir("stage-0-"), cache.work_dir("stage-1-")
    (done / "rootfs" / "data").mkdir(parents=True)
    for i in range(200):
        (done / "rootfs" / "data" / f"f{i}").write_text(str(i))
    (done / "rootfs" / "ro").mkdir(mode=0o500)
    (other / "keep").write_text("still building")
    cache.discard(done)
    assert not done.exists()  # gone from its place before discard returns
    assert _wait_gone(list((cache.root / "work").glob(".trash-*")))
    assert [p.name for p in (cache.root / "work").iterdir()] == [other.name]
    assert (other / "keep").read_text() == "still building"


def test_discard_of_a_missing_dir_leaves_no_trash(tmp_path):
    cache = LocalCache(tmp_path / "c")
    cache.discard(cache.root / "work" / "never-made")
    assert list((cache.root / "work").iterdir()) == []


def test_discard_never_deletes_through_a_mount_left_inside(tmp_path):
    """A mount left inside a work dir (a RUN's overlay or cache mount of a cancelled build) is detached,
    not deleted through: what it holds survives, and nothing stays mounted under the cache."""
    if os.geteuid() != 0:
        import pytest
        pytest.skip("mounting a tmpfs needs root")
    from builder.linux import mount_points

    cache = LocalCache(tmp_path / "c")
    done = cache.work_dir("stage-0-")
    mnt = done / "rootfs" / "cache-mount"
    mnt.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(mnt)], check=True)
    held = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)  # keeps the detached tmpfs reachable for the check
    try:
        (mnt / "precious").write_text("not the build's")
        (done / "rootfs" / "junk").write_text("x")
        cache.discard(done)
        assert _wait_gone([done, *(cache.root / "work").glob(".trash-*")])   # (not inside one: rm may be emptying it)
        with open(os.open("precious", os.O_RDONLY, dir_fd=held)) as f:
            assert f.read() == "not the build's"
        mounts = mount_points(open("/proc/self/mountinfo").read())
        assert not [m for m in mounts if m.startswith(str(cache.root))]
    finally:
        os.close(held)
        subprocess.run(["umount", str(mnt)], capture_output=True, check=False)


def test_what_builds_shape_is_kept_per_tenant_unless_shared(tmp_path):
    from builder.tenant import Tenant

    a = LocalCache(tmp_path / "c", Tenant("reg/team-a/app-stages"))
    b = LocalCache(tmp_path / "c", Tenant("reg/team-b/app-stages"))
    (b.mount_dir("/root/.cache/pip") / "planted.whl").write_bytes(b"evil")
    assert not (a.mount_dir("/root/.cache/pip") / "planted.whl").exists()
    assert a.mount_lock_name("/root/.cache/pip") != b.mount_lock_name("/root/.cache/pip")
    assert a.downloads != b.downloads and a.rootfs_store.root != b.rootfs_store.root
    assert a.blobs.root == b.blobs.root   # content-addressed, checked on download: one for all
    shared_a = LocalCache(tmp_path / "c", Tenant("reg/team-a/app-stages", frozenset({"mounts"})))
    shared_b = LocalCache(tmp_path / "c", Tenant("reg/team-b/app-stages", frozenset({"mounts"})))
    (shared_b.mount_dir("go") / "mod").write_bytes(b"shared on purpose")
    assert (shared_a.mount_dir("go") / "mod").exists()
    assert shared_a.downloads == a.downloads   # only what both share


def test_prune_reaches_every_tenant_and_the_layout_of_older_kades(tmp_path):
    from builder.tenant import Tenant

    for name in ("one", "two"):
        cache = LocalCache(tmp_path / "c", Tenant(name, frozenset({"trees"}) if name == "two" else frozenset()))
        (cache.mount_dir("apt") / "deb").write_bytes(b"d")
        (cache.downloads / ("0" * 64)).mkdir(parents=True)
        (cache.rootfs_store.root / "sha256-x").mkdir(parents=True)
    (tmp_path / "c" / "mounts" / "legacy").mkdir(parents=True)
    res = LocalCache(tmp_path / "c").prune(keep_mounts=True)
    assert res.removed == 4   # two downloads, one tree per store (a tenant's, the shared one)
    assert (LocalCache(tmp_path / "c", Tenant("one")).mount_dir("apt") / "deb").exists()
    assert LocalCache(tmp_path / "c").prune().removed == 3   # two mounts, the legacy folder


def test_prune_measures_and_removes_a_chain_deeper_than_the_recursion_limit(tmp_path):
    """A RUN shapes its cache mounts: a chain 1,200 levels deep made os.walk (recursive) crash prune."""
    cache = LocalCache(tmp_path / "c")
    mount = cache.mount_dir("deep")
    subprocess.run(["mkdir", "-p", "a/" * 1200], cwd=mount, check=True)
    mount.joinpath(*["a"] * 1200, "f").write_bytes(b"x" * 1000)
    (mount / "top").write_bytes(b"y" * 24)
    try:
        res = cache.prune()
        assert res.freed_bytes == 1024
        assert not mount.exists() or not any(mount.iterdir())
    finally:
        subprocess.run(["rm", "-rf", str(mount)], check=True)   # (pytest's own cleanup recurses)
