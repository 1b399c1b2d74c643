"""Golden files: readable sample events and the vouchers they must produce (``kingdee-cdc mapping test``).

Events are written like Debezium envelopes, compactly::

    - op: c
      source: {system: pos, table: sales_order, ts_ms: 1794700000000, lsn: 1001}
      key: {id: 1}
      after: {id: 1, order_no: SO1, gross_amount: "113.00", order_date: 2026-11-12, ...}

Every golden event goes through the *same decoding and typing as a real event*: it is written out as a
Debezium JSON-converter record (schema + payload) and read back by ``events.Decoder``. So ``"113.00"``
arrives as the text Debezium's ``decimal.handling.mode=string`` sends, an unquoted ``113.5`` as the binary
float of ``double`` mode, a date as Debezium's day number — a green ``mapping test`` means a rule that works
on production events.

When the table's schema is known (``schemas/<system>.<table>.envelope.avsc``), each event is run in all
three decimal modes — ``precise`` (Connect Decimal bytes at the column's scale), ``string`` and ``double`` —
and the three results must be identical (the same business row, the same voucher). A case may narrow them
with ``decimal_modes: [string]`` (e.g. a value with more decimals than the column's scale can only come as
text). Expectations, one per event: ``{vouchers: [...]}`` with entries as ``debit 1001 113.00 FLEX6=C0001``
lines, ``{rejected: CODE}`` or ``{skipped: true}``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

from connector.events import ChangeEvent, Decoder
from connector.events._types import CONNECT_DECIMAL, VARIABLE_SCALE_DECIMAL, FieldType, from_avro
from connector.ledger._serde import voucher_summary
from connector.mapping._engine import InMemoryLedger, Mapper, MapResult
from connector.mapping._compile import RuleSet
from connector.mapping._spec import GoldenCase

MODES: Final = ("precise", "string", "double")
_EPOCH_DATE: Final = date(1970, 1, 1)
_LOCAL_EPOCH: Final = datetime(1970, 1, 1)

#: (system, table) → the row's column types, from Avro envelope schemas
TableSchemas = Mapping[tuple[str, str], FieldType]


class GoldenError(ValueError):
    """A golden event cannot be written as a Debezium record (says which column and why)."""


def load_table_schemas(directory: Path | None) -> dict[tuple[str, str], FieldType]:
    """Row types from ``<system>.<table>.envelope.avsc`` files (the ``after`` record of each envelope)."""
    out: dict[tuple[str, str], FieldType] = {}
    if directory is None or not directory.is_dir():
        return out
    for path in sorted(directory.glob("*.envelope.avsc")):
        system, _, table = path.name.removesuffix(".envelope.avsc").partition(".")
        try:
            root = from_avro(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, KeyError, TypeError):
            continue
        row = dict(root.fields).get("after")
        if row is not None and row.kind == "struct":
            out[(system, table)] = row
    return out


def default_schemas_dir(rules_dir: Path) -> Path | None:
    """``schemas/`` beside the rules directory (the repository layout) or inside it."""
    for candidate in (rules_dir.resolve().parent / "schemas", rules_dir / "schemas"):
        if candidate.is_dir():
            return candidate
    return None


# --------------------------------------------------------------------------- golden event → Debezium record
def _as_decimal(v: Any, column: str) -> Decimal:
    if isinstance(v, Decimal):
        return v
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise GoldenError(f"column {column}: {v!r} is not a decimal number")
    try:
        return Decimal(repr(v) if isinstance(v, float) else str(v))
    except ArithmeticError:
        raise GoldenError(f"column {column}: {v!r} is not a decimal number") from None


def _unscaled_b64(d: Decimal, scale: int, column: str) -> str:
    unscaled = d.scaleb(scale)
    if unscaled != unscaled.to_integral_value():
        raise GoldenError(f"column {column}: {d} has more decimals than the column's scale {scale} (a database "
                          "would not store it; give the case decimal_modes: [string] to send it as text)")
    n = int(unscaled)
    raw = n.to_bytes(max(1, (n.bit_length() + 8) // 8), "big", signed=True)
    return base64.b64encode(raw).decode()


def _column(name: str, v: Any, declared: FieldType | None, mode: str | None) -> tuple[dict[str, Any], Any]:
    """The Connect JSON schema of one column and its value as Debezium's JsonConverter would write it."""
    field: dict[str, Any] = {"field": name, "optional": True}
    kind = declared.name if declared is not None else None
    if kind == CONNECT_DECIMAL or kind == VARIABLE_SCALE_DECIMAL or (declared is None and isinstance(v, Decimal)):
        if v is None:
            return {**field, "type": "string"}, None
        d = _as_decimal(v, name)
        if declared is not None and kind == CONNECT_DECIMAL:
            scale = int(declared.params.get("scale", "0"))
        else:
            scale = max(0, -int(d.as_tuple().exponent))
        if mode == "string":
            shown = d.quantize(Decimal(1).scaleb(-scale)) if d.scaleb(scale) == d.scaleb(scale).to_integral_value() \
                else d
            return {**field, "type": "string"}, format(shown, "f")
        if mode == "double":
            return {**field, "type": "double"}, float(d)
        return ({**field, "type": "bytes", "name": CONNECT_DECIMAL, "version": 1,
                 "parameters": {"scale": str(scale)}}, _unscaled_b64(d, scale, name))
    if kind in ("io.debezium.time.Date", "org.apache.kafka.connect.data.Date") or \
            (declared is None and isinstance(v, date) and not isinstance(v, datetime)):
        day = date.fromisoformat(v) if isinstance(v, str) else v
        value = None if day is None else (day - _EPOCH_DATE).days
        return {**field, "type": "int32", "name": "io.debezium.time.Date", "version": 1}, value
    if kind == "io.debezium.time.ZonedTimestamp" or (declared is None and isinstance(v, datetime) and v.tzinfo):
        ts = datetime.fromisoformat(v) if isinstance(v, str) else v
        text = None if ts is None else ts.astimezone(UTC).isoformat().replace("+00:00", "Z")
        return {**field, "type": "string", "name": "io.debezium.time.ZonedTimestamp", "version": 1}, text
    if kind in ("io.debezium.time.MicroTimestamp", "io.debezium.time.Timestamp") or \
            (declared is None and isinstance(v, datetime)):
        ts = datetime.fromisoformat(v) if isinstance(v, str) else v
        if ts is not None and ts.tzinfo is not None:
            raise GoldenError(f"column {name}: {v!r} has a time zone but the column is a timestamp without zone")
        micros = None if ts is None else (ts - _LOCAL_EPOCH) // timedelta(microseconds=1)
        return {**field, "type": "int64", "name": "io.debezium.time.MicroTimestamp", "version": 1}, micros
    if declared is not None and declared.kind in ("int8", "int16", "int32", "int64"):
        return {**field, "type": declared.kind}, v
    if declared is not None and declared.kind in ("float32", "float64"):
        return {**field, "type": "double"}, None if v is None else float(_as_decimal(v, name))
    if declared is not None and declared.kind == "string":
        return {**field, "type": "string"}, None if v is None else str(v)
    if isinstance(v, bool):
        return {**field, "type": "boolean"}, v
    if isinstance(v, int):
        return {**field, "type": "int64"}, v
    if isinstance(v, float):
        return {**field, "type": "double"}, v
    if v is None or isinstance(v, str):
        return {**field, "type": "string"}, v
    return {**field, "type": "string"}, json.dumps(v, default=str, ensure_ascii=False)


