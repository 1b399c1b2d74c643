"""``make demo``: the whole product on embedded defaults, on one machine, in a few minutes.

Starts a real Kafka broker, PostgreSQL (the journal, and the business databases), Kafka Connect with the
real Debezium PostgreSQL connector, and the Kingdee sandbox. Business traffic is written with SQL into the
POS (orders with lines), purchasing and payroll databases — rows that exist before Debezium starts arrive
as its snapshot, the rest stream — while the MES and bank systems publish Debezium-format Avro directly,
with a few corrupted records. The exactly-once pipeline, the poster and the feedback relay run with a
live progress line. POS sales run in summary mode (``deploy/examples/rules/pos-sale-summary.yaml``: one summary
voucher, 汇总凭证, per book, day, store and payment method); once the traffic is journaled the demo closes the
day (what ``kingdee-cdc run`` does at 02:00 the next day) and the summary vouchers are posted. The summary shows
outcomes, vouchers by scenario and status, the summary vouchers and the drill-down of one to its receipts, a
trial balance that ties the journal to Kingdee, the journal to the *source databases'* own totals, rejections
with reasons, dead letters, feedback, metrics and how to look at a voucher.

``--source synthetic`` skips Debezium and publishes every system's events directly (no Java for Connect).
With ``--format avro`` (the default) a real Apicurio Registry runs beside Kafka: Debezium writes Avro through
it (Apicurio's converter in Confluent wire format) and the pipeline reads the schemas from its
Confluent-compatible API; with ``--format json`` no registry is started.
Existing services can be used instead: ``KDCDC_KAFKA__BOOTSTRAP_SERVERS``, ``KDCDC_JOURNAL__DSN``,
``KDCDC_SCHEMA_REGISTRY__URL`` (a Confluent-compatible registry URL).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import psycopg
from tqdm import tqdm

from harness import samples
from harness.apicurio import ApicurioRegistry
from harness.devstack import REPO_ROOT, EmbeddedPostgres, KafkaBroker

if TYPE_CHECKING:
    from harness.debezium import BusinessDatabases, KafkaConnect
    from connector.feedback import FeedbackRelay
    from connector.kingdee import KingdeeClient
    from connector.kingdee.poster import Poster
    from connector.mapping import RuleSet
    from connector.ops import OpsServer
    from connector.pipeline import Pipeline
    from connector.sandbox import RunningSandbox
    from connector.summaries import SummaryCloser


def _produce(bootstrap: str, registry: Any, n: int, wire: str,
             tables: tuple[samples.SampleTable, ...] = samples.TABLES) -> dict[str, int]:
    from confluent_kafka import Producer
    from confluent_kafka.schema_registry import Schema

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": "20", "enable.idempotence": "true",
                         "log_level": "3"})
    gen = samples.SampleGenerator(seed=2026)
    per_table = max(1, n // len(tables))
    counts: dict[str, int] = {}
    for t in tables:
        value_id = registry.register_schema(f"{t.topic}-value", Schema(json.dumps(samples.value_schema(t)), "AVRO"))
        key_id = registry.register_schema(f"{t.topic}-key", Schema(json.dumps(samples.key_schema(t)), "AVRO"))
        for key, env in samples.change_stream(gen, t, per_table, update_every=7, delete_every=23):
            if wire == "avro":
                value, k = samples.encode_avro(t, env, value_id), samples.encode_avro_key(t, key, key_id)
            else:
                value, k = samples.encode_json(t, env), samples.json_key(key)
            producer.produce(t.topic, value=value, key=k)
            producer.poll(0)
            counts[t.topic] = counts.get(t.topic, 0) + 1
    # Bad records, the way they show up in real life: an unknown schema id and a flattened (unwrapped) row.
    bad_topic = tables[0].topic
    producer.produce(bad_topic, value=b"\x00\x00\x00\x03\xe7garbage", key=b"bad-1")
    producer.produce(bad_topic, value=b'{"id": 5, "amount": 1}', key=b"bad-2")
    counts[bad_topic] += 2
    producer.flush(30)
    return counts


def _q(dsn: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, args).fetchall()


def _log_end(consumer: Any, topics: list[str]) -> int:
    """Records on ``topics`` so far (sum of high watermarks; missing topics count 0)."""
    from confluent_kafka import TopicPartition

    md = consumer.list_topics(timeout=5)
    total = 0
    for t in topics:
        for p in (md.topics[t].partitions if t in md.topics and md.topics[t].error is None else {}):
            total += consumer.get_watermark_offsets(TopicPartition(t, p), timeout=5)[1]
    return total


def _create_topics(bootstrap: str, topics: list[str]) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": "3"})
    for f in admin.create_topics([NewTopic(t, 1, 1) for t in topics]).values():
        try:
            f.result(30)
        except Exception as e:  # already there (a re-run with --dir): fine
            if "TOPIC_ALREADY_EXISTS" not in str(e):
                raise


@dataclass
class _Stack:
    """What a demo run started (``None``: not started, or an existing service is used), stopped in reverse."""

    base: Path
    own_dir: bool
    bootstrap: str = ""
    dsn: str = ""
    broker: KafkaBroker | None = None
    pg: EmbeddedPostgres | None = None
    sandbox: RunningSandbox | None = None
    business_pg: EmbeddedPostgres | None = None
    biz: BusinessDatabases | None = None
    connect: KafkaConnect | None = None
    ops: OpsServer | None = None
    registry: ApicurioRegistry | None = None
    #: the Confluent-compatible registry URL the pipeline reads (and the direct producers register with)
    registry_url: str = ""
    #: the Apicurio v2 API Debezium's converter writes to (only when this run started the registry)
    converter_url: str = ""

    def stop(self) -> None:
        if self.ops:
            self.ops.stop()
        if self.connect:
            self.connect.stop()
        if self.registry:
            self.registry.stop()
        if self.biz:
            self.biz.close()
        if self.business_pg:
            self.business_pg.stop()
        if self.sandbox:
            self.sandbox.stop()
        if self.broker:
            self.broker.stop()
        if self.pg:
            self.pg.stop()
        if self.own_dir:
            shutil.rmtree(self.base, ignore_errors=True)


@dataclass
class _Traffic:
    """The demo's change events: published directly (``counts`` per topic) and, with Debezium, written with SQL
    into the business databases by ``writer`` while the pipeline runs."""

    counts: dict[str, int]
    topics: list[str]
    done: threading.Event
    writer: Callable[[], None] | None = None
    biz: BusinessDatabases | None = None
    more: int = 0  #: changes ``writer`` writes

    def announce(self, wire: str) -> None:
        print(f"published {sum(self.counts.values()):,} Debezium-format events ({wire}) directly for "
              + ", ".join(f"{t} {n:,}" for t, n in self.counts.items()), flush=True)
        if self.biz is not None:
            print(f"business databases: {len(self.biz.changes):,} rows before Debezium started (snapshot); "
                  f"writing {self.more:,} more changes with SQL while the pipeline runs", flush=True)

    def expected(self) -> int:
        return sum(self.counts.values()) + (sum(self.biz.expected_records.values()) if self.biz else 0)


@dataclass
class _Workers:
    """The product's three loops, each on its own thread, and the Kingdee client the summary reads back with."""

    pipeline: Pipeline
    poster: Poster
    relay: FeedbackRelay
    client: KingdeeClient
    closer: SummaryCloser
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self, traffic: _Traffic) -> None:
        self.threads = [threading.Thread(target=self.pipeline.run, name="pipeline", daemon=True),
                        threading.Thread(target=lambda: self.poster.run(idle_sleep_s=0.3), name="poster", daemon=True),
                        threading.Thread(target=lambda: self.relay.run(idle_sleep_s=0.3), name="feedback", daemon=True)]
        if traffic.writer is not None:
            self.threads.append(threading.Thread(target=traffic.writer, name="business-traffic", daemon=True))
        for th in self.threads:
            th.start()

    def alive(self) -> bool:
        return all(th.is_alive() for th in self.threads if th.name != "business-traffic")

    def stop(self) -> None:
        self.pipeline.stop()
        self.poster.stop()
        self.relay.stop()
        for th in self.threads:
            th.join(30)
        self.closer.journal.close()


