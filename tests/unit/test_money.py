"""Money must be right: one test (or more) per finding of the accountant's review (issue "Money must be right").

Each test names the observation it makes impossible. Events go through the real decoder (JSON converter
records written by ``golden_event``), as production events do.
"""

from __future__ import annotations

import time
import tracemalloc
from dataclasses import replace
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.ledger import REVERSAL_PREFIX, Book, ReasonCode, Side, Voucher, VoucherKind, check_voucher, render_entry
from connector.mapping import InMemoryLedger, Mapper, MapResult, RuleError, load_rules
from connector.mapping._golden import run_golden
from tests.unit.helpers import RULES, SCHEMAS, event, only_rejection, rules_with, sale

RULESET = load_rules(RULES)
PURCHASE: dict[str, Any] = {
    "id": 3, "invoice_no": "PI3", "supplier_code": "S003", "supplier_class": "A", "region": "NORTH",
    "company_code": "100", "invoice_date": "2026-11-20", "category": "INVENTORY", "expense_item": None,
    "department_code": None, "currency": "USD", "exchange_rate": "7.1350", "net_amount": "100.00",
    "tax_amount": "13.00", "gross_amount": "113.00", "payment_terms": "TRANSFER"}


def lines(result: MapResult, i: int = 0) -> list[str]:
    return [render_entry(e) for e in result.vouchers[i].entries]


def with_rule(tmp_path: Path, name: str, old: str, new: str) -> Mapper:
    text = (RULES / f"{name}.yaml").read_text("utf-8")
    assert old in text, old
    return Mapper(load_rules(rules_with(tmp_path, **{name: text.replace(old, new)})))


# --------------------------------------------------------------------------- 1. exact amounts in every mode
def test_string_mode_text_is_added_never_concatenated(tmp_path: Path) -> None:
    m = with_rule(tmp_path, "pos-sale", 'amount: "row.net_amount"', 'amount: "row.net_amount + row.tax_amount - '
                                                                   'row.tax_amount"')
    r = m.map(event("pos", "sales_order", after=sale(net_amount="100", tax_amount="13", gross_amount="113")))
    assert lines(r) == ["debit 1001 113.00", "credit 6001.01 100.00", "credit 2221.01.05 13.00"]
    bad = m.map(event("pos", "sales_order", after=sale(tax_amount="thirteen")))
    assert only_rejection(bad) is ReasonCode.EXPRESSION_ERROR
    assert "'thirteen' is text, not a number" in bad.rejections[0].message


def test_the_shipped_pos_rule_posts_string_mode_sales() -> None:
    r = Mapper(RULESET).map(event("pos", "sales_order", after=sale(), mode="string"))
    assert isinstance(r.vouchers[0].entries[0].amount_for, Decimal)
    assert lines(r) == ["debit 1001 113.00", "credit 6001.01 100.00", "credit 2221.01.05 13.00"]


@pytest.mark.parametrize("row", [
    sale(),
    sale(currency="USD", order_date="2026-11-20", net_amount="1.00", tax_amount="0.13", gross_amount="1.13",
         payment_method="CARD"),
    sale(payment_method="CREDIT", customer_code="C0007", points_deduction="6.00", net_amount="200.00",
         tax_amount="26.00", gross_amount="226.00", channel="ONLINE"),
])
def test_the_same_row_gives_the_same_voucher_in_precise_string_and_double_modes(row: dict[str, Any]) -> None:
    results = [Mapper(RULESET).map(event("pos", "sales_order", after=row, mode=m))
               for m in ("precise", "string", "double")]
    assert all(r.vouchers for r in results), results
    assert results[0].vouchers == results[1].vouchers == results[2].vouchers  # keys, dates, lines, explanations