def golden_record(spec: Mapping[str, Any], seq: int = 0, *, row_type: FieldType | None = None,
                  mode: str | None = None) -> tuple[bytes, bytes | None]:
    """(value, key) bytes of a golden event as Debezium's JSON converter writes them (``schemas.enable``)."""
    src = dict(spec.get("source") or {})
    if "system" not in src or "table" not in src:
        raise GoldenError("source needs system and table")
    declared = dict(row_type.fields) if row_type is not None else {}
    images = {k: spec.get(k) for k in ("before", "after")}
    columns: list[str] = []
    for img in images.values():
        for k in dict(img or {}):
            if k not in columns:
                columns.append(k)
    schemas: dict[str, dict[str, Any]] = {}
    payload_images: dict[str, dict[str, Any] | None] = {}
    for name, img in images.items():
        if img is None:
            payload_images[name] = None
            continue
        row: dict[str, Any] = {}
        for col, v in dict(img).items():
            try:
                schema, value = _column(col, v, declared.get(col), mode)
            except (ValueError, TypeError, OverflowError) as e:
                if isinstance(e, GoldenError):
                    raise
                kind = declared[col].name or declared[col].kind if col in declared else type(v).__name__
                raise GoldenError(f"column {col}: {v!r} does not fit the column's type {kind} ({e})") from None
            if schema.get("name") is not None or col not in schemas:
                schemas[col] = schema
            row[col] = value
        payload_images[name] = row
    row_schema = {"type": "struct", "optional": True, "name": f"{src['system']}.{src['table']}.Value",
                  "fields": [schemas[c] for c in columns if c in schemas]}
    snapshot = src.get("snapshot", "false")
    ts_ms = int(src.get("ts_ms", 1_795_000_000_000))
    source: dict[str, Any] = {
              "version": "golden", "connector": str(src.get("connector", "postgresql")), "name": str(src["system"]),
              "ts_ms": ts_ms, "snapshot": str(snapshot).lower()
              if isinstance(snapshot, bool) else str(snapshot), "db": str(src.get("db", f"{src['system']}db")),
              "schema": str(src.get("schema", "public")), "table": str(src["table"]),
              "txId": int(src.get("tx_id", 500 + seq)), "lsn": int(src.get("lsn", 1000 + seq))}
    payload: dict[str, Any] = {**payload_images, "source": source, "op": str(spec.get("op", "c")),
                               "ts_ms": ts_ms + 40}
    if spec.get("transaction") is not None:
        payload["transaction"] = dict(spec["transaction"])
    schema = {"type": "struct", "name": f"{src['system']}.{src['table']}.Envelope", "optional": False,
              "fields": [{**row_schema, "field": "before"}, {**row_schema, "field": "after"},
                         {"type": "struct", "field": "source", "optional": False, "fields": []},
                         {"type": "string", "field": "op", "optional": False},
                         {"type": "int64", "field": "ts_ms", "optional": True}]}
    value = json.dumps({"schema": schema, "payload": payload}, ensure_ascii=False, separators=(",", ":"))
    key = spec.get("key")
    key_bytes = json.dumps(dict(key), default=str, separators=(",", ":")).encode() if key is not None else None
    return value.encode(), key_bytes


