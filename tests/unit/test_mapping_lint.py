"""``mapping check`` beyond loading: unknown fields, missing required dimensions, accounts and books outside a
source system's permissions — each found statically, with file:line key and a did-you-mean."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import pytest
from typer.testing import CliRunner

from connector.cli import app
from connector.events import ChangeEvent, KafkaCoordinates, Op, SourceInfo
from connector.mapping import RuleError, load_rules
from connector.mapping._lint import LintProblem, envelope_columns, lint_rules, with_account_suggestions

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "rules"
SCHEMAS = ROOT / "schemas"

LEDGER = """\
kind: ledger
books:
  - {number: "001", name: company 100}
  - {number: "002", name: company 200}
accounts:
  - {number: "1002", name: 银行存款, dimensions: [FF100002]}
  - {number: "2201", name: 应付票据, direction: credit, dimensions: [supplier]}
  - {number: "2202", name: 应付账款, direction: credit, dimensions: [supplier]}
  - {number: "2211", name: 应付职工薪酬, direction: credit, leaf: false}
  - {number: "2211.01", name: 应付职工薪酬-工资, direction: credit, dimensions: [employee]}
  - {number: "2211.02", name: 应付职工薪酬-社会保险费, direction: credit}
  - {number: "6602.10", name: 管理费用-工资, dimensions: [department]}
dimension_labels:
  FF100002: 银行账号
permissions:
  payroll: {accounts: ["2211.*", "6602.1*"]}
  bank: {books: ["001"], accounts: ["1002", "2202"]}
"""

LOOKUPS = """\
kind: lookups
lookups:
  company_books: {"100": "001", "200": "002"}
"""

PAYROLL = """\
kind: rule
id: payroll-accrual
match: {system: payroll, table: payroll_line}
voucher:
  book: "{{ lookup('company_books', row.company_code) }}"
  date: "row.pay_date"
  explanation: "工资 {{ row.period }} {{ row.employee_code }}"
entries:
  - side: debit
    account: "6602.10"
    amount: "row.gross_salary"
    dimensions:
      department: "row.department_code"
  - side: credit
    account: "2211.01"
    amount: "row.gross_salary"
    dimensions:
      employee: "row.employee_code"
"""

BANK_PAYMENT = """\
kind: rule
id: bank-payment
match:
  system: bank
  table: statement_line
voucher:
  book: "001"
  date: "row.statement_date"
  explanation: "银行付款 {{ row.reference }}"
  currency: "row.currency"
entries:
  - side: debit
    account: "2202"
    amount: "row.amount"
    dimensions:
      supplier: "row.counterparty_code"
  - side: credit
    account: "1002"
    amount: "row.amount"
    dimensions:
      FF100002: "row.bank_account"
