"""Avro and JSON change events through a real Kafka broker: produce with the Confluent serializer, consume, decode."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from harness import samples
from connector.events import ChangeEvent, DecodeFailure, Decoder, RegistrySchemas
from tests.integration.helpers import consume_all


def test_avro_roundtrip_through_real_broker(kafka_bootstrap: str, topic_factory: Callable[..., str]) -> None:
    topic = topic_factory("pos-avro", partitions=3)
    registry = SchemaRegistryClient.new_client({"url": f"mock://{uuid.uuid4().hex}"})
    table = samples.POS

    def to_dict(env: dict[str, Any], ctx: Any) -> dict[str, Any]:
        rec = dict(env)
        rec["before"] = samples.avro_row(table, env["before"]) if env["before"] else None
        rec["after"] = samples.avro_row(table, env["after"]) if env["after"] else None
        return rec

    ser = AvroSerializer(registry, json.dumps(samples.value_schema(table)), to_dict=to_dict)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": "true"})
    sent: dict[tuple[int | None, str], dict[str, Any]] = {}
    for key, env in samples.change_stream(samples.SampleGenerator(seed=5), table, 300, update_every=4,
                                          delete_every=9):
        producer.produce(topic, key=f"order-{key['id']}".encode(),
                         value=ser(env, SerializationContext(topic, MessageField.VALUE)))
        sent[(env["source"]["lsn"], env["op"])] = env
    producer.produce(topic, key=b"poison", value=b"\x00\x00\x01\x86\xa0not-avro")  # unknown schema id 100000
    assert producer.flush(30) == 0

    msgs = consume_all(kafka_bootstrap, topic, len(sent) + 1)
    assert len(msgs) == len(sent) + 1
    decoder = Decoder(RegistrySchemas(registry))
    seen = 0
    failures = []
    for m in msgs:
        d = decoder.decode_message(m)
        if isinstance(d, DecodeFailure):
            failures.append(d)
            continue
        assert isinstance(d, ChangeEvent)
        env = sent[(d.source.lsn, d.op.value)]
        assert d.after == env["after"] and d.before == env["before"]
        assert d.kafka is not None and d.kafka.topic == topic and d.kafka.offset == m.offset()
        assert d.kafka.partition == m.partition() and d.kafka.timestamp_ms is not None
        assert d.key == {"key": f"order-{(env['after'] or env['before'])['id']}"}  # plain-text key kept
        seen += 1
    assert seen == len(sent)
    assert len(failures) == 1 and failures[0].stage == "schema" and failures[0].raw_key == b"poison"
    assert failures[0].kafka is not None and failures[0].kafka.topic == topic


def test_json_with_and_without_schemas_through_real_broker(kafka_bootstrap: str,
                                                           topic_factory: Callable[..., str]) -> None:
    topic = topic_factory("purchasing-json")
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    sent = []
    for i, (key, env) in enumerate(samples.change_stream(samples.SampleGenerator(seed=8), samples.PURCHASING, 100)):
        producer.produce(topic, key=samples.json_key(key),
                         value=samples.encode_json(samples.PURCHASING, env, schemas=i % 2 == 0))
        sent.append(env)
    assert producer.flush(30) == 0
    msgs = consume_all(kafka_bootstrap, topic, len(sent))
    assert len(msgs) == len(sent)
    decoder = Decoder()
    for m, env in zip(sorted(msgs, key=lambda m: m.offset()), sent):
        d = decoder.decode_message(m)
        assert isinstance(d, ChangeEvent) and d.key == {"id": env["after"]["id"]}
        if m.offset() % 2 == 0:
            assert d.after == env["after"]  # typed through the embedded schema
        else:
            assert d.after is not None and d.after["invoice_no"] == env["after"]["invoice_no"]


def test_embedded_postgres_is_real(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        version = conn.execute("show server_version_num").fetchone()
        assert version is not None and int(version[0]) >= 180000
        conn.execute("create table t (amount numeric(18,2))")
        conn.execute("insert into t values ('0.10'), ('0.20')")
        total = conn.execute("select sum(amount) from t").fetchone()
        assert total is not None and str(total[0]) == "0.30"
