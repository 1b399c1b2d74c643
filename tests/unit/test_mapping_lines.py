"""Documents with lines: a header mapped together with its lines of the same source transaction."""

from __future__ import annotations

import shutil
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import pytest

from connector.events import ChangeEvent, TransactionInfo
from connector.ledger import ReasonCode, Side
from connector.mapping import InMemoryLedger, Mapper, RuleError, load_rules
from tests.unit.helpers import RULES, event, sale

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "rules" / "pos-sale-by-line.yaml"


def _grouped_rules(tmp_path: Path, text: str | None = None) -> Path:
    target = tmp_path / "rules"
    shutil.copytree(RULES, target, ignore=shutil.ignore_patterns("golden", "pos-sale.yaml"))
    (target / "pos-sale-by-line.yaml").write_text(text if text is not None else EXAMPLE.read_text("utf-8"), "utf-8")
    return target


@pytest.fixture()
def mapper(tmp_path: Path) -> Mapper:
    return Mapper(load_rules(_grouped_rules(tmp_path)))


def _tx(ev: ChangeEvent, txid: str = "571", order: int = 1) -> ChangeEvent:
    return replace(ev, transaction=TransactionInfo(id=f"{txid}:{1000 + order}", total_order=order,
                                                   data_collection_order=order))


def line(id_: int, order_id: int, no: int, amount: str, sku: str = "SKU001", op: str = "c") -> ChangeEvent:
    img = {"id": id_, "order_id": order_id, "line_no": no, "sku": sku, "quantity": Decimal("1.0000"),
           "amount": Decimal(amount)}
    return _tx(event("pos", "sales_order_line", op, after=img if op != "d" else None,
                     before=img if op == "d" else None, key={"id": id_}), order=no + 1)


def test_header_with_its_lines_gives_one_voucher_with_a_revenue_line_per_order_line(mapper: Mapper) -> None:
    header = _tx(event("pos", "sales_order", after=sale(gross_amount="113.00", net_amount="100.00",
                                                         tax_amount="13.00")))
    lines = [line(11, 1, 1, "56.50", "SKU001"), line(12, 1, 2, "56.50", "SKU002"),
             line(99, 2, 1, "10.00", "SKU009")]  # another order's line in the same transaction
    result = mapper.map(header, lines=lines)
    assert not result.rejections, result.rejections
    (v,) = result.vouchers
    revenue = [e for e in v.entries if e.account == "6001.01"]
    assert [(e.amount, e.dimensions.get("FLEX8")) for e in revenue] == [(Decimal("50.00"), "SKU001"),
                                                                     (Decimal("50.00"), "SKU002")]
    assert v.debit_total == Decimal("113.00")
    assert result.grouped == (0, 1)  # the other order's line is not this voucher's
    assert "(2 行)" in v.explanation


def test_per_line_rounding_goes_to_an_explicit_rounding_line(mapper: Mapper) -> None:
    header = _tx(event("pos", "sales_order", after=sale(gross_amount="100.00", net_amount="88.50",
                                                         tax_amount="11.50")))
    lines = [line(11, 1, 1, "33.33"), line(12, 1, 2, "33.33"), line(13, 1, 3, "33.34")]
    (v,) = mapper.map(header, lines=lines).vouchers
    revenue = sum(e.amount for e in v.entries if e.account == "6001.01")
    rounding = [e for e in v.entries if e.account == "6603.03"]
    assert revenue == Decimal("88.51")  # 29.50 + 29.50 + 29.51: per-line rounding adds a cent
    assert len(rounding) == 1 and rounding[0].amount == Decimal("0.01") and rounding[0].side is Side.DEBIT


def test_a_header_without_its_lines_is_rejected_with_the_reason(mapper: Mapper) -> None:
    header = _tx(event("pos", "sales_order", after=sale()))
    in_tx = mapper.map(header, lines=[line(99, 2, 1, "10.00")])
    assert [r.code for r in in_tx.rejections] == [ReasonCode.LINES_MISSING]
    assert "source transaction 571 carries none of them" in in_tx.rejections[0].message
    ungrouped = mapper.map(header)  # transaction metadata off: the event arrives alone
    assert [r.code for r in ungrouped.rejections] == [ReasonCode.LINES_MISSING]
    assert "transaction metadata off" in ungrouped.rejections[0].message


def test_deleted_lines_are_not_lines_and_cancellation_needs_none(mapper: Mapper) -> None:
    ledger = InMemoryLedger()
    header = _tx(event("pos", "sales_order", after=sale()))
    created = mapper.map(header, ledger, lines=[line(11, 1, 1, "113.00")])
    ledger.apply(created)
    assert created.vouchers
    # the order is cancelled in a transaction that also deletes its line: a reversal, no lines needed
    cancel = _tx(event("pos", "sales_order", "u", before=sale(), after=sale(status="CANCELLED"), lsn=2), "572")
    result = mapper.map(cancel, ledger, lines=[line(11, 1, 1, "113.00", op="d")])
    assert not result.rejections
    (rev,) = result.vouchers
    assert rev.reverses == created.vouchers[0].key
    assert result.grouped == ()


def test_lines_not_required_posts_header_entries_only(tmp_path: Path) -> None:
    text = EXAMPLE.read_text("utf-8").replace("join: \"line.order_id == row.id\"",
                                              "join: \"line.order_id == row.id\"\n  required: false")
    text = text.replace("  - side: credit\n    account: \"2221.01.05\"",
                        "  - side: credit\n    when: \"lines | length == 0\"\n    account: {lookup: sales_revenue_accounts,"
                        " key: \"row.channel\"}\n    amount: \"row.net_amount\"\n  - side: credit\n"
                        "    account: \"2221.01.05\"")
    m = Mapper(load_rules(_grouped_rules(tmp_path, text)))
    (v,) = m.map(event("pos", "sales_order", after=sale())).vouchers
    assert sorted((e.account, e.amount) for e in v.entries if e.side is Side.CREDIT) == [
        ("2221.01.05", Decimal("13.00")), ("6001.01", Decimal("100.00"))]


def test_for_each_without_lines_section_is_a_rule_error(tmp_path: Path) -> None:
    text = EXAMPLE.read_text("utf-8").replace("lines:\n  table: sales_order_line\n  join: \"line.order_id == row.id\"\n",
                                              "")
    with pytest.raises(RuleError, match="for_each: lines need a lines: section"):
        load_rules(_grouped_rules(tmp_path, text))


def test_line_names_are_unknown_to_rules_without_lines(tmp_path: Path) -> None:
    text = (RULES / "pos-sale.yaml").read_text("utf-8").replace('amount: "row.tax_amount"', 'amount: "line.amount"')
    target = tmp_path / "r"
    shutil.copytree(RULES, target, ignore=shutil.ignore_patterns("golden"))
    (target / "pos-sale.yaml").write_text(text, "utf-8")
    with pytest.raises(RuleError, match="unknown name 'line'"):
        load_rules(target)


def test_sum_filter_is_exact() -> None:
    from connector.mapping._expr import Compiler, EVENT_NAMES

    total = Compiler(names=EVENT_NAMES | {"lines"}).expression("lines | sum(attribute='amount')")
    assert total({"lines": [{"amount": Decimal("0.10")}] * 3}) == Decimal("0.30")
    # text (string mode) and binary floats (double mode) are summed as the numbers they show, exactly
    assert total({"lines": [{"amount": "0.10"}, {"amount": 0.1}, {"amount": Decimal("0.1")}]}) == Decimal("0.30")
    with pytest.raises(Exception, match="is text, not a number"):
        total({"lines": [{"amount": "ten"}]})
