"""Docker's word processing for Dockerfile arguments: quotes, escapes and variable expansion.

A pure port of the rules of BuildKit's `frontend/dockerfile/shell` lexer, which the classic
builder shares: `'...'` is literal; inside `"..."` only `\\"`, `\\$` and `\\\\` are escapes; outside
quotes the escape character makes the next character literal; `$NAME`, `${NAME}`,
`${NAME:-word}`, `${NAME-word}`, `${NAME:+word}`, `${NAME+word}`, `${NAME:?msg}`, `${NAME?msg}`,
`${NAME#pat}`, `${NAME##pat}`, `${NAME%pat}`, `${NAME%%pat}` and `${NAME/pat/repl}` are expanded;
an unset variable expands to the empty string.

A word may grow by at most MAX_GROWTH characters through its variables: ARGs that
each hold their predecessor eight times would otherwise take every byte of the machine's memory.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from builder.errors import BuildArgError
from builder.globs import GlobError, shell_glob

_NAME_START = re.compile(r"[A-Za-z_]")
_NAME_CHAR = re.compile(r"[A-Za-z0-9_]")
MAX_GROWTH = 1 << 20   # characters a word may gain from its variables; execve takes 128 KiB an argument


class ExpandError(BuildArgError):
    """A word cannot be processed (unterminated quote, bad substitution, ${VAR:?msg})."""


class _Lexer:
    def __init__(self, text: str, env: Mapping[str, str], escape: str, quotes: bool = True):
        self.text = text
        self.pos = 0
        self.env = env
        self.escape = escape
        self.quotes = quotes   # False: quote characters are plain text (a heredoc body)
        self.limit = len(text) + MAX_GROWTH

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def next(self) -> str:
        ch = self.peek()
        self.pos += 1 if ch else 0
        return ch

    # -- words ---------------------------------------------------------------------------------
    def process(self, stop: str = "", raw_escapes: bool = False) -> tuple[str, list[str]]:
        """Process until `stop` (consumed) or the end; returns (joined text, whitespace-split words).
        `raw_escapes`: an escaped character keeps its escape (a pattern's `\\*` is a literal star)."""
        result: list[str] = []
        words: list[str] = []
        current: list[str] = []
        in_word = False
        size = 0
        while True:
            ch = self.peek()
            if not ch:
                if stop:
                    raise ExpandError(f"unexpected end of statement while looking for matching {stop}")
                break
            if stop and ch == stop:
                self.next()
                break
            if ch.isspace() and not stop:
                self.next()
                result.append(ch)
                if in_word:
                    words.append("".join(current))
                    current, in_word = [], False
                continue
            in_word = True
            if ch == "'" and self.quotes:
                self.next()
                piece = self._single_quoted()
            elif ch == '"' and self.quotes:
                self.next()
                piece = self._double_quoted()
            elif ch == "$":
                self.next()
                piece = self._dollar()
            elif ch == self.escape:
                self.next()
                nxt = self.next()
                piece = ch + nxt if raw_escapes and nxt else nxt  # escape at the very end is dropped, as BuildKit does
            else:
                self.next()
                piece = ch
            size += len(piece)
            self._check(size)
            result.append(piece)
            current.append(piece)
        if in_word:
            words.append("".join(current))
        return "".join(result), words

    def _check(self, size: int) -> None:
        if size > self.limit:
            raise ExpandError(f"its variables make it more than {MAX_GROWTH >> 20} MiB longer than written "
                              "(variables holding others several times over?): use shorter values")

    def _single_quoted(self) -> str:
        end = self.text.find("'", self.pos)
        if end < 0:
            raise ExpandError("unexpected end of statement while looking for matching single-quote")
        piece = self.text[self.pos:end]
        self.pos = end + 1
        return piece

    def _double_quoted(self) -> str:
        out: list[str] = []
        size = 0
        while True:
            ch = self.next()
            if not ch:
                raise ExpandError("unexpected end of statement while looking for matching double-quote")
            if ch == '"':
                return "".join(out)
            if ch == "$":
                out.append(self._dollar())
                size += len(out[-1])
                self._check(size)
            elif ch == self.escape:
                nxt = self.next()
                if nxt in ('"', "$", self.escape):
                    out.append(nxt)
                else:
                    out.append(ch + nxt)
            else:
                out.append(ch)

    def _name(self) -> str:
        start = self.pos
        if self.peek() and (self.peek().isdigit() or self.peek() in "@*#?$!-"):
            # positional/special parameters: a single character, always empty in a Dockerfile
            self.next()
            return self.text[start:self.pos]
        while self.peek() and _NAME_CHAR.match(self.peek()):
            self.next()
        return self.text[start:self.pos]

    def _dollar(self) -> str:
        ch = self.peek()
        if ch == "{":
            self.next()
            return self._braced()
        if ch and (_NAME_START.match(ch) or ch.isdigit()):
            name = self._name()
            return self.env.get(name, "")
        return "$"

    def _braced(self) -> str:
        name = self._name()
        if not name:
            raise ExpandError(f"bad substitution in {self.text!r}")
        ch = self.next()
        value = self.env.get(name)
        if ch == "}":
            return value or ""
        if ch == ":":
            mod = self.next()
            word, _ = self.process(stop="}")
            if mod == "-":
                return word if not value else value
            if mod == "+":
                return word if value else ""
            if mod == "?":
                if not value:
                    raise ExpandError(f"{name}: {word or 'is not allowed to be empty'}")
                return value
            raise ExpandError(f"unsupported modifier ({mod}) in substitution of {name}")
        if ch in ("-", "+", "?"):
            word, _ = self.process(stop="}")
            if ch == "-":
                return word if value is None else value
            if ch == "+":
                return word if value is not None else ""
            if value is None:
                raise ExpandError(f"{name}: {word or 'is not allowed to be unset'}")
            return value
        if ch in ("#", "%"):   # as BuildKit: the pattern expanded, its escapes kept for the pattern
            pattern, _ = self.process(stop="}", raw_escapes=True)
            greedy = pattern[:1] == ch
            return self._apply_pattern(_trim, value or "", pattern[1:] if greedy else pattern, prefix=ch == "#",
                                 greedy=greedy)
        if ch == "/":   # ${v/pattern/text}, ${v//pattern/text}: the first match, or every one
            every = self.peek() == "/"
            if every:
                self.next()
            pattern, _ = self.process(stop="/", raw_escapes=True)
            repl, _ = self.process(stop="}", raw_escapes=True)
            return self._apply_pattern(_replace, value or "", pattern, repl, every=every, limit=self.limit)
        raise ExpandError(f"missing '}}' or bad substitution for {name} in {self.text!r}")

    def _apply_pattern(self, operation: Callable[..., str], value: str, pattern: str, *args: Any, **kwargs: Any) -> str:
        try:
            return operation(value, pattern, *args, **kwargs)
        except GlobError as exc:
            raise ExpandError(f"invalid pattern ({pattern}) in substitution: {exc}") from None


def _trim(value: str, pattern: str, *, prefix: bool, greedy: bool) -> str:
    """`${v#p}` / `${v##p}` (prefix) and `${v%p}` / `${v%%p}` (suffix): the shortest or longest match
    removed. A suffix is a prefix of the reversed text under the reversed pattern; one pass each
    (builder/globs.py), where trying every length made a long value cost quadratic time."""
    text = value if prefix else value[::-1]
    ends = list(shell_glob(pattern, reverse=not prefix).ends(text))
    if not ends:
        return value
    n = ends[-1] if greedy else ends[0]
    return value[n:] if prefix else value[:len(value) - n]


def _replace(value: str, pattern: str, repl: str, *, every: bool = False, limit: int | None = None) -> str:
    """`${v/p/r}`: the leftmost match, the longest there (Go's leftmost-first with greedy stars), replaced;
    `every`: each match left to right, none overlapping, an empty one right after a match skipped (Go's
    ReplaceAllString, without its $-templates). Where matches start comes from one pass of the reversed,
    unanchored pattern over the reversed value; each match's end from a pass from its start (every
    start x every end with fnmatch was cubic)."""
    n = len(value)
    starts = sorted({n - j for j in shell_glob(pattern, reverse=True, unanchored=True).ends(value[::-1])})
    if limit is not None and every and n + len(starts) * len(repl) > limit:   # the most it can make
        raise ExpandError(f"replacing every match makes it more than {MAX_GROWTH >> 20} MiB longer than "
                          "written: use shorter values")
    forward = shell_glob(pattern)
    out: list[str] = []
    done = 0          # value[:done] is in `out`
    search = 0        # where the next match may start
    last_end = -1
    for start in starts:
        if start < search:
            continue
        *_, end = forward.ends(value, start)
        out.append(value[done:start])
        if end > last_end:   # not an empty match right after the previous one
            out.append(repl)
        done = last_end = end
        if not every:
            break
        search = max(end, start + 1)
    return "".join(out) + value[done:] if out else value


def process_word(word: str, env: Mapping[str, str], escape: str = "\\") -> str:
    """Expand and unquote one word, keeping its whitespace (ENV/LABEL values, COPY paths, ...)."""
    return _process(word, env, escape)[0]


def expand_heredoc(body: str, env: Mapping[str, str]) -> str:
    """A COPY heredoc's body with its variables expanded, as BuildKit does it: quotes are text, `\\`
    escapes the next character whatever the Dockerfile's escape directive (a fresh `shell.NewLex('\\')`
    with SkipProcessQuotes)."""
    return _process(body, env, "\\", quotes=False)[0]


def process_words(word: str, env: Mapping[str, str], escape: str = "\\") -> list[str]:
    """Expand and unquote, then split on unquoted whitespace (EXPOSE, VOLUME in shell form)."""
    return _process(word, env, escape)[1]


def _process(word: str, env: Mapping[str, str], escape: str, quotes: bool = True) -> tuple[str, list[str]]:
    try:
        return _Lexer(word, env, escape, quotes).process()
    except RecursionError:   # the lexer recurses once per nested ${...}: a hostile Dockerfile nests thousands
        raise ExpandError("variable substitutions nested too deeply (hundreds of ${...} inside one another): "
                          "nest fewer") from None
