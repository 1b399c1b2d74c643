"""Property tests of the accounting core (hypothesis)."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from harness import samples
from connector.events import ChangeEvent, Decoder, FixedSchemas
from connector.ledger import kingdee_json, to_kingdee, voucher_from_avro, voucher_to_avro
from connector.mapping import InMemoryLedger, Mapper, load_rules
from connector.mapping._golden import golden_event

RULES = load_rules(Path(__file__).resolve().parents[2] / "rules")
cents = st.integers(min_value=-10**12, max_value=10**12).map(lambda c: Decimal(c).scaleb(-2))
positive_cents = st.integers(min_value=0, max_value=10**10).map(lambda c: Decimal(c).scaleb(-2))

pos_rows = st.fixed_dictionaries({
    "id": st.integers(1, 10**6), "order_no": st.text("ABC0123456789", min_size=1, max_size=8),
    "channel": st.sampled_from(["STORE", "ONLINE"]), "company_code": st.sampled_from(["100", "200"]),
    "customer_code": st.one_of(st.none(), st.sampled_from(["C0001", "C0002"])),
    "order_date": st.dates(date(2026, 11, 1), date(2026, 12, 31)), "currency": st.sampled_from(["CNY", "USD"]),
    "net_amount": positive_cents, "tax_amount": positive_cents, "points_deduction": positive_cents,
    "payment_method": st.sampled_from(["CASH", "CARD", "WECHAT", "ALIPAY", "CREDIT"]), "status": st.just("PAID"),
    "noise": cents,
})


def _sale_event(row: dict[str, Any], *, op: str = "c", lsn: int = 1, consistent: bool = True) -> ChangeEvent:
    row = dict(row)
    if consistent:
        row["gross_amount"] = row["net_amount"] + row["tax_amount"]
    else:
        row["gross_amount"] = row["net_amount"] + row["tax_amount"] + row["noise"]
    spec = {"op": op, "source": {"system": "pos", "table": "sales_order", "lsn": lsn, "ts_ms": 1795140000000},
            "key": {"id": row["id"]}}
    spec["before" if op == "d" else "after"] = row
    return golden_event(spec)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pos_rows, st.booleans())
def test_every_voucher_is_balanced_or_the_event_is_rejected(row: dict[str, Any], consistent: bool) -> None:
    result = Mapper(RULES).map(_sale_event(row, consistent=consistent))
    if result.vouchers:
        for v in result.vouchers:
            assert v.debit_total == v.credit_total
            assert all(e.amount.as_tuple().exponent >= -2 for e in v.entries)  # type: ignore[operator]
    else:
        assert result.rejections or result.skipped


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pos_rows)
def test_original_plus_reversal_nets_to_zero_per_account_and_dimension(row: dict[str, Any]) -> None:
    mapper, ledger = Mapper(RULES), InMemoryLedger()
    created = mapper.map(_sale_event(row, lsn=1), ledger)
    ledger.apply(created)
    deleted = mapper.map(_sale_event(row, op="d", lsn=2), ledger)
    ledger.apply(deleted)
    assume(created.vouchers)  # (a rejected sale has nothing to reverse; Hypothesis fails if that is all it finds)
    assert len(deleted.vouchers) == 1 and deleted.vouchers[0].reverses == created.vouchers[0].key
    net: dict[tuple[Any, ...], Decimal] = defaultdict(Decimal)
    for v in (*created.vouchers, *deleted.vouchers):
        for e in v.entries:
            k = (e.account, e.side, tuple(sorted(e.dimensions.items())), e.currency)
            net[k] += e.amount
            net[k + ("for",)] += e.amount_for
    assert all(x == 0 for x in net.values())
    assert ledger.active(created.vouchers[0].source.row, "pos-sale") == ()


@settings(max_examples=200, deadline=None)
@given(pos_rows, st.integers(1, 10**9))
def test_same_event_same_key_and_voucher(row: dict[str, Any], lsn: int) -> None:
    a = Mapper(RULES).map(_sale_event(row, lsn=lsn))
    b = Mapper(RULES).map(_sale_event(dict(row), lsn=lsn))
    assert a == b
    if a.vouchers:  # the same row read again at another log position: the same voucher key
        c = Mapper(RULES).map(_sale_event(row, op="r", lsn=lsn + 1))
        assert c.vouchers[0].key == a.vouchers[0].key


@settings(max_examples=200, deadline=None)
@given(pos_rows)
def test_vouchers_survive_avro_and_kingdee_json_exactly(row: dict[str, Any]) -> None:
    result = Mapper(RULES).map(_sale_event(row))
    assume(result.vouchers)
    for v in result.vouchers:
        assert voucher_from_avro(voucher_to_avro(v)) == v
        model = json.loads(kingdee_json(to_kingdee(v, RULES.ledger.books[v.book])), parse_float=Decimal)
        for e, k in zip(v.entries, model["FEntity"]):
            assert Decimal(k["FDEBIT"]) - Decimal(k["FCREDIT"]) == (e.amount if k["FDC"] == 1 else -e.amount)
            assert Decimal(k["FAMOUNTFOR"]) == e.amount_for


@settings(max_examples=150, deadline=None)
@given(cents, cents, st.sampled_from(["avro", "json"]))
def test_event_decimals_survive_wire_round_trips(net: Decimal, tax: Decimal, wire: str) -> None:
    row = samples.SampleGenerator(seed=1).row(samples.POS)
    row.update(net_amount=net, tax_amount=tax, gross_amount=net + tax)
    env = samples.envelope(samples.POS, "c", before=None, after=row)
    raw = samples.encode_avro(samples.POS, env, 1) if wire == "avro" else samples.encode_json(samples.POS, env)
    ev = Decoder(FixedSchemas(samples.value_schema(samples.POS))).decode(raw)
    assert isinstance(ev, ChangeEvent) and ev.after is not None
    assert (ev.after["net_amount"], ev.after["tax_amount"], ev.after["gross_amount"]) == (net, tax, net + tax)
    assert str(ev.after["net_amount"]) == str(net)
