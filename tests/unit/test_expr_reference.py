"""Today's expression compiler gives what the compiler before the performance work of issue #15 gave
(``expr_reference``, kept verbatim): the same value of the same type, or the same error — code, message,
field and value — for generated expressions and templates over generated rows, in every decimal mode's
types (Decimal, numeric text, float), with missing fields, nulls and wrong types."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connector.mapping import _expr as new
from tests.unit import expr_reference as old

FIELDS = ("a", "b", "c", "s", "t", "d", "n", "l")
VALUES = st.sampled_from([
    Decimal("1.50"), Decimal("-2"), Decimal("0.00"), Decimal("113.005"), Decimal("1E+40"), "100", "13", "0.00", "abc",
    "", "  x ", "CASH", None, 0, 7, 1.5, 0.1, float("inf"), True, date(2026, 11, 30), "2026-11-30",
    "2026-11-30T17:30:00Z", [Decimal("1"), "2"], [{"v": Decimal("2.5")}, {"v": "1"}], {"v": 1}])
ATOMS = st.one_of(
    st.sampled_from([f"row.{f}" for f in FIELDS] + ["row.missing", "row['a']", "key.id", "source.table", "op",
                                                     "row.l[0]", "row.l[n]"]),
    st.sampled_from(["0", "1", "2", "0.13", "1.5", "'x'", "'CASH'", "'100'", "none", "true", "false", "[1, 2, 'x']",
                     "(1, 2)", "-1", "1e20"]))
BINARY = ["+", "-", "*", "/", "//", "%", "~", "==", "!=", "<", ">", "<=", ">=", "in", "not in", "and", "or"]
FILTERS = ["default('z')", "default(none)", "upper", "lower", "trim", "round", "round(1)", "string", "length", "abs",
           "dec", "truncate(3)", "replace('a', 'bb')", "sum", "sum(attribute='v')", "d('y')"]
TESTS = ["defined", "none", "number", "string", "not none"]
CALLS1 = ["abs", "str", "len", "round_half_up", "dec", "date", "month", "coalesce", "money"]
CALLS2 = ["min", "max", "coalesce", "round_bankers", "round_for", "fmt"]


def _expression(depth: int) -> st.SearchStrategy[str]:
    if depth == 0:
        return ATOMS
    inner = _expression(depth - 1)
    return st.one_of(
        ATOMS,
        st.tuples(inner, st.sampled_from(BINARY), inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        st.tuples(inner, st.sampled_from(FILTERS)).map(lambda t: f"({t[0]} | {t[1]})"),
        st.tuples(inner, st.sampled_from(TESTS)).map(lambda t: f"({t[0]} is {t[1]})"),
        st.tuples(st.sampled_from(CALLS1), inner).map(lambda t: f"{t[0]}({t[1]})"),
        st.tuples(st.sampled_from(CALLS2), inner, inner).map(lambda t: f"{t[0]}({t[1]}, {t[2]})"),
        st.tuples(inner, inner, inner).map(lambda t: f"({t[0]} if {t[1]} else {t[2]})"),
        st.tuples(inner, inner, inner).map(lambda t: f"({t[0]} < {t[1]} <= {t[2]})"),
        inner.map(lambda e: f"(not {e})"), inner.map(lambda e: f"(-{e})"),
        st.tuples(st.sampled_from(["'t'", "'u'"]), inner).map(lambda t: f"lookup({t[0]}, {t[1]})"),
        st.tuples(inner, inner).map(lambda t: f"lookup('t', {t[0]}, {t[1]})"))


def _outcome(compiled: Any, scope: dict[str, Any], error: type[Exception]) -> Any:
    try:
        v = compiled(scope)
    except error as e:
        return ("EvalError", e.code, e.message, e.field, repr(e.value))  # type: ignore[attr-defined]
    except Exception as e:  # what the engine turns into a rejection: the same type and text
        return ("raised", type(e).__name__, str(e))
    return ("value", type(v).__name__, repr(v))


def _compilers() -> tuple[Any, Any]:
    lookups = {"t": {"100": "1001", "CASH": "1002", "*": "9999"}, "u": {"x": "1"}}
    rates = {"USD": {"HLTX01_SYS": [(date(2026, 11, 1), Decimal("7.12"))]}}
    return (new.Compiler(new.Tables(lookups, rates)), old.Compiler(old.Tables(lookups, rates)))


NEW, OLD = _compilers()


@settings(max_examples=2500, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(_expression(3), st.fixed_dictionaries({f: VALUES for f in FIELDS}), st.booleans())
def test_expressions_evaluate_as_before(text: str, row: dict[str, Any], as_template: bool) -> None:
    row = {k: v for k, v in row.items() if not (k == "n" and isinstance(v, list))}
    source = f"S {{{{ {text} }}}} E {{{{ {text} | default('') }}}}" if as_template else text
    try:
        ours = NEW.template(source) if as_template else NEW.expression(source)
    except new.ExprError as e:
        try:
            OLD.template(source) if as_template else OLD.expression(source)
        except old.ExprError as f:
            assert str(e) == str(f)
            return
        raise AssertionError(f"refused now, compiled before: {source!r}: {e}") from None
    reference = OLD.template(source) if as_template else OLD.expression(source)
    scope = {"row": row, "before": None, "after": row, "key": {"id": 7}, "op": "c", "vars": {},
             "source": {"system": "pos", "db": "d", "schema": "public", "table": "t", "ts_ms": 1, "lsn": 2,
                        "tx_id": 3, "snapshot": "false"}}
    assert _outcome(ours, scope, new.EvalError) == _outcome(reference, scope, old.EvalError), source
