"""Source transactions on a real broker and database: an order and its lines, written in one source
transaction and arriving on different topics, become one voucher — held until the transaction is complete,
crash-safe while held, and released event by event when it never completes."""

from __future__ import annotations

import base64
import json
import shutil
import threading
import uuid
from collections.abc import Callable
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from prometheus_client import CollectorRegistry

from connector.ops import Metrics
from tests.integration.helpers import RULES, log_end, make_pipeline, pos_amounts, rows, wait_for, \
    wait_for_records

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "rules" / "pos-sale-by-line.yaml"


def _rules(tmp_path: Path, system: str) -> Path:
    """The shipped rules with POS sales posted by line, for a source system of this test only."""
    target = tmp_path / "rules"
    shutil.copytree(RULES, target, ignore=shutil.ignore_patterns("golden", "pos-sale.yaml"))
    (target / "pos-sale-by-line.yaml").write_text(
        EXAMPLE.read_text("utf-8").replace("system: pos", f"system: {system}"), "utf-8")
    ignored = (target / "ignored.yaml").read_text("utf-8")
    (target / "ignored.yaml").write_text(ignored.replace("system: pos", f"system: {system}"), "utf-8")
    ledger = (target / "ledger.yaml").read_text("utf-8")  # the test's system may post what POS may
    (target / "ledger.yaml").write_text(ledger.replace("permissions:\n  pos:", f"permissions:\n  {system}:"), "utf-8")
    return target


class Source:
    """Debezium-shaped JSON change events and transaction markers of one PostgreSQL source system."""

    def __init__(self, bootstrap: str, system: str, orders: str, lines: str) -> None:
        self.system, self.orders, self.lines, self.tx_topic = system, orders, lines, f"{system}.transaction"
        self.producer = Producer({"bootstrap.servers": bootstrap, "log_level": "3"})
        self.lsn = 1000
        self.produced = 0

    def _send(self, topic: str, key: Any, value: Any, schema: dict[str, Any] | None = None) -> None:
        body = value if schema is None else {"schema": schema, "payload": value}
        self.producer.produce(topic, key=json.dumps(key).encode(), value=json.dumps(body).encode())
        self.produced += 1

    def change(self, txid: int, order: int, table: str, op: str, row: dict[str, Any],
               before: dict[str, Any] | None = None) -> None:
        self.lsn += 8
        source = {"version": "3.3.1.Final", "connector": "postgresql", "name": self.system, "ts_ms": 1794535200000,
                  "snapshot": "false", "db": "posdb", "schema": "public", "table": table, "txId": txid,
                  "lsn": self.lsn}
        value = {"before": _connect(before) if op != "c" else None, "after": _connect(row) if op != "d" else None,
                 "source": source, "op": op, "ts_ms": 1794535200100,
                 "transaction": {"id": f"{txid}:{self.lsn}", "total_order": order, "data_collection_order": order}}
        self._send(self.orders if table == "sales_order" else self.lines, {"id": row["id"]}, value,
                   _envelope_schema(ORDER_FIELDS if table == "sales_order" else LINE_FIELDS))

    def marker(self, txid: int, status: str, counts: dict[str, int] | None = None) -> None:
        value: dict[str, Any] = {"status": status, "id": f"{txid}:{self.lsn}", "ts_ms": 1794535200200}
        if status == "END":
            counts = counts or {}
            value |= {"event_count": sum(counts.values()),
                      "data_collections": [{"data_collection": f"public.{t}", "event_count": n}
                                           for t, n in counts.items()]}
        self._send(self.tx_topic, {"id": f"{txid}"}, value)

    def flush(self) -> None:
        assert self.producer.flush(30) == 0


# JSON converter with schemas, decimal.handling.mode=precise: amounts are Connect Decimals (base64 bytes).
ORDER_FIELDS: dict[str, str | int] = {"id": "int64", "order_no": "string", "channel": "string", "store_code": "string",
                "company_code": "string", "customer_code": "string", "order_date": "string", "currency": "string",
                "net_amount": 2, "tax_amount": 2, "gross_amount": 2, "points_deduction": 2,
                "payment_method": "string", "status": "string"}
LINE_FIELDS: dict[str, str | int] = {"id": "int64", "order_id": "int64", "line_no": "int32", "sku": "string", "quantity": 4, "amount": 2}


