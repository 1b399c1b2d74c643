"""Realistic sample business events (POS, purchasing, payroll, MES, bank) as real Debezium envelopes.

Used by the demo, the tests and the benchmarks. Rows are generated deterministically from a seed; money is
``Decimal`` and always internally consistent (net + tax = gross). Encoders produce exactly what Debezium's
converters put on the wire: Confluent Avro (magic byte + schema id + Avro binary, Connect logical types)
or the JSON converter with and without schemas (decimals as base64 of the unscaled integer).
"""

from __future__ import annotations

import base64
import io
import json
import random
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any, Final

import fastavro

from connector.money import quantize

SCHEMA_DIR: Final = Path(__file__).resolve().parents[1] / "schemas"  # the repository's single copy
_EPOCH: Final = datetime(1970, 1, 1)  # MicroTimestamp: a wall clock without zone


@dataclass(frozen=True, slots=True)
class SampleTable:
    """One sample source table: Debezium topic prefix (= source system), schema and table name."""

    system: str
    schema: str
    table: str

    @property
    def topic(self) -> str:
        return f"{self.system}.{self.schema}.{self.table}"

    @property
    def stem(self) -> str:
        return f"{self.system}.{self.table}"


POS: Final = SampleTable("pos", "public", "sales_order")
PURCHASING: Final = SampleTable("purchasing", "public", "purchase_invoice")
PAYROLL: Final = SampleTable("payroll", "public", "payroll_line")
MES: Final = SampleTable("mes", "public", "work_order_cost")
BANK: Final = SampleTable("bank", "public", "statement_line")
TABLES: Final = (POS, PURCHASING, PAYROLL, MES, BANK)


@cache
def value_schema(table: SampleTable) -> dict[str, Any]:
    """The Avro envelope schema (as JSON) for ``table``."""
    result: dict[str, Any] = json.loads((SCHEMA_DIR / f"{table.stem}.envelope.avsc").read_text())
    return result


@cache
def key_schema(table: SampleTable) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((SCHEMA_DIR / f"{table.stem}.key.avsc").read_text())
    return result


@cache
def _parsed(table: SampleTable, which: str) -> Any:
    return fastavro.parse_schema(value_schema(table) if which == "value" else key_schema(table))


# --------------------------------------------------------------------------- row generation
_STORES: Final = ("SH001", "SH002", "BJ001", "GZ001")
_COMPANIES: Final = ("100", "200")
_SUPPLIERS: Final = (("S001", "A", "EAST"), ("S002", "B", "EAST"), ("S003", "A", "NORTH"), ("S004", "C", "SOUTH"))
_DEPTS: Final = ("D01", "D02", "D03")
_EMPLOYEES: Final = tuple(f"E{n:03d}" for n in range(1, 21))
_MATERIALS: Final = ("M1001", "M1002", "M2001")
_PAYMENTS: Final = ("CASH", "CARD", "WECHAT", "ALIPAY", "CREDIT")
_VAT: Final = Decimal("0.13")


def _money(rng: random.Random, lo: int, hi: int) -> Decimal:
    return Decimal(rng.randint(lo * 100, hi * 100)).scaleb(-2)


