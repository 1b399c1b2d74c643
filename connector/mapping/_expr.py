"""Rule expressions: Jinja2 syntax, compiled to Python closures over a whitelist — no ``eval``.

Rule authors write Jinja2 expressions (``row.gross_amount - row.points_deduction``,
``'1001' if row.payment_method == 'CASH' else '1122'``, ``row.customer_code | default('')``) and
templates (``POS {{ row.order_no }} 销售收入``). Jinja2's own parser reads them; this module compiles the
resulting syntax tree into closures, accepting only: literals, names of the event (``row``, ``before``,
``after``, ``key``, ``source``, ``op``), field access on those mappings, arithmetic, comparisons,
boolean logic, conditional expressions, and calls to the registered helpers/filters/tests below.
Anything else (attribute access on objects, calls to arbitrary callables, assignments, loops) is refused
when the rule is loaded, with the offending source text.

Why not Jinja2's ``SandboxedEnvironment`` itself: it checks every attribute access at run time and
measured 8 µs per expression (about 14k events/s for a five-line voucher), below the 30k target; the
compiled closures do the same work in well under a microsecond and are safe by construction. Number
literals become ``Decimal`` (``0.13`` is exactly 0.13), so money never passes through a binary float.
"""

from __future__ import annotations

import base64
import binascii
import decimal
import operator
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Final

from jinja2 import Environment, nodes
from jinja2.exceptions import TemplateSyntaxError
from jinja2.parser import Parser

from connector.errors import MoneyError
from connector.money import MONEY_CONTEXT, quantize, to_money

Scope = Mapping[str, Any]
Compiled = Callable[[Scope], Any]

#: Names an expression may read.
EVENT_NAMES: Final = frozenset({"row", "before", "after", "key", "source", "op", "vars"})
_ENV: Final = Environment(autoescape=False)
_MISSING: Final = object()


class ExprError(ValueError):
    """A rule expression is not valid (raised when rules are loaded)."""