def _field(name: str, t: str | int) -> dict[str, Any]:
    if isinstance(t, int):
        return {"field": name, "type": "bytes", "optional": True, "name": "org.apache.kafka.connect.data.Decimal",
                "version": 1, "parameters": {"scale": str(t)}}
    return {"field": name, "type": t, "optional": True}


def _envelope_schema(fields: dict[str, str | int]) -> dict[str, Any]:
    row = {"type": "struct", "optional": True, "fields": [_field(n, t) for n, t in fields.items()]}
    return {"type": "struct", "name": "envelope", "fields": [
        {**row, "field": "before"}, {**row, "field": "after"},
        {"field": "source", "type": "struct", "fields": [
            _field(n, t) for n, t in (("version", "string"), ("connector", "string"), ("name", "string"),
                                      ("ts_ms", "int64"), ("snapshot", "string"), ("db", "string"),
                                      ("schema", "string"), ("table", "string"), ("txId", "int64"),
                                      ("lsn", "int64"))]},
        {"field": "op", "type": "string"}, {"field": "ts_ms", "type": "int64", "optional": True},
        {"field": "transaction", "type": "struct", "optional": True, "fields": [
            _field("id", "string"), _field("total_order", "int64"), _field("data_collection_order", "int64")]}]}


def _connect(row: dict[str, Any] | None) -> dict[str, Any] | None:
    """Decimal text → Connect Decimal bytes (base64 of the big-endian unscaled value)."""
    if row is None:
        return None
    out = {}
    for k, v in row.items():
        if isinstance(v, str) and k in ("net_amount", "tax_amount", "gross_amount", "points_deduction", "amount",
                                        "quantity"):
            d = Decimal(v)
            unscaled = int(d.scaleb(-d.as_tuple().exponent))  # type: ignore[operator]
            out[k] = base64.b64encode(unscaled.to_bytes((unscaled.bit_length() + 8) // 8, "big", signed=True)).decode()
        else:
            out[k] = v
    return out


def order(id_: int, gross: str, net: str, tax: str, status: str = "PAID") -> dict[str, Any]:
    return {"id": id_, "order_no": f"SO{id_}", "channel": "STORE", "store_code": "S01", "company_code": "100",
            "customer_code": None, "order_date": "2026-11-12", "currency": "CNY", "net_amount": net,
            "tax_amount": tax, "gross_amount": gross, "points_deduction": "0.00",
            "payment_method": "CASH", "status": status}


def line(id_: int, order_id: int, no: int, amount: str) -> dict[str, Any]:
    return {"id": id_, "order_id": order_id, "line_no": no, "sku": f"SKU{no:03d}", "quantity": "1.0000",
            "amount": amount}


def pk(id_: int) -> str:
    return f'{{"id":{id_}}}'


def _exact_topic(bootstrap: str, name: str, partitions: int = 1) -> str:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])[name].result(30)
    return name