def test_golden_cases_are_decoded_like_real_events_and_checked_in_every_mode(tmp_path: Path) -> None:
    # A rule that prints an amount as it arrived gives different text in double mode (113.0): the runner
    # says so, naming the modes; rounding it in the template makes all three agree.
    d = rules_with(tmp_path, **{"pos-sale": (RULES / "pos-sale.yaml").read_text("utf-8").replace(
        '"POS {{ row.order_no }} 销售收入"', '"POS {{ row.order_no }} 销售收入 {{ row.gross_amount }}"')})
    (d / "golden").mkdir()
    (d / "golden" / "one.yaml").write_text(
        "kind: golden\ncases:\n  - name: one sale\n    events:\n      - op: c\n"
        "        source: {system: pos, table: sales_order, lsn: 1}\n        key: {id: 1}\n"
        "        after: {id: 1, order_no: SO1, channel: STORE, company_code: '100', customer_code: null,\n"
        "                order_date: 2026-11-12, currency: CNY, net_amount: '100.00', tax_amount: '13.00',\n"
        "                gross_amount: '113.00', points_deduction: '0.00', payment_method: CASH, status: PAID}\n"
        "    expect:\n      - vouchers:\n          - entries: [debit 1001 113.00, credit 6001.01 100.00, "
        "credit 2221.01.05 13.00]\n", "utf-8")
    _, failures = run_golden(load_rules(d), schemas=SCHEMAS)
    assert [(f.mode, "differs from precise decimals" in f.problem) for f in failures] == [("double", True)]
    fixed = (d / "pos-sale.yaml").read_text("utf-8").replace("{{ row.gross_amount }}", "{{ row.gross_amount | round }}")
    (d / "pos-sale.yaml").write_text(fixed, "utf-8")
    assert run_golden(load_rules(d), schemas=SCHEMAS) == (1, [])
    # Without a schema the event is sent as written: quoted amounts arrive as text, as in string mode.
    ev = event("pos", "sales_order", after=sale())
    assert ev.after is not None and ev.after["gross_amount"] == "113.00"


def test_a_float_converts_exactly_via_its_shortest_repr() -> None:
    r = Mapper(RULESET).map(event("pos", "sales_order", after=sale(net_amount=0.1, tax_amount=0.2,
                                                                   gross_amount=0.3, points_deduction=0.0)))
    assert lines(r) == ["debit 1001 0.30", "credit 6001.01 0.10", "credit 2221.01.05 0.20"]
    lossy = Mapper(RULESET).map(event("pos", "sales_order", after=sale(net_amount=0.1, tax_amount=0.2,
                                                                       gross_amount=0.1 + 0.2)))
    assert only_rejection(lossy) is ReasonCode.TOO_MANY_DECIMALS and "0.30000000000000004" in lossy.rejections[0].message


# --------------------------------------------------------------------------- 2. no expression can crash the service
def test_string_repetition_cannot_take_seconds_or_gigabytes(tmp_path: Path) -> None:
    m = with_rule(tmp_path, "pos-sale", '"POS {{ row.order_no }} 销售收入"',
                  '"POS {{ row.order_no * 2000000000 }} 销售收入"')
    tracemalloc.start()
    started = time.perf_counter()
    r = m.map(event("pos", "sales_order", after=sale()))
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert only_rejection(r) is ReasonCode.EXPRESSION_ERROR and r.rejections[0].rule == "pos-sale"
    assert "'SO1' is text, not a number" in r.rejections[0].message
    assert elapsed < 1.0 and peak < 10 * 1024 * 1024


@pytest.mark.parametrize("template, reason", [
    ("{{ row.order_no | replace('', 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx') | replace('', 'yyyyyyyyyyyyyyyyyyyy"
     "yyyyyyyyyyyyyyyyyyyyy') | replace('', 'zzzzzzzzzzzzzzzzzzzzzzz') }}", "replace would build more than"),
    ("{{ (row.order_no ~ row.order_no ~ row.order_no ~ row.order_no) | truncate(99999999999) }}", None),
    ("{{ row.net_amount * 1e20 * 1e20 }}", "beyond 10^30"),
    ("{{ lookup('company_books', row.company_code) | length }}", None),
])
def test_text_length_and_magnitude_are_bounded(tmp_path: Path, template: str, reason: str | None) -> None:
    m = with_rule(tmp_path, "pos-sale", '"POS {{ row.order_no }} 销售收入"', f'"{template}"')
    r = m.map(event("pos", "sales_order", after=sale()))
    if reason is None:
        assert r.vouchers and len(r.vouchers[0].explanation) <= 500
    else:
        assert only_rejection(r) in (ReasonCode.EXPRESSION_ERROR, ReasonCode.INVALID_AMOUNT)
        assert reason in r.rejections[0].message