"""


def rules_dir(tmp_path: Path, ledger: str = LEDGER, **rules: str) -> Path:
    """A rules directory: the minimal ledger and lookups above plus the given rule files (name → text)."""
    d = tmp_path / "rules"
    d.mkdir()
    (d / "ledger.yaml").write_text(ledger, encoding="utf-8")
    (d / "lookups.yaml").write_text(LOOKUPS, encoding="utf-8")
    for name, text in rules.items():
        (d / f"{name}.yaml").write_text(text, encoding="utf-8")
    return d


def line_of(text: str, needle: str) -> int:
    """1-based line of the only line of ``text`` containing ``needle``."""
    found = [n for n, ln in enumerate(text.splitlines(), 1) if needle in ln]
    assert len(found) == 1, (needle, found)
    return found[0]


def lint(d: Path, schemas: Path | None = SCHEMAS, samples: Sequence[ChangeEvent] = ()) -> list[LintProblem]:
    return lint_rules(load_rules(d), schemas_dir=schemas, samples=samples)


# --------------------------------------------------------------------------- the three problems
def test_misspelled_field_is_an_error_with_line_key_and_did_you_mean(tmp_path: Path) -> None:
    text = PAYROLL.replace('employee: "row.employee_code"', 'employee: "row.employe_code"')
    d = rules_dir(tmp_path, payroll=text)
    assert lint(d) == [LintProblem(
        file=str(d / "payroll.yaml"), line=line_of(text, "row.employe_code"), key="entries[1].dimensions.employee",
        message=f"row.employe_code: payroll.payroll_line has no column 'employe_code' (columns from {SCHEMAS}/"
                "payroll.payroll_line.envelope.avsc); did you mean 'employee_code'?")]


def test_fields_in_templates_account_keys_and_key_columns_are_checked(tmp_path: Path) -> None:
    text = (PAYROLL.replace("{{ row.period }}", "{{ after.perod }}")
            .replace('match: {system: payroll, table: payroll_line}',
                     'match: {system: payroll, table: payroll_line}\nkey_columns: [run_id, employee_cod]'))
    d = rules_dir(tmp_path, payroll=text)
    found = [(p.line, p.key, p.severity, p.message.split(":")[0], p.message.rsplit("; ", 1)[1]) for p in lint(d)]
    assert found == [
        (line_of(text, "key_columns"), "key_columns[1]", "error", "'employee_cod'",
         "did you mean 'employee_code'?"),
        (line_of(text, "after.perod"), "voucher.explanation", "error", "after.perod", "did you mean 'period'?"),
    ]


def test_missing_required_dimension_names_account_dimension_and_entry(tmp_path: Path) -> None:
    text = PAYROLL.replace('    dimensions:\n      employee: "row.employee_code"\n', "")
    d = rules_dir(tmp_path, payroll=text)
    assert [str(p) for p in lint(d)] == [
        f"{d / 'payroll.yaml'}:{line_of(text, '2211.01')} entries[1].account: account '2211.01' (应付职工薪酬-工资) "
        "requires dimension 员工 (employee/FLEX7), which entries[1] does not give: add dimensions: {employee: …}"]


def test_missing_custom_dimension_via_account_cases(tmp_path: Path) -> None:
    text = BANK_PAYMENT.replace('    account: "1002"', '    account:\n      cases:\n'
                                '        - {when: "row.amount > 0", account: "1002"}\n      default: "2202"')
    text = text.replace('      FF100002: "row.bank_account"', '      supplier: "row.counterparty_code"')
    d = rules_dir(tmp_path, bank=text)
    assert [(p.line, p.key, p.message) for p in lint(d)] == [
        (line_of(text, 'account: "1002"'), "entries[1].account.cases[0].account",
         "account '1002' (银行存款) requires dimension 银行账号 (FF100002), which entries[1] does not give: "
         "add dimensions: {FF100002: …}")]


def test_account_outside_permissions_is_an_error_with_did_you_mean(tmp_path: Path) -> None:
    text = BANK_PAYMENT.replace('account: "2202"', 'account: "2201"')
    d = rules_dir(tmp_path, bank=text)
    assert lint(d) == [LintProblem(
        file=str(d / "bank.yaml"), line=line_of(text, '"2201"'), key="entries[0].account",
        message=f"source system 'bank' may not post to account '2201' (应付票据): not in permissions.bank.accounts "
                f"[1002, 2202] in {d / 'ledger.yaml'}; did you mean '2202' (应付账款)?")]


def test_accounts_of_a_lookup_and_the_book_are_checked_against_permissions(tmp_path: Path) -> None:
    lookups_rule = BANK_PAYMENT.replace('book: "001"', "book: \"{{ lookup('company_books', row.company_code) }}\"")
    d = rules_dir(tmp_path, bank=lookups_rule)
    assert [(p.key, p.message) for p in lint(d)] == [
        ("voucher.book", "source system 'bank' may not post to book '002' (from lookup table 'company_books', "
                         "key '200'): not in permissions.bank.books [001]")]


def test_non_leaf_and_rounding_accounts(tmp_path: Path) -> None:
    text = PAYROLL.replace('account: "2211.01"', 'account: "2211"') + 'rounding: {account: "2211.01"}\n'
    d = rules_dir(tmp_path, payroll=text)
    assert [(p.key, p.message) for p in lint(d)] == [
        ("entries[1].account", "account '2211' (应付职工薪酬) is not a leaf account (明细科目): Kingdee rejects entries "
                               "on it; use one of 2211.01, 2211.02"),
        ("entries[1].account", "source system 'payroll' may not post to account '2211' (应付职工薪酬): not in "
                               f"permissions.payroll.accounts [2211.*, 6602.1*] in {d / 'ledger.yaml'}; did you mean "
                               "'2211.01' (应付职工薪酬-工资)?"),
        ("rounding.account", "rounding account '2211.01' (应付职工薪酬-工资) requires dimension 员工 (employee/FLEX7), "
                             "but the rounding line carries no dimensions: use an account without required "
                             "dimensions"),
    ]


# --------------------------------------------------------------------------- severity and coverage
def test_unknown_field_guarded_by_default_is_a_warning_not_an_error(tmp_path: Path) -> None:
    text = PAYROLL.replace("{{ row.employee_code }}", "{{ row.memo | default('') }}")
    text = text.replace('employee: "row.employee_code"',
                        "employee: \"row.emp_no if row.emp_no is defined else row.employee_code\"")
    d = rules_dir(tmp_path, payroll=text)
    problems = lint(d)
    assert [(p.line, p.key, p.severity) for p in problems] == [
        (line_of(text, "row.memo"), "voucher.explanation", "warning"),
        (line_of(text, "row.emp_no"), "entries[1].dimensions.employee", "warning"),
    ]
    assert str(problems[0]).endswith(
        "voucher.explanation: warning: row.memo: payroll.payroll_line has no column 'memo' (columns from "
        f"{SCHEMAS}/payroll.payroll_line.envelope.avsc); it is guarded (| default / is defined), so it always "
        "takes the fallback")


def test_entry_when_guard_makes_the_fields_of_the_entry_optional(tmp_path: Path) -> None:
    text = PAYROLL.replace('    account: "6602.10"', '    when: "row.bonus is defined"\n    account: "6602.10"')
    text = text.replace('amount: "row.gross_salary"\n    dimensions:\n      department',
                        'amount: "row.bonus"\n    dimensions:\n      department', 1)
    d = rules_dir(tmp_path, payroll=text)
    assert [(p.key, p.severity) for p in lint(d)] == [("entries[0].when", "warning"), ("entries[0].amount", "warning")]


def test_match_when_guard_makes_the_field_optional_in_the_whole_rule(tmp_path: Path) -> None:
    text = PAYROLL.replace("match: {system: payroll, table: payroll_line}",
                           "match: {system: payroll, table: payroll_line, when: \"row.bonus is defined\"}")
    text = text.replace("{{ row.employee_code }}", "{{ row.bonus }}")
    d = rules_dir(tmp_path, payroll=text)
    assert [(p.line, p.key, p.severity) for p in lint(d)] == [
        (3, "match.when", "warning"), (line_of(text, "{{ row.bonus }}"), "voucher.explanation", "warning")]


def test_shipped_rules_lint_clean_against_shipped_schemas() -> None:
    assert lint_rules(load_rules(RULES), schemas_dir=SCHEMAS) == []
    # ... and the schemas were read, not skipped: a misspelling would be found
    payroll = envelope_columns(json.loads((SCHEMAS / "payroll.payroll_line.envelope.avsc").read_text()))
    assert payroll is not None and "employee_code" in payroll and "net_pay" in payroll


def test_table_without_known_columns_is_not_checked(tmp_path: Path) -> None:
    text = PAYROLL.replace('employee: "row.employee_code"', 'employee: "row.employe_code"')
    d = rules_dir(tmp_path, payroll=text)
    assert [str(p) for p in lint(d, schemas=tmp_path / "no-such-dir")] == [
        f"{d / 'payroll.yaml'}:3 match.table: note: fields of payroll.payroll_line not checked: no "
        f"{tmp_path / 'no-such-dir' / 'payroll.payroll_line.envelope.avsc'}, no --sample events and no golden case "
        "for it"]
    assert [p.severity for p in lint(d, schemas=None)] == ["info"]


def test_golden_events_give_the_columns_when_there_is_no_schema(tmp_path: Path) -> None:
    text = PAYROLL.replace('employee: "row.employee_code"', 'employee: "row.employe_code"')
    d = rules_dir(tmp_path, payroll=text)
    (d / "golden").mkdir()
    (d / "golden" / "payroll.yaml").write_text(
        "kind: golden\ncases:\n  - name: one\n    events:\n      - op: c\n"
        "        source: {system: payroll, table: payroll_line}\n        key: {id: 1}\n"
        "        after: {id: 1, period: 2026-11, employee_code: E1, department_code: D1, company_code: '100',\n"
        "                pay_date: 2026-11-20, gross_salary: '1.00'}\n    expect: [{skipped: true}]\n",
        encoding="utf-8")
    assert [(p.key, p.severity, p.message.rsplit("; ", 1)[1]) for p in lint(d, schemas=None)] == [
        ("entries[1].dimensions.employee", "error", "did you mean 'employee_code'?")]


def test_sample_events_give_the_line_table_columns(tmp_path: Path) -> None:
    rule = """\
