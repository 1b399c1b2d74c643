"""Golden files: readable sample events and the vouchers they must produce (``kingdee-cdc mapping test``).

Events are written like Debezium envelopes, compactly::

    - op: c
      source: {system: pos, table: sales_order, ts_ms: 1794700000000, lsn: 1001}
      key: {id: 1}
      after: {id: 1, order_no: SO1, gross_amount: "113.00", order_date: 2026-11-12, ...}

Money is written as quoted decimals (``"113.00"``) and becomes ``Decimal``, as Debezium's precise decimal
mode delivers it; an unquoted ``1.5`` stays a binary float (to test ``FLOAT_AMOUNT``). Expectations, one per
event: ``{vouchers: [...]}`` with entries as ``debit 1001 113.00 FLEX6=C0001`` lines, ``{rejected: CODE}``
or ``{skipped: true}``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any, Final

from connector.events import ChangeEvent, Op, SourceInfo
from connector.ledger._serde import voucher_summary
from connector.mapping._engine import InMemoryLedger, Mapper, MapResult
from connector.mapping._rules import GoldenCase, RuleSet

_DECIMAL_TEXT: Final = re.compile(r"^-?\d+\.\d+$")


def _value(v: Any) -> Any:
    if isinstance(v, str) and _DECIMAL_TEXT.match(v):
        return Decimal(v)
    return v


def _image(img: Any) -> tuple[dict[str, Any] | None, list[str]]:
    if img is None:
        return None, []
    out = {k: _value(v) for k, v in dict(img).items()}
    return out, [k for k, v in out.items() if isinstance(v, float)]


def golden_event(spec: Mapping[str, Any], seq: int = 0) -> ChangeEvent:
    """Build a ``ChangeEvent`` from a golden-file event."""
    src = dict(spec.get("source") or {})
    before, fb = _image(spec.get("before"))
    after, fa = _image(spec.get("after"))
    lsn = int(src.get("lsn", 1000 + seq))
    return ChangeEvent(
        op=Op(str(spec.get("op", "c"))),
        source=SourceInfo(connector=str(src.get("connector", "postgresql")), name=str(src["system"]),
                          db=str(src.get("db", f"{src['system']}db")), schema=str(src.get("schema", "public")),
                          table=str(src["table"]), ts_ms=int(src.get("ts_ms", 1_795_000_000_000)),
                          lsn=lsn, tx_id=int(src.get("tx_id", 500 + seq)), snapshot=str(src.get("snapshot", "false"))),
        before=before, after=after, key=dict(spec["key"]) if spec.get("key") is not None else None,
        float_fields=frozenset([f"before.{k}" for k in fb] + [f"after.{k}" for k in fa]))


def _norm(v: Any) -> Any:
    if isinstance(v, date):
        return v.isoformat()
    if isinstance(v, (int, Decimal)) and not isinstance(v, bool):
        return str(v)
    return v


def outcome(result: MapResult, local: str = "CNY") -> dict[str, Any]:
    """A result in golden-file form."""
    if result.rejections:
        return {"rejected": result.rejections[0].code.value,
                "reasons": [str(r) for r in result.rejections]}
    if not result.vouchers:
        return {"skipped": True, "reason": result.skipped}
    return {"vouchers": [voucher_summary(v, local) for v in result.vouchers]}


@dataclass(frozen=True, slots=True)
class GoldenFailure:
    file: str
    case: str
    event: int
    problem: str

    def __str__(self) -> str:
        return f"{self.file}: {self.case} (event {self.event + 1}): {self.problem}"


def _compare(expected: Mapping[str, Any], got: Mapping[str, Any]) -> str | None:
    if "rejected" in expected:
        if got.get("rejected") != expected["rejected"]:
            return f"expected rejection {expected['rejected']}, got {got}"
        return None
    if expected.get("skipped"):
        return None if got.get("skipped") else f"expected no voucher, got {got}"
    want = expected.get("vouchers", [])
    have = got.get("vouchers")
    if have is None:
        return f"expected {len(want)} voucher(s), got {got}"
    if len(want) != len(have):
        return f"expected {len(want)} voucher(s), got {len(have)}: {have}"
    for i, (w, h) in enumerate(zip(want, have)):
        for k, wv in w.items():
            hv = h.get(k)
            if k == "entries":
                if [str(x) for x in wv] != hv:
                    return f"voucher {i + 1} entries:\n    expected {[str(x) for x in wv]}\n    got      {hv}"
            elif k == "review":
                if bool(wv) != bool(hv) or (isinstance(wv, list) and wv != hv):
                    return f"voucher {i + 1} review: expected {wv}, got {hv}"
            elif _norm(wv) != hv:
                return f"voucher {i + 1} {k}: expected {_norm(wv)!r}, got {hv!r}"
    return None


def run_golden(rules: RuleSet, cases: tuple[tuple[str, GoldenCase], ...] | None = None) -> tuple[int, list[GoldenFailure]]:
    """Run every golden case (each on a fresh in-memory ledger); return (events checked, failures)."""
    checked = 0
    failures: list[GoldenFailure] = []
    for file, case in (rules.golden if cases is None else cases):
        mapper = Mapper(rules)
        ledger = InMemoryLedger()
        if len(case.events) != len(case.expect):
            failures.append(GoldenFailure(file, case.name, 0, f"{len(case.events)} events but "
                                                               f"{len(case.expect)} expectations"))
            continue
        for i, (spec, expected) in enumerate(zip(case.events, case.expect)):
            result = mapper.map(golden_event(spec, i), ledger)
            ledger.apply(result)
            checked += 1
            problem = _compare(expected, outcome(result))
            if problem:
                failures.append(GoldenFailure(file, case.name, i, problem))
    return checked, failures
