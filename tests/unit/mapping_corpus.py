"""A deterministic corpus of change events, decoded and mapped, with one digest per event: the proof that a
faster decoder, expression compiler, mapper or check produces *the same* results bit for bit — the same
decoded values, the same vouchers (keys, digests, amounts with their exponents, explanations) and the same
rejections (code, message, field, value).

``mapping_corpus.digests`` beside this file was written by the code *before* the performance work of issue
#15 (commit e21022d, the closure evaluator) with ``python -m tests.unit.mapping_corpus --write``;
``test_mapping_corpus.py`` regenerates the corpus with the code of today and compares. A mismatch names the
event (rule set, stream, step, encoding), so it can be replayed by hand.

The corpus is self-contained (its rows come from the seeded generator below, not from the harness) and
covers: the shipped rules, the example rules with document lines and with summaries, and a *stress* rule set
that uses every expression form, helper, filter and test of the rule language; creates, snapshot reads,
re-reads of unchanged rows, updates (changed, unchanged, no longer matching), deletes; Avro, JSON with
schemas in the three Debezium decimal modes and schemaless JSON; and hostile values (text, floats, nulls,
missing columns, huge numbers, wrong types) inside otherwise well-formed envelopes.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from connector.events import ChangeEvent, DecodeFailure, Decoder, FixedSchemas
from connector.mapping import InMemoryLedger, Mapper, MapResult, load_rules
from connector.mapping._golden import golden_record, load_table_schemas

ROOT = Path(__file__).resolve().parents[2]
DIGESTS = Path(__file__).with_name("mapping_corpus.digests")

# --------------------------------------------------------------------------- the stress rule set
STRESS_LEDGER = """
kind: ledger
books:
  - {number: "S01", local_currency: CNY, data_centre: DC-S, open_periods: ["2026-11", "2026-12"],
     closed_periods: ["2026-10"], currency_numbers: {CNY: PRE001, USD: PRE007, JPY: PRE009, BHD: PRE010}}
  - {number: "S02", local_currency: CNY, closed_periods: ["2026-10"], reverse_in: original_period,
     currency_numbers: {CNY: PRE001, USD: PRE007}, timezone: Europe/Berlin, rate_band: "0.01"}
accounts:
  - {number: "1001", name: 现金}
  - {number: "1002", name: 银行, dimensions: [FF100002]}
  - {number: "1122", name: 应收, dimensions: [customer]}
  - {number: "1403", name: 原材料, currencies: [CNY, USD]}
  - {number: "2202", name: 应付, direction: credit, dimensions: [supplier]}
  - {number: "6001", name: 收入, leaf: false}
  - {number: "6001.01", name: 收入-门店, direction: credit}
  - {number: "6001.02", name: 收入-线上, direction: credit}
  - {number: "6603.03", name: 尾差}
  - {number: "6711", name: 冻结, frozen: true}
  - {number: "2221.01", name: 税, direction: credit}
permissions:
  stress: {accounts: ["1*", "2*", "6001.*", "6603.03", "6711"], deny_accounts: ["1002"]}
  lines: {books: ["S01"]}
  cut: {}
  cutlsn: {}
limits:
  stress: {review_above: "50000.00", zscore: 2.5, zscore_dimension: customer, zscore_min_samples: 5}
currency_places: {TWD: 0}
max_amount_digits: 13
cutover:
  cut: {date: 2026-11-05}
  cutlsn: {lsn: 5000}
"""

STRESS_LOOKUPS = """
kind: lookups
lookups:
  books: {"100": "S01", "200": "S02", "300": "S99"}
  revenue: {STORE: "6001.01", ONLINE: "6001.02", WRONG: "6001", GONE: "6711", "*": "6001.01"}
  plain: {A: "1001", B: "1403"}
rates:
  USD:
    HLTX01_SYS: {2026-11-01: "7.1200", 2026-11-16: "7.1350"}
    SPOT: {2026-11-01: "7.2000"}
  JPY:
    HLTX01_SYS: {2026-11-01: "0.0480"}
  BHD:
    HLTX01_SYS: {2026-11-01: "18.9000"}
"""

STRESS_RULES = {
    "stress-a.yaml": """
