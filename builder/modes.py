"""COPY/ADD --chmod: an octal mode or chmod(1)'s symbolic notation, as a function of the source's
mode and kind (`+x`, `u=rwX,go=rX`, `g=u`: the symbolic forms of Dockerfile 1.14)."""
from __future__ import annotations

import re
from collections.abc import Callable

from builder.errors import BuildError

ModeFn = Callable[[int, bool], int]  # (source permission bits, is a directory) -> new bits
_CLAUSE = re.compile(r"([ugoa]*)([-+=])([rwxXst]*|[ugo])$")
_WHO = {"u": 0o4700, "g": 0o2070, "o": 0o1007}  # each class's rwx bits and its special bit


def parse_chmod(text: str) -> tuple[int | None, ModeFn]:
    """(the octal mode, or None for a symbolic one; the function giving each entry's mode)."""
    if re.fullmatch(r"[0-7]{1,4}", text):
        octal = int(text, 8)
        return octal, lambda _mode, _is_dir: octal
    clauses = []
    for part in text.split(","):
        m = _CLAUSE.match(part)
        if not m:
            raise BuildError(f"invalid --chmod={text}: {part!r} is neither octal (755) nor symbolic (u=rwX,go=rX)")
        clauses.append(m.groups())

    def apply(mode: int, is_dir: bool) -> int:
        for who, op, perms in clauses:
            mask = 0
            for w in who.replace("a", "ugo") or "ugo":
                mask |= _WHO[w]
            if perms in ("u", "g", "o"):  # copy another class's bits
                shift = {"u": 6, "g": 3, "o": 0}[perms]
                rwx = (mode >> shift) & 0o7
                bits = (rwx << 6) | (rwx << 3) | rwx
            else:
                bits = 0
                for p in perms:
                    if p == "r":
                        bits |= 0o444
                    elif p == "w":
                        bits |= 0o222
                    elif p == "x" or (p == "X" and (is_dir or mode & 0o111)):
                        bits |= 0o111
                    elif p == "s":
                        bits |= 0o6000
                    elif p == "t":
                        bits |= 0o1000
            bits &= mask
            if op == "+":
                mode |= bits
            elif op == "-":
                mode &= ~bits
            else:
                mode = (mode & ~mask) | bits
        return mode & 0o7777

    return None, apply
