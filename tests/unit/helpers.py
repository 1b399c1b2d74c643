"""Shared helpers of the pure tests: Debezium-shaped events of the sample tables, rule directories, results,
the published Debezium fixture files."""

from __future__ import annotations

import functools
import re
import shutil
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from connector.events import ChangeEvent
from connector.ledger import ReasonCode, Voucher, VoucherKind
from connector.mapping import Mapper, MapResult, RuleSet, load_rules
from connector.mapping._golden import golden_event, load_table_schemas

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "rules"
SCHEMAS = load_table_schemas(ROOT / "schemas")
#: Published Debezium change events (origin and licence of each in SOURCES.md there).
FIXTURES = ROOT / "tests" / "fixtures" / "debezium"

SALE: dict[str, Any] = {"id": 1, "order_no": "SO1", "channel": "STORE", "company_code": "100", "customer_code": None,
                        "order_date": "2026-11-12", "currency": "CNY", "net_amount": "100.00",
                        "tax_amount": "13.00", "gross_amount": "113.00", "points_deduction": "0.00",
                        "payment_method": "CASH", "status": "PAID"}


def sale(**changes: Any) -> dict[str, Any]:
    return {**SALE, **changes}


def event(system: str, table: str, op: str = "c", *, after: dict[str, Any] | None = None,
          before: dict[str, Any] | None = None, key: dict[str, Any] | None = None, lsn: int = 1,
          ts_ms: int = 1794535200000, mode: str | None = None, snapshot: str = "false") -> ChangeEvent:
    """A change event as Debezium's JSON converter would send it, decoded by the real decoder. ``mode``
    (precise | string | double) encodes the table's decimal columns (from schemas/) that way."""
    def fix(img: dict[str, Any] | None) -> dict[str, Any] | None:
        if img is None:
            return None
        return {k: date.fromisoformat(v) if k.endswith("_date") and isinstance(v, str) and v[:4].isdigit() else v
                for k, v in img.items()}
    return golden_event({"op": op, "source": {"system": system, "table": table, "lsn": lsn, "ts_ms": ts_ms,
                                              "snapshot": snapshot},
                         "key": key if key is not None else {"id": (after or before or {}).get("id", 1)},
                         "after": fix(after), "before": fix(before)},
                        row_type=SCHEMAS.get((system, table)) if mode else None, mode=mode)


def rules_with(tmp_path: Path, **files: str) -> Path:
    """The shipped rules (without golden files) plus/overridden by extra files."""
    target = tmp_path / "rules"
    shutil.copytree(RULES, target, ignore=shutil.ignore_patterns("golden"))
    for name, text in files.items():
        (target / f"{name}.yaml").write_text(text, encoding="utf-8")
    return target


def summarizing_pos_rule(*, close: str = "02:00 next day in the book's time zone", late: str = "adjust",
                         by: str = "[book, date, row.channel, row.payment_method]",
                         explanation: str = "POS 日汇总 {{ key.channel }} {{ key.date }} {{ key.payment_method }} "
                                            "共{{ count }}笔") -> str:
    """The shipped POS sale rule with a ``summarize:`` block: one voucher per book, day, channel and payment
    method (by default)."""
    text = (RULES / "pos-sale.yaml").read_text(encoding="utf-8")
    return text + (f"summarize:\n  by: {by}\n  close: \"{close}\"\n  late: {late}\n"
                   f"  explanation: \"{explanation}\"\n")


def only_rejection(result: MapResult) -> ReasonCode:
    assert not result.vouchers, result
    assert result.rejections, result
    return result.rejections[0].code


def normalise_doc_fixture(text: str) -> str:
    """Make a Debezium documentation example parse: drop ``// <n>`` callouts, ``...`` elisions, trailing commas."""
    text = re.sub(r"//\s*<\d+>", "", text)
    text = re.sub(r"\{\s*\.\.\.\s*\}", "{}", text)
    text = re.sub(r"^\s*\.\.\.\s*$", "", text, flags=re.M)
    text = re.sub(r",(\s*[}\]])", r"\1", text)
    return text


def fixture_bytes(name: str) -> bytes:
    """A fixture file's bytes (documentation examples normalised so that they parse)."""
    raw = (FIXTURES / name).read_text(encoding="utf-8")
    if name.endswith(".txt"):
        raw = normalise_doc_fixture(raw)
    return raw.encode()


# --------------------------------------------------------------------------- random streams of business changes
# (tests/unit/test_ledger_streams.py in memory, tests/integration/test_ledger_streams.py through the journal)
@functools.cache
def stream_rules() -> RuleSet:
    """The shipped rules, loaded once."""
    return load_rules(RULES)


IDS = (1, 2, 3)

order_content = st.fixed_dictionaries({
    "net": st.integers(1, 10**7), "tax": st.integers(0, 10**6), "points": st.integers(0, 500),
    "method": st.sampled_from(["CASH", "WECHAT", "ALIPAY", "CARD"]), "channel": st.sampled_from(["STORE", "ONLINE"]),
    "day": st.dates(date(2026, 11, 1), date(2026, 12, 31)), "paid": st.booleans(),
    "currency": st.sampled_from(["CNY", "CNY", "USD"]), "company": st.sampled_from(["100", "200"]),
})
stream_op = st.one_of(
    st.tuples(st.just("write"), st.sampled_from(IDS), order_content),
    st.tuples(st.just("delete"), st.sampled_from(IDS), st.none()),
    st.tuples(st.just("resnapshot"), st.sampled_from(IDS), st.sampled_from(["precise", "string", "double"])),
    st.tuples(st.just("close"), st.none(), st.sampled_from(["2026-11", "2026-12"])),
    st.tuples(st.just("revert"), st.sampled_from(IDS), st.none()),  # back to the content before the last write
)
#: a random stream of changes to the POS orders IDS and month-end closes
streams = st.lists(stream_op, min_size=1, max_size=30)
_ORDER_A = {"net": 10000, "tax": 1300, "points": 0, "method": "CASH", "channel": "STORE",
            "day": date(2026, 11, 12), "paid": True, "currency": "CNY", "company": "100"}
#: A → B → A → B on one row, a re-snapshot, a delete and the same content inserted again: the key chain
ABAB: list[tuple[str, Any, Any]] = [("write", 1, _ORDER_A), ("write", 1, {**_ORDER_A, "method": "WECHAT"}),
                                    ("revert", 1, None), ("revert", 1, None), ("resnapshot", 1, "double"),
                                    ("delete", 1, None), ("write", 1, {**_ORDER_A, "method": "WECHAT"})]


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
    mapper = Mapper(stream_rules())
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
    fresh = Mapper(stream_rules())
    for oid in IDS:
        row_vouchers = [v for v in run.vouchers if v.source.row.pk == f'{{"id":{oid}}}']
        latest = run.rows.get(oid)
        expected: list[Voucher] = []
        if latest is not None:
            result = fresh.map(event("pos", "sales_order", after=latest, mode="precise"))
            assert not result.rejections, result
            expected = list(result.vouchers)
        assert _net(row_vouchers) == _net(expected), f"order {oid}: the ledger does not show its latest state"
