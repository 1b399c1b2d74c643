"""Vouchers at the edges: Kingdee ``GL_VOUCHER`` Save ``Model`` JSON, the canonical Avro record, readable text.

``to_kingdee`` follows the field facts in ``docs/reference/kingdee-webapi.md`` §4: references as
``{"FNumber": …}``, dimensions as an *object* ``FDetailID`` with full ``FDETAILID__<slot>`` keys, ``FDC``
1/-1, explanation ≤ 500 characters. The voucher key goes into a configurable custom header field and/or
as a ``[kdcdc:<key>]`` marker in the first entry's explanation so an ambiguous post can be found again.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import re
from collections.abc import Mapping
from decimal import Decimal
from functools import cache
from importlib import resources
from typing import Any, Final, NamedTuple

import fastavro
import msgspec

from connector.ledger._checks import Book
from connector.ledger._model import Entry, RowRef, Side, SourceRef, SummaryRef, Voucher, VoucherKind
from connector.money import quantize

SCHEMA_PATH: Final = resources.files("connector.schemas").joinpath("ledger.voucher.avsc")
MARKER_PREFIX: Final = "[kdcdc:"


def detail_key(slot: str) -> str:
    """Slot → ``FDetailID`` key: standard slots are ``FDETAILID__FFLEX4`` …, custom ones ``FDETAILID__FF100002``."""
    return f"FDETAILID__F{slot}" if slot.startswith("FLEX") else f"FDETAILID__{slot}"


def slot_of(detail_key_name: str) -> str:
    """``FDETAILID__FFLEX6`` → ``FLEX6``; ``FDETAILID__FF100002`` → ``FF100002`` (inverse of ``detail_key``)."""
    name = detail_key_name.split("__", 1)[-1].upper()
    return name[1:] if name.startswith("FFLEX") else name


def key_marker(key: str) -> str:
    return f"{MARKER_PREFIX}{key}]"


# --------------------------------------------------------------------------- Kingdee
def to_kingdee(v: Voucher, book: Book | None = None, *, key_field: str | None = None, marker: bool = True,
               status: str = "A") -> dict[str, Any]:
    """The ``Model`` of a ``GL_VOUCHER`` Save/BatchSave request (Decimals kept; see ``kingdee_json``)."""
    numbers = book.currency_numbers if book else {"CNY": "PRE001"}
    entities = []
    for i, e in enumerate(v.entries):
        expl = e.explanation or v.explanation
        if marker and i == 0:
            mark = key_marker(v.key)
            expl = f"{expl[: 500 - len(mark) - 1]} {mark}"
        ent: dict[str, Any] = {
            "FEXPLANATION": expl,
            "FACCOUNTID": {"FNumber": e.account},
            "FCURRENCYID": {"FNumber": numbers.get(e.currency, e.currency)},
            "FEXCHANGERATETYPE": {"FNumber": e.rate_type},
            "FEXCHANGERATE": e.rate,
            "FAMOUNTFOR": e.amount_for,
            "FDEBIT": e.amount if e.side is Side.DEBIT else Decimal(0),
            "FCREDIT": e.amount if e.side is Side.CREDIT else Decimal(0),
            "FDC": e.side.fdc,
        }
        if e.dimensions:
            ent["FDetailID"] = {detail_key(slot): {"FNumber": val} for slot, val in sorted(e.dimensions.items())}
        if e.quantity is not None:
            ent["FQty"] = e.quantity
        if e.price is not None:
            ent["FPrice"] = e.price
        if e.unit:
            ent["FUnitId"] = {"FNumber": e.unit}
        if e.settle_type:
            ent["FSettleTypeID"] = {"FNumber": e.settle_type}
        if e.settle_no:
            ent["FSETTLENO"] = e.settle_no
        entities.append(ent)
    model: dict[str, Any] = {
        "FAccountBookID": {"FNumber": v.book},
        "FDate": v.date.isoformat(),
        "FVOUCHERGROUPID": {"FNumber": v.group},
        "FVOUCHERGROUPNO": "",
        "FATTACHMENTS": v.attachments,
        "FDocumentStatus": status,
        "FEntity": entities,
    }
    if v.business_date is not None:
        model["FBUSDATE"] = v.business_date.isoformat()
    if key_field:
        model[key_field] = v.key
    return model


_DEC_TOKEN: Final = re.compile(r'"\\u0000dec:([-0-9.Ee+]+)"')


def kingdee_json(obj: Any) -> bytes:
    """JSON for Kingdee with every ``Decimal`` written as an exact JSON number (never through a float)."""
    def default(o: Any) -> Any:
        if isinstance(o, Decimal):
            return f"\u0000dec:{o}"
        raise TypeError(f"not JSON serialisable: {type(o).__name__}")
    text = json.dumps(obj, default=default, ensure_ascii=False, separators=(",", ":"))
    return _DEC_TOKEN.sub(r"\1", text).encode("utf-8")


# --------------------------------------------------------------------------- Avro
@cache
def voucher_schema() -> Any:
    return fastavro.parse_schema(json.loads(SCHEMA_PATH.read_text()))


def to_avro_record(v: Voucher) -> dict[str, Any]:
    return {
        "key": v.key, "kind": v.kind.value, "reverses": v.reverses, "book": v.book, "data_centre": v.data_centre,
        "date": v.date, "business_date": v.business_date, "group": v.group, "explanation": v.explanation,
        "attachments": v.attachments, "rule_id": v.rule_id, "rule_version": v.rule_version,
        "review_reasons": list(v.review_reasons), "original_date": v.original_date, "opening": v.opening,
        "summary": None if v.summary is None else {
            "parts": [{"name": n, "value": x} for n, x in v.summary.parts], "close": v.summary.close,
            "late": v.summary.late, "tz": v.summary.tz},
        "source": {"system": v.source.row.system, "table": v.source.row.table, "pk": v.source.row.pk,
                   "position": v.source.position, "op": v.source.op, "ts_ms": v.source.ts_ms},
        "entries": [{
            "account": e.account, "side": e.side.value, "amount": quantize(e.amount, 2),
            "explanation": e.explanation, "currency": e.currency, "rate_type": e.rate_type,
            "rate": quantize(e.rate, 10), "amount_for": quantize(e.amount_for, 4),
            "quantity": None if e.quantity is None else quantize(e.quantity, 8),
            "price": None if e.price is None else quantize(e.price, 8), "unit": e.unit,
            "settle_type": e.settle_type, "settle_no": e.settle_no, "dimensions": dict(e.dimensions),
        } for e in v.entries],
    }


def from_avro_record(r: Mapping[str, Any]) -> Voucher:
    s = r["source"]
    return Voucher(
        key=r["key"], kind=VoucherKind(r["kind"]), reverses=r["reverses"], book=r["book"],
        data_centre=r["data_centre"], date=r["date"], business_date=r["business_date"], group=r["group"],
        explanation=r["explanation"], attachments=r["attachments"], rule_id=r["rule_id"],
        rule_version=r["rule_version"], review_reasons=tuple(r["review_reasons"]),
        original_date=r.get("original_date"), opening=bool(r.get("opening", False)),
        summary=None if r.get("summary") is None else SummaryRef(
            tuple((p["name"], p["value"]) for p in r["summary"]["parts"]), r["summary"]["close"],
            r["summary"]["late"], r["summary"]["tz"]),
        source=SourceRef(row=RowRef(system=s["system"], table=s["table"], pk=s["pk"]), position=s["position"],
                         op=s["op"], ts_ms=s["ts_ms"]),
        entries=tuple(Entry(
            account=e["account"], side=Side(e["side"]), amount=e["amount"], explanation=e["explanation"],
            currency=e["currency"], rate_type=e["rate_type"], rate=e["rate"].normalize() if e["rate"] else e["rate"],
            amount_for=e["amount_for"], quantity=e["quantity"], price=e["price"], unit=e["unit"],
            settle_type=e["settle_type"], settle_no=e["settle_no"], dimensions=dict(e["dimensions"]))
            for e in r["entries"]))


def voucher_to_avro(v: Voucher) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, voucher_schema(), to_avro_record(v))
    return buf.getvalue()


def voucher_from_avro(raw: bytes) -> Voucher:
    rec = fastavro.schemaless_reader(io.BytesIO(raw), voucher_schema(), None)
    return from_avro_record(rec)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- text (previews, golden files)
def _plain(d: Decimal) -> str:
    """``Decimal('1E+1')`` → ``10``; ``7.1350`` → ``7.135`` (no exponent, no trailing zeros)."""
    return format(d.normalize(), "f")


def render_entry(e: Entry, local: str = "CNY") -> str:
    """``debit 1122 300.00 FLEX6=C0001`` — plus ``(USD 100.00 @ 7.12)`` for foreign currency."""
    parts = [e.side.value, e.account, str(e.amount)]
    if e.currency != local or e.rate != 1:
        parts.append(f"({e.currency} {e.amount_for} @ {_plain(e.rate)})")
    parts += [f"{k}={v}" for k, v in sorted(e.dimensions.items())]
    if e.quantity is not None:
        parts.append(f"qty={_plain(e.quantity)}")
    return " ".join(parts)


def voucher_summary(v: Voucher, local: str = "CNY") -> dict[str, Any]:
    """A readable, JSON-safe view of a voucher (amounts as strings) for previews and golden files."""
    out: dict[str, Any] = {
        "kind": v.kind.value, "book": v.book, "date": v.date.isoformat(), "group": v.group,
        "explanation": v.explanation, "entries": [render_entry(e, local) for e in v.entries],
    }
    if v.reverses:
        out["reverses"] = v.reverses
    if v.original_date is not None:
        out["original_date"] = v.original_date.isoformat()
    if v.opening:
        out["opening"] = True
    if v.review_reasons:
        out["review"] = list(v.review_reasons)
    if v.summary is not None:
        out["summary"] = {name: value if value is not None else (v.book if name == "book" else v.date.isoformat())
                          for name, value in v.summary.parts}
    return out


# --------------------------------------------------------------------------- journal payload (JSON)
#: The layout of one entry in the payload: ``Entry``'s fields in order (msgspec writes a NamedTuple as an array).
#: Migration 0009's ``entries`` view reads these positions; tests/unit/test_payload.py holds the two equal.
PAYLOAD_ENTRY_FIELDS: Final = ("account", "side", "amount", "explanation", "currency", "rate_type", "rate",
                               "amount_for", "quantity", "price", "unit", "settle_type", "settle_no", "dimensions")


def _enc_hook(o: Any) -> Any:
    if isinstance(o, Mapping):  # an entry's dimensions (a read-only mapping)
        return dict(o)
    raise NotImplementedError(f"not JSON serialisable: {type(o).__name__}")


#: Decimals are written as their exact text (``str``), dates as ISO dates, enums as their values.
_ENCODER: Final = msgspec.json.Encoder(enc_hook=_enc_hook)


def voucher_to_json(v: Voucher) -> bytes:
    """Compact JSON of a voucher for the journal's ``payload`` column (decimals as strings, exact).

    Same content as the Avro record. Written by msgspec (decision 0009): the entries go in as they are — an
    ``Entry`` is written as an array of its fields (``PAYLOAD_ENTRY_FIELDS``) with each ``Decimal`` as its
    exact text — so nothing is built per line in Python. The payload is the journal's only copy of the
    entries (migration 0009: ``entries`` is a view over it).
    """
    s = v.source
    doc: dict[str, Any] = {
        "v": 1, "key": v.key, "kind": v.kind, "reverses": v.reverses, "book": v.book,
        "data_centre": v.data_centre, "date": v.date, "business_date": v.business_date, "group": v.group,
        "explanation": v.explanation, "attachments": v.attachments, "rule_id": v.rule_id,
        "rule_version": v.rule_version, "review_reasons": v.review_reasons,
        "source": (s.row.system, s.row.table, s.row.pk, s.position, s.op, s.ts_ms), "entries": v.entries,
    }
    if v.original_date is not None:
        doc["original_date"] = v.original_date
    if v.opening:
        doc["opening"] = True
    if v.summary is not None:
        doc["summary"] = v.summary
    return _ENCODER.encode(doc)


class _PayloadEntry(NamedTuple):
    """An entry as the payload holds it (``dimensions`` null in payloads written before 0009)."""

    account: str
    side: Side
    amount: Decimal
    explanation: str
    currency: str
    rate_type: str
    rate: Decimal
    amount_for: Decimal
    quantity: Decimal | None
    price: Decimal | None
    unit: str | None
    settle_type: str | None
    settle_no: str | None
    dimensions: dict[str, str] | None = None


class _Payload(msgspec.Struct, frozen=True):
    v: int
    key: str
    kind: VoucherKind
    reverses: str | None
    book: str
    data_centre: str | None
    date: dt.date
    business_date: dt.date | None
    group: str
    explanation: str
    attachments: int
    rule_id: str
    rule_version: str
    review_reasons: tuple[str, ...]
    source: tuple[str, str, str, str, str, int | None]
    entries: tuple[_PayloadEntry, ...]
    original_date: dt.date | None = None
    opening: bool = False
    summary: tuple[tuple[tuple[str, str | None], ...], str, str, str] | None = None


_DECODER: Final = msgspec.json.Decoder(_Payload)


def _entry(e: _PayloadEntry) -> Entry:
    return Entry._make(e) if e.dimensions else Entry(*e[:13])


def voucher_from_json(raw: bytes) -> Voucher:
    """The voucher of a ``payload`` (typed decoding: decimals and dates straight from their text)."""
    d = _DECODER.decode(raw)
    s = d.source
    return Voucher(
        key=d.key, kind=d.kind, reverses=d.reverses, book=d.book, data_centre=d.data_centre, date=d.date,
        business_date=d.business_date, group=d.group, explanation=d.explanation, attachments=d.attachments,
        rule_id=d.rule_id, rule_version=d.rule_version, review_reasons=d.review_reasons,
        original_date=d.original_date, opening=d.opening,
        summary=None if d.summary is None else SummaryRef(*d.summary),
        source=SourceRef(row=RowRef(system=s[0], table=s[1], pk=s[2]), position=s[3], op=s[4], ts_ms=s[5]),
        entries=tuple(map(_entry, d.entries)))
