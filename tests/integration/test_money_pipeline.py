"""Money correctness through the real pipeline (Kafka + PostgreSQL): a row read again posts nothing across
restarts and replays, whatever decimal mode the re-read uses; a cutover records history as opening state."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from connector.events import Decoder
from connector.journal import Journal
from connector.mapping import Mapper, load_rules
from connector.mapping._golden import golden_record, load_table_schemas
from connector.pipeline import Processor
from connector.replay import replay
from tests.integration.helpers import RULES, make_pipeline, rows

SCHEMAS = load_table_schemas(RULES.parent / "schemas")
ORDER: dict[str, Any] = {"order_no": "SO", "channel": "STORE", "company_code": "100", "customer_code": None,
                         "order_date": "2026-11-12", "currency": "CNY", "net_amount": "100.00", "tax_amount": "13.00",
                         "gross_amount": "113.00", "points_deduction": "0.00", "payment_method": "CASH",
                         "status": "PAID"}


class Orders:
    """POS order changes as Debezium's JSON converter writes them, in a chosen decimal mode."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.producer = Producer({"bootstrap.servers": bootstrap, "log_level": "3"})
        self.lsn = 1000
        self.sent = 0

    def send(self, op: str, oid: int, mode: str, **changes: Any) -> None:
        self.lsn += 10
        row = {**ORDER, "id": oid, "order_no": f"SO{oid}", **changes}
        spec = {"op": op, "source": {"system": "pos", "table": "sales_order", "lsn": self.lsn,
                                     "snapshot": "true" if op == "r" else "false"},
                "key": {"id": oid}, "before" if op == "d" else "after": row}
        value, key = golden_record(spec, row_type=SCHEMAS[("pos", "sales_order")], mode=mode)
        self.producer.produce(self.topic, key=key, value=value)
        self.sent += 1

    def flush(self) -> None:
        assert self.producer.flush(30) == 0


def vouchers(dsn: str) -> list[tuple[str, str, str]]:
    return rows(dsn, "SELECT source_pk, kind, status FROM kdcdc.vouchers ORDER BY seq")


def test_a_row_read_again_posts_nothing_across_restarts_snapshots_and_replays(
        kafka_bootstrap: str, topic_factory: Callable[..., str], pg_dsn: str) -> None:
    topic = topic_factory("money")
    group = f"g-{uuid.uuid4().hex[:6]}"
    src = Orders(kafka_bootstrap, topic)
    src.send("c", 1, "precise")
    src.send("c", 2, "precise")
    src.flush()
    make_pipeline(kafka_bootstrap, pg_dsn, [topic], group=group).run(max_idle_s=2)
    assert vouchers(pg_dsn) == [('{"id":1}', "original", "JOURNALED"), ('{"id":2}', "original", "JOURNALED")]
    # A restart, then a new snapshot reads both rows again — in string mode this time — and order 2 changed.
    src.send("r", 1, "string")
    src.send("r", 2, "double", net_amount="90.00", tax_amount="11.70", gross_amount="101.70")
    src.send("r", 1, "double")  # and an incremental snapshot reads order 1 once more
    src.flush()
    make_pipeline(kafka_bootstrap, pg_dsn, [topic], group=group).run(max_idle_s=2)
    assert vouchers(pg_dsn) == [('{"id":1}', "original", "JOURNALED"), ('{"id":2}', "original", "JOURNALED"),
                                ('{"id":2}', "reversal", "JOURNALED"), ('{"id":2}', "original", "JOURNALED")]
    log = rows(pg_dsn, "SELECT kafka_offset, outcome, detail FROM kdcdc.event_records WHERE consumer_group = %s "
                       "ORDER BY kafka_offset", group)
    assert [o for _, o, _ in log] == ["VOUCHERED", "VOUCHERED", "SKIPPED", "VOUCHERED", "SKIPPED"]
    assert "unchanged" in log[2][2] and "unchanged" in log[4][2]
    # Replaying the whole topic in another consumer group adds nothing: every change is already journaled.
    journal = Journal(pg_dsn, group=f"{group}-replay")
    summary = replay(journal=journal, processor=Processor(Decoder(), Mapper(load_rules(RULES))),
                     kafka_conf={"bootstrap.servers": kafka_bootstrap, "log_level": "3"}, topic=topic, progress=False)
    journal.close()
    assert summary.records == src.sent and summary.new == 0
    assert len(vouchers(pg_dsn)) == 4