def test_an_order_and_its_lines_become_one_voucher_held_until_the_transaction_is_complete(
        kafka_bootstrap: str, topic_factory: Callable[..., str], pg_dsn: str, tmp_path: Path) -> None:
    system = f"shop{uuid.uuid4().hex[:8]}"
    orders, lines = topic_factory("orders"), topic_factory("lines", partitions=2)
    tx_topic = _exact_topic(kafka_bootstrap, f"{system}.transaction")
    topics = [orders, lines, tx_topic]
    rules = _rules(tmp_path, system)
    src = Source(kafka_bootstrap, system, orders, lines)
    group = f"g-{uuid.uuid4().hex[:8]}"

    def pipeline(hold_s: float = 30) -> Any:
        pipe = make_pipeline(kafka_bootstrap, pg_dsn, topics, group=group, rules=rules, batch_size=50)
        pipe.opts = replace(pipe.opts, transaction_hold_s=hold_s)
        pipe.grouper = pipe._grouper()
        assert pipe.grouper is not None
        return pipe

    # Phase 1: order 1's header and END marker arrive, its lines do not (yet): the header is held, and so is
    # everything behind it on its partitions (order 2 behind order 1, transaction 102's markers behind 101's
    # END, and so order 2's lines): only the first BEGIN marker can be journaled.
    src.marker(101, "BEGIN")
    src.change(101, 1, "sales_order", "c", order(1, "113.00", "100.00", "13.00"))
    src.marker(101, "END", {"sales_order": 1, "sales_order_line": 3})
    src.marker(102, "BEGIN")
    src.change(102, 1, "sales_order_line", "c", line(21, 2, 1, "20.00"))
    src.change(102, 2, "sales_order", "c", order(2, "40.00", "35.40", "4.60"))
    src.change(102, 3, "sales_order_line", "c", line(22, 2, 2, "20.00"))
    src.marker(102, "END", {"sales_order": 1, "sales_order_line": 2})
    src.flush()
    first = pipeline()
    first.journal.migrate()
    first.metrics = Metrics(CollectorRegistry())
    runner = threading.Thread(target=lambda: first.run())
    runner.start()
    try:
        # Once the pipeline has read every record, nothing else can be journaled: whatever it did not journal
        # it holds (kingdee_cdc_transaction_held_records), waiting for order 1's lines, which are not in Kafka.
        def read_everything() -> bool:
            journaled = rows(pg_dsn, "SELECT count(*) FROM kdcdc.event_records")[0][0]
            held = first.metrics.registry.get_sample_value("kingdee_cdc_transaction_held_records") or 0
            return bool(journaled + held == src.produced)
        wait_for(read_everything, 60, f"the pipeline to read all {src.produced} records (journaled or held)")
    finally:
        first.stop()
        runner.join(30)
    assert first.stats.records == 1  # (closing dropped the 7 held records: they belong to the next reader)
    assert rows(pg_dsn, "SELECT topic, kafka_offset, outcome FROM kdcdc.event_records") == [(tx_topic, 0, "SKIPPED")]
    assert not rows(pg_dsn, "SELECT 1 FROM kdcdc.vouchers")
    stored = dict(((t, p), o) for t, p, o in rows(
        pg_dsn, "SELECT topic, kafka_partition, next_offset FROM kdcdc.offsets WHERE consumer_group = %s", group))
    assert stored == {(tx_topic, 0): 1}  # nothing held is behind a journal offset: the restart reads it again

    # Phase 2 (a restart): order 1's lines arrive; order 3 has no lines; order 1 is cancelled in a transaction
    # that deletes its lines; transaction 105 never gets its END marker (released one by one after hold_s).
    src.change(101, 2, "sales_order_line", "c", line(11, 1, 1, "56.50"))
    src.change(101, 3, "sales_order_line", "c", line(12, 1, 2, "33.90"))
    src.change(101, 4, "sales_order_line", "c", line(13, 1, 3, "22.60"))
    src.marker(103, "BEGIN")
    src.change(103, 1, "sales_order", "c", order(3, "11.30", "10.00", "1.30"))
    src.marker(103, "END", {"sales_order": 1})
    src.marker(104, "BEGIN")
    for n, (lid, amt) in enumerate([(11, "56.50"), (12, "33.90"), (13, "22.60")], 1):
        src.change(104, n, "sales_order_line", "d", line(lid, 1, n, amt), before=line(lid, 1, n, amt))
    src.change(104, 4, "sales_order", "u", order(1, "113.00", "100.00", "13.00", "CANCELLED"),
               before=order(1, "113.00", "100.00", "13.00"))
    src.marker(104, "END", {"sales_order": 1, "sales_order_line": 3})
    src.marker(105, "BEGIN")
    src.change(105, 1, "sales_order", "c", order(5, "22.60", "20.00", "2.60"))
    src.change(105, 2, "sales_order_line", "c", line(51, 5, 1, "22.60"))
    src.flush()
    second = pipeline(hold_s=2)
    stats = second.run(max_idle_s=6)
    assert stats.transactions_ungrouped == 1

    # Exactly one outcome per record, offsets at the log end.
    log = rows(pg_dsn, "SELECT topic, kafka_partition, kafka_offset, outcome, source_pk, voucher_keys "
                       "FROM kdcdc.event_records WHERE consumer_group = %s", group)
    assert len(log) == src.produced == len({(t, p, o) for t, p, o, *_ in log})
    end = log_end(kafka_bootstrap, topics)
    assert dict(((t, p), o) for t, p, o in rows(
        pg_dsn, "SELECT topic, kafka_partition, next_offset FROM kdcdc.offsets WHERE consumer_group = %s",
        group)) == {tp: n for tp, n in end.items() if n}

    vouchers = {(pk, kind): key for key, pk, kind in rows(
        pg_dsn, "SELECT key, source_pk, kind FROM kdcdc.vouchers")}
    pk1, pk2 = pk(1), pk(2)
    assert set(vouchers) == {(pk1, "original"), (pk1, "reversal"), (pk2, "original")}
    # Order 1: one revenue entry per line (SKU as material), all 113.00 received, lines GROUPED into it.
    revenue = rows(pg_dsn, "SELECT amount, dimensions->>'FLEX8' FROM kdcdc.entries WHERE voucher_key = %s "
                           "AND account = '6001.01' ORDER BY seq", vouchers[(pk1, "original")])
    assert [(str(a), sku) for a, sku in revenue] == [("50.00", "SKU001"), ("30.00", "SKU002"), ("20.00", "SKU003")]
    grouped = {(t, pk): keys for t, _, _, outcome, pk, keys in log if outcome == "GROUPED"}
    assert grouped == {(lines, pk(i)): [vouchers[(pk1 if i < 20 else pk2, "original")]]
                       for i in (11, 12, 13, 21, 22)}
    # Order 3 has no lines in its transaction; order 5's transaction never completed: both rejected.
    rejected = dict(rows(pg_dsn, "SELECT source_pk, code FROM kdcdc.rejections"))
    assert rejected == {pk(3): "LINES_MISSING", pk(5): "LINES_MISSING"}
    # The cancellation's line deletes and order 5's line are ordinary (ignored) line events.
    skipped_lines = {pk for t, _, _, outcome, pk, _ in log if t == lines and outcome == "SKIPPED"}
    assert skipped_lines == {pk(i) for i in (11, 12, 13, 51)}
    print(f"\n  transactions: {src.produced} records, {len(grouped)} lines grouped into "
          f"{len(vouchers)} vouchers, {len(rejected)} rejected, 1 transaction released ungrouped")


