"""Throughput against partitions and instances (issue #15, "Scale beyond one machine").

One Kafka broker and one PostgreSQL (fsync on) for the whole run, the purchase-invoice stream of
``bench/pipeline.py`` (``bench.peers.purchase_invoice_records``: JSON with schemas, creates, an update after every
5th, a delete after every 17th) in three topics of 1, 3 and 6 partitions (the producer keys by invoice id, so each
invoice's changes stay in order in one partition). Four configurations, each into a fresh journal database:

* one instance on 1, 3 and 6 partitions;
* two instances on 6 partitions: the same consumer group and the same journal, as two replicas of the service
  run. Kafka splits the partitions between them (cooperative-sticky); each is exactly-once for the partitions it
  holds (offsets in the journal, in the batch's transaction).

Each instance is the pipeline of ``bench.worker`` (shipped rules, batches of up to 2,000, no dead-letter topic) in a
process of its own, started here with the consumer group the configuration names. The instances of a configuration
join the group with the partitions they are given paused, and are released together once the group has settled
(every partition assigned, each instance some): the two-instance rate is that of two instances sharing the work,
not of one instance alone while the group rebalances (with the cooperative protocol that takes two rounds, seconds).
They stop once the journal holds every record of the topic. The rate is taken from the start of the first batch of any instance to the end of the last batch of any;
the CPU per event is the instances' processes' CPU (summed) and PostgreSQL's (every process of the server) over
that span, divided by the events. After each run the journal is checked: one outcome per record in every partition
(offsets 0 … end − 1, each once), the journal's offsets at the log end, and exactly the vouchers that mapping the
stream in memory gives — nothing lost or doubled.

The configurations run in ``rounds`` interleaved rounds (the second in reverse order); each is reported as the
best of its rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final
from unittest import mock

import psycopg
from confluent_kafka import Consumer, TopicPartition

from bench import peers, pipeline, worker
from harness import samples
from harness.devstack import REPO_ROOT, EmbeddedPostgres, KafkaBroker

COMMAND: Final = "make bench-scale"
DOCS: Final = REPO_ROOT / "docs"
Log = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Config:
    key: str
    partitions: int
    instances: int

    @property
    def label(self) -> str:
        return f"{self.instances} instance{'s' if self.instances > 1 else ''} × {self.partitions} partition" \
               f"{'s' if self.partitions > 1 else ''}"


CONFIGS: Final = (Config("1i_1p", 1, 1), Config("1i_3p", 3, 1), Config("1i_6p", 6, 1), Config("2i_6p", 6, 2))


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- one instance (its own process)
class _HeldConsumer:
    """The pipeline's consumer, with the partitions it is assigned paused until the file ``go`` exists (then
    resumed, on the pipeline's own thread, in its next ``consume``): the instances of a configuration join the
    group, the group settles, and only then does any of them read a record."""

    def __init__(self, consumer: Any, go: Path) -> None:
        self._c = consumer
        self._go = go
        self.held: list[Any] = []
        self.released = False

    def hold(self, consumer: Any, partitions: list[Any]) -> None:
        if not self.released and partitions:
            consumer.pause(partitions)
            self.held += partitions

    def consume(self, *args: Any, **kwargs: Any) -> Any:
        if not self.released and self._go.exists():
            self.released = True
            if self.held:
                self._c.resume(self.held)
        return self._c.consume(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._c, name)


def instance(spec: Mapping[str, Any]) -> dict[str, Any]:
    """``bench.worker``'s sustained run with the consumer group ``spec["group"]`` (the worker picks a fresh one:
    one instance per group), held at the start: ``BENCH-READY`` once the pipeline is built, then it joins the group
    with its partitions paused until the file ``spec["go"]`` exists (the parent sees the group settled); it stops
    once the file ``spec["done"]`` exists (the parent sees every record of the topic journaled). Not
    ``max_idle_s``: with the cooperative protocol a member's first assignment may be empty while another still
    holds the partitions it is about to get, and an idle stop would end it before it got any. Returns the worker's
    result plus the span's ends on the system's monotonic clock (``started_at``, ``ended_at``) and the CPU counters
    at those ends (``cpu_at``), so that the parent can join the instances of a configuration into one span."""
    import connector.journal

    base = connector.journal.Journal
    group = str(spec["group"])

    class GroupJournal(base):  # type: ignore[misc, valid-type]
        def __init__(self, dsn: str, **kwargs: Any) -> None:
            super().__init__(dsn, **{**kwargs, "group": group})

    clock = worker.Clock(spec.get("pg_pid"), spec.get("broker_pid"))
    with mock.patch.object(connector.journal, "Journal", GroupJournal):
        pipe = worker._build(spec, clock)
    held = _HeldConsumer(pipe.consumer, Path(spec["go"]))
    pipe.consumer = held
    assign = pipe._on_assign

    def on_assign(consumer: Any, partitions: list[Any]) -> None:
        assign(consumer, partitions)
        held.hold(consumer, partitions)
    pipe._on_assign = on_assign  # (an instance attribute: run() subscribes with it)
    print(worker.READY, flush=True)
    stop = threading.Event()
    if spec.get("progress_s"):
        threading.Thread(target=worker._progress, args=(clock, spec["progress_s"], spec.get("label", "instance"),
                                                        stop, None), daemon=True).start()
    done = Path(spec["done"])

    def until_done() -> None:
        while not stop.wait(0.05):
            if done.exists():
                pipe.stop()
                return
    threading.Thread(target=until_done, daemon=True).start()
    try:
        pipe.run()
    finally:
        stop.set()
    out = clock.result()
    out |= {"started_at": clock.started, "ended_at": clock.ended, "cpu_at": clock.cpu,
            "outcomes": worker._outcomes(pipe), "owner": pipe.journal.owner, "peak_rss_mb": worker.peak_rss_mb()}
    return out


def group_settled(bootstrap: str, group: str, members: int, partitions: int) -> bool:
    """The group is STABLE with ``members`` members, each assigned some of the ``partitions``, none twice, all of
    them assigned."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": "3"})
    try:
        desc = admin.describe_consumer_groups([group], request_timeout=5)[group].result(10)
    except Exception:  # not there yet
        return False
    shares = [[tp.partition for tp in m.assignment.topic_partitions] for m in desc.members]
    every = [p for share in shares for p in share]
    return desc.state.name == "STABLE" and len(shares) == members and all(shares) and \
        sorted(every) == list(range(partitions))