def test_a_cutover_records_history_as_opening_state_that_later_changes_reverse(
        kafka_bootstrap: str, topic_factory: Callable[..., str], pg_dsn: str, tmp_path: Path) -> None:
    import shutil

    rules = tmp_path / "rules"
    shutil.copytree(RULES, rules, ignore=shutil.ignore_patterns("golden"))
    (rules / "ledger.yaml").write_text((rules / "ledger.yaml").read_text("utf-8") + "cutover:\n  pos: {date: 2026-11-15}\n",
                                       "utf-8")
    topic = topic_factory("cutover")
    src = Orders(kafka_bootstrap, topic)
    src.send("r", 1, "precise", order_date="2026-10-20")  # years of history: October is even closed
    src.send("r", 2, "precise", order_date="2026-11-16")  # after the cutover: posted
    src.send("u", 1, "precise", order_date="2026-10-20", payment_method="WECHAT")  # a change after the cutover
    src.flush()
    make_pipeline(kafka_bootstrap, pg_dsn, [topic], rules=rules).run(max_idle_s=2)
    got = rows(pg_dsn, "SELECT source_pk, kind, status, voucher_date::text, explanation FROM kdcdc.vouchers ORDER BY seq")
    assert got == [
        ('{"id":1}', "original", "OPENING", "2026-10-20", "POS SO1 销售收入"),
        ('{"id":2}', "original", "JOURNALED", "2026-11-16", "POS SO2 销售收入"),
        # the correction reverses the opening state and reposts, both in the first open period
        ('{"id":1}', "reversal", "JOURNALED", "2026-11-01", "冲销 POS SO1 销售收入"),
        ('{"id":1}', "original", "JOURNALED", "2026-11-01", "POS SO1 销售收入"),
    ]
    assert not rows(pg_dsn, "SELECT 1 FROM kdcdc.rejections")


def test_text_postgresql_cannot_store_is_rejected_with_a_reason_and_the_pipeline_goes_on(
        kafka_bootstrap: str, topic_factory: Callable[..., str], pg_dsn: str) -> None:
    # MySQL text may hold NUL characters (Debezium's JSON writes them as \u0000); PostgreSQL text and jsonb
    # cannot store them. A row carrying one in a text the voucher uses is rejected, saying where (the text shown
    # with \u0000); a NUL that decides nothing booked is an ordinary rejection; the orders around them post.
    # Before, the batch failed to journal and the pipeline stopped on it.
    topic = topic_factory("nul")
    group = f"g-{uuid.uuid4().hex[:6]}"
    src = Orders(kafka_bootstrap, topic)
    src.send("c", 1, "string")
    src.send("c", 2, "string", order_no="SO\x002")  # in the voucher's explanation
    src.send("c", 3, "string", payment_method="CREDIT", customer_code="C\x00003")  # a dimension
    src.send("c", 4, "string", payment_method="CA\x00SH")  # no account for it: the rejection quotes it
    src.send("c", 5, "string")
    src.flush()
    make_pipeline(kafka_bootstrap, pg_dsn, [topic], group=group).run(max_idle_s=2)
    log = rows(pg_dsn, "SELECT kafka_offset, outcome FROM kdcdc.event_records WHERE consumer_group = %s "
                       "ORDER BY kafka_offset", group)
    assert log == [(0, "VOUCHERED"), (1, "REJECTED"), (2, "REJECTED"), (3, "REJECTED"), (4, "VOUCHERED")]
    found: dict[str, list[tuple[str, str, str, str]]] = {}
    for pk, code, field, value, message in rows(pg_dsn, "SELECT source_pk, code, field, value, message "
                                                        "FROM kdcdc.rejections ORDER BY id"):
        found.setdefault(pk, []).append((code, field, value, message))
    # every text that carries the order number says so (the header and each line's explanation)
    assert {c for c, *_ in found['{"id":2}']} == {"INVALID_TEXT"}
    code, field, value, message = found['{"id":2}'][0]
    assert (field, value) == ("explanation", "POS SO\\u00002 销售收入") and "holds a NUL character" in message
    assert [(c, f, v) for c, f, v, _ in found['{"id":3}']] == [
        ("INVALID_TEXT", "entries[0].dimensions.customer", "C\\u0000003")]
    [(code, _, _, message)] = found['{"id":4}']
    assert code == "EXPRESSION_ERROR" and "no account case matched" in message
    # what the source systems are told, and what the journal's readers see, are stored and readable
    assert rows(pg_dsn, "SELECT count(*) FROM kdcdc.outbox WHERE status = 'REJECTED'") == [(3,)]
    assert rows(pg_dsn, "SELECT count(DISTINCT voucher_key) FROM kdcdc.entries") == [(2,)]