@pytest.mark.parametrize("failure", [KeyError("x"), RecursionError("deep"), MemoryError(), ZeroDivisionError("z")])
def test_any_exception_while_mapping_one_event_is_that_events_rejection(
        monkeypatch: pytest.MonkeyPatch, failure: BaseException) -> None:
    import connector.mapping._engine as engine

    def boom(*_: Any) -> Any:
        raise failure
    monkeypatch.setattr(engine, "_dimensions", boom)
    r = Mapper(RULESET).map(event("pos", "sales_order", after=sale()))
    assert only_rejection(r) in (ReasonCode.EXPRESSION_ERROR, ReasonCode.INVALID_AMOUNT)
    assert r.rejections[0].rule == "pos-sale" and r.rejections[0].message
    monkeypatch.undo()
    assert Mapper(RULESET).map(event("pos", "sales_order", after=sale())).vouchers  # the next event maps


def test_a_rule_that_works_too_long_on_one_event_is_rejected(tmp_path: Path) -> None:
    text = (RULES.parent / "deploy" / "examples" / "rules" / "pos-sale-by-line.yaml").read_text("utf-8")
    d = rules_with(tmp_path, **{"pos-sale": text})
    header = event("pos", "sales_order", after=sale())
    line = event("pos", "sales_order_line", after={"id": 9, "order_id": 1, "line_no": 1, "sku": "A",
                                                   "quantity": "1", "amount": "113.00"}, key={"id": 9})
    from connector.events import TransactionInfo

    tx = TransactionInfo(id="7:1", total_order=1, data_collection_order=1)
    header, line = replace(header, transaction=tx), replace(line, transaction=tx)
    assert Mapper(load_rules(d)).map(header, lines=[line]).vouchers
    r = Mapper(load_rules(d), time_budget_s=0).map(header, lines=[line])
    assert only_rejection(r) is ReasonCode.EXPRESSION_ERROR and "took longer than 0 s" in r.rejections[0].message


@pytest.mark.parametrize("expr, problem", [
    ("(" * 300 + "row.net_amount" + ")" * 300, "nested"),
    ("row.net_amount" + " + row.net_amount" * 200, "characters; at most 2,000"),
    ("row.net_amount * 1" + "0" * 40, "too large"),
    ("row.order_no ** 2", "Pow is not allowed"),
])
def test_expression_size_and_nesting_are_load_errors_with_file_and_line(tmp_path: Path, expr: str,
                                                                        problem: str) -> None:
    text = (RULES / "pos-sale.yaml").read_text("utf-8").replace('amount: "row.net_amount"', f'amount: "{expr}"')
    with pytest.raises(RuleError) as e:
        load_rules(rules_with(tmp_path, **{"pos-sale": text}))
    assert "pos-sale.yaml:37 entries[2].amount:" in str(e.value) and problem in str(e.value)


# --------------------------------------------------------------------------- 3. a re-read row posts nothing
def test_a_row_read_again_posts_nothing_and_changed_content_reverses_and_reposts() -> None:
    m, led = Mapper(RULESET), InMemoryLedger()

    def run(op: str, lsn: int, **changes: Any) -> MapResult:
        r = m.map(event("pos", "sales_order", op, after=sale(**changes), lsn=lsn, snapshot="true" if op == "r" else
                        "false"), led)
        led.apply(r)
        return r
    first = run("c", 10)
    assert [v.kind for v in first.vouchers] == [VoucherKind.ORIGINAL]
    again = run("r", 99)  # a new snapshot: same content, new LSN
    assert not again.vouchers and not again.rejections and again.skipped and "unchanged" in again.skipped
    changed = run("r", 120, net_amount="90.00", tax_amount="11.70", gross_amount="101.70")
    assert [v.kind for v in changed.vouchers] == [VoucherKind.REVERSAL, VoucherKind.ORIGINAL]
    assert changed.vouchers[0].reverses == first.vouchers[0].key
    back = run("u", 130)  # A → B → A: three distinct vouchers, the third one's key is not the first's
    assert back.vouchers[1].key not in {first.vouchers[0].key, changed.vouchers[1].key}
    deleted = m.map(event("pos", "sales_order", "d", before=sale(), lsn=140), led)
    led.apply(deleted)
    recreated = run("c", 150)  # the same content inserted again after the delete is a new voucher
    assert recreated.vouchers and recreated.vouchers[0].key not in {v.key for v in led.posted[:-1]}


