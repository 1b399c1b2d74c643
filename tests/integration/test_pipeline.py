"""The pipeline in-process on a real broker and database: poison handling, DLQ headers, replays, strictness."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient

from connector.pipeline import DLQ_PREFIX
from tests.integration.helpers import RULES, consume_all, make_pipeline, produce, rows


def test_poison_records_are_dead_lettered_with_connect_headers_and_the_line_never_stops(
        kafka_bootstrap: str, topic_factory: Callable[..., str], pg_dsn: str) -> None:
    topic = topic_factory("mixed", partitions=3)
    dlq = f"{topic}.dlq"
    registry = SchemaRegistryClient.new_client({"url": f"mock://{uuid.uuid4().hex}"})
    produced = produce(kafka_bootstrap, topic, 10_000, wire="avro", registry=registry, poison_every=250)
    pipe = make_pipeline(kafka_bootstrap, pg_dsn, [topic], registry=registry, dlq=dlq)
    stats = pipe.run(max_idle_s=3)
    assert stats.records == produced.count
    outcomes = dict(rows(pg_dsn, "SELECT outcome, count(*) FROM kdcdc.event_records GROUP BY 1"))
    assert sum(outcomes.values()) == produced.count
    # Every poison record is a dead letter or a rejection; the sample stream itself only has the odd
    # credit sale without a customer (MISSING_DIMENSION), which is a genuine rejection.
    bad = outcomes.get("DEAD_LETTERED", 0) + outcomes.get("REJECTED", 0)
    codes = dict(rows(pg_dsn, "SELECT code, count(*) FROM kdcdc.rejections GROUP BY 1"))
    assert outcomes.get("DEAD_LETTERED", 0) == produced.poison * 3 // 4
    assert bad == produced.poison + codes.get("MISSING_DIMENSION", 0)
    assert outcomes["VOUCHERED"] >= produced.count - bad - 100  # the rest are skips (deletes of nothing etc.)
    stages = dict(rows(pg_dsn, "SELECT stage, count(*) FROM kdcdc.dead_letters GROUP BY 1"))
    assert stages.get("schema") and stages.get("envelope") and stages.get("wire") and stages.get("TASK_PUT")
    # The DLQ topic has every bad record, original bytes and Kafka Connect headers.
    letters = consume_all(kafka_bootstrap, dlq, bad)
    assert len(letters) == bad
    by_offset = {}
    for m in letters:
        h = {k: v for k, v in (m.headers() or [])}
        assert h[f"{DLQ_PREFIX}topic"] == topic.encode()
        assert h[f"{DLQ_PREFIX}stage"] in (b"VALUE_CONVERTER", b"TASK_PUT")
        assert h[f"{DLQ_PREFIX}exception.message"] and h[f"{DLQ_PREFIX}exception.class.name"]
        by_offset[(int(h[f"{DLQ_PREFIX}partition"]), int(h[f"{DLQ_PREFIX}offset"]))] = m
    journal = rows(pg_dsn, "SELECT kafka_partition, kafka_offset, raw_value FROM kdcdc.dead_letters")
    assert {(p, o) for p, o, _ in journal} == set(by_offset)
    for p, o, raw in journal:
        assert bytes(raw) == by_offset[(p, o)].value()


def test_replaying_the_same_changes_from_another_topic_creates_nothing_new(
        kafka_bootstrap: str, topic_factory: Callable[..., str], pg_dsn: str) -> None:
    first, replay = topic_factory("live", partitions=2), topic_factory("live.replay", partitions=1)
    produce(kafka_bootstrap, first, 2000, seed=4)
    produce(kafka_bootstrap, replay, 2000, seed=4)  # the same changes, re-published elsewhere
    group = f"g-{uuid.uuid4().hex[:6]}"
    make_pipeline(kafka_bootstrap, pg_dsn, [first], group=group).run(max_idle_s=3)
    before = rows(pg_dsn, "SELECT count(*) FROM kdcdc.vouchers")[0][0]
    stats = make_pipeline(kafka_bootstrap, pg_dsn, [replay], group=group + "-replay").run(max_idle_s=3)
    assert rows(pg_dsn, "SELECT count(*) FROM kdcdc.vouchers")[0][0] == before > 1500
    assert stats.vouchers == 0 and stats.duplicates > 1500
    dup = rows(pg_dsn, "SELECT count(*) FROM kdcdc.event_records WHERE consumer_group = %s AND outcome = 'DUPLICATE'",
               group + "-replay")[0][0]
    # each batch's audit row counts its duplicates (decision 0010: no audit row per redelivered record)
    audited = rows(pg_dsn, "SELECT sum((detail->'outcomes'->>'DUPLICATE')::int) FROM kdcdc.audit "
                           "WHERE action = 'BATCH_JOURNALED' AND detail->>'group' = %s", group + "-replay")[0][0]
    assert dup == audited > 1000


def test_strict_mode_stops_the_partition_at_the_first_poison_record(
        kafka_bootstrap: str, topic_factory: Callable[..., str], pg_dsn: str) -> None:
    topic = topic_factory("strict")
    produced = produce(kafka_bootstrap, topic, 1000, poison_every=400)
    pipe = make_pipeline(kafka_bootstrap, pg_dsn, [topic], tolerance="none", batch_size=100)
    pipe.run(max_idle_s=3)
    first_poison = 400  # produce() writes a poison record right after the 400th event
    (stored,) = rows(pg_dsn, "SELECT next_offset FROM kdcdc.offsets")[0]
    assert stored == first_poison and pipe.stats.stopped_at == {(topic, 0): first_poison}
    assert rows(pg_dsn, "SELECT count(*) FROM kdcdc.event_records")[0][0] == first_poison
    assert produced.count > stored


def test_the_audit_log_and_posted_vouchers_are_append_only(
        kafka_bootstrap: str, topic_factory: Callable[..., str], pg_dsn: str) -> None:
    topic = topic_factory("audit")
    produce(kafka_bootstrap, topic, 50)
    make_pipeline(kafka_bootstrap, pg_dsn, [topic]).run(max_idle_s=2)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for stmt in ("UPDATE kdcdc.audit SET action = 'x'", "DELETE FROM kdcdc.audit", "TRUNCATE kdcdc.audit",
                     "DELETE FROM kdcdc.vouchers", "UPDATE kdcdc.entries SET amount = 0"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only|never deleted"):
                conn.execute(stmt)
        key = conn.execute("SELECT key FROM kdcdc.vouchers LIMIT 1").fetchone()[0]  # type: ignore[index]
        conn.execute("UPDATE kdcdc.vouchers SET status = 'POSTED', kingdee_id = '1' WHERE key = %s", (key,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="cannot be changed"):
            conn.execute("UPDATE kdcdc.vouchers SET debit_total = 0 WHERE key = %s", (key,))
        conn.execute("UPDATE kdcdc.vouchers SET status = 'REVERSED' WHERE key = %s", (key,))  # allowed


def test_dlq_requeue_after_a_rule_fix_posts_once(
        kafka_bootstrap: str, topic_factory: Callable[..., str], pg_dsn: str, tmp_path: Any) -> None:
    import shutil

    from connector.dlq import list_dead_letters, requeue

    topic = topic_factory("requeue")
    produce(kafka_bootstrap, topic, 500, seed=6)
    # Day 1: the bank rules are missing, so bank events are rejected (NO_RULE) and dead-lettered.
    partial = tmp_path / "rules"
    shutil.copytree(RULES, partial, ignore=shutil.ignore_patterns("golden", "bank*.yaml"))
    group = f"g-{uuid.uuid4().hex[:6]}"
    make_pipeline(kafka_bootstrap, pg_dsn, [topic], group=group, rules=partial).run(max_idle_s=3)
    pipe = make_pipeline(kafka_bootstrap, pg_dsn, [topic], group=group)
    letters = list_dead_letters(pipe.journal, stage="TASK_PUT", limit=10_000)
    no_rule = rows(pg_dsn, "SELECT count(*) FROM kdcdc.rejections WHERE code = 'NO_RULE'")[0][0]
    assert len(letters) >= no_rule > 50
    before = rows(pg_dsn, "SELECT count(*) FROM kdcdc.vouchers")[0][0]
    # Day 2: the rules are fixed; requeue twice (an operator double-click) and run.
    requeue(pipe.journal, letters, producer_conf={"bootstrap.servers": kafka_bootstrap})
    requeue(pipe.journal, letters, producer_conf={"bootstrap.servers": kafka_bootstrap})
    stats = pipe.run(max_idle_s=3)
    bank = rows(pg_dsn, "SELECT count(*) FROM kdcdc.vouchers WHERE source_system = 'bank'")[0][0]
    assert bank > 0 and rows(pg_dsn, "SELECT count(*) FROM kdcdc.vouchers")[0][0] == before + bank
    assert stats.records == 2 * len(letters) and stats.duplicates >= bank  # the second copy changed nothing
    left = list_dead_letters(pipe.journal, status="NEW", stage="TASK_PUT", limit=10_000)
    assert all(d.reason.startswith("MISSING_DIMENSION") for d in left), left  # only the genuine rejections
    audited = rows(pg_dsn, "SELECT count(*) FROM kdcdc.audit WHERE action = 'DLQ_REQUEUED'")[0][0]
    pipe.journal.close()
    assert audited == 2 * len(letters)


def test_a_fenced_batch_is_dropped_and_the_partition_resumes_from_the_journal(
        kafka_bootstrap: str, topic_factory: Callable[..., str], pg_dsn: str) -> None:
    """A zombie's view: while this instance works on partition 0, "another instance" journals the next
    records and moves the offset on. The next write of partition 0 is fenced: nothing of it is written, the
    partition is re-read from the journal's offset, and every record still has exactly one outcome."""
    topic = topic_factory("fence", partitions=1)
    produced = produce(kafka_bootstrap, topic, 600, seed=19)
    pipe = make_pipeline(kafka_bootstrap, pg_dsn, [topic], batch_size=100)
    jumped: list[int] = []

    def other_instance_moves_on(result: Any, _: float) -> None:
        if jumped:
            return
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            row = conn.execute("SELECT next_offset FROM kdcdc.offsets WHERE consumer_group = %s AND topic = %s",
                               (pipe.journal.group, topic)).fetchone()
            assert row is not None
            nxt = row[0]
            # the other instance journaled records nxt .. nxt+149 (their outcomes are its business)
            conn.execute("INSERT INTO kdcdc.event_log (consumer_group, topic, kafka_partition, kafka_offset, outcome) "
                         "SELECT %s, %s, 0, o, 'SKIPPED' FROM generate_series(%s::bigint, %s::bigint) o",
                         (pipe.journal.group, topic, nxt, nxt + 149))
            conn.execute("UPDATE kdcdc.offsets SET next_offset = %s, owner = 'other' WHERE consumer_group = %s",
                         (nxt + 150, pipe.journal.group))
            jumped.append(nxt)
    pipe.on_batch = other_instance_moves_on
    stats = pipe.run(max_idle_s=2)
    assert jumped and stats.fenced >= 1
    got = rows(pg_dsn, "SELECT count(*), count(DISTINCT kafka_offset), min(kafka_offset), max(kafka_offset) "
                       "FROM kdcdc.event_records WHERE consumer_group = %s", pipe.journal.group)[0]
    assert got == (produced.count, produced.count, 0, produced.count - 1)  # no gap, no double outcome
    assert rows(pg_dsn, "SELECT next_offset FROM kdcdc.offsets WHERE consumer_group = %s",
                pipe.journal.group) == [(produced.count,)]
    # what this instance journaled never overlaps what "the other" did
    mine = rows(pg_dsn, "SELECT count(*) FROM kdcdc.event_records WHERE consumer_group = %s AND kafka_offset "
                        "BETWEEN %s AND %s AND outcome <> 'SKIPPED'", pipe.journal.group, jumped[0], jumped[0] + 149)
    assert mine == [(0,)]


