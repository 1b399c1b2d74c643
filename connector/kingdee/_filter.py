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


def compile_filter(text: str) -> Pred:
    """Compile a FilterString into a predicate over a row whose keys are field names (case-insensitive)."""
    if not text or not text.strip():
        return lambda row: True
    toks = _tokens(text)
    pos = 0

    def peek() -> tuple[str, str] | None:
        return toks[pos] if pos < len(toks) else None

    def take() -> tuple[str, str]:
        nonlocal pos
        if pos >= len(toks):
            raise FilterError("unexpected end of FilterString")
        pos += 1
        return toks[pos - 1]

    def literal() -> Any:
        kind, val = take()
        if kind == "str":
            return val[1:-1].replace("''", "'")
        if kind == "num":
            return Decimal(val)
        raise FilterError(f"expected a value, got {val!r}")

    def factor() -> Pred:
        t = peek()
        if t is None:
            raise FilterError("unexpected end of FilterString")
        if t[0] == "word" and t[1].upper() == "NOT":
            take()
            inner = factor()
            return lambda r: not inner(r)
        if t == ("op", "("):
            take()
            inner = expr()
            if take() != ("op", ")"):
                raise FilterError("missing )")
            return inner
        kind, name = take()
        if kind != "word":
            raise FilterError(f"expected a field name, got {name!r}")
        key = name.lower()
        nxt = take()
        if nxt[0] == "word" and nxt[1].upper() == "LIKE":
            pattern = str(literal())
            middle = pattern[1:-1]
            if len(pattern) >= 2 and pattern[0] == pattern[-1] == "%" and not any(c in middle for c in "%_"):
                needle = middle.lower()  # the common '%text%' case: a substring test, no regex
                return lambda r: (v := r.get(key)) is not None and needle in str(v).lower()
            rx = re.compile("^" + "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern)
                            + "$", re.S | re.I)
            return lambda r: (v := r.get(key)) is not None and rx.match(str(v)) is not None
        if nxt[0] == "word" and nxt[1].upper() == "IN":
            if take() != ("op", "("):
                raise FilterError("IN needs (")
            values = [literal()]
            while peek() == ("op", ","):
                take()
                values.append(literal())
            if take() != ("op", ")"):
                raise FilterError("missing ) after IN list")
            return lambda r: any(_compare("=", r.get(key), v) for v in values)
        if nxt[0] != "op" or nxt[1] in ("(", ")", ","):
            raise FilterError(f"expected an operator after {name}, got {nxt[1]!r}")
        value = literal()
        op = nxt[1]
        return lambda r: _compare(op, r.get(key), value)

    def term() -> Pred:
        preds = [factor()]
        while (t := peek()) is not None and t[0] == "word" and t[1].upper() == "AND":
            take()
            preds.append(factor())
        return lambda r: all(p(r) for p in preds)

    def expr() -> Pred:
        preds = [term()]
        while (t := peek()) is not None and t[0] == "word" and t[1].upper() == "OR":
            take()
            preds.append(term())
        return lambda r: any(p(r) for p in preds)

    pred = expr()
    if pos != len(toks):
        raise FilterError(f"unexpected {toks[pos][1]!r} in FilterString")
    return pred


