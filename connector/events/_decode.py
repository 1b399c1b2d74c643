"""Bytes → ``ChangeEvent``: the single decode boundary (Avro wire format or JSON converter).

``Decoder.decode`` never raises for bad input: every undecodable record comes back as a
``DecodeFailure`` carrying the Kafka coordinates, the stage, the reason and the raw bytes. The one thing
it does raise is ``InfraError`` when the schema registry cannot be *reached* (as opposed to answering
"unknown id"): that is not the record's fault and must pause the pipeline instead of dead-lettering.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, Protocol

import fastavro
import msgspec

from connector.errors import InfraError
from connector.events._model import (
    ChangeEvent,
    Decoded,
    DecodeFailure,
    KafkaCoordinates,
    LogicalMessage,
    Op,
    SourceInfo,
    Tombstone,
    TransactionInfo,
    TransactionMarker,
    slot_builder,
)
from connector.events._types import (
    ConversionError,
    Converter,
    FieldType,
    compile_struct,
    from_avro,
    from_connect_json,
    schemaless_row,
)

MAGIC_BYTE: Final = 0
#: ``SourceInfo(…)`` and ``ChangeEvent(…)`` with every field given positionally, in declaration order (two per record)
_new_source: Final = slot_builder(SourceInfo)
_new_event: Final = slot_builder(ChangeEvent)
#: JSON values are read by msgspec (docs/decisions/0013): numbers with a fraction or exponent as exact Decimals of
#: their text, like ``json.loads(raw, parse_float=Decimal)``, several times faster. Where msgspec refuses a
#: document (NaN, a UTF-8 BOM, UTF-16, lone surrogates, integers it cannot hold, nesting, invalid JSON), the
#: standard library reads it, so every record decodes — or fails, with the same stage and class — exactly as
#: with the standard library alone (tests/unit/test_decode_json.py compares the two).
_FAST_JSON: Final = msgspec.json.Decoder(float_hook=Decimal).decode
_OPS: Final = {op.value: op for op in Op}
_MAX_SCHEMAS: Final = 10_000


class SchemaNotFound(Exception):
    """The registry answered that the schema id does not exist (a poison record, not an outage)."""


class SchemaSource(Protocol):
    """Where writer schemas for Avro wire-format records come from."""

    def avro_schema(self, schema_id: int) -> Any:
        """The parsed Avro schema JSON for ``schema_id``; ``SchemaNotFound`` or ``InfraError`` otherwise."""
        ...


class RegistrySchemas:
    """Schemas from a Confluent-compatible registry (Confluent, Apicurio ccompat, Redpanda, ``mock://``)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def avro_schema(self, schema_id: int) -> Any:
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        try:
            schema = self._client.get_schema(schema_id)
        except SchemaRegistryError as e:
            status = getattr(e, "http_status_code", None)
            if status is not None and 400 <= int(status) < 500:
                raise SchemaNotFound(f"schema id {schema_id} not found in registry ({e})") from e
            raise InfraError(f"schema registry error for id {schema_id}: {e}") from e
        except Exception as e:  # connection refused, DNS, TLS … : the registry is down, not the record bad
            raise InfraError(f"schema registry unreachable for id {schema_id}: {e}") from e
        if schema.schema_type not in (None, "AVRO"):
            raise SchemaNotFound(f"schema id {schema_id} is {schema.schema_type}, not AVRO")
        return json.loads(schema.schema_str)


class FixedSchemas:
    """Offline decoding: every schema id resolves to the given schema(s) (``events decode --schema``)."""

    def __init__(self, default: Any, by_id: Mapping[int, Any] | None = None) -> None:
        self._default = default
        self._by_id = dict(by_id or {})

    def avro_schema(self, schema_id: int) -> Any:
        if schema_id in self._by_id:
            return self._by_id[schema_id]
        if self._default is None:
            raise SchemaNotFound(f"schema id {schema_id} unknown")
        return self._default


@dataclass(frozen=True, slots=True, kw_only=True)
class DecoderLimits:
    """Input hardening.

    ============================  =========  ====================================================
    option                        default    meaning
    ============================  =========  ====================================================
    ``max_record_bytes``          8 MiB      larger values are dead-lettered unread
    ============================  =========  ====================================================
    """

    max_record_bytes: int = 8 * 1024 * 1024


class _Failed(Exception):
    """A record that cannot be decoded: ``stage`` says where, ``error_class`` what kind of problem (a stable
    name for dead-letter headers, metrics and operators), ``reason`` the specifics."""

    def __init__(self, stage: str, reason: str, error_class: str) -> None:
        super().__init__(reason)
        self.stage = stage
        self.reason = reason
        self.error_class = error_class


@dataclass(frozen=True, slots=True)
class _CompiledAvro:
    parsed: Any  # fastavro parsed schema
    value_conv: Converter | None  # converter for before/after row images
    key_conv: Converter | None  # converter when this schema is a key schema (whole record)


def _opt_int(v: Any) -> int | None:
    """An integer position/timestamp field; anything else (or absurdly large) → ``None``."""
    if v is None or isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, Decimal):
        return int(v) if v.is_finite() and v.adjusted() < 40 and v == v.to_integral_value() else None
    if isinstance(v, str) and 0 < len(v) <= 40 and v.lstrip("-").isdigit():
        return int(v)
    return None


