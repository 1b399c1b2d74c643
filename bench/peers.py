"""Peers of the pipeline benchmark: the same change events, the same PostgreSQL, other consumers.

Performance is planned as ratios measured side by side in one run (hosts differ 2–3× in speed and are
noisy), so kingdee-cdc's sustained rate is compared with, on the *same topic* in the *same* PostgreSQL
(fsync on):

* :func:`run_jdbc_sink` — **the Debezium JDBC sink connector** (``io.debezium:debezium-connector-jdbc``, the
  official plugin archive from Maven Central, ``deploy/jdbc-sink/pom.xml``) on a standalone Kafka Connect
  worker (the harness's Connect runtime), configured as its documentation recommends for Debezium source
  topics: no flattening SMT, upsert by record key, deletes enabled, one task. What a data platform team
  without kingdee-cdc would run to land the rows. Timed from the worker's start until the last row is in
  the table (row count and the sum of ``gross_amount`` both final, so trailing updates count too); the warm
  rate is the slope of the sink's committed consumer offsets between 10 % and 90 % of the events.
* :func:`run_raw_ceiling` — **the raw ceiling**: a plain confluent-kafka consumer, ``json.loads`` of each
  value, ``payload.after`` (``before`` for deletes) COPYed into one table, one COPY + one commit per batch of
  2,000. Nothing kingdee-cdc does (decode, map, check, exactly-once bookkeeping) is in it.
* :func:`run_kingdee_cdc` — kingdee-cdc's pipeline on the same JSON topic, built the way
  ``bench/pipeline.py`` builds it (batches of up to 2,000, no dead-letter topic).

``make bench`` runs them side by side (``bench/pipeline.py``); ``python -m bench.peers`` runs them alone (and
kingdee-cdc on the same changes as Avro, its own topic) on a fresh broker and PostgreSQL and prints one table
per repetition; see ``--help``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import httpx
import psycopg
from confluent_kafka import OFFSET_BEGINNING, Consumer, ConsumerGroupTopicPartitions, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from harness import samples
from harness.debezium import JdbcSinkConnect, ensure_jdbc_sink_plugin, jdbc_sink_config
from harness.devstack import REPO_ROOT

TABLE: Final = samples.PURCHASING
RULES: Final = REPO_ROOT / "rules"
#: The change stream of bench/pipeline.py: a create per invoice, an update after every 5th, a delete after
#: every 17th.
UPDATE_EVERY: Final = 5
DELETE_EVERY: Final = 17
_KEY_SCHEMA: Final = {"type": "struct", "optional": False, "name": f"{TABLE.topic}.Key",
                      "fields": [{"type": "int64", "optional": False, "field": "id"}]}


# --------------------------------------------------------------------------- the events
@dataclass(frozen=True, slots=True)
class Expected:
    """What the target table holds once every event of the stream is applied (upsert + delete by id)."""

    events: int
    rows: int
    gross_total: Decimal


def _stream(n: int, seed: int) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    gen = samples.SampleGenerator(seed=seed)
    return samples.change_stream(gen, TABLE, n, update_every=UPDATE_EVERY, delete_every=DELETE_EVERY)


def json_key(key: Mapping[str, Any]) -> bytes:
    """The record key as Kafka Connect's JsonConverter writes it with ``schemas.enable=true``."""
    return json.dumps({"schema": _KEY_SCHEMA, "payload": dict(key)}, separators=(",", ":")).encode()


def purchase_invoice_records(n: int, seed: int = 1, *, tombstones: bool = False
                             ) -> tuple[list[tuple[bytes, bytes | None]], Expected]:
    """``n`` purchase-invoice change events as the Debezium PostgreSQL connector writes them with the JSON
    converter (schemas enabled, key and value), the same stream as bench/pipeline.py's for ``seed``; with
    ``tombstones`` a tombstone follows each delete, as Debezium's ``tombstones.on.delete`` does. Returns the
    records and the final state of the table they describe."""
    records: list[tuple[bytes, bytes | None]] = []
    live: dict[int, Decimal] = {}
    for key, env in _stream(n, seed):
        k = json_key(key)
        records.append((k, samples.encode_json(TABLE, env)))
        if env["op"] == "d":
            live.pop(key["id"], None)
            if tombstones:
                records.append((k, None))
        else:
            live[key["id"]] = env["after"]["gross_amount"]
    return records, Expected(events=len(records), rows=len(live), gross_total=sum(live.values(), Decimal(0)))


