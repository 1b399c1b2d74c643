"""The random-stream ledger properties (tests/unit/test_ledger_streams.py, machinery in tests/unit/helpers.py),
through the real journal.

Each change is mapped against what PostgreSQL holds for its row (the vouchers in force and the row's newest
key, as the pipeline prefetches them) and journaled with ``write_batch``; a restart is a fresh ``Journal``
on the same database. Same invariants: nothing twice, balanced books and periods, reversals net to zero,
each row shows its latest state, nothing booked into a closed period.
"""

from __future__ import annotations

import uuid
from typing import Any

from hypothesis import HealthCheck, example, given, settings

from connector.events import ChangeEvent, KafkaCoordinates
from connector.journal import EventRecord, Journal, Outcome
from connector.ledger import RowRef, canonical_pk
from connector.mapping import Mapper, MapResult
from tests.integration.helpers import rows
from tests.unit.helpers import ABAB, StreamRun, check_ledger, stream_ledger, streams


def through_the_journal(dsn: str, ops: list[tuple[str, Any, Any]]) -> tuple[StreamRun, Journal]:
    journal = Journal(dsn, schema=f"s{uuid.uuid4().hex[:10]}", group="streams")
    journal.migrate()
    offset = 0

    def journal_one(ev: ChangeEvent, mapper: Mapper) -> MapResult:
        nonlocal journal, offset
        if offset % 7 == 6:  # now and then a restart: nothing is remembered but what PostgreSQL holds
            journal.close()
            journal = Journal(journal.dsn, schema=journal.schema, group="streams")
        assert ev.key is not None
        row = RowRef(ev.source.name, ev.source.table_id, canonical_pk(ev.key))
        result = mapper.map(ev, journal.prefetch_active([row]))
        coords = KafkaCoordinates(topic="streams", partition=0, offset=offset)
        outcome = Outcome.VOUCHERED if result.vouchers else Outcome.REJECTED if result.rejections else Outcome.SKIPPED
        journal.write_batch([EventRecord(kafka=coords, outcome=outcome, event=ev, vouchers=result.vouchers,
                                         rejections=result.rejections)], {("streams", 0): (offset, offset + 1)})
        offset += 1
        return result
    return stream_ledger(ops, journal_one), journal


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@example(ops=ABAB)
@given(streams)
def test_random_streams_through_the_journal_keep_the_ledger_right(pg_dsn: str, ops: list[tuple[str, Any, Any]]
                                                                   ) -> None:
    run, journal = through_the_journal(pg_dsn, ops)
    try:
        check_ledger(run)
        # The journal holds exactly what was mapped, and marks every reversed voucher.
        s = journal.schema
        held = {k for (k,) in rows(pg_dsn, f'SELECT key FROM "{s}".vouchers')}
        assert held == {v.key for v in run.vouchers}
        reversed_by = dict(rows(pg_dsn, f'SELECT key, reversed_by FROM "{s}".vouchers WHERE reversed_by IS NOT NULL'))
        assert reversed_by == {v.reverses: v.key for v in run.vouchers if v.reverses and v.kind.value == "reversal"}
    finally:
        journal.close()