def test_real_debezium_orders_with_lines_become_one_voucher_each(
        kafka_bootstrap: str, pg_dsn: str, tmp_path: Path) -> None:
    """The same through the real chain — PostgreSQL → Debezium (transaction metadata on) → Kafka: the
    transaction ids (``txId:lsn``, different on BEGIN/data/END) and END counts (``schema.table``) as
    Debezium really writes them group each order with its lines."""
    from harness.debezium import BusinessDatabases, KafkaConnect, connector_config
    from harness.devstack import EmbeddedPostgres

    system = f"posgrp{uuid.uuid4().hex[:6]}"
    with EmbeddedPostgres(tmp_path / "business", durable=False) as business:
        biz = BusinessDatabases(business.dsn(), systems=("pos",)).create()
        connect = KafkaConnect(tmp_path / "connect", kafka_bootstrap,
                               [connector_config("pos", "127.0.0.1", business.port, topic_prefix=system)]).start()
        try:
            # The (empty) snapshot is done and Debezium streams: its replication connection is in state
            # streaming. Rows written before that could be read by the snapshot, without transaction metadata.
            wait_for(lambda: rows(business.dsn(), "SELECT count(*) FROM pg_stat_replication r JOIN pg_replication_slots s "
                                                  "ON s.active_pid = r.pid WHERE s.slot_name = 'kdcdc_pos' AND "
                                                  "r.state = 'streaming'")[0][0], 120, "Debezium to start streaming from slot kdcdc_pos (pg_stat_replication state 'streaming')")
            orders = [biz.insert("pos", lines=n, payment_method="CASH", currency="CNY", **pos_amounts(g))
                      for n, g in ((1, "113.00"), (2, "226.00"), (3, "100.00"), (3, "56.50"), (2, "1130.00"))]
            biz.update("pos", orders[1].row_id, status="CANCELLED")  # header only: a reversal, no lines needed
            biz.delete("pos", orders[4].row_id)  # its lines and the header in one transaction
            data = {f"{system}.public.sales_order": 5 + 1 + 2, f"{system}.public.sales_order_line": 11 + 2 * 2}
            tx_topic = f"{system}.transaction"
            wait_for_records(kafka_bootstrap, {**data, tx_topic: 2 * 7})
        finally:
            connect.stop()
            biz.close()
    rules = _rules(tmp_path, system)
    topics = [*data, tx_topic]
    group = f"g-{uuid.uuid4().hex[:8]}"
    pipe = make_pipeline(kafka_bootstrap, pg_dsn, topics, group=group, rules=rules)
    stats = pipe.run(max_idle_s=4)
    assert stats.transactions_ungrouped == 0
    end = log_end(kafka_bootstrap, topics)
    log = rows(pg_dsn, "SELECT topic, outcome, source_pk, voucher_keys FROM kdcdc.event_records WHERE consumer_group = %s",
               group)
    assert len(log) == sum(end.values())
    assert not rows(pg_dsn, "SELECT code, message FROM kdcdc.rejections")
    originals = {pk_: key for key, pk_ in rows(
        pg_dsn, "SELECT key, source_pk FROM kdcdc.vouchers WHERE kind = 'original'")}
    assert set(originals) == {pk(o.row_id) for o in orders}
    for i, o in enumerate(orders):  # one revenue entry per order line, the order's net revenue (± rounding)
        entries = rows(pg_dsn, "SELECT account, side, amount, dimensions->>'FLEX8' FROM kdcdc.entries "
                               "WHERE voucher_key = %s", originals[pk(o.row_id)])
        revenue = [(a, sku) for acct, side, a, sku in entries if acct.startswith("6001.0") and acct != "6001.09"]
        expected_lines = (1, 2, 3, 3, 2)[i]
        assert len(revenue) == expected_lines and {sku for _, sku in revenue} == {
            f"SKU{i + 1:03d}" for i in range(expected_lines)}
        net = Decimal(str((o.row or {})["net_amount"]))
        assert abs(sum(a for a, _ in revenue) - net) <= Decimal("0.05")
    grouped = [keys for t, outcome, _, keys in log if outcome == "GROUPED"]
    assert len(grouped) == 11 and all(k[0] in originals.values() for k in grouped)
    reversals = rows(pg_dsn, "SELECT count(*) FROM kdcdc.vouchers WHERE kind = 'reversal'")[0][0]
    assert reversals == 2  # the cancellation and the delete
    print(f"\n  debezium transactions: {sum(end.values())} records, {len(grouped)} lines grouped into "
          f"{len(originals)} vouchers, {reversals} reversals")