kind: rule
id: stress-a
version: 3
match: {system: stress, table: doc, when: "row.kind in ['A', 'B'] and not (row.flag is none)"}
voucher:
  book: "{{ lookup('books', row.company) }}"
  date: "date(row.day)"
  business_date: "row.bday | default(row.day)"
  group: "{{ 'PRE002' if row.kind == 'B' else 'PRE001' }}"
  explanation: "S {{ row.no | upper }}/{{ row.note | default('-') | trim | truncate(12) }} {{ row.amount }}
    {{ month(row.day) }} {{ fmt(row.day, '%d.%m') }} {{ row.note | replace('x', 'yy') | lower }} {{ 1 + 2 }}"
  currency: "row.cur | default('CNY')"
  data_centre: "{{ row.dc | default('') }}"
entries:
  - side: debit
    account: {cases: [{when: "row.pay == 'CASH'", account: "1001"}, {when: "row.pay == 'CREDIT'", account: "1122"},
                      {when: "row.pay is number", account: "1403"}]}
    amount: "row.amount + row.extra - row.discount"
    dimensions:
      customer: "row.cust if row.pay == 'CREDIT' else none"
      FF100003: "row.no ~ '-' ~ (row.qty | string)"
    quantity: "row.qty"
    price: "row.price | default(none)"
    unit: "{{ row.unit | default('') }}"
  - side: credit
    account: {lookup: revenue, key: "row.channel"}
    amount: "round_half_up(row.amount / 1.13)"
    explanation: "rev {{ row.channel }} {{ (row.amount * 2) | round(1) }}"
  - side: credit
    account: "2221.01"
    amount: "round_half_up(row.amount - row.amount / 1.13)"
    when: "row.amount > 0 or row.amount < -1"
  - side: credit
    account: "{{ lookup('plain', row.kind) }}"
    amount: "row.extra - row.discount"
    allow_negative: true
rounding: {account: "6603.03", max: "0.05"}
""",
    "stress-b.yaml": """
kind: rule
id: stress-b
match: {system: stress, table: doc, when: "row.kind == 'C' or (row.kind == 'D' and row.amount >= 10)", ops: [c, r, u, d]}
on_update: post_delta
key_columns: ["no"]
allow_negative: true
voucher:
  book: S01
  date: "millis_ts(source.ts_ms) if row.day is none else row.day"
  explanation: "{{ coalesce(row.note, row.no, 'x') }} {{ str(abs(row.amount)) }} {{ len(row.no) }} {{ op }} {{ source.table }}"
  currency: "row.cur"
  rate: "row.rate"
  rate_type: SPOT
entries:
  - side: debit
    account: {expr: "'1403' if row.amount >= 0 else '1001'"}
    amount: "abs(row.amount)"
    local_amount: "row.local | default(none) or round_half_up(abs(row.amount) * row.rate)"
    currency: "row.cur"
    rate: "row.rate"
  - side: credit
    account: "2202"
    amount: "max(abs(row.amount), 0) - min(0, row.extra // 3, row.extra % 7)"
    dimensions: {supplier: "row.cust | default('S1') | upper"}
    settle_type: "{{ row.pay }}"
    settle_no: "{{ row.no }}-{{ key.id | default('?') }}"
  - side: credit
    account: "2202"
    amount: "min(0, row.extra // 3, row.extra % 7)"
    dimensions: {supplier: "'S2'"}
""",
    "stress-c.yaml": """
kind: rule
id: stress-c
match: {system: stress, table: doc, when: "row.kind == 'E'"}
on_update: ignore
coverage: every_row
voucher:
  book: "{{ lookup('books', row.company, 'S01') }}"
  date: "row.day"
  explanation: "{{ row.no }} {{ round_bankers(row.amount, 0) }} {{ round_for(row.amount, 'JPY') }} {{ dec('1.50') }}
    {{ row.amount is defined }} {{ row.nothere is defined }} {{ row.no is string }} {{ row.amount | dec }}
    {{ [1, 2, row.qty] | length }} {{ (1, 2)[0] }} {{ row.tags[0].v | default('-') }} {{ row['no'] }}
    {{ local_time(row.ts) if row.ts is string else '' }} {{ -row.extra }} {{ +row.extra }}
    {{ decimal_b64('D54=', 2) }} {{ micros_ts(1794535200000000) }} {{ rate('USD', row.day) }}
    {{ 'yes' if 3 > 2 > 1 else 'no' }} {{ row.no not in ['N1', 'N2'] }} {{ row.no != 'N3' }}"
  currency: "'JPY' if row.pay == 'JPY' else 'CNY'"
