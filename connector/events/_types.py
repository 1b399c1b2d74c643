"""Connect / Debezium logical types → Python values, compiled once per schema.

Both wire formats describe fields the Kafka Connect way: a primitive type plus an optional semantic
``name`` (``org.apache.kafka.connect.data.Decimal``, ``io.debezium.time.MicroTimestamp`` …) and
``parameters`` (``scale``). JSON converter schemas carry them directly; Avro schemas carry them as
``connect.name`` / ``connect.parameters``. Both are normalised to ``FieldType`` and compiled into a
converter closure, cached per schema, so the per-record cost is one dict walk.
"""

from __future__ import annotations

import binascii
import decimal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, Final

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_DATE: Final = date(1970, 1, 1)

CONNECT_DECIMAL: Final = "org.apache.kafka.connect.data.Decimal"
VARIABLE_SCALE_DECIMAL: Final = "io.debezium.data.VariableScaleDecimal"


class ConversionError(ValueError):
    """A field value does not match its declared type (carries the field path and a failure class name)."""

    def __init__(self, message: str, kind: str = "FieldTypeMismatch") -> None:
        super().__init__(message)
        self.kind = kind


#: Kafka Connect's (and every common sink's) decimal limits: at most 38 digits, scale within ±38. Larger values
#: are poison, refused before any arithmetic: converting a 400 KB unscaled integer alone takes seconds.
MAX_DECIMAL_DIGITS: Final = 38
_MAX_UNSCALED_BYTES: Final = 17  # 136 bits: every 38-digit unscaled integer fits
#: Exact up to the limit: the default context (28 digits) would round a 29–38 digit decimal silently.
_EXACT: Final = decimal.Context(prec=MAX_DECIMAL_DIGITS + 3, traps=[decimal.Inexact, decimal.InvalidOperation,
                                                                    decimal.Overflow])


@dataclass(frozen=True, slots=True)
class FieldType:
    """A Connect-style type: primitive ``kind`` plus semantic ``name`` and ``params``."""

    kind: str  # struct | int8 | int16 | int32 | int64 | float32 | float64 | boolean | string | bytes | array | map
    name: str | None = None
    params: Mapping[str, str] = field(default_factory=dict)
    fields: tuple[tuple[str, FieldType], ...] = ()
    items: FieldType | None = None


# --------------------------------------------------------------------------- schema normalisation
_JSON_KINDS: Final = {"float": "float32", "double": "float64"}


def from_connect_json(schema: Mapping[str, Any]) -> FieldType:
    """Normalise a JsonConverter schema (``{"type":"struct","fields":[{"field":…}]}``)."""
    kind = str(schema.get("type", ""))
    kind = _JSON_KINDS.get(kind, kind)
    params = {str(k): str(v) for k, v in (schema.get("parameters") or {}).items()}
    name = schema.get("name")
    if kind == "struct":
        fields = tuple((str(f["field"]), from_connect_json(f)) for f in schema.get("fields", ()))
        return FieldType("struct", name, params, fields)
    if kind == "array":
        return FieldType("array", name, params, items=from_connect_json(schema["items"]))
    if kind == "map":
        return FieldType("map", name, params, items=from_connect_json(schema["values"]))
    return FieldType(kind, name, params)


_AVRO_PRIMITIVES: Final = {
    "int": "int32", "long": "int64", "float": "float32", "double": "float64",
    "boolean": "boolean", "string": "string", "bytes": "bytes", "null": "null",
}


