"""Planning starts hashing the context's files while base images resolve (builder/plan.py
literal_sources, BuildContext.prefetch, FileDigests.prefetch): same digests, same sources, each
prefetched answer used once."""
import hashlib

import pytest

from builder import digests
from builder.context import BuildContext, IgnoreRules, hash_sources
from builder.digests import FileDigests
from builder.dockerfile import parse_file, parse_string
from builder.plan import literal_sources


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_literal_sources_are_the_context_sources_known_before_any_variable():
    df = parse_string(
        "FROM a AS one\n"
        "ARG X=y\n"
        "COPY plain.txt dir/ /dst/\n"
        "COPY [\"quoted name\", \"/q/\"]\n"
        "COPY $X ${X}/z /v/\n"              # a variable: known only once the scope is
        "COPY --from=other f /f\n"          # another stage's or image's file system
        "ADD https://example.com/a.tgz /u/\n"
        "COPY --exclude=*.bin big/ /b/\n"   # not every file of big/ is read
        "COPY <<EOF /heredoc\nhello\nEOF\n"
        "ADD --chmod=600 secret.key /k\n"
        "FROM one\n"
        "COPY second.txt /s\n")
    assert list(literal_sources(df.stages[0], df.escape)) == ["plain.txt", "dir/", "quoted name", "secret.key"]
    assert list(literal_sources(df.stages[1], df.escape)) == ["second.txt"]


def test_literal_sources_follow_the_escape_directive():
    df = parse_string("# escape=`\nFROM a\nCOPY a`.txt b\\c.txt /d/\n")
    assert list(literal_sources(df.stages[0], df.escape)) == ["a.txt", "b\\c.txt"]


@pytest.fixture
def big_tree(tmp_path, monkeypatch):
    monkeypatch.setattr(digests, "_PARALLEL_FROM", 10)   # threads for a few bytes
    files = {f"d/f{i}": bytes([i]) * (i + 1) for i in range(6)}
    for rel, data in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    return tmp_path, files


def test_a_prefetched_digest_is_the_files_and_is_used_once(big_tree):
    root, files = big_tree
    sized = [(root / rel, len(data)) for rel, data in files.items()]
    d = FileDigests()
    d.prefetch(sized)
    assert d.of(sized) == {root / rel: _sha(data) for rel, data in files.items()}
    (root / "d/f0").write_bytes(b"changed")   # asked again: read as it is now, not the prefetched answer
    assert d.of([(root / "d/f0", 7)]) == {root / "d/f0": _sha(b"changed")}
    d.close()


def test_too_little_to_hash_starts_nothing_and_close_forgets_the_rest(big_tree, monkeypatch):
    root, files = big_tree
    monkeypatch.setattr(digests, "_PARALLEL_FROM", 1 << 30)
    d = FileDigests()
    d.prefetch([(root / "d/f1", 2), (root / "d/f2", 3)])
    assert d._pool is None and not d._pending
    monkeypatch.setattr(digests, "_PARALLEL_FROM", 1)
    d.prefetch([(root / "d/f3", 4)])
    assert set(d._pending) == {root / "d/f1", root / "d/f2", root / "d/f3"}
    d.close()
    assert d._pool is None and not d._pending
    assert d.of([(root / "d/f3", 4)]) == {root / "d/f3": _sha(files["d/f3"])}


def test_a_prefetched_selection_is_what_select_gives_once(big_tree):
    root, files = big_tree
    fresh = BuildContext(root, IgnoreRules([]))
    ctx = BuildContext(root, IgnoreRules([]))
    ctx.prefetch(["d/", "missing.txt", "../outside"])   # the bad ones are left for planning to report
    assert ctx.select("d") == fresh.select("d")
    assert hash_sources(ctx.select("d"), digests=ctx.digests) == hash_sources(fresh.select("d"))
    (root / "d/new").write_bytes(b"n")   # selected again: the context as it is now
    assert [e.rel for e in ctx.select("d")[0].entries] == ["f0", "f1", "f2", "f3", "f4", "f5", "new"]
    ctx.digests.close()


def test_prefetching_plans_the_same_keys(big_tree, monkeypatch):
    from builder import plan

    root, _ = big_tree
    (root / "Dockerfile").write_text("FROM scratch\nCOPY d/ /a/\nARG V=d\nCOPY $V/f1 d/f2 /b/\nCOPY d /c/\n")

    def keys() -> list[str]:
        df = parse_file(root / "Dockerfile")
        made = plan.make_plan(df, BuildContext(root, IgnoreRules([])), lambda ref, p: pytest.fail(ref))
        return [s.key for s in made.all_steps()]

    prefetched = keys()
    monkeypatch.setattr(plan, "literal_sources", lambda st, escape: iter(()))
    assert prefetched == keys()
