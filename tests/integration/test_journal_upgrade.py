"""Migration 0009 on a journal written before it (in place, with its data), then the pipeline's write path on it.

The old journal is made the way the old code made it: migrations up to 0008, vouchers with their payloads (the
JSON of that time: dimensions ``null`` when none), one ``entries`` row per line, a JOURNALED audit row per
voucher and an event-log row per record. After the upgrade: the lines read the same through the ``entries``
view, the old table is kept, the row state reads the old vouchers, new batches reverse them; the audit trail is
complete (every new voucher names its batch's audit row) and append-only (audit rows, the vouchers' facts and
the lines refuse changes); skipped records without a change event become ranges that still count once each.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from harness import samples
from harness.devstack import REPO_ROOT
from connector.events import ChangeEvent, Decoder, FixedSchemas, KafkaCoordinates
from connector.journal import EventRecord, Journal, Outcome
from connector.journal import _migrate
from connector.ledger import Voucher
from connector.mapping import InMemoryLedger, Mapper, load_rules
from tests.integration.helpers import rows

TABLE = samples.PURCHASING


def _old_payload(v: Voucher) -> bytes:
    """``voucher_to_json`` as it was before 0009 (standard library, dimensions null when none)."""
    s = v.source
    doc: dict[str, Any] = {
        "v": 1, "key": v.key, "kind": v.kind.value, "reverses": v.reverses, "book": v.book,
        "data_centre": v.data_centre, "date": v.date.isoformat(),
        "business_date": v.business_date.isoformat() if v.business_date else None, "group": v.group,
        "explanation": v.explanation, "attachments": v.attachments, "rule_id": v.rule_id,
        "rule_version": v.rule_version, "review_reasons": list(v.review_reasons),
        "source": [s.row.system, s.row.table, s.row.pk, s.position, s.op, s.ts_ms],
        "entries": [[e.account, e.side.value, str(e.amount), e.explanation, e.currency, e.rate_type, str(e.rate),
                     str(e.amount_for), None if e.quantity is None else str(e.quantity),
                     None if e.price is None else str(e.price), e.unit, e.settle_type, e.settle_no,
                     dict(e.dimensions) if e.dimensions else None] for e in v.entries],
    }
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


def _events(n: int, seed: int) -> list[ChangeEvent]:
    gen = samples.SampleGenerator(seed=seed)
    decoder = Decoder(FixedSchemas(samples.value_schema(TABLE)))
    out = []
    for k, env in samples.change_stream(gen, TABLE, n, update_every=3, delete_every=7):
        ev = decoder.decode(samples.encode_json(TABLE, env), key=samples.json_key(k))
        assert isinstance(ev, ChangeEvent)
        out.append(ev)
    return out


@pytest.fixture
def old_journal(pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, list[ChangeEvent], Mapper]]:
    """A journal at migration 0008 holding 60 change events journaled the old way (group ``old``, offsets 0–59)."""
    everything = _migrate.available()
    monkeypatch.setattr(_migrate, "available", lambda: [m for m in everything if m[0] < 9])
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        _migrate.migrate(conn, "kdcdc")
    monkeypatch.setattr(_migrate, "available", lambda: everything)
    mapper = Mapper(load_rules(REPO_ROOT / "rules"))
    events = _events(90, seed=5)
    ledger = InMemoryLedger()
    with psycopg.connect(pg_dsn) as conn:
        for offset, ev in enumerate(events[:60]):
            result = mapper.map(ev, ledger)
            ledger.apply(result)
            for v in result.vouchers:
                s = v.source
                conn.execute(
                    "INSERT INTO kdcdc.vouchers (key, kind, reverses, book, data_centre, voucher_date, voucher_group, "
                    "explanation, debit_total, review, source_system, source_table, source_pk, source_position, "
                    "source_op, source_ts_ms, topic, kafka_partition, kafka_offset, rule_id, rule_version, payload) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'old', 0, %s, %s, %s, %s)",
                    (v.key, v.kind.value, v.reverses, v.book, v.data_centre, v.date, v.group, v.explanation,
                     v.debit_total, v.needs_review, s.row.system, s.row.table, s.row.pk, s.position, s.op, s.ts_ms,
                     offset, v.rule_id, v.rule_version, _old_payload(v)))
                if v.reverses:
                    conn.execute("UPDATE kdcdc.vouchers SET reversed_by = %s WHERE key = %s", (v.key, v.reverses))
                for i, e in enumerate(v.entries, 1):
                    conn.execute("INSERT INTO kdcdc.entries VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s)",
                                 (v.key, i, e.account, e.side.value, e.amount, e.currency, e.rate, e.amount_for,
                                  json.dumps(dict(e.dimensions)), e.explanation))
                conn.execute("INSERT INTO kdcdc.audit (actor, action, voucher_key, detail) "
                             "VALUES ('pipeline', 'JOURNALED', %s, '{}')", (v.key,))
            conn.execute("INSERT INTO kdcdc.event_log (consumer_group, topic, kafka_partition, kafka_offset, outcome, "
                         "source_system, voucher_keys) VALUES ('old', 'old', 0, %s, %s, 'purchasing', %s)",
                         (offset, "VOUCHERED" if result.vouchers else "SKIPPED", [v.key for v in result.vouchers]))
        conn.execute("INSERT INTO kdcdc.offsets (consumer_group, topic, kafka_partition, next_offset) "
                     "VALUES ('old', 'old', 0, 60)")
    yield pg_dsn, events, mapper


def test_an_old_journal_upgrades_in_place_and_takes_new_batches(
        old_journal: tuple[str, list[ChangeEvent], Mapper]) -> None:
    dsn, events, mapper = old_journal
    before = rows(dsn, "SELECT voucher_key, seq, account, side, amount, currency, rate, amount_for, dimensions, "
                       "explanation FROM kdcdc.entries ORDER BY 1, 2")
    old_vouchers = rows(dsn, "SELECT count(*) FROM kdcdc.vouchers")[0][0]
    assert len(before) > 2 * old_vouchers > 100

    journal = Journal(dsn, group="old")
    assert 9 in journal.migrate()
    # the lines read the same through the view; the old table is kept, as it was
    assert rows(dsn, "SELECT voucher_key, seq, account, side, amount, currency, rate, amount_for, dimensions, "
                     "explanation FROM kdcdc.entries ORDER BY 1, 2") == before
    assert rows(dsn, "SELECT count(*) FROM kdcdc.entries_before_0009")[0][0] == len(before)

    # new batches on top: the row state reads the old payloads, updates and deletes reverse old vouchers
    records = []
    for offset, ev in enumerate(events[60:], start=60):
        result = mapper.map(ev, _state_for(journal, ev))
        records.append(EventRecord(kafka=KafkaCoordinates(topic="old", partition=0, offset=offset), event=ev,
                                   outcome=Outcome.VOUCHERED if result.vouchers else Outcome.SKIPPED,
                                   vouchers=result.vouchers, detail=result.skipped))
        journal.write_batch(records[-1:], {("old", 0): (offset, offset + 1)})
    reversals = rows(dsn, "SELECT count(*) FROM kdcdc.vouchers v JOIN kdcdc.vouchers o ON o.key = v.reverses "
                          "WHERE v.batch_id IS NOT NULL AND o.batch_id IS NULL AND o.reversed_by = v.key")[0][0]
    assert reversals > 0, "no new batch reversed a voucher journaled before the upgrade"

    # the audit trail: every new voucher names its batch's audit row, whose offsets hold its record
    orphans = rows(dsn, "SELECT count(*) FROM kdcdc.vouchers v LEFT JOIN kdcdc.audit a ON a.id = v.batch_id AND "
                        "a.action = 'BATCH_JOURNALED' AND v.kafka_offset >= (a.detail->'offsets'->'old[0]'->>0)::int "
                        "AND v.kafka_offset < (a.detail->'offsets'->'old[0]'->>1)::int "
                        "WHERE v.kafka_offset >= 60 AND a.id IS NULL")[0][0]
    assert orphans == 0
    new_vouchers = rows(dsn, "SELECT count(*) FROM kdcdc.vouchers WHERE kafka_offset >= 60")[0][0]
    assert rows(dsn, "SELECT sum((detail->>'vouchers')::int) FROM kdcdc.audit WHERE action = 'BATCH_JOURNALED'"
                )[0][0] == new_vouchers > 0
    # one outcome per record, old and new alike
    assert rows(dsn, "SELECT count(*), count(DISTINCT kafka_offset), min(kafka_offset), max(kafka_offset) "
                     "FROM kdcdc.event_records WHERE consumer_group = 'old'") == [(90, 90, 0, 89)]
    journal.close()


def _state_for(journal: Journal, ev: ChangeEvent) -> InMemoryLedger:
    """What the journal knows of the event's row (as the pipeline prefetches it)."""
    from connector.ledger import RowRef, canonical_pk

    assert ev.key is not None
    return journal.prefetch_active([RowRef(ev.source.name, ev.source.table_id, canonical_pk(ev.key))])


