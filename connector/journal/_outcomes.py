"""A batch's outcomes as journal rows — pure: records in, rows for each table out (the journal COPYs them).

Besides its vouchers, each consumed record adds one event-log row (its outcome) — except that a run of
skipped records without a change event (tombstones, transaction markers) of one partition shares one row, a
range (decision 0012) — and by outcome: rejection rows, a dead-letter row, an audit row and a feedback event
(rejected and dead-lettered records), and a JOURNALED feedback event per new voucher for the source systems
that asked for it (decision 0011). New vouchers and duplicates get no audit row of their own: the batch's
audit row counts them and each voucher row names its batch (decision 0010). The column names of each row
type are the table's, so the COPY statements are written from them.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from connector.events import ChangeEvent, DecodeFailure, KafkaCoordinates
from connector.journal._audit import AuditRow
from connector.journal._feedback import FeedbackEvent, FeedbackReason, FeedbackSource
from connector.journal._status import REJECTED_STAGE, AuditAction, FeedbackStatus, Outcome
from connector.ledger import Rejection, Voucher, canonical_pk, storable

ACTOR = "pipeline"


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

    def count(self, outcome: Outcome, rec: EventRecord) -> None:
        self.outcomes[outcome.value] = self.outcomes.get(outcome.value, 0) + 1
        if outcome is Outcome.DUPLICATE:
            self.vouchers_duplicate += len(rec.duplicate_of)
        elif outcome is Outcome.REJECTED:
            self.rejected += 1
        elif outcome is Outcome.DEAD_LETTERED:
            self.dead_lettered += 1
        elif outcome is Outcome.GROUPED:
            self.grouped += 1
        elif outcome is not Outcome.VOUCHERED:
            self.skipped += 1


class EventLogRow(NamedTuple):
    consumer_group: str
    topic: str
    kafka_partition: int
    kafka_offset: int
    last_offset: int | None  #: a range of skipped records: its last offset (``None``: one record)
    outcome: Outcome
    source_system: str | None
    source_table: str | None
    source_pk: str | None
    source_position: str | None
    op: str | None
    voucher_keys: list[str]
    detail: str | None
    kafka_ts_ms: int | None


class RejectionRow(NamedTuple):
    consumer_group: str
    topic: str
    kafka_partition: int
    kafka_offset: int
    code: str
    message: str
    rule_id: str | None
    field: str | None
    value: str | None
    source_system: str
    source_table: str | None
    source_pk: str | None
    voucher_key: str | None


class DeadLetterRow(NamedTuple):
    consumer_group: str
    topic: str
    kafka_partition: int
    kafka_offset: int
    stage: str
    reason: str
    error_class: str
    raw_key: bytes | None
    raw_value: bytes | None
    headers: str  #: JSON: [[name, base64 value or null], …]


def voucher_keys(rec: EventRecord) -> list[str]:
    """The keys of the vouchers a record made, duplicates or is carried by (its event log row names them)."""
    return [v.key for v in rec.vouchers] or list(rec.duplicate_of or rec.grouped_into)


def final_outcome(rec: EventRecord, keys: Sequence[str], inserted: Collection[str]) -> Outcome:
    """A vouchered record none of whose vouchers was new (a replay, a redelivery) is a DUPLICATE."""
    if rec.outcome is Outcome.VOUCHERED and keys and not any(key in inserted for key in keys):
        return Outcome.DUPLICATE
    return rec.outcome


def _nobody(system: str) -> bool:
    return False


@dataclass(slots=True)
class OutcomeRows:
    """The rows a batch's records add besides their vouchers, table by table."""

    group: str
    #: which source systems are told JOURNALED for each new voucher
    journaled: Callable[[str], bool] = _nobody
    event_log: list[EventLogRow] = field(default_factory=list)
    rejections: list[RejectionRow] = field(default_factory=list)
    dead_letters: list[DeadLetterRow] = field(default_factory=list)
    outbox: list[FeedbackEvent] = field(default_factory=list)
    audit: list[AuditRow] = field(default_factory=list)
    #: (topic, partition) → index in ``event_log`` of the range a next skipped record may extend
    _open_range: dict[tuple[str, int], int] = field(default_factory=dict)

    @classmethod
    def of(cls, records: Sequence[EventRecord], inserted: Collection[str], *, group: str,
           result: BatchResult, journaled: Callable[[str], bool] = _nobody) -> OutcomeRows:
        """Rows for ``records`` (``inserted``: the voucher keys this batch journals); counts into ``result``.
        ``journaled``: whether a source system is told JOURNALED for each new voucher."""
        rows = cls(group, journaled)
        for rec in records:
            keys = voucher_keys(rec)
            outcome = final_outcome(rec, keys, inserted)
            result.count(outcome, rec)
            rows.add(rec, outcome, keys, inserted)
        return rows

    def add(self, rec: EventRecord, outcome: Outcome, keys: list[str], inserted: Collection[str]) -> None:
        k, ev = rec.kafka, rec.event
        tp = (k.topic, k.partition)
        if rec.detail is not None and "\x00" in rec.detail:  # PostgreSQL text refuses NUL (it may quote the source)
            rec = replace(rec, detail=storable(rec.detail))
        if outcome is Outcome.SKIPPED and ev is None:
            self._skip(rec)
            return
        self._open_range.pop(tp, None)
        source = _source(rec)
        self.event_log.append(EventLogRow(
            self.group, k.topic, k.partition, k.offset, None, outcome, ev.source.name if ev is not None else None,
            source.table, source.pk, source.position, source.op, keys, rec.detail, k.timestamp_ms))
        if outcome is Outcome.VOUCHERED:
            self._vouchered(rec, source, inserted)
        elif outcome is Outcome.REJECTED:
            self._rejected(rec, source)
        elif outcome is Outcome.DEAD_LETTERED:
            self._dead_lettered(rec, source)

    def _skip(self, rec: EventRecord) -> None:
        """A skipped record without a change event: extends the partition's range when the record before it
        in the batch was one too, else opens a range."""
        k = rec.kafka
        tp = (k.topic, k.partition)
        at = self._open_range.get(tp)
        if at is not None:
            row = self.event_log[at]
            detail = row.detail if rec.detail in (row.detail or "").split(", ") else f"{row.detail}, {rec.detail}"
            self.event_log[at] = row._replace(last_offset=k.offset, detail=detail)
            return
        self._open_range[tp] = len(self.event_log)
        self.event_log.append(EventLogRow(self.group, k.topic, k.partition, k.offset, None, Outcome.SKIPPED, None,
                                          None, None, None, None, [], rec.detail, k.timestamp_ms))

    def _vouchered(self, rec: EventRecord, source: FeedbackSource, inserted: Collection[str]) -> None:
        if not self.journaled(source.system):
            return
        for v in rec.vouchers:
            if v.key in inserted:
                self.outbox.append(FeedbackEvent.for_voucher(FeedbackStatus.JOURNALED, v, source=source,
                                                             kafka=rec.kafka))

    def _rejected(self, rec: EventRecord, source: FeedbackSource) -> None:
        k = rec.kafka
        for r in rec.rejections:
            self.rejections.append(RejectionRow(
                self.group, k.topic, k.partition, k.offset, r.code.value, r.message, r.rule, r.field, r.value,
                source.system, source.table, source.pk, r.voucher_key))
        reasons = tuple(FeedbackReason.of_rejection(r) for r in rec.rejections)
        first = rec.rejections[0] if rec.rejections else None
        self._dead_letter(rec, REJECTED_STAGE, str(first) if first else (rec.detail or "rejected"), "Rejection")
        self.audit.append(AuditRow.of(ACTOR, AuditAction.REJECTED, None,
                                      {"reasons": [r._asdict() for r in reasons], **_coords(k)}))
        self.outbox.append(FeedbackEvent.for_record(FeedbackStatus.REJECTED, group=self.group, kafka=k,
                                                    source=source, reasons=reasons))

    def _dead_lettered(self, rec: EventRecord, source: FeedbackSource) -> None:
        f = rec.failure
        stage = f.stage if f else "unknown"
        reason = f.reason if f else (rec.detail or "dead letter")
        self._dead_letter(rec, stage, reason, f.error_class if f else "DecodeError")
        self.audit.append(AuditRow.of(ACTOR, AuditAction.DEAD_LETTERED, None, {"reason": reason,
                                                                              **_coords(rec.kafka)}))
        self.outbox.append(FeedbackEvent.for_record(
            FeedbackStatus.DEAD_LETTERED, group=self.group, kafka=rec.kafka, source=source,
            reasons=(FeedbackReason(f"DECODE_{stage.upper()}", reason),)))

    def _dead_letter(self, rec: EventRecord, stage: str, reason: str, error_class: str) -> None:
        k = rec.kafka
        self.dead_letters.append(DeadLetterRow(self.group, k.topic, k.partition, k.offset, stage, reason, error_class,
                                               rec.raw_key, rec.raw_value, _headers_json(rec.headers)))


def _source(rec: EventRecord) -> FeedbackSource:
    """The record's source row as feedback names it (a record without an event: its topic as the system)."""
    ev = rec.event
    pk = rec.vouchers[0].source.row.pk if rec.vouchers else (
        canonical_pk(ev.key) if ev is not None and ev.key else None)
    if ev is None:
        return FeedbackSource(rec.kafka.topic, None, pk, None, None)
    s = ev.source
    return FeedbackSource(s.name, s.table_id, pk, s.position, ev.op.value)


def _coords(k: KafkaCoordinates) -> dict[str, object]:
    return {"topic": k.topic, "partition": k.partition, "offset": k.offset}


def _headers_json(headers: tuple[tuple[str, bytes | None], ...]) -> str:
    return json.dumps([[k, base64.b64encode(v).decode() if v is not None else None] for k, v in headers])