class EvalError(Exception):
    """Evaluating an expression failed for this event (becomes a ``Rejection``)."""

    def __init__(self, code: str, message: str, field: str | None = None, value: object = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.value = value


# --------------------------------------------------------------------------- helpers
class Tables:
    """Lookup tables and exchange rates available to ``lookup()`` and ``rate()``."""

    def __init__(self, lookups: Mapping[str, Mapping[str, Any]] | None = None,
                 rates: Mapping[str, Mapping[str, Sequence[tuple[date, Decimal]]]] | None = None) -> None:
        self.lookups = {k: dict(v) for k, v in (lookups or {}).items()}
        # rates[currency][rate_type] = [(valid_from, rate)] sorted ascending
        self.rates = {c: {t: sorted(v) for t, v in types.items()} for c, types in (rates or {}).items()}

    def lookup(self, table: str, key: Any, default: Any = _MISSING) -> Any:
        tbl = self.lookups.get(table)
        if tbl is None:
            raise EvalError("EXPRESSION_ERROR", f"unknown lookup table {table!r}", value=table)
        k = str(key) if key is not None else None
        if k in tbl:
            return tbl[k]
        if "*" in tbl:
            return tbl["*"]
        if default is not _MISSING:
            return default
        raise EvalError("MISSING_FIELD", f"no entry {k!r} in lookup table {table!r}", value=k)

    def rate(self, currency: str, on: Any, rate_type: str = "HLTX01_SYS", local: str = "CNY") -> Decimal:
        if currency == local:
            return _ONE
        day = to_date(on)
        series = self.rates.get(currency, {}).get(rate_type, [])
        found: Decimal | None = None
        for valid_from, r in series:
            if valid_from <= day:
                found = r
            else:
                break
        if found is None:
            raise EvalError("NO_EXCHANGE_RATE", f"no {rate_type} rate for {currency} on {day}",
                            value=f"{currency}@{day}")
        return found


_ONE: Final = Decimal(1)
_EPOCH_DATE: Final = date(1970, 1, 1)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def to_date(v: Any) -> date:
    """date / datetime / ``YYYY-MM-DD`` text / Debezium Date (days since epoch) → ``date``."""
    if isinstance(v, datetime):
        return v.astimezone(UTC).date() if v.tzinfo else v.date()
    if isinstance(v, date):
        return v
    if isinstance(v, int) and not isinstance(v, bool):
        try:
            return _EPOCH_DATE + timedelta(days=v)
        except OverflowError:  # beyond year 1..9999 (found by the decode → map fuzz test)
            raise EvalError("INVALID_DATE", f"day number {v} is outside the calendar", value=v) from None
    if isinstance(v, str):
        try:
            return date.fromisoformat(v[:10])
        except ValueError:
            pass
    raise EvalError("INVALID_DATE", f"not a date: {v!r}", value=v)


def _dec(v: Any) -> Decimal:
    try:
        return to_money(v)
    except MoneyError as e:
        raise EvalError("INVALID_AMOUNT", str(e), value=v) from None


def _round(places: int, mode: str) -> Callable[..., Decimal]:
    def fn(v: Any, n: int = places) -> Decimal:
        return quantize(_dec(v), int(n), rounding=mode)
    return fn


def _decimal_b64(text: Any, scale: Any) -> Decimal:
    try:
        raw = base64.b64decode(str(text), validate=True)
    except (binascii.Error, ValueError):
        raise EvalError("INVALID_AMOUNT", f"not a base64 Connect decimal: {text!r}", value=text) from None
    return Decimal(int.from_bytes(raw, "big", signed=True)).scaleb(-int(scale))


def _micros_ts(v: Any) -> datetime:
    return _EPOCH + timedelta(microseconds=int(v))


def _millis_ts(v: Any) -> datetime:
    return _EPOCH + timedelta(milliseconds=int(v))


def _exact_sum(items: Any, attribute: str | None) -> Decimal:
    """``lines | sum(attribute='amount')``: an exact Decimal total (never a float, never ``start=0`` surprises)."""
    total = Decimal(0)
    for it in items:
        v = it[attribute] if attribute is not None else it
        if isinstance(v, float) or isinstance(v, bool) or not isinstance(v, (int, Decimal)):
            raise ValueError(f"sum: {attribute or 'item'} {v!r} is not an exact number")
        total = MONEY_CONTEXT.add(total, v)
    return total


def _coalesce(*args: Any) -> Any:
    return next((a for a in args if a is not None and a != ""), None)


def _month(v: Any) -> str:
    return f"{to_date(v):%Y-%m}"


def _fmt(v: Any, pattern: str = "%Y-%m-%d") -> str:
    d = v if isinstance(v, datetime) else to_date(v)
    return d.strftime(pattern)


#: Currency minor units for ``round_for`` (ISO 4217); others default to 2.
CURRENCY_PLACES: Final = {"JPY": 0, "KRW": 0, "VND": 0, "BHD": 3, "KWD": 3}


def _round_for(v: Any, currency: str) -> Decimal:
    return quantize(_dec(v), CURRENCY_PLACES.get(str(currency), 2))


STATIC_HELPERS: Final[dict[str, Callable[..., Any]]] = {
    "dec": _dec, "money": _dec,
    "round_half_up": _round(2, decimal.ROUND_HALF_UP), "round_bankers": _round(2, decimal.ROUND_HALF_EVEN),
    "round_for": _round_for, "date": to_date, "month": _month, "fmt": _fmt,
    "decimal_b64": _decimal_b64, "micros_ts": _micros_ts, "millis_ts": _millis_ts, "coalesce": _coalesce,
    "abs": abs, "min": min, "max": max, "str": str, "len": len,
}

FILTERS: Final[dict[str, Callable[..., Any]]] = {
    "upper": lambda v: str(v).upper(), "lower": lambda v: str(v).lower(), "trim": lambda v: str(v).strip(),
    "string": str, "abs": abs, "round": _round(2, decimal.ROUND_HALF_UP), "dec": _dec,
    "truncate": lambda v, n=50: str(v)[: int(n)], "replace": lambda v, a, b: str(v).replace(str(a), str(b)),
    "sum": lambda v, attribute=None: _exact_sum(v, attribute), "length": len,
}


# --------------------------------------------------------------------------- compiler
def _arith(op: Callable[[Any, Any], Any], symbol: str) -> Callable[[Any, Any], Any]:
    def apply(a: Any, b: Any) -> Any:
        if isinstance(a, float) or isinstance(b, float):
            raise EvalError("FLOAT_AMOUNT", f"binary float in arithmetic ({a!r} {symbol} {b!r}); "
                                            "allow the field with float_fields if this is intended", value=a)
        try:
            return op(a, b)
        except TypeError:
            raise EvalError("EXPRESSION_ERROR", f"cannot compute {a!r} {symbol} {b!r}") from None
        except (decimal.InvalidOperation, ZeroDivisionError, decimal.DivisionByZero):
            raise EvalError("EXPRESSION_ERROR", f"invalid arithmetic {a!r} {symbol} {b!r}") from None
    return apply


def _div(a: Any, b: Any) -> Any:
    return MONEY_CONTEXT.divide(Decimal(a), Decimal(b))


_BINOPS: Final = {
    nodes.Add: (_arith(lambda a, b: MONEY_CONTEXT.add(a, b) if isinstance(a, Decimal) or isinstance(b, Decimal)
                       else a + b, "+")),
    nodes.Sub: (_arith(lambda a, b: MONEY_CONTEXT.subtract(a, b) if isinstance(a, Decimal) or isinstance(b, Decimal)
                       else a - b, "-")),
    nodes.Mul: (_arith(lambda a, b: MONEY_CONTEXT.multiply(a, b) if isinstance(a, Decimal) or isinstance(b, Decimal)
                       else a * b, "*")),
    nodes.Div: _arith(_div, "/"),
    nodes.FloorDiv: _arith(operator.floordiv, "//"),
    nodes.Mod: _arith(operator.mod, "%"),
}
_CMP: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "eq": operator.eq, "ne": operator.ne, "gt": operator.gt, "gteq": operator.ge, "lt": operator.lt,
    "lteq": operator.le, "in": lambda a, b: a in b, "notin": lambda a, b: a not in b,
}


