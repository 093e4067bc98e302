"""builder/globs.py: glob semantics on both engines, and linear time on patterns that make `re` backtrack."""
import random
import re

import pytest

from builder import globs
from builder.globs import Glob, GlobError, shell_glob, translate

CASES = [
    # pattern, name, matches
    ("*.pyc", "a.pyc", True),
    ("*.pyc", "dir/a.pyc", False),            # `*` never crosses '/'
    ("**/*.pyc", "a.pyc", True),              # `**/` may be no directory at all
    ("**/*.pyc", "x/y/a.pyc", True),
    ("**/*.pyc", "x/y/a.pyo", False),
    ("src/**/*.ts", "src/a.ts", True),
    ("src/**/*.ts", "src/a/b/c.ts", True),
    ("src/**/*.ts", "lib/a.ts", False),
    ("**", "any/thing/at/all", True),
    ("a**b", "a/x/b", True),                  # `**` not before '/' is anything
    ("a**b", "a/x/c", False),
    ("?", "a", True),
    ("?", "/", False),
    ("?", "ab", False),
    ("[ab]c", "bc", True),
    ("[ab]c", "cc", False),
    ("[^ab]c", "cc", True),
    ("[!ab]c", "ac", False),
    ("[a-c]*", "b-file", True),
    (r"\*", "*", True),
    (r"\*", "x", False),
    ("a*", "a\nb", True),                     # `*` is [^/]*: a newline is just a character
    ("a**", "a\nb", False),                   # `.` does not match a newline (Go's and Python's default)
    ("a", "a\n", False),                      # a full match: `$` before a trailing newline does not count
    ("*a*a*b", "xaxaxb", True),
    ("*a*a*b", "xaxaxbx", False),
    ("**/a*b*c", "d/abc", True),
    ("**/a*b*c", "d/ab/c", False),
    ("**a*b", "a/xab", True),                 # mixed star kinds: leftmost-first would miss this one
]


@pytest.mark.parametrize("engine", ["re", "dfa"])
@pytest.mark.parametrize("pattern,name,matches", CASES)
def test_semantics_on_both_engines(engine, pattern, name, matches):
    assert Glob(pattern, engine=engine).match(name) is matches


def test_engine_choice():
    assert Glob("*.pyc").engine == "re"
    assert Glob("**/node_modules").engine == "re"
    assert Glob("**/*.pyc").engine == "dfa"
    assert Glob("*a*b").engine == "dfa"


def _random_pattern(rng: random.Random) -> str:
    pieces = ["a", "b", "/", "*", "**", "**/", "?", "[ab]", "[^a]", "\n"]
    return "".join(rng.choice(pieces) for _ in range(rng.randint(1, 6)))


def _covered(reference: re.Pattern[str], path: str) -> bool:
    parts = path.split("/")
    return any(reference.match("/".join(parts[:i])) for i in range(1, len(parts) + 1))


def test_both_engines_agree_with_the_regex_on_random_patterns():
    rng = random.Random(20261205)
    for _ in range(3000):
        pattern = _random_pattern(rng)
        reference = re.compile(translate(pattern))
        for glob in (Glob(pattern, engine="dfa"), Glob(pattern, engine="re")):
            for _ in range(8):
                name = "".join(rng.choice("ab/\n") for _ in range(rng.randint(0, 8)))
                assert glob.match(name) is (reference.match(name) is not None), (glob, name)
                assert glob.covers(name) is _covered(reference, name), (glob, name)


@pytest.mark.parametrize("engine", ["re", "dfa"])
@pytest.mark.parametrize("pattern,path,covered", [
    ("node_modules", "node_modules/a/b.js", True),
    ("**/build", "x/build/y", True),
    ("**/*.pyc", "x/y", False),
    ("a*b*", "ab/c", True),
    ("a*b*", "a/b", False),
    ("a/b", "a", False),                      # a child never covers its parent
])
def test_covers_is_the_path_or_a_parent(engine, pattern, path, covered):
    assert Glob(pattern, engine=engine).covers(path) is covered


def test_past_the_state_cap_the_nfa_runs_on(monkeypatch):
    monkeypatch.setattr(globs, "MAX_DFA_STATES", 3)
    rng = random.Random(7)
    for _ in range(500):
        pattern = _random_pattern(rng)
        reference = re.compile(translate(pattern))
        glob = Glob(pattern, engine="dfa")
        for _ in range(8):
            name = "".join(rng.choice("ab/") for _ in range(rng.randint(0, 12)))
            assert glob.match(name) is (reference.match(name) is not None), (pattern, name)
            assert glob.covers(name) is _covered(reference, name), (pattern, name)
        assert len(glob._sets) <= 3


@pytest.mark.timeout(60)   # a guard against a hang, not a speed assertion: `re` takes hours on this
def test_stars_that_make_re_backtrack_run_in_linear_time():
    pattern = "*a" * 20 + "*b"
    glob = Glob(pattern)
    assert glob.engine == "dfa"
    assert not glob.match("a" * 4000)
    assert glob.match("a" * 4000 + "b")
    assert len(glob._sets) <= 2 * len(pattern)   # states grow with the pattern, never with the name
    wide = Glob("**a" * 12 + "**b")
    assert not wide.match("a/" * 2000)
    assert wide.match("a/" * 2000 + "ab")


@pytest.mark.parametrize("pattern", ["[", "a[]b", "[^]", "[!]", "[z-a]"])
def test_bad_classes_are_refused(pattern):
    with pytest.raises(GlobError, match="character class"):
        Glob(pattern)


@pytest.mark.parametrize("cap", [3, globs.MAX_DFA_STATES])
def test_shell_pattern_ends_are_every_matching_prefix(monkeypatch, cap):
    """BuildKit's pattern language: `*` any text and `?` any character but a newline, `\\*` `\\?`
    `\\\\` themselves, `[` itself."""
    monkeypatch.setattr(globs, "MAX_DFA_STATES", cap)
    meaning = {"*": ".*", "?": ".", "\\*": r"\*", "\\?": r"\?", "\\\\": r"\\"}
    rng = random.Random(11)
    for _ in range(1500):
        pieces = [rng.choice(["a", "b", "*", "?", "\\*", "\\?", "\\\\", "[", "/"]) for _ in range(rng.randint(0, 5))]
        regex = re.compile("".join(meaning.get(p, re.escape(p)) for p in pieces))
        text = "".join(rng.choice("ab/*?[\\\n") for _ in range(rng.randint(0, 9)))
        expected = [e for e in range(len(text) + 1) if regex.fullmatch(text[:e])]
        assert list(shell_glob("".join(pieces)).ends(text)) == expected, (pieces, text)
        assert list(shell_glob("".join(pieces)).ends("zz" + text, 2)) == [e + 2 for e in expected]
