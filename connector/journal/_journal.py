"""The journal: one PostgreSQL transaction per batch records every event's outcome and the new offsets.

The commit protocol (invariant 1 of DESIGN.md), in order, each step with its reason:

1. **Fence the partitions.** Upsert each partition's next offset *only if* the stored one is not beyond the
   batch's first offset. This takes the row lock (a second writer of the same partition waits here) and
   makes a zombie instance — one whose partitions were reassigned while it was busy — fail instead of
   writing duplicates (``Fenced``).
2. **Insert the vouchers** with ``ON CONFLICT (key) DO NOTHING``: a key that already exists (a replay, a
   redelivery) is skipped, not an error, and reported as a duplicate.
3. **Insert entries, event log, rejections, dead letters, feedback outbox and audit rows** with COPY.
   The event log's primary key (group, topic, partition, offset) makes a second outcome for a record
   impossible.
4. **Commit.** Outcomes and offsets become visible together or not at all; a crash before this point
   leaves the previous offsets, so the batch is consumed again and produces the same keys.
5. (Caller) commit the same offsets to Kafka asynchronously, only so that lag tools work.
"""

from __future__ import annotations

import enum
import json
import os
import socket
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from connector.errors import ConnectorError, InfraError
from connector.events import ChangeEvent, DecodeFailure, KafkaCoordinates
from connector.journal._migrate import migrate
from connector.ledger import Rejection, canonical_pk, RowRef, Voucher, VoucherKind, voucher_from_json, voucher_to_json
from connector.mapping import InMemoryLedger


class Outcome(enum.StrEnum):
    VOUCHERED = "VOUCHERED"
    REJECTED = "REJECTED"
    DEAD_LETTERED = "DEAD_LETTERED"
    SKIPPED = "SKIPPED"
    DUPLICATE = "DUPLICATE"
    #: a document line whose change is carried by its header's voucher (same source transaction)
    GROUPED = "GROUPED"


class Fenced(ConnectorError):
    """Another instance advanced these partitions: this batch must be dropped and the partitions re-sought."""

    def __init__(self, partitions: Sequence[tuple[str, int]]) -> None:
        super().__init__(f"partitions {', '.join(f'{t}[{p}]' for t, p in partitions)} were advanced by another "
                         "instance; batch abandoned")
        self.partitions = tuple(partitions)


@dataclass(frozen=True, slots=True, kw_only=True)
class EventRecord:
    """The outcome of one consumed record, ready to journal."""

    kafka: KafkaCoordinates
    outcome: Outcome
    event: ChangeEvent | None = None
    vouchers: tuple[Voucher, ...] = ()
    rejections: tuple[Rejection, ...] = ()
    failure: DecodeFailure | None = None
    detail: str | None = None
    duplicate_of: tuple[str, ...] = ()  #: keys of the vouchers this change already produced (replays)
    grouped_into: tuple[str, ...] = ()  #: GROUPED: keys of the header's vouchers that carry this line
    raw_key: bytes | None = None
    raw_value: bytes | None = None
    headers: tuple[tuple[str, bytes | None], ...] = ()


@dataclass(slots=True)
class BatchResult:
    records: int = 0
    vouchers_inserted: int = 0
    vouchers_duplicate: int = 0
    rejected: int = 0
    dead_lettered: int = 0
    skipped: int = 0
    grouped: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)


