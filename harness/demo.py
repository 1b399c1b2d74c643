"""``make demo``: the whole product on embedded defaults, on one machine, in a few minutes.

Starts a real Kafka broker, PostgreSQL (the journal, and the business databases), Kafka Connect with the
real Debezium PostgreSQL connector, and the Kingdee sandbox. Business traffic is written with SQL into the
POS (orders with lines), purchasing and payroll databases — rows that exist before Debezium starts arrive
as its snapshot, the rest stream — while the MES and bank systems publish Debezium-format Avro directly,
with a few corrupted records. The exactly-once pipeline, the poster and the feedback relay run with a
live progress line; the summary shows outcomes, vouchers by scenario and status, a trial balance that
ties the journal to Kingdee, the journal to the *source databases'* own totals, rejections with reasons,
dead letters, feedback, metrics and how to look at a voucher.

``--source synthetic`` skips Debezium and publishes every system's events directly (no Java for Connect).
The schema registry is the in-process ``mock://`` one (producer and consumer share this process).
Existing services can be used instead: ``KDCDC_KAFKA__BOOTSTRAP_SERVERS``, ``KDCDC_JOURNAL__DSN``.
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
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from tqdm import tqdm

from harness import samples
from harness.devstack import REPO_ROOT


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


def run_demo(*, events: int = 5000, wire: str = "avro", source: str = "debezium",
             workdir: Path | None = None) -> int:
    from confluent_kafka.schema_registry import SchemaRegistryClient

    from harness.devstack import EmbeddedPostgres, KafkaBroker
    from connector.events import Decoder, RegistrySchemas
    from connector.journal import Journal
    from connector.kingdee import KingdeeClient, KingdeeCredentials
    from connector.kingdee.poster import Poster, PosterOptions
    from connector.sandbox import start_sandbox
    from connector.mapping import Mapper, load_rules
    from connector.ops import Metrics, OpsServer
    from connector.pipeline import Pipeline, PipelineOptions, Processor

    own_dir = workdir is None
    base = Path(tempfile.mkdtemp(prefix="kdcdc-demo-")) if workdir is None else workdir
    bootstrap = os.environ.get("KDCDC_KAFKA__BOOTSTRAP_SERVERS")
    dsn = os.environ.get("KDCDC_JOURNAL__DSN")
    broker = pg = sandbox = business_pg = connect = ops = None
    biz = None
    t0 = time.monotonic()
    try:
        if bootstrap is None:
            print("starting Apache Kafka (KRaft, single node, jars from Maven Central) …", flush=True)
            broker = KafkaBroker(base / "kafka").start()
            bootstrap = broker.bootstrap
        if dsn is None:
            print("starting PostgreSQL 18 (embedded) for the journal …", flush=True)
            pg = EmbeddedPostgres(base / "postgres").start()
            dsn = pg.dsn()
        sandbox = start_sandbox()
        registry = SchemaRegistryClient.new_client({"url": f"mock://kingdee-cdc-demo-{uuid.uuid4().hex[:6]}"})
        counts: dict[str, int] = {}
        topics: list[str] = []
        traffic_done = threading.Event()
        if source == "debezium":
            from harness.debezium import BusinessDatabases, KafkaConnect, connector_config

            print("starting the business databases (PostgreSQL, logical replication) …", flush=True)
            business_pg = EmbeddedPostgres(base / "business").start()
            biz = BusinessDatabases(business_pg.dsn()).create()
            n_debezium = max(30, events * 6 // 10)
            pre = max(10, n_debezium // 10)
            for _ in biz.traffic(pre, seed=1):  # rows that exist before Debezium starts: its snapshot
                pass
            biz.expect_snapshot()
            topics = biz.topics()
            _create_topics(bootstrap, topics)
            print("starting Kafka Connect with the Debezium PostgreSQL connector (jars from Maven Central) …",
                  flush=True)
            connect = KafkaConnect(base / "connect", bootstrap,
                                   [connector_config(sys, "127.0.0.1", business_pg.port) for sys in biz.systems]
                                   ).start()

            def write_traffic() -> None:
                assert biz is not None
                try:
                    for _ in biz.traffic(n_debezium - pre, seed=2):
                        pass
                finally:
                    traffic_done.set()
            synthetic: tuple[samples.SampleTable, ...] = (samples.MES, samples.BANK)
            n_synthetic = max(10, events - n_debezium)
        else:
            traffic_done.set()
            synthetic = samples.TABLES
            n_synthetic = events
        counts = _produce(bootstrap, registry, n_synthetic, wire, synthetic)
        topics += list(counts)
        print(f"stack ready in {time.monotonic() - t0:.1f}s: kafka {bootstrap} · journal {dsn} · "
              f"Kingdee sandbox {sandbox.url}" + (f" · Debezium REST {connect.rest_url}" if connect else ""),
              flush=True)
        print(f"published {sum(counts.values()):,} Debezium-format events ({wire}) directly for "
              + ", ".join(f"{t} {n:,}" for t, n in counts.items()), flush=True)
        if biz is not None:
            print(f"business databases: {len(biz.changes):,} rows before Debezium started (snapshot); writing "
                  f"{n_debezium - pre:,} more changes with SQL while the pipeline runs", flush=True)

        rules = load_rules(REPO_ROOT / "rules")
        group = f"kingdee-cdc-demo-{uuid.uuid4().hex[:6]}"
        journal = Journal(dsn, group=group)
        metrics = Metrics()
        ops = OpsServer(metrics, port=0).start()
        pipeline = Pipeline(
            consumer_conf={"bootstrap.servers": bootstrap, "group.id": group, "log_level": "2"},
            topics=topics, journal=journal,
            processor=Processor(Decoder(RegistrySchemas(registry)), Mapper(rules)),
            options=PipelineOptions(dead_letter_topic="kingdee-cdc.demo.dlq", batch_size=2000), metrics=metrics)
        cfg = sandbox.server.state.config
        app_id = next(iter(cfg.apps))
        client = KingdeeClient(KingdeeCredentials(server_url=sandbox.url, acct_id=cfg.data_centre,
                                                  username="integration", app_id=app_id,
                                                  app_secret=cfg.apps[app_id]["secret"]), rate_limit_per_s=500)
        poster = Poster(Journal(dsn, group=group), client, books=rules.ledger.books,
                        options=PosterOptions(batch_size=100))
        from connector.feedback import FeedbackRelay

        relay = FeedbackRelay(Journal(dsn, group=group), {"bootstrap.servers": bootstrap, "log_level": "2"})
        journal.migrate()  # before the threads start: they all read the journal
        threads = [threading.Thread(target=pipeline.run, name="pipeline", daemon=True),
                   threading.Thread(target=lambda: poster.run(idle_sleep_s=0.3), name="poster", daemon=True),
                   threading.Thread(target=lambda: relay.run(idle_sleep_s=0.3), name="feedback", daemon=True)]
        if source == "debezium":
            threads.append(threading.Thread(target=write_traffic, name="business-traffic", daemon=True))
        for th in threads:
            th.start()
        t1 = time.monotonic()
        done = posted = 0
        total = sum(counts.values()) + (sum(biz.expected_records.values()) if biz else 0)
        from confluent_kafka import Consumer

        watermarks = Consumer({"bootstrap.servers": bootstrap, "group.id": "kdcdc-demo-watermarks",
                               "log_level": "0"})  # one client for the progress line, not one per tick
        with tqdm(total=total, unit="ev", desc="journaled", dynamic_ncols=True, mininterval=1.0) as bar:
            while time.monotonic() - t1 < 900:
                time.sleep(1.0)
                if not all(th.is_alive() for th in threads if th.name != "business-traffic"):
                    print("\na pipeline thread stopped unexpectedly; see the error above", flush=True)
                    break
                expected = sum(counts.values()) + (sum(biz.expected_records.values()) if biz else 0)
                in_kafka = _log_end(watermarks, topics)
                done, rejected = _q(dsn, "SELECT count(*), count(*) FILTER (WHERE outcome = 'REJECTED') "
                                         "FROM kdcdc.event_log WHERE consumer_group = %s", group)[0]
                stat = dict(_q(dsn, "SELECT status, count(*) FROM kdcdc.vouchers GROUP BY 1"))
                posted = stat.get("POSTED", 0) + stat.get("REVERSED", 0)
                waiting = stat.get("JOURNALED", 0) + stat.get("POSTING", 0)
                unsent = _q(dsn, "SELECT count(*) FROM kdcdc.outbox WHERE sent_at IS NULL")[0][0]
                bar.total = max(expected, in_kafka)
                bar.n = done
                bar.set_postfix_str(f"in Kafka {in_kafka:,} · lag {in_kafka - done:,} · posted {posted:,} · "
                                    f"waiting {waiting:,} · rejected {rejected:,} · rejected by Kingdee "
                                    f"{stat.get('REJECTED_BY_KINGDEE', 0):,}")
                if (traffic_done.is_set() and in_kafka >= expected and done >= in_kafka and waiting == 0
                        and unsent == 0):
                    total = in_kafka
                    break
        elapsed = time.monotonic() - t1
        watermarks.close()
        pipeline.stop()
        poster.stop()
        relay.stop()
        for th in threads:
            th.join(30)
        ok = _summary(dsn, group, total, elapsed, client, sandbox.url)
        source_ok = True
        if biz is not None:
            source_ok = _source_ties(dsn, biz, [r.spec.rounding.account for r in rules.rules if r.spec.rounding])
        print(f"\nresult: {'OK' if ok and source_ok else 'FAILED'} — every event has one outcome, every voucher is "
              f"settled in Kingdee, the journal ties to Kingdee{' and to the source databases' if biz else ''}"
              f"{'' if ok and source_ok else ': NOT ALL OF THIS HOLDS (see above)'}.")
        ok &= source_ok
        print(f"\nmetrics: this run served Prometheus metrics at http://127.0.0.1:{ops.port}/metrics "
              "(`kingdee-cdc run` serves them on metrics.port, default 9108); the Grafana dashboard and alert "
              "rules are in deploy/grafana/ and deploy/prometheus/ (docs/operations.md).")
        from connector.feedback import tail

        print("\nfeedback the POS system receives (kingdee-cdc.feedback.pos, first 4 — "
              "`kingdee-cdc feedback tail --source pos`):")
        tail(bootstrap, "kingdee-cdc.feedback.pos", limit=4, timeout_s=5, printer=lambda e: print(
            f"  {e['status']:<12} {e['source'].get('table')} pk={e['source'].get('pk')} "
            f"{(e.get('kingdee') or {}).get('number') or ''}"))
        client.close()
        return 0 if ok else 1
    finally:
        if ops:
            ops.stop()
        if connect:
            connect.stop()
        if biz:
            biz.close()
        if business_pg:
            business_pg.stop()
        if sandbox:
            sandbox.stop()
        if broker:
            broker.stop()
        if pg:
            pg.stop()
        if own_dir:
            shutil.rmtree(base, ignore_errors=True)


def _source_ties(dsn: str, biz: Any, rounding_accounts: list[str]) -> bool:
    """The journal's posted debits per source system and currency against the business databases' own totals
    (explicit rounding-difference lines are the mapping's own and are left out)."""
    journal: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for system, currency, amount in _q(
            dsn, "SELECT v.source_system, e.currency, sum(e.amount_for) FROM kdcdc.entries e "
                 "JOIN kdcdc.vouchers v ON v.key = e.voucher_key WHERE v.status IN ('POSTED', 'REVERSED') "
                 "AND e.side = 'debit' AND v.source_system = ANY(%s) AND NOT e.account = ANY(%s) GROUP BY 1, 2",
            list(biz.systems), rounding_accounts):
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


def _summary(dsn: str, group: str, total: int, elapsed: float, client: Any, sandbox_url: str) -> bool:
    outcomes = dict(_q(dsn, "SELECT outcome, count(*) FROM kdcdc.event_log WHERE consumer_group = %s GROUP BY 1",
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
    # Trial balance of the journal (posted + reversed) vs what Kingdee holds, per account.
    journal_tb: dict[str, Decimal] = defaultdict(Decimal)
    for account, net in _q(dsn, "SELECT e.account, sum(CASE e.side WHEN 'debit' THEN e.amount ELSE -e.amount END) "
                                "FROM kdcdc.entries e JOIN kdcdc.vouchers v ON v.key = e.voucher_key "
                                "WHERE v.status IN ('POSTED', 'REVERSED') GROUP BY 1"):
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
    ties &= jt == 0 and kt == 0
    print("\nrejections (mapping and accounting checks):")
    for code, n, example in _q(dsn, "SELECT code, count(*), min(message) FROM kdcdc.rejections WHERE "
                                    "consumer_group = %s GROUP BY 1 ORDER BY 2 DESC", group):
        print(f"  {code:<22} {n:>5}  e.g. {example[:100]}")
    kd_rej = _q(dsn, "SELECT count(*), min(kingdee_messages) FROM kdcdc.vouchers WHERE status = 'REJECTED_BY_KINGDEE'")
    if kd_rej[0][0]:
        print(f"  REJECTED_BY_KINGDEE    {kd_rej[0][0]:>5}  e.g. {kd_rej[0][1][:100]}")
    print("\ndead letters (undecodable records):")
    for stage, n, reason in _q(dsn, "SELECT stage, count(*), min(reason) FROM kdcdc.dead_letters WHERE "
                                    "consumer_group = %s AND stage <> 'TASK_PUT' GROUP BY 1", group):
        print(f"  {stage:<10} {n:>5}  {reason[:100]}")
    feedback = dict(_q(dsn, "SELECT status, count(*) FROM kdcdc.outbox WHERE sent_at IS NOT NULL GROUP BY 1"))
    print("\nfeedback relayed to kingdee-cdc.feedback.<system>: "
          + "  ".join(f"{k} {v:,}" for k, v in sorted(feedback.items())))
    sample = _q(dsn, "SELECT key, kingdee_number, explanation FROM kdcdc.vouchers WHERE status = 'POSTED' "
                     "ORDER BY journaled_at LIMIT 1")
    if sample:
        key, number, expl = sample[0]
        print(f"\nlook at a voucher: {number} ({expl}) carries the key marker [kdcdc:{key}].")
        print("  run your own sandbox with `.venv/bin/kingdee-cdc sandbox` and query it like Kingdee:")
        print(f"  ExecuteBillQuery GL_VOUCHER FieldKeys=FBillNo,FACCOUNTID.FNumber,FDEBIT,FCREDIT "
              f"FilterString=\"FEXPLANATION like '%kdcdc:{key}%'\"  (this run's sandbox was {sandbox_url})")
    complete = done == total and not _q(dsn, "SELECT 1 FROM kdcdc.vouchers WHERE status IN ('JOURNALED', 'POSTING') "
                                             "LIMIT 1")
    if not complete:
        print("\nINCOMPLETE: some events have no outcome yet, or some vouchers are not settled in Kingdee.")
    return complete and ties
