"""User readiness rules (`kade.io/ready-when`, `kade.io/failed-when`): a small expression language over
the live object, pure and table-tested.

    .status.phase == "Ready"
    .status.conditions[?(@.type=="Ready")].status == "True" && .status.observedGeneration >= 2
    .status.readyReplicas >= .spec.replicas || .spec.suspend == true
    !.status.error
    .metadata.annotations["example.com/state"] != "broken"

Paths are JSONPath-like: `.field`, `["key with dots"]`, `[0]` (a list index), `[?(@.path OP value)]`
(the first list item that matches). A path that does not exist is null. Operators: == != < <= > >=
(numbers with numbers, strings with strings; anything else compares unequal), && || ! and parentheses.
A path alone is true when it exists and is not false, null, 0, "" or empty. Literals: "strings",
'strings', numbers, true, false, null.

Why not CEL (Flux's healthCheckExprs): Python has no CEL implementation among kade's dependencies, and
readiness needs only paths, comparisons and boolean logic; this form reads like kubectl's JSONPath.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

_TOKEN = re.compile(r"""\s*(?:
    (?P<number>-?\d+(?:\.\d+)?)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<op>==|!=|<=|>=|&&|\|\||[<>!()\[\]?@.])
  | (?P<name>[A-Za-z_][A-Za-z0-9_\-]*)
)""", re.X)
_MISSING = object()


class ExpressionError(ValueError):
    """The text is not a valid expression; the message says where."""


@dataclass(frozen=True)
class _Tok:
    kind: str  # number | string | op | name | end
    text: str
    pos: int


def _tokens(text: str) -> list[_Tok]:
    out, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise ExpressionError(f"unexpected {text[pos:].strip()[:10]!r} at position {pos + 1}")
        kind = match.lastgroup or ""
        out.append(_Tok(kind, match.group(kind), match.start(kind)))
        pos = match.end()
    out.append(_Tok("end", "", len(text)))
    return out


Node = Callable[[Any], Any]


class _Parser:
    def __init__(self, text: str):
        self.text, self.toks, self.i = text, _tokens(text), 0

    def peek(self, text: str | None = None, kind: str | None = None) -> bool:
        tok = self.toks[self.i]
        return (text is None or tok.text == text and tok.kind in ("op", "name")) and (kind is None or tok.kind == kind)

    def take(self, text: str | None = None, kind: str | None = None) -> _Tok:
        tok = self.toks[self.i]
        if not self.peek(text, kind):
            want = repr(text) if text else kind
            got = repr(tok.text) if tok.kind != "end" else "the end"
            raise ExpressionError(f"expected {want} at position {tok.pos + 1}, found {got}")
        self.i += 1
        return tok

    def parse(self) -> Node:
        node = self.or_()
        self.take(kind="end")
        return node

    def or_(self) -> Node:
        return self.chain("||", self.and_, any)

    def and_(self) -> Node:
        return self.chain("&&", self.not_, all)

    def chain(self, op: str, operand: Callable[[], Node], combine: Callable[[Any], bool]) -> Node:
        """operand (op operand)*, evaluated left to right with short-circuit."""
        nodes = [operand()]
        while self.peek(op):
            self.take()
            nodes.append(operand())
        if len(nodes) == 1:
            return nodes[0]
        return lambda o: combine(_truthy(n(o)) for n in nodes)

    def not_(self) -> Node:
        if self.peek("!"):
            self.take()
            inner = self.not_()
            return lambda o: not _truthy(inner(o))
        return self.compare()

    def compare(self) -> Node:
        left = self.operand()
        tok = self.toks[self.i]
        if tok.kind == "op" and tok.text in _COMPARE:
            self.take()
            right, op = self.operand(), _COMPARE[tok.text]
            return lambda o: op(left(o), right(o))
        return left

    def operand(self) -> Node:
        tok = self.toks[self.i]
        if tok.kind == "op" and tok.text == "(":
            self.take()
            node = self.or_()
            self.take(")")
            return node
        if tok.kind == "op" and tok.text in (".", "["):
            steps = self.path()
            return lambda o: _walk(o, steps)
        if tok.kind in ("number", "string") or tok.text in ("true", "false", "null"):
            value = self.literal()
            return lambda o: value
        got = repr(tok.text) if tok.kind != "end" else "the end"
        raise ExpressionError(f"expected a path (.status...), a value or '(' at position {tok.pos + 1}, found {got}")

    def literal(self) -> Any:
        tok = self.take()
        if tok.kind == "number":
            return float(tok.text) if "." in tok.text else int(tok.text)
        if tok.kind == "string":
            return re.sub(r"\\(.)", r"\1", tok.text[1:-1])
        if tok.text in ("true", "false", "null"):
            return {"true": True, "false": False, "null": None}[tok.text]
        raise ExpressionError(f"expected a value at position {tok.pos + 1}, found {tok.text!r}")

    def path(self) -> list[Callable[[Any], Any]]:
        steps: list[Callable[[Any], Any]] = []
        while self.peek(".") or self.peek("["):
            if self.take().text == ".":
                name = self.take(kind="name").text
                steps.append(_key_step(name))
                continue
            if self.peek("?"):
                self.take("?")
                self.take("(")
                self.take("@")
                sub = self.path()
                tok = self.take(kind="op")
                if tok.text not in _COMPARE:
                    raise ExpressionError(f"expected a comparison in the filter at position {tok.pos + 1}")
                op, value = _COMPARE[tok.text], self.literal()
                self.take(")")
                self.take("]")
                steps.append(_filter_step(sub, op, value))
                continue
            tok = self.take()
            if tok.kind == "number" and "." not in tok.text:
                index = int(tok.text)
                steps.append(_index_step(index))
            elif tok.kind == "string":
                key = tok.text[1:-1]
                steps.append(_key_step(key))
            else:
                raise ExpressionError(f"expected an index, a \"key\" or ?(...) at position {tok.pos + 1}")
            self.take("]")
        return steps


def _key_step(key: str) -> Callable[[Any], Any]:
    return lambda v: v.get(key, _MISSING) if isinstance(v, dict) else _MISSING


def _index_step(n: int) -> Callable[[Any], Any]:
    return lambda v: v[n] if isinstance(v, list) and -len(v) <= n < len(v) else _MISSING


def _filter_step(sub: list[Callable[[Any], Any]], op: Callable[[Any, Any], bool], value: Any) -> Callable[[Any], Any]:
    """`[?(@.sub op value)]`: the first list item whose `sub` compares true."""
    def step(v: Any) -> Any:
        if not isinstance(v, list):
            return _MISSING
        return next((item for item in v if op(_walk(item, sub), value)), _MISSING)
    return step


def _walk(value: Any, steps: list[Callable[[Any], Any]]) -> Any:
    for step in steps:
        if value is _MISSING or value is None:
            return None
        value = step(value)
    return None if value is _MISSING else value


def _truthy(value: Any) -> bool:
    return value not in (None, False, 0, "", [], {}) if not isinstance(value, (list, dict)) else bool(value)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _ordered(f: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def compare(a: Any, b: Any) -> bool:
        if _number(a) and _number(b) or isinstance(a, str) and isinstance(b, str):
            return f(a, b)
        return False
    return compare


def _equal(a: Any, b: Any) -> bool:
    if _number(a) and _number(b):
        return float(a) == float(b)
    return type(a) is type(b) and a == b


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "==": _equal, "!=": lambda a, b: not _equal(a, b),
    "<": _ordered(lambda a, b: a < b), "<=": _ordered(lambda a, b: a <= b),
    ">": _ordered(lambda a, b: a > b), ">=": _ordered(lambda a, b: a >= b),
}


@lru_cache(maxsize=256)
def compile_expression(text: str) -> Node:
    """A function of the object; raises ExpressionError naming the position of a mistake."""
    if not text.strip():
        raise ExpressionError("the expression is empty")
    return _Parser(text).parse()


def holds(text: str, obj: dict[str, Any]) -> bool:
    """Does the expression hold for `obj`?"""
    return _truthy(compile_expression(text)(obj))
