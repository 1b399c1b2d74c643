"""Fuzz of the whole pure path, decode → map → checks: hostile field values inside otherwise well-formed
Debezium envelopes (schemaless JSON, so every type is possible) never raise, and whatever comes out is
either a balanced voucher, a precise rejection, or a classified decode failure."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import samples
from connector.events import ChangeEvent, DecodeFailure, Decoder, KafkaCoordinates
from connector.ledger import Side
from connector.mapping import InMemoryLedger, Mapper, load_rules

RULES = Path(__file__).resolve().parents[2] / "rules"
MAPPER = Mapper(load_rules(RULES))
DECODER = Decoder(None)
AT = KafkaCoordinates(topic="fuzz", partition=0, offset=1)
_GEN = samples.SampleGenerator(seed=3)
BASE = {t: _GEN.row(t) for t in samples.TABLES}

hostile = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-10**30, max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["1e999999999", "-0.00", "NaN", "Infinity", "12.345678901234567890", "１２３", "0x10", "",
                     "9" * 80, "2026-02-30", "CREDIT", "USD", "XXX", "PAID", "100", "D01", "C0001"]),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


def _envelope(table: samples.SampleTable, op: str, before: Any, after: Any, lsn: int) -> bytes:
    return json.dumps({"op": op, "before": before, "after": after, "ts_ms": 1795000000000,
                       "source": {"connector": "postgresql", "name": table.system, "db": f"{table.system}db",
                                  "schema": "public", "table": table.table, "lsn": lsn, "txId": 7,
                                  "ts_ms": 1795000000000}}, allow_nan=True).encode()


def _plain(v: Any) -> Any:
    if isinstance(v, Decimal):
        return str(v)
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return v


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.sampled_from(samples.TABLES), st.sampled_from(["c", "u", "d", "r"]), st.data())
def test_hostile_field_values_never_escape_decode_or_map(table: samples.SampleTable, op: str,
                                                         data: st.DataObject) -> None:
    row = {k: _plain(v) for k, v in BASE[table].items()}
    for field in data.draw(st.lists(st.sampled_from(sorted(row)), max_size=4, unique=True)):
        if data.draw(st.booleans()):
            row[field] = data.draw(hostile)
        else:
            del row[field]
    base = {k: _plain(v) for k, v in BASE[table].items()}
    key = json.dumps({"id": base["id"]}).encode()
    ledger = InMemoryLedger()  # the row was posted before (so updates and deletes have something to reverse)
    first = DECODER.decode(_envelope(table, "c", None, base, 1), key=key, kafka=AT)
    assert isinstance(first, ChangeEvent)
    ledger.apply(MAPPER.map(first, ledger))
    raw = _envelope(table, op, row if op in ("u", "d") else None, None if op == "d" else row,
                    data.draw(st.integers(2, 2**40)))
    decoded = DECODER.decode(raw, key=key, kafka=AT)
    if isinstance(decoded, DecodeFailure):
        assert decoded.reason and decoded.stage and not decoded.reason.startswith("unexpected"), decoded.reason
        return
    assert isinstance(decoded, ChangeEvent)
    result = MAPPER.map(decoded, ledger)
    assert result.vouchers or result.rejections or result.skipped
    for r in result.rejections:
        assert r.code and r.message
    for v in result.vouchers:
        debit = sum((e.amount for e in v.entries if e.side is Side.DEBIT), Decimal(0))
        credit = sum((e.amount for e in v.entries if e.side is Side.CREDIT), Decimal(0))
        assert debit == credit and all(isinstance(e.amount, Decimal) for e in v.entries)
