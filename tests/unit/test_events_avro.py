"""Avro wire format through a ``mock://`` schema registry (no services): serde ring of the test suite."""

from __future__ import annotations

import struct
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from harness import samples
from connector.errors import InfraError
from connector.events import ChangeEvent, DecodeFailure, Decoder, KafkaCoordinates, Op, RegistrySchemas


@pytest.fixture
def registry() -> SchemaRegistryClient:
    import uuid

    return SchemaRegistryClient.new_client({"url": f"mock://{uuid.uuid4().hex}"})


def _serializer(registry: SchemaRegistryClient, t: samples.SampleTable) -> AvroSerializer:
    import json

    ser: AvroSerializer = AvroSerializer(registry, json.dumps(samples.value_schema(t)),
                                         to_dict=lambda env, ctx: _to_avro(t, env))
    return ser


def _to_avro(t: samples.SampleTable, env: dict[str, Any]) -> dict[str, Any]:
    rec = dict(env)
    rec["before"] = samples.avro_row(t, env["before"]) if env["before"] else None
    rec["after"] = samples.avro_row(t, env["after"]) if env["after"] else None
    return rec


@pytest.mark.parametrize("table", samples.TABLES, ids=lambda t: t.topic)
def test_confluent_serializer_output_decodes_to_the_same_row(registry: SchemaRegistryClient,
                                                             table: samples.SampleTable) -> None:
    gen = samples.SampleGenerator(seed=3)
    ser = _serializer(registry, table)
    decoder = Decoder(RegistrySchemas(registry))
    for key, env in samples.change_stream(gen, table, 20, update_every=3, delete_every=5):
        raw = ser(env, SerializationContext(table.topic, MessageField.VALUE))
        ev = decoder.decode(raw, kafka=KafkaCoordinates(topic=table.topic, partition=0, offset=1))
        assert isinstance(ev, ChangeEvent), ev
        assert ev.op.value == env["op"]
        assert ev.after == env["after"] and ev.before == env["before"]
        assert ev.source.table == table.table and ev.source.lsn == env["source"]["lsn"]
        assert not ev.float_fields


def test_decimal_and_time_types_are_exact(registry: SchemaRegistryClient) -> None:
    row = samples.SampleGenerator().row(samples.POS)
    row.update(gross_amount=Decimal("-12345678901234.99"), net_amount=Decimal("0.01"),
               order_date=date(1969, 12, 31), created_at=datetime(2026, 11, 25, 1, 2, 3, 456789),
               updated_at=datetime(2026, 11, 25, 9, 0, tzinfo=UTC))
    env = samples.envelope(samples.POS, "c", before=None, after=row)
    raw = _serializer(registry, samples.POS)(env, SerializationContext("t", MessageField.VALUE))
    ev = Decoder(RegistrySchemas(registry)).decode(raw)
    assert isinstance(ev, ChangeEvent) and ev.after is not None
    assert ev.after["gross_amount"] == Decimal("-12345678901234.99")
    assert ev.after["net_amount"] == Decimal("0.01") and str(ev.after["net_amount"]) == "0.01"
    assert ev.after["order_date"] == date(1969, 12, 31)
    # MicroTimestamp is a wall clock without zone (naive); ZonedTimestamp an instant (aware)
    assert ev.after["created_at"] == datetime(2026, 11, 25, 1, 2, 3, 456789)
    assert ev.after["updated_at"] == datetime(2026, 11, 25, 9, 0, tzinfo=UTC)


def test_avro_key_is_decoded(registry: SchemaRegistryClient) -> None:
    import json

    key_id = registry.register_schema("pos.public.sales_order-key",
                                      Schema(json.dumps(samples.key_schema(samples.POS)), "AVRO"))
    env = samples.envelope(samples.POS, "c", before=None, after=samples.SampleGenerator().row(samples.POS))
    raw = _serializer(registry, samples.POS)(env, SerializationContext("t", MessageField.VALUE))
    ev = Decoder(RegistrySchemas(registry)).decode(raw, key=samples.encode_avro_key(samples.POS, {"id": 77}, key_id))
    assert isinstance(ev, ChangeEvent) and ev.key == {"id": 77} and ev.op is Op.CREATE