def _opt_str(v: Any) -> str | None:
    return None if v is None else str(v)


def _source(src: Any) -> SourceInfo:
    if type(src) is not dict and not isinstance(src, Mapping):
        raise _Failed("envelope", "'source' block is missing or not an object", "BadSourceBlock")
    get = src.get
    snap = get("snapshot")
    snapshot = "false" if snap is None or snap is False else "true" if snap is True else str(snap)
    # Fields a connector does not send are None: no conversion call for them (MySQL's for PostgreSQL and back).
    file, pos, row, gtid, server_id, thread, query = (get("file"), get("pos"), get("row"), get("gtid"),
                                                       get("server_id"), get("thread"), get("query"))
    return _new_source(
        str(get("connector") or ""), str(get("name") or ""), str(get("db") or ""), _opt_str(get("schema")) or None,
        _opt_str(get("table")) or None, _opt_str(get("version")), _opt_int(get("ts_ms")), snapshot,
        _opt_int(get("lsn")), _opt_int(get("txId")), _opt_int(get("xmin")), _opt_str(get("sequence")),
        None if file is None else str(file), None if pos is None else _opt_int(pos),
        None if row is None else _opt_int(row), None if gtid is None else str(gtid),
        None if server_id is None else _opt_int(server_id), None if thread is None else _opt_int(thread),
        None if query is None else str(query))


def _transaction(tx: Any) -> TransactionInfo | None:
    if (type(tx) is not dict and not isinstance(tx, Mapping)) or tx.get("id") is None:
        return None
    return TransactionInfo(
        id=str(tx["id"]),
        total_order=_opt_int(tx.get("total_order")) or 0,
        data_collection_order=_opt_int(tx.get("data_collection_order")) or 0,
    )


def _message(m: Any) -> LogicalMessage | None:
    if not isinstance(m, Mapping):
        return None
    content = m.get("content")
    if isinstance(content, str):
        try:
            raw = base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError):
            raw = content.encode()
    elif isinstance(content, (bytes, bytearray)):
        raw = bytes(content)
    else:
        raw = b""
    return LogicalMessage(prefix=str(m.get("prefix") or ""), content=raw)


def _is_marker(payload: Mapping[str, Any]) -> bool:
    return "op" not in payload and payload.get("status") in ("BEGIN", "END") and "id" in payload


def _marker(payload: Mapping[str, Any], kafka: KafkaCoordinates | None) -> TransactionMarker:
    collections: dict[str, int] = {}
    for dc in payload.get("data_collections") or ():
        if isinstance(dc, Mapping) and "data_collection" in dc:
            collections[str(dc["data_collection"])] = _opt_int(dc.get("event_count")) or 0
    return TransactionMarker(
        status=str(payload["status"]), id=str(payload["id"]), ts_ms=_opt_int(payload.get("ts_ms")),
        event_count=_opt_int(payload.get("event_count")), data_collections=collections, kafka=kafka)