class SampleGenerator:
    """Deterministic rows for the sample tables (same seed → same rows)."""

    def __init__(self, seed: int = 7, start: date = date(2026, 11, 2)) -> None:
        self.rng = random.Random(seed)
        self.start = start
        self.ids: dict[SampleTable, int] = {t: 0 for t in TABLES}
        self.lsn = 23_000_000 + seed * 1_000_000_000

    def next_lsn(self) -> int:
        """Source log positions, deterministic per generator (same seed → same LSNs → same voucher keys)."""
        self.lsn += 136
        return self.lsn

    def _next_id(self, t: SampleTable) -> int:
        self.ids[t] += 1
        return self.ids[t]

    def _day(self) -> date:
        return self.start + timedelta(days=self.rng.randint(0, 20))

    def row(self, t: SampleTable) -> dict[str, Any]:
        i = self._next_id(t)
        r = self.rng
        d = self._day()
        created = datetime(d.year, d.month, d.day, r.randint(8, 20), r.randint(0, 59))
        if t is POS:
            gross = _money(r, 10, 3000)
            net = quantize(gross / (1 + _VAT))
            currency = "CNY" if r.random() < 0.9 else "USD"
            payment = r.choice(_PAYMENTS)
            # Credit sales name the customer — except the odd one a cashier got wrong (a realistic reject).
            has_customer = r.random() < (0.98 if payment == "CREDIT" else 0.6)
            return {"id": i, "order_no": f"SO{d:%Y%m%d}{i:06d}", "channel": r.choice(("STORE", "ONLINE")),
                    "store_code": r.choice(_STORES), "company_code": r.choice(_COMPANIES),
                    "customer_code": f"C{r.randint(1, 50):04d}" if has_customer else None, "order_date": d,
                    "currency": currency, "net_amount": net, "tax_amount": gross - net, "gross_amount": gross,
                    "points_deduction": _money(r, 0, 20) if r.random() < 0.3 else Decimal("0.00"),
                    "payment_method": payment, "status": "PAID", "created_at": created,
                    "updated_at": None}
        if t is PURCHASING:
            sup, cls, region = r.choice(_SUPPLIERS)
            net = _money(r, 100, 50000)
            tax = quantize(net * _VAT)
            category = r.choice(("INVENTORY", "EXPENSE"))
            currency = "CNY" if r.random() < 0.8 else "USD"
            return {"id": i, "invoice_no": f"PI{d:%Y%m}{i:06d}", "supplier_code": sup, "supplier_class": cls,
                    "region": region, "company_code": r.choice(_COMPANIES), "invoice_date": d, "category": category,
                    "expense_item": r.choice(("TRAVEL", "OFFICE", "RENT")) if category == "EXPENSE" else None,
                    "department_code": r.choice(_DEPTS) if category == "EXPENSE" else None, "currency": currency,
                    "exchange_rate": Decimal("1.000000") if currency == "CNY" else Decimal("7.120000"),
                    "net_amount": net, "tax_amount": tax, "gross_amount": net + tax,
                    "payment_terms": r.choice(("TRANSFER", "NOTE")), "created_at": created}
        if t is PAYROLL:
            gross = _money(r, 6000, 40000)
            si_emp = quantize(gross * Decimal("0.105"))
            si_co = quantize(gross * Decimal("0.26"))
            tax = quantize((gross - si_emp) * Decimal("0.03"))
            return {"id": i, "run_id": f"PR{d:%Y%m}", "period": f"{d:%Y-%m}", "employee_code": r.choice(_EMPLOYEES),
                    "department_code": r.choice(_DEPTS), "company_code": r.choice(_COMPANIES), "pay_date": d,
                    "gross_salary": gross, "social_insurance_company": si_co, "social_insurance_employee": si_emp,
                    "income_tax": tax, "net_pay": gross - si_emp - tax}
        if t is MES:
            qty = Decimal(r.randint(1, 500)).scaleb(0) + Decimal("0.0000")
            return {"id": i, "work_order_no": f"WO{i:06d}", "material_code": r.choice(_MATERIALS),
                    "cost_type": r.choice(("MATERIAL", "LABOR", "OVERHEAD", "COMPLETION")),
                    "company_code": r.choice(_COMPANIES), "posting_date": d, "quantity": qty,
                    "amount": _money(r, 50, 20000), "created_at": created}
        if t is BANK:
            direction = r.choice(("IN", "OUT"))
            return {"id": i, "bank_account": r.choice(("6222000011112222", "6222000033334444")),
                    "company_code": r.choice(_COMPANIES), "statement_date": d, "direction": direction,
                    "amount": _money(r, 100, 100000), "currency": "CNY",
                    "counterparty_code": f"C{r.randint(1, 50):04d}" if direction == "IN" else r.choice(_SUPPLIERS)[0],
                    "reference": f"BK{d:%Y%m%d}{i:06d}", "created_at": created}
        raise ValueError(f"unknown sample table {t}")


