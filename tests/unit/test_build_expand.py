"""Docker's word processing rules, table-driven (cases from BuildKit's shell/envVarTest)."""
import re

import pytest

from builder.expand import ExpandError, expand_heredoc, process_word, process_words

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


# A COPY heredoc body (unquoted delimiter), as BuildKit 0.34.2 wrote these files (differential probe):
# quotes are text, `\` drops itself and keeps the next character, variables expand
@pytest.mark.parametrize("body, expected", [
    ("it's ${X} \"q\" 'single $X'\n", "it's 1 \"q\" 'single 1'\n"),
    ("\\$lit \\\\double a\\nb C:\\path trailing\\\n", "$lit \\double anb C:path trailing\n"),
    ('echo "${X:-none} \\$escaped"\n', 'echo "1 $escaped"\n'),
    ("${UNSET:-it's} ${X:+\"set\"}\n", "it's \"set\"\n"),
    ("no variables, an unbalanced ' and \" too\n", "no variables, an unbalanced ' and \" too\n"),
])
def test_expand_heredoc(body, expected):
    assert expand_heredoc(body, {"X": "1"}) == expected


def test_backtick_escape():
    assert process_word("a`$PWD", ENV, escape="`") == "a$PWD"
    assert process_word("C:\\dir", ENV, escape="`") == "C:\\dir"


# ${v#p} ${v##p} ${v%p} ${v%%p} ${v/p/r} ${v//p/r}: BuildKit's own reading (frontend/dockerfile/shell/lex.go,
# convertShellPatternToRegex and the Go regexp calls), redone here with Python's backtracking `re`,
# whose leftmost-first matching with greedy and lazy stars is Go's; kade's linear one must agree.
def _buildkit_regex(pattern, greedy, anchored):
    out, i = ["^"] if anchored else [], 0
    while i < len(pattern):
        ch = pattern[i]
        i += 1
        if ch == "*":
            out.append(".*" if greedy else ".*?")
        elif ch == "?":
            out.append(".")
        elif ch == "\\":
            if i < len(pattern) and pattern[i] in "}/":
                continue
            out.append(re.escape(pattern[i]))
            i += 1
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out))


def _reverse_pattern(pattern):
    pieces, i = [], 0
    while i < len(pattern):
        step = 2 if pattern[i] == "\\" and i + 1 < len(pattern) else 1
        pieces.append(pattern[i:i + step])
        i += step
    return "".join(reversed(pieces))


def _reference_trim(value, pattern, prefix, greedy):
    if not prefix:
        return _reference_trim(value[::-1], _reverse_pattern(pattern), True, greedy)[::-1]
    m = _buildkit_regex(pattern, greedy, True).search(value)
    return value[m.end():] if m else value


def _reference_replace(value, pattern, repl, every):
    rx = _buildkit_regex(pattern, True, False)
    if not every:
        m = rx.search(value)
        return value[:m.start()] + repl + value[m.end():] if m else value
    out, search, last_end = [], 0, 0   # Go's regexp.replaceAll
    while search <= len(value):
        m = rx.search(value, search)
        if not m:
            break
        out.append(value[last_end:m.start()])
        if m.end() > last_end or m.start() == 0:
            out.append(repl)
        last_end = m.end()
        search = search + 1 if search + 1 > m.end() else m.end()
    return "".join(out) + value[last_end:]


