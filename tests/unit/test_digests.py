"""builder/digests.py: context files hashed on every core, big ones kept between builds by their lstat."""
import hashlib
import json
import os
import time

import pytest

from builder.errors import ContextError

from builder import digests
from builder.digests import KEEP_FROM, FileDigests


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write(path, data: bytes):
    path.write_bytes(data)
    return path, len(data)


@pytest.fixture
def not_racy(monkeypatch):
    """Files written a moment ago count as settled (the rule itself: test_a_file_changed_just_now_is_not_kept)."""
    monkeypatch.setattr(digests, "RACY_SECONDS", 0)


def _forge(store, path, digest: str) -> None:
    """Replace the kept digest of `path` (its stat key kept): what a second build reads shows it was reused."""
    kept = json.loads(store.read_text())
    kept[str(path)][5] = digest
    store.write_text(json.dumps(kept))


@pytest.mark.parametrize("change, reused", [
    ("nothing", True),
    ("rewritten, same size", False),
    ("appended to", False),
    ("replaced by a rename", False),
    ("times set back", False),   # mtime restored with utime: the ctime still moved
])
def test_a_kept_digest_is_used_only_while_the_file_is_as_it_was(change, reused, tmp_path, not_racy):
    store = tmp_path / "kept.json"
    data = b"a" * KEEP_FROM
    path, size = _write(tmp_path / "big", data)
    first = FileDigests(store)
    assert first.of([(path, size)]) == {path: _sha(data)}
    first.save()
    _forge(store, path, "f" * 64)
    time.sleep(0.02)   # past the file system's clock tick: a write now moves the times
    expected = data
    if change == "rewritten, same size":
        expected = b"b" * KEEP_FROM
        path.write_bytes(expected)
    elif change == "appended to":
        expected = data + b"!"
        path.write_bytes(expected)
    elif change == "replaced by a rename":
        expected = b"c" * KEEP_FROM
        (tmp_path / "new").write_bytes(expected)
        os.rename(tmp_path / "new", path)
    elif change == "times set back":
        st = os.stat(path)
        expected = b"d" * KEEP_FROM
        path.write_bytes(expected)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    found = FileDigests(store).of([(path, len(expected))])[path]
    assert found == ("f" * 64 if reused else _sha(expected))


def test_a_file_changed_just_now_is_not_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(digests, "RACY_SECONDS", 600)   # "just now" even on a machine that stalls for seconds
    store = tmp_path / "kept.json"
    path, size = _write(tmp_path / "big", b"x" * KEEP_FROM)
    found = FileDigests(store)
    found.of([(path, size)])
    found.save()
    assert not store.exists() or str(path) not in json.loads(store.read_text())


def test_small_files_are_hashed_every_time(tmp_path, not_racy):
    store = tmp_path / "kept.json"
    path, size = _write(tmp_path / "small", b"y" * (KEEP_FROM - 1))
    found = FileDigests(store)
    assert found.of([(path, size)]) == {path: _sha(b"y" * (KEEP_FROM - 1))}
    found.save()
    assert not store.exists()


def test_many_files_hash_on_threads_as_they_do_one_by_one(tmp_path):
    files = {}
    for i in range(40):
        data = os.urandom(300_000 + i)
        path, size = _write(tmp_path / f"f{i}", data)
        files[path] = (size, _sha(data))
    found = FileDigests().of((p, size) for p, (size, _) in files.items())
    assert found == {p: digest for p, (_, digest) in files.items()}


@pytest.mark.parametrize("content", [b"not json", b"[1, 2]", b'{"x": 1}', b'{"BIG": 5}', b'{"BIG": [1, 2]}',
                                     b'{"BIG": [1, 2, 3, 4, 5, 6, 7]}'])
def test_an_unreadable_store_is_hashed_over(content, tmp_path, not_racy):
    store = tmp_path / "kept.json"
    path, size = _write(tmp_path / "big", b"z" * KEEP_FROM)
    store.write_bytes(content.replace(b"BIG", str(path).encode()))
    found = FileDigests(store)
    assert found.of([(path, size)]) == {path: _sha(b"z" * KEEP_FROM)}
    found.save()
    assert str(path) in json.loads(store.read_text())


@pytest.mark.parametrize("size", [0, 1, (1 << 20) - 1, 1 << 20, (3 << 20) + 5])
def test_sha256_file_hashes_every_byte_across_its_reused_buffer(size, tmp_path):
    data = os.urandom(size)
    path, _ = _write(tmp_path / "f", data)
    assert digests.sha256_file(path) == _sha(data)
    assert digests.sha256_file(str(path)) == _sha(data)


def test_sha256_file_does_not_follow_a_final_symlink(tmp_path):
    """The walk saw a file there: a symlink swapped in since is refused, never read through."""
    _write(tmp_path / "secret", b"host file")
    (tmp_path / "link").symlink_to(tmp_path / "secret")
    with pytest.raises(OSError):
        digests.sha256_file(tmp_path / "link")


def test_sha256_file_refuses_a_fifo_without_waiting_for_a_writer(tmp_path):
    """A fifo swapped in for a file since the walk: opened non-blocking and refused, not read for ever."""
    os.mkfifo(tmp_path / "f")
    with pytest.raises(ContextError, match="no longer a regular file"):
        digests.sha256_file(tmp_path / "f")
