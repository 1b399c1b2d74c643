"""Every real Debezium event in tests/fixtures/debezium (copied, with SOURCES.md) decodes to the values it states."""

from __future__ import annotations

import ast
import base64
import json
from datetime import UTC, date, datetime, time
from decimal import Decimal
from pathlib import Path

import pytest

from connector.events import (
    ChangeEvent,
    DecodeFailure,
    Decoder,
    KafkaCoordinates,
    Op,
    Tombstone,
    TransactionMarker,
    decode_base64_decimal,
)
from tests.unit.helpers import FIXTURES, fixture_bytes

AT = KafkaCoordinates(topic="fixtures", partition=0, offset=42)


def decode(name: str, key: bytes | None = None) -> object:
    return Decoder().decode(fixture_bytes(name), key=key, kafka=AT)


def change(name: str, key: bytes | None = None) -> ChangeEvent:
    ev = decode(name, key)
    assert isinstance(ev, ChangeEvent), ev
    return ev


def _named_in_a_test() -> set[str]:
    """Every string literal inside this module's test functions."""
    tree = ast.parse(Path(__file__).read_text("utf-8"))
    return {n.value for fn in tree.body if isinstance(fn, ast.FunctionDef) and fn.name.startswith("test_")
            for n in ast.walk(fn) if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def test_every_fixture_file_has_a_test_of_its_own() -> None:
    present = {p.name for p in FIXTURES.iterdir() if p.name != "SOURCES.md"}
    assert present - _named_in_a_test() == set(), "fixtures no test names"


def test_mysql_create_with_schema() -> None:
    ev = change("mysql-create-with-schema.json")
    assert ev.op is Op.CREATE and ev.before is None
    assert ev.after == {"id": 1004, "first_name": "Anne", "last_name": "Kretchmar", "email": "annek@noanswer.org"}
    assert ev.source.connector == "mysql" and ev.source.name == "mysql-server-1"
    assert ev.source.table_id == "inventory.customers"
    assert (ev.source.file, ev.source.pos, ev.source.row) == ("mysql-bin.000003", 154, 0)
    assert ev.source.snapshot == "false" and not ev.source.is_snapshot
    assert ev.source.position == "binlog:mysql-bin.000003:154:0"
    assert ev.ts_ms == 1465491411815
    assert ev.kafka == AT and ev.where() == "fixtures[0]@42"


def test_mysql_create_with_schema_doc_keeps_placeholders_as_text() -> None:
    ev = change("mysql-create-with-schema-doc.json")
    assert ev.after is not None and ev.after["id"] == 1004
    assert ev.source.connector == "{context}" and ev.source.version == "{debezium-version}"


def test_mysql_create_without_schema_equals_with_schema() -> None:
    a = change("mysql-create-without-schema.json")
    b = change("mysql-create-with-schema.json")
    assert a.after == b.after and a.source == b.source and a.op is b.op


def test_mysql_unwrapped_row_is_rejected_with_a_hint() -> None:
    f = decode("mysql-unwrapped-row.json")
    assert isinstance(f, DecodeFailure)
    assert f.stage == "envelope" and "no 'op'" in f.reason and "unwrap" in f.reason
    assert f.raw_value == fixture_bytes("mysql-unwrapped-row.json") and f.kafka == AT


def test_mysql_update_with_unknown_property_keeps_extra_column() -> None:
    ev = change("mysql-update-unknown-property.json")
    assert ev.op is Op.UPDATE
    assert ev.before is not None and ev.before["first_name"] == "Anne-Marie" and ev.before["middle_name"] == "L"
    assert ev.after is not None and ev.after["first_name"] == "Anne"


def test_mysql_update_without_schema() -> None:
    ev = change("mysql-update-without-schema.json")
    assert ev.before is not None and ev.after is not None
    assert (ev.before["first_name"], ev.after["first_name"]) == ("Anne-Marie", "Anne")


def test_mysql_key_with_schema_decodes_as_key() -> None:
    value = fixture_bytes("mysql-create-with-schema.json")
    ev = Decoder().decode(value, key=fixture_bytes("mysql-key-with-schema-doc.json"), kafka=AT)
    assert isinstance(ev, ChangeEvent) and ev.key == {"id": 1001}
    # As a *value* it is not an envelope:
    assert isinstance(decode("mysql-key-with-schema-doc.json"), DecodeFailure)


def test_mysql_update_doc() -> None:
    ev = change("mysql-update-doc.txt")
    assert ev.op is Op.UPDATE and ev.source.server_id == 223344 and ev.source.pos == 484
    assert ev.source.query == "UPDATE customers SET first_name='Anne Marie' WHERE id=1004"
    assert ev.after is not None and ev.after["first_name"] == "Anne Marie"


def test_mysql_delete_doc() -> None:
    ev = change("mysql-delete-doc.txt")
    assert ev.op is Op.DELETE and ev.after is None
    assert ev.before is not None and ev.before["id"] == 1004 and ev.row == ev.before
    assert ev.source.query == "DELETE FROM customers WHERE id=1004"


def test_mysql_snapshot_read_with_string_snapshot_flag() -> None:
    ev = change("mysql-snapshot-read-engine-no-schema.json")
    assert ev.op is Op.READ and ev.source.snapshot == "true" and ev.source.is_snapshot
    assert ev.source.ts_ms == 1731327511000 and ev.transaction is None


def test_mysql_streaming_update_engine() -> None:
    ev = change("mysql-update-engine-no-schema.json")
    assert ev.source.snapshot == "false" and ev.source.server_id == 223344 and ev.source.thread == 102
    assert ev.before is not None and ev.after is not None
    assert (ev.before["first_name"], ev.after["first_name"]) == ("Sally", "Sarah")


def test_mysql_all_types_with_schema() -> None:
    ev = change("mysql-snapshot-read-alltypes-with-schema.json")
    a = ev.after
    assert a is not None
    # Decimals written as JSON numbers (decimal.format=NUMERIC) stay exact.
    assert a["pt"] == Decimal("1.1") and isinstance(a["pt"], Decimal)
    assert a["_numeric"] == Decimal("12345.110")
    assert a["_fixed"] == Decimal("123456789876543212345678987654321.110")
    assert a["_big_decimal"] == Decimal("2222222222222222300000001111.1234567890")
    assert a["_bigint_unsigned"] == Decimal(20000000000)
    # Temporal types.
    assert a["_date"] == date(2023, 3, 23)
    # DATETIME columns have no zone: Debezium's Timestamp/MicroTimestamp are wall clocks, decoded naive
    assert a["_datetime"] == datetime(2023, 3, 23, 14, 30, 5)
    assert a["_datetime3"] == datetime(2023, 3, 23, 14, 30, 5, 123000)
    assert a["_datetime6"] == datetime(2023, 3, 23, 14, 30, 5, 123456)
    assert a["_timestamp"] == datetime(2023, 3, 23, 22, 0, 10, 123456, tzinfo=UTC)
    assert a["_time"] == time(10, 13, 23)
    assert a["_year"] == 2023
    assert a["_bin"] == b"bytes\x00\x00\x00\x00\x00"
    # Binary floats are kept as floats and reported by name: unusable as money without opt-in.
    assert a["_float"] == 1.5 and isinstance(a["_float"], float)
    assert "after._float" in ev.float_fields and "after._double" in ev.float_fields
    assert "after._numeric" not in ev.float_fields
    assert ev.source.snapshot == "false" and ev.op is Op.READ


def test_mysql_transaction_markers_keep_whole_gtid() -> None:
    begin = decode("mysql-transaction-begin.json")
    end = decode("mysql-transaction-end.json")
    assert isinstance(begin, TransactionMarker) and isinstance(end, TransactionMarker)
    assert begin.status == "BEGIN" and end.status == "END" and end.event_count == 2
    assert begin.group == end.group == "0e4d5dcd-a33b-11ea-80f1-02010a22a99e:10"
    assert end.data_collections == {"s1.a": 1, "s2.a": 1}


def test_pg_transaction_markers_group_on_txid() -> None:
    begin = decode("pg-transaction-begin.json")
    end = decode("pg-transaction-end.json")
    assert isinstance(begin, TransactionMarker) and isinstance(end, TransactionMarker)
    assert begin.id == "571:53195829" and end.id == "571:53195832"
    assert begin.group == end.group == "571"
    assert begin.event_count is None and end.event_count == 2


def test_pg_create_with_schema_doc() -> None:
    ev = change("pg-create-with-schema-doc.txt")
    assert ev.op is Op.CREATE and ev.source.connector == "postgresql"
    assert (ev.source.tx_id, ev.source.lsn) == (555, 24023128)
    assert ev.source.sequence == '["24023119","24023128"]'
    assert ev.source.snapshot == "true"
    assert ev.source.table_id == "postgres.public.customers"
    assert ev.source.position == "lsn:24023128/tx:555"
    assert ev.after is not None and ev.after["email"] == "annek@noanswer.org"


def test_pg_update_doc_with_key_only_before() -> None:
    ev = change("pg-update-doc.txt")
    assert ev.op is Op.UPDATE and ev.before == {"id": 1}
    assert ev.after is not None and ev.after["first_name"] == "Anne Marie"


def test_pg_delete_doc() -> None:
    ev = change("pg-delete-doc.txt")
    assert ev.op is Op.DELETE and ev.before == {"id": 1} and ev.after is None
    assert ev.source.lsn == 46523128


def test_pg_delete_with_both_images_null_still_decodes() -> None:
    ev = change("pg-delete-null-before-no-schema.json", key=b'{"id":111}')
    assert ev.op is Op.DELETE and ev.before is None and ev.after is None and ev.row is None
    assert ev.key == {"id": 111} and ev.source.tx_id == 608


def test_pg_truncate_doc() -> None:
    ev = change("pg-truncate-doc.txt")
    assert ev.op is Op.TRUNCATE and ev.before is None and ev.after is None and ev.key is None
    assert ev.source.table == "customers"


def test_pg_message_doc() -> None:
    ev = change("pg-message-transactional-doc.txt")
    assert ev.op is Op.MESSAGE and ev.message is not None
    assert ev.message.prefix == "foo" and ev.message.content == base64.b64decode("Ymfy") == b"bg\xf2"
    assert ev.source.table is None and ev.source.schema is None  # "" in the event


def test_pg_transaction_block() -> None:
    ev = change("pg-create-with-transaction-block-doc.txt")
    assert ev.transaction is not None
    assert ev.transaction.id == "571:53195832" and ev.transaction.group == "571"
    assert ev.transaction.total_order == 1 and ev.transaction.data_collection_order == 1
    assert ev.ts_ms == 1580390884335  # written as a string in the doc


def test_pg_tombstone_after_delete() -> None:
    # pg-tombstone-description.txt: "a delete is followed by a tombstone with the same key and a null value".
    prose = fixture_bytes("pg-tombstone-description.txt").decode()
    assert "tombstone" in prose and "null" in prose
    ev = Decoder().decode(None, key=b'{"id":1}', kafka=AT)
    assert isinstance(ev, Tombstone) and ev.key == {"id": 1} and ev.kafka == AT
    assert isinstance(Decoder().decode(b"", key=None), Tombstone)


def test_pg_purchaseorder_microtimestamp() -> None:
    ev = change("pg-purchaseorder-create-microtimestamp.json")
    assert ev.after is not None
    # Schemaless: the decoder cannot know this long is a MicroTimestamp; rules convert it explicitly.
    assert ev.after["orderdate"] == 1548936781000000
    assert ev.source.tx_id == 608 and ev.source.table == "purchaseorder"


def test_pg_orderline_base64_decimal() -> None:
    ev = change("pg-orderline-create-decimal-base64-1.json")
    assert ev.after is not None and ev.after["totalprice"] == "D54="
    assert decode_base64_decimal(ev.after["totalprice"], 2) == Decimal("39.98")
    upd = change("pg-orderline-update-decimal-base64.json")
    assert upd.op is Op.UPDATE and upd.before is None
    assert upd.after is not None and decode_base64_decimal(upd.after["totalprice"], 2) == Decimal("29.99")
    assert upd.source.tx_id == 609


def test_same_transaction_shares_txid() -> None:
    po = change("pg-purchaseorder-create-microtimestamp.json")
    ol = change("pg-orderline-create-decimal-base64-1.json")
    assert po.source.tx_id == ol.source.tx_id == 608
    assert po.source.position != ol.source.position


#: What each fixture decodes to (anything not listed: a ChangeEvent).
KINDS = {"mysql-key-with-schema-doc.json": DecodeFailure,  # a key document is not a change event
         "mysql-unwrapped-row.json": DecodeFailure, "pg-tombstone-description.txt": DecodeFailure,  # prose
         "mysql-transaction-begin.json": TransactionMarker, "mysql-transaction-end.json": TransactionMarker,
         "pg-transaction-begin.json": TransactionMarker, "pg-transaction-end.json": TransactionMarker}


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.iterdir() if p.name != "SOURCES.md"))
def test_each_fixture_decodes_to_its_kind_and_prints_as_plain_json(name: str) -> None:
    """What `kingdee-cdc events decode` prints: the kind the fixture is, in JSON that reads back unchanged."""
    from connector.events import event_to_json

    decoded = decode(name)
    kind = KINDS.get(name, ChangeEvent)
    assert isinstance(decoded, kind), decoded
    out = event_to_json(decoded)  # type: ignore[arg-type]
    assert out["kind"] == kind.__name__
    assert json.loads(json.dumps(out)) == out
    if isinstance(decoded, ChangeEvent):
        assert (out["op"], out["source"]["table"]) == (decoded.op.value, decoded.source.table)
