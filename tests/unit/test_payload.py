"""The journal payload (``voucher_to_json`` / ``voucher_from_json``): exact money, the entry layout the journal's
``entries`` view reads (migration 0009), and payloads written before msgspec (decision 0009)."""

from __future__ import annotations

import datetime as dt
import json
import re
from decimal import Decimal
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from connector.ledger import Entry, RowRef, Side, SourceRef, SummaryRef, Voucher, VoucherKind
from connector.ledger import voucher_from_json, voucher_to_json
from connector.ledger._serde import PAYLOAD_ENTRY_FIELDS

MIGRATION = Path(__file__).resolve().parents[2] / "connector/journal/migrations/0009_leaner_journal.sql"


def _voucher(amount: Decimal = Decimal("1234.50"), **kw: object) -> Voucher:
    entries = (Entry("1403", Side.DEBIT, amount, "采购 PI1\t\"x\"", rate=Decimal("1.000000"), amount_for=amount,
                     dimensions={"FLEX4": "S001", "FF100003": "STRATEGIC"}),
               Entry("2201", Side.CREDIT, amount, "", currency="USD", rate=Decimal("7.1350"),
                     amount_for=Decimal("173.02"), quantity=Decimal("-2.50000000"), price=Decimal("1E+1"),
                     unit="PCS", settle_type="JSFS04_SYS", settle_no="N1"))
    base = dict(key="k" * 32, book="001", date=dt.date(2026, 11, 5), group="PRE001", explanation="采购发票 PI1",
                entries=entries, source=SourceRef(RowRef("purchasing", "db.public.t", '{"id":1}'), "lsn:1", "u", 17),
                rule_id="r", rule_version="3")
    base.update(kw)
    return Voucher(**base)  # type: ignore[arg-type]


def _same(a: Voucher, b: Voucher) -> bool:
    """Equal, and every Decimal with the same text (``==`` alone would call 1.5 and 1.50 equal)."""
    def text(v: Voucher) -> str:
        return re.sub(r"mappingproxy\((\{.*?\})\)", r"\1", repr(v))
    return a == b and text(a) == text(b)


def test_the_entry_layout_is_entrys_fields_and_what_the_view_reads() -> None:
    assert PAYLOAD_ENTRY_FIELDS == Entry._fields  # the payload writes an Entry as its fields, in order
    at = {name: i for i, name in enumerate(PAYLOAD_ENTRY_FIELDS)}
    view = " ".join(MIGRATION.read_text().split())
    for column, text in {"account": f"e.line ->> {at['account']} AS account",
                         "side": f"e.line ->> {at['side']} AS side",
                         "amount": f"(e.line ->> {at['amount']})::numeric(28, 2) AS amount",
                         "currency": f"e.line ->> {at['currency']} AS currency",
                         "rate": f"(e.line ->> {at['rate']})::numeric(24, 10) AS rate",
                         "amount_for": f"(e.line ->> {at['amount_for']})::numeric(30, 4) AS amount_for",
                         "dimensions": f"nullif(e.line -> {at['dimensions']}, 'null'::jsonb)",
                         "explanation": f"coalesce(e.line ->> {at['explanation']}, '') AS explanation"}.items():
        assert text in view, column


def test_round_trip_keeps_money_exact_and_everything_else() -> None:
    for v in (_voucher(), _voucher(Decimal("-0.00"), kind=VoucherKind.REVERSAL, reverses="r" * 32),
              _voucher(Decimal("99999999999999999999999999.99"), business_date=dt.date(2026, 11, 1),
                       data_centre="DC", attachments=2, review_reasons=("limit",), original_date=dt.date(2026, 10, 31),
                       opening=True, summary=SummaryRef((("store", "S1"), ("date", None)), "02:00 next day"))):
        raw = voucher_to_json(v)
        assert _same(voucher_from_json(raw), v)
        doc = json.loads(raw)
        assert all(isinstance(x, str) for e in doc["entries"] for x in (e[2], e[6], e[7]))  # never a float


@given(st.decimals(allow_nan=False, allow_infinity=False, places=2, min_value=-10**12, max_value=10**12))
def test_any_amount_comes_back_with_the_same_digits(amount: Decimal) -> None:
    back = voucher_from_json(voucher_to_json(_voucher(amount)))
    assert str(back.entries[0].amount) == str(amount)


def test_a_payload_written_before_0009_reads_the_same() -> None:
    v = _voucher()
    s = v.source
    old = {"v": 1, "key": v.key, "kind": "original", "reverses": None, "book": v.book, "data_centre": None,
           "date": "2026-11-05", "business_date": None, "group": v.group, "explanation": v.explanation,
           "attachments": 0, "rule_id": "r", "rule_version": "3", "review_reasons": [],
           "source": [s.row.system, s.row.table, s.row.pk, s.position, s.op, s.ts_ms],
           "entries": [[e.account, e.side.value, str(e.amount), e.explanation, e.currency, e.rate_type, str(e.rate),
                        str(e.amount_for), None if e.quantity is None else str(e.quantity),
                        None if e.price is None else str(e.price), e.unit, e.settle_type, e.settle_no,
                        dict(e.dimensions) or None] for e in v.entries]}
    assert _same(voucher_from_json(json.dumps(old, ensure_ascii=False).encode()), v)
