"""End-to-end pipeline benchmark on a real broker and a real (durable) PostgreSQL.

* throughput: N Avro change events already in the topic, time until all are journaled;
* latency: a separate producer process sends at a steady rate; per record, journal commit time minus the
  Kafka record timestamp (producer CreateTime ≈ append time on loopback) → p50 / p99;
* baseline: the naive design on the same data — per event: decode, map, INSERT voucher + entries + offset,
  COMMIT — to show what batching and COPY buy;
* peak RSS of the process running the pipeline.
"""

from __future__ import annotations

import multiprocessing
import resource
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from harness import samples
from harness.devstack import REPO_ROOT, EmbeddedPostgres, KafkaBroker
from connector.events import ChangeEvent, Decoder, FixedSchemas
from connector.journal import BatchResult, EventRecord, Journal, Partition
from connector.ledger import voucher_to_json
from connector.mapping import Mapper, load_rules
from connector.pipeline import Pipeline, PipelineOptions, Processor

RULES = REPO_ROOT / "rules"
SCHEMA_ID = 1  # FixedSchemas: one sample table per topic keeps the benchmark registry-free across processes


def _encoded(n: int, seed: int) -> list[tuple[bytes, bytes]]:
    gen = samples.SampleGenerator(seed=seed)
    return [(samples.json_key(k), samples.encode_avro(samples.PURCHASING, e, SCHEMA_ID))
            for k, e in samples.change_stream(gen, samples.PURCHASING, n, update_every=5, delete_every=17)]


def _produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]], rate: float | None = None) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": "5", "log_level": "3"})
    p.list_topics(topic, timeout=30)  # connect and learn the leaders first: not part of any measured latency
    start = time.monotonic()
    for i, (k, v) in enumerate(records):
        if rate:
            due = start + i / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        p.produce(topic, key=k, value=v)
        p.poll(0)
    p.flush(60)


def _pipeline(bootstrap: str, dsn: str, topic: str,
              on_batch: Callable[[BatchResult, float], None] | None = None) -> Pipeline:
    journal = Journal(dsn, group=f"bench-{uuid.uuid4().hex[:6]}")
    processor = Processor(Decoder(FixedSchemas(samples.value_schema(samples.PURCHASING))), Mapper(load_rules(RULES)))
    return Pipeline(consumer_conf={"bootstrap.servers": bootstrap, "group.id": journal.group, "log_level": "3"},
                    topics=[topic], journal=journal, processor=processor,
                    options=PipelineOptions(dead_letter_topic="", batch_size=2000), on_batch=on_batch)


def _topic(bootstrap: str, partitions: int = 3) -> str:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result(30)
    return name


def throughput(bootstrap: str, dsn: str, n: int) -> dict[str, Any]:
    topic = _topic(bootstrap)
    _produce(bootstrap, topic, _encoded(n, 1))
    marks: list[tuple[float, int, float]] = []
    pipe = _pipeline(bootstrap, dsn, topic, on_batch=lambda r, dt: marks.append((time.monotonic(), r.records, dt)))
    pipe.run(max_idle_s=2)
    done = sum(m[1] for m in marks)
    span = marks[-1][0] - (marks[0][0] - marks[0][2])
    return {"events": done, "seconds": span, "events_per_s": done / span,
            "batch_ms_mean": 1000 * statistics.mean(m[2] for m in marks)}