def run_demo(*, events: int = 5000, wire: str = "avro", source: str = "debezium",
             workdir: Path | None = None) -> int:
    from confluent_kafka.schema_registry import SchemaRegistryClient

    from connector.mapping import load_rules

    stack = _Stack(base=Path(tempfile.mkdtemp(prefix="kdcdc-demo-")) if workdir is None else workdir,
                   own_dir=workdir is None)
    t0 = time.monotonic()
    registry: Any = None
    try:
        _start_services(stack, wire)
        registry = SchemaRegistryClient({"url": stack.registry_url}) if stack.registry_url else \
            SchemaRegistryClient.new_client({"url": f"mock://kingdee-cdc-demo-{uuid.uuid4().hex[:6]}"})
        traffic = _traffic(stack, registry, events, wire, source)
        print(f"stack ready in {time.monotonic() - t0:.1f}s: kafka {stack.bootstrap} · journal {stack.dsn} · "
              f"Kingdee sandbox {stack.sandbox.url if stack.sandbox else '?'}"
              + (f" · schema registry {stack.registry_url}" if stack.registry_url else "")
              + (f" · Debezium REST {stack.connect.rest_url}" if stack.connect else ""), flush=True)
        traffic.announce(wire)
        rules = load_rules(_demo_rules(stack.base))
        group = f"kingdee-cdc-demo-{uuid.uuid4().hex[:6]}"
        workers = _workers(stack, registry, rules, group, traffic.topics)
        workers.start(traffic)
        total, elapsed = _watch(stack, traffic, workers, group)
        workers.stop()
        ok = _report(stack, rules, group, total, elapsed, workers.client)
        workers.client.close()
        return 0 if ok else 1
    finally:
        if registry is not None and hasattr(registry, "__exit__"):
            registry.__exit__(None, None, None)  # a real registry client holds a connection pool
        stack.stop()