def from_avro(schema: Any, named: dict[str, FieldType] | None = None, namespace: str = "") -> FieldType:
    """Normalise an Avro schema (as parsed JSON) including named-type references (``"Value"``)."""
    named = {} if named is None else named
    if isinstance(schema, str):
        if schema in _AVRO_PRIMITIVES:
            return FieldType(_AVRO_PRIMITIVES[schema])
        ref = named.get(schema) or named.get(f"{namespace}.{schema}" if namespace else schema)
        if ref is None:
            raise ConversionError(f"unknown Avro named type {schema!r}", "UnusableSchema")
        return ref
    if isinstance(schema, list):
        branches = [s for s in schema if s != "null"]
        if not branches:
            return FieldType("null")
        return from_avro(branches[0], named, namespace)
    if not isinstance(schema, Mapping):
        raise ConversionError(f"not an Avro schema: {str(schema)[:80]!r}", "UnusableSchema")
    typ = schema.get("type")
    name = schema.get("connect.name")
    params = {str(k): str(v) for k, v in (schema.get("connect.parameters") or {}).items()}
    if typ == "record":
        ns = schema.get("namespace", namespace) or ""
        rec_name = str(schema.get("name", ""))
        full = rec_name if "." in rec_name or not ns else f"{ns}.{rec_name}"
        # Register a placeholder first: recursive types are not used by Debezium, but references are.
        fields_list: list[tuple[str, FieldType]] = []
        ft = FieldType("struct", name or full, params, ())
        named[full] = ft
        named.setdefault(rec_name, ft)
        for f in schema.get("fields", ()):
            fields_list.append((str(f["name"]), from_avro(f["type"], named, ns)))
        ft = FieldType("struct", name or full, params, tuple(fields_list))
        named[full] = ft
        named[rec_name] = ft
        return ft
    if typ == "array":
        return FieldType("array", name, params, items=from_avro(schema["items"], named, namespace))
    if typ == "map":
        return FieldType("map", name, params, items=from_avro(schema["values"], named, namespace))
    if typ == "enum":
        return FieldType("string", name, params)
    if typ == "fixed":
        return FieldType("bytes", name, params)
    if isinstance(typ, (str, list, dict)):
        inner = from_avro(typ, named, namespace)
        logical = schema.get("logicalType")
        if logical == "decimal" and name is None:
            name = CONNECT_DECIMAL
            params = {**params, "scale": str(schema.get("scale", 0))}
        if name is None and logical in ("date", "timestamp-millis", "timestamp-micros", "time-millis", "time-micros"):
            name = "avro." + str(logical)
        return FieldType(inner.kind, name or inner.name, params or dict(inner.params), inner.fields, inner.items)
    raise ConversionError(f"unsupported Avro schema {str(schema)[:80]!r}", "UnusableSchema")


# --------------------------------------------------------------------------- value conversion
Converter = Callable[[Any, list[str]], Any]


def _bytes_of(value: Any, path: str) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        try:  # base64.b64decode(value, validate=True) without its Python layers: the same strict decoding
            return binascii.a2b_base64(value, strict_mode=True)
        except (binascii.Error, ValueError):
            shown = value if len(value) <= 40 else f"{value[:40]}… ({len(value)} characters)"
            raise ConversionError(f"{path}: not base64: {shown!r}", "NotBase64") from None
    raise ConversionError(f"{path}: expected bytes, got {type(value).__name__}")