entries:
  - side: debit
    account: "1001"
    amount: "round_for(row.amount * rate('USD', row.day, 'HLTX01_SYS'), 'CNY') if row.cur == 'USD' else row.amount"
  - side: credit
    account: "6001.01"
    amount: "[row.amount, 0] | sum"
""",
    "stress-d.yaml": """
kind: rule
id: stress-d
match: {system: stress, table: doc, when: "row.kind == 'F'"}
voucher:
  book: S01
  date: "row.day"
  explanation: "sum {{ row.tags | sum(attribute='v') if row.tags is not string else 0 }}"
summarize:
  by: [book, date, {pay: "row.pay | default('')"}, row.channel]
  close: "every 15 minutes"
  late: next_summary
  explanation: "汇总 {{ key.pay }} {{ key.channel }} {{ count }}"
entries:
  - side: debit
    account: "1001"
    amount: "row.amount"
  - side: credit
    account: {lookup: revenue, key: "row.channel", default: "6001.02"}
    amount: "row.amount"
""",
    "stress-cut.yaml": """
kind: rule
id: stress-cut
match: {system: cut, table: doc}
voucher: {book: S01, date: "row.day", explanation: "cut {{ row.no }}"}
entries:
  - {side: debit, account: "1001", amount: "row.amount"}
  - {side: credit, account: "6001.01", amount: "row.amount"}
""",
    "stress-cutlsn.yaml": """
kind: rule
id: stress-cutlsn
match: {system: cutlsn, table: doc}
voucher: {book: S02, date: "row.day", explanation: "cutlsn {{ row.no }}"}
entries:
  - {side: debit, account: "1001", amount: "row.amount"}
  - {side: credit, account: "6001.01", amount: "row.amount"}
""",
    "stress-lines.yaml": """
kind: rule
id: stress-lines
match: {system: lines, table: head, when: "row.ok"}
lines: {table: line, join: "line.head_id == row.id"}
voucher: {book: S01, date: "row.day", explanation: "H {{ row.no }} {{ lines | length }} {{ lines | sum(attribute='amount') }}"}
entries:
  - {side: debit, account: "1001", amount: "row.amount"}
  - side: credit
    for_each: lines
    account: "6001.01"
    amount: "round_half_up(line.amount * row.amount / (lines | sum(attribute='amount')))"
    explanation: "L {{ line.no }}"
    quantity: "line.qty | default(none)"