def _envelope(
    payload: Any,
    *,
    convert_row: Callable[[Any, str, list[str]], Any],
    key: Mapping[str, Any] | None,
    kafka: KafkaCoordinates | None,
    headers: tuple[tuple[str, bytes | None], ...],
) -> ChangeEvent | TransactionMarker:
    if type(payload) is not dict and not isinstance(payload, Mapping):
        raise _Failed("envelope", f"expected a Debezium envelope object, got {type(payload).__name__}", "NotAnEnvelope")
    if _is_marker(payload):
        return _marker(payload, kafka)
    if "op" not in payload:
        hint = " (looks like a flattened row: is the ExtractNewRecordState/unwrap SMT enabled upstream?)" \
            if "source" not in payload else ""
        raise _Failed("envelope", "not a Debezium change event: no 'op' field" + hint, "NotAnEnvelope")
    op = _OPS.get(str(payload["op"]))
    if op is None:
        raise _Failed("envelope", f"unknown op {str(payload['op'])[:20]!r} (expected one of c, u, d, r, t, m)", "UnknownOp")
    source = _source(payload.get("source"))
    floats: list[str] = []
    try:
        before = convert_row(payload.get("before"), "before", floats)
        after = convert_row(payload.get("after"), "after", floats)
    except ConversionError as e:
        raise _Failed("value", str(e), e.kind) from None
    for name, img in (("before", before), ("after", after)):
        if img is not None and type(img) is not dict and not isinstance(img, Mapping):
            raise _Failed("envelope", f"'{name}' must be an object or null, got {type(img).__name__}", "BadRowImage")
    if op in (Op.CREATE, Op.READ, Op.UPDATE) and after is None:
        raise _Failed("envelope", f"op '{op.value}' without an 'after' row image", "BadRowImage")
    return _new_event(op, source, before, after, key, _opt_int(payload.get("ts_ms")),
                      _transaction(payload.get("transaction")),
                      _message(payload.get("message")) if op is Op.MESSAGE else None, kafka, headers, frozenset(floats))


def _row_type(envelope: FieldType) -> FieldType:
    """The row struct of an envelope schema (``after``, else ``before``; whichever has fields)."""
    fields = dict(envelope.fields)
    for name in ("after", "before"):
        t = fields.get(name)
        if t is not None and t.kind == "struct" and t.fields:
            return t
    return FieldType("struct")


def _typed_rows(conv: Converter | None) -> Callable[[Any, str, list[str]], Any]:
    """Adapt a compiled row converter to ``_envelope``: paths of float fields get the image name prefixed."""
    def convert(img: Any, path: str, floats: list[str]) -> Any:
        if conv is None or img is None:
            return img
        found: list[str] = []
        out = conv(img, found)
        floats.extend(f"{path}.{f}" for f in found)
        return out
    return convert