def test_the_audit_trail_and_the_vouchers_facts_are_append_only(
        old_journal: tuple[str, list[ChangeEvent], Mapper]) -> None:
    dsn, events, mapper = old_journal
    journal = Journal(dsn, group="old")
    journal.migrate()
    ev = events[60]
    result = mapper.map(ev, _state_for(journal, ev))
    journal.write_batch([EventRecord(kafka=KafkaCoordinates(topic="old", partition=0, offset=60), event=ev,
                                     outcome=Outcome.VOUCHERED, vouchers=result.vouchers)], {("old", 0): (60, 61)})
    journal.close()
    key = result.vouchers[0].key
    with psycopg.connect(dsn, autocommit=True) as conn:
        for stmt in ("UPDATE kdcdc.audit SET detail = '{}'", "DELETE FROM kdcdc.audit", "TRUNCATE kdcdc.audit",
                     f"UPDATE kdcdc.vouchers SET rule_version = '2' WHERE key = '{key}'",
                     f"UPDATE kdcdc.vouchers SET batch_id = NULL WHERE key = '{key}'",
                     f"UPDATE kdcdc.vouchers SET kafka_offset = 0 WHERE key = '{key}'",
                     f"UPDATE kdcdc.vouchers SET payload = '\\x7b7d' WHERE key = '{key}'",
                     f"UPDATE kdcdc.vouchers SET source_position = 'x' WHERE key = '{key}'",
                     "UPDATE kdcdc.entries SET amount = 0", "DELETE FROM kdcdc.entries",
                     "INSERT INTO kdcdc.entries (voucher_key, seq, account, side, amount, currency, rate, amount_for) "
                     f"VALUES ('{key}', 9, '1001', 'debit', 1, 'CNY', 1, 1)",
                     f"DELETE FROM kdcdc.vouchers WHERE key = '{key}'"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege,
                               match="append-only|cannot be changed|never deleted"):
                conn.execute(stmt)
        # what the poster does to a journaled voucher is allowed
        conn.execute("UPDATE kdcdc.vouchers SET status = 'POSTING', attempts = attempts + 1, posting_since = now(), "
                     "updated_at = now() WHERE key = %s", (key,))
        conn.execute("UPDATE kdcdc.vouchers SET status = 'POSTED', kingdee_id = '7', kingdee_number = '记-1' "
                     "WHERE key = %s", (key,))