class Compiler:
    """Compiles Jinja2 expression/template source into closures; helpers are bound to one ``Tables``."""

    def __init__(self, tables: Tables | None = None, names: frozenset[str] = EVENT_NAMES) -> None:
        self.tables = tables or Tables()
        self.names = names
        self.helpers: dict[str, Callable[..., Any]] = {
            **STATIC_HELPERS, "lookup": self.tables.lookup, "rate": self.tables.rate,
        }

    # public ------------------------------------------------------------------
    def expression(self, source: str) -> Compiled:
        """Compile one expression (``row.a + row.b``)."""
        try:
            parser = Parser(_ENV, source, state="variable")
            node = parser.parse_expression()
            if not parser.stream.eos:
                raise TemplateSyntaxError("unexpected text after the expression", parser.stream.current.lineno)
        except TemplateSyntaxError as e:
            raise ExprError(f"invalid expression {source!r}: {e.message}") from None
        return self._compile(node, source)

    def template(self, source: str) -> Compiled:
        """Compile a text template (``POS {{ row.order_no }} 销售收入``) into a closure returning ``str``."""
        if "{{" not in source and "{%" not in source:
            return lambda s: source
        try:
            tree = _ENV.parse(source)
        except TemplateSyntaxError as e:
            raise ExprError(f"invalid template {source!r}: {e.message}") from None
        pieces: list[str | Compiled] = []  # literal text stays text: no call per literal when rendering
        for stmt in tree.body:
            if not isinstance(stmt, nodes.Output):
                raise ExprError(f"template {source!r}: only text and {{{{ expressions }}}} are allowed")
            for n in stmt.nodes:
                if isinstance(n, nodes.TemplateData):
                    pieces.append(n.data)
                else:
                    pieces.append(self._compile(n, source))

        def render(s: Scope) -> str:
            out = []
            for p in pieces:
                if type(p) is str:
                    out.append(p)
                else:
                    v = p(s)  # type: ignore[operator]
                    out.append(v if type(v) is str else _text(v))
            return "".join(out)
        return render

    def value(self, source: Any) -> Compiled:
        """A rule value: non-strings are constants, ``{{ }}`` text is a template, other text is literal."""
        if isinstance(source, str):
            return self.template(source)
        const = source
        return lambda s: const

    # compiler ----------------------------------------------------------------
    def _compile(self, node: nodes.Node, src: str) -> Compiled:
        method = getattr(self, f"_c_{type(node).__name__}", None)
        if method is None:
            raise ExprError(f"{type(node).__name__} is not allowed in rule expressions: {src!r}")
        result: Compiled = method(node, src)
        return result

    def _c_Const(self, node: nodes.Const, src: str) -> Compiled:
        v = node.value
        if isinstance(v, float):
            v = Decimal(repr(v))  # 0.13 means exactly 0.13
        return lambda s: v

    def _c_Name(self, node: nodes.Name, src: str) -> Compiled:
        name = node.name
        if name in ("true", "True"):
            return lambda s: True
        if name in ("false", "False"):
            return lambda s: False
        if name in ("none", "None"):
            return lambda s: None
        if name not in self.names:
            raise ExprError(f"unknown name {name!r} in {src!r}; available: {', '.join(sorted(self.names))}")
        return lambda s: s[name]

    def _path(self, node: nodes.Node) -> str:
        if isinstance(node, nodes.Name):
            return node.name
        if isinstance(node, nodes.Getattr):
            return f"{self._path(node.node)}.{node.attr}"
        if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            return f"{self._path(node.node)}[{node.arg.value!r}]"
        return "<expr>"

    def _c_Getattr(self, node: nodes.Getattr, src: str) -> Compiled:
        inner = self._compile(node.node, src)
        attr = node.attr
        path = self._path(node)
        parent = self._path(node.node)

        def get(s: Scope) -> Any:
            obj = inner(s)
            if type(obj) is dict:  # the common case, without the ABC isinstance cost
                try:
                    return obj[attr]
                except KeyError:
                    raise EvalError("MISSING_FIELD", f"field {path} is missing from the event", path) from None
            if isinstance(obj, Mapping):
                try:
                    return obj[attr]
                except KeyError:
                    raise EvalError("MISSING_FIELD", f"field {path} is missing from the event", path) from None
            if obj is None:
                raise EvalError("MISSING_FIELD", f"{parent} is null, cannot read {path}", path)
            raise EvalError("EXPRESSION_ERROR", f"{parent} is a {type(obj).__name__}, not a record", path)
        if isinstance(node.node, nodes.Name) and node.node.name in self.names:
            # row.field — the hot case: one dict lookup each, the general path only to explain a failure
            name = node.node.name

            def fast(s: Scope) -> Any:
                try:
                    return s[name][attr]
                except (KeyError, TypeError):
                    return get(s)
            return fast
        return get

    def _c_Getitem(self, node: nodes.Getitem, src: str) -> Compiled:
        inner = self._compile(node.node, src)
        arg = self._compile(node.arg, src)
        path = self._path(node)

        def get(s: Scope) -> Any:
            obj, k = inner(s), arg(s)
            try:
                return obj[k]
            except (KeyError, IndexError, TypeError):
                raise EvalError("MISSING_FIELD", f"{path}: no item {k!r}", path) from None
        return get

    def _binop(self, node: Any, src: str) -> Compiled:
        fn = _BINOPS[type(node)]
        left, right = self._compile(node.left, src), self._compile(node.right, src)
        return lambda s: fn(left(s), right(s))

    _c_Add = _c_Sub = _c_Mul = _c_Div = _c_FloorDiv = _c_Mod = _binop

    def _c_Neg(self, node: nodes.Neg, src: str) -> Compiled:
        inner = self._compile(node.node, src)

        def neg(s: Scope) -> Any:
            v = inner(s)
            if isinstance(v, float) or not isinstance(v, (int, Decimal)):
                raise EvalError("EXPRESSION_ERROR", f"cannot negate {v!r}")
            return -v
        return neg

    def _c_Pos(self, node: nodes.Pos, src: str) -> Compiled:
        return self._compile(node.node, src)

    def _c_Not(self, node: nodes.Not, src: str) -> Compiled:
        inner = self._compile(node.node, src)
        return lambda s: not inner(s)

    def _c_And(self, node: nodes.And, src: str) -> Compiled:
        left, right = self._compile(node.left, src), self._compile(node.right, src)
        return lambda s: left(s) and right(s)

    def _c_Or(self, node: nodes.Or, src: str) -> Compiled:
        left, right = self._compile(node.left, src), self._compile(node.right, src)
        return lambda s: left(s) or right(s)

    def _c_Concat(self, node: nodes.Concat, src: str) -> Compiled:
        parts = [self._compile(n, src) for n in node.nodes]
        return lambda s: "".join(_text(p(s)) for p in parts)

    def _c_Compare(self, node: nodes.Compare, src: str) -> Compiled:
        first = self._compile(node.expr, src)
        ops: list[tuple[Callable[[Any, Any], bool], Compiled]] = []
        for operand in node.ops:
            if operand.op not in _CMP:
                raise ExprError(f"comparison {operand.op!r} is not allowed: {src!r}")
            ops.append((_CMP[operand.op], self._compile(operand.expr, src)))

        def compare(s: Scope) -> bool:
            left = first(s)
            for fn, right_c in ops:
                right = right_c(s)
                try:
                    if not fn(left, right):
                        return False
                except TypeError:
                    raise EvalError("EXPRESSION_ERROR", f"cannot compare {left!r} with {right!r} in {src!r}") from None
                left = right
            return True
        return compare

    def _c_CondExpr(self, node: nodes.CondExpr, src: str) -> Compiled:
        test, yes = self._compile(node.test, src), self._compile(node.expr1, src)
        no = self._compile(node.expr2, src) if node.expr2 is not None else (lambda s: None)
        return lambda s: yes(s) if test(s) else no(s)

    def _args(self, node: nodes.Call | nodes.Filter | nodes.Test, src: str) -> tuple[list[Compiled], dict[str, Compiled]]:
        if node.dyn_args is not None or node.dyn_kwargs is not None:
            raise ExprError(f"*args/**kwargs are not allowed: {src!r}")
        return ([self._compile(a, src) for a in node.args],
                {str(kw.key): self._compile(kw.value, src) for kw in node.kwargs})

    def _c_Call(self, node: nodes.Call, src: str) -> Compiled:
        if not isinstance(node.node, nodes.Name) or node.node.name not in self.helpers:
            raise ExprError(f"only these functions may be called: {', '.join(sorted(self.helpers))} ({src!r})")
        fn = self.helpers[node.node.name]
        name = node.node.name
        args, kwargs = self._args(node, src)

        def call(s: Scope) -> Any:
            try:
                return fn(*(a(s) for a in args), **{k: v(s) for k, v in kwargs.items()})
            except EvalError:
                raise
            except (TypeError, ValueError, ArithmeticError) as e:
                raise EvalError("EXPRESSION_ERROR", f"{name}(): {e}") from None
        return call

    def _c_Filter(self, node: nodes.Filter, src: str) -> Compiled:
        if node.node is None:
            raise ExprError(f"filter blocks are not allowed: {src!r}")
        inner = self._compile(node.node, src)
        args, kwargs = self._args(node, src)
        if node.name in ("default", "d"):
            fallback = args[0] if args else (lambda s: "")

            def default(s: Scope) -> Any:
                try:
                    v = inner(s)
                except EvalError as e:
                    if e.code != "MISSING_FIELD":
                        raise
                    return fallback(s)
                return fallback(s) if v is None else v
            return default
        fn = FILTERS.get(node.name)
        if fn is None:
            raise ExprError(f"unknown filter {node.name!r}; available: default, {', '.join(sorted(FILTERS))}")
        name = node.name

        def apply(s: Scope) -> Any:
            try:
                return fn(inner(s), *(a(s) for a in args), **{k: v(s) for k, v in kwargs.items()})
            except EvalError:
                raise
            except (TypeError, ValueError, ArithmeticError) as e:
                raise EvalError("EXPRESSION_ERROR", f"filter {name}: {e}") from None
        return apply

    def _c_Test(self, node: nodes.Test, src: str) -> Compiled:
        inner = self._compile(node.node, src)
        if node.name == "defined":
            def defined(s: Scope) -> bool:
                try:
                    inner(s)
                    return True
                except EvalError as e:
                    if e.code == "MISSING_FIELD":
                        return False
                    raise
            return defined
        if node.name == "none":
            return lambda s: inner(s) is None
        if node.name in ("number", "string"):
            kind = (int, Decimal) if node.name == "number" else str
            return lambda s: isinstance(inner(s), kind) and not isinstance(inner(s), bool)
        raise ExprError(f"unknown test {node.name!r}; available: defined, none, number, string")

    def _c_List(self, node: nodes.List, src: str) -> Compiled:
        items = [self._compile(n, src) for n in node.items]
        return lambda s: [i(s) for i in items]

    def _c_Tuple(self, node: nodes.Tuple, src: str) -> Compiled:
        items = [self._compile(n, src) for n in node.items]
        return lambda s: tuple(i(s) for i in items)


def _constant(value: Any) -> Compiled:
    def const(s: Scope) -> Any:
        return value
    return const


def _text(v: Any) -> str:
    if type(v) is str:
        return v
    if v is None:
        return ""
    if isinstance(v, datetime):
        return v.isoformat()
    return str(v)