def create_topic(bootstrap: str, partitions: int = 3, prefix: str = "peers") -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": "3"})
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result(30)
    return name


def produce(bootstrap: str, topic: str, records: Sequence[tuple[bytes, bytes | None]]) -> None:
    """Publish ``records`` in order. The producer is idempotent: without it, a produce request retried
    because the new topic's leader was not known yet lands *after* the next batch (seen here: an invoice's
    update at offset 0, its create at offset 339), and every consumer then sees changes out of order —
    Debezium's own producer keeps per-key order, so the benchmark's must too."""
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": "5", "enable.idempotence": "true",
                  "log_level": "3"})
    p.list_topics(topic, timeout=30)
    for k, v in records:
        while True:
            try:
                p.produce(topic, key=k, value=v)
                break
            except BufferError:  # local queue full: let it drain
                p.poll(0.1)
        p.poll(0)
    if p.flush(120):
        raise RuntimeError(f"could not deliver every record to {topic}")


def topic_size(bootstrap: str, topic: str) -> int:
    """Records in ``topic`` (sum of the partitions' high watermarks: the topic is never compacted here)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "peers-size", "log_level": "3"})
    try:
        parts = c.list_topics(topic, timeout=30).topics[topic].partitions
        return sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in parts)
    finally:
        c.close()


# --------------------------------------------------------------------------- PostgreSQL helpers
def _with_db(dsn: str, dbname: str) -> str:
    return make_conninfo(dsn, dbname=dbname)


def create_database(dsn: str, name: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def drop_database(dsn: str, name: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def jdbc_url(dsn: str) -> tuple[str, str]:
    """A libpq DSN → (JDBC URL, user) for the same database."""
    info = conninfo_to_dict(dsn)
    host = str(info.get("host") or "127.0.0.1")
    port = str(info.get("port") or "5432")
    return f"jdbc:postgresql://{host}:{port}/{info.get('dbname') or 'postgres'}", str(info.get("user") or "postgres")


def _has_rows(conn: psycopg.Connection[Any], table: str) -> bool:
    try:
        row = conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(sql.Identifier(table))).fetchone()
    except psycopg.errors.UndefinedTable:
        conn.rollback()
        return False
    conn.rollback()
    return bool(row and row[0])


def _table_state(conn: psycopg.Connection[Any], table: str) -> tuple[int, Decimal] | None:
    try:
        row = conn.execute(sql.SQL("SELECT count(*), coalesce(sum(gross_amount), 0) FROM {}")
                           .format(sql.Identifier(table))).fetchone()
    except psycopg.errors.UndefinedTable:
        conn.rollback()
        return None
    conn.rollback()  # end the read transaction: the next poll sees newer commits
    assert row is not None
    return int(row[0]), Decimal(row[1])


# --------------------------------------------------------------------------- 1. the Debezium JDBC sink
def _committed(admin: AdminClient, group: str, topic: str, partitions: int) -> int:
    req = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in range(partitions)])
    try:
        res = admin.list_consumer_group_offsets([req], request_timeout=5)[group].result(5)
    except Exception:  # the group does not exist yet
        return 0
    return sum(tp.offset for tp in res.topic_partitions if tp.offset is not None and tp.offset > 0)


def _slope(samples_: Sequence[tuple[float, int]], total: int, lo: float = 0.1, hi: float = 0.9) -> float | None:
    """Events per second between the first samples at ``lo`` and at ``hi`` of ``total`` events."""
    a = next(((t, e) for t, e in samples_ if e >= lo * total), None)
    b = next(((t, e) for t, e in samples_ if e >= hi * total), None)
    if a is None or b is None or b[0] <= a[0]:
        return None
    return (b[1] - a[1]) / (b[0] - a[0])


def run_jdbc_sink(bootstrap: str, dsn: str, topic: str, expected_rows: int, *, workdir: Path, timeout_s: float,
                  expected_total: Decimal | None = None, table: str = "purchase_invoice", batch_size: int = 2000,
                  database: str | None = None, keep_database: bool = False, heap: str = "512m",
                  extra_config: Mapping[str, str] | None = None, progress: Callable[[str], None] | None = None,
                  progress_s: float = 5.0) -> dict[str, Any]:
    """Land ``topic`` in PostgreSQL with the Debezium JDBC sink connector and time it.

    The sink writes into a fresh database ``database`` (default ``peer_jdbc_<random>``) of the server ``dsn``
    points at (dropped afterwards unless ``keep_database``). Done when ``table`` holds ``expected_rows``
    rows (and, if given, ``sum(gross_amount) == expected_total``, which also waits for trailing updates).

    Returns ``events`` (records in the topic), ``rows``, ``seconds`` (worker start → last row),
    ``events_per_s`` (from start), ``start_s`` (worker start → connector and task RUNNING),
    ``first_row_s`` (worker start → first row visible), ``warm_events_per_s`` (committed-offset slope between
    10 % and 90 % of the events; ``None`` if the run was too short to sample), ``config`` (the connector's).
    The worker is stopped on every path out. ``progress`` is given a line every ``progress_s`` seconds.
    """
    events = topic_size(bootstrap, topic)
    partitions = _partitions(bootstrap, topic)
    db = database or f"peer_jdbc_{uuid.uuid4().hex[:8]}"
    create_database(dsn, db)
    target = _with_db(dsn, db)
    url, user = jdbc_url(target)
    name = f"peer-jdbc-{uuid.uuid4().hex[:6]}"
    config = jdbc_sink_config(name, topic, url, table, user=user, batch_size=batch_size, extra=extra_config)
    ensure_jdbc_sink_plugin()
    # * offsets committed every 250 ms only to sample progress: the sink writes (and commits to PostgreSQL)
    #   in put(), and its preCommit() just reports what put() already wrote, so this does not change its work;
    # * plugin discovery from the plugins' ServiceLoader manifests, as Kafka Connect recommends when every
    #   plugin has them (the JDBC sink's do): the reflective scan of the harness's hybrid_warn mode adds
    #   ~11 s of start-up on a 2-core host.
    connect = JdbcSinkConnect(workdir, bootstrap, [config], heap=heap,
                              worker_overrides={"offset.flush.interval.ms": "250",
                                                "plugin.discovery": "service_load"})
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": "3"})
    samples_: list[tuple[float, int]] = []  # (seconds since start, offsets committed)
    try:
        t0 = time.monotonic()
        connect.start(timeout=min(timeout_s, 180.0))
        start_s = time.monotonic() - t0
        if progress is not None:
            progress(f"  JDBC sink: connector and task running after {start_s:.1f} s")
        last_progress = time.monotonic()
        deadline = t0 + timeout_s
        first_row_s: float | None = None
        state: tuple[int, Decimal] | None = None
        last_status = time.monotonic()
        with psycopg.connect(target) as conn:
            last_full = 0.0
            while True:
                now = time.monotonic()
                committed = _committed(admin, f"connect-{name}", topic, partitions)
                samples_.append((now - t0, committed))
                # The table is read only when it matters, to take little CPU from the sink: whether the first
                # row is there, and the full (count, total) check near the end (or every 2 s regardless).
                if first_row_s is None and _has_rows(conn, table):
                    first_row_s = time.monotonic() - t0
                if first_row_s is not None and (committed >= 0.9 * events or now - last_full > 2.0):
                    last_full = now
                    state = _table_state(conn, table)
                    if state is not None and state[0] == expected_rows and (
                            expected_total is None or state[1] == expected_total):
                        done_s = time.monotonic() - t0
                        break
                if now > deadline:
                    raise TimeoutError(f"JDBC sink: {state} (rows, gross total) after {timeout_s:.0f}s, expected "
                                       f"{expected_rows} rows, total {expected_total}; worker log "
                                       f"{connect.log_path}")
                if now - last_status > 2.0:
                    _check_running(connect)
                    last_status = now
                if progress is not None and now - last_progress > progress_s:
                    progress(f"  JDBC sink: {committed:,}/{events:,} offsets committed after {now - t0:.0f} s")
                    last_progress = now
                time.sleep(0.1)
        warm = _slope(samples_, events)
        return {"events": events, "rows": state[0], "seconds": done_s, "events_per_s": events / done_s,
                "start_s": start_s, "first_row_s": first_row_s, "warm_events_per_s": warm, "config": config}
    finally:
        connect.stop()
        if not keep_database:
            drop_database(dsn, db)


def _partitions(bootstrap: str, topic: str) -> int:
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": "3"})
    return len(admin.list_topics(topic, timeout=30).topics[topic].partitions)


def _check_running(connect: JdbcSinkConnect) -> None:
    """Raise if the worker died or the sink task failed (instead of waiting for the timeout)."""
    if connect.proc is not None and connect.proc.poll() is not None:
        raise RuntimeError(f"Kafka Connect exited with {connect.proc.returncode}; log {connect.log_path}")
    try:
        st = connect.status()
    except httpx.HTTPError:
        return
    for s in st.values():
        for t in s.get("tasks", []):
            if t.get("state") == "FAILED":
                raise RuntimeError(f"JDBC sink task failed: {t.get('trace', '')[:3000]}")


# --------------------------------------------------------------------------- 2. the raw ceiling
def _raw_columns(value: bytes) -> list[tuple[str, str]]:
    """(column, PostgreSQL type) of the row image, from the JSON converter schema of one record."""
    schema = json.loads(value)["schema"]
    after = next(f for f in schema["fields"] if f["field"] == "after")
    types = {"int64": "bigint", "int32": "integer", "int16": "smallint", "boolean": "boolean",
             "float64": "double precision"}
    return [(f["field"], types.get(f["type"], "text")) for f in after["fields"]]


def run_raw_ceiling(bootstrap: str, dsn: str, topic: str, n: int, *, batch: int = 2000) -> dict[str, Any]:
    """Consume ``n`` records of ``topic`` and COPY their row images into one table: the ceiling.

    A plain consumer (partitions assigned from the beginning, no group), ``json.loads`` of each value,
    ``payload.after`` (``payload.before`` for deletes, so every event is one row; tombstones are skipped but
    counted), one ``COPY`` + one ``COMMIT`` per batch of up to ``batch`` records. Values are copied as the
    converter wrote them (decimals stay base64 text). Returns ``events``, ``seconds`` (first record → last
    commit), ``events_per_s``, ``start_s`` (consumer creation → first record), ``batches``."""
    table = f"raw_ceiling_{uuid.uuid4().hex[:8]}"
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"raw-{uuid.uuid4().hex[:6]}",
                  "enable.auto.commit": "false", "log_level": "3"})
    parts = c.list_topics(topic, timeout=30).topics[topic].partitions
    t0 = time.monotonic()
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
    done = batches = 0
    first: float | None = None
    cols: list[str] = []
    copy_sql: sql.Composed | None = None
    try:
        with psycopg.connect(dsn) as conn:
            while done < n:
                msgs = c.consume(batch, 0.1)
                if msgs and first is None:
                    first = time.monotonic()
                if msgs and len(msgs) < batch:
                    msgs += c.consume(batch - len(msgs), 0)
                rows: list[list[Any]] = []
                for m in msgs:
                    if m.error():
                        continue
                    done += 1
                    v = m.value()
                    if v is None:
                        continue
                    if copy_sql is None:
                        spec = _raw_columns(v)
                        cols = [name for name, _ in spec]
                        conn.execute(sql.SQL("CREATE TABLE {} (op text, {})").format(
                            sql.Identifier(table),
                            sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(c_), sql.SQL(t))
                                               for c_, t in spec)))
                        conn.commit()
                        copy_sql = sql.SQL("COPY {} (op, {}) FROM STDIN").format(
                            sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, cols)))
                    payload = json.loads(v)["payload"]
                    img = payload["after"] or payload["before"]
                    rows.append([payload["op"], *(img.get(k) for k in cols)])
                if not rows:
                    continue
                assert copy_sql is not None
                with conn.cursor() as cur, cur.copy(copy_sql) as cp:
                    for r in rows:
                        cp.write_row(r)
                conn.commit()
                batches += 1
            end = time.monotonic()
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))
            conn.commit()
    finally:
        c.close()
    start = first or end
    return {"events": done, "seconds": end - start, "events_per_s": done / (end - start), "start_s": start - t0,
            "batches": batches}


# --------------------------------------------------------------------------- kingdee-cdc on the same topic
def run_kingdee_cdc(bootstrap: str, dsn: str, topic: str, events: int, *, workdir: Path,
                    pg_pid: int | None = None, broker_pid: int | None = None) -> dict[str, Any]:
    """kingdee-cdc's pipeline over ``topic`` (``events`` records), in a process of its own and into a fresh
    journal database (``bench.pipeline.sustained``: shipped rules, batches of up to 2,000, no dead-letter
    topic), until idle for 2 s. A fresh journal matters: the same changes already journaled (by an earlier
    run on the same stream, JSON or Avro) are duplicates, a different and much cheaper path.

    Returns ``events``, ``seconds`` / ``events_per_s`` (from the start of the first batch to the end of the
    last), ``seconds_from_start`` / ``events_per_s_from_start`` (from constructing the pipeline: includes the
    journal migration and the group join), ``batch_ms_mean``, ``cpu_s``, ``stages``, ``peak_rss_mb``."""
    from bench import pipeline

    return pipeline.sustained(pipeline.Stack(bootstrap, dsn, pg_pid, broker_pid, workdir), topic, events)


# --------------------------------------------------------------------------- python -m bench.peers
def settle(dsn: str) -> None:
    """The same starting line for every measurement: the page cache's dirty pages (the ~100 MB the producer
    just wrote into Kafka, the previous consumer's tables) written back, and a PostgreSQL checkpoint done, so
    neither lands on whichever consumer happens to run first and competes with its commits' fsyncs."""
    os.sync()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CHECKPOINT")
    os.sync()


def _timed(label: str, dsn: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    settle(dsn)
    load = os.getloadavg()[0]
    print(f"peers: {label} (load average {load:.1f}) …", file=sys.stderr, flush=True)
    t = time.monotonic()
    out = fn()
    out["wall_s"] = time.monotonic() - t
    out["load_before"] = load
    return out


def measure(bootstrap: str, dsn: str, n: int, workdir: Path, *, seed: int = 1, jdbc: bool = True,
            pipeline_avro: bool = True, timeout_s: float = 900.0, reverse: bool = False,
            jdbc_extra: Mapping[str, str] | None = None) -> dict[str, Any]:
    """One side-by-side repetition on a fresh topic holding ``n`` JSON events (3 partitions): kingdee-cdc, the
    raw ceiling and the JDBC sink one after the other (``reverse``: in the opposite order), then kingdee-cdc
    on the same changes as Avro (its own topic, its own fresh journal)."""
    records, expected = purchase_invoice_records(n, seed)
    topic = create_topic(bootstrap)
    produce(bootstrap, topic, records)
    del records
    out: dict[str, Any] = {"topic": topic, "expected": expected}
    steps: list[tuple[str, str, Callable[[], dict[str, Any]]]] = [
        ("kingdee_cdc", "kingdee-cdc on the JSON topic",
         lambda: run_kingdee_cdc(bootstrap, dsn, topic, expected.events, workdir=workdir)),
        ("raw", "raw ceiling", lambda: run_raw_ceiling(bootstrap, dsn, topic, expected.events)),
    ]
    if jdbc:
        steps.append(("jdbc", "Debezium JDBC sink", lambda: run_jdbc_sink(
            bootstrap, dsn, topic, expected.rows, expected_total=expected.gross_total,
            workdir=workdir / f"connect-{topic}", timeout_s=timeout_s, extra_config=jdbc_extra)))
    for key, label, fn in reversed(steps) if reverse else steps:
        out[key] = _timed(label, dsn, fn)
    out["order"] = [key for key, _, _ in (reversed(steps) if reverse else steps)]
    if pipeline_avro:
        from bench import pipeline

        avro_topic = create_topic(bootstrap, prefix="peers-avro")
        produce(bootstrap, avro_topic, pipeline.avro_records(n, seed))
        out["pipeline_avro"] = _timed("kingdee-cdc on the same changes as Avro (its own topic)", dsn,
                                      lambda: run_kingdee_cdc(bootstrap, dsn, avro_topic, n, workdir=workdir))
    return out


def markdown(r: Mapping[str, Any]) -> str:
    raw = r["raw"]["events_per_s"]
    k = r["kingdee_cdc"]
    lines = ["| consumer (same topic, same PostgreSQL) | events/s | vs raw ceiling | notes |", "|---|---:|---:|---|",
             f"| raw ceiling: consume + json.loads + COPY + commit per 2,000 | {raw:,.0f} | 1.00× | "
             f"{r['raw']['events']:,} events in {r['raw']['seconds']:.1f} s |",
             f"| kingdee-cdc pipeline (JSON topic) | {k['events_per_s']:,.0f} | {k['events_per_s'] / raw:.2f}× | "
             f"{k['seconds']:.1f} s, mean batch {k['batch_ms_mean']:.0f} ms; from start "
             f"{k['events_per_s_from_start']:,.0f}/s |"]
    if "jdbc" in r:
        j = r["jdbc"]
        warm = j["warm_events_per_s"]
        lines.append(f"| Debezium JDBC sink, warm (10 %→90 % of offsets) | "
                     f"{warm:,.0f} | {warm / raw:.2f}× | |" if warm else "| Debezium JDBC sink, warm | — | — | "
                     "run too short to sample |")
        lines.append(f"| Debezium JDBC sink, from worker start to last row | {j['events_per_s']:,.0f} | "
                     f"{j['events_per_s'] / raw:.2f}× | {j['seconds']:.1f} s (task running after "
                     f"{j['start_s']:.1f} s, first row {j['first_row_s'] or 0:.1f} s), {j['rows']:,} rows |")
        if warm:
            lines.append(f"| kingdee-cdc vs JDBC sink (warm) | | {k['events_per_s'] / warm:.2f}× | |")
    if "pipeline_avro" in r:
        a = r["pipeline_avro"]
        lines.append(f"| kingdee-cdc pipeline (Avro, own topic, same changes) | {a['events_per_s']:,.0f} | "
                     f"{a['events_per_s'] / raw:.2f}× | {a['seconds']:.1f} s |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__.split("\n\n")[0] if __doc__
                                 else None)
    ap.add_argument("--events", type=int, default=30_000, help="change events per repetition (default 30,000)")
    ap.add_argument("--repeat", type=int, default=2, help="repetitions, each on a fresh topic (default 2)")
    ap.add_argument("--no-jdbc", action="store_true", help="skip the Debezium JDBC sink")
    ap.add_argument("--no-avro", action="store_true", help="skip kingdee-cdc on the Avro topic")
    ap.add_argument("--reduction-buffer", action="store_true",
                    help="JDBC sink with use.reduction.buffer=true (not the default)")
    ap.add_argument("--timeout", type=float, default=900.0, help="JDBC sink timeout per run, seconds")
    args = ap.parse_args(argv)

    from harness.devstack import EmbeddedPostgres, KafkaBroker

    if not args.no_jdbc:
        ensure_jdbc_sink_plugin()
    extra = {"use.reduction.buffer": "true"} if args.reduction_buffer else None
    t_all = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="kdcdc-peers-") as d:
        work = Path(d)
        with KafkaBroker(work / "kafka") as k, EmbeddedPostgres(work / "pg", durable=True) as pg:
            for i in range(args.repeat):
                r = measure(k.bootstrap, pg.dsn(), args.events, work, jdbc=not args.no_jdbc,
                            pipeline_avro=not args.no_avro, timeout_s=args.timeout, reverse=i % 2 == 1,
                            jdbc_extra=extra)
                e: Expected = r["expected"]
                walls = ", ".join(f"{name} {r[name]['wall_s']:.0f} s (load {r[name]['load_before']:.1f})"
                                  for name in ("kingdee_cdc", "raw", "jdbc", "pipeline_avro") if name in r)
                print(f"\n### run {i + 1}/{args.repeat}: {e.events:,} events → {e.rows:,} rows "
                      f"(topic {r['topic']}, 3 partitions; order {', '.join(r['order'])}; wall: {walls})\n",
                      flush=True)
                print(markdown(r), flush=True)
    print(f"\npeers: done in {time.monotonic() - t_all:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