# --------------------------------------------------------------------------- 4. the book's time zone
def _timed_rule(tmp_path: Path, date_expr: str, zone: str = "Asia/Shanghai") -> Mapper:
    text = (RULES / "pos-sale.yaml").read_text("utf-8").replace('date: "row.order_date"', f'date: "{date_expr}"')
    ledger = (RULES / "ledger.yaml").read_text("utf-8").replace("timezone: Asia/Shanghai", f"timezone: {zone}")
    return Mapper(load_rules(rules_with(tmp_path, **{"pos-sale": text, "ledger": ledger})))


def test_a_zoned_timestamp_is_dated_in_the_books_time_zone(tmp_path: Path) -> None:
    from datetime import datetime, timezone

    paid = datetime(2026, 11, 30, 17, 30, tzinfo=timezone.utc)  # 01:30 on 1 December in Shanghai
    ev = event("pos", "sales_order", after=sale(updated_at=paid), mode="precise")
    assert ev.after is not None and ev.after["updated_at"] == paid  # a ZonedTimestamp, as Debezium sends it
    assert _timed_rule(tmp_path, "row.updated_at").map(ev).vouchers[0].date == date(2026, 12, 1)
    assert _timed_rule(tmp_path / "utc", "row.updated_at", "UTC").map(ev).vouchers[0].date == date(2026, 11, 30)


def test_a_local_timestamp_without_zone_keeps_its_wall_clock_date(tmp_path: Path) -> None:
    from datetime import datetime

    ev = event("pos", "sales_order", after=sale(created_at=datetime(2026, 11, 30, 23, 30)), mode="precise")
    assert ev.after is not None and ev.after["created_at"].tzinfo is None  # MicroTimestamp: a wall clock
    assert _timed_rule(tmp_path, "row.created_at").map(ev).vouchers[0].date == date(2026, 11, 30)


def test_ts_ms_derived_dates_are_the_books_local_date(tmp_path: Path) -> None:
    ts_ms = 1796059800000  # 2026-11-30T17:30:00Z
    m = _timed_rule(tmp_path, "millis_ts(source.ts_ms)")
    assert m.map(event("pos", "sales_order", after=sale(), ts_ms=ts_ms)).vouchers[0].date == date(2026, 12, 1)


# --------------------------------------------------------------------------- 5. corrections across closed periods
def _closing(m: Mapper, *periods: str) -> Mapper:
    books = {n: replace(b, closed_periods=b.closed_periods | set(periods)) for n, b in m.ledger.books.items()}
    return Mapper(m.rules, ledger=replace(m.ledger, books=books))


def test_a_correction_of_a_closed_period_is_booked_whole_in_the_first_open_period() -> None:
    led = InMemoryLedger()
    m = Mapper(RULESET)
    led.apply(m.map(event("pos", "sales_order", after=sale(order_date="2026-11-12"), lsn=1), led))
    later = _closing(m, "2026-11")  # November is closed afterwards
    r = later.map(event("pos", "sales_order", "u", after=sale(order_date="2026-11-12", net_amount="90.00",
                                                              tax_amount="11.70", gross_amount="101.70"), lsn=2), led)
    reversal, repost = r.vouchers
    assert (reversal.kind, reversal.date, repost.date) == (VoucherKind.REVERSAL, date(2026, 12, 1), date(2026, 12, 1))
    assert repost.original_date == date(2026, 11, 12) and repost.business_date == date(2026, 11, 12)
    assert reversal.explanation == f"{REVERSAL_PREFIX}POS SO1 销售收入"


def test_the_original_period_policy_rejects_a_correction_of_a_closed_period() -> None:
    led = InMemoryLedger()
    m = Mapper(RULESET)
    led.apply(m.map(event("pos", "sales_order", after=sale(), lsn=1), led))
    closed = _closing(m, "2026-11")
    strict = Mapper(m.rules, ledger=replace(closed.ledger, books={
        n: replace(b, reverse_in="original_period") for n, b in closed.ledger.books.items()}))
    r = strict.map(event("pos", "sales_order", "d", before=sale(), lsn=2), led)
    assert only_rejection(r) is ReasonCode.CLOSED_PERIOD and "reverse_in: original_period" in r.rejections[0].message