rounding: {account: "6603.03", max: "0.05"}
""",
}

_BASE_LEDGER_FILES = ("ledger.yaml", "lookups.yaml", "ignored.yaml")


def rule_sets(tmp: Path) -> dict[str, Path]:
    """The rule directories of the corpus, written under ``tmp``."""
    shipped = ROOT / "rules"
    out: dict[str, Path] = {"shipped": shipped}
    for name, example in (("by-line", "pos-sale-by-line.yaml"), ("summary", "pos-sale-summary.yaml")):
        d = tmp / name
        shutil.copytree(shipped, d, ignore=shutil.ignore_patterns("golden", "pos-sale.yaml"))
        shutil.copy(ROOT / "deploy" / "examples" / "rules" / example, d / example)
        out[name] = d
    stress = tmp / "stress"
    stress.mkdir()
    (stress / "ledger.yaml").write_text(STRESS_LEDGER, encoding="utf-8")
    (stress / "lookups.yaml").write_text(STRESS_LOOKUPS, encoding="utf-8")
    for file, text in STRESS_RULES.items():
        (stress / file).write_text(text, encoding="utf-8")
    out["stress"] = stress
    return out


# --------------------------------------------------------------------------- rows
HOSTILE: tuple[Any, ...] = (
    None, True, False, 0, -1, 7, 10**20, 10**31, -(10**25), 0.1, 1.5, -2.25, 1e300, float("inf"), float("nan"),
    "", " ", "abc", "100", "13", "0.00", "-0.00", "113.005", "1e999999999", "NaN", "Infinity", "12.345678901234567890",
    "１２３", "0x10", "9" * 80, "2026-02-30", "2026-11-30T17:30:00Z", "2026-11-30", "CREDIT", "CASH", "USD", "HKD",
    "XXX", "PAID", "D01", "C0001", [1, 2], {"a": 1}, Decimal("1E+40"), Decimal("-5.00"), Decimal("3.14159"),
)
_DAY0 = date(2026, 10, 25)


def _money(r: random.Random, lo: int, hi: int) -> Decimal:
    return Decimal(r.randint(lo * 100, hi * 100)).scaleb(-2)


def _day(r: random.Random) -> date:
    return _DAY0 + timedelta(days=r.randint(0, 50))


def _ts(r: random.Random, d: date) -> datetime:
    return datetime(d.year, d.month, d.day, r.randint(0, 23), r.randint(0, 59))


@dataclass(frozen=True, slots=True)
class Table:
    system: str
    table: str
    typed: bool  #: has an Avro schema in schemas/ (typed encodings possible)


SHIPPED_TABLES = (Table("pos", "sales_order", True), Table("purchasing", "purchase_invoice", True),
                  Table("payroll", "payroll_line", True), Table("mes", "work_order_cost", True),
                  Table("bank", "statement_line", True))


def sample_row(r: random.Random, t: Table, i: int) -> dict[str, Any]:
    """A plausible row of ``t`` (Python values: Decimal, date, datetime)."""
    d = _day(r)
    created = _ts(r, d)
    company = r.choice(("100", "100", "200", "300"))
    if t.table == "sales_order":
        gross = _money(r, 1, 3000)
        net = (gross / Decimal("1.13")).quantize(Decimal("0.01"))
        pay = r.choice(("CASH", "WECHAT", "ALIPAY", "CARD", "CREDIT", "CHEQUE"))
        return {"id": i, "order_no": f"SO{i:06d}", "channel": r.choice(("STORE", "ONLINE", "KIOSK")),
                "store_code": r.choice(("S01", "S02")), "company_code": company,
                "customer_code": f"C{r.randint(1, 50):04d}" if r.random() < 0.7 else None, "order_date": d,
                "currency": r.choice(("CNY",) * 8 + ("USD", "EUR", "HKD")), "net_amount": net,
                "tax_amount": gross - net + (Decimal("0.04") if r.random() < 0.05 else 0), "gross_amount": gross,
                "points_deduction": _money(r, 0, 20) if r.random() < 0.3 else Decimal("0.00"),
                "payment_method": pay, "status": r.choice(("PAID",) * 6 + ("CANCELLED",)),
                "created_at": created, "updated_at": None if r.random() < 0.5 else
                datetime(d.year, d.month, d.day, r.randint(0, 23), tzinfo=UTC)}
    if t.table == "purchase_invoice":
        net = _money(r, 100, 250000)
        tax = (net * Decimal("0.13")).quantize(Decimal("0.01"))
        category = r.choice(("INVENTORY", "EXPENSE", "OTHER"))
        cur = r.choice(("CNY",) * 6 + ("USD", "USD", "JPY"))
        rate = {"CNY": Decimal("1.000000"), "USD": r.choice((Decimal("7.120000"), Decimal("7.135000"),
                                                             Decimal("7.900000"), Decimal("0.000000"))),
                "JPY": Decimal("0.048000")}[cur]
        return {"id": i, "invoice_no": f"PI{i:06d}", "supplier_code": r.choice(("S001", "S002", "S003")),
                "supplier_class": r.choice(("A", "B")), "region": r.choice(("EAST", "WEST")), "company_code": company,
                "invoice_date": d, "category": category,
                "expense_item": r.choice(("TRAVEL", "OFFICE", "RENT", "GIFTS")) if category == "EXPENSE" else None,
                "department_code": r.choice(("D01", "D02", None)) if category != "INVENTORY" else None,
                "currency": cur, "exchange_rate": rate, "net_amount": net, "tax_amount": tax,
                "gross_amount": net + tax, "payment_terms": r.choice(("TRANSFER", "NOTE")), "created_at": created}
    if t.table == "payroll_line":
        gross = _money(r, 6000, 40000)
        si_emp = (gross * Decimal("0.105")).quantize(Decimal("0.01"))
        si_co = (gross * Decimal("0.26")).quantize(Decimal("0.01"))
        tax = ((gross - si_emp) * Decimal("0.03")).quantize(Decimal("0.01"))
        return {"id": i, "run_id": f"PR{d:%Y%m}", "period": f"{d:%Y-%m}", "employee_code": r.choice(("E01", "E02", "")),
                "department_code": r.choice(("D01", "D02", "D03", "D09")), "company_code": company, "pay_date": d,
                "gross_salary": gross, "social_insurance_company": si_co, "social_insurance_employee": si_emp,
                "income_tax": tax, "net_pay": gross - si_emp - tax}
    if t.table == "work_order_cost":
        return {"id": i, "work_order_no": f"WO{i:06d}", "material_code": r.choice(("M01", "M02", None)),
                "cost_type": r.choice(("MATERIAL", "LABOR", "OVERHEAD", "COMPLETION", "SCRAP")), "company_code": company,
                "posting_date": d, "quantity": Decimal(r.randint(0, 500)).scaleb(0) + Decimal("0.0000"),
                "amount": _money(r, 0, 20000), "created_at": created}
    if t.table == "statement_line":
        direction = r.choice(("IN", "OUT", "IN", "OUT", "REVERSAL"))
        return {"id": i, "bank_account": r.choice(("6222000011112222", "6222000033334444")), "company_code": company,
                "statement_date": d, "direction": direction, "amount": _money(r, 0, 100000),
                "currency": r.choice(("CNY",) * 6 + ("USD", "HKD")),
                "counterparty_code": r.choice(("C0001", "S001", None)), "reference": f"BK{i:06d}",
                "created_at": created}
    if t.system == "stress":  # the stress rules: mostly sane rows, some odd ones
        sane = r.random() < 0.75
        amount = _money(r, 0, 900) if sane else r.choice((_money(r, 0, 90000), Decimal("-3.50"), Decimal("0.00"),
                                                           Decimal("12.345"), Decimal("99999999999.99")))
        s_cur = r.choice(("CNY", "CNY", "USD")) if sane else r.choice(("JPY", "BHD", "EUR", None, "USD"))
        s_rate = {"CNY": Decimal("1"), "USD": r.choice((Decimal("7.2"), Decimal("7.21"), Decimal("7.2000")))}.get(
            s_cur or "", Decimal("0.048")) if sane else r.choice((Decimal("1"), Decimal("7.5"), Decimal("0"), None))
        return {"id": i, "no": f"N{r.randint(1, 4)}", "kind": r.choice("AABBCCDEEFG"),
                "flag": 1 if sane else r.choice((1, None, 0)), "company": r.choice(("100", "200", "300", "400")[:2 if sane else 4]),
                "day": d if sane else r.choice((d, None)), "bday": r.choice((None, d - timedelta(days=3))),
                "note": r.choice((None, " axe ", "note-x" * r.randint(1, 4), "")), "amount": amount,
                "extra": r.choice((Decimal("0.00"), Decimal("1.00"), Decimal("0.03"), Decimal("-2.00"))),
                "discount": r.choice((Decimal("0.00"), Decimal("0.50"))), "cur": s_cur, "rate": s_rate,
                "local": None if sane else r.choice((None, Decimal("100.00"))),
                "pay": r.choice(("CASH", "CREDIT", "CASH")) if sane else r.choice(("CARD", "JPY", 5)),
                "cust": "C1" if sane else r.choice(("", "  ", None)),
                "channel": r.choice(("STORE", "ONLINE")) if sane else r.choice(("WRONG", "GONE", "ELSE")),
                "qty": r.choice((None, 2, Decimal("1.5"))), "price": r.choice((None, Decimal("9.99"))),
                "unit": r.choice((None, "PCS")), "dc": r.choice((None, "DC-X")),
                "tags": r.choice(([], [{"v": Decimal("1.5")}, {"v": "2"}])) if sane else r.choice((None, "tag", [{"w": 1}])),
                "ts": r.choice((None, "2026-11-30T17:30:00+00:00", "2026-11-30T23:30:00")) if sane else "nonsense"}
    if t.table in ("head",):
        return {"id": i, "no": f"H{i}", "ok": r.random() < 0.9, "day": d, "amount": _money(r, 1, 999)}
    # cut / cutlsn
    return {"id": i, "no": f"X{i}", "day": d, "amount": _money(r, 1, 999)}


def mutate(r: random.Random, t: Table, row: dict[str, Any]) -> dict[str, Any]:
    """A changed version of ``row``: another amount, another code, or a hostile value / a missing column."""
    out = dict(row)
    fresh = sample_row(r, t, row["id"])
    cols = [c for c in out if c != "id"]
    for _ in range(r.randint(1, 2)):
        col = r.choice(cols)
        v = out.get(col)
        roll = r.random()
        if roll < 0.45 and isinstance(v, Decimal):
            out[col] = (v + Decimal(r.randint(-500, 500)).scaleb(-2)).quantize(v) if v.is_finite() else v
        elif roll < 0.6:
            out[col] = fresh.get(col)
        elif roll < 0.85:
            out[col] = r.choice(HOSTILE)
        else:
            out.pop(col, None)
    return out


# --------------------------------------------------------------------------- encodings
def _plain(v: Any) -> Any:
    if isinstance(v, Decimal):
        return str(v) if v.is_finite() else None
    if isinstance(v, datetime):
        return v.isoformat()
    if isinstance(v, date):
        return (v - date(1970, 1, 1)).days
    return v


def _schemaless(t: Table, op: str, before: Mapping[str, Any] | None, after: Mapping[str, Any] | None, lsn: int,
                r: random.Random, tx: Mapping[str, Any] | None) -> bytes:
    as_number = r.random() < 0.3  # decimals as JSON numbers: they arrive as floats (maybe doubles)

    def img(row: Mapping[str, Any] | None) -> Any:
        if row is None:
            return None
        out = {}
        for k, v in row.items():
            if as_number and isinstance(v, Decimal) and v.is_finite():
                out[k] = float(v)
            else:
                out[k] = _plain(v)
        return out
    env = {"op": op, "before": img(before), "after": img(after), "ts_ms": 1795000000040,
           "source": {"connector": "postgresql", "name": t.system, "db": f"{t.system}db", "schema": "public",
                      "table": t.table, "lsn": lsn, "txId": 7, "ts_ms": 1795000000000,
                      "snapshot": "true" if op == "r" else "false"},
           "transaction": dict(tx) if tx is not None else None}
    return json.dumps(env, allow_nan=True, default=str).encode()


def _golden_spec(t: Table, op: str, before: Mapping[str, Any] | None, after: Mapping[str, Any] | None, lsn: int,
                 key: Mapping[str, Any] | None, tx: Mapping[str, Any] | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"op": op, "source": {"system": t.system, "table": t.table, "lsn": lsn,
                                                 "ts_ms": 1794535200000 + lsn,
                                                 "snapshot": "true" if op == "r" else "false"},
                            "key": key, "before": before, "after": after}
    if tx is not None:
        spec["transaction"] = tx
    return spec


_AVRO_IDS = {t.table: 10 + i for i, t in enumerate(SHIPPED_TABLES)}


def _avro(t: Table, op: str, before: Mapping[str, Any] | None, after: Mapping[str, Any] | None, lsn: int) -> bytes:
    from harness import samples

    st = next(x for x in samples.TABLES if x.table == t.table)
    env = samples.envelope(st, op, before=before, after=after, lsn=lsn, snapshot="true" if op == "r" else "false")
    return samples.encode_avro(st, env, _AVRO_IDS[t.table])


# --------------------------------------------------------------------------- canonical text of results
def _value(v: Any) -> str:
    if isinstance(v, Mapping):
        return "{" + ",".join(f"{k!r}:{_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_value(x) for x in v) + "]"
    return f"{type(v).__name__}:{v!r}"


def canonical_decoded(d: Any) -> str:
    if isinstance(d, DecodeFailure):
        return f"FAIL|{d.stage}|{d.error_class}|{d.reason}"
    if not isinstance(d, ChangeEvent):
        return f"OTHER|{type(d).__name__}"
    s = d.source
    src = (s.connector, s.name, s.db, s.schema, s.table, s.version, s.ts_ms, s.snapshot, s.lsn, s.tx_id, s.xmin,
           s.sequence, s.file, s.pos, s.row, s.gtid, s.server_id, s.thread, s.query)
    tx = None if d.transaction is None else (d.transaction.id, d.transaction.total_order,
                                             d.transaction.data_collection_order)
    return "|".join((d.op.value, repr(src), _value(d.before), _value(d.after), _value(d.key), repr(d.ts_ms),
                     repr(tx), repr(d.message), repr(d.kafka), repr(d.headers), repr(sorted(d.float_fields))))


def canonical_result(res: MapResult) -> str:
    parts = [f"skipped={res.skipped!r}", f"grouped={res.grouped!r}"]
    for v in res.vouchers:
        head = (v.key, v.book, v.date, v.group, v.explanation, v.source, v.rule_id, v.rule_version, v.kind.value,
                v.reverses, v.business_date, v.data_centre, v.attachments, v.review_reasons, v.original_date,
                v.opening, None if v.summary is None else tuple(v.summary))
        parts.append("V" + repr(head))
        for e in v.entries:
            parts.append("E" + repr((e.account, e.side.value, e.amount, e.explanation, e.currency, e.rate_type, e.rate,
                                     e.amount_for, e.quantity, e.price, e.unit, e.settle_type, e.settle_no,
                                     tuple(e.dimensions.items()))))
    for j in res.rejections:
        parts.append("R" + repr((j.code.value, j.message, j.rule, j.field, j.value, j.source, j.voucher_key)))
    return "\n".join(parts)


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# --------------------------------------------------------------------------- the corpus
@dataclass(frozen=True, slots=True)
class Item:
    label: str
    digest: str


_ENCODINGS = ("precise", "string", "double", "schemaless", "avro")


def _stream_events(r: random.Random, t: Table, i: int, lsn: list[int]) -> Iterator[tuple[str, str | None,
                                                                                          dict[str, Any] | None,
                                                                                          dict[str, Any] | None]]:
    """(step label, op, before, after) of one row's life."""
    row = sample_row(r, t, i)
    yield "create", r.choice(("c", "c", "c", "r")), None, row
    for step in range(r.randint(0, 4)):
        roll = r.random()
        if roll < 0.2:
            yield f"reread{step}", "r", None, row
        elif roll < 0.35:
            yield f"noop{step}", "u", row, row
        elif roll < 0.8:
            new = mutate(r, t, row)
            yield f"update{step}", "u", row, new
            row = new
        else:
            yield f"delete{step}", "d", row, None
            return