def test_lines_before_their_header_on_one_partition_are_still_grouped(
        kafka_bootstrap: str, topic_factory: Callable[..., str], pg_dsn: str, tmp_path: Path) -> None:
    """Header and lines routed to one topic partition (e.g. by an SMT), the lines first: the header is
    mapped ahead of its own lines so that they can be grouped; the next order's line stays in order."""
    system = f"shop{uuid.uuid4().hex[:8]}"
    one = topic_factory("doc")
    tx_topic = _exact_topic(kafka_bootstrap, f"{system}.transaction")
    src = Source(kafka_bootstrap, system, one, one)
    src.change(201, 1, "sales_order_line", "c", line(31, 3, 1, "11.30"))
    src.change(201, 2, "sales_order", "c", order(3, "11.30", "10.00", "1.30"))
    src.marker(201, "END", {"sales_order": 1, "sales_order_line": 1})
    src.change(202, 1, "sales_order_line", "c", line(41, 4, 1, "22.60"))
    src.change(202, 2, "sales_order", "c", order(4, "22.60", "20.00", "2.60"))
    src.marker(202, "END", {"sales_order": 1, "sales_order_line": 1})
    src.flush()
    pipe = make_pipeline(kafka_bootstrap, pg_dsn, [one, tx_topic], rules=_rules(tmp_path, system))
    pipe.run(max_idle_s=3)
    log = dict(((o, pk_), (outcome, keys)) for o, pk_, outcome, keys in rows(
        pg_dsn, "SELECT kafka_offset, source_pk, outcome, voucher_keys FROM kdcdc.event_records WHERE topic = %s", one))
    assert [log[(o, p_)][0] for o, p_ in sorted(log)] == ["GROUPED", "VOUCHERED", "GROUPED", "VOUCHERED"]
    assert log[(0, pk(31))][1] == log[(1, pk(3))][1] and log[(2, pk(41))][1] == log[(3, pk(4))][1]
    assert not rows(pg_dsn, "SELECT 1 FROM kdcdc.rejections")
