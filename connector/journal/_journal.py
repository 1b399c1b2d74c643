"""The journal: one PostgreSQL transaction per batch records every event's outcome and the new offsets.

The commit protocol (invariant 1 of DESIGN.md), in order, each step with its reason:

1. **Fence the partitions.** Upsert each partition's next offset *only if* the stored one is not beyond the
   batch's first offset. This takes the row lock (a second writer of the same partition waits here) and
   makes a zombie instance — one whose partitions were reassigned while it was busy — fail instead of
   writing duplicates (``Fenced``).
2. **Record the batch** in the audit log (one row: its partitions and offset ranges, its outcomes) and
   **insert the new vouchers** by binary COPY, each naming that batch; keys already journaled (a replay, a
   redelivery) are left out and reported as duplicates. A voucher's entries live in its payload only (the
   ``entries`` view reads them from there: migration 0009).
3. **Insert the event log, rejections, dead letters and feedback outbox rows** by COPY. The event log's
   primary key (group, topic, partition, offset) makes a second outcome for a record impossible.
4. **Commit.** Outcomes and offsets become visible together or not at all; a crash before this point
   leaves the previous offsets, so the batch is consumed again and produces the same keys.
5. (Caller) commit the same offsets to Kafka asynchronously, only so that lag tools work.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final, NamedTuple, TypeVar

import psycopg
from psycopg import sql
from psycopg.abc import Params
from psycopg.rows import TupleRow, class_row

from connector.errors import ConnectorError, InfraError
from connector.events import KafkaCoordinates
from connector.journal._audit import AuditRow
from connector.journal._feedback import FeedbackEvent
from connector.journal._migrate import migrate
from connector.journal._outcomes import ACTOR, BatchResult, EventRecord, OutcomeRows
from connector.journal._status import AuditAction, FeedbackStatus, VoucherStatus
from connector.journal._summaries import Route, route
from connector.ledger import (
    BatchState,
    InMemoryLedger,
    RowRef,
    SourceChange,
    Voucher,
    VoucherKind,
    voucher_from_json,
    voucher_to_json,
)

R = TypeVar("R")
Partition = tuple[str, int]  #: (topic, partition)
#: values ``Journal.q`` puts into SQL as literals: a name (a status member …) or several, for ``IN (…)``
SqlValue = str | Iterable[str]


class Fenced(ConnectorError):
    """Another instance advanced these partitions: this batch must be dropped and the partitions re-sought."""

    def __init__(self, partitions: Sequence[Partition]) -> None:
        super().__init__(f"partitions {', '.join(f'{t}[{p}]' for t, p in partitions)} were advanced by another "
                         "instance; batch abandoned")
        self.partitions = tuple(partitions)


def instance_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class _StoredOffset(NamedTuple):
    topic: str
    kafka_partition: int
    next_offset: int


@dataclass(frozen=True, slots=True)
class _ChangeRow:
    source_system: str
    source_table: str
    source_pk: str
    source_position: str
    source_op: str

    def change(self) -> SourceChange:
        return SourceChange(RowRef(self.source_system, self.source_table, self.source_pk), self.source_position,
                            self.source_op)


@dataclass(frozen=True, slots=True)
class _KeyedChangeRow(_ChangeRow):
    key: str


class _LatestKeyRow(NamedTuple):
    source_system: str
    source_table: str
    source_pk: str
    rule_id: str
    key: str


def text_array(values: Iterable[str | None]) -> str:
    """A PostgreSQL ``text[]`` literal of ``values``, to pass as one text parameter cast with ``::text[]``
    (formatting it here is several times cheaper than psycopg's per-element list dumper, ~6 % of the
    pipeline's CPU when the row state was read with array parameters)."""
    return "{" + ",".join("NULL" if v is None else '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
                          for v in values) + "}"


def _unnest_rows(rows: Iterable[RowRef]) -> tuple[str, str, str]:
    """Distinct rows as three array literals for ``unnest(%s::text[], %s::text[], %s::text[])``."""
    wanted = list(dict.fromkeys(rows))
    return (text_array([r.system for r in wanted]), text_array([r.table for r in wanted]),
            text_array([r.pk for r in wanted]))


#: the columns of a ``vouchers`` row as ``_voucher_row`` gives them, and their types for binary COPY
_VOUCHER_COLUMNS: Final = (
    ("key", "text"), ("kind", "text"), ("reverses", "text"), ("book", "text"), ("data_centre", "text"),
    ("voucher_date", "date"), ("voucher_group", "text"), ("explanation", "text"), ("debit_total", "numeric"),
    ("review", "bool"), ("source_system", "text"), ("source_table", "text"), ("source_pk", "text"),
    ("source_position", "text"), ("source_op", "text"), ("source_ts_ms", "int8"), ("topic", "text"),
    ("kafka_partition", "int4"), ("kafka_offset", "int8"), ("kafka_ts_ms", "int8"), ("rule_id", "text"),
    ("rule_version", "text"), ("payload", "bytea"), ("status", "text"), ("original_date", "date"),
    ("summary_id", "int8"), ("adjusts_summary", "int8"), ("batch_id", "int8"))


class Journal:
    """PostgreSQL journal access for one consumer group. Not thread-safe: one per pipeline."""

    def __init__(self, dsn: str, *, schema: str = "kdcdc", group: str = "kingdee-cdc",
                 owner: str | None = None, journaled_feedback: Collection[str] = ()) -> None:
        """``journaled_feedback``: the source systems told JOURNALED for each new voucher (``*``: every
        system; decision 0011). POSTED, REJECTED, REVERSED and DEAD_LETTERED are always told."""
        self.dsn = dsn
        self.schema = schema
        self.group = group
        self.owner = owner or instance_id()
        self.journaled_feedback = frozenset(journaled_feedback)
        self._conn: psycopg.Connection[TupleRow] | None = None
        self._s = sql.Identifier(schema)
        self._statements: dict[str, sql.Composed] = {}

    def _wants_journaled(self, system: str) -> bool:
        subscribed = self.journaled_feedback
        return bool(subscribed) and ("*" in subscribed or system in subscribed)

    # ------------------------------------------------------------------ connection
    @property
    def conn(self) -> psycopg.Connection[TupleRow]:
        if self._conn is None or self._conn.closed:
            try:
                self._conn = psycopg.connect(self.dsn, autocommit=True, application_name="kingdee-cdc")
            except psycopg.OperationalError as e:
                raise InfraError(f"PostgreSQL unreachable: {e}") from e
        return self._conn

    def reset(self) -> None:
        """Drop the connection (after an error); the next use reconnects."""
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
        self._conn = None

    def close(self) -> None:
        self.reset()

    def migrate(self) -> list[int]:
        return migrate(self.conn, self.schema)

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection[TupleRow]]:
        with self.conn.transaction():
            yield self.conn

    def q(self, text: str, **values: SqlValue) -> sql.Composed:
        """SQL with ``{s}`` replaced by the quoted journal schema and each ``{name}`` by the literal value(s) given
        for it: ``q("… status = {posted}", posted=VoucherStatus.POSTED)`` → ``… status = 'POSTED'``; several
        (``status IN ({unsettled})``) are joined by commas. Literals, not parameters, so the planner still sees
        the partial indexes' conditions."""
        literals = {name: sql.Literal(str(v)) if isinstance(v, str) else sql.SQL(", ").join(
            sql.Literal(str(x)) for x in v) for name, v in values.items()}
        return sql.SQL(text).format(s=self._s, **literals)

    def rows(self, row: type[R], query: sql.Composed, params: Params | None = None) -> list[R]:
        """The rows of ``query`` as ``row`` instances (a NamedTuple or dataclass named after the columns)."""
        with self.conn.cursor(row_factory=class_row(row)) as cur:
            return cur.execute(query, params).fetchall()

    def count(self, query: sql.Composed, params: Params | None = None) -> int:
        """The single number ``query`` selects (``count(*)`` …); 0 when it selects no row."""
        found = self.conn.execute(query, params).fetchone()
        return int(found[0]) if found and found[0] is not None else 0

    # ------------------------------------------------------------------ offsets
    def stored_offsets(self, partitions: Iterable[Partition]) -> dict[Partition, int]:
        parts = list(partitions)
        if not parts:
            return {}
        found = self.rows(_StoredOffset, self.q(
            "SELECT topic, kafka_partition, next_offset FROM {s}.offsets WHERE consumer_group = %s "
            "AND (topic, kafka_partition) IN (SELECT * FROM unnest(%s::text[], %s::int[]))"),
            (self.group, [t for t, _ in parts], [p for _, p in parts]))
        return {(r.topic, r.kafka_partition): r.next_offset for r in found}

    # ------------------------------------------------------------------ what is known of rows
    def batch_state(self, changes: Iterable[SourceChange]) -> BatchState:
        """What the journal knows of a batch's source changes before they are mapped: the changes that already
        produced vouchers, and the state of their rows (``prefetch_active``)."""
        wanted = set(changes)
        return BatchState(done=self.journaled_changes(wanted), rows=self.prefetch_active(c.row for c in wanted))

    def prefetch_active(self, rows: Iterable[RowRef]) -> InMemoryLedger:
        """What the journal knows of ``rows``, as a row state the mapper can read and the batch can extend: the
        vouchers in force, and each row's newest voucher key per rule (in force or reversed)."""
        ledger = InMemoryLedger()
        args = _unnest_rows(rows)
        if not args[0]:
            return ledger
        cur = self.conn.execute(self.q(
            "SELECT payload FROM {s}.vouchers WHERE kind <> {reversal} AND reversed_by IS NULL AND "
            "(source_system, source_table, source_pk) IN (SELECT * FROM unnest(%s::text[], %s::text[], %s::text[])) "
            "ORDER BY seq", reversal=VoucherKind.REVERSAL), args)
        ledger.seed(voucher_from_json(bytes(payload)) for (payload,) in cur.fetchall())
        latest = self.rows(_LatestKeyRow, self.q(
            "SELECT DISTINCT ON (source_system, source_table, source_pk, rule_id) source_system, source_table, "
            "source_pk, rule_id, key FROM {s}.vouchers WHERE kind <> {reversal} AND "
            "(source_system, source_table, source_pk) IN (SELECT * FROM unnest(%s::text[], %s::text[], %s::text[])) "
            "ORDER BY source_system, source_table, source_pk, rule_id, seq DESC", reversal=VoucherKind.REVERSAL), args)
        ledger.seed_latest({(RowRef(r.source_system, r.source_table, r.source_pk), r.rule_id): r.key for r in latest})
        return ledger

    def journaled_changes(self, changes: Iterable[SourceChange]) -> dict[SourceChange, tuple[str, ...]]:
        """Source changes that already produced vouchers, with those vouchers' keys (in key order)."""
        wanted = list(set(changes))
        if not wanted:
            return {}
        found = self.rows(_KeyedChangeRow, self.q(
            "SELECT source_system, source_table, source_pk, source_position, source_op, key FROM {s}.vouchers "
            "WHERE (source_system, source_table, source_pk, source_position, source_op) IN "
            "(SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[])) ORDER BY key"),
            (text_array([c.row.system for c in wanted]), text_array([c.row.table for c in wanted]),
             text_array([c.row.pk for c in wanted]), text_array([c.position for c in wanted]),
             text_array([c.op for c in wanted])))
        keys: dict[SourceChange, list[str]] = {}
        for r in found:
            keys.setdefault(r.change(), []).append(r.key)
        return {c: tuple(k) for c, k in keys.items()}

    def latest_changes(self, rows: Iterable[RowRef]) -> dict[RowRef, SourceChange]:
        """The most recently journaled change of each row, whatever its outcome."""
        args = _unnest_rows(rows)
        if not args[0]:
            return {}
        found = self.rows(_ChangeRow, self.q(
            "SELECT DISTINCT ON (source_system, source_table, source_pk) source_system, source_table, source_pk, "
            "source_position, op AS source_op FROM {s}.event_log WHERE (source_system, source_table, source_pk) IN "
            "(SELECT * FROM unnest(%s::text[], %s::text[], %s::text[])) "
            "ORDER BY source_system, source_table, source_pk, journaled_at DESC, kafka_offset DESC"), args)
        return {c.row: c for c in (r.change() for r in found)}

    # ------------------------------------------------------------------ the batch transaction
    def write_batch(self, records: Sequence[EventRecord], positions: Mapping[Partition, tuple[int, int]]
                    ) -> BatchResult:
        """Journal ``records`` and advance ``positions`` ((topic, partition) → (first offset, next offset))."""
        result = BatchResult(records=len(records))
        with self.transaction():
            # 1. fence + advance offsets
            self._fence(positions)
            # 2. vouchers: keys already journaled (replays, redeliveries) are skipped (see insert_vouchers).
            vouchers = [(rec.kafka, v) for rec in records for v in rec.vouchers]
            new = self._new_vouchers(vouchers)
            inserted = {v.key for _, v in new}
            result.vouchers_inserted = len(new)
            result.vouchers_duplicate = len(vouchers) - len(new)
            rows = OutcomeRows.of(records, inserted, group=self.group, result=result,
                                  journaled=self._wants_journaled)
            batch = self._audit_batch(positions, result) if records else None
            self._insert_new(new, batch)
            # 3. everything else, by COPY
            self._copy_outcomes(rows)
        return result

    def _audit_batch(self, positions: Mapping[Partition, tuple[int, int]], result: BatchResult) -> int:
        """The batch's audit row (decision 0010): who journaled which offsets with what outcomes. Its id is the
        ``batch_id`` of every voucher the batch journals; those rows carry the per-voucher facts (rule and
        version, source change, Kafka record)."""
        row = AuditRow.of(ACTOR, AuditAction.BATCH_JOURNALED, None, {
            "group": self.group, "owner": self.owner,
            "offsets": {f"{t}[{p}]": [first, nxt] for (t, p), (first, nxt) in sorted(positions.items())},
            "records": result.records, "outcomes": dict(sorted(result.outcomes.items())),
            "vouchers": result.vouchers_inserted, "duplicates": result.vouchers_duplicate})
        found = self.conn.execute(self._statement("audit_batch", (
            "INSERT INTO {s}.audit (actor, action, voucher_key, detail) VALUES (%s, %s, NULL, %s::jsonb) "
            "RETURNING id")), (row.actor, row.action, row.detail)).fetchone()
        assert found is not None
        return int(found[0])

    def _statement(self, name: str, text: str) -> sql.Composed:
        """``q(text)``, composed once per journal (the hot path's statements)."""
        stmt = self._statements.get(name)
        if stmt is None:
            stmt = self._statements[name] = self.q(text)
        return stmt

    def _fence(self, positions: Mapping[Partition, tuple[int, int]]) -> None:
        """Step 1: advance each partition's offset only if the stored one is not beyond the batch's first."""
        fenced = []
        stmt = self._statement("fence", (
            "INSERT INTO {s}.offsets (consumer_group, topic, kafka_partition, next_offset, owner) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (consumer_group, topic, kafka_partition) DO UPDATE "
            "SET next_offset = EXCLUDED.next_offset, owner = EXCLUDED.owner, updated_at = now() "
            "WHERE {s}.offsets.next_offset <= %s RETURNING 1"))
        for (topic, part), (first, nxt) in sorted(positions.items()):
            row = self.conn.execute(stmt, (self.group, topic, part, nxt, self.owner, first)).fetchone()
            if row is None:
                fenced.append((topic, part))
        if fenced:
            raise Fenced(fenced)

    def insert_vouchers(self, vouchers: Sequence[tuple[KafkaCoordinates | None, Voucher]], *,
                        batch_id: int | None = None) -> set[str]:
        """Insert vouchers (keys already journaled are skipped); mark what they reverse. Returns the keys
        inserted. ``batch_id``: the audit row of the batch that journals them.

        A concurrent insert of the same key (a replay on another partition) raises UniqueViolation, which
        retries the whole batch; the retry then finds the key and skips it.
        """
        new = self._new_vouchers(vouchers)
        self._insert_new(new, batch_id)
        return {v.key for _, v in new}

    def _insert_new(self, new: Sequence[tuple[KafkaCoordinates | None, Voucher]], batch_id: int | None) -> None:
        """COPY ``new`` vouchers (binary: no text round trip of dates, amounts and the payload) and mark the
        vouchers their reversals reverse."""
        if not new:
            return
        routes = route(self, [v for _, v in new])  # contributions to summaries (and their reversals)
        with self.conn.cursor() as cur:
            with cur.copy(self._statement("copy_vouchers", (
                    "COPY {s}.vouchers (" + ", ".join(c for c, _ in _VOUCHER_COLUMNS) + ") FROM STDIN "
                    "(FORMAT BINARY)"))) as copy:
                copy.set_types([t for _, t in _VOUCHER_COLUMNS])
                for k, v in new:
                    copy.write_row(_voucher_row(k, v, routes.get(v.key), batch_id))
            reversals = [(v.reverses, v.key) for _, v in new if v.kind is VoucherKind.REVERSAL and v.reverses]
            if reversals:
                cur.execute(self._statement("reversed_by", (
                    "UPDATE {s}.vouchers AS o SET reversed_by = r.by, updated_at = now() "
                    "FROM unnest(%s::text[], %s::text[]) AS r(orig, by) WHERE o.key = r.orig")),
                    (text_array([a for a, _ in reversals]), text_array([b for _, b in reversals])))

    def _new_vouchers(self, vouchers: Sequence[tuple[KafkaCoordinates | None, Voucher]]
                      ) -> list[tuple[KafkaCoordinates | None, Voucher]]:
        """``vouchers`` whose keys are not journaled yet, each key once."""
        if not vouchers:
            return []
        existing = {key for (key,) in self.conn.execute(self._statement(
            "existing", "SELECT key FROM {s}.vouchers WHERE key = ANY(%s::text[])"),
            (text_array([v.key for _, v in vouchers]),)).fetchall()}
        new: dict[str, tuple[KafkaCoordinates | None, Voucher]] = {}
        for k, v in vouchers:
            if v.key not in existing and v.key not in new:
                new[v.key] = (k, v)
        return list(new.values())

    def write_reposts(self, vouchers: Sequence[tuple[KafkaCoordinates | None, Voucher]], *, actor: str,
                      detail: Mapping[str, object]) -> set[str]:
        """Journal re-mapping corrections (reversals + corrected vouchers) outside the consumed stream, in one
        transaction: the vouchers and an audit row each (an operator's action), and a JOURNALED feedback event
        each for the source systems that asked for JOURNALED (decision 0011)."""
        with self.transaction():
            inserted = self.insert_vouchers(vouchers)
            new = [(k, v) for k, v in vouchers if v.key in inserted]
            self.insert_audit([AuditRow.of(actor, AuditAction.JOURNALED, v.key, {
                "rule": v.rule_id, "version": v.rule_version, "kind": v.kind.value, "reverses": v.reverses, **detail})
                for _, v in new])
            self.insert_outbox([FeedbackEvent.for_voucher(FeedbackStatus.JOURNALED, v, kafka=k, note="REMAPPED")
                                for k, v in new if self._wants_journaled(v.source.row.system)])
        return inserted

    def insert_audit(self, rows: Sequence[AuditRow]) -> None:
        """Append audit rows in one statement."""
        if rows:
            self.conn.execute(self.q(
                "INSERT INTO {s}.audit (actor, action, voucher_key, detail) SELECT a, b, c, d::jsonb "
                "FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[]) AS r(a, b, c, d)"),
                tuple(list(column) for column in zip(*rows)))

    def insert_outbox(self, events: Sequence[FeedbackEvent]) -> None:
        """Add feedback events to the outbox in one statement; an event id already there is left as it is."""
        if events:
            rows = [e.to_outbox_row() for e in events]
            self.conn.execute(self.q(
                "INSERT INTO {s}.outbox (event_id, source_system, message_key, status, payload) "
                "SELECT a, b, c, d, e::jsonb FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[]) "
                "AS r(a, b, c, d, e) ON CONFLICT (event_id) DO NOTHING"), tuple(list(column) for column in zip(*rows)))

    def _copy_outcomes(self, rows: OutcomeRows) -> None:
        """Step 3: the event log, rejections, dead letters, feedback outbox and the audit rows of rejected and
        dead-lettered records, by COPY."""
        self._copy("event_log", rows.event_log, _EVENT_LOG_TYPES)
        self._copy("rejections", rows.rejections)
        # No conflicts possible below: the event log's primary key (written above, same transaction) already
        # guarantees each record is journaled once per group.
        self._copy("dead_letters", rows.dead_letters)
        self._copy("outbox", [e.to_outbox_row() for e in rows.outbox])
        self._copy("audit", rows.audit)

    def _copy(self, table: str, rows: Sequence[NamedTuple], types: Sequence[str] | None = None) -> None:
        """COPY ``rows`` into ``table``; the row type's field names are the columns (``types``: binary COPY with
        these column types)."""
        if not rows:
            return
        stmt = self._statement(f"copy_{table}", f"COPY {{s}}.{table} ({', '.join(rows[0]._fields)}) FROM STDIN"
                               + (" (FORMAT BINARY)" if types else ""))
        with self.conn.cursor() as cur, cur.copy(stmt) as copy:
            if types:
                copy.set_types(types)
            for row in rows:
                copy.write_row(row)


