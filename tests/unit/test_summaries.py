"""Summary vouchers (汇总凭证), the pure parts: the ``summarize:`` block, the summary key a voucher carries, when a
summary closes, and adding a summary up (Hypothesis: the sum is exactly its rows, whatever changed while open)."""

from __future__ import annotations

from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.journal._summaries import close_due
from connector.ledger import (
    InMemoryLedger,
    RowRef,
    SourceRef,
    SummaryRef,
    Voucher,
    VoucherKind,
    add_up,
    carried,
    summary_group,
    summary_parts,
    voucher_from_avro,
    voucher_from_json,
    voucher_to_avro,
    voucher_to_json,
)
from connector.mapping import Mapper, RuleError, load_rules
from connector.mapping._lint import lint_rules
from tests.unit.helpers import event, order_content, order_row, rules_with, sale, summarizing_pos_rule

SHANGHAI = ZoneInfo("Asia/Shanghai")


@pytest.fixture(scope="module")
def mapper(tmp_path_factory: pytest.TempPathFactory) -> Mapper:
    return Mapper(load_rules(rules_with(tmp_path_factory.mktemp("r"), **{"pos-sale": summarizing_pos_rule()})))


def test_a_summarizing_rule_gives_its_vouchers_their_summary_key(mapper: Mapper) -> None:
    (v,) = mapper.map(event("pos", "sales_order", "c", after=sale(channel="ONLINE", payment_method="WECHAT"))).vouchers
    assert v.summary is not None and v.summary.close == "02:00 next day in the book's time zone"
    assert v.summary.tz == "Asia/Shanghai" and v.summary.late == "adjust"
    assert summary_parts(v) == (("book", v.book), ("date", "2026-11-12"), ("channel", "ONLINE"),
                                ("payment_method", "WECHAT"))
    other = mapper.map(event("pos", "sales_order", "c", after=sale(id=2, channel="ONLINE",
                                                                   payment_method="WECHAT"))).vouchers[0]
    assert summary_group(other) == summary_group(v)  # another row, same key: the same summary
    card = mapper.map(event("pos", "sales_order", "c", after=sale(id=3, payment_method="CARD"))).vouchers[0]
    assert summary_group(card) != summary_group(v)


def test_a_row_whose_key_changes_moves_even_with_the_same_amounts(mapper: Mapper) -> None:
    ledger = InMemoryLedger()
    first = mapper.map(event("pos", "sales_order", "c", after=sale()), ledger)
    ledger.apply(first)
    moved = mapper.map(event("pos", "sales_order", "u", before=sale(), after=sale(channel="ONLINE"), lsn=2), ledger)
    assert [v.kind for v in moved.vouchers] == [VoucherKind.REVERSAL, VoucherKind.ORIGINAL]
    assert moved.vouchers[1].key != first.vouchers[0].key
    assert summary_parts(moved.vouchers[1])[2] == ("channel", "ONLINE")


def test_an_empty_summary_key_part_is_a_rejection_not_a_guess(tmp_path: Path) -> None:
    by_customer = Mapper(load_rules(rules_with(tmp_path, **{"pos-sale": summarizing_pos_rule(
        by="[book, date, row.customer_code]", explanation="{{ key.customer_code }} {{ count }}")})))
    result = by_customer.map(event("pos", "sales_order", "c", after=sale(customer_code=None)))
    assert [r.code.value for r in result.rejections] == ["MISSING_FIELD"]
    assert "summary key part 'customer_code' is empty" in result.rejections[0].message
    assert result.rejections[0].field == "summarize.by[2]"
    assert by_customer.map(event("pos", "sales_order", "c", after=sale(customer_code="C001"))).vouchers


