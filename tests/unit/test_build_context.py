""".dockerignore matching (moby/patternmatcher rules) and COPY source selection + hashing."""
import os
import re
import subprocess

import pytest

from builder.context import BuildContext, IgnoreRules, hash_sources, parse_ignore
from builder.errors import ContextError, MissingSourceError
from common.fsutil import remove_tree


@pytest.mark.parametrize("patterns,path,excluded", [
    ("node_modules", "node_modules", True),
    ("node_modules", "node_modules/a/b.js", True),
    ("node_modules", "src/node_modules", False),
    ("**/node_modules", "src/node_modules/x", True),
    ("*.md", "README.md", True),
    ("*.md", "docs/a.md", False),
    ("**/*.md", "docs/a.md", True),
    ("**/*.md", "a.md", True),
    ("*.md\n!README.md", "README.md", False),
    ("*.md\n!README.md", "CHANGES.md", True),
    ("!README.md\n*.md", "README.md", True),
    ("/build", "build/x", True),
    ("./build/", "build", True),
    ("build/**", "build", False),
    ("build/**", "build/a/b", True),
    ("a?c", "abc", True),
    ("a?c", "a/c", False),
    ("[a-c]x", "bx", True),
    ("[!a-c]x", "dx", True),
    ("# comment\n\n  tmp  ", "tmp", True),
    ("*\n!keep/**", "keep/x", False),
    ("*\n!keep/**", "other", True),
    ("docs\n!docs/keep.md", "docs/keep.md", False),
    ("docs\n!docs/keep.md", "docs/other.md", True),
    ("a\\*b", "a*b", True),
    ("a\\*b", "axb", False),
])
def test_ignore_matching(patterns, path, excluded):
    assert IgnoreRules(parse_ignore(patterns)).excluded(path) is excluded


@pytest.fixture
def ctx(tmp_path):
    files = {"a.txt": "A", "b.txt": "B", "src/x.py": "x", "src/sub/y.py": "y", "src/skip.pyc": "c",
             "docs/readme.md": "d", ".dockerignore": "**/*.pyc\ndocs\n"}
    for rel, text in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    os.chmod(tmp_path / "b.txt", 0o755)
    os.symlink("a.txt", tmp_path / "src" / "link")
    return BuildContext.open(tmp_path)


def test_select_file_dir_and_glob(ctx):
    (src,) = ctx.select("src")
    assert src.is_dir
    assert [(e.rel, e.kind) for e in src.entries] == [("link", "symlink"), ("sub", "dir"), ("sub/y.py", "file"),
                                                      ("x.py", "file")]
    assert [s.rel for s in ctx.select("*.txt")] == ["a.txt", "b.txt"]
    assert [s.rel for s in ctx.select("/src/../a.txt")] == ["a.txt"]
    assert [s.rel for s in ctx.select("src/*/*.py")] == ["src/sub/y.py"]
    assert ctx.select("*.nope") == [] and ctx.select("src/*/*.nope") == []  # BuildKit's AllowEmptyWildcard


@pytest.mark.parametrize("src,fragment", [
    ("nope.txt", "not found"),
    ("docs", "excluded by .dockerignore"),
    ("docs/readme.md", "excluded by .dockerignore"),
    ("../etc/passwd", "not found"),
])
def test_missing_sources_are_named(ctx, src, fragment):
    with pytest.raises(MissingSourceError) as exc:
        ctx.select(src)
    assert fragment in str(exc.value)
    if "outside" not in fragment:
        assert src in str(exc.value)


def test_symlink_out_of_context_is_refused(ctx, tmp_path):
    os.symlink("/etc", tmp_path / "escape")
    with pytest.raises(MissingSourceError):
        ctx.select("escape")


def test_special_files_are_never_read(ctx, tmp_path):
    """A fifo would block a read for ever (planning hung on `COPY fifo /x`), a socket has nothing to
    read: named, each is an error naming it; matched by a wildcard or inside a copied directory, it is
    left out, as from the context BuildKit sees."""
    os.mkfifo(tmp_path / "pipe.txt")
    os.mkfifo(tmp_path / "src" / "pipe")
    os.symlink("pipe.txt", tmp_path / "to-pipe")
    for name in ("pipe.txt", "to-pipe"):
        with pytest.raises(MissingSourceError, match=f"'{name}' is a fifo"):
            ctx.select(name)
    assert [s.rel for s in ctx.select("*.txt")] == ["a.txt", "b.txt"]
    assert "pipe" not in [e.rel for e in ctx.select("src")[0].entries]


def test_dockerfile_specific_ignore_wins(tmp_path):
    (tmp_path / ".dockerignore").write_text("a\n")
    (tmp_path / "Dockerfile.dockerignore").write_text("b\n")
    rules = IgnoreRules.load(tmp_path, tmp_path / "Dockerfile")
    assert rules.excluded("b") and not rules.excluded("a")


