"""Helpers of the integration tests: wait for a condition, produce sample change events, run the pipeline, read
the journal, journal vouchers for the poster, talk to the sandbox, read Kafka watermarks."""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.schema_registry import Schema

from harness import samples
from connector.events import ChangeEvent, Decoder, FixedSchemas, KafkaCoordinates, RegistrySchemas
from connector.journal import EventRecord, Journal, Outcome
from connector.kingdee import KingdeeClient, KingdeeCredentials
from connector.mapping import InMemoryLedger, Mapper, load_rules
from connector.money import quantize
from connector.pipeline import Pipeline, PipelineOptions, Processor
from connector.sandbox import RunningSandbox

RULES = Path(__file__).resolve().parents[2] / "rules"
#: The installed command line, as users run it (the console script beside this interpreter).
CLI = str(Path(sys.executable).parent / "kingdee-cdc")

T = TypeVar("T")


def wait_for(condition: Callable[[], T | None], timeout_s: float, what: str, *,
             observe: Callable[[], object] | None = None, ignore: tuple[type[Exception], ...] = (),
             interval_s: float = 0.05) -> T:
    """Poll ``condition`` until it returns something truthy and return that. After ``timeout_s`` fail naming
    ``what`` did not happen, with the last value seen (or what ``observe`` says is there instead).
    Exceptions of the ``ignore`` types count as "not yet" (a server still starting); any other exception, an
    assertion included, fails at once."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while True:
        try:
            value = condition()
        except ignore as e:
            last = e
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            seen = observe() if observe is not None else last
            raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what} (seen: {seen!r})")
        time.sleep(interval_s)


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
                  dlq: str = "", tolerance: str = "all", batch_size: int = 500, rules: Path = RULES,
                  journaled_feedback: tuple[str, ...] = ()) -> Pipeline:
    journal = Journal(dsn, group=group or f"g-{uuid.uuid4().hex[:8]}", journaled_feedback=journaled_feedback)
    processor = Processor(Decoder(RegistrySchemas(registry) if registry is not None else None),
                          Mapper(load_rules(rules)))
    return Pipeline(consumer_conf={"bootstrap.servers": bootstrap, "group.id": journal.group, "log_level": "3"},
                    topics=topics, journal=journal, processor=processor,
                    options=PipelineOptions(dead_letter_topic=dlq, tolerance=tolerance, batch_size=batch_size))


def tamper_lines(dsn: str, key: str, edit: Callable[[list[list[Any]]], None]) -> None:
    """Change voucher ``key``'s lines behind the triggers' back (what reconciliation must notice): its entries
    live in its payload (migration 0009), so the payload is edited with the vouchers' triggers off."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        found = conn.execute("SELECT payload FROM kdcdc.vouchers WHERE key = %s", (key,)).fetchone()
        assert found is not None, key
        doc = json.loads(bytes(found[0]))
        edit(doc["entries"])
        with conn.transaction():
            conn.execute("ALTER TABLE kdcdc.vouchers DISABLE TRIGGER USER")
            conn.execute("UPDATE kdcdc.vouchers SET payload = %s WHERE key = %s",
                         (json.dumps(doc, ensure_ascii=False).encode(), key))
            conn.execute("ALTER TABLE kdcdc.vouchers ENABLE TRIGGER USER")


def rows(dsn: str, query: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query, args).fetchall()


def consume_all(bootstrap: str, topic: str, n: int, timeout_s: float = 60) -> list[Any]:
    """Read up to ``n`` records of ``topic`` from the beginning with a throwaway consumer group."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"read-{uuid.uuid4().hex[:8]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": "false", "log_level": "3"})
    consumer.subscribe([topic])
    out: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < deadline:
        out += [m for m in consumer.consume(500, 0.5) if m.error() is None]
    consumer.close()
    return out


def log_end(bootstrap: str, topics: list[str]) -> dict[tuple[str, int], int]:
    """(topic, partition) → the log end offset (high watermark) of every partition of ``topics``; a topic that
    does not exist (yet) has no partitions."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"wm-{uuid.uuid4().hex[:8]}", "log_level": "3"})
    try:
        out = {}
        meta = c.list_topics(timeout=10).topics
        for t in topics:
            if t not in meta or meta[t].error is not None:
                continue
            for p in meta[t].partitions:
                out[(t, p)] = c.get_watermark_offsets(TopicPartition(t, p), timeout=10)[1]
        return out
    finally:
        c.close()


