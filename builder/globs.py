"""Glob patterns (.dockerignore lines, COPY/ADD wildcards), matched in time linear in the name.

Semantics are moby/patternmatcher's: `*` and `?` never match `/`, `**/` is any number of leading
directories (none included), `**` elsewhere is anything, `[...]` is a character class (`[^...]`
and `[!...]` negate), `\\` escapes; `.` in those translations does not match a newline.

Python's `re` backtracks, so a pattern such as `*a*a*a*a*a*a*a*a*b` costs exponential time in the
number of stars (Go's RE2 in BuildKit does not), and both the pattern and the names come from the
build context. A pattern with at most one unbounded wildcard cannot backtrack more than
name x pattern steps and runs on `re`, which is fastest; any other pattern runs on a DFA built
lazily from its NFA: each new DFA state costs O(pattern), each transition seen before is one dict
lookup, and the number of states is capped (past it, the NFA is simulated directly, still linear).
The DFA also runs BuildKit's shell patterns (`shell_glob`), for a Dockerfile's `${var#pattern}` family.
"""
from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

MAX_DFA_STATES = 2048   # per pattern; a name adds at most one state per character


class GlobError(ValueError):
    """A pattern that cannot be compiled (an unterminated or empty character class)."""


@dataclass(frozen=True)
class Token:
    kind: str    # "char": one character that `test` accepts; "star" ([^/]*), "any" (.*), "dirs" ((.*/)?)
    regex: str   # the token in Python's regex syntax (the reference semantics)
    test: Callable[[str], bool] = lambda c: True


def _not_slash(c: str) -> bool:
    return c != "/"


def _not_newline(c: str) -> bool:
    return c != "\n"


def _member_of(char_class: re.Pattern[str]) -> Callable[[str], bool]:
    def test(c: str) -> bool:
        return char_class.fullmatch(c) is not None
    return test


def tokenize(text: str) -> list[Token]:
    """A cleaned pattern -> tokens."""
    out: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "*":
            if i + 1 < n and text[i + 1] == "*":
                i += 1
                if i + 1 < n and text[i + 1] == "/":
                    i += 1
                    out.append(Token("dirs", "(?:.*/)?"))
                else:
                    out.append(Token("any", ".*", _not_newline))
            else:
                out.append(Token("star", "[^/]*", _not_slash))
        elif ch == "?":
            out.append(Token("char", "[^/]", _not_slash))
        elif ch == "[":
            end = text.find("]", i + 1)
            body = text[i + 1:end]
            if end < 0 or not body or body in ("^", "!"):
                raise GlobError(f"{'unterminated' if end < 0 else 'empty'} character class")
            if body[0] in "^!":
                body = "^" + body[1:]
            regex = "[" + body.replace("\\", "\\\\") + "]"
            try:
                out.append(Token("char", regex, _member_of(re.compile(regex))))
            except re.error as exc:
                raise GlobError(f"character class {regex}: {exc}") from None
            i = end
        else:
            if ch == "\\" and i + 1 < n:
                i += 1
                ch = text[i]
            out.append(Token("char", re.escape(ch), ch.__eq__))
        i += 1
    return out


def translate(text: str) -> str:
    """A cleaned pattern -> the anchored regular expression it means."""
    return _anchored(tokenize(text))


def _anchored(tokens: list[Token]) -> str:
    return "^" + "".join(t.regex for t in tokens) + r"\Z"


def shell_tokens(pattern: str) -> list[Token]:
    """BuildKit's pattern language for a Dockerfile's `${var#pattern}`, `${var%pattern}` and
    `${var/pattern/text}` (its convertShellPatternToRegex): `*` is any text and `?` any character,
    a newline excepted (Go's `.`); `\\*`, `\\?` and `\\\\` are those characters themselves, `\\}`
    and `\\/` lose their backslash (escaped only so as not to end the `${...}`), any other escape is an
    error; everything else, `[` included, is itself (no bracket expressions). Raises GlobError."""
    out: list[Token] = []
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        i += 1
        if ch == "*":
            out.append(Token("any", ".*", _not_newline))
        elif ch == "?":
            out.append(Token("char", ".", _not_newline))
        elif ch == "\\":
            if i < n and pattern[i] in "}/":
                continue
            if i >= n or pattern[i] not in "*?\\":
                raise GlobError(f"invalid escape '\\{pattern[i] if i < n else ''}'")
            out.append(Token("char", re.escape(pattern[i]), pattern[i].__eq__))
            i += 1
        else:
            out.append(Token("char", re.escape(ch), ch.__eq__))
    return out


def shell_glob(pattern: str, *, reverse: bool = False, unanchored: bool = False) -> Glob:
    """A shell pattern on the DFA; `reverse`: it read backwards (for suffixes, on the reversed text);
    `unanchored`: any text at all (newlines too) may come before it."""
    tokens = shell_tokens(pattern)
    if reverse:
        tokens.reverse()
    if unanchored:
        tokens.insert(0, Token("any", "(?s:.*)"))
    return Glob(pattern, engine="dfa", tokens=tokens)


# NFA node kinds: what a node does with one character, and where it goes without one.
_CHAR, _LOOP, _DIRS_ENTER, _DIRS_LOOP, _ACCEPT = range(5)