# --------------------------------------------------------------------------- envelopes
_LSN = [23_000_000]  # for envelopes built without a generator


def envelope(t: SampleTable, op: str, *, before: Mapping[str, Any] | None, after: Mapping[str, Any] | None,
             tx_id: int = 700, lsn: int | None = None, ts_ms: int = 1_795_000_000_000, snapshot: str = "false",
             transaction: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A Debezium PostgreSQL change-event envelope with Python values (before encoding)."""
    if lsn is None:
        _LSN[0] += 136
        lsn = _LSN[0]
    return {
        "before": dict(before) if before is not None else None,
        "after": dict(after) if after is not None else None,
        "source": {"version": "3.3.1.Final", "connector": "postgresql", "name": t.system, "ts_ms": ts_ms,
                   "snapshot": snapshot, "db": f"{t.system}db", "sequence": f'["{lsn - 136}","{lsn}"]',
                   "ts_us": ts_ms * 1000, "ts_ns": ts_ms * 1_000_000, "schema": t.schema, "table": t.table,
                   "txId": tx_id, "lsn": lsn, "xmin": None},
        "transaction": dict(transaction) if transaction is not None else None,
        "op": op, "ts_ms": ts_ms + 40, "ts_us": (ts_ms + 40) * 1000, "ts_ns": (ts_ms + 40) * 1_000_000,
    }


def _to_connect(v: Any, t: Any) -> Any:
    """Python value → what Debezium's Avro converter writes for schema type ``t``."""
    if v is None:
        return None
    if isinstance(t, list):
        t = next(x for x in t if x != "null")
    if isinstance(t, dict):
        name = t.get("connect.name")
        if name == "io.debezium.time.Date":
            return (v - date(1970, 1, 1)).days
        if name == "io.debezium.time.MicroTimestamp":
            delta = v - _EPOCH
            return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
        if name == "io.debezium.time.ZonedTimestamp":
            return None if v is None else v.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return v


def avro_row(t: SampleTable, row: Mapping[str, Any]) -> dict[str, Any]:
    fields = value_schema(t)["fields"][0]["type"][1]["fields"]
    return {f["name"]: _to_connect(row.get(f["name"]), f["type"]) for f in fields}


def encode_avro(t: SampleTable, env: Mapping[str, Any], schema_id: int) -> bytes:
    """Confluent wire format: ``0x00`` + schema id (big-endian int32) + Avro binary."""
    rec = dict(env)
    rec["before"] = avro_row(t, env["before"]) if env["before"] is not None else None
    rec["after"] = avro_row(t, env["after"]) if env["after"] is not None else None
    buf = io.BytesIO()
    buf.write(struct.pack(">bI", 0, schema_id))
    fastavro.schemaless_writer(buf, _parsed(t, "value"), rec)
    return buf.getvalue()


def encode_avro_key(t: SampleTable, key: Mapping[str, Any], schema_id: int) -> bytes:
    buf = io.BytesIO()
    buf.write(struct.pack(">bI", 0, schema_id))
    fastavro.schemaless_writer(buf, _parsed(t, "key"), dict(key))
    return buf.getvalue()


def _json_value(v: Any, t: Any, decimals: str = "base64") -> Any:
    """Python value → JsonConverter representation (decimals as base64 of the unscaled integer, or as text
    for ``decimal.handling.mode=string``)."""
    v = _to_connect(v, t)
    if isinstance(t, list):
        t = next((x for x in t if x != "null"), t)
    if isinstance(v, Decimal) and decimals == "string":
        return str(v)
    if isinstance(v, Decimal) and isinstance(t, dict):
        scale = int(t.get("scale", 0))
        unscaled = int(v.scaleb(scale))
        raw = unscaled.to_bytes(max(1, (unscaled.bit_length() + 8) // 8), "big", signed=True)
        return base64.b64encode(raw).decode()
    return v


def _connect_schema(t: Any, field: str | None = None, named: dict[str, Any] | None = None) -> dict[str, Any]:
    """Avro schema → Kafka Connect JSON converter schema (what ``schemas.enable=true`` embeds)."""
    named = {} if named is None else named
    optional = False
    if isinstance(t, list):
        optional = "null" in t
        t = next(x for x in t if x != "null")
    if isinstance(t, str) and t in named:
        t = named[t]
    out: dict[str, Any]
    if isinstance(t, str):
        prim = {"int": "int32", "long": "int64", "string": "string", "bytes": "bytes", "boolean": "boolean",
                "double": "double", "float": "float"}
        out = {"type": prim.get(t, "struct")}
    elif t["type"] == "record":
        named[t["name"]] = t
        out = {"type": "struct", "fields": [_connect_schema(f["type"], f["name"], named) for f in t["fields"]],
               "name": t.get("connect.name", t["name"])}
    else:
        out = _connect_schema(t["type"], None, named)
        if "connect.name" in t:
            out["name"] = t["connect.name"]
            out["version"] = 1
        if "connect.parameters" in t:
            out["parameters"] = t["connect.parameters"]
    out["optional"] = optional
    if field is not None:
        out["field"] = field
    return out


def encode_json(t: SampleTable, env: Mapping[str, Any], *, schemas: bool = True, decimals: str = "base64") -> bytes:
    """JsonConverter output; ``decimals="string"`` mimics ``decimal.handling.mode=string`` (schemaless only)."""
    fields = value_schema(t)["fields"][0]["type"][1]["fields"]

    def row(r: Mapping[str, Any] | None) -> Any:
        return None if r is None else {f["name"]: _json_value(r.get(f["name"]), f["type"], decimals)
                                       for f in fields}

    payload = dict(env)
    payload["before"] = row(env["before"])
    payload["after"] = row(env["after"])
    if not schemas:
        return json.dumps(payload, separators=(",", ":")).encode()
    return json.dumps({"schema": _json_schema(t), "payload": payload}, separators=(",", ":")).encode()


@cache
def _json_schema(t: SampleTable) -> dict[str, Any]:
    return _connect_schema(value_schema(t))


def json_key(key: Mapping[str, Any]) -> bytes:
    return json.dumps(dict(key), separators=(",", ":")).encode()


def change_stream(gen: SampleGenerator, t: SampleTable, n: int, *, update_every: int = 0,
                  delete_every: int = 0) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """``n`` envelopes for ``t`` as (key, envelope) pairs: creates, with an update after every
    ``update_every`` creates and a delete after every ``delete_every`` creates (0 = never)."""
    produced = 0
    tx = 1000
    while produced < n:
        tx += 1
        row = gen.row(t)
        yield {"id": row["id"]}, envelope(t, "c", before=None, after=row, tx_id=tx, lsn=gen.next_lsn())
        produced += 1
        if update_every and produced < n and row["id"] % update_every == 0:
            changed = dict(row)
            for k in ("gross_amount", "amount", "gross_salary"):
                if k in changed:
                    changed[k] = changed[k] + Decimal("1.00")
            if "net_amount" in changed and "tax_amount" in changed and "gross_amount" in changed:
                changed["net_amount"] = changed["gross_amount"] - changed["tax_amount"]
            if "net_pay" in changed:
                changed["net_pay"] = changed["gross_salary"] - changed["social_insurance_employee"] - \
                    changed["income_tax"]
            tx += 1
            yield {"id": row["id"]}, envelope(t, "u", before=row, after=changed, tx_id=tx, lsn=gen.next_lsn())
            produced += 1
            row = changed
        if delete_every and produced < n and row["id"] % delete_every == 0:
            tx += 1
            yield {"id": row["id"]}, envelope(t, "d", before=row, after=None, tx_id=tx, lsn=gen.next_lsn())
            produced += 1
