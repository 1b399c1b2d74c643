"""Mapping rules and checks: every rejection reason with a real offending event, change semantics, rule errors."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from connector.ledger import ReasonCode, VoucherKind, check_voucher, render_entry
from connector.mapping import InMemoryLedger, Mapper, RuleError, load_rules
from connector.mapping._golden import run_golden
from tests.unit.helpers import RULES, event, only_rejection, rules_with, sale


@pytest.fixture(scope="module")
def mapper() -> Mapper:
    return Mapper(load_rules(RULES))


# --------------------------------------------------------------------------- golden files
def test_shipped_golden_files_pass_in_every_decimal_mode() -> None:
    from connector.mapping._golden import load_table_schemas

    rules = load_rules(RULES)
    checked, failures = run_golden(rules, schemas=load_table_schemas(RULES.parent / "schemas"))
    assert checked >= 36 and failures == [], "\n".join(map(str, failures))


def test_golden_runner_detects_a_wrong_expectation(tmp_path: Path) -> None:
    wrong = (RULES / "golden" / "payroll.yaml").read_text().replace("credit 2221.02 268.50", "credit 2221.02 268.49")
    d = rules_with(tmp_path)
    (d / "golden").mkdir()
    (d / "golden" / "payroll.yaml").write_text(wrong)
    _, failures = run_golden(load_rules(d))
    assert len(failures) == 1 and "268.49" in failures[0].problem and "268.50" in failures[0].problem


# --------------------------------------------------------------------------- rejection reasons
def test_no_rule(mapper: Mapper) -> None:
    r = mapper.map(event("crm", "contacts", after={"id": 1}))
    assert only_rejection(r) is ReasonCode.NO_RULE and "crm" in r.rejections[0].message


def test_truncate_without_rule_is_skipped(mapper: Mapper) -> None:
    r = mapper.map(event("crm", "contacts", "t"))
    assert r.skipped and not r.rejections


def test_an_ignored_table_is_skipped_with_its_reason(mapper: Mapper) -> None:
    r = mapper.map(event("pos", "sales_order_line", after={"id": 7, "order_id": 1}))
    assert not r.rejections and not r.vouchers
    assert r.skipped and "order header" in r.skipped
    # another system's table of the same name is not covered by that entry
    assert only_rejection(mapper.map(event("mes", "sales_order_line", after={"id": 7}))) is ReasonCode.NO_RULE


def test_a_table_both_ignored_and_mapped_is_a_rule_error(tmp_path: Path) -> None:
    d = rules_with(tmp_path, extra_ignore="kind: ignore\ntables:\n  - {system: pos, table: sales_order, reason: x}\n")
    with pytest.raises(RuleError) as e:
        load_rules(d)
    assert "extra_ignore.yaml:3 tables[0]: pos.sales_order is both ignored and mapped" in str(e.value)


def test_no_primary_key(mapper: Mapper) -> None:
    ev = event("pos", "sales_order", after=sale())
    from dataclasses import replace

    r = mapper.map(replace(ev, key=None))
    assert only_rejection(r) is ReasonCode.NO_PRIMARY_KEY


def test_missing_field_names_the_field(mapper: Mapper) -> None:
    row = sale()
    del row["tax_amount"]
    r = mapper.map(event("pos", "sales_order", after=row))
    assert only_rejection(r) is ReasonCode.MISSING_FIELD
    assert r.rejections[0].field == "row.tax_amount" and r.rejections[0].rule == "pos-sale"


def test_binary_floats_give_the_voucher_precise_decimals_give(mapper: Mapper) -> None:
    precise = mapper.map(event("pos", "sales_order", after=sale(net_amount=Decimal("100.10"),
                                                                tax_amount=Decimal("13.01"),
                                                                gross_amount=Decimal("113.11"))))
    double = mapper.map(event("pos", "sales_order", after=sale(net_amount=100.1, tax_amount=13.01,
                                                               gross_amount=113.11, points_deduction=0.0)))
    assert double.vouchers and [render_entry(e) for e in double.vouchers[0].entries] == [
        "debit 1001 113.11", "credit 6001.01 100.10", "credit 2221.01.05 13.01"]
    assert double.vouchers[0].key == precise.vouchers[0].key
    assert all(isinstance(e.amount, Decimal) for e in double.vouchers[0].entries)


def test_more_than_two_decimals_is_rejected_not_rounded(mapper: Mapper) -> None:
    r = mapper.map(event("pos", "sales_order", after=sale(net_amount=Decimal("100.004"),
                                                          gross_amount=Decimal("113.004"))))
    assert only_rejection(r) is ReasonCode.TOO_MANY_DECIMALS
    assert "113.004" in r.rejections[0].message and "CNY's 2" in r.rejections[0].message


def test_a_difference_in_the_source_amounts_is_unbalanced_never_a_rounding_line(mapper: Mapper) -> None:
    # pos-sale has a rounding rule (max 0.05), but gross ≠ net + tax is a data error, even by one cent
    r = mapper.map(event("pos", "sales_order", after=sale(tax_amount=Decimal("13.01"))))
    assert only_rejection(r) is ReasonCode.UNBALANCED
    assert r.rejections[0].value == "-0.01"
    assert "debits 113.00 ≠ credits 113.01 CNY (difference -0.01)" in r.rejections[0].message
    r = mapper.map(event("pos", "sales_order", after=sale(tax_amount=Decimal("13.10"))))
    assert only_rejection(r) is ReasonCode.UNBALANCED and "difference -0.10" in r.rejections[0].message


def test_unknown_non_leaf_and_frozen_accounts(tmp_path: Path) -> None:
    lookups = (RULES / "lookups.yaml").read_text()
    d = rules_with(tmp_path, lookups=lookups.replace('STORE: "6001.01"', 'STORE: "6001.01", POPUP: "6001", '
                                                     'OUTLET: "6711", KIOSK: "6009.99"'))
    with pytest.raises(RuleError) as e:
        load_rules(d)  # lookup values are checked against the chart at load time
    assert "'6009.99' is not in the chart of accounts" in str(e.value)
    d = rules_with(tmp_path / "2", lookups=lookups.replace('STORE: "6001.01"', 'STORE: "6001.01", POPUP: "6001", '
                                                                              'OUTLET: "6711"'))
    m = Mapper(load_rules(d))
    assert only_rejection(m.map(event("pos", "sales_order", after=sale(channel="POPUP")))) \
        is ReasonCode.NON_LEAF_ACCOUNT
    assert only_rejection(m.map(event("pos", "sales_order", after=sale(channel="OUTLET")))) \
        is ReasonCode.FROZEN_ACCOUNT
    # An account that only shows up at run time (computed) is caught by the check.
    expr_rule = (RULES / "pos-sale.yaml").read_text().replace(
        'account: {lookup: sales_revenue_accounts, key: "row.channel"}', 'account: {expr: "row.revenue_account"}')
    m = Mapper(load_rules(rules_with(tmp_path / "3", **{"pos-sale": expr_rule})))
    r = m.map(event("pos", "sales_order", after=sale(revenue_account="6009.99")))
    assert only_rejection(r) is ReasonCode.UNKNOWN_ACCOUNT and r.rejections[0].value == "6009.99"


def test_missing_dimension_uses_kingdee_wording(mapper: Mapper) -> None:
    r = mapper.map(event("pos", "sales_order", after=sale(payment_method="CREDIT")))
    assert only_rejection(r) is ReasonCode.MISSING_DIMENSION
    assert r.rejections[0].message == "第1行分录：科目（1122-应收账款）设置的下列必录维度未录入或不可用：客户"


def test_closed_period_and_unknown_book(mapper: Mapper, tmp_path: Path) -> None:
    moved = mapper.map(event("pos", "sales_order", after=sale(order_date="2026-10-31")))
    assert moved.vouchers[0].date.isoformat() == "2026-11-01"  # reverse_in: first_open_period (the default)
    assert moved.vouchers[0].original_date and moved.vouchers[0].original_date.isoformat() == "2026-10-31"
    ledger = (RULES / "ledger.yaml").read_text().replace("reverse_in: first_open_period", "reverse_in: original_period")
    strict = Mapper(load_rules(rules_with(tmp_path, ledger=ledger)))
    r = strict.map(event("pos", "sales_order", after=sale(order_date="2026-10-31")))
    assert only_rejection(r) is ReasonCode.CLOSED_PERIOD and "2026-10 of book 001" in r.rejections[0].message
    r = mapper.map(event("pos", "sales_order", after=sale(company_code="999")))
    assert only_rejection(r) is ReasonCode.MISSING_FIELD and "company_books" in r.rejections[0].message


def test_permission_denied_for_a_system_posting_to_cash(tmp_path: Path) -> None:
    sneaky = (RULES / "mes-cost.yaml").read_text().replace("id: mes-cost", "id: mes-scrap-sale").replace(
        "account: {lookup: mes_debit, key: \"row.cost_type\"}", 'account: "1001"')
    m = Mapper(load_rules(rules_with(tmp_path, **{"mes-cost": sneaky})))
    r = m.map(event("mes", "work_order_cost", after={"id": 1, "work_order_no": "WO1", "material_code": "M1",
                                                     "cost_type": "MATERIAL", "company_code": "100",
                                                     "posting_date": "2026-11-12", "quantity": Decimal("1"),
                                                     "amount": Decimal("10.00")}))
    assert only_rejection(r) is ReasonCode.PERMISSION_DENIED
    assert "'mes' may not post to account 1001" in r.rejections[0].message


def test_currency_not_allowed_and_inconsistent(tmp_path: Path) -> None:
    ledger = (RULES / "ledger.yaml").read_text().replace('{number: "1001", name: 库存现金}',
                                                         '{number: "1001", name: 库存现金, currencies: [CNY]}')
    m = Mapper(load_rules(rules_with(tmp_path, ledger=ledger)))
    r = m.map(event("pos", "sales_order", after=sale(currency="USD", order_date="2026-11-20")))
    assert only_rejection(r) is ReasonCode.CURRENCY_NOT_ALLOWED
    local = (RULES / "purchase-invoice.yaml").read_text().replace(
        '    amount: "row.tax_amount"', '    amount: "row.tax_amount"\n    local_amount: "row.tax_amount"')
    m = Mapper(load_rules(rules_with(tmp_path / "2", **{"purchase-invoice": local})))
    r = m.map(event("purchasing", "purchase_invoice", after={
        "id": 3, "invoice_no": "PI3", "supplier_code": "S003", "supplier_class": "A", "region": "NORTH",
        "company_code": "100", "invoice_date": "2026-11-12", "category": "INVENTORY", "expense_item": None,
        "department_code": None, "currency": "USD", "exchange_rate": Decimal("7.12"),
        "net_amount": Decimal("100.00"), "tax_amount": Decimal("13.00"), "gross_amount": Decimal("113.00"),
        "payment_terms": "TRANSFER"}))
    codes = {x.code for x in r.rejections}
    assert ReasonCode.CURRENCY_INCONSISTENT in codes and not r.vouchers


def test_no_exchange_rate(mapper: Mapper) -> None:
    r = mapper.map(event("pos", "sales_order", after=sale(currency="EUR")))
    assert only_rejection(r) is ReasonCode.NO_EXCHANGE_RATE and r.rejections[0].value == "EUR@2026-11-12"


def test_a_currency_outside_the_books_table_is_unknown(mapper: Mapper) -> None:
    r = mapper.map(event("pos", "sales_order", after=sale(currency="JPY")))
    assert only_rejection(r) is ReasonCode.UNKNOWN_CURRENCY
    assert "'JPY' is not in book 001's currency table (CNY, EUR, USD)" in r.rejections[0].message


def test_invalid_date(mapper: Mapper) -> None:
    r = mapper.map(event("pos", "sales_order", after=sale(order_date="someday")))
    assert only_rejection(r) is ReasonCode.INVALID_DATE and r.rejections[0].field == "voucher.date"


def test_expression_error_on_bad_types(mapper: Mapper) -> None:
    r = mapper.map(event("pos", "sales_order", after=sale(gross_amount="lots")))
    assert only_rejection(r) is ReasonCode.EXPRESSION_ERROR


def test_empty_voucher(mapper: Mapper) -> None:
    r = mapper.map(event("pos", "sales_order", after=sale(net_amount=Decimal(0), tax_amount=Decimal(0),
                                                          gross_amount=Decimal(0))))
    assert only_rejection(r) is ReasonCode.EMPTY_VOUCHER


def test_limits_mark_for_review_by_pattern() -> None:
    m = Mapper(load_rules(RULES))
    base = {"supplier_code": "S009", "supplier_class": "B", "region": "SOUTH", "company_code": "100",
            "invoice_date": "2026-11-12", "category": "INVENTORY", "expense_item": None, "department_code": None,
            "currency": "CNY", "exchange_rate": Decimal(1), "payment_terms": "TRANSFER"}
    for i in range(30):  # a steady pattern around 1,000
        net = Decimal(1000 + (i % 7) * 10)
        r = m.map(event("purchasing", "purchase_invoice", after={**base, "id": i, "invoice_no": f"P{i}",
                                                                  "net_amount": net, "tax_amount": Decimal("0.00"),
                                                                  "gross_amount": net}, lsn=i))
        assert r.vouchers and not r.vouchers[0].needs_review
    spike = Decimal("50000.00")
    r = m.map(event("purchasing", "purchase_invoice", after={**base, "id": 99, "invoice_no": "P99",
                                                              "net_amount": spike, "tax_amount": Decimal("0.00"),
                                                              "gross_amount": spike}, lsn=99))
    assert r.vouchers and r.vouchers[0].needs_review and "S009's recent pattern" in r.vouchers[0].review_reasons[0]


def test_balance_check_cannot_be_skipped(mapper: Mapper) -> None:
    r = mapper.map(event("pos", "sales_order", after=sale()))
    with pytest.raises(ValueError, match="balance"):
        check_voucher(r.vouchers[0], mapper.ledger, skip=["balance"])


def test_one_rejection_means_no_voucher_for_the_event(tmp_path: Path) -> None:
    second = (RULES / "pos-sale.yaml").read_text().replace("id: pos-sale", "id: pos-sale-copy").replace(
        "gross_amount - row.points_deduction", "gross_amount - row.points_deduction + row.tip")
    m = Mapper(load_rules(rules_with(tmp_path, **{"pos-sale-copy": second})))
    r = m.map(event("pos", "sales_order", after=sale()))
    assert not r.vouchers and [x.rule for x in r.rejections] == ["pos-sale-copy"]


# --------------------------------------------------------------------------- change semantics
def _modes(tmp_path: Path, mode: str) -> Mapper:
    text = (RULES / "pos-sale.yaml").read_text().replace("on_update: reverse_and_repost", f"on_update: {mode}")
    return Mapper(load_rules(rules_with(tmp_path, **{"pos-sale": text})))


def test_post_delta_posts_only_the_difference(tmp_path: Path) -> None:
    m, led = _modes(tmp_path, "post_delta"), InMemoryLedger()
    for ev in (event("pos", "sales_order", after=sale(), lsn=1),
               event("pos", "sales_order", "u", after=sale(net_amount=Decimal("200.00"), tax_amount=Decimal("26.00"),
                                                           gross_amount=Decimal("226.00")), lsn=2)):
        led.apply(m.map(ev, led))
    delta = led.posted[-1]
    assert delta.kind is VoucherKind.DELTA and delta.reverses == led.posted[0].key
    assert [render_entry(e) for e in delta.entries] == ["debit 1001 113.00", "credit 6001.01 100.00",
                                                        "credit 2221.01.05 13.00"]


def test_ignore_mode_keeps_the_first_voucher(tmp_path: Path) -> None:
    m, led = _modes(tmp_path, "ignore"), InMemoryLedger()
    led.apply(m.map(event("pos", "sales_order", after=sale(), lsn=1), led))
    r = m.map(event("pos", "sales_order", "u", after=sale(net_amount=Decimal("200.00"), tax_amount=Decimal("26.00"),
                                                          gross_amount=Decimal("226.00")), lsn=2), led)
    assert r.skipped and not r.vouchers


def test_delete_without_a_prior_voucher_is_skipped(mapper: Mapper) -> None:
    r = mapper.map(event("pos", "sales_order", "d", before=sale()))
    assert r.skipped and not r.rejections


def test_keys_come_from_source_identity_not_kafka(mapper: Mapper) -> None:
    from dataclasses import replace

    from connector.events import KafkaCoordinates

    ev = event("pos", "sales_order", after=sale(), lsn=77)
    a = mapper.map(replace(ev, kafka=KafkaCoordinates(topic="pos.public.sales_order", partition=0, offset=5)))
    b = mapper.map(replace(ev, kafka=KafkaCoordinates(topic="pos.replay", partition=3, offset=90210)))
    c = mapper.map(event("pos", "sales_order", "r", after=sale(), lsn=78))  # the same row read again
    d = mapper.map(event("pos", "sales_order", after=sale(order_no="SO1-B", payment_method="ALIPAY"), lsn=77))
    assert a.vouchers[0].key == b.vouchers[0].key == c.vouchers[0].key != d.vouchers[0].key


# --------------------------------------------------------------------------- rule files
def test_rule_errors_name_file_line_and_key(tmp_path: Path) -> None:
    d = rules_with(tmp_path, broken="""kind: rule
