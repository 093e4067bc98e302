"""Docker's word processing rules, table-driven (cases from BuildKit's shell/envVarTest)."""
import pytest

from builder.expand import ExpandError, process_word, process_words

ENV = {"PWD": "/home", "SHELL": "bash", "KOREAN": "한국어", "EMPTY": "", "A": "a b"}

CASES = [
    ("hello", "hello"),
    ("he'll'o", "hello"),
    ("he'llo", ExpandError),
    ('he\\"llo', 'he"llo'),
    ('"he\\\\llo"', "he\\llo"),
    ('"a\\b"', "a\\b"),
    ("'$PWD'", "$PWD"),
    ('"$PWD"', "/home"),
    ("$PWD", "/home"),
    ("\\$PWD", "$PWD"),
    ("${PWD}x", "/homex"),
    ("$PWDx", ""),
    ("${NOPE:-def}", "def"),
    ("${EMPTY:-def}", "def"),
    ("${EMPTY-def}", ""),
    ("${NOPE-def}", "def"),
    ("${PWD:+alt}", "alt"),
    ("${EMPTY:+alt}", ""),
    ("${EMPTY+alt}", "alt"),
    ("${NOPE+alt}", ""),
    ("${NOPE:-${PWD}}", "/home"),
    ("${NOPE:-'a b'}", "a b"),
    ("${NOPE:?must be set}", ExpandError),
    ("${PWD:?must be set}", "/home"),
    ("${KOREAN}", "한국어"),
    ("$", "$"),
    ("a$", "a$"),
    ("${}", ExpandError),
    ("${PWD", ExpandError),
    ("${PWD#/}", "home"),
    ("${SHELL%sh}", "ba"),
    ("${SHELL/as/AS}", "bASh"),
    ("x  y", "x  y"),
    ('"x  y"', "x  y"),
    ("$A", "a b"),
]


@pytest.mark.parametrize("word,expected", CASES)
def test_process_word(word, expected):
    if expected is ExpandError:
        with pytest.raises(ExpandError):
            process_word(word, ENV)
    else:
        assert process_word(word, ENV) == expected


@pytest.mark.parametrize("word,expected", [
    ("80 443", ["80", "443"]),
    ('"a b" c', ["a b", "c"]),
    ("  a   b  ", ["a", "b"]),
    ("${PWD} 'x y'", ["/home", "x y"]),
])
def test_process_words(word, expected):
    assert process_words(word, ENV) == expected


def test_backtick_escape():
    assert process_word("a`$PWD", ENV, escape="`") == "a$PWD"
    assert process_word("C:\\dir", ENV, escape="`") == "C:\\dir"


# ${v#p} ${v##p} ${v%p} ${v%%p} ${v/p/r}: the brute-force reading of each (every length, every start
# and end, fnmatch), checked against kade's linear one on random values and patterns.
def _brute_trim(value, pattern, prefix, greedy):
    import fnmatch
    for n in (range(len(value), -1, -1) if greedy else range(len(value) + 1)):
        part = value[:n] if prefix else value[len(value) - n:]
        if fnmatch.fnmatchcase(part, pattern):
            return value[n:] if prefix else value[:len(value) - n]
    return value


def _brute_replace(value, pattern, repl):
    import fnmatch
    for start in range(len(value)):
        for end in range(len(value), start, -1):
            if fnmatch.fnmatchcase(value[start:end], pattern):
                return value[:start] + repl + value[end:]
    return value


def test_trim_and_replace_agree_with_the_brute_force_reading():
    import random
    rng = random.Random(5)
    pieces = ["a", "b", "/", "*", "?", "[ab]", "[!a]", "[]a]", "[", "\n"]
    for _ in range(2500):
        pattern = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 4)))
        value = "".join(rng.choice("ab/]\n[") for _ in range(rng.randint(0, 7)))
        env = {"V": value, "P": pattern}
        for op, prefix, greedy in (("#", True, False), ("##", True, True), ("%", False, False), ("%%", False, True)):
            assert process_word("${V" + op + "$P}", env) == _brute_trim(value, pattern, prefix, greedy), (op, value, pattern)
        literal = pattern.replace("/", "")   # (a replace pattern is read as written, up to its '/')
        assert process_word("${V/" + literal + "/X}", env) == _brute_replace(value, literal, "X"), (value, literal)


@pytest.mark.timeout(60)   # a guard against a hang, not a speed assertion: trying every start and end took hours
def test_trim_and_replace_on_a_long_value_are_linear():
    value = "a" * 200_000
    env = {"V": value}
    assert process_word("${V/*a*b/x}", env) == value
    assert process_word("${V/a?/x}", env) == "x" + value[2:]
    assert process_word("${V%%a*}", env) == ""
    assert process_word("${V#*b}", env) == value
