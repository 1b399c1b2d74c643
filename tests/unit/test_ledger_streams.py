"""Property tests over random streams of business changes (Hypothesis): the ledger an accountant would accept.

A stream is a random sequence of creates, updates, deletes, re-snapshots (the same row read again with a new
log position, in any Debezium decimal mode) and period closes, on a few POS orders. After every stream:

* nothing is posted twice (every key once; at most one voucher in force per row);
* every voucher balances, so every book and period balances;
* every reversal nets its original to zero, per account, side and dimension;
* each row's net effect on the ledger equals the voucher its latest state gives (nothing for a deleted or
  unpaid order);
* nothing was dated in a period that was closed when it was booked, and no reversal predates its original.

``stream_ledger`` is shared with the integration variant, which runs the same streams through the real journal.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import date
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from connector.events import ChangeEvent
from connector.ledger import Voucher, VoucherKind
from connector.mapping import InMemoryLedger, Mapper, MapResult, load_rules
from tests.unit.helpers import RULES, event

RULESET = load_rules(RULES)
IDS = (1, 2, 3)

content = st.fixed_dictionaries({
    "net": st.integers(1, 10**7), "tax": st.integers(0, 10**6), "points": st.integers(0, 500),
    "method": st.sampled_from(["CASH", "WECHAT", "ALIPAY", "CARD"]), "channel": st.sampled_from(["STORE", "ONLINE"]),
    "day": st.dates(date(2026, 11, 1), date(2026, 12, 31)), "paid": st.booleans(),
    "currency": st.sampled_from(["CNY", "CNY", "USD"]), "company": st.sampled_from(["100", "200"]),
})
op = st.one_of(
    st.tuples(st.just("write"), st.sampled_from(IDS), content),
    st.tuples(st.just("delete"), st.sampled_from(IDS), st.none()),
    st.tuples(st.just("resnapshot"), st.sampled_from(IDS), st.sampled_from(["precise", "string", "double"])),
    st.tuples(st.just("close"), st.none(), st.sampled_from(["2026-11", "2026-12"])),
    st.tuples(st.just("revert"), st.sampled_from(IDS), st.none()),  # back to the content before the last write
)
streams = st.lists(op, min_size=1, max_size=30)
_A = {"net": 10000, "tax": 1300, "points": 0, "method": "CASH", "channel": "STORE", "day": date(2026, 11, 12),
      "paid": True, "currency": "CNY", "company": "100"}
#: A → B → A → B on one row, a re-snapshot, a delete and the same content inserted again: the key chain
ABAB: list[tuple[str, Any, Any]] = [("write", 1, _A), ("write", 1, {**_A, "method": "WECHAT"}), ("revert", 1, None),
                                    ("revert", 1, None), ("resnapshot", 1, "double"), ("delete", 1, None),
                                    ("write", 1, {**_A, "method": "WECHAT"})]


def order_row(oid: int, c: dict[str, Any]) -> dict[str, Any]:
    cents = Decimal("0.01")
    net, tax = Decimal(c["net"]) * cents, Decimal(c["tax"]) * cents
    points = min(Decimal(c["points"]) * cents, net + tax)  # member points pay at most the whole order
    return {"id": oid, "order_no": f"SO{oid}", "channel": c["channel"], "company_code": c["company"],
            "customer_code": None, "order_date": c["day"], "currency": c["currency"],
            "net_amount": str(net), "tax_amount": str(tax), "gross_amount": str(net + tax),
            "points_deduction": str(points), "payment_method": c["method"], "status": "PAID" if c["paid"] else "PENDING"}


def closing(mapper: Mapper, period: str) -> Mapper:
    """Month-end close: ``period`` closes and the month after it opens."""
    year, month = int(period[:4]), int(period[5:])
    following = f"{year + month // 12:04d}-{month % 12 + 1:02d}"
    books = {n: replace(b, closed_periods=b.closed_periods | {period},
                        open_periods=None if b.open_periods is None else (b.open_periods - {period}) | {following})
             for n, b in mapper.ledger.books.items()}
    return Mapper(mapper.rules, ledger=replace(mapper.ledger, books=books))


@dataclass
class StreamRun:
    vouchers: list[Voucher]  #: everything journaled, in order
    rows: dict[int, dict[str, Any] | None]  #: the source database at the end
    closed_when_booked: list[tuple[Voucher, frozenset[str]]]
    mapper: Mapper  #: with the periods closed at the end


#: ``(event, mapper) → result``: maps against the ledger's state and journals what it returns
Journaling = Callable[[ChangeEvent, Mapper], MapResult]


def stream_ledger(ops: Sequence[tuple[str, Any, Any]], journal: Journaling) -> StreamRun:
    mapper = Mapper(RULESET)
    db: dict[int, dict[str, Any] | None] = {}
    written: dict[int, list[dict[str, Any]]] = defaultdict(list)
    lsn = 100
    out: list[Voucher] = []
    booked: list[tuple[Voucher, frozenset[str]]] = []
    closed: set[str] = set()
    for kind, oid, arg in ops:
        lsn += 1
        if kind == "close":
            if arg not in closed and not (arg == "2026-12" and "2026-11" not in closed):
                closed.add(arg)  # periods close in order; December closes only after November
                mapper = closing(mapper, arg)
            continue
        current = db.get(oid)
        if kind == "revert":  # A → B → A: the same content again must be a new voucher, not the first one
            if len(written[oid]) < 2:
                continue
            kind, row = "write", written[oid][-2]
        elif kind == "write":
            row = order_row(oid, arg)
        if kind == "write":
            written[oid].append(row)
            ev = event("pos", "sales_order", "u" if current else "c", after=row, before=current, lsn=lsn,
                       mode="precise")
            db[oid] = row
        elif kind == "delete":
            if current is None:
                continue
            ev = event("pos", "sales_order", "d", before=current, lsn=lsn, mode="precise")
            db[oid] = None
        else:  # the same row read again by a new snapshot, in whatever decimal mode
            if current is None:
                continue
            ev = event("pos", "sales_order", "r", after=current, lsn=lsn, mode=arg, snapshot="true")
        result = journal(ev, mapper)
        assert not result.rejections, (ev, result.rejections)
        out.extend(result.vouchers)
        booked.extend((v, frozenset(closed)) for v in result.vouchers)
    return StreamRun(out, db, booked, mapper)


def _net(vouchers: Sequence[Voucher]) -> dict[tuple[Any, ...], Decimal]:
    """Signed local and transaction amounts per account, dimension and currency (zero entries dropped)."""
    net: dict[tuple[Any, ...], Decimal] = defaultdict(Decimal)
    for v in vouchers:
        for e in v.entries:
            sign = 1 if e.side.value == "debit" else -1
            k = (e.account, tuple(sorted(e.dimensions.items())), e.currency)
            net[(*k, "local")] += sign * e.amount
            net[(*k, "for")] += sign * e.amount_for
    return {k: v for k, v in net.items() if v != 0}


def check_ledger(run: StreamRun) -> None:
    keys = [v.key for v in run.vouchers]
    assert len(keys) == len(set(keys)), "a voucher key was journaled twice"
    by_key = {v.key: v for v in run.vouchers}
    per_period: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for v in run.vouchers:
        assert v.debit_total == v.credit_total, v
        per_period[(v.book, f"{v.date:%Y-%m}")] += v.debit_total - v.credit_total
    assert all(x == 0 for x in per_period.values())
    reversed_ = Counter(v.reverses for v in run.vouchers if v.kind is VoucherKind.REVERSAL)
    assert all(n == 1 for n in reversed_.values()), "a voucher was reversed twice"
    for v in run.vouchers:
        if v.kind is VoucherKind.REVERSAL:
            original = by_key[str(v.reverses)]
            assert not _net([original, v]), "a reversal does not net its original to zero"
            assert v.date >= original.date, "a reversal predates the voucher it cancels"
    for v, closed in run.closed_when_booked:
        assert f"{v.date:%Y-%m}" not in closed, f"booked into closed period {v.date:%Y-%m}"
        assert v.original_date is None or v.original_date <= v.date
    in_force = {v.key for v in run.vouchers if v.kind is not VoucherKind.REVERSAL} - set(reversed_)
    per_row = Counter(by_key[k].source.row for k in in_force)
    assert all(n == 1 for n in per_row.values()), "two vouchers in force for one row"
    fresh = Mapper(RULESET)
    for oid in IDS:
        row_vouchers = [v for v in run.vouchers if v.source.row.pk == f'{{"id":{oid}}}']
        latest = run.rows.get(oid)
        expected: list[Voucher] = []
        if latest is not None:
            result = fresh.map(event("pos", "sales_order", after=latest, mode="precise"))
            assert not result.rejections, result
            expected = list(result.vouchers)
        assert _net(row_vouchers) == _net(expected), f"order {oid}: the ledger does not show its latest state"


def in_memory() -> Journaling:
    ledger = InMemoryLedger()

    def journal(ev: ChangeEvent, mapper: Mapper) -> MapResult:
        result = mapper.map(ev, ledger)
        ledger.apply(result)
        return result
    return journal


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(ABAB)
@given(streams)
def test_random_streams_keep_the_ledger_right(ops: list[tuple[str, Any, Any]]) -> None:
    check_ledger(stream_ledger(ops, in_memory()))


def test_the_checks_catch_a_voucher_posted_twice() -> None:
    """The property's checks can fail: a journal that forgets what it holds (no prior vouchers) double-posts."""
    ops = [("write", 1, {"net": 10000, "tax": 1300, "points": 0, "method": "CASH", "channel": "STORE",
                         "day": date(2026, 11, 12), "paid": True, "currency": "CNY", "company": "100"}),
           ("resnapshot", 1, "string")]

    def forgetful(ev: ChangeEvent, mapper: Mapper) -> MapResult:
        return mapper.map(ev, InMemoryLedger())
    try:
        check_ledger(stream_ledger(ops, forgetful))
    except AssertionError as e:
        assert "journaled twice" in str(e) or "in force" in str(e)
    else:
        raise AssertionError("a double post went unnoticed")