def test_a_correction_across_month_end_keeps_reversal_and_repost_in_the_originals_period() -> None:
    led = InMemoryLedger()
    m = Mapper(RULESET)
    led.apply(m.map(event("pos", "sales_order", after=sale(order_date="2026-11-30"), lsn=1), led))
    r = m.map(event("pos", "sales_order", "u", after=sale(order_date="2026-11-30", payment_method="WECHAT"),
                    lsn=2, ts_ms=1796100000000), led)  # corrected on 1 December
    assert [v.date for v in r.vouchers] == [date(2026, 11, 30), date(2026, 11, 30)]


# --------------------------------------------------------------------------- 6. currencies
def test_a_rate_of_zero_or_outside_the_band_is_rejected() -> None:
    m = Mapper(RULESET)
    r = m.map(event("purchasing", "purchase_invoice", after={**PURCHASE, "exchange_rate": "0"}))
    assert only_rejection(r) is ReasonCode.INVALID_RATE
    r = m.map(event("purchasing", "purchase_invoice", after={**PURCHASE, "exchange_rate": "7.9000"}))
    assert only_rejection(r) is ReasonCode.RATE_OUT_OF_BAND
    assert "10.7% away from the rate table's 7.135 (allowed ±5.0%)" in r.rejections[0].message
    assert m.map(event("purchasing", "purchase_invoice", after={**PURCHASE, "exchange_rate": "7.2000"})).vouchers
    r = m.map(event("purchasing", "purchase_invoice", after={**PURCHASE, "exchange_rate": None}))
    assert only_rejection(r) is ReasonCode.NO_EXCHANGE_RATE and "gives no exchange rate for USD" in \
        r.rejections[0].message


def test_a_rate_table_rate_of_zero_is_a_load_error(tmp_path: Path) -> None:
    lookups = (RULES / "lookups.yaml").read_text("utf-8").replace('"7.1200"', '"0"')
    with pytest.raises(RuleError, match=r"rates.USD.HLTX01_SYS.2026-11-01: '0' is not an exchange rate above 0"):
        load_rules(rules_with(tmp_path, lookups=lookups))


def test_a_usd_amount_with_three_decimals_is_rejected() -> None:
    r = Mapper(RULESET).map(event("pos", "sales_order", after=sale(
        currency="USD", order_date="2026-11-20", net_amount="100.005", gross_amount="113.005")))
    assert only_rejection(r) is ReasonCode.TOO_MANY_DECIMALS and "USD amount 113.005" in r.rejections[0].message


def test_a_voucher_in_one_currency_must_balance_in_it_not_only_after_conversion() -> None:
    good = Mapper(RULESET).map(event("pos", "sales_order", after=sale())).vouchers[0]
    e0 = good.entries[0]
    # local amounts balance, USD amounts do not: the check names the transaction currency
    bad = good._replace(entries=tuple(e._replace(currency="USD", rate=Decimal(1)) for e in good.entries[:-1])
                        + (good.entries[-1]._replace(currency="USD", rate=Decimal(1),
                                                     amount_for=good.entries[-1].amount_for + 1),))
    result = check_voucher(bad, RULESET.ledger)
    assert not isinstance(result, Voucher)
    assert any(r.code is ReasonCode.UNBALANCED and "in USD" in r.message for r in result)
    assert e0.side is Side.DEBIT


# --------------------------------------------------------------------------- 8. unknown cases never vanish
def test_a_blank_string_does_not_satisfy_a_required_dimension() -> None:
    r = Mapper(RULESET).map(event("pos", "sales_order", after=sale(payment_method="CREDIT", customer_code="  ")))
    assert only_rejection(r) is ReasonCode.MISSING_DIMENSION


def test_an_implausible_amount_is_held_back_for_review() -> None:
    big = "10000000000000.00"  # 10^13 in a 2-decimal currency
    r = Mapper(RULESET).map(event("pos", "sales_order", after=sale(net_amount=big, tax_amount="0.00",
                                                                   gross_amount=big)))
    assert only_rejection(r) is ReasonCode.AMOUNT_OUT_OF_RANGE and "implausible" in r.rejections[0].message