def _scale(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().lstrip("-").isdigit():
        raise ConversionError(f"{path}: decimal scale {str(value)[:20]!r} is not an integer", "DecimalOutOfRange")
    text = str(value).strip()
    if len(text) > 6 or not -MAX_DECIMAL_DIGITS <= int(text) <= MAX_DECIMAL_DIGITS:
        raise ConversionError(f"{path}: decimal scale {text[:20]} is beyond Kafka Connect's ±{MAX_DECIMAL_DIGITS}",
                              "DecimalOutOfRange")
    return int(text)


def checked_decimal(d: Decimal, path: str) -> Decimal:
    """``d`` if it is within Kafka Connect's decimal limits (38 digits, scale ±38), else ``ConversionError``."""
    if not d.is_finite():
        raise ConversionError(f"{path}: decimal {d} is not a finite number", "DecimalOutOfRange")
    t = d.as_tuple()
    exponent = int(t.exponent)
    if len(t.digits) > MAX_DECIMAL_DIGITS or d.adjusted() >= MAX_DECIMAL_DIGITS or -exponent > MAX_DECIMAL_DIGITS:
        raise ConversionError(f"{path}: decimal with {len(t.digits)} digits and scale {-exponent} is beyond Kafka "
                              f"Connect's {MAX_DECIMAL_DIGITS}-digit precision", "DecimalOutOfRange")
    return d


def decimal_from_unscaled(raw: bytes, scale: int, path: str = "value") -> Decimal:
    """Connect Decimal: big-endian two's-complement unscaled integer + scale → exact ``Decimal`` (within
    Kafka Connect's limits, else ``ConversionError`` — checked on the byte length first, in constant time)."""
    if len(raw) > _MAX_UNSCALED_BYTES:
        raise ConversionError(f"{path}: decimal of {len(raw):,} bytes is beyond Kafka Connect's "
                              f"{MAX_DECIMAL_DIGITS}-digit precision", "DecimalOutOfRange")
    if not -MAX_DECIMAL_DIGITS <= scale <= MAX_DECIMAL_DIGITS:
        raise ConversionError(f"{path}: decimal scale {scale} is beyond Kafka Connect's ±{MAX_DECIMAL_DIGITS}",
                              "DecimalOutOfRange")
    d = _SCALEB(Decimal(int.from_bytes(raw, "big", signed=True)), -scale, _EXACT)
    if len(raw) <= 15 and scale >= 0:
        return d  # at most 36 digits (2^119 < 10^36), scale 0…38: within Kafka Connect's limits by construction
    return checked_decimal(d, path)


_SCALEB: Final = Decimal.scaleb  #: called positionally: a keyword context costs more than the scaling


def decode_base64_decimal(text: str, scale: int) -> Decimal:
    """``"D54="`` at scale 2 → ``Decimal("39.98")`` (JsonConverter ``decimal.format=BASE64``)."""
    return decimal_from_unscaled(_bytes_of(text, "value"), scale)


def _decimal(scale: int, path: str) -> Converter:
    def conv(v: Any, floats: list[str]) -> Any:
        if v is None:
            return v
        if isinstance(v, Decimal):  # JSON decimal.format=NUMERIC (parsed exactly)
            return checked_decimal(v, path)
        if isinstance(v, int) and not isinstance(v, bool):  # JSON decimal.format=NUMERIC, scale 0
            return checked_decimal(Decimal(v), path)
        if isinstance(v, float):
            floats.append(path)
            return v
        return decimal_from_unscaled(_bytes_of(v, path), scale, path)
    return conv


def _variable_scale(path: str) -> Converter:
    def conv(v: Any, floats: list[str]) -> Any:
        if v is None or isinstance(v, Decimal):
            return v
        if not isinstance(v, Mapping) or "scale" not in v or "value" not in v:
            raise ConversionError(f"{path}: VariableScaleDecimal needs {{scale, value}}, got {type(v).__name__}")
        return decimal_from_unscaled(_bytes_of(v["value"], path), _scale(v["scale"], path), path)
    return conv


def _int_to(fn: Callable[[int], Any], passthrough: type | tuple[type, ...], path: str) -> Converter:
    def conv(v: Any, floats: list[str]) -> Any:
        if v is None or isinstance(v, passthrough):
            return v
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConversionError(f"{path}: expected an integer, got {v!r}")
        try:
            return fn(v)
        except (OverflowError, ValueError):
            raise ConversionError(f"{path}: {v} is out of range for a date/time", "DateOutOfRange") from None
    return conv


def _time_of_day(micros: int) -> time:
    micros %= 86_400_000_000
    return (datetime.min + timedelta(microseconds=micros)).time()


def _zoned(path: str) -> Converter:
    def conv(v: Any, floats: list[str]) -> Any:
        if v is None or isinstance(v, datetime):
            return v
        try:
            return datetime.fromisoformat(str(v))
        except (ValueError, OverflowError):
            raise ConversionError(f"{path}: not an ISO-8601 timestamp: {str(v)[:60]!r}", "BadTimestamp") from None
    return conv


def _float(path: str) -> Converter:
    def conv(v: Any, floats: list[str]) -> Any:
        if v is None:
            return v
        floats.append(path)
        return float(v)
    return conv


def _plain_bytes(path: str) -> Converter:
    def conv(v: Any, floats: list[str]) -> Any:
        return v if v is None else _bytes_of(v, path)
    return conv


_LOCAL_EPOCH: Final = datetime(1970, 1, 1)

#: Debezium's Timestamp / MicroTimestamp / NanoTimestamp (and Connect's Timestamp, which Debezium uses for
#: ``time.precision.mode=connect``) encode a column *without* time zone: the wall clock as if it were UTC.
#: They become naive datetimes, so a 23:30 entry keeps its date. ``ZonedTimestamp`` and Avro's own
#: ``timestamp-millis``/``-micros`` are instants and stay aware (UTC); mapping converts instants to the
#: account book's time zone (docs/decisions/0005).
_FROM_ORDINAL: Final = date.fromordinal
_EPOCH_ORDINAL: Final = _EPOCH_DATE.toordinal()
_INT_SEMANTICS: Final[dict[str, tuple[Callable[[int], Any], type | tuple[type, ...]]]] = {
    # date.fromordinal and positional timedeltas: the same values (and the same range errors) as
    # _EPOCH_DATE + timedelta(days=d) and _LOCAL_EPOCH + timedelta(milliseconds=ms), at less than half the cost
    "io.debezium.time.Date": (lambda d: _FROM_ORDINAL(_EPOCH_ORDINAL + d), date),
    "org.apache.kafka.connect.data.Date": (lambda d: _FROM_ORDINAL(_EPOCH_ORDINAL + d), date),
    "avro.date": (lambda d: _FROM_ORDINAL(_EPOCH_ORDINAL + d), date),
    "io.debezium.time.Timestamp": (lambda ms: _LOCAL_EPOCH + timedelta(0, 0, 0, ms), datetime),
    "org.apache.kafka.connect.data.Timestamp": (lambda ms: _LOCAL_EPOCH + timedelta(0, 0, 0, ms), datetime),
    "avro.timestamp-millis": (lambda ms: _EPOCH + timedelta(0, 0, 0, ms), datetime),
    "io.debezium.time.MicroTimestamp": (lambda us: _LOCAL_EPOCH + timedelta(0, 0, us), datetime),
    "avro.timestamp-micros": (lambda us: _EPOCH + timedelta(0, 0, us), datetime),
    # Python datetimes stop at microseconds: nanoseconds are truncated (documented in docs/decisions).
    "io.debezium.time.NanoTimestamp": (lambda ns: _LOCAL_EPOCH + timedelta(0, 0, ns // 1000), datetime),
    "io.debezium.time.Time": (lambda ms: _time_of_day(ms * 1000), time),
    "org.apache.kafka.connect.data.Time": (lambda ms: _time_of_day(ms * 1000), time),
    "avro.time-millis": (lambda ms: _time_of_day(ms * 1000), time),
    "io.debezium.time.MicroTime": (_time_of_day, time),
    "avro.time-micros": (_time_of_day, time),
    "io.debezium.time.NanoTime": (lambda ns: _time_of_day(ns // 1000), time),
}


def compile_converter(t: FieldType, path: str) -> Converter | None:
    """A converter for values of type ``t`` at ``path``; ``None`` when values need no conversion."""
    name = t.name
    if name == CONNECT_DECIMAL:
        return _decimal(_scale(t.params.get("scale", "0"), path), path)
    if name == VARIABLE_SCALE_DECIMAL:
        return _variable_scale(path)
    if name in _INT_SEMANTICS:
        fn, passthrough = _INT_SEMANTICS[name]
        return _int_to(fn, passthrough, path)
    if name == "io.debezium.time.ZonedTimestamp":
        return _zoned(path)
    if t.kind in ("float32", "float64"):
        return _float(path)
    if t.kind == "bytes":
        return _plain_bytes(path)
    if t.kind == "struct":
        return compile_struct(t, path)
    if t.kind == "array" and t.items is not None:
        inner = compile_converter(t.items, path + "[]")
        if inner is None:
            return None
        item_conv = inner

        def conv_array(v: Any, floats: list[str]) -> Any:
            return v if v is None else [item_conv(x, floats) for x in v]
        return conv_array
    if t.kind == "map" and t.items is not None:
        inner_m = compile_converter(t.items, path + "{}")
        if inner_m is None:
            return None
        val_conv = inner_m

        def conv_map(v: Any, floats: list[str]) -> Any:
            return v if v is None else {k: val_conv(x, floats) for k, x in v.items()}
        return conv_map
    return None


def compile_struct(t: FieldType, path: str) -> Converter:
    """Converter for a struct: converts the fields that need it, copies the rest; unknown fields pass through."""
    convs = tuple(
        (fname, c) for fname, ftype in t.fields
        if (c := compile_converter(ftype, f"{path}.{fname}" if path else fname)) is not None
    )

    def conv(v: Any, floats: list[str]) -> Any:
        if v is None:
            return None
        if type(v) is not dict and not isinstance(v, Mapping):
            raise ConversionError(f"{path or 'value'}: expected an object, got {type(v).__name__}")
        out = dict(v)
        for fname, c in convs:
            if fname in out:
                out[fname] = c(out[fname], floats)
        return out
    return conv


def schemaless_row(row: Any, path: str, floats: list[str]) -> Any:
    """A row from a schemaless JSON event: fractional numbers are flagged as floats (they may be doubles)."""
    if not isinstance(row, Mapping):
        return row
    out: dict[str, Any] = {}
    for k, v in row.items():
        if isinstance(v, Decimal):  # JSON parsed with parse_float=Decimal: only fractions/exponents land here
            floats.append(f"{path}.{k}")
            out[k] = float(v)
        else:
            out[k] = v
    return out
