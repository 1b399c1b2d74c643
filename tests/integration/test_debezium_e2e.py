"""End to end on the real chain: business PostgreSQL → Debezium (Kafka Connect) → Kafka → kingdee-cdc → sandbox.

Rows that exist before Debezium starts arrive as a snapshot (``op=r``); later inserts, updates and deletes
stream. Every business row is checked against what Kingdee holds for it: the posted vouchers of a live
row add up to the row's amounts, a deleted row nets to zero, an updated row nets to its new amounts; every
row gets its feedback statuses; the journal holds exactly one outcome per Kafka record.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer

from harness.debezium import BusinessDatabases, KafkaConnect, connector_config
from harness.devstack import EmbeddedPostgres
from connector.feedback import FeedbackRelay
from connector.journal import Journal
from connector.kingdee.poster import Poster
from connector.sandbox import RunningSandbox, start_sandbox
from connector.mapping import load_rules
from tests.integration.helpers import RULES, client_for, make_pipeline, pos_amounts, record_counts, rows, \
    wait_for_records

pytestmark = pytest.mark.integration
MARKER = re.compile(r"\[kdcdc:([^\]]+)\]")


def expected_debit(system: str, row: dict[str, Any] | None) -> Decimal:
    """What the shipped rules debit for a business row (in CNY), from the row itself."""
    if row is None:
        return Decimal("0.00")
    if system == "pos":
        return Decimal(row["gross_amount"])
    if system == "purchasing":
        return Decimal(row["gross_amount"])
    return Decimal(row["gross_salary"]) + Decimal(row["social_insurance_company"])


@pytest.fixture
def business(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    with EmbeddedPostgres(tmp_path / "business", durable=False) as pg:
        yield pg


def test_business_changes_become_posted_vouchers_and_feedback(
        kafka_bootstrap: str, pg_dsn: str, business: EmbeddedPostgres, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    biz = BusinessDatabases(business.dsn()).create()
    cny: dict[str, Any] = {"currency": "CNY"}
    # -- rows that exist before Debezium starts: captured by the initial snapshot (op=r)
    snap_pos = [biz.insert("pos", lines=2, payment_method="CASH", **cny, **pos_amounts(g))
                for g in ("113.00", "226.00", "56.50")]
    snap_pur = [biz.insert("purchasing", currency="CNY", exchange_rate=Decimal("1.000000")) for _ in range(2)]
    snap_pay = [biz.insert("payroll") for _ in range(2)]

    connect = KafkaConnect(tmp_path / "connect", kafka_bootstrap,
                           [connector_config(s, "127.0.0.1", business.port) for s in biz.systems]).start()
    try:
        # The snapshot must be taken before the streaming changes below, or rows inserted now arrive as
        # snapshot reads (seen on a slow host: r for the new invoices, no r for the one deleted later).
        wait_for_records(kafka_bootstrap, {"pos.public.sales_order": 3, "pos.public.sales_order_line": 6,
                                           "purchasing.public.purchase_invoice": 2, "payroll.public.payroll_line": 2})
        # -- streaming: an order and its lines in one transaction, updates, deletes, a bad record
        new_pos = [biz.insert("pos", lines=3, payment_method="WECHAT", **cny, **pos_amounts(g))
                   for g in ("339.00", "1130.00", "45.20")]
        new_pur = [biz.insert("purchasing", currency="CNY", exchange_rate=Decimal("1.000000")) for _ in range(2)]
        # Debezium restarts mid-stream; changes made while it is down are picked up from its offsets.
        connect.stop()
        new_pay = [biz.insert("payroll") for _ in range(2)]
        connect.start()
        bad = biz.insert("pos", payment_method="CREDIT", customer_code=None, **cny, **pos_amounts("90.40"))
        biz.update("pos", snap_pos[0].row_id, **pos_amounts("141.25"))  # a snapshot row corrected
        biz.update("pos", new_pos[0].row_id, payment_method="CASH", **pos_amounts("339.00"))  # account change
        biz.update("pos", new_pos[2].row_id, status="PAID")  # no accounting change: nothing to post
        biz.delete("pos", new_pos[1].row_id)
        biz.delete("purchasing", snap_pur[0].row_id)  # a snapshot row cancelled
        pay_row = biz.rows["payroll"][new_pay[0].row_id]
        biz.update("payroll", new_pay[0].row_id, department_code="D03" if pay_row["department_code"] != "D03" else "D01")

        order_changes = 3 + 3 + 1 + 3 + 1   # r ×3, c ×3, bad c, u ×3, d
        expected = {"pos.public.sales_order": order_changes + 1,  # + the delete's tombstone
                    "pos.public.sales_order_line": 3 * 2 + 3 * 3 + 3 * 2,  # r, c, and the delete's (d + tombstone)
                    "purchasing.public.purchase_invoice": 2 + 2 + 2,  # r ×2, c ×2, d + tombstone
                    "payroll.public.payroll_line": 2 + 2 + 1}
        wait_for_records(kafka_bootstrap, expected)
        assert biz.expected_records == expected  # the harness's own bookkeeping agrees with the hand count
    finally:
        connect.stop()
        biz.close()

    topics = list(expected)
    # At least once from Debezium: a restart may re-emit changes; they must become DUPLICATE, never vouchers.
    produced = record_counts(kafka_bootstrap, topics)
    group = f"e2e-{uuid.uuid4().hex[:6]}"
    make_pipeline(kafka_bootstrap, pg_dsn, topics, group=group).run(max_idle_s=3)

    # Exactly one outcome per Kafka record, offsets at the log end.
    outcomes = rows(pg_dsn, "SELECT topic, count(*), count(DISTINCT kafka_offset) FROM kdcdc.event_records "
                            "WHERE consumer_group = %s GROUP BY topic", group)
    assert {t: (n, d) for t, n, d in outcomes} == {t: (n, n) for t, n in produced.items()}
    offsets = dict(rows(pg_dsn, "SELECT topic, next_offset FROM kdcdc.offsets WHERE consumer_group = %s", group))
    assert offsets == produced
    unbalanced = rows(pg_dsn, "SELECT voucher_key FROM kdcdc.entries GROUP BY voucher_key HAVING "
                              "sum(amount) FILTER (WHERE side = 'debit') <> sum(amount) FILTER (WHERE side = 'credit')")
    assert unbalanced == []
    ops = rows(pg_dsn, "SELECT op, outcome, count(*) FROM kdcdc.event_records WHERE consumer_group = %s AND "
                       "topic = 'pos.public.sales_order' GROUP BY 1, 2 ORDER BY 1, 2", group)
    assert ("r", "VOUCHERED", 3) in ops and ("d", "VOUCHERED", 1) in ops
    assert ("u", "VOUCHERED", 2) in ops and ("u", "SKIPPED", 1) in ops  # the no-op update posts nothing
    assert ("c", "REJECTED", 1) in ops  # the credit sale without a customer
    # The order lines have no rule of their own: recorded as skipped, nothing lost.
    lines = rows(pg_dsn, "SELECT DISTINCT outcome FROM kdcdc.event_records WHERE topic = 'pos.public.sales_order_line'")
    assert lines == [("SKIPPED",)]

    sb: RunningSandbox = start_sandbox(seed=3)
    try:
        journal = Journal(pg_dsn, group=group)
        with client_for(sb) as client:
            Poster(journal, client, books=load_rules(RULES).ledger.books).run(exit_when_idle=True)
        kingdee = sb.server.state.vouchers.values()
        by_key: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for rec in kingdee:
            m = MARKER.search(rec["model"]["FEntity"][0]["FEXPLANATION"])
            assert m, rec["model"]["FEntity"][0]
            by_key[m.group(1)].append(rec)
    finally:
        sb.stop()
    assert all(len(v) == 1 for v in by_key.values()), "a voucher reached Kingdee twice"

    statuses = dict(rows(pg_dsn, "SELECT status, count(*) FROM kdcdc.vouchers GROUP BY status"))
    assert set(statuses) <= {"POSTED", "REVERSED"}, statuses

    # Row by row: what Kingdee holds for each business row equals the row's current amounts.
    checked = 0
    for system, live in biz.rows.items():
        touched = {c.row_id for c in biz.changes if c.system == system}
        for row_id in touched:
            if system == "pos" and row_id == bad.row_id:
                continue
            keys = [k for (k,) in rows(pg_dsn, "SELECT key FROM kdcdc.vouchers WHERE source_system = %s "
                                               "AND source_pk = %s", system, json.dumps({"id": row_id}, separators=(",", ":")))]
            assert keys, (system, row_id)
            debit = sum((Decimal(str(e["FDEBIT"])) for k in keys for rec in by_key[k] for e in rec["model"]["FEntity"]),
                        Decimal("0.00"))
            assert all(by_key[k] for k in keys), f"{system} {row_id}: journaled but not in Kingdee"
            assert debit == expected_debit(system, live.get(row_id)), (system, row_id, debit)
            checked += 1
    assert checked == 3 + 2 + 2 + 3 + 2 + 2

    # The updated snapshot row: original reversed in Kingdee (red ink), new amounts posted.
    snap_keys = rows(pg_dsn, "SELECT kind, status, debit_total FROM kdcdc.vouchers WHERE source_system = 'pos' "
                             "AND source_pk = %s ORDER BY journaled_at, key", f'{{"id":{snap_pos[0].row_id}}}')
    assert sorted((k, s, str(d)) for k, s, d in snap_keys) == sorted(
        [("original", "REVERSED", "113.00"), ("reversal", "POSTED", "-113.00"), ("original", "POSTED", "141.25")])
    # The no-op update posted nothing new.
    assert len(rows(pg_dsn, "SELECT 1 FROM kdcdc.vouchers WHERE source_pk = %s AND source_system = 'pos'",
                    f'{{"id":{new_pos[2].row_id}}}')) == 1

    # Feedback reaches each system's topic with every row's statuses.
    prefix = f"fb-{uuid.uuid4().hex[:6]}"
    FeedbackRelay(journal, {"bootstrap.servers": kafka_bootstrap, "log_level": "3"},
                  topic_prefix=prefix).run(exit_when_idle=True)
    journal.close()
    feedback: dict[tuple[str, str], list[str]] = defaultdict(list)
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"r-{uuid.uuid4().hex[:6]}",
                         "auto.offset.reset": "earliest", "log_level": "3"})
    consumer.subscribe([f"{prefix}.{s}" for s in biz.systems])
    want = rows(pg_dsn, "SELECT count(*) FROM kdcdc.outbox")[0][0]
    got = 0
    deadline = time.monotonic() + 60
    while got < want and time.monotonic() < deadline:
        for msg in consumer.consume(500, 0.5):
            if msg.error() is None:
                body = json.loads(msg.value() or b"null")
                feedback[(body["source"]["system"], body["source"]["pk"])].append(body["status"])
                got += 1
    consumer.close()
    assert got == want
    assert "REJECTED" in feedback[("pos", f'{{"id":{bad.row_id}}}')]
    deleted = feedback[("pos", f'{{"id":{new_pos[1].row_id}}}')]
    assert deleted.count("POSTED") == 2 and "REVERSED" in deleted  # posted, then its reversal posted
    for c in snap_pay + new_pay + snap_pur + new_pur:
        assert "POSTED" in feedback[(c.system, f'{{"id":{c.row_id}}}')]
    with capsys.disabled():
        print(f"\n  debezium e2e: {sum(produced.values())} Kafka records from {len(biz.changes)} business "
              f"changes; {len(by_key)} Kingdee vouchers; {checked} rows checked against Kingdee; "
              f"{got} feedback events")