#: binary COPY types of ``EventLogRow``'s columns
_EVENT_LOG_TYPES: Final = ("text", "text", "int4", "int8", "int8", "text", "text", "text", "text", "text", "text",
                           "text[]", "text", "int8")


def _voucher_row(k: KafkaCoordinates | None, v: Voucher, r: Route | None = None, batch_id: int | None = None
                 ) -> tuple[Any, ...]:
    """A ``vouchers`` row (``_VOUCHER_COLUMNS``); a new voucher is JOURNALED, opening state OPENING, a
    contribution to a summary as ``route`` says (SUMMARIZED, or JOURNALED to be posted on its own)."""
    s = v.source
    row = s.row
    status = r.status if r is not None else VoucherStatus.OPENING if v.opening else VoucherStatus.JOURNALED
    return (v.key, v.kind.value, v.reverses, v.book, v.data_centre, v.date, v.group, v.explanation, v.debit_total,
            v.needs_review, row.system, row.table, row.pk, s.position, s.op, s.ts_ms,
            k.topic if k else None, k.partition if k else None, k.offset if k else None,
            k.timestamp_ms if k else None, v.rule_id, v.rule_version, voucher_to_json(v), status.value,
            v.original_date, r.summary_id if r else None, r.adjusts_summary if r else None, batch_id)