_DECODER: Final = Decoder()


def golden_event(spec: Mapping[str, Any], seq: int = 0, *, row_type: FieldType | None = None,
                 mode: str | None = None) -> ChangeEvent:
    """A golden-file event, decoded from the Debezium record ``golden_record`` writes for it."""
    value, key = golden_record(spec, seq, row_type=row_type, mode=mode)
    ev = _DECODER.decode(value, key=key)
    if not isinstance(ev, ChangeEvent):
        raise GoldenError(f"the event does not decode: {ev}")
    return ev


# --------------------------------------------------------------------------- running the cases
def _norm(v: Any) -> Any:
    if isinstance(v, date):
        return v.isoformat()
    if isinstance(v, (int, Decimal)) and not isinstance(v, bool):
        return str(v)
    return v


def outcome(result: MapResult, local: str = "CNY") -> dict[str, Any]:
    """A result in golden-file form."""
    if result.rejections:
        return {"rejected": result.rejections[0].code.value,
                "reasons": [str(r) for r in result.rejections]}
    if not result.vouchers:
        return {"skipped": True, "reason": result.skipped}
    return {"vouchers": [voucher_summary(v, local) for v in result.vouchers]}


def _fingerprint(result: MapResult) -> Any:
    """What must not depend on the decimal mode: the vouchers (keys included) or the rejection codes."""
    if result.rejections:
        return ("rejected", tuple(r.code.value for r in result.rejections))
    return ("vouchers", tuple((v.key, v.kind.value, v.book, v.date, v.group, v.explanation,
                               tuple((e.account, e.side.value, e.amount, e.amount_for, e.currency, e.rate,
                                      tuple(sorted(e.dimensions.items())), e.explanation) for e in v.entries))
                              for v in result.vouchers))