@pytest.mark.parametrize(("block", "message"), [
    ('summarize: {by: [book], close: "tomorrow", explanation: x}', "expected \"HH:MM next day"),
    ('summarize: {by: [book], close: "25:00 next day", explanation: x}', "not a time of day"),
    ('summarize: {by: [book, "row.a + 1"], close: on command, explanation: x}', "give it a name"),
    ('summarize: {by: [row.channel, {channel: row.payment_method}], close: on command, explanation: x}',
     "used twice"),
    ('summarize: {by: [book], close: on command, explanation: x, late: never}', "late"),
])
def test_a_bad_summarize_block_is_refused_at_load(tmp_path: Path, block: str, message: str) -> None:
    text = summarizing_pos_rule().split("summarize:")[0] + block + "\n"
    with pytest.raises(RuleError, match=message):
        load_rules(rules_with(tmp_path, **{"pos-sale": text}))


def test_mapping_check_finds_a_misspelled_field_in_the_summary_key(tmp_path: Path) -> None:
    rules = load_rules(rules_with(tmp_path, **{"pos-sale": summarizing_pos_rule(by="[book, date, row.chanel]",
                                                                                     explanation="{{ count }}")}))
    problems = [p for p in lint_rules(rules, schemas_dir=Path(__file__).resolve().parents[2] / "schemas")
                if p.severity == "error"]
    assert any("summarize.by[2]" in str(p) and "did you mean 'channel'" in str(p) for p in problems), problems


# --------------------------------------------------------------------------- when a summary closes
def _with(close: str, day: date = date(2026, 11, 12), late: str = "adjust") -> Voucher:
    return Voucher(key="k", book="001", date=day, group="PRE001", explanation="", entries=(),
                   source=SourceRef(RowRef("pos", "t", "{}"), "1", "c"), rule_id="r", rule_version="1",
                   summary=SummaryRef((("book", None),), close, late, "Asia/Shanghai"))


def test_a_daily_summary_closes_the_next_day_at_that_time_in_the_books_zone() -> None:
    now = datetime(2026, 11, 12, 9, 0, tzinfo=timezone.utc)
    due = close_due(_with("02:00 next day in the book's time zone"), now=now, first=True)
    assert due == datetime(2026, 11, 13, 2, 0, tzinfo=SHANGHAI)
    assert due is not None and due.astimezone(timezone.utc) == datetime(2026, 11, 12, 18, 0, tzinfo=timezone.utc)
    # a later summary of the key (late: next_summary) closes at the next 02:00 after now
    late = close_due(_with("02:00 next day"), now=datetime(2026, 11, 20, 19, 0, tzinfo=timezone.utc), first=False)
    assert late == datetime(2026, 11, 22, 2, 0, tzinfo=SHANGHAI)  # 19:00 UTC is 03:00 on the 21st in Shanghai
    early = close_due(_with("02:00 next day"), now=datetime(2026, 11, 20, 17, 0, tzinfo=timezone.utc), first=False)
    assert early == datetime(2026, 11, 21, 2, 0, tzinfo=SHANGHAI)


def test_periodic_summaries_close_at_the_end_of_their_window_and_on_command_never_by_itself() -> None:
    now = datetime(2026, 11, 12, 9, 7, 31, tzinfo=timezone.utc)
    assert close_due(_with("every 15 minutes"), now=now, first=True) == datetime(2026, 11, 12, 9, 15,
                                                                                  tzinfo=timezone.utc)
    assert close_due(_with("every 1 minute"), now=now, first=False) == datetime(2026, 11, 12, 9, 8,
                                                                                 tzinfo=timezone.utc)
    assert close_due(_with("on command"), now=now, first=True) is None


# --------------------------------------------------------------------------- adding up
writes = st.lists(st.tuples(st.integers(1, 6), order_content), min_size=1, max_size=25)