def test_a_journal_whose_lines_differ_from_the_payloads_is_not_migrated(
        old_journal: tuple[str, list[ChangeEvent], Mapper]) -> None:
    dsn, _, _ = old_journal
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE kdcdc.entries DISABLE TRIGGER entries_append_only")
        conn.execute("UPDATE kdcdc.entries SET amount = amount + 0.01 WHERE seq = 1 AND voucher_key = "
                     "(SELECT min(key) FROM kdcdc.vouchers)")
        conn.execute("ALTER TABLE kdcdc.entries ENABLE TRIGGER entries_append_only")
    journal = Journal(dsn, group="old")
    with pytest.raises(psycopg.errors.RaiseException, match="payloads differ"):
        journal.migrate()
    journal.close()
    # nothing changed: still the table, still at 0008
    assert rows(dsn, "SELECT relkind FROM pg_class WHERE relname = 'entries'") == [("r",)]
    assert rows(dsn, "SELECT max(version) FROM kdcdc.schema_migrations") == [(8,)]


def test_skipped_records_without_a_change_event_are_ranges_that_count_once_each(pg_dsn: str) -> None:
    journal = Journal(pg_dsn, group=f"g-{uuid.uuid4().hex[:6]}")
    journal.migrate()

    def k(offset: int, partition: int = 0) -> KafkaCoordinates:
        return KafkaCoordinates(topic="t", partition=partition, offset=offset)
    ev = _events(1, seed=2)[0]
    skipped = [EventRecord(kafka=k(o), outcome=Outcome.SKIPPED, detail="Tombstone") for o in range(0, 4)]
    marker = [EventRecord(kafka=k(o), outcome=Outcome.SKIPPED, detail="TransactionMarker") for o in range(4, 6)]
    change = EventRecord(kafka=k(6), outcome=Outcome.SKIPPED, event=ev, detail="unchanged")
    later = [EventRecord(kafka=k(o), outcome=Outcome.SKIPPED, detail="Tombstone") for o in range(7, 10)]
    other = [EventRecord(kafka=k(o, 1), outcome=Outcome.SKIPPED, detail="Tombstone") for o in range(0, 3)]
    result = journal.write_batch([*skipped, other[0], *marker, other[1], change, *later, other[2]],
                                 {("t", 0): (0, 10), ("t", 1): (0, 3)})
    assert result.skipped == 13 and result.outcomes == {"SKIPPED": 13}
    log = rows(pg_dsn, "SELECT kafka_partition, kafka_offset, last_offset, source_pk IS NOT NULL, detail "
                       "FROM kdcdc.event_log ORDER BY 1, 2")
    assert log == [(0, 0, 5, False, "Tombstone, TransactionMarker"), (0, 6, None, True, "unchanged"),
                   (0, 7, 9, False, "Tombstone"), (1, 0, 2, False, "Tombstone")]
    assert rows(pg_dsn, "SELECT kafka_partition, count(*), count(DISTINCT kafka_offset) FROM kdcdc.event_records "
                        "GROUP BY 1 ORDER BY 1") == [(0, 10, 10), (1, 3, 3)]
    # the console counts records, not rows, and a trace by Kafka position finds a record inside a range
    from datetime import datetime, timedelta, timezone

    from connector.journal.views import JournalViews, parse_trace_query

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        views = JournalViews(conn, group=journal.group)
        status = views.sync_status(since=datetime.now(timezone.utc) - timedelta(hours=1))
        assert {a.system: a.events for a in status.sources} == {None: 12, ev.source.name: 1}
        found = views.trace(parse_trace_query("t[0]@8"))
        assert [m.what for m in found.matches] == ["t[0]@7–9"]
        assert views.trace(parse_trace_query("t[0]@10")).matches == ()
    # a second outcome for a record inside a range is refused by the offsets fence, as for single rows
    from connector.journal import Fenced

    with pytest.raises(Fenced):
        journal.write_batch([EventRecord(kafka=k(3), outcome=Outcome.SKIPPED, detail="Tombstone")],
                            {("t", 0): (3, 4)})
    # moving the offset back into a range keeps the records before it (offsets set)
    from connector.offsets import _rewind

    with journal.transaction():
        _rewind(journal, "t", 0, 8, actor="test")
    assert rows(pg_dsn, "SELECT kafka_offset, last_offset FROM kdcdc.event_log WHERE kafka_partition = 0 "
                        "ORDER BY 1") == [(0, 5), (6, None), (7, None)]
    assert rows(pg_dsn, "SELECT count(*) FROM kdcdc.event_records WHERE kafka_partition = 0")[0][0] == 8
    journal.close()


