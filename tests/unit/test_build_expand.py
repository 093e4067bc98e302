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