kind: rule
id: payroll-run
match: {system: payroll, table: payroll_line}
lines:
  table: payroll_item
  join: "line.line_id == row.id"
voucher:
  book: "001"
  date: "row.pay_date"
  explanation: "工资 {{ lines | sum(attribute='amt') }}"
entries:
  - side: debit
    for_each: lines
    account: "6602.10"
    amount: "line.amount"
    dimensions: {department: "line.dept"}
  - side: credit
    account: "2211.02"
    amount: "lines | sum(attribute='amount')"
"""
    d = rules_dir(tmp_path, payroll=rule)
    sample = ChangeEvent(op=Op.CREATE, source=SourceInfo(connector="postgresql", name="payroll", db="hr",
                                                         schema="public", table="payroll_item"),
                         after={"id": 9, "line_id": 1, "amount": "1.00", "dept": "D1"},
                         kafka=KafkaCoordinates(topic="item.json", partition=0, offset=0))
    assert [(p.key, p.severity) for p in lint(d)] == [("lines.table", "info")]  # not known: not checked
    assert [(p.line, p.key, p.message) for p in lint(d, samples=[sample])] == [
        (line_of(rule, "sum(attribute='amt')"), "voucher.explanation",
         "line.amt: payroll.payroll_item has no column 'amt' (columns from item.json); did you mean 'amount'?")]


def test_keys_added_to_rules_later_are_walked_without_crashing(tmp_path: Path) -> None:
    d = rules_dir(tmp_path, payroll=PAYROLL)
    rs = load_rules(d)
    # another engineer adds keys the loader of this checkout does not know yet
    (d / "payroll.yaml").write_text(PAYROLL + 'hold_if: "row.gros_salary > 0"\nallow_negative: true\n'
                                    "coverage: every_row\nsummarize: {by: month, note: 'free text: not an "
                                    "expression', label: '{{ row.perod }}'}\n", encoding="utf-8")
    assert [(p.key, p.message.rsplit("; ", 1)[1]) for p in lint_rules(rs, schemas_dir=SCHEMAS)] == [
        ("hold_if", "did you mean 'gross_salary'?"), ("summarize.label", "did you mean 'period'?")]


# --------------------------------------------------------------------------- permissions: default deny
def _without_bank(ledger: str) -> str:
    return ledger.replace('  bank: {books: ["001"], accounts: ["1002", "2202"]}\n', "")


def test_system_without_permissions_entry_is_an_error(tmp_path: Path) -> None:
    d = rules_dir(tmp_path, ledger=_without_bank(LEDGER), bank=BANK_PAYMENT)
    assert [str(p) for p in lint(d)] == [
        f"{d / 'bank.yaml'}:{line_of(BANK_PAYMENT, 'system: bank')} match.system: source system 'bank' has no entry "
        f"under permissions: in {d / 'ledger.yaml'}; nothing it maps can post (add one, or `default: allow`)"]


def test_system_without_permissions_entry_is_fine_under_default_allow(tmp_path: Path) -> None:
    d = rules_dir(tmp_path, ledger=_without_bank(LEDGER), bank=BANK_PAYMENT)
    rs = load_rules(d)
    allowed = dataclasses.replace(rs, ledger=dataclasses.replace(rs.ledger, default_permission="allow"))
    assert lint_rules(allowed, schemas_dir=SCHEMAS) == []


def test_default_allow_written_in_the_ledger_file(tmp_path: Path) -> None:
    ledger = _without_bank(LEDGER).replace("permissions:\n", "permissions:\n  default: allow\n")
    d = rules_dir(tmp_path, ledger=ledger, bank=BANK_PAYMENT)
    rs = load_rules(d)
    assert rs.ledger.default_permission == "allow"
    assert lint_rules(rs, schemas_dir=SCHEMAS) == []


# --------------------------------------------------------------------------- load errors and the command
def test_unknown_account_at_load_gets_a_did_you_mean(tmp_path: Path) -> None:
    d = rules_dir(tmp_path, payroll=PAYROLL.replace('account: "2211.01"', 'account: "2211.1"'))
    with pytest.raises(RuleError) as e:
        load_rules(d)
    assert [p.split(": ", 1)[1] for p in with_account_suggestions(d, e.value.problems)] == [
        "account '2211.1' is not in the chart of accounts; did you mean '2211.01' (应付职工薪酬-工资)?"]


def test_mapping_check_command_exits_1_with_the_problem(tmp_path: Path) -> None:
    text = PAYROLL.replace('employee: "row.employee_code"', 'employee: "row.employe_code"')
    d = rules_dir(tmp_path, payroll=text)
    result = CliRunner().invoke(app, ["mapping", "check", str(d), "--schemas", str(SCHEMAS)])
    assert result.exit_code == 1, result.output
    assert result.output.splitlines() == [
        f"{d / 'payroll.yaml'}:{line_of(text, 'employe_code')} entries[1].dimensions.employee: row.employe_code: "
        f"payroll.payroll_line has no column 'employe_code' (columns from {SCHEMAS}/payroll.payroll_line.envelope"
        ".avsc); did you mean 'employee_code'?",
        "1 error, 0 warnings in 1 rules: these rules cannot post as written"]


def test_mapping_check_command_reads_sample_files_and_keeps_the_success_line(tmp_path: Path) -> None:
    d = rules_dir(tmp_path, payroll=PAYROLL)
    sample = tmp_path / "payroll.json"
    sample.write_text(json.dumps({"before": None, "op": "c", "after": {"id": 1, "employee_code": "E1"},
                                  "source": {"connector": "postgresql", "name": "payroll", "db": "hr",
                                             "schema": "public", "table": "payroll_line"}}), encoding="utf-8")
    empty = tmp_path / "schemas"
    empty.mkdir()
    result = CliRunner().invoke(app, ["mapping", "check", str(d), "--schemas", str(empty), "--sample", str(sample)])
    assert result.exit_code == 1, result.output  # the sample shows two columns: the rest are unknown
    assert f"row.gross_salary: payroll.payroll_line has no column 'gross_salary' (columns from {sample})" \
        in result.output
    ok = CliRunner().invoke(app, ["mapping", "check", str(d), "--schemas", str(SCHEMAS)])
    assert ok.exit_code == 0, ok.output
    assert ok.output == "1 rules OK (payroll-accrual); 7 accounts, 2 books, 0 golden cases\n"


def test_a_rule_that_ignores_the_rows_currency_is_an_error(tmp_path: Path) -> None:
    """A bank statement line carries its currency: booking it in local currency would post USD 1:1 as CNY."""
    import shutil

    d = tmp_path / "rules"
    shutil.copytree(RULES, d, ignore=shutil.ignore_patterns("golden"))
    text = (d / "bank.yaml").read_text("utf-8")
    (d / "bank.yaml").write_text(text.replace('  currency: "row.currency"', ""), "utf-8")
    problems = [p for p in lint_rules(load_rules(d), schemas_dir=SCHEMAS) if p.severity == "error"]
    assert len(problems) == 1 and problems[0].file.endswith("bank.yaml") and problems[0].key == "voucher"
    assert "carries a currency in column 'currency'" in problems[0].message
    assert 'add currency: "row.currency"' in problems[0].message