class Decoder:
    """Decodes Kafka record values (and keys) into ``Decoded`` results.

    The format is detected per record: a leading ``0x00`` magic byte means the Confluent Avro wire format
    (``0x00`` + 4-byte big-endian schema id + Avro binary); a leading ``{`` means the JSON converter, with
    ``schemas.enable`` true (``{"schema":…,"payload":…}``) or false (the bare envelope).
    """

    def __init__(self, schemas: SchemaSource | None = None, limits: DecoderLimits = DecoderLimits()) -> None:
        self._schemas = schemas
        self._limits = limits
        self._avro: dict[int, _CompiledAvro] = {}
        self._json_schemas: dict[str, Converter] = {}
        self._json_by_bytes: dict[bytes, Converter | None] = {}
        #: (length, bytes, converter) of the schemas seen, in the order first seen
        self._json_known: list[tuple[int, bytes, Converter | None]] = []

    # ------------------------------------------------------------------ public
    def decode_message(self, msg: Any) -> Decoded:
        """Decode a ``confluent_kafka.Message``."""
        ts_type, ts = msg.timestamp()
        kafka = KafkaCoordinates(topic=msg.topic(), partition=msg.partition(), offset=msg.offset(),
                                 timestamp_ms=ts if ts_type else None)
        hdrs = tuple((k, v) for k, v in (msg.headers() or ()))
        return self.decode(msg.value(), key=msg.key(), kafka=kafka, headers=hdrs)

    def decode(
        self,
        value: bytes | None,
        *,
        key: bytes | None = None,
        kafka: KafkaCoordinates | None = None,
        headers: tuple[tuple[str, bytes | None], ...] = (),
    ) -> Decoded:
        try:
            return self._decode(value, key, kafka, headers)
        except _Failed as f:
            return DecodeFailure(reason=f.reason, stage=f.stage, kafka=kafka, raw_value=value, raw_key=key,
                                 headers=headers, error_class=f.error_class)
        except InfraError:
            raise
        except RecursionError:
            return DecodeFailure(reason="value nested too deeply", stage="limits", kafka=kafka,
                                 raw_value=value, raw_key=key, headers=headers, error_class="NestingTooDeep")
        except MemoryError:
            return DecodeFailure(reason="value too large to decode in memory", stage="limits", kafka=kafka,
                                 raw_value=value, raw_key=key, headers=headers, error_class="RecordTooLarge")
        except Exception as e:  # the decoder must not stop the line: anything unforeseen is a poison record
            return DecodeFailure(reason=f"unexpected {type(e).__name__}: {str(e)[:300]}", stage="value",
                                 kafka=kafka, raw_value=value, raw_key=key, headers=headers,
                                 error_class="UnexpectedDecodeError")

    # ------------------------------------------------------------------ internals
    def _decode(self, value: bytes | None, key_bytes: bytes | None, kafka: KafkaCoordinates | None,
                headers: tuple[tuple[str, bytes | None], ...]) -> Decoded:
        key = self._decode_key(key_bytes)
        if value is None or len(value) == 0:
            return Tombstone(key=key, kafka=kafka)
        if len(value) > self._limits.max_record_bytes:
            raise _Failed("limits", f"record of {len(value)} bytes exceeds max_record_bytes="
                                    f"{self._limits.max_record_bytes}", "RecordTooLarge")
        first = value[0]
        if first == MAGIC_BYTE:
            compiled, body = self._avro_body(value)
            try:
                payload = fastavro.schemaless_reader(io.BytesIO(body), compiled.parsed, None)
            except Exception as e:
                raise _Failed("value", f"Avro body does not match writer schema: {type(e).__name__}: {str(e)[:200]}",
                              "AvroBodyMismatch") from None
            return _envelope(payload, convert_row=_typed_rows(compiled.value_conv), key=key, kafka=kafka,
                             headers=headers)
        fast = self._json_known_schema(value)
        if fast is not None:
            conv, payload = fast
            return _envelope(payload, convert_row=_typed_rows(conv), key=key, kafka=kafka, headers=headers)
        doc = self._json(value, "value")
        if isinstance(doc, Mapping) and set(doc) == {"schema", "payload"}:
            conv = self._json_row_converter(doc["schema"])
            self._remember_schema_bytes(value, conv)
            return _envelope(doc["payload"], convert_row=_typed_rows(conv), key=key, kafka=kafka, headers=headers)
        return _envelope(doc, convert_row=schemaless_row, key=key, kafka=kafka, headers=headers)

    def _decode_key(self, raw: bytes | None) -> Mapping[str, Any] | None:
        if raw is None or len(raw) == 0:
            return None
        if len(raw) > self._limits.max_record_bytes:
            raise _Failed("limits", f"key of {len(raw)} bytes exceeds max_record_bytes", "RecordTooLarge")
        if raw[0] == MAGIC_BYTE:
            compiled, body = self._avro_body(raw, stage="key")
            try:
                rec = fastavro.schemaless_reader(io.BytesIO(body), compiled.parsed, None)
            except Exception as e:
                raise _Failed("key", f"Avro key does not match writer schema: {type(e).__name__}: {str(e)[:200]}",
                              "BadKey") from None
            if compiled.key_conv is not None:
                try:
                    rec = compiled.key_conv(rec, [])
                except ConversionError as e:
                    raise _Failed("key", str(e), "BadKey") from None
            return rec if type(rec) is dict or isinstance(rec, Mapping) else {"key": rec}
        try:
            doc = self._json(raw, "key")
        except _Failed:
            # Plain string keys (e.g. produced by hand) are legitimate: keep them verbatim.
            return {"key": raw.decode("utf-8", "replace")}
        if isinstance(doc, Mapping) and set(doc) == {"schema", "payload"}:
            schema = doc["schema"]
            payload = doc["payload"]
            if isinstance(schema, Mapping) and schema.get("type") == "struct":
                try:
                    payload = compile_struct(from_connect_json(schema), "key")(payload, [])
                except ConversionError as e:
                    raise _Failed("key", str(e), "BadKey") from None
            return payload if isinstance(payload, Mapping) else {"key": payload}
        return doc if type(doc) is dict or isinstance(doc, Mapping) else {"key": doc}

    def _json(self, raw: bytes, stage: str) -> Any:
        if raw[:1] not in (b"{", b"[", b" ", b"\n", b"\t", b"\r", b'"') and not raw[:1].isdigit():
            raise _Failed("wire", f"neither Avro wire format (magic byte 0x00) nor JSON: first byte 0x{raw[0]:02x}",
                          "NotAvroOrJson")
        try:
            return _FAST_JSON(raw)
        except Exception:  # whatever msgspec refuses, the standard library decides (below)
            pass
        try:
            return json.loads(raw, parse_float=Decimal)
        except UnicodeDecodeError as e:
            raise _Failed("json", f"{stage} is not UTF-8: {e}", "NotUtf8") from None
        except json.JSONDecodeError as e:
            raise _Failed("json", f"{stage} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}",
                          "InvalidJson") from None
        except ValueError as e:  # an integer of more than 4,300 digits (Python's int conversion limit)
            raise _Failed("limits", f"{stage} holds a number too long to read: {str(e)[:100]}", "NumberTooLong") \
                from None

    def _avro_body(self, raw: bytes, stage: str = "wire") -> tuple[_CompiledAvro, bytes]:
        if len(raw) < 5:
            raise _Failed(stage, f"Avro wire format needs 5 header bytes, got {len(raw)}", "TruncatedWireHeader")
        (schema_id,) = struct.unpack(">I", raw[1:5])
        compiled = self._avro.get(schema_id)
        if compiled is None:
            compiled = self._compile_avro(schema_id)
        return compiled, raw[5:]

    def _compile_avro(self, schema_id: int) -> _CompiledAvro:
        if self._schemas is None:
            raise _Failed("schema", f"Avro record with schema id {schema_id} but no schema registry is configured",
                          "NoSchemaRegistry")
        try:
            schema_json = self._schemas.avro_schema(schema_id)
        except SchemaNotFound as e:
            raise _Failed("schema", f"unknown schema id {schema_id}: {e}", "UnknownSchemaId") from None
        try:
            parsed = fastavro.parse_schema(schema_json)
            root = from_avro(schema_json)
        except Exception as e:
            raise _Failed("schema", f"schema id {schema_id} is not a usable Avro schema: {str(e)[:200]}",
                          "UnusableSchema") from None
        value_conv = compile_struct(_row_type(root), "")
        key_conv = compile_struct(root, "key") if root.kind == "struct" else None
        compiled = _CompiledAvro(parsed=parsed, value_conv=value_conv, key_conv=key_conv)
        if len(self._avro) < _MAX_SCHEMAS:
            self._avro[schema_id] = compiled
        return compiled

    # JsonConverter writes compact ``{"schema":<S>,"payload":<P>}`` with <S> byte-identical on every record
    # of a table version. Recognising <S> by its bytes skips parsing and re-hashing the schema, which is
    # most of the work for schema-carrying JSON (see docs/benchmarks.md).
    _SCHEMA_PREFIX: Final = b'{"schema":'
    _PAYLOAD_SEP: Final = b',"payload":'

    def _json_known_schema(self, value: bytes) -> tuple[Converter | None, Any] | None:
        if not value.startswith(self._SCHEMA_PREFIX) or not value.endswith(b"}"):
            return None
        start = len(self._SCHEMA_PREFIX)
        sep = self._PAYLOAD_SEP
        for length, schema_bytes, conv in self._json_known:  # compared in place: no slice, no hash of the schema
            end = start + length
            if value.startswith(sep, end) and value.startswith(schema_bytes, start):
                return conv, self._json(value[end + len(sep):-1], "value")
        return None

    def _remember_schema_bytes(self, value: bytes, conv: Converter | None) -> None:
        if not value.startswith(self._SCHEMA_PREFIX) or len(self._json_by_bytes) >= 256:
            return
        decoder = json.JSONDecoder()
        try:
            text = value.decode("utf-8")
            _, end = decoder.raw_decode(text, len(self._SCHEMA_PREFIX))
        except (ValueError, UnicodeDecodeError):
            return
        if not text.startswith(',"payload":', end):
            return
        byte_end = len(text[:end].encode("utf-8"))  # raw_decode counts characters, slices need bytes
        schema_bytes = value[len(self._SCHEMA_PREFIX):byte_end]
        if schema_bytes not in self._json_by_bytes:
            self._json_known.append((len(schema_bytes), schema_bytes, conv))
        self._json_by_bytes[schema_bytes] = conv

    def _json_row_converter(self, schema: Any) -> Converter | None:
        if not isinstance(schema, Mapping):
            return None  # e.g. "schema": null → treat payload as schemaless-typed
        cache_key = json.dumps(schema, sort_keys=True, default=str)
        conv = self._json_schemas.get(cache_key)
        if conv is None:
            try:
                conv = compile_struct(_row_type(from_connect_json(schema)), "")
            except (KeyError, TypeError, ValueError) as e:  # ConversionError is a ValueError
                raise _Failed("schema", f"malformed JSON converter schema: {str(e)[:200]}",
                              e.kind if isinstance(e, ConversionError) else "MalformedConnectSchema") from None
            if len(self._json_schemas) < _MAX_SCHEMAS:
                self._json_schemas[cache_key] = conv
        return conv