def corpus(per_table: int = 180) -> Iterator[Item]:
    """Every event of the corpus, decoded and mapped, with its digest (in a fixed order)."""
    r = random.Random(20261202)
    schemas = load_table_schemas(ROOT / "schemas")
    with tempfile.TemporaryDirectory() as tmp:
        sets = rule_sets(Path(tmp))
        plan: list[tuple[str, tuple[Table, ...]]] = [
            ("shipped", SHIPPED_TABLES), ("by-line", (Table("pos", "sales_order", True),)),
            ("summary", (Table("pos", "sales_order", True),)),
            ("stress", (Table("stress", "doc", False), Table("cut", "doc", False), Table("cutlsn", "doc", False),
                        Table("lines", "head", False), Table("stress", "nope", False)))]
        for set_name, tables in plan:
            rules = load_rules(sets[set_name])
            mapper = Mapper(rules)
            avro_decoder = Decoder(FixedSchemas(None, {
                _AVRO_IDS[t.table]: json.loads((ROOT / "schemas" / f"{t.system}.{t.table}.envelope.avsc").read_text())
                for t in SHIPPED_TABLES}))
            json_decoder = Decoder()
            lsn = [1000]
            for t in tables:
                n = per_table * (3 if set_name == "stress" and t.table == "doc" else 1)
                for i in range(1, n + 1):
                    ledger = InMemoryLedger()
                    for step, op, before, after in _stream_events(r, t, i, lsn):
                        lsn[0] += r.choice((1, 2, 136, 0)) or 1
                        yield from _one(r, set_name, t, i, step, op, before, after, lsn[0], schemas, mapper, ledger,
                                        avro_decoder, json_decoder)


