"""Summary vouchers (汇总凭证) against one voucher per document, on the same POS change events.

One Kafka topic of POS receipts (JSON with schemas, as Debezium writes them; 20 stores, 5 payment methods,
one day, a correction after every 10th receipt) is journaled twice by the real pipeline, in this process, into
fresh journals on one durable PostgreSQL: with the shipped POS rule (a voucher per receipt) and with the
summarizing example rule (``deploy/examples/rules/pos-sale-summary.yaml``: a voucher per book, day, store and
payment method). Then the summaries are closed and everything is posted into the sandbox (a process of its
own, 20 ms per call, BatchSave ×100, 4 calls in flight). Reported: events/s journaled in each mode (from the
first batch to the last commit), the close, the posting time and Kingdee calls and vouchers per 10,000 events.

``python -m bench.summaries [--events N]`` prints the section alone.
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time
import uuid
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from bench.poster import _client, sandbox
from harness import samples
from harness.devstack import REPO_ROOT, EmbeddedPostgres, KafkaBroker

PARTITIONS = 3
STORES = [f"S{i:02d}" for i in range(1, 21)]
METHODS = ["CASH", "WECHAT", "ALIPAY", "CARD", "CREDIT"]


def records(n: int, seed: int = 3) -> list[tuple[bytes, bytes]]:
    """``n`` POS change events: receipts, and after every 10th receipt a correction of it."""
    rng = random.Random(seed)
    out: list[tuple[bytes, bytes]] = []
    i = lsn = 0
    while len(out) < n:
        i += 1
        gross = Decimal(rng.randint(1_000, 300_000)) / 100
        net = (gross / Decimal("1.13")).quantize(Decimal("0.01"))
        method = METHODS[rng.randrange(len(METHODS))]
        row = {"id": i, "order_no": f"SO{i:07d}", "channel": "STORE", "store_code": STORES[i % 20],
               "company_code": "100", "customer_code": "C0001" if method == "CREDIT" else None,
               "order_date": date(2026, 11, 12), "currency": "CNY", "net_amount": net, "tax_amount": gross - net,
               "gross_amount": gross, "points_deduction": Decimal("0.00"), "payment_method": method,
               "status": "PAID", "created_at": None, "updated_at": None}
        lsn += 136
        env = samples.envelope(samples.POS, "c", before=None, after=row, lsn=lsn, tx_id=lsn)
        out.append((samples.json_key({"id": i}), samples.encode_json(samples.POS, env, schemas=True)))
        if i % 10 == 0 and len(out) < n:
            changed = {**row, "gross_amount": gross + 1, "net_amount": net + 1}
            lsn += 136
            env = samples.envelope(samples.POS, "u", before=row, after=changed, lsn=lsn, tx_id=lsn)
            out.append((samples.json_key({"id": i}), samples.encode_json(samples.POS, env, schemas=True)))
    return out


def _rules(workdir: Path, summarize: bool) -> Path:
    target = workdir / ("rules-summary" if summarize else "rules-single")
    shutil.copytree(REPO_ROOT / "rules", target, ignore=shutil.ignore_patterns("golden", "__init__.py", "__pycache__"))
    if summarize:
        shutil.copy(REPO_ROOT / "deploy" / "examples" / "rules" / "pos-sale-summary.yaml", target / "pos-sale.yaml")
    return target


def _mode(bootstrap: str, dsn: str, topic: str, n: int, rules_dir: Path, sb: Any) -> dict[str, Any]:
    """Journal the topic into a fresh journal, close the summaries, post everything; times and counts."""
    from connector.events import Decoder
    from connector.journal import BatchResult, Journal, SummaryState, list_summaries
    from connector.kingdee.poster import Poster, PosterOptions
    from connector.mapping import Mapper, load_rules
    from connector.pipeline import Pipeline, PipelineOptions, Processor
    from connector.summaries import SummaryCloser

    rules = load_rules(rules_dir)
    journal = Journal(dsn, schema=f"b{uuid.uuid4().hex[:8]}", group=f"bench-{uuid.uuid4().hex[:6]}")
    journal.migrate()
    span: list[float] = []

    def on_batch(result: BatchResult, dt: float) -> None:
        now = time.monotonic()
        span.append(now - dt)
        span.append(now)
    pipe = Pipeline(consumer_conf={"bootstrap.servers": bootstrap, "group.id": journal.group, "log_level": "3"},
                    topics=[topic], journal=journal, processor=Processor(Decoder(), Mapper(rules)),
                    options=PipelineOptions(dead_letter_topic="", batch_size=2000), on_batch=on_batch)
    pipe.run(max_idle_s=2.0)
    if pipe.stats.records != n:
        raise RuntimeError(f"journaled {pipe.stats.records} of {n} events")
    journaled_s = max(span) - min(span)
    closer = SummaryCloser(Journal(dsn, schema=journal.schema, group=journal.group), rules=rules, ledger=rules.ledger)
    t = time.monotonic()
    closed = [closer.close(s.id) for s in list_summaries(closer.journal, state=SummaryState.OPEN, limit=1_000_000)]
    close_s = time.monotonic() - t
    closer.journal.close()
    with _client(sb, 4) as client:
        poster = Poster(Journal(dsn, schema=journal.schema, group=journal.group), client, books=rules.ledger.books,
                        options=PosterOptions(batch_size=100, concurrency=4))
        held_before = sb.count()
        t = time.monotonic()
        stats = poster.run(idle_sleep_s=0.05, exit_when_idle=True)
        post_s = time.monotonic() - t
        calls = client.calls
        poster.journal.close()
    held = sb.count() - held_before
    if held != stats.posted:
        raise RuntimeError(f"{stats.posted} vouchers posted but {held} arrived in the sandbox")
    journal.close()
    per_10k = 10_000 / n
    return {"events": n, "journal_s": journaled_s,
            "events_per_s": n / journaled_s, "summaries": len(closed), "close_s": close_s,
            "vouchers_posted": stats.posted, "post_s": post_s, "kingdee_calls": calls,
            "calls_per_10k_events": calls * per_10k, "vouchers_per_10k_events": stats.posted * per_10k}


def run(n: int = 20_000) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="kdcdc-bench-summaries-"))
    try:
        with KafkaBroker(workdir / "kafka") as broker, \
                EmbeddedPostgres(workdir / "pg", durable=True) as pg, sandbox(20.0, seed=2) as sb:
            topic = f"bench-pos-{uuid.uuid4().hex[:6]}"
            admin = AdminClient({"bootstrap.servers": broker.bootstrap})
            admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])[topic].result(30)
            producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": "20", "log_level": "3"})
            for k, v in records(n):
                producer.produce(topic, key=k, value=v)
                producer.poll(0)
            assert producer.flush(120) == 0
            single = _mode(broker.bootstrap, pg.dsn(), topic, n, _rules(workdir, False), sb)
            summary = _mode(broker.bootstrap, pg.dsn(), topic, n, _rules(workdir, True), sb)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {"single": single, "summary": summary,
            "journal_ratio": summary["events_per_s"] / single["events_per_s"],
            "calls_ratio": single["kingdee_calls"] / max(1, summary["kingdee_calls"])}


def markdown(r: dict[str, Any]) -> str:
    s, m = r["single"], r["summary"]

    def row(label: str, x: dict[str, Any]) -> str:
        return (f"| {label} | {x['events_per_s']:,.0f} | {x['summaries']:,} | {x['close_s']:.2f} s | "
                f"{x['vouchers_posted']:,} | {x['post_s']:.1f} s | {x['calls_per_10k_events']:,.1f} | "
                f"{x['vouchers_per_10k_events']:,.1f} |")
    return "\n".join([
        "| POS rule | events/s journaled | summaries closed | close | vouchers posted | posting | Kingdee calls "
        "per 10,000 events | vouchers per 10,000 events |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        row("one voucher per receipt (rules/pos-sale.yaml)", s),
        row("summary vouchers (deploy/examples/rules/pos-sale-summary.yaml)", m),
        f"| summary ÷ per receipt | {r['journal_ratio']:.2f}× | | | | | ÷ {r['calls_ratio']:,.0f} | |",
    ])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.summaries", description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--events", type=int, default=20_000)
    args = ap.parse_args(argv)
    r = run(args.events)
    print(f"{r['single']['events']:,} POS change events (20 stores, 5 payment methods, one day)\n")
    print(markdown(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