class Glob:
    """One compiled pattern; `match(name)` is a full match."""

    def __init__(self, text: str, *, engine: str = "", tokens: list[Token] | None = None):
        """`engine` ("re" or "dfa") overrides the choice, for tests that compare the two; `tokens`, when
        given, are the pattern (shell_tokens: the other language)."""
        self.text = text
        tokens = tokenize(text) if tokens is None else tokens
        self.engine = engine or ("re" if sum(t.kind != "char" for t in tokens) <= 1 else "dfa")
        if self.engine == "re":
            regex = re.compile(_anchored(tokens))
            self.match: Callable[[str], bool] = lambda name: regex.match(name) is not None
            return
        self._nodes = _nfa(tokens)
        self._closure = [_close(self._nodes, i) for i in range(len(self._nodes))]
        self._lock = threading.Lock()
        self._ids: dict[frozenset[int], int] = {}
        self._sets: list[frozenset[int]] = []
        self._rows: list[dict[str, int]] = []
        self._accepting: list[bool] = []
        self._dead = self._state(frozenset())   # no way left to match
        self._start = self._state(self._closure[0])
        self.match = self._match_dfa

    def __repr__(self) -> str:
        return f"Glob({self.text!r}, engine={self.engine!r})"

    def _state(self, nodes: frozenset[int]) -> int:
        found = self._ids.get(nodes)
        if found is not None:
            return found
        with self._lock:
            if nodes not in self._ids:
                self._sets.append(nodes)
                self._rows.append({})
                self._accepting.append(len(self._nodes) - 1 in nodes)
                self._ids[nodes] = len(self._sets) - 1
            return self._ids[nodes]

    def covers(self, path: str) -> bool:
        """Whether the pattern matches `path` or one of its parent directories (a/b/c: a, a/b, a/b/c):
        the text before each '/', and the whole."""
        if self.engine == "re":
            if self.match(path):
                return True
            cut = path.find("/")
            while cut >= 0:
                if self.match(path[:cut]):
                    return True
                cut = path.find("/", cut + 1)
            return False
        return self._run_dfa(path, at_slash=True)

    def _match_dfa(self, name: str) -> bool:
        return self._run_dfa(name, at_slash=False)

    def _run_dfa(self, name: str, at_slash: bool) -> bool:
        """One pass over `name`; with `at_slash`, a match of the text before any '/' counts too."""
        state, rows, accepting = self._start, self._rows, self._accepting
        for pos, c in enumerate(name):
            if at_slash and c == "/" and accepting[state]:
                return True
            nxt = rows[state].get(c)   # (the step's common case, inline: this is the hot path)
            if nxt is None:
                nxt, nodes = self._step(state, c)
                if nxt < 0:
                    return self._match_nfa(nodes, name[pos + 1:], at_slash)
            if nxt == self._dead:
                return False
            state = nxt
        return accepting[state]

    def _step(self, state: int, c: str) -> tuple[int, frozenset[int]]:
        """The DFA state after reading `c` in `state`, made and remembered when new; past the state cap,
        -1 and the NFA's node set to go on with."""
        nxt = self._rows[state].get(c)
        if nxt is not None:
            return nxt, self._sets[nxt]
        nodes = self._advance(self._sets[state], c)
        if len(self._sets) >= MAX_DFA_STATES and nodes not in self._ids:
            return -1, nodes
        nxt = self._state(nodes)
        self._rows[state][c] = nxt
        return nxt, nodes

    def ends(self, text: str, start: int = 0) -> Iterator[int]:
        """Every e, ascending, for which text[start:e] matches (DFA engine), e = start included; stops once
        no longer text can match. Linear in what it reads."""
        final = len(self._nodes) - 1
        state, nodes = self._start, self._sets[self._start]
        if final in nodes:
            yield start
        for pos in range(start + 1, len(text) + 1):
            if state >= 0:
                state, nodes = self._step(state, text[pos - 1])
            else:
                nodes = self._advance(nodes, text[pos - 1])
            if not nodes:
                return
            if final in nodes:
                yield pos

    def _match_nfa(self, nodes: frozenset[int], rest: str, at_slash: bool) -> bool:
        final = len(self._nodes) - 1
        for c in rest:
            if not nodes:
                return False
            if at_slash and c == "/" and final in nodes:
                return True
            nodes = self._advance(nodes, c)
        return final in nodes

    def _advance(self, nodes: frozenset[int], c: str) -> frozenset[int]:
        out: set[int] = set()
        for i in nodes:
            kind, test = self._nodes[i]
            if kind == _CHAR and test(c):
                out |= self._closure[i + 1]
            elif kind == _LOOP and test(c):
                out |= self._closure[i]
            elif kind == _DIRS_LOOP and c != "\n":
                out |= self._closure[i]
                if c == "/":
                    out |= self._closure[i + 1]
        return frozenset(out)


def _nfa(tokens: list[Token]) -> list[tuple[int, Callable[[str], bool]]]:
    """Nodes in order; node i's successor is node i + 1 (a dirs token takes two nodes)."""
    nodes: list[tuple[int, Callable[[str], bool]]] = []
    for t in tokens:
        if t.kind == "char":
            nodes.append((_CHAR, t.test))
        elif t.kind == "dirs":
            nodes += [(_DIRS_ENTER, t.test), (_DIRS_LOOP, t.test)]
        else:
            nodes.append((_LOOP, t.test))
    nodes.append((_ACCEPT, Token.test))
    return nodes


def _close(nodes: list[tuple[int, Callable[[str], bool]]], i: int) -> frozenset[int]:
    """Node i and every node reachable from it without reading a character."""
    out = {i}
    while nodes[i][0] in (_LOOP, _DIRS_ENTER):
        if nodes[i][0] == _DIRS_ENTER:
            out.add(i + 1)     # the loop that reads up to a '/'
            i += 2             # or no directories at all
        else:
            i += 1
        out.add(i)
    return frozenset(out)