def group_assignment(bootstrap: str, group: str) -> tuple[str, dict[str, set[tuple[str, int]]]]:
    """A consumer group as the broker sees it: its state (``STABLE``, ``PREPARING_REBALANCE`` …) and each
    member's assigned (topic, partition)s, by ``group.instance.id`` (static members) or member id."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": "3"})
    desc = admin.describe_consumer_groups([group], request_timeout=10)[group].result(15)
    members = {m.group_instance_id or m.member_id: {(tp.topic, tp.partition) for tp in m.assignment.topic_partitions}
               for m in desc.members}
    return desc.state.name, members


def record_counts(bootstrap: str, topics: list[str]) -> dict[str, int]:
    """Records per topic (partitions summed; 0 for a topic that does not exist yet)."""
    ends = log_end(bootstrap, topics)
    return {t: sum(n for (topic, _), n in ends.items() if topic == t) for t in topics}


def wait_for_records(bootstrap: str, expected: dict[str, int], timeout_s: float = 240) -> dict[str, int]:
    """Until every topic holds at least its expected number of records (Debezium writing them); on a timeout
    the message names the short topics and the changes they do hold."""
    started = time.monotonic()

    def all_there() -> dict[str, int] | None:
        got = record_counts(bootstrap, list(expected))
        return got if all(got[t] >= n for t, n in expected.items()) else None
    try:
        got = wait_for(all_there, timeout_s, f"Debezium to write {expected}")
    except AssertionError as e:
        got = record_counts(bootstrap, list(expected))
        short = [t for t, n in expected.items() if got.get(t, 0) < n]
        seen = {t: [_op(m.value()) for m in consume_all(bootstrap, t, got[t], timeout_s=10)] for t in short}
        raise AssertionError(f"Debezium produced {got}, expected at least {expected}; ops on the short topics: "
                             f"{seen}") from e
    print(f"\n  debezium: all records after {time.monotonic() - started:.0f} s")
    return got


def _op(value: bytes | None) -> str:
    if value is None:
        return "tombstone"
    payload = json.loads(value).get("payload") or {}
    return f"{payload.get('op')}:{(payload.get('after') or payload.get('before') or {}).get('id')}"


def pos_amounts(gross: str) -> dict[str, Any]:
    """Net, tax (13 % VAT included in ``gross``) and points of a POS order of this gross amount."""
    g = Decimal(gross)
    net = quantize(g / Decimal("1.13"))
    return {"gross_amount": g, "net_amount": net, "tax_amount": g - net, "points_deduction": Decimal("0.00")}


# --------------------------------------------------------------------------- the poster's side
def journal_vouchers(journal: Journal, n_vouchers: int, *, seed: int = 5) -> int:
    """Map sample changes (creates, updates → reversal + repost, deletes) and journal exactly n vouchers."""
    journal.migrate()
    mapper, ledger = Mapper(load_rules(RULES)), InMemoryLedger()
    gen = samples.SampleGenerator(seed=seed)
    records: list[EventRecord] = []
    total = offset = 0
    tables = [samples.POS, samples.PURCHASING, samples.PAYROLL, samples.MES, samples.BANK]
    decoders = {t: Decoder(FixedSchemas(samples.value_schema(t))) for t in tables}
    streams = {t: samples.change_stream(gen, t, 10**9, update_every=6, delete_every=10) for t in tables}
    while total < n_vouchers:
        t = tables[offset % len(tables)]
        key, env = next(streams[t])
        ev = decoders[t].decode(samples.encode_avro(t, env, 1), key=samples.json_key(key),
                                kafka=KafkaCoordinates(topic="journal-only", partition=0, offset=offset))
        offset += 1
        assert isinstance(ev, ChangeEvent)
        result = mapper.map(ev, ledger)
        if not result.vouchers or total + len(result.vouchers) > n_vouchers:
            continue
        ledger.apply(result)
        total += len(result.vouchers)
        assert ev.kafka is not None
        records.append(EventRecord(kafka=ev.kafka, outcome=Outcome.VOUCHERED, event=ev, vouchers=result.vouchers))
        if len(records) >= 1000:
            journal.write_batch(records, {("journal-only", 0): (records[0].kafka.offset, offset)})
            records = []
    if records:
        journal.write_batch(records, {("journal-only", 0): (records[0].kafka.offset, offset)})
    return total


def client_for(sb: RunningSandbox, timeout_s: float = 5.0, concurrency: int = 4) -> KingdeeClient:
    """Our Kingdee client, logged in to the sandbox with its configured app."""
    cfg = sb.server.state.config
    app_id = next(iter(cfg.apps))
    return KingdeeClient(KingdeeCredentials(server_url=sb.url, acct_id=cfg.data_centre, username="integration",
                                            app_id=app_id, app_secret=cfg.apps[app_id]["secret"]),
                         timeout_s=timeout_s, max_concurrency=concurrency, rate_limit_per_s=1000)


def keys_in_sandbox(sb: RunningSandbox) -> dict[str, list[int]]:
    """Voucher key (from the first line's marker) → the sandbox ids of every voucher carrying it, in id order."""
    out: dict[str, list[int]] = {}
    with sb.server.state.lock:
        records = sorted(sb.server.state.vouchers.items())
    for vid, rec in records:
        expl = rec["model"]["FEntity"][0]["FEXPLANATION"]
        out.setdefault(expl.rsplit("[kdcdc:", 1)[1].rstrip("]"), []).append(vid)
    return out