@dataclass(frozen=True, slots=True)
class GoldenFailure:
    file: str
    case: str
    event: int
    problem: str
    mode: str | None = None

    def __str__(self) -> str:
        mode = f" [{self.mode} decimals]" if self.mode else ""
        return f"{self.file}: {self.case} (event {self.event + 1}){mode}: {self.problem}"


def _compare(expected: Mapping[str, Any], got: Mapping[str, Any]) -> str | None:
    if "rejected" in expected:
        if got.get("rejected") != expected["rejected"]:
            return f"expected rejection {expected['rejected']}, got {got}"
        return None
    if expected.get("skipped"):
        return None if got.get("skipped") else f"expected no voucher, got {got}"
    want = expected.get("vouchers", [])
    have = got.get("vouchers")
    if have is None:
        return f"expected {len(want)} voucher(s), got {got}"
    if len(want) != len(have):
        return f"expected {len(want)} voucher(s), got {len(have)}: {have}"
    for i, (w, h) in enumerate(zip(want, have)):
        for k, wv in w.items():
            hv = h.get(k)
            if k == "entries":
                if [str(x) for x in wv] != hv:
                    return f"voucher {i + 1} entries:\n    expected {[str(x) for x in wv]}\n    got      {hv}"
            elif k == "review":
                if bool(wv) != bool(hv) or (isinstance(wv, list) and wv != hv):
                    return f"voucher {i + 1} review: expected {wv}, got {hv}"
            elif _norm(wv) != hv:
                return f"voucher {i + 1} {k}: expected {_norm(wv)!r}, got {hv!r}"
    return None


def _modes(case: GoldenCase, row_types: Iterable[FieldType | None]) -> tuple[str | None, ...]:
    if case.decimal_modes:
        return tuple(case.decimal_modes)
    decimal = any(t is not None and any(ft.name in (CONNECT_DECIMAL, VARIABLE_SCALE_DECIMAL) for _, ft in t.fields)
                  for t in row_types)
    return MODES if decimal else (None,)


def run_golden(rules: RuleSet, cases: tuple[tuple[str, GoldenCase], ...] | None = None, *,
               schemas: TableSchemas | None = None) -> tuple[int, list[GoldenFailure]]:
    """Run every golden case (each on a fresh in-memory ledger, once per decimal mode); return
    (events checked, failures). A result that differs between decimal modes is a failure of its own."""
    checked = 0
    failures: list[GoldenFailure] = []
    schemas = schemas or {}
    for file, case in (rules.golden if cases is None else cases):
        if len(case.events) != len(case.expect):
            failures.append(GoldenFailure(file, case.name, 0, f"{len(case.events)} events but "
                                                               f"{len(case.expect)} expectations"))
            continue
        row_types = [schemas.get((str((e.get("source") or {}).get("system")),
                                  str((e.get("source") or {}).get("table")))) for e in case.events]
        seen: dict[int, tuple[str | None, Any]] = {}
        for mode in _modes(case, row_types):
            mapper = Mapper(rules)
            ledger = InMemoryLedger()
            for i, (spec, expected) in enumerate(zip(case.events, case.expect)):
                try:
                    ev = golden_event(spec, i, row_type=row_types[i], mode=mode)
                except GoldenError as e:
                    failures.append(GoldenFailure(file, case.name, i, str(e), mode))
                    break
                result = mapper.map(ev, ledger)
                ledger.apply(result)
                if mode is None or mode == _modes(case, row_types)[0]:
                    checked += 1
                problem = _compare(expected, outcome(result))
                if problem:
                    failures.append(GoldenFailure(file, case.name, i, problem, mode))
                    continue
                fp = _fingerprint(result)
                if i in seen and seen[i][1] != fp:
                    failures.append(GoldenFailure(
                        file, case.name, i, f"differs from {seen[i][0]} decimals: {fp} vs {seen[i][1]}", mode))
                seen.setdefault(i, (mode, fp))
    return checked, failures
