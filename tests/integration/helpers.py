"""Helpers for pipeline integration tests: produce sample change events, run the pipeline, read the journal."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import Producer
from confluent_kafka.schema_registry import Schema

from harness import samples
from connector.events import Decoder, RegistrySchemas
from connector.journal import Journal
from connector.mapping import Mapper, load_rules
from connector.pipeline import Pipeline, PipelineOptions, Processor

RULES = Path(__file__).resolve().parents[2] / "rules"


@dataclass
class Produced:
    topic: str
    count: int
    poison: int = 0


def sample_stream(n: int, *, seed: int = 1, tables: tuple[samples.SampleTable, ...] = samples.TABLES
                  ) -> Iterator[tuple[samples.SampleTable, dict[str, Any], dict[str, Any]]]:
    gen = samples.SampleGenerator(seed=seed)
    per = max(1, n // len(tables))
    def tagged(t: samples.SampleTable) -> Iterator[tuple[samples.SampleTable, dict[str, Any], dict[str, Any]]]:
        for k, e in samples.change_stream(gen, t, per, update_every=5, delete_every=13):
            yield t, k, e
    streams = [tagged(t) for t in tables]
    # Interleave tables like a real multi-system topic mix.
    while streams:
        for s in list(streams):
            item = next(s, None)
            if item is None:
                streams.remove(s)
            else:
                yield item


def produce(bootstrap: str, topic: str, n: int, *, wire: str = "json", registry: Any = None, seed: int = 1,
            poison_every: int = 0) -> Produced:
    """``n`` sample change events (all five systems) on one topic, keyed by row id; optional poison records."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": "10", "enable.idempotence": "true",
                         "log_level": "3"})
    ids: dict[samples.SampleTable, int] = {}
    count = poison = 0
    for i, (t, key, env) in enumerate(sample_stream(n, seed=seed)):
        if wire == "avro":
            if t not in ids:
                ids[t] = registry.register_schema(f"{topic}-{t.table}",
                                                  Schema(json.dumps(samples.value_schema(t)), "AVRO"))
            value = samples.encode_avro(t, env, ids[t])
        else:
            value = samples.encode_json(t, env, schemas=True)
        producer.produce(topic, key=samples.json_key({"sys": t.system, **key}), value=value)
        count += 1
        if poison_every and i % poison_every == poison_every - 1:
            bad = [b"\x00\x00\x0f\x42\x40garbage", b'{"id": 1, "amount": "1.00"}', b"\xff\xfe not json",
                   b'{"op":"c","source":{"name":"pos","table":"sales_order","db":"posdb","schema":"public"},'
                   b'"after":{"id":1}}'][(i // poison_every) % 4]
            producer.produce(topic, key=b"poison-%d" % i, value=bad)
            count += 1
            poison += 1
        producer.poll(0)
    assert producer.flush(60) == 0
    return Produced(topic, count, poison)


def make_pipeline(bootstrap: str, dsn: str, topics: list[str], *, group: str | None = None, registry: Any = None,
                  dlq: str = "", tolerance: str = "all", batch_size: int = 500, rules: Path = RULES) -> Pipeline:
    journal = Journal(dsn, group=group or f"g-{uuid.uuid4().hex[:8]}")
    processor = Processor(Decoder(RegistrySchemas(registry) if registry is not None else None),
                          Mapper(load_rules(rules)))
    return Pipeline(consumer_conf={"bootstrap.servers": bootstrap, "group.id": journal.group, "log_level": "3"},
                    topics=topics, journal=journal, processor=processor,
                    options=PipelineOptions(dead_letter_topic=dlq, tolerance=tolerance, batch_size=batch_size))


def rows(dsn: str, query: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query, args).fetchall()


def consume_all(bootstrap: str, topic: str, n: int, timeout_s: float = 60) -> list[Any]:
    """Read up to ``n`` records of ``topic`` from the beginning with a throwaway consumer group."""
    import time

    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"read-{uuid.uuid4().hex[:8]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": "false", "log_level": "3"})
    consumer.subscribe([topic])
    out: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < deadline:
        out += [m for m in consumer.consume(500, 0.5) if m.error() is None]
    consumer.close()
    return out