def _demo_rules(base: Path) -> Path:
    """The shipped rules with POS sales in summary mode (the example rule replaces rules/pos-sale.yaml)."""
    target = base / "rules"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(REPO_ROOT / "rules", target, ignore=shutil.ignore_patterns("golden", "__init__.py",
                                                                               "__pycache__"))
    shutil.copy(REPO_ROOT / "deploy" / "examples" / "rules" / "pos-sale-summary.yaml", target / "pos-sale.yaml")
    return target


def _start_services(stack: _Stack, wire: str) -> None:
    """Kafka and the journal's PostgreSQL (unless given by KDCDC_KAFKA__BOOTSTRAP_SERVERS, KDCDC_JOURNAL__DSN),
    Apicurio Registry for Avro (unless KDCDC_SCHEMA_REGISTRY__URL names one), and the Kingdee sandbox."""
    from connector.sandbox import start_sandbox

    bootstrap = os.environ.get("KDCDC_KAFKA__BOOTSTRAP_SERVERS")
    dsn = os.environ.get("KDCDC_JOURNAL__DSN")
    if bootstrap is None:
        print("starting Apache Kafka (KRaft, single node, jars from Maven Central) …", flush=True)
        stack.broker = KafkaBroker(stack.base / "kafka").start()
        bootstrap = stack.broker.bootstrap
    if dsn is None:
        print("starting PostgreSQL 18 (embedded) for the journal …", flush=True)
        stack.pg = EmbeddedPostgres(stack.base / "postgres").start()
        dsn = stack.pg.dsn()
    stack.bootstrap, stack.dsn = bootstrap, dsn
    if wire == "avro":
        given = os.environ.get("KDCDC_SCHEMA_REGISTRY__URL")
        if given:
            stack.registry_url = given
        else:
            print("starting Apicurio Registry (schema registry, from Maven Central) …", flush=True)
            stack.registry = ApicurioRegistry(stack.base / "apicurio").start()
            stack.registry_url, stack.converter_url = stack.registry.ccompat_url, stack.registry.v2_url
    stack.sandbox = start_sandbox()