def instance_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Journal:
    """PostgreSQL journal access for one consumer group. Not thread-safe: one per pipeline."""

    def __init__(self, dsn: str, *, schema: str = "kdcdc", group: str = "kingdee-cdc",
                 owner: str | None = None) -> None:
        self.dsn = dsn
        self.schema = schema
        self.group = group
        self.owner = owner or instance_id()
        self._conn: psycopg.Connection[Any] | None = None
        self._s = sql.Identifier(schema)

    # ------------------------------------------------------------------ connection
    @property
    def conn(self) -> psycopg.Connection[Any]:
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

    def q(self, text: str) -> sql.Composed:
        """SQL with ``{s}`` replaced by the quoted journal schema."""
        return sql.SQL(text).format(s=self._s)

    # ------------------------------------------------------------------ offsets
    def stored_offsets(self, partitions: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
        parts = list(partitions)
        if not parts:
            return {}
        rows = self.conn.execute(self.q(
            "SELECT topic, kafka_partition, next_offset FROM {s}.offsets WHERE consumer_group = %s "
            "AND (topic, kafka_partition) IN (SELECT * FROM unnest(%s::text[], %s::int[]))"),
            (self.group, [t for t, _ in parts], [p for _, p in parts])).fetchall()
        return {(r[0], r[1]): r[2] for r in rows}

    # ------------------------------------------------------------------ prior vouchers
    def prefetch_active(self, rows: Iterable[RowRef]) -> InMemoryLedger:
        """What the journal knows of ``rows``, as a ledger the mapper can read and the batch can extend: the
        vouchers in force, and each row's newest voucher key per rule (in force or reversed)."""
        ledger = InMemoryLedger()
        wanted = list({(r.system, r.table, r.pk) for r in rows})
        if not wanted:
            return ledger
        args = ([w[0] for w in wanted], [w[1] for w in wanted], [w[2] for w in wanted])
        cur = self.conn.execute(self.q(
            "SELECT payload FROM {s}.vouchers WHERE kind <> 'reversal' AND reversed_by IS NULL AND "
            "(source_system, source_table, source_pk) IN (SELECT * FROM unnest(%s::text[], %s::text[], %s::text[])) "
            "ORDER BY seq"), args)
        ledger.seed(voucher_from_json(bytes(r[0])) for r in cur.fetchall())
        cur = self.conn.execute(self.q(
            "SELECT DISTINCT ON (source_system, source_table, source_pk, rule_id) source_system, source_table, "
            "source_pk, rule_id, key FROM {s}.vouchers WHERE kind <> 'reversal' AND "
            "(source_system, source_table, source_pk) IN (SELECT * FROM unnest(%s::text[], %s::text[], %s::text[])) "
            "ORDER BY source_system, source_table, source_pk, rule_id, seq DESC"), args)
        ledger.seed_latest({(RowRef(r[0], r[1], r[2]), r[3]): r[4] for r in cur.fetchall()})
        return ledger

    def journaled_changes(self, changes: Iterable[tuple[str, str, str, str, str]]) -> dict[tuple[str, ...], list[str]]:
        """Source changes (system, table, pk, position, op) that already produced vouchers, with their keys."""
        wanted = list(set(changes))
        if not wanted:
            return {}
        cur = self.conn.execute(self.q(
            "SELECT source_system, source_table, source_pk, source_position, source_op, key FROM {s}.vouchers "
            "WHERE (source_system, source_table, source_pk, source_position, source_op) IN "
            "(SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[])) ORDER BY key"),
            tuple([w[i] for w in wanted] for i in range(5)))
        found: dict[tuple[str, ...], list[str]] = {}
        for r in cur.fetchall():
            found.setdefault(tuple(r[:5]), []).append(r[5])
        return found

    def latest_changes(self, rows: Iterable[RowRef]) -> dict[RowRef, tuple[str, str]]:
        """The most recently journaled change (source position, op) of each row, whatever its outcome."""
        wanted = list({(r.system, r.table, r.pk) for r in rows})
        if not wanted:
            return {}
        cur = self.conn.execute(self.q(
            "SELECT DISTINCT ON (source_system, source_table, source_pk) source_system, source_table, source_pk, "
            "source_position, op FROM {s}.event_log WHERE (source_system, source_table, source_pk) IN "
            "(SELECT * FROM unnest(%s::text[], %s::text[], %s::text[])) "
            "ORDER BY source_system, source_table, source_pk, journaled_at DESC, kafka_offset DESC"),
            ([w[0] for w in wanted], [w[1] for w in wanted], [w[2] for w in wanted]))
        return {RowRef(r[0], r[1], r[2]): (r[3], r[4]) for r in cur.fetchall()}

    # ------------------------------------------------------------------ the batch transaction
    def write_batch(self, records: Sequence[EventRecord], positions: Mapping[tuple[str, int], tuple[int, int]]
                    ) -> BatchResult:
        """Journal ``records`` and advance ``positions`` ((topic, partition) → (first offset, next offset))."""
        conn = self.conn
        result = BatchResult(records=len(records))
        with conn.transaction():
            # 1. fence + advance offsets
            fenced = []
            for (topic, part), (first, nxt) in sorted(positions.items()):
                row = conn.execute(self.q(
                    "INSERT INTO {s}.offsets (consumer_group, topic, kafka_partition, next_offset, owner) "
                    "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (consumer_group, topic, kafka_partition) DO UPDATE "
                    "SET next_offset = EXCLUDED.next_offset, owner = EXCLUDED.owner, updated_at = now() "
                    "WHERE {s}.offsets.next_offset <= %s RETURNING 1"),
                    (self.group, topic, part, nxt, self.owner, first)).fetchone()
                if row is None:
                    fenced.append((topic, part))
            if fenced:
                raise Fenced(fenced)
            # 2. vouchers: keys already journaled (replays, redeliveries) are skipped (see _insert_vouchers).
            vouchers = [(rec.kafka, v) for rec in records for v in rec.vouchers]
            inserted = self._insert_vouchers(conn, vouchers)
            result.vouchers_inserted = len(inserted)
            result.vouchers_duplicate = len(vouchers) - len(inserted)
            # 3. everything else, by COPY
            with conn.cursor() as cur:
                self._copy_outcomes(cur, records, inserted, result)
        return result

    def _insert_vouchers(self, conn: psycopg.Connection[Any],
                         vouchers: Sequence[tuple[KafkaCoordinates | None, Voucher]]) -> set[str]:
        """Insert vouchers and their entries (keys already journaled are skipped); mark what they reverse.

        A concurrent insert of the same key (a replay on another partition) raises UniqueViolation, which
        retries the whole batch; the retry then finds the key and skips it.
        """
        inserted: set[str] = set()
        if not vouchers:
            return inserted
        keys = [v.key for _, v in vouchers]
        existing = {r[0] for r in conn.execute(self.q("SELECT key FROM {s}.vouchers WHERE key = ANY(%s)"),
                                               (keys,)).fetchall()}
        new: list[tuple[KafkaCoordinates | None, Voucher]] = []
        for k, v in vouchers:
            if v.key not in existing and v.key not in inserted:
                inserted.add(v.key)
                new.append((k, v))
        if not new:
            return inserted
        with conn.cursor() as cur:
            with cur.copy(self.q(
                    "COPY {s}.vouchers (key, kind, reverses, book, data_centre, voucher_date, "
                    "voucher_group, explanation, debit_total, review, source_system, source_table, "
                    "source_pk, source_position, source_op, source_ts_ms, topic, kafka_partition, "
                    "kafka_offset, kafka_ts_ms, rule_id, rule_version, payload, status, original_date) "
                    "FROM STDIN")) as copy:
                for k, v in new:
                    copy.write_row((
                        v.key, v.kind.value, v.reverses, v.book, v.data_centre, v.date, v.group,
                        v.explanation, v.debit_total, v.needs_review, v.source.row.system,
                        v.source.row.table, v.source.row.pk, v.source.position, v.source.op,
                        v.source.ts_ms, k.topic if k else None, k.partition if k else None,
                        k.offset if k else None, k.timestamp_ms if k else None, v.rule_id, v.rule_version,
                        voucher_to_json(v), "OPENING" if v.opening else "JOURNALED", v.original_date))
            reversals = [(v.reverses, v.key) for _, v in new if v.kind is VoucherKind.REVERSAL and v.reverses]
            if reversals:
                cur.execute(self.q(
                    "UPDATE {s}.vouchers AS o SET reversed_by = r.by, updated_at = now() "
                    "FROM unnest(%s::text[], %s::text[]) AS r(orig, by) WHERE o.key = r.orig"),
                    ([a for a, _ in reversals], [b for _, b in reversals]))
            with cur.copy(self.q("COPY {s}.entries (voucher_key, seq, account, side, amount, currency, rate, "
                                 "amount_for, dimensions, explanation) FROM STDIN")) as copy:
                for _, v in new:
                    for i, e in enumerate(v.entries, 1):
                        dims = json.dumps(e.dimensions, ensure_ascii=False) if e.dimensions else "{}"
                        copy.write_row((v.key, i, e.account, e.side.value, e.amount, e.currency, e.rate,
                                        e.amount_for, dims, e.explanation))
        return inserted

    def write_reposts(self, vouchers: Sequence[tuple[KafkaCoordinates | None, Voucher]], *, actor: str,
                      detail: Mapping[str, Any]) -> set[str]:
        """Journal re-mapping corrections (reversals + corrected vouchers) outside the consumed stream:
        vouchers, entries, an audit row and a JOURNALED feedback row each, in one transaction."""
        with self.conn.transaction():
            inserted = self._insert_vouchers(self.conn, vouchers)
            audit, outbox = [], []
            for k, v in vouchers:
                if v.key not in inserted:
                    continue
                audit.append((actor, "JOURNALED", v.key, json.dumps(
                    {"rule": v.rule_id, "version": v.rule_version, "kind": v.kind.value, "reverses": v.reverses,
                     **detail}, ensure_ascii=False)))
                base = {"source": {"system": v.source.row.system, "table": v.source.row.table, "pk": v.source.row.pk,
                                   "position": v.source.position, "op": v.source.op},
                        "kafka": {"topic": k.topic, "partition": k.partition, "offset": k.offset} if k else None}
                outbox.append((f"{v.key}:JOURNALED", v.source.row.system, v.source.row.pk, "JOURNALED", json.dumps(
                    {**base, "voucher_key": v.key, "kind": v.kind.value, "reverses": v.reverses,
                     "status": "JOURNALED", "reason": "REMAPPED"}, ensure_ascii=False)))
            self.insert_audit(self.conn, audit)
            self.insert_outbox(self.conn, outbox)
        return inserted

    def insert_audit(self, conn: psycopg.Connection[Any], rows: Sequence[tuple[str, str, str | None, str]]) -> None:
        """Append audit rows (actor, action, voucher key, JSON detail) in one statement."""
        if rows:
            conn.execute(self.q("INSERT INTO {s}.audit (actor, action, voucher_key, detail) "
                                "SELECT a, b, c, d::jsonb FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[]) "
                                "AS r(a, b, c, d)"), tuple([r[i] for r in rows] for i in range(4)))

    def insert_outbox(self, conn: psycopg.Connection[Any], rows: Sequence[tuple[str, str, str, str, str]]) -> None:
        """Add feedback rows (event id, source system, message key, status, JSON payload) in one statement;
        an event id already there is left as it is."""
        if rows:
            conn.execute(self.q("INSERT INTO {s}.outbox (event_id, source_system, message_key, status, payload) "
                                "SELECT a, b, c, d, e::jsonb FROM unnest(%s::text[], %s::text[], %s::text[], "
                                "%s::text[], %s::text[]) AS r(a, b, c, d, e) ON CONFLICT (event_id) DO NOTHING"),
                         tuple([r[i] for r in rows] for i in range(5)))

    def _copy_outcomes(self, cur: psycopg.Cursor[Any], records: Sequence[EventRecord], inserted: set[str],
                       result: BatchResult) -> None:
        group = self.group
        log_rows: list[tuple[Any, ...]] = []
        rej_rows: list[tuple[Any, ...]] = []
        dl_rows: list[tuple[Any, ...]] = []
        outbox_rows: list[tuple[Any, ...]] = []
        audit_rows: list[tuple[Any, ...]] = []
        for rec in records:
            k = rec.kafka
            ev = rec.event
            outcome = rec.outcome
            keys = [v.key for v in rec.vouchers] or list(rec.duplicate_of or rec.grouped_into)
            if outcome is Outcome.VOUCHERED and keys and not any(key in inserted for key in keys):
                outcome = Outcome.DUPLICATE
            result.outcomes[outcome.value] = result.outcomes.get(outcome.value, 0) + 1
            src = ev.source if ev is not None else None
            pk = rec.vouchers[0].source.row.pk if rec.vouchers else (
                canonical_pk(ev.key) if ev is not None and ev.key else None)
            log_rows.append((group, k.topic, k.partition, k.offset, outcome.value, src.name if src else None,
                             src.table_id if src else None, pk, src.position if src else None,
                             ev.op.value if ev else None, keys, rec.detail, k.timestamp_ms))
            coords = {"topic": k.topic, "partition": k.partition, "offset": k.offset}
            msg_key = pk or f"{k.topic}:{k.partition}:{k.offset}"
            system = src.name if src else k.topic
            base = {"source": {"system": system, "table": src.table_id if src else None, "pk": pk,
                               "position": src.position if src else None, "op": ev.op.value if ev else None},
                    "kafka": coords}
            if outcome is Outcome.VOUCHERED:
                for v in rec.vouchers:
                    if v.key not in inserted:
                        continue
                    audit_rows.append(("pipeline", "JOURNALED", v.key, json.dumps(
                        {"rule": v.rule_id, "kind": v.kind.value, "reverses": v.reverses, **coords})))
                    outbox_rows.append((f"{v.key}:JOURNALED", system, msg_key, "JOURNALED", json.dumps(
                        {**base, "voucher_key": v.key, "kind": v.kind.value, "reverses": v.reverses,
                         "status": "JOURNALED"}, ensure_ascii=False)))
            elif outcome is Outcome.DUPLICATE:
                result.vouchers_duplicate += len(rec.duplicate_of)
                audit_rows.append(("pipeline", "DUPLICATE_SKIPPED", keys[0], json.dumps({"keys": keys, **coords})))
            elif outcome is Outcome.REJECTED:
                result.rejected += 1
                reasons = []
                for r in rec.rejections:
                    rej_rows.append((group, k.topic, k.partition, k.offset, r.code.value, r.message, r.rule, r.field,
                                     r.value, system, src.table_id if src else None, pk, r.voucher_key))
                    reasons.append({"code": r.code.value, "message": r.message, "rule": r.rule, "field": r.field,
                                    "value": r.value})
                first = rec.rejections[0] if rec.rejections else None
                dl_rows.append((group, k.topic, k.partition, k.offset, "TASK_PUT",
                                str(first) if first else (rec.detail or "rejected"), "Rejection", rec.raw_key,
                                rec.raw_value, _headers_json(rec.headers)))
                audit_rows.append(("pipeline", "REJECTED", None, json.dumps({"reasons": reasons, **coords},
                                                                            ensure_ascii=False)))
                outbox_rows.append((f"{group}:{k.topic}:{k.partition}:{k.offset}:REJECTED", system, msg_key,
                                    "REJECTED", json.dumps({**base, "status": "REJECTED", "reasons": reasons},
                                                           ensure_ascii=False)))
            elif outcome is Outcome.DEAD_LETTERED:
                result.dead_lettered += 1
                f = rec.failure
                reason = f.reason if f else (rec.detail or "dead letter")
                dl_rows.append((group, k.topic, k.partition, k.offset, f.stage if f else "unknown", reason,
                                f.error_class if f else "DecodeError", rec.raw_key, rec.raw_value,
                                _headers_json(rec.headers)))
                audit_rows.append(("pipeline", "DEAD_LETTERED", None, json.dumps({"reason": reason, **coords},
                                                                                 ensure_ascii=False)))
                outbox_rows.append((f"{group}:{k.topic}:{k.partition}:{k.offset}:DEAD_LETTERED", system, msg_key,
                                    "DEAD_LETTERED", json.dumps({**base, "status": "DEAD_LETTERED", "reasons": [
                                        {"code": f"DECODE_{(f.stage if f else 'unknown').upper()}",
                                         "message": reason}]}, ensure_ascii=False)))
            elif outcome is Outcome.GROUPED:
                result.grouped += 1
            else:
                result.skipped += 1
        self._copy(cur, "event_log", ("consumer_group", "topic", "kafka_partition", "kafka_offset", "outcome",
                                      "source_system", "source_table", "source_pk", "source_position", "op",
                                      "voucher_keys", "detail", "kafka_ts_ms"), log_rows)
        self._copy(cur, "rejections", ("consumer_group", "topic", "kafka_partition", "kafka_offset", "code",
                                       "message", "rule_id", "field", "value", "source_system", "source_table",
                                       "source_pk", "voucher_key"), rej_rows)
        # No conflicts possible below: the event log's primary key (written above, same transaction) already
        # guarantees each record is journaled once per group.
        self._copy(cur, "dead_letters", ("consumer_group", "topic", "kafka_partition", "kafka_offset", "stage",
                                         "reason", "error_class", "raw_key", "raw_value", "headers"), dl_rows)
        self._copy(cur, "outbox", ("event_id", "source_system", "message_key", "status", "payload"), outbox_rows)
        self._copy(cur, "audit", ("actor", "action", "voucher_key", "detail"), audit_rows)

    def _copy(self, cur: psycopg.Cursor[Any], table: str, cols: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        stmt = sql.SQL("COPY {s}.{t} ({c}) FROM STDIN").format(
            s=self._s, t=sql.Identifier(table), c=sql.SQL(", ").join(map(sql.Identifier, cols)))
        with cur.copy(stmt) as copy:
            for row in rows:
                copy.write_row(row)

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection[Any]]:
        with self.conn.transaction():
            yield self.conn


def _headers_json(headers: tuple[tuple[str, bytes | None], ...]) -> str:
    import base64

    return json.dumps([[k, base64.b64encode(v).decode() if v is not None else None] for k, v in headers])