def latency(bootstrap: str, dsn: str, rate: float, seconds: float) -> dict[str, Any]:
    topic = _topic(bootstrap)
    n = int(rate * seconds)
    lat: list[float] = []
    pipe_holder: list[Pipeline] = []

    def on_batch(result: BatchResult, dt: float) -> None:
        pass

    pipe = _pipeline(bootstrap, dsn, topic, on_batch=on_batch)
    pipe_holder.append(pipe)
    original = pipe.journal.write_batch

    def timed(records: Sequence[EventRecord], positions: Mapping[Partition, tuple[int, int]]) -> BatchResult:
        res = original(records, positions)
        now_ms = time.time() * 1000
        lat.extend(now_ms - r.kafka.timestamp_ms for r in records if r.kafka.timestamp_ms)
        return res
    pipe.journal.write_batch = timed  # type: ignore[method-assign]
    runner = threading.Thread(target=pipe.run)
    runner.start()
    time.sleep(4)  # group join
    proc = multiprocessing.get_context("spawn").Process(target=_produce, args=(bootstrap, topic, _encoded(n, 2), rate))
    proc.start()
    proc.join()
    deadline = time.monotonic() + 120  # (not idle-based: a slow producer start must not end the run early)
    while len(lat) < n and time.monotonic() < deadline:
        time.sleep(0.2)
    pipe.stop()
    runner.join()
    lat.sort()
    return {"rate": rate, "events": len(lat), "p50_ms": lat[len(lat) // 2], "p99_ms": lat[int(len(lat) * 0.99)],
            "max_ms": lat[-1]}


def naive(bootstrap: str, dsn: str, n: int) -> dict[str, Any]:
    """Per event: decode, map, INSERT the voucher, its entries and the offset, COMMIT."""
    topic = _topic(bootstrap, 1)
    _produce(bootstrap, topic, _encoded(n, 3))
    decoder = Decoder(FixedSchemas(samples.value_schema(samples.PURCHASING)))
    mapper = Mapper(load_rules(RULES))
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"naive-{uuid.uuid4().hex[:6]}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": "false", "log_level": "3"})
    c.subscribe([topic])
    done = 0
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS naive_vouchers (key text primary key, payload bytea)")
        conn.execute("CREATE TABLE IF NOT EXISTS naive_entries (key text, seq int, account text, amount numeric)")
        conn.execute("CREATE TABLE IF NOT EXISTS naive_offsets (p int primary key, o bigint)")
        conn.commit()
        start = None
        while done < n:
            m = c.poll(1.0)
            if m is None or m.error():
                continue
            start = start or time.monotonic()
            ev = decoder.decode_message(m)
            if isinstance(ev, ChangeEvent):
                for v in mapper.map(ev).vouchers:
                    conn.execute("INSERT INTO naive_vouchers VALUES (%s, %s) ON CONFLICT DO NOTHING",
                                 (v.key, voucher_to_json(v)))
                    for i, e in enumerate(v.entries):
                        conn.execute("INSERT INTO naive_entries VALUES (%s, %s, %s, %s)", (v.key, i, e.account,
                                                                                          e.amount))
            conn.execute("INSERT INTO naive_offsets VALUES (%s, %s) ON CONFLICT (p) DO UPDATE SET o = EXCLUDED.o",
                         (m.partition(), (m.offset() or 0) + 1))
            conn.commit()
            done += 1
    c.close()
    span = time.monotonic() - (start or time.monotonic())
    return {"events": done, "seconds": span, "events_per_s": done / span}


def run(n: int = 30_000, naive_n: int = 3_000) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        with KafkaBroker(Path(d) / "kafka") as k, EmbeddedPostgres(Path(d) / "pg", durable=True) as pg:
            out: dict[str, Any] = {}
            out["throughput"] = throughput(k.bootstrap, pg.dsn(), n)
            out["naive"] = naive(k.bootstrap, pg.dsn(), naive_n)
            out["latency"] = [latency(k.bootstrap, pg.dsn(), r, 10) for r in (1000, 3000)]
            out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            return out


def markdown(r: dict[str, Any]) -> str:
    t, nv = r["throughput"], r["naive"]
    lines = [
        "| measure | result | target |", "|---|---:|---:|",
        f"| sustained throughput ({t['events']:,} events already in the topic) | {t['events_per_s']:,.0f} events/s "
        f"({t['seconds']:.1f} s, mean batch {t['batch_ms_mean']:.0f} ms) | 15,000 events/s |",
        f"| naive baseline (per-event insert + commit, {nv['events']:,} events) | {nv['events_per_s']:,.0f} "
        f"events/s | — |",
        f"| batched pipeline vs naive baseline | {t['events_per_s'] / nv['events_per_s']:.1f}× | ≥ 10× |",
    ]
    for lat in r["latency"]:
        lines.append(f"| latency at a steady {lat['rate']:,.0f} events/s (Kafka timestamp → journal commit, "
                     f"{lat['events']:,} events) | p50 {lat['p50_ms']:,.0f} ms, p99 {lat['p99_ms']:,.0f} ms | "
                     f"{'p99 ≤ 250 ms' if lat['rate'] == 3000 else '—'} |")
    lines.append(f"| peak RSS of the benchmark process (pipeline + test harness) | {r['peak_rss_mb']:.0f} MB | "
                 "≤ 300 MB |")
    return "\n".join(lines)