def _one(r: random.Random, set_name: str, t: Table, i: int, step: str, op: str | None,
         before: dict[str, Any] | None, after: dict[str, Any] | None, lsn: int, schemas: Any, mapper: Mapper,
         ledger: InMemoryLedger, avro_decoder: Decoder, json_decoder: Decoder) -> Iterator[Item]:
    assert op is not None
    key: dict[str, Any] | None = {"id": i} if r.random() < 0.97 else None
    enc = r.choice(_ENCODINGS) if t.typed else "schemaless"
    tx: dict[str, Any] | None = None
    lines: list[ChangeEvent] | None = None
    if set_name == "by-line" or t.table == "head":
        tx = {"id": f"{900 + i}:{lsn}", "total_order": 1, "data_collection_order": 1}
        lines = _lines(r, t, i, lsn, json_decoder)
    raw: bytes | None = None
    key_bytes = None if key is None else json.dumps(key).encode()
    if enc in ("precise", "string", "double"):
        try:
            raw, _ = golden_record(_golden_spec(t, op, before, after, lsn, key, tx), 0,
                                   row_type=schemas.get((t.system, t.table)), mode=enc)
        except (ValueError, TypeError, OverflowError, ArithmeticError, AttributeError, KeyError):
            enc = "schemaless"
    elif enc == "avro":
        try:
            raw = _avro(t, op, before, after, lsn)
        except (ValueError, TypeError, OverflowError, ArithmeticError, KeyError, AttributeError):
            enc = "schemaless"
    if raw is None:
        enc = "schemaless"
        raw = _schemaless(t, op, before, after, lsn, r, tx)
    decoder = avro_decoder if enc == "avro" else json_decoder
    decoded = decoder.decode(raw, key=key_bytes)
    label = f"{set_name}/{t.system}.{t.table}#{i}/{step}/{op}/{enc}"
    text = canonical_decoded(decoded)
    if isinstance(decoded, ChangeEvent):
        res = mapper.map(decoded, ledger, lines=lines if r.random() < 0.9 else None)
        ledger.apply(res)
        text += "\n" + canonical_result(res)
        if r.random() < 0.1:  # a remap (replay --repost-changed) of the same change
            again = mapper.map(decoded, ledger, remap="rules-v2")
            text += "\n" + canonical_result(again)
    yield Item(label, digest(text))