def test_negative_amounts_only_where_the_rule_allows_them(tmp_path: Path) -> None:
    refund = sale(net_amount="-100.00", tax_amount="-13.00", gross_amount="-113.00")
    assert only_rejection(Mapper(RULESET).map(event("pos", "sales_order", after=refund))) \
        is ReasonCode.NEGATIVE_AMOUNT
    m = with_rule(tmp_path, "pos-sale", "on_update: reverse_and_repost", "on_update: reverse_and_repost\n"
                                                                         "allow_negative: true")
    assert lines(m.map(event("pos", "sales_order", after=refund)))[0] == "debit 1001 -113.00"


def test_a_bank_line_of_unknown_direction_is_unmatched_not_skipped() -> None:
    line = {"id": 5, "bank_account": "6222000011112222", "company_code": "100", "statement_date": "2026-11-20",
            "direction": "??", "amount": "10.00", "currency": "CNY", "counterparty_code": "C1", "reference": "B5"}
    r = Mapper(RULESET).map(event("bank", "statement_line", after=line))
    assert only_rejection(r) is ReasonCode.UNMATCHED
    assert "matches none of the rules" in r.rejections[0].message and "coverage: every_row" in r.rejections[0].message


# --------------------------------------------------------------------------- 9. cutover
def _cutover(tmp_path: Path, spec: str) -> Mapper:
    ledger = (RULES / "ledger.yaml").read_text("utf-8") + f"cutover:\n  pos: {spec}\n"
    return Mapper(load_rules(rules_with(tmp_path, ledger=ledger)))


def test_snapshot_rows_before_the_cutover_date_are_opening_state_and_later_changes_reverse_them(
        tmp_path: Path) -> None:
    m, led = _cutover(tmp_path, "{date: 2026-11-15}"), InMemoryLedger()
    old = m.map(event("pos", "sales_order", "r", after=sale(), snapshot="true", lsn=5), led)
    led.apply(old)
    assert [v.opening for v in old.vouchers] == [True]
    recent = m.map(event("pos", "sales_order", "r", after=sale(id=2, order_date="2026-11-20"), key={"id": 2},
                         snapshot="true", lsn=5), led)
    assert [v.opening for v in recent.vouchers] == [False]  # on or after the cutover date: posted
    fix = m.map(event("pos", "sales_order", "u", after=sale(payment_method="WECHAT"), lsn=9), led)
    assert [(v.kind, v.opening) for v in fix.vouchers] == [(VoucherKind.REVERSAL, False),
                                                           (VoucherKind.ORIGINAL, False)]
    assert fix.vouchers[0].reverses == old.vouchers[0].key


def test_changes_below_the_cutover_lsn_are_history(tmp_path: Path) -> None:
    m, led = _cutover(tmp_path, "{lsn: 1000}"), InMemoryLedger()
    for op, lsn, changes in (("r", 900, {}), ("u", 950, {"payment_method": "ALIPAY"})):
        r = m.map(event("pos", "sales_order", op, after=sale(**changes), lsn=lsn), led)
        led.apply(r)
        assert r.vouchers and all(v.opening for v in r.vouchers)
    r = m.map(event("pos", "sales_order", "d", before=sale(), lsn=1001), led)
    assert [(v.kind, v.opening) for v in r.vouchers] == [(VoucherKind.REVERSAL, False)]


# --------------------------------------------------------------------------- 11. reversals an accountant recognises
def test_a_reversal_says_冲销_in_voucher_and_lines_and_is_never_dated_before_the_original() -> None:
    m, led = Mapper(RULESET), InMemoryLedger()
    led.apply(m.map(event("pos", "sales_order", after=sale(order_date="2026-11-20"), lsn=1), led))
    r = m.map(event("pos", "sales_order", "d", before=sale(order_date="2026-11-20"), lsn=2,
                    ts_ms=1794535200000), led)  # the delete's ts_ms is 2026-11-18, before the order
    (reversal,) = r.vouchers
    assert reversal.date == date(2026, 11, 20)
    assert reversal.explanation.startswith(REVERSAL_PREFIX)
    assert all(e.explanation.startswith(REVERSAL_PREFIX) for e in reversal.entries)
    assert reversal.entries[1].explanation == f"{REVERSAL_PREFIX}POS SO1 销售收入"  # the header's, as the original