def test_a_fenced_batch_with_several_partitions_rereads_all_of_them(
        kafka_bootstrap: str, topic_factory: Callable[..., str], pg_dsn: str) -> None:
    """A batch is one transaction: when it is fenced on partition 0, partition 1's records in it are not
    journaled either, so partition 1 must be re-read too — or its next batch would leave a gap."""
    from confluent_kafka import TopicPartition

    topic = topic_factory("fence2", partitions=2)
    produce(kafka_bootstrap, topic, 400, seed=23)
    pipe = make_pipeline(kafka_bootstrap, pg_dsn, [topic])
    pipe.journal.migrate()
    pipe.consumer.assign([TopicPartition(topic, 0, 0), TopicPartition(topic, 1, 0)])
    pipe.assigned = {(topic, 0), (topic, 1)}
    fetched: dict[int, list[Any]] = {0: [], 1: []}
    while min(len(v) for v in fetched.values()) < 20:
        for m in pipe.consumer.consume(50, 1.0):
            if m.error() is None:
                fetched[m.partition() or 0].append(m)
    ends = {p: len(v) for p, v in fetched.items()}  # what the consumer has already handed out
    mixed = fetched[0][:10] + fetched[1][:10]
    # "another instance" journaled partition 0's first 10 records and moved its offset on
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO kdcdc.offsets (consumer_group, topic, kafka_partition, next_offset, owner) "
                     "VALUES (%s, %s, 0, 10, 'other')", (pipe.journal.group, topic))
        conn.execute("INSERT INTO kdcdc.event_log (consumer_group, topic, kafka_partition, kafka_offset, outcome) "
                     "SELECT %s, %s, 0, o, 'SKIPPED' FROM generate_series(0, 9) o", (pipe.journal.group, topic))
    pipe._handle(mixed)
    assert pipe.stats.fenced == 1 and pipe.stats.records == 0
    assert ends[1] > 10  # partition 1 was consumed beyond the fenced batch: only a re-seek brings it back
    idle = 0
    while idle < 3:  # the batch loop of Pipeline.run, on this manual assignment
        msgs = [m for m in pipe.consumer.consume(100, 0.5) if m.error() is None]
        idle = 0 if msgs else idle + 1
        if msgs:
            pipe._handle(msgs)
    pipe.consumer.close()
    pipe.journal.close()
    got = rows(pg_dsn, "SELECT kafka_partition, count(*), count(DISTINCT kafka_offset), min(kafka_offset) "
                       "FROM kdcdc.event_records WHERE consumer_group = %s GROUP BY 1 ORDER BY 1", pipe.journal.group)
    offsets = dict(rows(pg_dsn, "SELECT kafka_partition, next_offset FROM kdcdc.offsets WHERE consumer_group = %s",
                        pipe.journal.group))
    for part, n, distinct, lo in got:
        assert (n, distinct, lo) == (offsets[part], offsets[part], 0), part  # no gap, no double outcome
    assert pipe.stats.records + 10 == sum(n for _, n, _, _ in got) == 400