@settings(max_examples=150, deadline=None)
@given(writes=writes, deletes=st.lists(st.integers(1, 6), max_size=4))
def test_a_summary_is_exactly_the_sum_of_the_rows_it_carries(mapper: Mapper, writes: list[tuple[int, Any]],
                                                             deletes: list[int]) -> None:
    """Rows written, rewritten and deleted while their summary is open: per summary key, the summary voucher's
    lines are the rows' latest content added up — exactly, balanced, no zero lines, nothing when all is gone."""
    ledger = InMemoryLedger()
    db: dict[int, dict[str, Any] | None] = {}
    contributions: dict[str, list[Voucher]] = {}
    lsn = 0
    for oid, content in [*writes, *((d, None) for d in deletes)]:
        lsn += 1
        before = db.get(oid)
        after = None if content is None else order_row(oid, {**content, "paid": True})
        if after is None and before is None:
            continue
        op = "d" if after is None else "u" if before else "c"
        result = mapper.map(event("pos", "sales_order", op, before=before, after=after, lsn=lsn, mode="precise"),
                            ledger)
        assert not result.rejections, result.rejections
        ledger.apply(result)
        db[oid] = after
        for v in result.vouchers:
            # a reversal goes where its original went (the journal routes it by the original's summary)
            group = summary_group(v) if v.kind is not VoucherKind.REVERSAL else next(
                g for g, vs in contributions.items() if any(o.key == v.reverses for o in vs))
            contributions.setdefault(group, []).append(v)
    expected: dict[str, list[Voucher]] = {}
    for row in db.values():
        if row is not None:
            (v,) = Mapper(mapper.rules).map(event("pos", "sales_order", "c", after=row, mode="precise")).vouchers
            expected.setdefault(summary_group(v), []).append(v)
    for group, vs in contributions.items():
        summary = add_up(vs, key="s", date=vs[0].date, explanation="汇总", source=vs[0].source)
        live = carried(vs)
        assert live.source_rows == len(expected.get(group, []))
        if group not in expected:
            assert summary is None or all(e.amount == 0 and e.amount_for == 0 for e in summary.entries)
            continue
        assert summary is not None and summary.kind is VoucherKind.SUMMARY
        assert summary.debit_total == summary.credit_total
        assert all(e.amount != 0 or e.amount_for != 0 for e in summary.entries)
        assert _net([summary]) == _net(expected[group])


def _net(vouchers: list[Voucher]) -> dict[tuple[Any, ...], Decimal]:
    net: dict[tuple[Any, ...], Decimal] = {}
    for v in vouchers:
        for e in v.entries:
            k = (e.account, e.side, tuple(sorted(e.dimensions.items())), e.currency, e.rate)
            net[k] = net.get(k, Decimal(0)) + e.amount
            net[(*k, "for")] = net.get((*k, "for"), Decimal(0)) + e.amount_for
    return {k: x for k, x in net.items() if x}


def test_the_summary_key_survives_the_journal_payload_and_avro(mapper: Mapper) -> None:
    (v,) = mapper.map(event("pos", "sales_order", "c", after=sale())).vouchers
    assert voucher_from_json(voucher_to_json(v)) == v
    assert voucher_from_avro(voucher_to_avro(v)).summary == v.summary


def test_the_example_summary_rule_replaces_the_shipped_one_and_passes_mapping_check(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    text = (root / "deploy" / "examples" / "rules" / "pos-sale-summary.yaml").read_text(encoding="utf-8")
    rules = load_rules(rules_with(tmp_path, **{"pos-sale": text}))
    assert [p for p in lint_rules(rules, schemas_dir=root / "schemas") if p.severity == "error"] == []
    (v,) = Mapper(rules).map(event("pos", "sales_order", "c", after={**sale(), "store_code": "SH001"})).vouchers
    assert summary_parts(v)[2:] == (("store_code", "SH001"), ("payment_method", "CASH"))


def test_an_explanation_naming_a_key_part_that_is_not_there_is_refused_at_load(tmp_path: Path) -> None:
    with pytest.raises(RuleError, match=r"key.channel is not a part of the summary key \(summarize.by names: book, "
                                        r"date, store_code\)"):
        load_rules(rules_with(tmp_path, **{"pos-sale": summarizing_pos_rule(by="[book, date, row.store_code]")}))
