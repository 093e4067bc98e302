"""common/fsutil.py: trees copied, measured and removed at any depth."""
import os
import subprocess

from common import fsutil


def _deep(root, levels=1200):
    root.mkdir()
    subprocess.run(["mkdir", "-p", "a/" * levels], cwd=root, check=True)   # deeper than Python's recursion limit
    return root.joinpath(*["a"] * levels)


def test_copy_tree_keeps_files_modes_times_and_links_and_leaves_out_specials(tmp_path):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_text("data")
    os.chmod(src / "d" / "f", 0o751)
    os.symlink("../missing", src / "d" / "dangling")
    os.symlink("d", src / "dirlink")
    os.mkfifo(src / "fifo")
    os.utime(src / "d", (1_000_000, 1_000_000))
    fsutil.copy_tree(src, tmp_path / "dest")
    dest = tmp_path / "dest"
    assert (dest / "d" / "f").read_text() == "data"
    assert (dest / "d" / "f").stat().st_mode & 0o7777 == 0o751
    assert os.readlink(dest / "d" / "dangling") == "../missing"
    assert os.readlink(dest / "dirlink") == "d"
    assert not os.path.lexists(dest / "fifo")   # shutil.copytree failed on it
    assert (dest / "d").stat().st_mtime == 1_000_000


def test_copy_measure_and_remove_a_chain_deeper_than_the_recursion_limit(tmp_path):
    bottom = _deep(tmp_path / "src")
    (bottom / "f").write_bytes(b"x" * 100)
    (tmp_path / "src" / "g").write_bytes(b"y" * 20)
    fsutil.copy_tree(tmp_path / "src", tmp_path / "dest")
    assert tmp_path.joinpath("dest", *["a"] * 1200, "f").read_bytes() == b"x" * 100
    assert fsutil.tree_size(tmp_path / "dest") == 120
    for tree in ("src", "dest"):
        fsutil.remove_tree(tmp_path / tree)
        assert not (tmp_path / tree).exists()
