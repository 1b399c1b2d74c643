"""A small parser for K/3 Cloud ``FilterString`` (the SQL-like form) used by the sandbox.

Supports ``=``, ``<>``/``!=``, ``<``, ``<=``, ``>``, ``>=``, ``LIKE`` (``%`` and ``_``), ``IN (…)``, ``AND``,
``OR``, ``NOT``, parentheses, string and number literals, and dotted references (``FACCOUNTID.FNumber``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

Row = Mapping[str, Any]
Pred = Callable[[Row], bool]

_TOKEN = re.compile(r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<num>-?\d+(?:\.\d+)?)|(?P<op><>|!=|<=|>=|=|<|>|\(|\)|,)"
                    r"|(?P<word>[A-Za-z_][A-Za-z0-9_.]*))")


class FilterError(ValueError):
    pass


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise FilterError(f"cannot parse FilterString near {text[pos:pos + 20]!r}")
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


def _compare(op: str, a: Any, b: Any) -> bool:
    if a is None:
        return False
    if isinstance(b, Decimal) and not isinstance(a, Decimal):
        try:
            a = Decimal(str(a))
        except InvalidOperation:
            return False
    if isinstance(a, Decimal) and isinstance(b, str):
        try:
            b = Decimal(b)
        except InvalidOperation:
            return False
    if not isinstance(a, Decimal):
        a, b = str(a), str(b)
    return bool({"=": a == b, "<>": a != b, "!=": a != b, "<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op])


class _Parser:
    """Recursive descent over the tokens: ``expr := term (OR term)*``, ``term := factor (AND factor)*``,
    ``factor := NOT factor | ( expr ) | field comparison``."""

    def __init__(self, toks: list[tuple[str, str]]) -> None:
        self.toks = toks
        self.pos = 0

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.pos] if self.pos < len(self.toks) else None

    def take(self) -> tuple[str, str]:
        if self.pos >= len(self.toks):
            raise FilterError("unexpected end of FilterString")
        self.pos += 1
        return self.toks[self.pos - 1]

    def keyword(self, word: str) -> bool:
        t = self.peek()
        return t is not None and t[0] == "word" and t[1].upper() == word

    def literal(self) -> Any:
        kind, val = self.take()
        if kind == "str":
            return val[1:-1].replace("''", "'")
        if kind == "num":
            return Decimal(val)
        raise FilterError(f"expected a value, got {val!r}")

    def expr(self) -> Pred:
        preds = [self.term()]
        while self.keyword("OR"):
            self.take()
            preds.append(self.term())
        return lambda r: any(p(r) for p in preds)

    def term(self) -> Pred:
        preds = [self.factor()]
        while self.keyword("AND"):
            self.take()
            preds.append(self.factor())
        return lambda r: all(p(r) for p in preds)

    def factor(self) -> Pred:
        if self.peek() is None:
            raise FilterError("unexpected end of FilterString")
        if self.keyword("NOT"):
            self.take()
            inner = self.factor()
            return lambda r: not inner(r)
        if self.peek() == ("op", "("):
            self.take()
            inner = self.expr()
            if self.take() != ("op", ")"):
                raise FilterError("missing )")
            return inner
        kind, name = self.take()
        if kind != "word":
            raise FilterError(f"expected a field name, got {name!r}")
        return self.comparison(name)

    def comparison(self, name: str) -> Pred:
        key = name.lower()
        if self.keyword("LIKE"):
            self.take()
            return _like(key, str(self.literal()))
        if self.keyword("IN"):
            self.take()
            values = self.in_list()
            return lambda r: any(_compare("=", r.get(key), v) for v in values)
        kind, op = self.take()
        if kind != "op" or op in ("(", ")", ","):
            raise FilterError(f"expected an operator after {name}, got {op!r}")
        value = self.literal()
        return lambda r: _compare(op, r.get(key), value)

    def in_list(self) -> list[Any]:
        if self.take() != ("op", "("):
            raise FilterError("IN needs (")
        values = [self.literal()]
        while self.peek() == ("op", ","):
            self.take()
            values.append(self.literal())
        if self.take() != ("op", ")"):
            raise FilterError("missing ) after IN list")
        return values


def _like(key: str, pattern: str) -> Pred:
    middle = pattern[1:-1]
    if len(pattern) >= 2 and pattern[0] == pattern[-1] == "%" and not any(c in middle for c in "%_"):
        needle = middle.lower()  # the common '%text%' case: a substring test, no regex
        return lambda r: (v := r.get(key)) is not None and needle in str(v).lower()
    rx = re.compile("^" + "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern) + "$",
                    re.S | re.I)
    return lambda r: (v := r.get(key)) is not None and rx.match(str(v)) is not None


def compile_filter(text: str) -> Pred:
    """Compile a FilterString into a predicate over a row whose keys are field names (case-insensitive)."""
    if not text or not text.strip():
        return lambda row: True
    parser = _Parser(_tokens(text))
    pred = parser.expr()
    if parser.pos != len(parser.toks):
        raise FilterError(f"unexpected {parser.toks[parser.pos][1]!r} in FilterString")
    return pred