def test_hash_ignores_mtime_but_sees_content_mode_and_owner(ctx, tmp_path):
    base = hash_sources(ctx.select("*.txt"))
    os.utime(tmp_path / "a.txt", (1, 1))
    assert hash_sources(ctx.select("*.txt")) == base
    os.chmod(tmp_path / "a.txt", 0o600)
    assert hash_sources(ctx.select("*.txt")) != base
    os.chmod(tmp_path / "a.txt", 0o644)
    assert hash_sources(ctx.select("*.txt")) == base
    (tmp_path / "a.txt").write_text("changed")
    assert hash_sources(ctx.select("*.txt")) != base
    assert hash_sources(ctx.select("b.txt"), uid=1) != hash_sources(ctx.select("b.txt"))
    assert hash_sources(ctx.select("b.txt"), chmod=lambda _m, _d: 0o600) != hash_sources(ctx.select("b.txt"))


def test_ignored_files_inside_copied_dir_are_left_out(ctx):
    rows = hash_sources(ctx.select("src"))
    assert not any(r[0].endswith(".pyc") for r in rows)
    assert ("src/link", "symlink", 0o777, 0, 0, "a.txt") in rows


HOSTILE = "*a" * 16 + "*b"   # `re` backtracks for hours on a long name of a's; the DFA in builder/globs.py does not


@pytest.mark.timeout(120)   # a guard against a hang, not a speed assertion
def test_patterns_that_backtrack_in_re_select_in_linear_time(tmp_path):
    long_name = "a" * 250
    for rel in [long_name, "x" + "a" * 30 + "b", "keep.txt"]:
        (tmp_path / rel).write_text("x")
    (tmp_path / ".dockerignore").write_text(HOSTILE + "\n")
    ctx = BuildContext.open(tmp_path)
    assert ctx.ignore.excluded("x" + "a" * 30 + "b")
    assert not ctx.ignore.excluded(long_name)
    assert [s.rel for s in ctx.select(HOSTILE)] == []   # the one match is ignored
    assert [s.rel for s in ctx.select("*a" * 16 + "*")] == [long_name]


@pytest.mark.parametrize("src", ["a[]b", "x/[!]", "[z-a]"])
def test_bad_wildcard_in_a_copy_source_is_an_error_naming_it(ctx, src):
    with pytest.raises(ContextError, match=re.escape(repr(src))):
        ctx.select(src)


def _matches(parts: list[str], names: list[str]) -> bool:
    """The meaning of a COPY wildcard, read slowly: `**` is any number of whole components."""
    import fnmatch
    if not parts:
        return not names
    if parts[0] == "**":
        return any(_matches(parts[1:], names[i:]) for i in range(len(names) + 1))
    return bool(names) and fnmatch.fnmatchcase(names[0], parts[0]) and _matches(parts[1:], names[1:])


@pytest.mark.parametrize("pattern", ["**/x", "**/**/x", "a/**/x", "**/a/**/x", "a/**/b/**/x", "**/*", "*/**/*/x"])
def test_double_star_sources_are_each_path_once(tmp_path, pattern):
    for rel in ["x", "a/x", "a/b/x", "a/a/b/x", "b/a/x", "b/c", "a/b/a/b/x"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(rel)
    ctx = BuildContext.open(tmp_path)
    every = [str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")]
    found = [s.rel for s in ctx.select(pattern)]
    assert len(found) == len(set(found))
    assert set(found) == {p for p in every if _matches(pattern.split("/"), p.split("/"))}


@pytest.mark.timeout(120)   # a guard against a hang: each `**` multiplied the work by the depth
def test_repeated_double_stars_on_a_deep_chain(tmp_path):
    subprocess.run(["mkdir", "-p", "a/" * 1200], cwd=tmp_path, check=True)   # deeper than Python's recursion limit
    (tmp_path.joinpath(*["a"] * 1200) / "x").write_text("x")
    try:
        ctx = BuildContext.open(tmp_path)
        assert [s.rel for s in ctx.select("**/**/**/x")] == ["a/" * 1200 + "x"]
    finally:
        remove_tree(tmp_path / "a")   # (pytest's own cleanup recurses)


def test_a_dockerignore_that_is_not_utf8_names_its_line(tmp_path):
    (tmp_path / ".dockerignore").write_bytes(b"a\n\ncaf\xe9\n")
    with pytest.raises(ContextError, match=r"\.dockerignore:3: not UTF-8 text \(byte 0xe9\)"):
        IgnoreRules.load(tmp_path)


def test_a_dockerignore_symlinked_out_of_the_context_is_never_read(tmp_path):
    (tmp_path / "secret").write_text("[s3cr3t\n")   # a malformed pattern would be quoted in the error
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / ".dockerignore").symlink_to(tmp_path / "secret")
    with pytest.raises(ContextError, match="symlink out of its folder") as info:
        IgnoreRules.load(tmp_path / "ctx")
    assert "s3cr3t" not in str(info.value)
