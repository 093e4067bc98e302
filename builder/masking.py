"""Masking a build's secret values in RUN output, whole.

A secret shows up in output in more shapes than its exact bytes: `cat key.pem` prints a multi-line
value one line at a time, `base64 key.pem` wraps its encoding every 76 columns, a shell pipeline
prints it URL-encoded or inside a longer line. `SecretMask.mask(line)` hides, in one output line:

- each *exact form* wherever it appears: the value (without surrounding whitespace), each line of a
  multi-line value (at least MIN_LINE characters), its standard and URL-safe base64 (padded or not,
  of the value and of the value plus a newline, as `echo "$S" | base64` makes it), its
  percent-encodings (`quote`, `quote_plus`);
- any run of at least MIN_PIECE base64 characters (letters, digits, `+/_-`) that is part of the
  value itself (a PEM body or a token printed in part: `head -c`, a line cut in two) or of its
  base64 at any of the three byte alignments (a base64 encoding of a longer text holds the
  secret's encoding at one of them, and a wrapped encoding prints it in pieces, one per line).
  Text with other characters (a host name in an .npmrc, words of a config file) is masked only
  where the whole value or a whole line of it appears.

Each masked part becomes `****`. Pieces are found with a suffix automaton over the encodings (the
longest substring of an encoding ending at each position of the line), run only over the line's
runs of base64 characters, so output without such runs costs one regular-expression scan.
"""
from __future__ import annotations

import base64
import re
from urllib.parse import quote, quote_plus

MASK = "****"
MIN_LINE = 4      # characters of a multi-line secret's line to mask it on its own
MIN_PIECE = 16    # characters of base64 that count as a piece of the secret's encoding
_B64_RUN = re.compile(r"[A-Za-z0-9+/_-]{%d,}" % MIN_PIECE)


class SecretMask:
    def __init__(self, values: list[bytes]):
        exact: set[str] = set()
        pieces: set[str] = set()
        for value in values:
            raw = value.strip()
            if not raw:
                continue
            text = raw.decode(errors="replace")  # as OutputLines decodes output
            exact.add(text)
            lines = [ln.strip() for ln in text.splitlines()]
            exact.update(ln for ln in lines if len(lines) > 1 and len(ln) >= MIN_LINE)
            exact.update(f for f in (quote(text, safe=""), quote(text), quote_plus(text)) if f != text)
            for data in (raw, raw + b"\n"):
                for enc in (base64.b64encode, base64.urlsafe_b64encode):
                    full = enc(data).decode()
                    exact.update({full, full.rstrip("=")} if len(full) >= MIN_LINE else set())
            pieces.update(run for run in _B64_RUN.findall(text))  # a key's, a token's characters, printed in part
            for shift in range(3):  # the secret's bytes after 0, 1 or 2 other bytes of a longer encoding
                aligned = raw[(3 - shift) % 3:]
                aligned = aligned[:len(aligned) // 3 * 3]
                for enc in (base64.b64encode, base64.urlsafe_b64encode):
                    piece = enc(aligned).decode()
                    if len(piece) >= MIN_PIECE:
                        pieces.add(piece)
        self.longest = max((len(f) for f in exact | pieces), default=0)
        self._exact = re.compile("|".join(re.escape(f) for f in sorted(exact, key=len, reverse=True))) \
            if exact else None
        self._pieces = _Automaton(sorted(pieces)) if pieces else None

    def __bool__(self) -> bool:
        return self._exact is not None

    def mask(self, line: str) -> str:
        if self._exact is None:
            return line
        spans = [m.span() for m in self._exact.finditer(line)]
        if self._pieces is not None:
            for run in _B64_RUN.finditer(line):
                spans += [(run.start() + a, run.start() + b) for a, b in self._pieces.matches(run.group(), MIN_PIECE)]
        if not spans:
            return line
        out, pos = [], 0
        for start, end in _merged(spans):
            out += [line[pos:start], MASK]
            pos = end
        out.append(line[pos:])
        return "".join(out)


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


class _Automaton:
    """A generalized suffix automaton of some strings: which substrings of them a text holds."""

    def __init__(self, words: list[str]):
        self.next: list[dict[str, int]] = [{}]
        self.link = [-1]
        self.length = [0]
        for word in words:
            last = 0
            for ch in word:
                last = self._extend(last, ch)

    def _new(self, length: int, nxt: dict[str, int], link: int) -> int:
        self.next.append(nxt)
        self.length.append(length)
        self.link.append(link)
        return len(self.next) - 1

    def _extend(self, last: int, ch: str) -> int:
        if ch in self.next[last]:  # the prefix so far is a substring already (another word's)
            q = self.next[last][ch]
            if self.length[q] == self.length[last] + 1:
                return q
            clone = self._new(self.length[last] + 1, dict(self.next[q]), self.link[q])
            p = last
            while p != -1 and self.next[p].get(ch) == q:
                self.next[p][ch] = clone
                p = self.link[p]
            self.link[q] = clone
            return clone
        cur = self._new(self.length[last] + 1, {}, 0)
        p = last
        while p != -1 and ch not in self.next[p]:
            self.next[p][ch] = cur
            p = self.link[p]
        if p != -1:
            q = self.next[p][ch]
            if self.length[p] + 1 == self.length[q]:
                self.link[cur] = q
            else:
                clone = self._new(self.length[p] + 1, dict(self.next[q]), self.link[q])
                while p != -1 and self.next[p].get(ch) == q:
                    self.next[p][ch] = clone
                    p = self.link[p]
                self.link[q] = self.link[cur] = clone
        return cur

    def matches(self, text: str, least: int) -> list[tuple[int, int]]:
        """Spans of `text` that are substrings of a word, at least `least` long (maximal, may overlap)."""
        spans = []
        state = length = 0
        for i, ch in enumerate(text):
            while state and ch not in self.next[state]:
                state = self.link[state]
                length = self.length[state]
            if ch in self.next[state]:
                state = self.next[state][ch]
                length += 1
            else:
                state = length = 0
            if length >= least:
                spans.append((i + 1 - length, i + 1))
        return spans