def test_text_arrays_survive_any_text(pg_dsn: str) -> None:
    from connector.journal._journal import text_array

    values = ['plain', 'with "quotes"', "back\\slash", "comma, and {braces}", "", "NULL", "空格 and\ttab", None]
    with psycopg.connect(pg_dsn) as conn:
        got = conn.execute("SELECT %s::text[]", (text_array(values),)).fetchone()
    assert got is not None and got[0] == values


def test_the_trace_of_a_voucher_shows_the_batch_that_journaled_it(pg_dsn: str) -> None:
    # One audit row per batch since 0009 (decision 0010): the console's trail of a voucher reads it through the
    # voucher's batch_id, so the journaling is still on every voucher's trail.
    from connector.journal.views import JournalViews, SourceRow
    from tests.integration.helpers import journal_vouchers

    journal = Journal(pg_dsn, group=f"g-{uuid.uuid4().hex[:6]}")
    journal_vouchers(journal, 5, seed=4)
    journal.close()
    system, table, pk, batch = rows(pg_dsn, "SELECT source_system, source_table, source_pk, batch_id "
                                            "FROM kdcdc.vouchers ORDER BY seq LIMIT 1")[0]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        trace = JournalViews(conn, group=journal.group).row_trace(SourceRow(system=system, table=table, pk=pk))
    journaled = [a for v in trace.vouchers for a in v.audit if a.action == "BATCH_JOURNALED"]
    assert journaled and {a.id for a in journaled} == {batch}
    assert journaled[0].detail["vouchers"] >= 1