def _traffic(stack: _Stack, registry: Any, events: int, wire: str, source: str) -> _Traffic:
    """Set up the sources: with Debezium, the business databases (their snapshot rows written now) and Kafka
    Connect; then publish the directly produced systems' events."""
    done = threading.Event()
    if source != "debezium":
        done.set()
        counts = _produce(stack.bootstrap, registry, events, wire, samples.TABLES)
        return _Traffic(counts, list(counts), done)
    n_debezium = max(30, events * 6 // 10)
    traffic = _start_debezium(stack, n_debezium, done)
    traffic.counts = _produce(stack.bootstrap, registry, max(10, events - n_debezium), wire,
                              (samples.MES, samples.BANK))
    traffic.topics += list(traffic.counts)
    return traffic


def _start_debezium(stack: _Stack, n_debezium: int, done: threading.Event) -> _Traffic:
    from harness.apicurio import avro_connector_config, ensure_converter_plugin
    from harness.debezium import BusinessDatabases, KafkaConnect, connector_config

    print("starting the business databases (PostgreSQL, logical replication) …", flush=True)
    stack.business_pg = EmbeddedPostgres(stack.base / "business").start()
    biz = stack.biz = BusinessDatabases(stack.business_pg.dsn()).create()
    pre = max(10, n_debezium // 10)
    for _ in biz.traffic(pre, seed=1):  # rows that exist before Debezium starts: its snapshot
        pass
    biz.expect_snapshot()
    topics = biz.topics()
    _create_topics(stack.bootstrap, topics)
    print("starting Kafka Connect with the Debezium PostgreSQL connector (jars from Maven Central) …", flush=True)
    configs = [connector_config(sys, "127.0.0.1", stack.business_pg.port) for sys in biz.systems]
    if stack.converter_url:  # Debezium writes Avro through the registry (Confluent wire format)
        ensure_converter_plugin()
        configs = [avro_connector_config(c, stack.converter_url) for c in configs]
    stack.connect = KafkaConnect(stack.base / "connect", stack.bootstrap, configs).start()

    def write_traffic() -> None:
        try:
            for _ in biz.traffic(n_debezium - pre, seed=2):
                pass
        finally:
            done.set()
    return _Traffic({}, topics, done, writer=write_traffic, biz=biz, more=n_debezium - pre)


def _workers(stack: _Stack, registry: Any, rules: RuleSet, group: str, topics: list[str]) -> _Workers:
    """The pipeline (with metrics served on an ephemeral port), the poster and the feedback relay."""
    from connector.events import Decoder, RegistrySchemas
    from connector.feedback import FeedbackRelay
    from connector.journal import Journal
    from connector.kingdee import KingdeeClient, KingdeeCredentials
    from connector.kingdee.poster import Poster, PosterOptions
    from connector.mapping import Mapper
    from connector.ops import Metrics, OpsServer
    from connector.pipeline import Pipeline, PipelineOptions, Processor
    from connector.summaries import SummaryCloser

    assert stack.sandbox is not None
    journal = Journal(stack.dsn, group=group)
    metrics = Metrics()
    stack.ops = OpsServer(metrics, port=0).start()
    pipeline = Pipeline(
        consumer_conf={"bootstrap.servers": stack.bootstrap, "group.id": group, "log_level": "2"},
        topics=topics, journal=journal,
        processor=Processor(Decoder(RegistrySchemas(registry)), Mapper(rules)),
        options=PipelineOptions(dead_letter_topic="kingdee-cdc.demo.dlq", batch_size=2000), metrics=metrics)
    cfg = stack.sandbox.server.state.config
    app_id = next(iter(cfg.apps))
    client = KingdeeClient(KingdeeCredentials(server_url=stack.sandbox.url, acct_id=cfg.data_centre,
                                              username="integration", app_id=app_id,
                                              app_secret=cfg.apps[app_id]["secret"]), rate_limit_per_s=500)
    poster = Poster(Journal(stack.dsn, group=group), client, books=rules.ledger.books,
                    options=PosterOptions(batch_size=100))
    relay = FeedbackRelay(Journal(stack.dsn, group=group), {"bootstrap.servers": stack.bootstrap, "log_level": "2"})
    closer = SummaryCloser(Journal(stack.dsn, group=group), rules=rules, ledger=rules.ledger)
    journal.migrate()  # before the threads start: they all read the journal
    return _Workers(pipeline, poster, relay, client, closer)
class _Progress(NamedTuple):
    journaled: int  #: records with an outcome
    rejected: int
    posted: int  #: vouchers in Kingdee (posted or reversed)
    waiting: int  #: vouchers not settled yet
    rejected_by_kingdee: int
    unsent: int  #: feedback not relayed yet
    open_summaries: int  #: summaries still taking contributions


def _progress(dsn: str, group: str) -> _Progress:
    from connector.journal import IN_KINGDEE, UNSETTLED, Outcome, SummaryState, VoucherStatus

    journaled, rejected = _q(dsn, "SELECT count(*), count(*) FILTER (WHERE outcome = %s) FROM kdcdc.event_records "
                                  "WHERE consumer_group = %s", Outcome.REJECTED, group)[0]
    stat: dict[str, int] = dict(_q(dsn, "SELECT status, count(*) FROM kdcdc.vouchers GROUP BY 1"))
    unsent = _q(dsn, "SELECT count(*) FROM kdcdc.outbox WHERE sent_at IS NULL")[0][0]
    open_summaries = _q(dsn, "SELECT count(*) FROM kdcdc.summaries WHERE state = %s", SummaryState.OPEN)[0][0]
    return _Progress(journaled, rejected, sum(stat.get(s, 0) for s in IN_KINGDEE),
                     sum(stat.get(s, 0) for s in UNSETTLED), stat.get(VoucherStatus.REJECTED_BY_KINGDEE, 0), unsent,
                     open_summaries)


def _watch(stack: _Stack, traffic: _Traffic, workers: _Workers, group: str) -> tuple[int, float]:
    """A live progress line until every event is journaled, every voucher settled and all feedback relayed
    (at most 15 minutes); the records counted and the seconds it took."""
    from confluent_kafka import Consumer

    t1 = time.monotonic()
    total = traffic.expected()
    watermarks = Consumer({"bootstrap.servers": stack.bootstrap, "group.id": "kdcdc-demo-watermarks",
                           "log_level": "0"})  # one client for the progress line, not one per tick
    with tqdm(total=total, unit="ev", desc="journaled", dynamic_ncols=True, mininterval=1.0) as bar:
        while time.monotonic() - t1 < 900:
            time.sleep(1.0)
            if not workers.alive():
                print("\na pipeline thread stopped unexpectedly; see the error above", flush=True)
                break
            expected = traffic.expected()
            in_kafka = _log_end(watermarks, traffic.topics)
            p = _progress(stack.dsn, group)
            bar.total = max(expected, in_kafka)
            bar.n = p.journaled
            bar.set_postfix_str(f"in Kafka {in_kafka:,} · lag {in_kafka - p.journaled:,} · posted {p.posted:,} · "
                                f"waiting {p.waiting:,} · rejected {p.rejected:,} · rejected by Kingdee "
                                f"{p.rejected_by_kingdee:,}")
            drained = traffic.done.is_set() and in_kafka >= expected and p.journaled >= in_kafka
            if drained and p.open_summaries:
                closed = _close_the_day(workers.closer)
                bar.write(f"closed the day: {closed} summaries added up and journaled for the poster (what "
                          "`kingdee-cdc run` does at 02:00 the next day; `kingdee-cdc summaries close` by hand)")
                continue
            if drained and p.waiting == 0 and p.unsent == 0:
                total = in_kafka
                break
    watermarks.close()
    return total, time.monotonic() - t1


def _close_the_day(closer: SummaryCloser) -> int:
    """Close every open summary now (the demo's days are over: their close time has passed or is simulated)."""
    from connector.journal import SummaryState, list_summaries

    return sum(closer.close(s.id) is not None
               for s in list_summaries(closer.journal, state=SummaryState.OPEN, limit=100_000))


def _report(stack: _Stack, rules: RuleSet, group: str, total: int, elapsed: float, client: KingdeeClient) -> bool:
    """The summary, the tie-outs (journal ↔ Kingdee, journal ↔ source databases), where the metrics were and
    what the POS system was told."""
    from connector.feedback import tail

    ok = _summary(stack.dsn, group, total, elapsed, client, stack.sandbox.url if stack.sandbox else "?")
    source_ok = True
    if stack.biz is not None:
        source_ok = _source_ties(stack.dsn, stack.biz,
                                 [r.spec.rounding.account for r in rules.rules if r.spec.rounding])
    print(f"\nresult: {'OK' if ok and source_ok else 'FAILED'} — every event has one outcome, every voucher is "
          f"settled in Kingdee, the journal ties to Kingdee{' and to the source databases' if stack.biz else ''}"
          f"{'' if ok and source_ok else ': NOT ALL OF THIS HOLDS (see above)'}.")
    if stack.ops is not None:
        print(f"\nmetrics: this run served Prometheus metrics at http://127.0.0.1:{stack.ops.port}/metrics "
              "(`kingdee-cdc run` serves them on metrics.port, default 9108); the Grafana dashboard and alert "
              "rules are in deploy/grafana/ and deploy/prometheus/ (docs/operations.md).")
    print("\nfeedback the POS system receives (kingdee-cdc.feedback.pos, the first of each status — "
          "`kingdee-cdc feedback tail --source pos`):")
    first: dict[str, dict[str, Any]] = {}

    def keep_first(e: dict[str, Any]) -> None:
        first.setdefault(e["status"], e)
    tail(stack.bootstrap, "kingdee-cdc.feedback.pos", timeout_s=3, printer=keep_first)
    for e in first.values():
        print(f"  {e['status']:<12} {e['source'].get('table')} pk={e['source'].get('pk')} "
              f"{(e.get('kingdee') or {}).get('number') or ''}")
    return ok and source_ok


def _source_ties(dsn: str, biz: BusinessDatabases, rounding_accounts: list[str]) -> bool:
    """The journal's posted debits per source system and currency against the business databases' own totals
    (explicit rounding-difference lines are the mapping's own and are left out)."""
    from connector.journal import IN_KINGDEE
    from connector.ledger import Side

    journal: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for system, currency, amount in _q(
            dsn, "SELECT v.source_system, e.currency, sum(e.amount_for) FROM kdcdc.entries e "
                 "JOIN kdcdc.vouchers v ON v.key = e.voucher_key WHERE v.status = ANY(%s) "
                 "AND e.side = %s AND v.source_system = ANY(%s) AND NOT e.account = ANY(%s) GROUP BY 1, 2",
            list(IN_KINGDEE), Side.DEBIT, list(biz.systems), rounding_accounts):
        journal[(system, currency)] = Decimal(amount).quantize(Decimal("0.01"))
    source = biz.source_debits()
    print("\nsource totals: what the business databases hold (live rows, excluding the deliberately bad ones)\n"
          "vs the debits the journal posted for them, in transaction currency")
    print(f"  {'system':<12} {'currency':<8} {'source':>16} {'journal':>16}")
    ties = True
    for k in sorted(set(journal) | set(source)):
        sv, jv = source.get(k, Decimal("0.00")), journal.get(k, Decimal("0.00"))
        ties &= sv == jv
        print(f"  {k[0]:<12} {k[1]:<8} {sv:>16,.2f} {jv:>16,.2f}{'' if sv == jv else '   ← differs'}")
    return ties


def _summary(dsn: str, group: str, total: int, elapsed: float, client: KingdeeClient, sandbox_url: str) -> bool:
    """Outcomes, vouchers by rule and status, the trial balance journal ↔ Kingdee, rejections, dead letters,
    feedback, and a voucher to look at; True when everything is journaled and settled and the books tie."""
    from connector.journal import UNSETTLED

    outcomes = dict(_q(dsn, "SELECT outcome, count(*) FROM kdcdc.event_records WHERE consumer_group = %s GROUP BY 1",
                       group))
    done = sum(outcomes.values())
    print(f"\n== summary: {done:,}/{total:,} change events journaled in {elapsed:.1f}s "
          f"({done / max(elapsed, 1e-9):,.0f} ev/s end to end, including posting)")
    print("outcomes:  " + "  ".join(f"{k} {v:,}" for k, v in sorted(outcomes.items())))
    print("\nvouchers by scenario (rule) and status:")
    for rule, kind, status, n, amount in _q(
            dsn, "SELECT rule_id, kind, status, count(*), sum(debit_total) FROM kdcdc.vouchers "
                 "GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"):
        print(f"  {rule:<18} {kind:<9} {status:<20} {n:>6,}  debit total {amount:>16,.2f}")
    _summary_vouchers(dsn)
    ties = _trial_balance(dsn, client)
    _problems(dsn, group)
    feedback = dict(_q(dsn, "SELECT status, count(*) FROM kdcdc.outbox WHERE sent_at IS NOT NULL GROUP BY 1"))
    print("\nfeedback relayed to kingdee-cdc.feedback.<system>: "
          + "  ".join(f"{k} {v:,}" for k, v in sorted(feedback.items())))
    _a_voucher_to_look_at(dsn, sandbox_url)
    complete = done == total and not _q(dsn, "SELECT 1 FROM kdcdc.vouchers WHERE status = ANY(%s) LIMIT 1",
                                        list(UNSETTLED))
    if not complete:
        print("\nINCOMPLETE: some events have no outcome yet, or some vouchers are not settled in Kingdee.")
    return complete and ties


def _summary_vouchers(dsn: str) -> None:
    """How many receipts the summary vouchers carry, and the drill-down of the largest one to its receipts."""
    from connector.journal import Journal, VoucherStatus
    from connector.summaries import drilldown, find_summary

    n, rows, posted, changes = _q(
        dsn, "SELECT count(*), coalesce(sum(source_rows), 0), count(v.key) FILTER (WHERE v.status = %s), "
             "coalesce(sum(s.contributions), 0) FROM kdcdc.summaries s LEFT JOIN kdcdc.vouchers v "
             "ON v.key = s.voucher_key", VoucherStatus.POSTED)[0]
    if not n:
        return
    alone = _q(dsn, "SELECT count(*) FROM kdcdc.vouchers WHERE adjusts_summary IS NOT NULL")[0][0]
    print(f"\nsummary vouchers (汇总凭证, pos-sale): {n:,} summaries (book × day × store × payment method) carry "
          f"{rows:,} receipts; {posted:,} summary vouchers posted to Kingdee where one voucher per change would have "
          f"been {changes:,}; {alone:,} corrections after a close posted on their own")
    top = _q(dsn, "SELECT id FROM kdcdc.summaries WHERE voucher_key IS NOT NULL ORDER BY source_rows DESC, id LIMIT 1")
    journal = Journal(dsn)
    try:
        summary = find_summary(journal, str(top[0][0])) if top else None
        if summary is None:
            return
        d = drilldown(journal, summary)
        key = " ".join(f"{k}={v}" for k, v in summary.key.items())
        print(f"drill-down of {d.kingdee_number or summary.voucher_key} ({key}, `kingdee-cdc trace "
              f"{d.kingdee_number or summary.id}`): {len(d.rows)} receipts, debit total "
              f"{sum((r.debit_total for r in d.rows), Decimal(0)):,.2f}")
        for r in d.rows[:5]:
            where = f"{r.topic}[{r.kafka_partition}]@{r.kafka_offset}" if r.topic is not None else ""
            print(f"  {r.system:<5} {r.table:<26} {r.pk:<14} {r.debit_total:>12,.2f}  {where}")
        if len(d.rows) > 5:
            print(f"  … {len(d.rows) - 5:,} more")
    finally:
        journal.close()


def _trial_balance(dsn: str, client: KingdeeClient) -> bool:
    """The journal's posted (and reversed) vouchers against what Kingdee holds, per account: equal, and zero."""
    from connector.journal import IN_KINGDEE
    from connector.ledger import Side

    journal_tb: dict[str, Decimal] = defaultdict(Decimal)
    for account, net in _q(dsn, "SELECT e.account, sum(CASE e.side WHEN %s THEN e.amount ELSE -e.amount END) "
                                "FROM kdcdc.entries e JOIN kdcdc.vouchers v ON v.key = e.voucher_key "
                                "WHERE v.status = ANY(%s) GROUP BY 1", Side.DEBIT, list(IN_KINGDEE)):
        journal_tb[account] = net
    kingdee_tb: dict[str, Decimal] = defaultdict(Decimal)
    for account, debit, credit in client.execute_bill_query("GL_VOUCHER", ["FACCOUNTID.FNumber", "FDEBIT", "FCREDIT"],
                                                            limit=1_000_000):
        kingdee_tb[str(account)] += Decimal(str(debit)) - Decimal(str(credit))
    print("\ntrial balance (local currency): journal vs Kingdee")
    print(f"  {'account':<12} {'journal net':>16} {'Kingdee net':>16}")
    ties = True
    for account in sorted(set(journal_tb) | set(kingdee_tb)):
        j, k = journal_tb.get(account, Decimal(0)), kingdee_tb.get(account, Decimal(0))
        ties &= j == k
        print(f"  {account:<12} {j:>16,.2f} {k:>16,.2f}{'' if j == k else '   ← differs'}")
    jt, kt = sum(journal_tb.values(), Decimal(0)), sum(kingdee_tb.values(), Decimal(0))
    print(f"  {'total':<12} {jt:>16,.2f} {kt:>16,.2f}   (debits − credits: must be 0.00)")
    return ties and jt == 0 and kt == 0


def _problems(dsn: str, group: str) -> None:
    """Rejections by reason (mapping, checks, Kingdee) and dead letters by stage, each with an example."""
    from connector.journal import REJECTED_STAGE, VoucherStatus

    print("\nrejections (mapping and accounting checks):")
    for code, n, example in _q(dsn, "SELECT code, count(*), min(message) FROM kdcdc.rejections WHERE "
                                    "consumer_group = %s GROUP BY 1 ORDER BY 2 DESC", group):
        print(f"  {code:<22} {n:>5}  e.g. {example[:100]}")
    kd_rej = _q(dsn, "SELECT count(*), min(kingdee_messages) FROM kdcdc.vouchers WHERE status = %s",
                VoucherStatus.REJECTED_BY_KINGDEE)
    if kd_rej[0][0]:
        print(f"  {VoucherStatus.REJECTED_BY_KINGDEE:<22} {kd_rej[0][0]:>5}  e.g. {kd_rej[0][1][:100]}")
    print("\ndead letters (undecodable records):")
    for stage, n, reason in _q(dsn, "SELECT stage, count(*), min(reason) FROM kdcdc.dead_letters WHERE "
                                    "consumer_group = %s AND stage <> %s GROUP BY 1", group, REJECTED_STAGE):
        print(f"  {stage:<10} {n:>5}  {reason[:100]}")


def _a_voucher_to_look_at(dsn: str, sandbox_url: str) -> None:
    from connector.journal import VoucherStatus

    sample = _q(dsn, "SELECT key, kingdee_number, explanation FROM kdcdc.vouchers WHERE status = %s "
                     "ORDER BY journaled_at LIMIT 1", VoucherStatus.POSTED)
    if sample:
        key, number, expl = sample[0]
        print(f"\nlook at a voucher: {number} ({expl}) carries the key marker [kdcdc:{key}].")
        print("  run your own sandbox with `.venv/bin/kingdee-cdc sandbox` and query it like Kingdee:")
        print(f"  ExecuteBillQuery GL_VOUCHER FieldKeys=FBillNo,FACCOUNTID.FNumber,FDEBIT,FCREDIT "
              f"FilterString=\"FEXPLANATION like '%kdcdc:{key}%'\"  (this run's sandbox was {sandbox_url})")