def _lines(r: random.Random, t: Table, i: int, lsn: int, decoder: Decoder) -> list[ChangeEvent]:
    out: list[ChangeEvent] = []
    line_table = "sales_order_line" if t.table == "sales_order" else "line"
    for n in range(r.choice((0, 1, 2, 3, 3, 5))):
        amount = r.choice((_money(r, 1, 500), "7.5", None, "x"))
        row = {"id": 10 * i + n, "order_id": i if r.random() < 0.9 else i + 1, "head_id": i, "line_no": n + 1,
               "no": n + 1, "sku": r.choice(("SKU1", "SKU2", None)), "amount": _plain(amount) if amount else amount,
               "qty": r.choice((None, 1, "2"))}
        op = r.choice(("c", "c", "c", "u", "d"))
        env = {"op": op, "before": row if op != "c" else None, "after": None if op == "d" else row,
               "ts_ms": 1795000000040,
               "source": {"connector": "postgresql", "name": t.system, "db": f"{t.system}db", "schema": "public",
                          "table": line_table, "lsn": lsn, "txId": 900 + i, "ts_ms": 1795000000000},
               "transaction": {"id": f"{900 + i}:{lsn}", "total_order": n + 2, "data_collection_order": n + 1}}
        ev = decoder.decode(json.dumps(env).encode(), key=json.dumps({"id": 10 * i + n}).encode())
        if isinstance(ev, ChangeEvent):
            out.append(ev)
    return out


def items() -> list[Item]:
    return list(corpus())


def main(argv: list[str]) -> int:
    found = items()
    if "--write" in argv:
        DIGESTS.write_text("".join(f"{it.digest}\n" for it in found), encoding="ascii")
        print(f"wrote {len(found)} digests to {DIGESTS}")
    else:
        for it in found:
            print(it.label, it.digest)
        print(len(found), "events")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
