"""``make demo``: the whole product on embedded defaults, on one machine, in a few minutes.

Starts a real Kafka broker and PostgreSQL (unless ``KDCDC_KAFKA__BOOTSTRAP_SERVERS`` / ``KDCDC_JOURNAL__DSN``
point at existing ones), publishes realistic Debezium change events for five business systems, consumes
them through the pipeline with a live progress line, and ends with a summary. The schema registry is the
in-process ``mock://`` one (producer and consumer share the process); point ``schema_registry.url`` at a
real registry to use it instead.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tqdm import tqdm

from connector import samples


def _produce(bootstrap: str, registry: Any, n: int, wire: str) -> dict[str, int]:
    from confluent_kafka import Producer
    from confluent_kafka.schema_registry import Schema

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": "20", "enable.idempotence": "true",
                         "log_level": "3"})
    gen = samples.SampleGenerator(seed=2026)
    per_table = max(1, n // len(samples.TABLES))
    counts: dict[str, int] = {}
    for t in samples.TABLES:
        value_id = registry.register_schema(f"{t.topic}-value", Schema(json.dumps(samples.value_schema(t)), "AVRO"))
        key_id = registry.register_schema(f"{t.topic}-key", Schema(json.dumps(samples.key_schema(t)), "AVRO"))
        for key, env in samples.change_stream(gen, t, per_table, update_every=7, delete_every=23):
            if wire == "avro":
                value = samples.encode_avro(t, env, value_id)
                k = samples.encode_avro_key(t, key, key_id)
            else:
                value = samples.encode_json(t, env)
                k = samples.json_key(key)
            producer.produce(t.topic, value=value, key=k)
            producer.poll(0)
            counts[t.topic] = counts.get(t.topic, 0) + 1
    # A few poison records, the way they show up in real life.
    producer.produce(samples.POS.topic, value=b"\x00\x00\x00\x03\xe7garbage", key=b"bad-1")  # unknown schema id
    producer.produce(samples.POS.topic, value=b'{"id": 5, "amount": 1}', key=b"bad-2")  # unwrapped row
    counts[samples.POS.topic] += 2
    producer.flush(30)
    return counts


def _consume_and_decode(bootstrap: str, registry: Any, expected: int, timeout_s: float = 120.0) -> Counter[str]:
    from confluent_kafka import Consumer

    from connector.events import ChangeEvent, DecodeFailure, Decoder, RegistrySchemas, Tombstone

    decoder = Decoder(RegistrySchemas(registry))
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"kingdee-cdc-demo-{time.time_ns()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": "false"})
    consumer.subscribe([t.topic for t in samples.TABLES])
    stats: Counter[str] = Counter()
    seen = 0
    start = time.monotonic()
    with tqdm(total=expected, unit="ev", desc="decoding", dynamic_ncols=True) as bar:
        while seen < expected and time.monotonic() - start < timeout_s:
            msgs = consumer.consume(500, 0.5)
            for m in msgs:
                if m.error():
                    continue
                d = decoder.decode_message(m)
                if isinstance(d, ChangeEvent):
                    stats[f"{d.source.name}.{d.source.table} op={d.op.value}"] += 1
                elif isinstance(d, DecodeFailure):
                    stats[f"dead letter ({d.stage}): {d.reason[:60]}"] += 1
                elif isinstance(d, Tombstone):
                    stats["tombstone"] += 1
            seen += len(msgs)
            bar.update(len(msgs))
    consumer.close()
    stats["__seen__"] = seen
    return stats


def run_demo(*, events: int = 5000, wire: str = "avro", workdir: Path | None = None) -> int:
    from confluent_kafka.schema_registry import SchemaRegistryClient

    from connector.devstack import EmbeddedPostgres, KafkaBroker

    own_dir = workdir is None
    base = Path(tempfile.mkdtemp(prefix="kdcdc-demo-")) if workdir is None else workdir
    bootstrap = os.environ.get("KDCDC_KAFKA__BOOTSTRAP_SERVERS")
    broker = pg = None
    t0 = time.monotonic()
    try:
        if bootstrap is None:
            print("starting Apache Kafka (KRaft, single node) …", flush=True)
            broker = KafkaBroker(base / "kafka").start()
            bootstrap = broker.bootstrap
        if not os.environ.get("KDCDC_JOURNAL__DSN"):
            print("starting PostgreSQL (embedded) …", flush=True)
            pg = EmbeddedPostgres(base / "postgres").start()
        print(f"stack ready in {time.monotonic() - t0:.1f}s: kafka {bootstrap}"
              + (f", postgresql {pg.dsn()}" if pg else ""), flush=True)
        registry = SchemaRegistryClient.new_client({"url": "mock://kingdee-cdc-demo"})
        counts = _produce(bootstrap, registry, events, wire)
        total = sum(counts.values())
        print(f"published {total} change events ({wire}) to {len(counts)} topics", flush=True)
        t1 = time.monotonic()
        stats = _consume_and_decode(bootstrap, registry, total)
        elapsed = time.monotonic() - t1
        seen = stats.pop("__seen__")
        print(f"\nsummary: {seen}/{total} records decoded in {elapsed:.1f}s ({seen / max(elapsed, 1e-9):,.0f} ev/s)")
        for k, v in sorted(stats.items()):
            print(f"  {v:7d}  {k}")
        return 0 if seen == total else 1
    finally:
        if broker:
            broker.stop()
        if pg:
            pg.stop()
        if own_dir:
            shutil.rmtree(base, ignore_errors=True)