def journaled(dsn: str, group: str) -> int:
    """Records the journal has taken for ``group`` (the sum of its next offsets; 0 before the migration)."""
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute("SELECT coalesce(sum(next_offset), 0) FROM kdcdc.offsets WHERE consumer_group = %s",
                               (group,)).fetchone()
    except psycopg.errors.UndefinedTable:
        return 0
    return int(row[0]) if row else 0


def _launch(specs: Sequence[dict[str, Any]], go: Path, done: Path, settled: Callable[[], bool],
            finished: Callable[[], bool], timeout_s: float = 300.0) -> tuple[list[dict[str, Any]], float]:
    """Start one ``python -m bench.scale --instance`` process per spec; once all are built, wait for
    ``settled()`` (the group formed, every partition assigned, at most 60 s) and release them together; tell them
    to stop once ``finished()`` (checked every 0.25 s; at the latest after ``timeout_s``). Returns their results
    and the seconds the group took to settle (``bench.pipeline.run_worker`` runs ``bench.worker``, one process at
    a time; this is the same launch for processes that start together)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    procs = [subprocess.Popen([sys.executable, "-m", "bench.scale", "--instance", json.dumps(s)], cwd=REPO_ROOT,
                              stdout=subprocess.PIPE, text=True, env=env) for s in specs]
    try:
        for p in procs:
            assert p.stdout is not None
            for line in p.stdout:
                if line.startswith(worker.READY):
                    break
            else:
                raise RuntimeError(f"bench.scale --instance exited before it was ready (exit {p.wait()})")
        t0 = time.monotonic()
        while not settled() and time.monotonic() < t0 + 60 and all(p.poll() is None for p in procs):
            time.sleep(0.1)
        settle_s = time.monotonic() - t0
        go.touch()
        deadline = time.monotonic() + timeout_s
        while not finished() and time.monotonic() < deadline and all(p.poll() is None for p in procs):
            time.sleep(0.25)
        done.touch()
        results: list[dict[str, Any]] = []
        for p, s in zip(procs, specs):
            assert p.stdout is not None
            found = None
            for line in p.stdout:
                if line.startswith(worker.RESULT):
                    found = json.loads(line[len(worker.RESULT):])
            if p.wait() != 0 or found is None:
                raise RuntimeError(f"bench.scale --instance failed (exit {p.returncode}); spec {s}")
            results.append(found)
        return results, settle_s
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


# --------------------------------------------------------------------------- what the journal must hold
def reference_vouchers(records: Iterable[tuple[bytes, bytes | None]]) -> set[str]:
    """The voucher keys of the stream mapped in memory, in order, with the shipped rules (what the journal must
    hold however the records were spread over partitions and instances: each key's changes keep their order)."""
    from connector.events import ChangeEvent, Decoder, FixedSchemas
    from connector.mapping import InMemoryLedger, Mapper, load_rules

    decoder = Decoder(FixedSchemas(samples.value_schema(samples.PURCHASING)))
    mapper = Mapper(load_rules(pipeline.RULES))
    state = InMemoryLedger()
    keys: set[str] = set()
    for k, v in records:
        ev = decoder.decode(v, key=k)
        if isinstance(ev, ChangeEvent):
            result = mapper.map(ev, state)
            state.apply(result)
            keys.update(x.key for x in result.vouchers)
    return keys


def log_ends(bootstrap: str, topic: str) -> dict[int, int]:
    """Partition → log end offset (high watermark) of ``topic``."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"scale-wm-{uuid.uuid4().hex[:6]}", "log_level": "3"})
    try:
        parts = c.list_topics(topic, timeout=30).topics[topic].partitions
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in parts}
    finally:
        c.close()


def problems(ends: Mapping[int, int], per_partition: Mapping[int, tuple[int, int, int]],
             offsets: Mapping[int, int], vouchers: set[str], expected: set[str]) -> list[str]:
    """What is wrong with a journal after a run over a topic with log ends ``ends``: ``per_partition`` is
    partition → (outcomes, lowest offset, highest offset) from ``event_records``, ``offsets`` the journal's next
    offset per partition. Empty when every record has exactly one outcome, the offsets are at the log end and the
    vouchers are exactly the expected ones."""
    out = []
    for p, end in sorted(ends.items()):
        got = per_partition.get(p, (0, -1, -1))
        if end and got != (end, 0, end - 1):
            out.append(f"partition {p}: {got[0]} outcomes for offsets {got[1]}..{got[2]}, expected {end} for "
                       f"0..{end - 1}")
        if offsets.get(p, 0) != end:
            out.append(f"partition {p}: journal offset {offsets.get(p)}, log end {end}")
    extra = set(per_partition) - set(ends)
    if extra:
        out.append(f"outcomes for partitions the topic does not have: {sorted(extra)}")
    if vouchers != expected:
        out.append(f"vouchers: {len(vouchers - expected)} unexpected, {len(expected - vouchers)} missing "
                   f"(of {len(expected)})")
    return out


def check_journal(dsn: str, group: str, ends: Mapping[int, int], expected: set[str]) -> dict[str, Any]:
    """Read the journal after a run: the checks of :func:`problems` and which partitions each instance (its
    owner id: host:pid) journaled batches of, from the batches' audit rows (decision 0010)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        per = {int(r[0]): (int(r[1]), int(r[2]), int(r[3])) for r in conn.execute(
            "SELECT kafka_partition, count(*), min(kafka_offset), max(kafka_offset) FROM kdcdc.event_records "
            "WHERE consumer_group = %s GROUP BY 1", (group,))}
        offsets = {int(r[0]): int(r[1]) for r in conn.execute(
            "SELECT kafka_partition, next_offset FROM kdcdc.offsets WHERE consumer_group = %s", (group,))}
        vouchers = {str(r[0]) for r in conn.execute("SELECT key FROM kdcdc.vouchers")}
        by_owner: dict[str, set[str]] = {}
        for owner, part in conn.execute(
                "SELECT DISTINCT detail->>'owner', jsonb_object_keys(detail->'offsets') FROM kdcdc.audit "
                "WHERE action = 'BATCH_JOURNALED' AND detail->>'group' = %s", (group,)):
            by_owner.setdefault(str(owner), set()).add(str(part).rsplit("[", 1)[1].rstrip("]"))
    return {"records": sum(v[0] for v in per.values()), "vouchers": len(vouchers),
            "partitions_by_owner": {o: sorted(int(p) for p in ps) for o, ps in by_owner.items()},
            "problems": problems(ends, per, offsets, vouchers, expected)}