def test_unknown_schema_id_is_a_decode_failure_with_coordinates(registry: SchemaRegistryClient) -> None:
    at = KafkaCoordinates(topic="pos", partition=3, offset=99)
    raw = struct.pack(">bI", 0, 424242) + b"\x00\x02"
    f = Decoder(RegistrySchemas(registry)).decode(raw, kafka=at)
    assert isinstance(f, DecodeFailure)
    assert f.stage == "schema" and "424242" in f.reason and f.kafka == at and f.raw_value == raw


def test_truncated_avro_body_is_a_decode_failure(registry: SchemaRegistryClient) -> None:
    env = samples.envelope(samples.POS, "c", before=None, after=samples.SampleGenerator().row(samples.POS))
    raw = _serializer(registry, samples.POS)(env, SerializationContext("t", MessageField.VALUE))
    assert raw is not None
    f = Decoder(RegistrySchemas(registry)).decode(raw[: len(raw) // 2])
    assert isinstance(f, DecodeFailure) and f.stage == "value"


def test_registry_outage_is_infrastructure_not_poison() -> None:
    client = SchemaRegistryClient({"url": "http://127.0.0.1:9", "timeout": 1,  # nothing listens on port 9
                                   "max.retries": 0})
    raw = struct.pack(">bI", 0, 1) + b"\x00"
    with pytest.raises(InfraError, match="schema registry"):
        Decoder(RegistrySchemas(client)).decode(raw)


def test_avro_without_registry_is_reported() -> None:
    f = Decoder().decode(struct.pack(">bI", 0, 5) + b"\x00")
    assert isinstance(f, DecodeFailure) and "no schema registry" in f.reason


def test_double_mode_amounts_are_flagged_as_floats() -> None:
    import json

    schema = samples.value_schema(samples.BANK)
    schema = json.loads(json.dumps(schema).replace(
        '"name": "amount", "type": {"type": "bytes", "scale": 2, "precision": 18', '"name": "amount", "type": {"type": "double"'))
    # Rewrite the amount field to a double the way Debezium's decimal.handling.mode=double would.
    value = schema["fields"][0]["type"][1]
    for f in value["fields"]:
        if f["name"] == "amount":
            f["type"] = "double"
    from connector.events import FixedSchemas
    import fastavro
    import io

    row = samples.avro_row(samples.BANK, samples.SampleGenerator().row(samples.BANK))
    row["amount"] = 1234.56
    env = samples.envelope(samples.BANK, "c", before=None, after=None)
    env["after"] = row
    buf = io.BytesIO()
    buf.write(struct.pack(">bI", 0, 9))
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), env)
    ev = Decoder(FixedSchemas(schema)).decode(buf.getvalue())
    assert isinstance(ev, ChangeEvent) and ev.after is not None
    assert ev.after["amount"] == 1234.56 and ev.float_fields == frozenset({"after.amount"})


def test_json_schema_cache_follows_schema_evolution() -> None:
    """Records of two schema versions interleaved on one decoder: each is typed by its own schema."""
    import json as _json

    gen = samples.SampleGenerator(seed=4)
    env = samples.envelope(samples.MES, "c", before=None, after=gen.row(samples.MES))
    env["after"]["work_order_no"] = "工单-001"  # non-ASCII payload must not confuse byte offsets
    v1 = samples.encode_json(samples.MES, env)
    doc = _json.loads(v1)
    # Version 2: the amount column's scale changed from 2 to 3 (same field names, different bytes).
    for f in doc["schema"]["fields"][1]["fields"]:
        if f["field"] == "amount":
            f["parameters"]["scale"] = "3"
    v2 = _json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
    decoder = Decoder()
    amounts = []
    for raw in (v1, v2, v1, v2, v1[:-3] + b"}}}"):
        ev = decoder.decode(raw)
        amounts.append(ev.after["amount"] if isinstance(ev, ChangeEvent) and ev.after else ev)
    assert amounts[0] == amounts[2] == env["after"]["amount"]
    assert amounts[1] == amounts[3] == env["after"]["amount"] / 10
    assert isinstance(amounts[4], DecodeFailure)