# --------------------------------------------------------------------------- 12. permissions default to deny
def test_a_system_without_permissions_posts_nothing_unless_the_ledger_allows_by_default(tmp_path: Path) -> None:
    ledger = (RULES / "ledger.yaml").read_text("utf-8").replace("  bank:\n    accounts: [\"1002\", \"1122\", \"2202\"]\n",
                                                                "")
    assert "  bank:" not in ledger.split("permissions:")[1].split("limits:")[0]
    line = {"id": 5, "bank_account": "6222000011112222", "company_code": "100", "statement_date": "2026-11-20",
            "direction": "IN", "amount": "10.00", "currency": "CNY", "counterparty_code": "C1", "reference": "B5"}
    r = Mapper(load_rules(rules_with(tmp_path, ledger=ledger))).map(event("bank", "statement_line", after=line))
    assert only_rejection(r) is ReasonCode.PERMISSION_DENIED and "no entry under permissions" in \
        r.rejections[0].message
    allowed = ledger.replace("permissions:\n", "permissions:\n  default: allow\n")
    assert Mapper(load_rules(rules_with(tmp_path / "2", ledger=allowed))).map(
        event("bank", "statement_line", after=line)).vouchers


def test_books_know_their_first_open_period() -> None:
    book = Book(number="1", open_periods=frozenset({"2026-12", "2027-01"}), closed_periods=frozenset({"2026-11"}))
    assert book.first_open_on_or_after(date(2026, 11, 5)) == date(2026, 12, 1)
    assert book.first_open_on_or_after(date(2026, 12, 5)) == date(2026, 12, 5)
    assert book.first_open_on_or_after(date(2027, 2, 1)) is None


# --------------------------------------------------------------------------- 9. text the ledger cannot store
_TEXT_FIELDS = ("explanation", "group", "book", "data_centre", "entry.account", "entry.explanation", "entry.unit",
                "entry.settle_no", "entry.dimension")


@given(st.sampled_from(_TEXT_FIELDS), st.integers(0, 10), st.text(max_size=5), st.text(max_size=5))
@settings(max_examples=150, deadline=None)
def test_a_nul_in_any_voucher_text_is_rejected_naming_the_field(where: str, line: int, before: str,
                                                                after: str) -> None:
    # PostgreSQL text and jsonb refuse NUL characters (MySQL text may hold them): a voucher carrying one is
    # rejected with the field and the text shown as \u0000, on the fast path as on the registry's loop.
    r = Mapper(RULESET).map(event("pos", "sales_order", after=sale(payment_method="CREDIT", customer_code="C001")))
    (good,) = r.vouchers
    nul = f"{before}\x00{after}"
    i = line % len(good.entries)
    if where.startswith("entry."):
        e = good.entries[i]
        name = where.removeprefix("entry.")
        changed = e._replace(dimensions={**e.dimensions, "FLEX6": nul}) if name == "dimension" else \
            e._replace(**cast(Any, {name: nul}))
        bad = good._replace(entries=good.entries[:i] + (changed,) + good.entries[i + 1:])
        field = f"entries[{i}].dimensions.customer" if name == "dimension" else f"entries[{i}].{name}"
    else:
        bad = good._replace(**cast(Any, {where: nul}))
        field = where
    for result in (check_voucher(bad, RULESET.ledger), check_voucher(bad, RULESET.ledger, skip=["review_amount"])):
        assert not isinstance(result, Voucher)
        texts = [x for x in result if x.code is ReasonCode.INVALID_TEXT]
        assert [(x.field, x.value) for x in texts] == [(field, nul.replace("\x00", "\\u0000"))]
        assert all("\x00" not in f"{x.message}{x.value}{x.field}" for x in result)
    assert not isinstance(check_voucher(bad._replace(key=good.key), RULESET.ledger), Voucher)
    assert check_voucher(good, RULESET.ledger) == good


def test_rejections_and_decode_failures_never_carry_a_nul_into_the_journal() -> None:
    from connector.events import DecodeFailure
    from connector.ledger import Rejection

    r = Rejection(code=ReasonCode.EXPRESSION_ERROR, message="cannot compute 'A\x00' - 1", field="x\x00",
                  value="A\x00")
    assert (r.message, r.field, r.value) == ("cannot compute 'A\\u0000' - 1", "x\\u0000", "A\\u0000")
    f = DecodeFailure(reason="bad value 'B\x00'", stage="value", kafka=None, raw_value=b"B\x00")
    assert f.reason == "bad value 'B\\u0000'" and f.raw_value == b"B\x00"  # the record itself is kept as it was