# --------------------------------------------------------------------------- one configuration
def combine(instances: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The instances of one run as one: events summed, the span from the earliest first batch to the latest last
    batch, the processes' CPU summed, PostgreSQL's and the broker's CPU between those two instants."""
    ran = [x for x in instances if x["started_at"] is not None]
    first = min(ran, key=lambda x: x["started_at"])
    last = max(ran, key=lambda x: x["ended_at"])
    span = last["ended_at"] - first["started_at"]
    events = sum(x["events"] for x in instances)
    cpu = {"pipeline": sum(x["cpu_s"].get("pipeline", 0.0) for x in ran)}
    for k in ("postgres", "broker"):
        cpu[k] = last["cpu_at"][k][1] - first["cpu_at"][k][0]
    batches = sum(x["batches"] for x in instances)
    return {"events": events, "seconds": span, "events_per_s": events / span if span > 0 else 0.0,
            "batches": batches, "cpu_s": cpu,
            "batch_ms_mean": sum(x["batch_ms_mean"] * x["batches"] for x in instances) / batches if batches else 0.0,
            "peak_rss_mb": max(x["peak_rss_mb"] for x in instances),
            "outcomes": {k: sum(x["outcomes"][k] for x in instances) for k in instances[0]["outcomes"]}}


def run_config(stack: pipeline.Stack, cfg: Config, topic: str, events: int, expected: set[str],
               ends: Mapping[int, int]) -> dict[str, Any]:
    db, dsn = pipeline._fresh_db(stack, "bench_scale")
    group = f"scale-{uuid.uuid4().hex[:6]}"
    go, done = stack.workdir / f"go-{group}", stack.workdir / f"done-{group}"
    try:
        specs = [{"mode": "sustained", "bootstrap": stack.bootstrap, "dsn": dsn, "topic": topic,
                  "partitions": cfg.partitions, "pg_pid": stack.pg_pid, "broker_pid": stack.broker_pid,
                  "progress_s": 5.0, "label": f"  {cfg.key} instance {i + 1}", "group": group,
                  "go": str(go), "done": str(done)} for i in range(cfg.instances)]
        wal0 = pipeline.wal_position(stack.dsn)
        inst, settle_s = _launch(
            specs, go, done, lambda: group_settled(stack.bootstrap, group, cfg.instances, cfg.partitions),
            lambda: journaled(dsn, group) >= events)
        wal1 = pipeline.wal_position(stack.dsn)
        check = check_journal(dsn, group, ends, expected)
        tables = pipeline.journal_tables(dsn)
    finally:
        peers.drop_database(stack.dsn, db)
        go.unlink(missing_ok=True)
        done.unlink(missing_ok=True)
    out = combine(inst)
    t0 = min(x["started_at"] for x in inst if x["started_at"] is not None)
    owners = check["partitions_by_owner"]
    out["instances"] = [{"events": x["events"], "seconds": x["seconds"], "events_per_s": x["events_per_s"],
                         "first_batch_after_s": (x["started_at"] - t0) if x["started_at"] is not None else None,
                         "cpu_s": x["cpu_s"], "batches": x["batches"], "outcomes": x["outcomes"],
                         "partitions": owners.get(x["owner"], []), "peak_rss_mb": x["peak_rss_mb"]} for x in inst]
    out |= {"config": cfg.key, "partitions": cfg.partitions, "instance_count": cfg.instances, "topic": topic,
            "group_settle_s": settle_s, "wal_bytes": wal1[0] - wal0[0], "wal_fpi": wal1[1] - wal0[1], "tables": tables, "check": check}
    if check["problems"] or out["events"] != events or check["records"] != events:
        raise RuntimeError(f"{cfg.label}: journaled {out['events']}/{events} events; " + "; ".join(check["problems"]))
    return out


# --------------------------------------------------------------------------- the run
def best(runs: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    return max(runs, key=lambda r: r["events_per_s"])


def run(*, n: int = 60_000, rounds: int = 3, log: Log = _say) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="kdcdc-bench-scale-") as d:
        work = Path(d)
        with KafkaBroker(work / "kafka") as k, EmbeddedPostgres(work / "pg", durable=True) as pg:
            stack = pipeline.Stack(k.bootstrap, pg.dsn(), pg.proc.pid if pg.proc else None,
                                   k.proc.pid if k.proc else None, work)
            return _run(stack, n=n, rounds=rounds, log=log)


def _run(stack: pipeline.Stack, *, n: int, rounds: int, log: Log) -> dict[str, Any]:
    log(f"bench: scale: {n:,} purchase-invoice change events (JSON with schemas) → topics of 1, 3 and 6 "
        "partitions …")
    records, exp = peers.purchase_invoice_records(n, seed=1)
    expected = reference_vouchers(records)
    log(f"bench: scale: mapped in memory: {len(expected):,} vouchers expected")
    topics: dict[int, tuple[str, dict[int, int]]] = {}
    for parts in sorted({c.partitions for c in CONFIGS}):
        topic = peers.create_topic(stack.bootstrap, parts, prefix=f"bench-scale-{parts}p")
        peers.produce(stack.bootstrap, topic, records)
        ends = log_ends(stack.bootstrap, topic)
        if sum(ends.values()) != exp.events:
            raise RuntimeError(f"{topic} does not hold the {exp.events} records produced")
        log(f"bench: scale: {topic}: records per partition {', '.join(f'{e:,}' for _, e in sorted(ends.items()))}")
        topics[parts] = (topic, ends)
    del records
    by: dict[str, list[dict[str, Any]]] = {c.key: [] for c in CONFIGS}
    for r in range(rounds):
        order = CONFIGS if r % 2 == 0 else tuple(reversed(CONFIGS))
        log(f"bench: scale: round {r + 1}/{rounds}: {', '.join(c.key for c in order)}")
        for cfg in order:
            peers.settle(stack.dsn)
            load = os.getloadavg()[0]
            log(f"bench: scale: round {r + 1}: {cfg.label} (load average {load:.2f}) …")
            topic, ends = topics[cfg.partitions]
            t = time.monotonic()
            out = run_config(stack, cfg, topic, exp.events, expected, ends)
            out |= {"round": r + 1, "load_before": load, "load_after": os.getloadavg()[0],
                    "wall_s": time.monotonic() - t}
            c = pipeline.cpu_per_event(out)
            split = "; ".join(f"instance {i + 1}: partitions {x['partitions']}, {x['events']:,} events"
                              for i, x in enumerate(out["instances"])) if cfg.instances > 1 else ""
            log(f"bench: scale: round {r + 1}: {cfg.label}: {out['events_per_s']:,.0f} events/s, pipeline "
                f"{c['pipeline']:.0f} µs + PostgreSQL {c['postgres']:.0f} µs per event; {out['check']['records']:,} "
                f"outcomes, {out['check']['vouchers']:,} vouchers: nothing lost or doubled"
                + (f" ({split})" if split else ""))
            by[cfg.key].append(out)
    return {"events": exp.events, "vouchers": len(expected), "rounds": rounds, "cores": os.cpu_count(),
            "configs": [{"key": c.key, "partitions": c.partitions, "instances": c.instances, "label": c.label}
                        for c in CONFIGS],
            "runs": by, "best": {k: best(v) for k, v in by.items()}}


# --------------------------------------------------------------------------- report
def busy_cores(run_: Mapping[str, Any]) -> dict[str, float]:
    """Cores each part kept busy over the span (CPU seconds ÷ seconds), and all of them together."""
    s = run_["seconds"] or 1e-9
    out = {k: v / s for k, v in run_["cpu_s"].items()}
    out["all"] = sum(out.values())
    return out


def markdown(r: Mapping[str, Any]) -> str:
    best_, runs, rounds = r["best"], r["runs"], r["rounds"]
    base = best_["1i_6p"]["events_per_s"]
    lines = ["| configuration | " + " | ".join(f"round {i + 1}" for i in range(rounds))
             + " | best, events/s | ÷ 1 instance × 6 partitions | pipeline CPU µs/event | PostgreSQL CPU µs/event "
             "| events/s per pipeline core | cores busy (pipeline + PostgreSQL + broker) |",
             "|---|" + "---:|" * (rounds + 6)]
    for c in r["configs"]:
        b = best_[c["key"]]
        cpu = pipeline.cpu_per_event(b)
        busy = busy_cores(b)
        lines.append(f"| {c['label']} | " + " | ".join(f"{x['events_per_s']:,.0f}" for x in runs[c["key"]])
                     + f" | {b['events_per_s']:,.0f} | {b['events_per_s'] / base:.2f}× | {cpu['pipeline']:.0f} | "
                     f"{cpu['postgres']:.0f} | {1e6 / cpu['pipeline']:,.0f} | {busy['pipeline']:.2f} + "
                     f"{busy['postgres']:.2f} + {busy['broker']:.2f} = {busy['all']:.2f} of {r['cores']} |")
    two = best_["2i_6p"]
    lines += ["", "Every run checked after it stopped (nothing lost or doubled): "
              f"{r['events']:,} outcomes, one per record and partition offset, the journal's offsets at the log "
              f"end, exactly the {r['vouchers']:,} vouchers of the stream mapped in memory. The runs' load average "
              "(1 min) before they started: " + ", ".join(
                  f"{x['load_before']:.2f}" for c in r["configs"] for x in runs[c["key"]]) + ".",
              "", "The best two-instance run, per instance (the span of each from its own first batch to its own "
              "last; partitions from the audit rows of the batches it journaled):", "",
              "| instance | partitions journaled | events | first batch after | its span | its events/s | its CPU "
              "µs/event |", "|---|---|---:|---:|---:|---:|---:|"]
    for i, x in enumerate(two["instances"]):
        lines.append(f"| {i + 1} | {', '.join(map(str, x['partitions']))} | {x['events']:,} | "
                     f"{x['first_batch_after_s'] or 0:.2f} s | {x['seconds']:.2f} s | {x['events_per_s']:,.0f} | "
                     f"{1e6 * x['cpu_s']['pipeline'] / max(1, x['events']):.0f} |")
    moved = set.intersection(*(set(x["partitions"]) for x in two["instances"])) if two["instances"] else set()
    if moved:
        lines += ["", f"Partitions {sorted(moved)} were journaled by both instances: the first to join took them "
                  "before the group's rebalance moved them to the second, which went on from the journal's offset."]
    one = best_["1i_6p"]
    ev = one["events"]
    tabs = one["tables"]
    lines += ["", "Journal cost per event (best one-instance run on 6 partitions): "
              f"{sum(t['rows'] for t in tabs) / ev:.2f} rows written, "
              f"{sum(t['heap_bytes'] + t['index_bytes'] for t in tabs) / ev:,.0f} bytes of tables and indexes, "
              f"{one['wal_bytes'] / ev:,.0f} bytes of WAL ({one['wal_fpi']:,} full-page images; the journal's "
              f"migration included), {one['batches']} batches of {ev / max(1, one['batches']):,.0f} events on "
              f"average (mean {one['batch_ms_mean']:.0f} ms each)."]
    g = two["events_per_s"] / base
    b1, b2 = busy_cores(one), busy_cores(two)
    c1 = pipeline.cpu_per_event(one)
    spare = r["cores"] - b1["all"]
    lines += ["", f"**What two instances gain here: {g:.2f}×** ({two['events_per_s']:,.0f} against "
              f"{base:,.0f} events/s on the same 6 partitions; the group settled in "
              f"{two['group_settle_s']:.1f} s before the instances were released). This host has {r['cores']} "
              f"cores, shared by the instances, PostgreSQL and the Kafka broker. One instance kept {b1['all']:.2f} "
              f"of them busy (its process {b1['pipeline']:.2f}: one batch loop, CPU-bound except while it waits for "
              f"its commit; PostgreSQL {b1['postgres']:.2f}; the broker {b1['broker']:.2f}), so "
              f"{max(0.0, spare):.2f} of a core was idle; two kept {b2['all']:.2f}. "
              + ("A second instance gained because that core was idle, and the cores are now busy: a third "
                 "instance on this host would share them, not add to them (not measured). "
                 if g >= 1.2 else "A second instance gained little: the cores were already busy. ")
              + "Each instance needs a core of its own, and PostgreSQL about "
              f"{c1['postgres'] / c1['pipeline']:.2f} of a core per instance core (its CPU per event beside the "
              "pipeline's); scaling out means instances on more cores (pods or machines), partitions ≥ instances, "
              "and a PostgreSQL that takes the sum of their writes. Partitions alone do not raise one instance's "
              "rate (1, 3, 6 partitions: " + ", ".join(f"{best_[k]['events_per_s']:,.0f}"
                                                      for k in ("1i_1p", "1i_3p", "1i_6p")) + " events/s): "
              "an instance is one batch loop whatever it is assigned."]
    return "\n".join(lines)


def document(r: Mapping[str, Any], meta: Mapping[str, Any]) -> str:
    how = (__doc__ or "").split("\n\n", 1)[1].strip().replace("``", "`")
    return "\n".join([
        "# Benchmarks: partitions and instances", "",
        f"Produced by `{meta['command']}` (`python -m bench.scale --events {r['events']} --json "
        f"docs/benchmarks-scale.json --markdown docs/benchmarks-scale.md`) on {meta['finished_utc']} UTC, commit "
        f"`{meta['commit']}`, in {meta['minutes']:.1f} minutes.",
        f"Host: {meta['host']}. Load average (1 / 5 / 15 min) at the start {meta['load_start']}, at the end "
        f"{meta['load_end']}.", "",
        "Kept apart from `make bench` (docs/benchmarks.md). Absolute rates are for comparing runs on one host only; "
        "the sizing guide built on them is in docs/operations.md (Sizing and scaling). Every number here is also in "
        "`docs/benchmarks-scale.json`.", "",
        how, "", markdown(r), ""])


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--instance"]:
        out = instance(json.loads(args[1]))
        print(worker.RESULT + json.dumps(out), flush=True)
        return 0
    ap = argparse.ArgumentParser(prog="python -m bench.scale", description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--events", type=int, default=60_000, help="change events in each topic (default 60,000)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the four configurations (3)")
    ap.add_argument("--json", type=Path, help="also write the results here (docs/benchmarks-scale.json)")
    ap.add_argument("--markdown", type=Path, help="also write them as a document here (docs/benchmarks-scale.md)")
    a = ap.parse_args(args)
    from bench import run as bench_run

    started = time.monotonic()
    load_start = bench_run._load()
    _say(f"bench: scale: {bench_run.host()}; load average {load_start}")
    res = run(n=a.events, rounds=a.rounds)
    meta = {"command": COMMAND if a.markdown else "python -m bench.scale",
            "finished_utc": f"{datetime.now(UTC):%Y-%m-%d %H:%M}", "commit": bench_run._commit(),
            "host": bench_run.host(), "load_start": load_start, "load_end": bench_run._load(),
            "minutes": (time.monotonic() - started) / 60}
    text = document(res, meta)
    print(text)
    if a.json:
        a.json.write_text(json.dumps({**meta, "raw": res}, indent=1, ensure_ascii=False, default=str) + "\n")
    if a.markdown:
        a.markdown.write_text(text)
    _say(f"bench: scale: done in {meta['minutes']:.1f} min; load average {meta['load_end']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
