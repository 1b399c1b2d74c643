"""End to end on a real broker and a real (durable) PostgreSQL: kingdee-cdc side by side with its peers.

One Kafka broker and one PostgreSQL (fsync on) for the whole section; one topic of purchase-invoice change
events (JSON converter with schemas, as Debezium writes them: creates, an update after every 5th, a delete
after every 17th — ``bench.peers.purchase_invoice_records``) on 3 partitions, consumed by:

* **kingdee-cdc** (``bench.worker``, a process of its own, a fresh journal database per run): decode, map,
  check, journal exactly once, batches of up to 2,000. Its rate is taken from the start of the first batch
  to the end of the last; the process's CPU time and PostgreSQL's (every process of the server) over the
  same span; its peak RSS;
* **the raw ceiling** (``bench.peers.run_raw_ceiling``): consume + ``json.loads`` + COPY of the row image +
  commit per 2,000, nothing else;
* **the naive design** (``bench.pipeline.naive``): per event decode, map, INSERT the vouchers, their entries
  and the offset, COMMIT (3,000 events);
* **the Debezium JDBC sink** (``bench.peers.run_jdbc_sink``): Kafka Connect with the official plugin, upsert by
  key, deletes enabled, one task, timed from the worker's start to the last row.

They run in ``rounds`` interleaved rounds (the second in reverse order) and each rate is the best of its
rounds, so a noisy neighbour hurts one round rather than one side of a ratio. Then, once each: kingdee-cdc
on the same stream as Avro (its own topic), and the latency run — a new topic fed at a steady 50 % of the
best sustained rate (5 s of warm-up, then 20 s measured), per record journal commit time minus Kafka record
timestamp.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import Consumer, Producer, TopicPartition
from psycopg.conninfo import make_conninfo

from bench import peers, worker
from harness import samples
from harness.devstack import REPO_ROOT, EmbeddedPostgres, KafkaBroker
from connector.events import ChangeEvent, Decoder, FixedSchemas
from connector.ledger import voucher_to_json
from connector.mapping import InMemoryLedger, Mapper, load_rules

RULES = REPO_ROOT / "rules"
SCHEMA_ID = 1  # FixedSchemas: one sample table per topic keeps the benchmark registry-free across processes
PARTITIONS = 3
Log = Callable[[str], None]


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass(frozen=True, slots=True)
class Stack:
    bootstrap: str
    dsn: str
    pg_pid: int | None
    broker_pid: int | None
    workdir: Path


# --------------------------------------------------------------------------- events
def avro_records(n: int, seed: int) -> list[tuple[bytes, bytes | None]]:
    """The stream of ``peers.purchase_invoice_records(n, seed)`` (same changes), Avro wire format."""
    gen = samples.SampleGenerator(seed=seed)
    return [(samples.json_key(k), samples.encode_avro(samples.PURCHASING, e, SCHEMA_ID))
            for k, e in samples.change_stream(gen, samples.PURCHASING, n, update_every=peers.UPDATE_EVERY,
                                              delete_every=peers.DELETE_EVERY)]


def produce_at(bootstrap: str, topic: str, records: Sequence[tuple[bytes, bytes | None]], rate: float) -> float:
    """Publish ``records`` at a steady ``rate`` per second (idempotent producer, as ``peers.produce``);
    returns the rate achieved."""
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": "5", "enable.idempotence": "true",
                  "log_level": "3"})
    p.list_topics(topic, timeout=30)  # connect and learn the leaders first: not part of any measured latency
    start = time.monotonic()
    for i, (k, v) in enumerate(records):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        while True:
            try:
                p.produce(topic, key=k, value=v)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    took = time.monotonic() - start
    if p.flush(120):
        raise RuntimeError(f"could not deliver every record to {topic}")
    return len(records) / took if took > 0 else 0.0


# --------------------------------------------------------------------------- kingdee-cdc, in its own process
def _fresh_db(stack: Stack, prefix: str) -> tuple[str, str]:
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    peers.create_database(stack.dsn, name)
    return name, make_conninfo(stack.dsn, dbname=name)


def run_worker(spec: dict[str, Any], *, on_ready: Callable[[], None] | None = None,
               profile: Path | None = None, profile_args: Sequence[str] = ()) -> dict[str, Any]:
    """Run ``bench.worker`` with ``spec`` and return its result (``profile``: under py-spy, raw stacks there)."""
    cmd = [sys.executable, "-m", "bench.worker", json.dumps(spec)]
    if profile is not None:
        spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
        if spy is None:
            raise RuntimeError("py-spy is not installed: .venv/bin/python -m pip install py-spy")
        cmd = [spy, "record", "--format", "raw", "--output", str(profile), *profile_args, "--", *cmd]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    result: dict[str, Any] | None = None
    for line in proc.stdout:
        if line.startswith(worker.READY) and on_ready is not None:
            on_ready()
        elif line.startswith(worker.RESULT):
            result = json.loads(line[len(worker.RESULT):])
    if proc.wait() != 0 or result is None:
        raise RuntimeError(f"bench.worker failed (exit {proc.returncode}); spec {spec}")
    return result


def wal_position(dsn: str) -> tuple[int, int]:
    """PostgreSQL's WAL insert position (bytes) and full-page images written so far (``pg_stat_wal``)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn, wal_fpi FROM pg_stat_wal").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def journal_tables(dsn: str) -> list[dict[str, Any]]:
    """What the journal holds after a run, per table: rows written, heap and index bytes, index count."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_force_next_flush()")
        rows = conn.execute(
            "SELECT s.schemaname || '.' || s.relname, s.n_tup_ins, pg_table_size(s.relid), pg_indexes_size(s.relid), "
            "(SELECT count(*) FROM pg_index i WHERE i.indrelid = s.relid) FROM pg_stat_user_tables s "
            "WHERE s.n_tup_ins > 0 ORDER BY pg_total_relation_size(s.relid) DESC").fetchall()
    return [{"table": r[0], "rows": int(r[1]), "heap_bytes": int(r[2]), "index_bytes": int(r[3]), "indexes": int(r[4])}
            for r in rows]


def sustained(stack: Stack, topic: str, events: int, *, label: str = "kingdee-cdc",
              profile: Path | None = None, profile_args: Sequence[str] = ()) -> dict[str, Any]:
    """kingdee-cdc over ``topic`` (all ``events`` already in it) into a fresh journal, until idle for 2 s; with
    the WAL PostgreSQL wrote meanwhile (``wal_bytes``, ``wal_fpi``: the journal's migration included)."""
    db, dsn = _fresh_db(stack, "bench_journal")
    try:
        spec = {"mode": "sustained", "bootstrap": stack.bootstrap, "dsn": dsn, "topic": topic,
                "partitions": PARTITIONS, "pg_pid": stack.pg_pid, "broker_pid": stack.broker_pid,
                "expect": events, "idle_s": 2.0, "progress_s": 5.0, "label": label}
        wal0 = wal_position(stack.dsn)
        out = run_worker(spec, profile=profile, profile_args=profile_args)
        wal1 = wal_position(stack.dsn)
        out |= {"wal_bytes": wal1[0] - wal0[0], "wal_fpi": wal1[1] - wal0[1], "tables": journal_tables(dsn)}
    finally:
        peers.drop_database(stack.dsn, db)
    if out["events"] != events:
        raise RuntimeError(f"{label}: journaled {out['events']} of {events} events")
    if out["outcomes"]["duplicates"]:
        raise RuntimeError(f"{label}: {out['outcomes']['duplicates']} duplicates in a fresh journal")
    return out


def latency(stack: Stack, rate: float, seconds: float, warmup_s: float = 5.0, *, trace: bool = False
            ) -> dict[str, Any]:
    """kingdee-cdc waiting on a new topic that is then fed at a steady ``rate`` for ``warmup_s`` + ``seconds``;
    the percentiles are those of the records produced after the warm-up (the start-up's are reported apart:
    the first batches of a fresh process and a fresh producer are slow — cold caches, the producer's id)."""
    n = max(1000, int(rate * (warmup_s + seconds)))
    records, _ = peers.purchase_invoice_records(n, seed=2)
    topic = peers.create_topic(stack.bootstrap, PARTITIONS, prefix="bench-latency")
    db, dsn = _fresh_db(stack, "bench_latency")
    achieved: list[float] = []

    def feed() -> None:
        time.sleep(1.0)  # the first fetch requests are in flight
        achieved.append(produce_at(stack.bootstrap, topic, records, rate))

    try:
        spec = {"mode": "latency", "bootstrap": stack.bootstrap, "dsn": dsn, "topic": topic,
                "partitions": PARTITIONS, "pg_pid": stack.pg_pid, "broker_pid": stack.broker_pid,
                "expect": len(records), "warmup_s": warmup_s, "timeout_s": (warmup_s + seconds) * 4 + 120,
                "progress_s": 5.0, "label": "latency", "trace": trace}
        out = run_worker(spec, on_ready=feed)
    finally:
        peers.drop_database(stack.dsn, db)
    out |= {"rate": rate, "produced_rate": achieved[0] if achieved else None, "produced": len(records)}
    # Kept up: what it journaled per second over the run is (nearly) what was produced. If not, the host could
    # not serve this rate during this run, and the percentiles measure a growing backlog, not latency.
    out["kept_up"] = out["events_per_s"] >= 0.95 * rate
    return out


# --------------------------------------------------------------------------- the naive design
def naive(stack: Stack, topic: str, n: int) -> dict[str, Any]:
    """Per event: decode, map (row state kept in memory, as the pipeline's batches do), INSERT the vouchers,
    their entries and the offset, COMMIT. The first ``n`` records of ``topic``, into a fresh database."""
    decoder = Decoder(FixedSchemas(samples.value_schema(samples.PURCHASING)))
    mapper = Mapper(load_rules(RULES))
    state = InMemoryLedger()
    db, dsn = _fresh_db(stack, "bench_naive")
    c = Consumer({"bootstrap.servers": stack.bootstrap, "group.id": f"naive-{uuid.uuid4().hex[:6]}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": "false", "log_level": "3"})
    c.subscribe([topic])
    done = vouchers = 0
    start: float | None = None
    try:
        with psycopg.connect(dsn) as conn:
            conn.execute("CREATE TABLE naive_vouchers (key text PRIMARY KEY, payload bytea)")
            conn.execute("CREATE TABLE naive_entries (key text, seq int, account text, amount numeric)")
            conn.execute("CREATE TABLE naive_offsets (topic text, p int, o bigint, PRIMARY KEY (topic, p))")
            conn.commit()
            while done < n:
                m = c.poll(1.0)
                if m is None or m.error():
                    continue
                start = start or time.monotonic()
                ev = decoder.decode_message(m)
                if isinstance(ev, ChangeEvent):
                    result = mapper.map(ev, state)
                    state.apply(result)
                    for v in result.vouchers:
                        vouchers += 1
                        conn.execute("INSERT INTO naive_vouchers VALUES (%s, %s) ON CONFLICT DO NOTHING",
                                     (v.key, voucher_to_json(v)))
                        for i, e in enumerate(v.entries):
                            conn.execute("INSERT INTO naive_entries VALUES (%s, %s, %s, %s)",
                                         (v.key, i, e.account, e.amount))
                conn.execute("INSERT INTO naive_offsets VALUES (%s, %s, %s) ON CONFLICT (topic, p) "
                             "DO UPDATE SET o = EXCLUDED.o", (m.topic(), m.partition(), (m.offset() or 0) + 1))
                conn.commit()
                done += 1
    finally:
        c.close()
        peers.drop_database(stack.dsn, db)
    span = time.monotonic() - (start or time.monotonic())
    return {"events": done, "vouchers": vouchers, "seconds": span, "events_per_s": done / span}


# --------------------------------------------------------------------------- the section
def _step(log: Log, label: str, stack: Stack, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    peers.settle(stack.dsn)
    load = os.getloadavg()[0]
    log(f"bench: pipeline: {label} (load average {load:.2f}) …")
    t = time.monotonic()
    wal0 = wal_position(stack.dsn)
    out = fn()
    out["wall_s"] = time.monotonic() - t
    out["step_wal_bytes"] = wal_position(stack.dsn)[0] - wal0[0]  # (the whole step: creating databases too)
    out["load_before"] = load
    out["load_after"] = os.getloadavg()[0]
    if "p99_ms" in out:
        log(f"bench: pipeline: {label}: p50 {out['p50_ms'] or 0:,.0f} ms, p99 {out['p99_ms'] or 0:,.0f} ms")
    else:
        log(f"bench: pipeline: {label}: {out['events_per_s']:,.0f} events/s")
    return out


def _best(runs: Sequence[dict[str, Any]], key: str = "events_per_s") -> dict[str, Any]:
    return max(runs, key=lambda r: r[key] or 0.0)


def run(*, n: int = 30_000, naive_n: int = 3_000, rounds: int = 2, latency_s: float = 20.0, jdbc: bool = True,
        log: Log = _say) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="kdcdc-bench-") as d:
        work = Path(d)
        with KafkaBroker(work / "kafka") as k, EmbeddedPostgres(work / "pg", durable=True) as pg:
            stack = Stack(k.bootstrap, pg.dsn(), pg.proc.pid if pg.proc else None, k.proc.pid if k.proc else None,
                          work)
            return _run(stack, n=n, naive_n=naive_n, rounds=rounds, latency_s=latency_s, jdbc=jdbc, log=log)


def _run(stack: Stack, *, n: int, naive_n: int, rounds: int, latency_s: float, jdbc: bool, log: Log
         ) -> dict[str, Any]:
    log(f"bench: pipeline: {n:,} purchase-invoice change events (JSON with schemas) → one topic …")
    records, expected = peers.purchase_invoice_records(n, seed=1)
    topic = peers.create_topic(stack.bootstrap, PARTITIONS, prefix="bench-json")
    peers.produce(stack.bootstrap, topic, records)
    del records
    if peers.topic_size(stack.bootstrap, topic) != expected.events:
        raise RuntimeError(f"{topic} does not hold the {expected.events} records produced")
    steps: list[tuple[str, str, Callable[[], dict[str, Any]]]] = [
        ("kingdee_cdc", "kingdee-cdc sustained (JSON topic)", lambda: sustained(stack, topic, expected.events)),
        ("raw", "raw ceiling (consume + COPY + commit)",
         lambda: peers.run_raw_ceiling(stack.bootstrap, stack.dsn, topic, expected.events)),
        ("naive", f"naive per-event baseline ({naive_n:,} events)", lambda: naive(stack, topic, naive_n)),
    ]
    if jdbc:
        steps.append(("jdbc", "Debezium JDBC sink (Kafka Connect, from worker start)", lambda: peers.run_jdbc_sink(
            stack.bootstrap, stack.dsn, topic, expected.rows, expected_total=expected.gross_total,
            workdir=stack.workdir / f"connect-{uuid.uuid4().hex[:6]}", timeout_s=900.0, progress=log)))
    by: dict[str, list[dict[str, Any]]] = {key: [] for key, _, _ in steps}
    for r in range(rounds):
        order = steps if r % 2 == 0 else list(reversed(steps))
        log(f"bench: pipeline: round {r + 1}/{rounds}: {', '.join(key for key, _, _ in order)}")
        for key, label, fn in order:
            out = _step(log, f"round {r + 1}: {label}", stack, fn)
            out["round"] = r + 1
            by[key].append(out)
    res: dict[str, Any] = {"events": expected.events, "rows": expected.rows, "topic": topic, "rounds": rounds,
                           "runs": by, "best": {key: _best(runs) for key, runs in by.items()}}
    best_rate = res["best"]["kingdee_cdc"]["events_per_s"]

    log(f"bench: pipeline: the same {n:,} changes as Avro (own topic) …")
    avro = avro_records(n, seed=1)
    avro_topic = peers.create_topic(stack.bootstrap, PARTITIONS, prefix="bench-avro")
    peers.produce(stack.bootstrap, avro_topic, avro)
    del avro
    res["avro"] = _step(log, "kingdee-cdc sustained (Avro topic)", stack,
                        lambda: sustained(stack, avro_topic, n, label="kingdee-cdc (Avro)"))

    rate = 0.5 * best_rate
    res["latency"] = _step(log, f"latency at a steady {rate:,.0f} events/s (50 % of {best_rate:,.0f}) for "
                           f"{latency_s:.0f} s", stack, lambda: latency(stack, rate, latency_s))
    res["peak_rss_mb"] = max(x["peak_rss_mb"] for x in [*by["kingdee_cdc"], res["avro"], res["latency"]])
    return res


# --------------------------------------------------------------------------- report
def cpu_per_event(run_: dict[str, Any]) -> dict[str, float]:
    """µs of CPU per event over the measured span: pipeline process, PostgreSQL, both; the broker apart."""
    ev = run_["events"]
    cpu = run_["cpu_s"]
    out = {k: 1e6 * cpu[k] / ev for k in ("pipeline", "postgres", "broker")}
    out["sum"] = out["pipeline"] + out["postgres"]
    return out


def _rate(x: float | None) -> str:
    return f"{x:,.0f}" if x else "—"


def markdown(r: dict[str, Any]) -> str:
    best, runs = r["best"], r["runs"]
    k = best["kingdee_cdc"]
    rounds = r["rounds"]
    head = "| consumer (same topic, same PostgreSQL) | " + " | ".join(f"round {i + 1}" for i in range(rounds)) + \
        " | best, events/s | kingdee-cdc ÷ it |"
    lines = [head, "|---|" + "---:|" * (rounds + 2)]
    names = {"kingdee_cdc": "kingdee-cdc pipeline (first batch → last commit)",
             "raw": "raw ceiling: consume + json.loads + COPY + commit per 2,000",
             "naive": "naive design: per event decode, map, INSERT, COMMIT",
             "jdbc": "Debezium JDBC sink (worker start → last row)"}
    for key, name in names.items():
        if key not in runs:
            continue
        cells = " | ".join(_rate(x["events_per_s"]) for x in runs[key])
        ratio = "" if key == "kingdee_cdc" else f"{k['events_per_s'] / best[key]['events_per_s']:.2f}×"
        lines.append(f"| {name} | {cells} | {best[key]['events_per_s']:,.0f} | {ratio} |")
    if "jdbc" in runs:
        warm = [x["warm_events_per_s"] for x in runs["jdbc"]]
        bw = max((w for w in warm if w), default=None)
        lines.append(f"| (Debezium JDBC sink, warm: committed offsets 10 %→90 %) | "
                     + " | ".join(_rate(w) for w in warm) + f" | {_rate(bw)} | "
                     + (f"{k['events_per_s'] / bw:.2f}× |" if bw else "— |"))
        lines.append("| (kingdee-cdc from its process's pipeline construction: migration check, group join) | "
                     + " | ".join(_rate(x["events_per_s_from_start"]) for x in runs["kingdee_cdc"])
                     + f" | {max(x['events_per_s_from_start'] for x in runs['kingdee_cdc']):,.0f} | |")
    a = r["avro"]
    lines.append(f"| (kingdee-cdc on the same changes as Avro, its own topic; once) | {a['events_per_s']:,.0f} |"
                 + " |" * (rounds - 1) + f" {a['events_per_s']:,.0f} | |")

    jd = best.get("jdbc")
    notes = [
        "",
        f"{r['events']:,} change events ({r['rows']:,} rows at the end) on 3 partitions. kingdee-cdc best run: "
        f"{k['seconds']:.1f} s, {k['batches']} batches (mean {k['batch_ms_mean']:.0f} ms), outcomes "
        + ", ".join(f"{kk} {vv:,}" for kk, vv in k["outcomes"].items() if vv) + "."
        + (f" JDBC sink best run: {jd['seconds']:.1f} s from worker start (task running after "
           f"{jd['start_s']:.1f} s, first row {jd['first_row_s'] or 0:.1f} s)." if jd else ""),
        "",
        "Where the best kingdee-cdc run spent its time (wall and main-thread CPU per call of the batch loop, "
        "summed):",
        "",
        "| step | wall s | CPU s | share of the span |", "|---|---:|---:|---:|",
    ]
    lines += notes
    for name, s in k["stages"].items():
        lines.append(f"| {name} | {s['wall_s']:.2f} | {s['cpu_s']:.2f} | {s['wall_s'] / k['seconds']:.0%} |")
    rest = k["seconds"] - sum(s["wall_s"] for s in k["stages"].values())
    lines.append(f"| the rest (Kafka fetch, batch bookkeeping, commit to Kafka) | {rest:.2f} | | "
                 f"{rest / k['seconds']:.0%} |")

    lines += ["", "CPU per event over the measured span, and the WAL PostgreSQL wrote (each kingdee-cdc run; the "
              "journal's migration included in the WAL):", "",
              "| run | load average before | events/s | pipeline process µs | PostgreSQL µs | sum µs | broker µs (apart) "
              "| WAL per event | full-page images |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for x in [*runs["kingdee_cdc"], a]:
        c = cpu_per_event(x)
        name = f"JSON, round {x['round']}" if "round" in x else "Avro"
        lines.append(f"| {name} | {x['load_before']:.2f} | {x['events_per_s']:,.0f} | {c['pipeline']:.0f} | "
                     f"{c['postgres']:.0f} | {c['sum']:.0f} | {c['broker']:.0f} | "
                     f"{x['wal_bytes'] / x['events']:,.0f} bytes | {x['wal_fpi']:,} |")
    lines += ["", "What the best run left in its journal, per event (rows written; table and index bytes):", "",
              "| table | rows per event | table bytes per event | index bytes per event (indexes) |",
              "|---|---:|---:|---:|"]
    ev = k["events"]
    for t in k.get("tables", []):
        lines.append(f"| {t['table']} | {t['rows'] / ev:.2f} | {t['heap_bytes'] / ev:,.0f} | "
                     f"{t['index_bytes'] / ev:,.0f} ({t['indexes']}) |")
    tot = k.get("tables", [])
    lines.append(f"| all | {sum(t['rows'] for t in tot) / ev:.2f} | {sum(t['heap_bytes'] for t in tot) / ev:,.0f} | "
                 f"{sum(t['index_bytes'] for t in tot) / ev:,.0f} ({sum(t['indexes'] for t in tot)}) |")
    raw_wal = [x["step_wal_bytes"] / x["events"] for x in runs["raw"]]
    lines += ["", f"For scale: the raw ceiling wrote {min(raw_wal):,.0f} bytes of WAL per event (its one row)."]

    lat = r["latency"]
    w = lat["warmup"]
    worst = max(lat["timeline"], key=lambda row: row[3]) if lat["timeline"] else None
    lines += ["", f"Latency: a new topic fed at a steady {lat['rate']:,.0f} events/s (50 % of the best sustained rate; "
              f"achieved {lat['produced_rate'] or 0:,.0f}/s) for {lat['warmup_s']:.0f} s of warm-up and then "
              f"{lat['samples']:,} more events; Kafka record timestamp → journal commit of those: "
              f"**p50 {lat['p50_ms']:,.0f} ms, p99 {lat['p99_ms']:,.0f} ms**, max {lat['max_ms']:,.0f} ms "
              f"({lat['batches']} batches in all, mean {lat['batch_ms_mean']:.0f} ms). The warm-up (a fresh process's "
              f"first batches, the producer's start) is reported apart: p50 {w['p50_ms'] or 0:,.0f} ms, p99 "
              f"{w['p99_ms'] or 0:,.0f} ms, max {w['max_ms'] or 0:,.0f} ms."
              + (f" Worst second of production: second {worst[0]} (max {worst[3]:,.0f} ms)." if worst else "")
              + f" Load average (1 min) {lat['load_before']:.2f} before, {lat['load_after']:.2f} after."
              + ("" if lat["kept_up"] else f" **The pipeline did not keep up** (it journaled "
                 f"{lat['events_per_s']:,.0f} events/s): on this host at this time the rate was beyond its "
                 "capacity, so these percentiles measure a growing backlog rather than latency.")
              + f" Peak RSS of the pipeline process (max over its runs): {r['peak_rss_mb']:.0f} MB."]
    return "\n".join(lines)