id: broken
match: {system: pos, table: sales_order}
voucher:
  book: "001"
  date: "row.order_date"
  explanation: "x"
  colour: blue
entries:
  - {side: debit, account: "1001", amount: "row.gross_amount +"}
  - {side: credit, account: "9999", amount: "row.__class__.__mro__"}
  - {side: credit, account: "1001", amount: "cycler.__init__.__globals__"}
""")
    with pytest.raises(RuleError) as e:
        load_rules(d)
    problems = "\n".join(e.value.problems)
    assert "broken.yaml:8 voucher.colour: unknown key" in problems
    (d / "broken.yaml").write_text((d / "broken.yaml").read_text().replace("  colour: blue\n", ""))
    with pytest.raises(RuleError) as e:
        load_rules(d)
    problems = "\n".join(e.value.problems)
    assert "broken.yaml:9 entries[0].amount: invalid expression 'row.gross_amount +'" in problems
    assert "broken.yaml:11 entries[2].amount: unknown name 'cycler'" in problems


def test_sandbox_refuses_calls_and_attribute_tricks() -> None:
    from connector.mapping import Compiler, EvalError, ExprError

    c = Compiler()
    for src in ["open('/etc/passwd')", "row.__class__.__bases__", "lookup.__globals__", "().__class__",
                "range(10)", "row.items()"]:
        with pytest.raises((ExprError, EvalError)):
            c.expression(src)({"row": {"x": 1}})
    assert c.expression("0.1 + 0.2")({}) == Decimal("0.3")  # literals are exact decimals


# --------------------------------------------------------------------------- found by the decode → map fuzz test
@pytest.mark.parametrize("changes, code", [
    ({"net_amount": "1E40"}, ReasonCode.INVALID_AMOUNT),  # beyond any ledger line
    ({"order_date": -719163}, ReasonCode.INVALID_DATE),  # a Debezium Date day number before year 1
])
def test_out_of_range_values_are_rejections_not_crashes(mapper: Mapper, changes: dict[str, Any],
                                                        code: ReasonCode) -> None:
    assert only_rejection(mapper.map(event("pos", "sales_order", after=sale(**changes)))) is code