@pytest.mark.parametrize("word,env,expected", [   # BuildKit's TestProcessWithMatches cases for these forms
    ("${FOO#()[]{\\}^$.\\*\\?|\\\\}", {"FOO": "()[]{}^$.*?|\\x"}, "x"),
    ("${FOO%%\\**}", {"FOO": "xx**"}, "xx"),
    ("${FOO#*x*y}", {"FOO": "xxyy"}, "y"),
    ("${FOO#*}", {"FOO": "xxyy"}, "xxyy"),
    ("${FOO#$BAR}", {"FOO": "xxyy", "BAR": "x"}, "xyy"),
    ("${FOO#$BAR}", {"FOO": "xxyy", "BAR": ""}, "xxyy"),
    ("${FOO#}", {"FOO": "xxyy"}, "xxyy"),
    ("${FOO##*x}", {"FOO": "xxyy"}, "yy"),
    ("${FOO##}", {"FOO": "xxyy"}, "xxyy"),
    ("${FOO#?\\?}", {"FOO": "???y"}, "?y"),
    ("${ABC:-.}${FOO%x}${ABC:-.}", {"FOO": "xxyy"}, ".xxyy."),
    ("${FOO%%\\**\\*}", {"FOO": "a***yy*"}, "a"),
    ("${FOO%}", {"FOO": "xxyy"}, "xxyy"),
    ("${FOO%%$BAR}", {"FOO": "xxyy", "BAR": ""}, "xxyy"),
    ("${FOO/$NEEDLE/.} - ${FOO//$NEEDLE/.}", {"FOO": "/foo*/*/*.txt", "NEEDLE": "\\*/"}, "/foo.*/*.txt - /foo..*.txt"),
    ("${FOO/$NEEDLE/} - ${FOO//$NEEDLE/}", {"FOO": "/tmp/tmp/bar.txt", "NEEDLE": "/tmp"}, "/tmp/bar.txt - /bar.txt"),
    ("${FOO/$NEEDLE/$REPLACEMENT} - ${FOO//$NEEDLE/$REPLACEMENT}",
     {"FOO": "/a/foo/b/c.txt", "NEEDLE": "/?/", "REPLACEMENT": "/"}, "/foo/b/c.txt - /foo/c.txt"),
    ("${FOO/$NEEDLE/$REPLACEMENT}", {"FOO": "http://google.de", "NEEDLE": "http://", "REPLACEMENT": "https://"},
     "https://google.de"),
    ("${FOO//\\//\\/}", {"FOO": "/tmp/foo.txt"}, "\\/tmp\\/foo.txt"),
    ("${FOO/$BAR/ww}", {"FOO": "xxyy", "BAR": ""}, "wwxxyy"),
    ("${FOO///}", {"FOO": "xxyy"}, "xxyy"),
    ("${FOO///}", {}, ""),
    ("${FOO//ww}", {"FOO": "xxyy"}, ExpandError),
    ("${FOO//}", {"FOO": "xxyy"}, ExpandError),
    ("${FOO:#}", {}, ExpandError),
    ("${FOO:%%}", {}, ExpandError),
    ("${FOO#\\x}", {"FOO": "xy"}, ExpandError),      # an escape the pattern language does not have
    ("${FOO#[x]}", {"FOO": "[x]y"}, "y"),             # no bracket expressions
    ("${FOO/*/-}", {"FOO": "ab\ncd"}, "-\ncd"),      # `*` stops at a newline (Go's `.`)
])
def test_buildkit_substitution_cases(word, env, expected):
    if expected is ExpandError:
        with pytest.raises(ExpandError):
            process_word(word, env)
    else:
        assert process_word(word, env) == expected


def test_trim_and_replace_agree_with_buildkits_reading():
    import random
    rng = random.Random(5)
    pieces = ["a", "b", "/", "*", "?", "\\*", "\\?", "\\\\", "\\/", "[", "\n"]
    for _ in range(3000):
        pattern = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 4)))
        value = "".join(rng.choice("ab/*?[\\\n") for _ in range(rng.randint(0, 8)))
        env = {"V": value, "P": pattern}
        for op, prefix, greedy in (("#", True, False), ("##", True, True), ("%", False, False), ("%%", False, True)):
            got = process_word("${V" + op + "$P}", env)
            assert got == _reference_trim(value, pattern, prefix, greedy), (op, value, pattern)
        for every in (False, True):
            got = process_word("${V" + ("//" if every else "/") + "$P/X}", env)
            assert got == _reference_replace(value, pattern, "X", every), (every, value, pattern)


@pytest.mark.timeout(60)   # a guard against a hang, not a speed assertion: trying every start and end took hours
def test_trim_and_replace_on_a_long_value_are_linear():
    value = "a" * 200_000
    env = {"V": value}
    assert process_word("${V/*a*b/x}", env) == value
    assert process_word("${V/a?/x}", env) == "x" + value[2:]
    assert process_word("${V%%a*}", env) == ""
    assert process_word("${V#*b}", env) == value
    assert process_word("${V//a/b}", env) == "b" * 200_000
    assert process_word("${V//?a/}", env) == ""


MIB = 1 << 20
BIG = {"H": "x" * (MIB // 2), "S": "x" * 100}


@pytest.mark.parametrize("word, ok", [
    ("$H", True),
    ("$H$H", True),                  # exactly the budget beyond the text... plus the text itself
    ("$H$H$H", False),               # doubling ARGs: each step would take more memory than the last
    ('"$H$H$H"', False),             # the same inside quotes
    ("${S:-$H$H$H}", False),         # a default is expanded even when unused, as BuildKit's lexer does
    ("${UNSET:-$H$H$H}", False),
    ("${S//x/yyyy}", True),
    ("${H//x/yyyy}", False),         # every match replaced: 2 MiB more
])
def test_a_word_grows_at_most_one_mebibyte_through_its_variables(word, ok):
    """A Dockerfile of ARGs that each hold their predecessor eight times took 23 GB before this bound."""
    if ok:
        assert len(process_word(word, BIG)) <= len(word) + MIB
    else:
        with pytest.raises(ExpandError, match="MiB longer than written"):
            process_word(word, BIG)
    with pytest.raises(ExpandError, match="MiB longer"):
        expand_heredoc("$H\n" * 3, BIG)
