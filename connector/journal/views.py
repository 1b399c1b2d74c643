"""The journal's read model: what the operator console shows, as typed, immutable values.

The pipeline, the poster and the relay write the journal; this module only reads it, one query per question, each
an index range scan (migration ``0008_console_indexes``) so that every console page stays under 200 ms on a
journal of ten million events (``bench/console.py``). Questions:

* ``JournalViews.sync_status`` — per source system: last event and the events since a time by outcome; per source
  system and book: vouchers posted since then, waiting (and the oldest), rejected by Kingdee, needing attention;
  the stored positions per partition.
* ``JournalViews.trace`` — from a source key, document number, Kafka coordinates, voucher key or Kingdee number to
  the chain source row → change events → vouchers and their entries → Kingdee number and status → feedback.
* ``JournalViews.triage_counts`` / ``problem_events`` — rejections and undecodable records over time, by source and
  reason, and the events behind a count.
* ``JournalViews.reconciliations`` — the latest ``kingdee-cdc reconcile`` run per book and period.

The pure parts (parsing a trace query, building the triage statements) are functions of their inputs and are tested
without a database; ``JournalViews`` runs them on one connection (the caller's: a pooled, read-only one in the
console). Statuses go into SQL as literals of the journal's enums, so the planner matches the partial indexes.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any, Final, Literal, NamedTuple, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg
from psycopg import sql
from psycopg.rows import class_row

from connector.errors import ConnectorError
from connector.journal._status import (
    REJECTED_STAGE,
    UNSETTLED,
    DeadLetterStatus,
    FeedbackStatus,
    Outcome,
    VoucherStatus,
)

R = TypeVar("R")

#: rows of one trace at most (a document number can match many vouchers), and hops of one row
MAX_TRACE_ROWS: Final = 10
MAX_ROW_EVENTS: Final = 200
MAX_ROW_VOUCHERS: Final = 100
#: topics named per source system: those of its latest events
_RECENT_EVENTS_FOR_TOPICS: Final = 200
#: backlogs that can grow without bound (waiting vouchers, new dead letters) are counted up to this many: a page
#: stays fast in an outage, and shows "100,000+"
COUNT_CAP: Final = 100_000
_MAX_QUERY: Final = 200


class ViewError(ConnectorError):
    """A question the read model cannot answer as asked (a malformed search, an unknown filter value)."""


# =============================================================================================== sync status
@dataclass(frozen=True, slots=True, kw_only=True)
class SourceActivity:
    """One source system's records in the consumer group (``system`` None: records that could not be decoded, so
    their system is unknown)."""

    system: str | None
    last_event_at: datetime | None  #: when its latest record was journaled
    #: records journaled since the status's ``since``, by outcome
    outcomes: Mapping[Outcome, int] = field(default_factory=dict)
    topics: tuple[str, ...] = ()  #: the topics its latest records came from

    @property
    def events(self) -> int:
        return sum(self.outcomes.values())

    def count(self, *outcomes: Outcome) -> int:
        return sum(self.outcomes.get(o, 0) for o in outcomes)


@dataclass(frozen=True, slots=True, kw_only=True)
class BookActivity:
    """One source system's vouchers in one book."""

    system: str
    book: str
    posted: int = 0  #: vouchers posted since the status's ``since`` (and still in force)
    waiting: int = 0  #: JOURNALED or POSTING now
    oldest_waiting_at: datetime | None = None  #: when the oldest waiting voucher was journaled
    oldest_waiting_key: str | None = None
    rejected_by_kingdee: int = 0  #: settled as REJECTED_BY_KINGDEE (a person fixes and re-posts)
    needs_attention: int = 0  #: Kingdee holds the key more than once


@dataclass(frozen=True, slots=True, kw_only=True)
class PartitionPosition:
    """The journal's next offset to consume for one partition (the consumed position; the log end is Kafka's)."""

    topic: str
    partition: int
    next_offset: int
    updated_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncStatus:
    since: datetime  #: the start of "today" the counts are taken from
    sources: tuple[SourceActivity, ...]
    books: tuple[BookActivity, ...]
    positions: tuple[PartitionPosition, ...]
    dead_letters_new: int  #: dead letters nobody requeued or resolved yet (rejected and undecodable)
    feedback_unsent: int  #: outbox events the relay has not sent yet
    feedback_oldest_unsent_at: datetime | None

    def books_of(self, system: str | None) -> tuple[BookActivity, ...]:
        return tuple(b for b in self.books if b.system == system)


# =============================================================================================== trace
class TraceBy(enum.StrEnum):
    """What a trace search names."""

    AUTO = "auto"  #: every lookup the text fits
    SOURCE_KEY = "source_key"  #: ``{"id":42}``, ``id=42`` or ``42`` (the ``id`` column)
    DOCUMENT = "document"  #: a document number in the voucher's explanation (``SO20261105000042``)
    KAFKA = "kafka"  #: ``topic[partition]@offset`` (also ``topic:partition:offset``)
    VOUCHER_KEY = "voucher_key"  #: the journal's voucher key (8–32 hex digits; a prefix of 8 or more)
    KINGDEE_NUMBER = "kingdee_number"  #: the Kingdee voucher number (FBillNo)


@dataclass(frozen=True, slots=True, kw_only=True)
class KafkaPosition:
    topic: str
    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


@dataclass(frozen=True, slots=True, kw_only=True)
class TraceQuery:
    """A parsed trace search: the lookups to run (``parse_trace_query``)."""

    text: str
    by: TraceBy
    source_keys: tuple[str, ...] = ()  #: canonical primary-key texts to look up
    document: str | None = None  #: words to find in voucher explanations
    kafka: KafkaPosition | None = None
    voucher_key: str | None = None  #: a key or a prefix of one (lowercase hex)
    kingdee_number: str | None = None


_KAFKA: Final = re.compile(r"^(?P<topic>[A-Za-z0-9._\-]{1,249})(?:\[(?P<p1>\d{1,6})\]@|[:/](?P<p2>\d{1,6})[:/@])"
                           r"(?P<offset>\d{1,19})$")
_HEX_KEY: Final = re.compile(r"^(?:\[?kdcdc:)?(?P<key>[0-9a-fA-F]{8,32})\]?$")
_PK_PAIR: Final = re.compile(r"^\s*(?P<col>[^\W\d]\w*)\s*=\s*(?P<value>[^,=]+?)\s*$")


def _canonical(values: Mapping[str, Any]) -> str:
    """The journal's primary-key text (``connector.ledger.canonical_pk``: sorted keys, compact, integers bare)."""
    return json.dumps({k: values[k] for k in sorted(values)}, separators=(",", ":"), ensure_ascii=False)


def _pk_value(text: str) -> int | str:
    return int(text) if re.fullmatch(r"-?\d{1,18}", text) else text


def source_key_candidates(text: str) -> tuple[str, ...]:
    """The stored primary-key texts ``text`` may mean: a JSON object as given (re-canonicalized), ``col=value[,…]``,
    or a bare value of the usual ``id`` column (as a number and as text). Raises ``ViewError`` when it fits none."""
    t = text.strip()
    if t.startswith("{"):
        try:
            parsed = json.loads(t)
        except json.JSONDecodeError as e:
            raise ViewError(f"source key {t!r} is not valid JSON: {e.msg} at character {e.pos}") from None
        if not isinstance(parsed, dict) or not parsed:
            raise ViewError(f"source key {t!r} must be a JSON object of primary-key columns, e.g. {{\"id\": 42}}")
        return (_canonical(parsed),)
    if "=" in t:
        pairs = {}
        for part in t.split(","):
            m = _PK_PAIR.match(part)
            if not m:
                raise ViewError(f"source key {t!r}: expected column=value[,column=value…], e.g. id=42")
            pairs[m.group("col")] = _pk_value(m.group("value"))
        return (_canonical(pairs),)
    value = _pk_value(t)
    forms = [_canonical({"id": value})]
    if isinstance(value, int):
        forms.append(_canonical({"id": t}))
    return tuple(forms)


def parse_trace_query(text: str, by: TraceBy | str = TraceBy.AUTO) -> TraceQuery:
    """What to look up for a search ``text``. ``AUTO`` runs every lookup the text fits (each an index probe);
    a named kind checks the text's form and says what it expected. Raises ``ViewError``."""
    try:
        kind = TraceBy(by)
    except ValueError:
        raise ViewError(f"unknown search kind {by!r}: expected one of {', '.join(k.value for k in TraceBy)}") from None
    t = text.strip()
    if not t:
        raise ViewError("type what to trace: a source key (id=42), a document number, topic[partition]@offset, "
                        "a voucher key or a Kingdee voucher number")
    if len(t) > _MAX_QUERY:
        raise ViewError(f"the search is {len(t)} characters long; at most {_MAX_QUERY}")
    if any(ord(c) < 32 for c in t):
        raise ViewError("the search contains control characters")
    kafka_m = _KAFKA.match(t)
    kafka = (KafkaPosition(topic=kafka_m.group("topic"), partition=int(kafka_m.group("p1") or kafka_m.group("p2")),
                           offset=int(kafka_m.group("offset"))) if kafka_m else None)
    hex_m = _HEX_KEY.match(t)
    key = hex_m.group("key").lower() if hex_m else None
    if kind is TraceBy.KAFKA:
        if kafka is None:
            raise ViewError(f"{t!r} is not Kafka coordinates: expected topic[partition]@offset, "
                            "e.g. pos.public.sales_order[0]@42")
        return TraceQuery(text=t, by=kind, kafka=kafka)
    if kind is TraceBy.VOUCHER_KEY:
        if key is None:
            raise ViewError(f"{t!r} is not a voucher key: expected 8 to 32 hexadecimal digits")
        return TraceQuery(text=t, by=kind, voucher_key=key)
    if kind is TraceBy.SOURCE_KEY:
        return TraceQuery(text=t, by=kind, source_keys=source_key_candidates(t))
    if kind is TraceBy.DOCUMENT:
        return TraceQuery(text=t, by=kind, document=t)
    if kind is TraceBy.KINGDEE_NUMBER:
        return TraceQuery(text=t, by=kind, kingdee_number=t)
    if kafka is not None:  # AUTO: coordinates are unambiguous
        return TraceQuery(text=t, by=kind, kafka=kafka)
    try:
        keys = source_key_candidates(t)
    except ViewError:
        keys = ()
    return TraceQuery(text=t, by=kind, source_keys=keys, document=None if t.startswith("{") else t, voucher_key=key,
                      kingdee_number=t)


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceRow:
    """A source row: ``system`` (Debezium's logical name), ``table`` (``db.schema.table``), ``pk`` (canonical)."""

    system: str
    table: str
    pk: str

    def __str__(self) -> str:
        return f"{self.system}/{self.table}/{self.pk}"


@dataclass(frozen=True, slots=True, kw_only=True)
class FeedbackHop:
    """A feedback event for the upstream system (an outbox row): created with the state it reports, sent later."""

    event_id: str
    status: FeedbackStatus
    system: str  #: its topic is ``<feedback.topic_prefix>.<system>``
    created_at: datetime
    sent_at: datetime | None


@dataclass(frozen=True, slots=True, kw_only=True)
class RejectionHop:
    code: str
    message: str
    rule_id: str | None
    field: str | None
    value: str | None
    at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetterHop:
    id: int
    stage: str
    reason: str
    error_class: str
    status: DeadLetterStatus
    at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class EventHop:
    """One consumed change event (an event-log row) and what it led to besides vouchers."""

    group: str
    kafka: KafkaPosition
    outcome: Outcome
    op: str | None
    position: str | None  #: the source log position (LSN …)
    kafka_at: datetime | None  #: the Kafka record's timestamp
    journaled_at: datetime
    voucher_keys: tuple[str, ...]
    detail: str | None
    rejections: tuple[RejectionHop, ...] = ()
    dead_letter: DeadLetterHop | None = None
    feedback: tuple[FeedbackHop, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class EntryHop:
    """A voucher line. ``amount`` is in the book's local currency, ``amount_for`` in ``currency``."""

    seq: int
    account: str
    side: str  #: ``debit`` or ``credit``
    amount: Decimal
    currency: str
    rate: Decimal
    amount_for: Decimal
    dimensions: Mapping[str, str]
    explanation: str


@dataclass(frozen=True, slots=True, kw_only=True)
class KingdeeHop:
    """The Kingdee voucher a journal voucher became (or the messages it was refused with)."""

    status: VoucherStatus
    id: str | None
    number: str | None  #: FBillNo
    group_no: str | None  #: 凭证字号
    messages: str | None
    at: datetime | None  #: when the poster settled it (its POSTED / REJECTED_BY_KINGDEE / … audit row)


@dataclass(frozen=True, slots=True, kw_only=True)
class CarrierHop:
    """A voucher that carries this one into Kingdee in its place: the summary voucher (decision 0007) of the summary
    the voucher contributed to, once that summary closed (``JournalViews._carriers``)."""

    key: str
    status: VoucherStatus
    kingdee_number: str | None
    at: datetime | None


class _CarrierRow(NamedTuple):
    contribution: str
    key: str
    status: str
    kingdee_number: str | None
    updated_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditHop:
    id: int
    at: datetime
    actor: str
    action: str
    detail: Mapping[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class VoucherHop:
    """A journaled voucher, its lines, where it went and what the upstream system was told."""

    key: str
    kind: str  #: original, reversal, delta
    reverses: str | None
    reversed_by: str | None
    book: str
    voucher_date: date
    original_date: date | None  #: the rule's date when the period policy moved the voucher
    voucher_group: str
    explanation: str
    debit_total: Decimal
    rule_id: str
    rule_version: str
    kafka: KafkaPosition | None  #: the event that made it
    journaled_at: datetime
    entries: tuple[EntryHop, ...]
    kingdee: KingdeeHop
    #: the summary vouchers that carry it to Kingdee (empty: it is posted itself); see ``CarrierHop``
    carried_by: tuple[CarrierHop, ...] = ()
    audit: tuple[AuditHop, ...] = ()
    feedback: tuple[FeedbackHop, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class RowTrace:
    """The chain of one source row (``row`` None: one record that could not be decoded, found by its coordinates)."""

    row: SourceRow | None
    events: tuple[EventHop, ...]
    vouchers: tuple[VoucherHop, ...]
    truncated: bool = False  #: more events or vouchers than a trace shows


class TraceMatch(NamedTuple):
    by: TraceBy
    what: str  #: the row or record it found


@dataclass(frozen=True, slots=True, kw_only=True)
class Trace:
    query: TraceQuery
    matches: tuple[TraceMatch, ...]
    rows: tuple[RowTrace, ...]
    truncated: bool = False  #: more rows matched than a trace shows


# =============================================================================================== triage
class ProblemKind(enum.StrEnum):
    REJECTED = "rejected"  #: by the mapping rules or the accounting checks (reason: the rejection code)
    UNDECODABLE = "undecodable"  #: dead-lettered before mapping (reason: the decoding stage; source: the topic)


Bucket = Literal["hour", "day"]


@dataclass(frozen=True, slots=True, kw_only=True)
class TriageFilter:
    """Which problems: a time window, and optionally one kind, source, reason and dead-letter status (the status
    selects the events listed: counts are of every problem in the window).

    ``source`` is the source system of a rejection or the topic of an undecodable record; ``reason`` the rejection
    code (``UNMATCHED``, ``UNBALANCED`` …) or the decoding stage (``json``, ``schema`` …)."""

    since: datetime
    until: datetime | None = None
    bucket: Bucket = "hour"
    tz: str = "UTC"  #: buckets are hours / days of this time zone
    kind: ProblemKind | None = None
    source: str | None = None
    reason: str | None = None
    status: DeadLetterStatus | None = None

    def __post_init__(self) -> None:
        if self.since.tzinfo is None or (self.until is not None and self.until.tzinfo is None):
            raise ViewError("triage times must carry a time zone")
        if self.until is not None and self.until <= self.since:
            raise ViewError(f"the window ends ({self.until:%Y-%m-%d %H:%M}) before it starts "
                            f"({self.since:%Y-%m-%d %H:%M})")
        if self.bucket not in ("hour", "day"):
            raise ViewError(f"bucket must be hour or day, got {self.bucket!r}")
        try:
            ZoneInfo(self.tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise ViewError(f"unknown time zone {self.tz!r}") from None

    def origin(self) -> datetime:
        """Midnight (in ``tz``) of the window's first day: where the buckets start."""
        return self.since.astimezone(ZoneInfo(self.tz)).replace(hour=0, minute=0, second=0, microsecond=0)

    def kinds(self) -> tuple[ProblemKind, ...]:
        return (self.kind,) if self.kind is not None else tuple(ProblemKind)

    def admits(self, c: TriageCount) -> bool:
        """Whether a count of the whole window belongs to this filter's kind, source and reason (the charts count every
        problem whatever its dead letter's status; ``status`` selects the events listed)."""
        return ((self.kind is None or c.kind is self.kind) and (self.source is None or c.source == self.source)
                and (self.reason is None or c.reason == self.reason))


@dataclass(frozen=True, slots=True, kw_only=True)
class TriageCount:
    bucket: datetime  #: start of the hour or day, local time of the filter's zone (naive)
    kind: ProblemKind
    source: str
    reason: str
    count: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ProblemEvent:
    """One rejection or undecodable record, with the dead letter that holds it."""

    at: datetime
    kind: ProblemKind
    kafka: KafkaPosition
    source: str  #: system (rejected) or topic (undecodable)
    row: SourceRow | None
    reason: str
    message: str
    field: str | None
    value: str | None
    dead_letter_id: int | None
    dead_letter_status: DeadLetterStatus | None


def triage_counts_query(schema: str, group: str, f: TriageFilter, kind: ProblemKind) -> tuple[sql.Composed, list[Any]]:
    """The statement counting ``kind`` problems per bucket, source and reason (an index-only scan of
    ``console_rejections_time`` / ``console_dead_letters_time``), and its parameters."""
    s = sql.Identifier(schema)
    if kind is ProblemKind.REJECTED:
        table, source, reason = "rejections", "source_system", "code"
        where, args = _rejection_where(group, f, alias=None)
    else:
        table, source, reason = "dead_letters", "topic", "stage"
        where, args = _undecodable_where(group, replace(f, status=None), alias=None)
    # date_bin from the local midnight: arithmetic per row (no time-zone conversion), and bins that are the zone's
    # hours and days (a day bin is 24 hours: on the day a zone changes its clocks, one hour lands in the next day)
    query = sql.SQL(
        "SELECT date_bin(%s::interval, created_at, %s::timestamptz) AS bucket, coalesce({source}, '') AS source, "
        "{reason} AS reason, count(*) AS n FROM {s}.{table} WHERE {where} GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
    ).format(source=sql.Identifier(source), reason=sql.Identifier(reason), s=s, table=sql.Identifier(table),
             where=where)
    return query, [f"1 {f.bucket}", f.origin(), *args]


def problem_events_query(schema: str, group: str, f: TriageFilter, *, limit: int) -> tuple[sql.Composed, list[Any]]:
    """The statement listing the problems behind ``f`` (newest first, at most ``limit``), and its parameters."""
    if not 1 <= limit <= 10_000:
        raise ViewError(f"limit must be between 1 and 10000, got {limit}")
    s = sql.Identifier(schema)
    parts: list[sql.Composable] = []
    args: list[Any] = []
    if ProblemKind.REJECTED in f.kinds():
        columns = sql.SQL(
            "r.created_at AS at, {kind} AS kind, r.topic, r.kafka_partition, r.kafka_offset, "
            "coalesce(r.source_system, '') AS source, r.source_system, r.source_table, r.source_pk, r.code AS reason, "
            "r.message, r.field, r.value, d.id AS dead_letter_id, d.status AS dead_letter_status").format(
                kind=sql.Literal(ProblemKind.REJECTED.value))
        if f.status is None:  # newest rejections first (console_rejections_time), each with its dead letter
            where, a = _rejection_where(group, f, alias="r")
            parts.append(sql.SQL(
                "(SELECT {columns} FROM {s}.rejections r LEFT JOIN {s}.dead_letters d "
                "ON d.consumer_group = r.consumer_group AND d.topic = r.topic AND d.kafka_partition = r.kafka_partition "
                "AND d.kafka_offset = r.kafka_offset WHERE {where} ORDER BY r.created_at DESC, r.id DESC LIMIT %s)"
            ).format(columns=columns, s=s, where=where))
        else:  # newest dead letters of the status first (console_dead_letters_time), each with its rejection
            window, a = _window("d", f)
            where = sql.SQL(" AND ").join([
                sql.SQL("d.consumer_group = %s AND d.stage = {stage} AND d.status = %s").format(
                    stage=sql.Literal(REJECTED_STAGE)), *window,
                *([sql.SQL("r.source_system = %s")] if f.source is not None else []),
                *([sql.SQL("r.code = %s")] if f.reason is not None else [])])
            a = [group, f.status.value, *a, *([f.source] if f.source is not None else []),
                 *([f.reason] if f.reason is not None else [])]
            parts.append(sql.SQL(
                "(SELECT {columns} FROM {s}.dead_letters d JOIN {s}.rejections r ON r.topic = d.topic "
                "AND r.kafka_partition = d.kafka_partition AND r.kafka_offset = d.kafka_offset "
                "AND r.consumer_group = d.consumer_group WHERE {where} ORDER BY d.created_at DESC, d.id DESC LIMIT %s)"
            ).format(columns=columns, s=s, where=where))
        args += [*a, limit]
    if ProblemKind.UNDECODABLE in f.kinds():
        where, a = _undecodable_where(group, f, alias="d")
        parts.append(sql.SQL(
            "(SELECT d.created_at AS at, {kind} AS kind, d.topic, d.kafka_partition, d.kafka_offset, "
            "d.topic AS source, NULL::text AS source_system, NULL::text AS source_table, NULL::text AS source_pk, "
            "d.stage AS reason, d.reason AS message, d.error_class AS field, NULL::text AS value, "
            "d.id AS dead_letter_id, d.status AS dead_letter_status FROM {s}.dead_letters d "
            "WHERE {where} ORDER BY d.created_at DESC, d.id DESC LIMIT %s)").format(
                kind=sql.Literal(ProblemKind.UNDECODABLE.value), s=s, where=where))
        args += [*a, limit]
    query = sql.SQL("SELECT * FROM ({union}) AS p ORDER BY at DESC, kafka_offset DESC LIMIT %s").format(
        union=sql.SQL(" UNION ALL ").join(parts))
    return query, [*args, limit]


def _col(alias: str | None, name: str) -> sql.Composable:
    return sql.Identifier(alias, name) if alias else sql.Identifier(name)


def _window(alias: str | None, f: TriageFilter) -> tuple[list[sql.Composable], list[Any]]:
    where: list[sql.Composable] = [sql.SQL("{} >= %s").format(_col(alias, "created_at"))]
    args: list[Any] = [f.since]
    if f.until is not None:
        where.append(sql.SQL("{} < %s").format(_col(alias, "created_at")))
        args.append(f.until)
    return where, args


def _rejection_where(group: str, f: TriageFilter, *, alias: str | None) -> tuple[sql.Composed, list[Any]]:
    where, args = _window(alias, f)
    where.insert(0, sql.SQL("{} = %s").format(_col(alias, "consumer_group")))
    args.insert(0, group)
    if f.source is not None:
        where.append(sql.SQL("{} = %s").format(_col(alias, "source_system")))
        args.append(f.source)
    if f.reason is not None:
        where.append(sql.SQL("{} = %s").format(_col(alias, "code")))
        args.append(f.reason)
    return sql.SQL(" AND ").join(where), args


def _undecodable_where(group: str, f: TriageFilter, *, alias: str | None) -> tuple[sql.Composed, list[Any]]:
    where, args = _window(alias, f)
    where[:0] = [sql.SQL("{} = %s").format(_col(alias, "consumer_group")),
                 sql.SQL("{} <> {}").format(_col(alias, "stage"), sql.Literal(REJECTED_STAGE))]
    args.insert(0, group)
    if f.source is not None:
        where.append(sql.SQL("{} = %s").format(_col(alias, "topic")))
        args.append(f.source)
    if f.reason is not None:
        where.append(sql.SQL("{} = %s").format(_col(alias, "stage")))
        args.append(f.reason)
    if f.status is not None:
        where.append(sql.SQL("{} = %s").format(_col(alias, "status")))
        args.append(f.status.value)
    return sql.SQL(" AND ").join(where), args


# =============================================================================================== reconciliation
@dataclass(frozen=True, slots=True, kw_only=True)
class ReconciledLine:
    """A flagged line of a reconciliation report (account, or ``account|FLEX5=D01,…``)."""

    line: str
    journal: Decimal
    kingdee: Decimal
    source: Decimal | None
    in_flight: Decimal
    vouchers: tuple[str, ...]

    @property
    def account(self) -> str:
        return self.line.partition("|")[0]

    @property
    def dimensions(self) -> str:
        return self.line.partition("|")[2]

    @property
    def difference(self) -> Decimal:
        return self.journal - self.kingdee

    @property
    def source_difference(self) -> Decimal | None:
        return None if self.source is None else self.source - self.journal


@dataclass(frozen=True, slots=True, kw_only=True)
class ReconciliationRun:
    """A recorded ``kingdee-cdc reconcile`` run (what ``connector.reconcile.record`` keeps: the flagged lines and
    the vouchers behind them, not every line)."""

    id: int
    run_at: datetime
    book: str
    period: str
    by_dimension: bool
    with_source: bool
    lines: int
    flagged: int  #: flagged lines plus keys Kingdee holds more than once
    abs_difference: Decimal
    flagged_lines: tuple[ReconciledLine, ...] = ()
    missing_in_kingdee: tuple[str, ...] = ()
    unknown_to_journal: tuple[str, ...] = ()
    amount_mismatch: tuple[str, ...] = ()
    duplicated_in_kingdee: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def _decimal(v: object) -> Decimal:
    if isinstance(v, Decimal):
        return v
    if isinstance(v, (int, str)):
        return Decimal(v)
    raise ViewError(f"expected an amount as text in a reconciliation report, got {v!r}")


def _run_of(row: _RunRow) -> ReconciliationRun:
    rep = row.report if isinstance(row.report, dict) else json.loads(row.report or "{}")
    lines = tuple(ReconciledLine(line=str(x["line"]), journal=_decimal(x["journal"]), kingdee=_decimal(x["kingdee"]),
                                 source=None if x.get("source") is None else _decimal(x["source"]),
                                 in_flight=_decimal(x.get("in_flight", "0")), vouchers=tuple(x.get("vouchers", ())))
                  for x in rep.get("flagged", ()))
    return ReconciliationRun(
        id=row.id, run_at=row.run_at, book=row.book, period=row.period, by_dimension=row.by_dimension,
        with_source=row.with_source, lines=row.lines, flagged=row.flagged, abs_difference=row.abs_difference,
        flagged_lines=lines, missing_in_kingdee=tuple(rep.get("missing_in_kingdee", ())),
        unknown_to_journal=tuple(rep.get("unknown_to_journal", ())),
        amount_mismatch=tuple(rep.get("amount_mismatch", ())),
        duplicated_in_kingdee={str(k): tuple(v) for k, v in (rep.get("duplicated_in_kingdee") or {}).items()})


# =============================================================================================== rows as read
@dataclass(frozen=True, slots=True)
class _RunRow:
    id: int
    run_at: datetime
    book: str
    period: str
    by_dimension: bool
    with_source: bool
    lines: int
    flagged: int
    abs_difference: Decimal
    report: Any


class _Name(NamedTuple):
    name: str | None


class _BookCount(NamedTuple):
    source_system: str
    book: str
    n: int


class _Oldest(NamedTuple):
    source_system: str
    book: str
    n: int
    oldest_at: datetime
    oldest_key: str


class _Problem(NamedTuple):
    status: str
    source_system: str
    book: str
    n: int


class _EventRow(NamedTuple):
    consumer_group: str
    topic: str
    kafka_partition: int
    kafka_offset: int
    outcome: str
    source_system: str | None
    source_table: str | None
    source_pk: str | None
    source_position: str | None
    op: str | None
    voucher_keys: list[str]
    detail: str | None
    kafka_ts_ms: int | None
    journaled_at: datetime
    last_offset: int | None = None  #: a range of skipped records (decision 0012): its last offset


class _VoucherRow(NamedTuple):
    key: str
    kind: str
    reverses: str | None
    reversed_by: str | None
    status: str
    book: str
    voucher_date: date
    original_date: date | None
    voucher_group: str
    explanation: str
    debit_total: Decimal
    rule_id: str
    rule_version: str
    source_system: str
    source_table: str
    source_pk: str
    topic: str | None
    kafka_partition: int | None
    kafka_offset: int | None
    kingdee_id: str | None
    kingdee_number: str | None
    kingdee_group_no: str | None
    kingdee_messages: str | None
    journaled_at: datetime
    updated_at: datetime
    batch_id: int | None = None  #: the audit row of the batch that journaled it (since 0009; decision 0010)


class _EntryRow(NamedTuple):
    voucher_key: str
    seq: int
    account: str
    side: str
    amount: Decimal
    currency: str
    rate: Decimal
    amount_for: Decimal
    dimensions: Any
    explanation: str


class _AuditRow(NamedTuple):
    id: int
    at: datetime
    actor: str
    action: str
    voucher_key: str | None
    detail: Any


class _OutboxRow(NamedTuple):
    event_id: str
    source_system: str
    status: str
    created_at: datetime
    sent_at: datetime | None


class _RejectionRow(NamedTuple):
    topic: str
    kafka_partition: int
    kafka_offset: int
    code: str
    message: str
    rule_id: str | None
    field: str | None
    value: str | None
    created_at: datetime


class _DeadLetterRow(NamedTuple):
    id: int
    topic: str
    kafka_partition: int
    kafka_offset: int
    stage: str
    reason: str
    error_class: str
    status: str
    created_at: datetime


class _RowKey(NamedTuple):
    source_system: str
    source_table: str
    source_pk: str


class _ProblemRow(NamedTuple):
    at: datetime
    kind: str
    topic: str
    kafka_partition: int
    kafka_offset: int
    source: str
    source_system: str | None
    source_table: str | None
    source_pk: str | None
    reason: str
    message: str
    field: str | None
    value: str | None
    dead_letter_id: int | None
    dead_letter_status: str | None


class _CountRow(NamedTuple):
    bucket: datetime
    source: str
    reason: str
    n: int


_VOUCHER_COLS: Final = ("key, kind, reverses, reversed_by, status, book, voucher_date, original_date, voucher_group, "
                        "explanation, debit_total, rule_id, rule_version, source_system, source_table, source_pk, "
                        "topic, kafka_partition, kafka_offset, kingdee_id, kingdee_number, kingdee_group_no, "
                        "kingdee_messages, journaled_at, updated_at, batch_id")
_EVENT_COLS: Final = ("consumer_group, topic, kafka_partition, kafka_offset, outcome, source_system, source_table, "
                      "source_pk, source_position, op, voucher_keys, detail, kafka_ts_ms, journaled_at")
#: audit actions that settle a voucher with Kingdee (the time a Kingdee hop shows)
_SETTLING: Final = frozenset({"POSTED", "REJECTED_BY_KINGDEE", "NEEDS_ATTENTION"})


def _ms(ts_ms: int | None) -> datetime | None:
    return None if ts_ms is None else datetime.fromtimestamp(ts_ms / 1000, tz=timezone.utc)


def _json_object(v: Any) -> dict[str, Any]:
    if isinstance(v, dict):
        return v
    if isinstance(v, str) and v:
        loaded = json.loads(v)
        return loaded if isinstance(loaded, dict) else {"value": loaded}
    return {}


# =============================================================================================== the queries
class JournalViews:
    """The console's questions to the journal of one consumer group, on one connection (not thread-safe: one per
    request). Every method is a handful of index probes or range scans; none writes."""

    def __init__(self, conn: psycopg.Connection[Any], *, schema: str = "kdcdc", group: str = "kingdee-cdc") -> None:
        self.conn = conn
        self.schema = schema
        self.group = group
        self._s = sql.Identifier(schema)

    def q(self, text: str, **values: str | Iterable[str]) -> sql.Composed:
        """``text`` with ``{s}`` the schema and each ``{name}`` the literal value(s) given (see ``Journal.q``)."""
        literals = {name: sql.Literal(str(v)) if isinstance(v, str) else sql.SQL(", ").join(
            sql.Literal(str(x)) for x in v) for name, v in values.items()}
        return sql.SQL(text).format(s=self._s, **literals)

    def rows(self, row: type[R], query: sql.Composed, params: Sequence[Any] | Mapping[str, Any] | None = None
             ) -> list[R]:
        with self.conn.cursor(row_factory=class_row(row)) as cur:
            return cur.execute(query, params).fetchall()

    # ------------------------------------------------------------------ sync status
    def sync_status(self, *, since: datetime) -> SyncStatus:
        """Counts since ``since`` (the start of the operator's day) and the backlogs now."""
        sources = tuple(self._source_activity(name, since) for name in self.source_systems())
        return SyncStatus(since=since, sources=sources, books=self._books(since), positions=self.positions(),
                          dead_letters_new=self._count(self.q(
                              "SELECT count(*) FROM (SELECT 1 FROM {s}.dead_letters WHERE consumer_group = %s "
                              "AND status = {new} LIMIT %s) AS d", new=DeadLetterStatus.NEW), (self.group, COUNT_CAP)),
                          feedback_unsent=self._count(self.q("SELECT count(*) FROM {s}.outbox WHERE sent_at IS NULL")),
                          feedback_oldest_unsent_at=self._scalar(self.q(
                              "SELECT min(created_at) FROM {s}.outbox WHERE sent_at IS NULL")))

    def _source_activity(self, system: str | None, since: datetime) -> SourceActivity:
        """One system's latest event, outcomes since ``since`` and recent topics: three range scans of
        ``console_event_log_source_time`` (a system of None: the records that could not be decoded)."""
        match = "source_system = %(system)s" if system is not None else "source_system IS NULL"
        args = {"group": self.group, "system": system, "since": since, "recent": _RECENT_EVENTS_FOR_TOPICS}
        # ORDER BY the whole index backwards: an ordered scan that stops at once (with source_system IS NULL too,
        # which the planner does not treat as an equality for ordering)
        newest = ("ORDER BY consumer_group DESC, source_system DESC NULLS FIRST, journaled_at DESC")
        last = self._scalar(self.q(
            f"SELECT journaled_at FROM {{s}}.event_log WHERE consumer_group = %(group)s AND {match} {newest} LIMIT 1"),
            args)
        outcomes = {Outcome(o): int(n) for o, n in self.conn.execute(self.q(
            # records, not rows: a row of skipped tombstones or markers is a range (decision 0012)
            f"SELECT outcome, sum(coalesce(last_offset, kafka_offset) - kafka_offset + 1) FROM {{s}}.event_log "
            f"WHERE consumer_group = %(group)s AND {match} AND journaled_at >= %(since)s GROUP BY outcome"),
            args).fetchall()}
        topics = tuple(t for (t,) in self.conn.execute(self.q(
            f"SELECT DISTINCT topic FROM (SELECT topic FROM {{s}}.event_log WHERE consumer_group = %(group)s AND {match} "
            f"{newest} LIMIT %(recent)s) AS r ORDER BY 1"), args).fetchall())
        return SourceActivity(system=system, last_event_at=last, outcomes=outcomes, topics=topics)

    def source_systems(self) -> list[str | None]:
        """The source systems of the group's events (a loose index scan: one probe per system), and None last when
        some records could not be decoded."""
        found = [r.name for r in self.rows(_Name, self.q(
            "WITH RECURSIVE s AS ("
            " (SELECT source_system AS name FROM {s}.event_log WHERE consumer_group = %(g)s AND source_system IS NOT "
            "NULL ORDER BY source_system LIMIT 1)"
            " UNION ALL SELECT (SELECT source_system FROM {s}.event_log WHERE consumer_group = %(g)s "
            "AND source_system > s.name ORDER BY source_system LIMIT 1) FROM s WHERE s.name IS NOT NULL)"
            " SELECT name FROM s WHERE name IS NOT NULL"), {"g": self.group})]
        undecodable = self._scalar(self.q(
            "SELECT 1 FROM {s}.event_log WHERE consumer_group = %s AND source_system IS NULL LIMIT 1"), (self.group,))
        return [*found, None] if undecodable else list(found)

    def _books(self, since: datetime) -> tuple[BookActivity, ...]:
        pairs: dict[tuple[str, str], dict[str, Any]] = {}
        # (system, book) pairs with posted vouchers: a loose scan of console_vouchers_posted, then each pair's
        # vouchers posted since `since` (a range scan of the same index)
        for r in self.rows(_BookCount, self.q(
                "WITH RECURSIVE p AS ("
                " (SELECT source_system, book FROM {s}.vouchers WHERE status = {posted} "
                "ORDER BY source_system, book LIMIT 1)"
                " UNION ALL SELECT n.source_system, n.book FROM p CROSS JOIN LATERAL (SELECT source_system, book "
                "FROM {s}.vouchers v WHERE v.status = {posted} AND (v.source_system, v.book) > (p.source_system, p.book) "
                "ORDER BY source_system, book LIMIT 1) AS n)"
                " SELECT p.source_system, p.book, (SELECT count(*) FROM {s}.vouchers v WHERE v.status = {posted} "
                "AND v.source_system = p.source_system AND v.book = p.book AND v.updated_at >= %s) AS n FROM p",
                posted=VoucherStatus.POSTED), (since,)):
            pairs.setdefault((r.source_system, r.book), {})["posted"] = r.n
        # (system, book) pairs with waiting vouchers (a loose scan of console_vouchers_unsettled), each one's count
        # (bounded: COUNT_CAP) and its oldest voucher (the first entry of the same index)
        for o in self.rows(_Oldest, self.q(
                "WITH RECURSIVE p AS ("
                " (SELECT source_system, book FROM {s}.vouchers WHERE status IN ({waiting}) "
                "ORDER BY source_system, book LIMIT 1)"
                " UNION ALL SELECT n.source_system, n.book FROM p CROSS JOIN LATERAL (SELECT source_system, book "
                "FROM {s}.vouchers v WHERE v.status IN ({waiting}) AND (v.source_system, v.book) > "
                "(p.source_system, p.book) ORDER BY source_system, book LIMIT 1) AS n)"
                " SELECT p.source_system, p.book, (SELECT count(*) FROM (SELECT 1 FROM {s}.vouchers v "
                "WHERE v.status IN ({waiting}) AND v.source_system = p.source_system AND v.book = p.book LIMIT %s) AS c) "
                "AS n, o.journaled_at AS oldest_at, o.key AS oldest_key FROM p CROSS JOIN LATERAL (SELECT key, "
                "journaled_at FROM {s}.vouchers v WHERE v.status IN ({waiting}) AND v.source_system = p.source_system "
                "AND v.book = p.book ORDER BY journaled_at LIMIT 1) AS o", waiting=UNSETTLED), (COUNT_CAP,)):
            pairs.setdefault((o.source_system, o.book), {}).update(
                waiting=o.n, oldest_waiting_at=o.oldest_at, oldest_waiting_key=o.oldest_key)
        for p in self.rows(_Problem, self.q(
                "SELECT status, source_system, book, count(*) AS n FROM {s}.vouchers WHERE status IN ({problems}) "
                "GROUP BY 1, 2, 3", problems=(VoucherStatus.REJECTED_BY_KINGDEE, VoucherStatus.NEEDS_ATTENTION))):
            name = "rejected_by_kingdee" if p.status == VoucherStatus.REJECTED_BY_KINGDEE else "needs_attention"
            pairs.setdefault((p.source_system, p.book), {})[name] = p.n
        return tuple(BookActivity(system=system, book=book, **values)
                     for (system, book), values in sorted(pairs.items()))

    def positions(self) -> tuple[PartitionPosition, ...]:
        return tuple(PartitionPosition(topic=t, partition=p, next_offset=o, updated_at=at) for t, p, o, at in
                     self.conn.execute(self.q(
                         "SELECT topic, kafka_partition, next_offset, updated_at FROM {s}.offsets "
                         "WHERE consumer_group = %s ORDER BY topic, kafka_partition"), (self.group,)).fetchall())

    def _count(self, query: sql.Composed, params: Sequence[Any] | Mapping[str, Any] | None = None) -> int:
        found = self.conn.execute(query, params).fetchone()
        return int(found[0]) if found and found[0] is not None else 0

    def _scalar(self, query: sql.Composed, params: Sequence[Any] | Mapping[str, Any] | None = None) -> Any:
        found = self.conn.execute(query, params).fetchone()
        return found[0] if found else None

    # ------------------------------------------------------------------ trace
    def trace(self, query: TraceQuery) -> Trace:
        """Every row (or undecodable record) ``query`` finds, each with its whole chain."""
        matches: list[TraceMatch] = []
        rows: dict[tuple[str, str, str], None] = {}
        records: list[_EventRow] = []

        def found(by: TraceBy, keys: Iterable[_RowKey]) -> None:
            for k in keys:
                if (k.source_system, k.source_table, k.source_pk) not in rows:
                    rows[(k.source_system, k.source_table, k.source_pk)] = None
                    matches.append(TraceMatch(by, f"{k.source_system}/{k.source_table}/{k.source_pk}"))

        if query.kafka is not None:
            k = query.kafka
            # per group, the row at or before the offset, if it is that record or a range holding it (decision 0012)
            events = self.rows(_EventRow, self.q(
                f"SELECT e.* FROM (SELECT DISTINCT consumer_group FROM {{s}}.offsets) AS g CROSS JOIN LATERAL "
                f"(SELECT {_EVENT_COLS}, last_offset FROM {{s}}.event_log l WHERE l.consumer_group = g.consumer_group "
                "AND topic = %(t)s AND kafka_partition = %(p)s AND kafka_offset <= %(o)s ORDER BY kafka_offset DESC "
                "LIMIT 1) AS e WHERE coalesce(e.last_offset, e.kafka_offset) >= %(o)s"),
                {"t": k.topic, "p": k.partition, "o": k.offset})
            found(TraceBy.KAFKA, (_RowKey(e.source_system, e.source_table, e.source_pk) for e in events
                                  if e.source_system and e.source_table and e.source_pk))
            records = [e for e in events if not (e.source_system and e.source_table and e.source_pk)]
            matches += [TraceMatch(TraceBy.KAFKA, f"{e.topic}[{e.kafka_partition}]@{e.kafka_offset}"
                                   + (f"–{e.last_offset}" if e.last_offset is not None else "")) for e in records]
        if query.voucher_key is not None:
            key = query.voucher_key
            if len(key) == 32:
                hit = self.rows(_RowKey, self.q("SELECT source_system, source_table, source_pk FROM {s}.vouchers "
                                                "WHERE key = %s"), (key,))
            else:  # a prefix: a range of the primary key
                hit = self.rows(_RowKey, self.q(
                    "SELECT source_system, source_table, source_pk FROM {s}.vouchers WHERE key >= %s AND key < %s "
                    "AND left(key, %s) = %s ORDER BY key LIMIT %s"),
                    (key, key + "g", len(key), key, MAX_TRACE_ROWS + 1))
            found(TraceBy.VOUCHER_KEY, hit)
        if query.kingdee_number is not None:
            found(TraceBy.KINGDEE_NUMBER, self.rows(_RowKey, self.q(
                "SELECT source_system, source_table, source_pk FROM {s}.vouchers WHERE kingdee_number = %s "
                "LIMIT %s"), (query.kingdee_number, MAX_TRACE_ROWS + 1)))
        if query.source_keys:
            found(TraceBy.SOURCE_KEY, self.rows(_RowKey, self.q(
                "SELECT DISTINCT source_system, source_table, source_pk FROM {s}.event_log WHERE source_pk = ANY(%s) "
                "AND source_system IS NOT NULL AND source_table IS NOT NULL ORDER BY 1, 2, 3 LIMIT %s"),
                (list(query.source_keys), MAX_TRACE_ROWS + 1)))
        if query.document:
            found(TraceBy.DOCUMENT, self.rows(_RowKey, self.q(
                "SELECT DISTINCT source_system, source_table, source_pk FROM (SELECT source_system, source_table, "
                "source_pk FROM {s}.vouchers WHERE to_tsvector('simple', explanation) @@ plainto_tsquery('simple', %s) "
                "LIMIT 1000) AS v ORDER BY 1, 2, 3 LIMIT %s"), (query.document, MAX_TRACE_ROWS + 1)))
        keys = list(rows)
        traces = [self.row_trace(SourceRow(system=s, table=t, pk=p)) for s, t, p in keys[:MAX_TRACE_ROWS]]
        traces += [RowTrace(row=None, events=self._event_hops(records[:MAX_TRACE_ROWS]), vouchers=())] if records else []
        return Trace(query=query, matches=tuple(matches), rows=tuple(traces), truncated=len(keys) > MAX_TRACE_ROWS)

    def row_trace(self, row: SourceRow) -> RowTrace:
        """One source row's change events (oldest first) and vouchers (journal order), with everything they led to."""
        events = self.rows(_EventRow, self.q(
            f"SELECT {_EVENT_COLS} FROM {{s}}.event_log WHERE source_pk = %s AND source_system = %s "
            "AND source_table = %s ORDER BY journaled_at, kafka_offset LIMIT %s"),
            (row.pk, row.system, row.table, MAX_ROW_EVENTS + 1))
        vouchers = self.rows(_VoucherRow, self.q(
            f"SELECT {_VOUCHER_COLS} FROM {{s}}.vouchers WHERE source_system = %s AND source_table = %s "
            "AND source_pk = %s ORDER BY seq LIMIT %s"), (row.system, row.table, row.pk, MAX_ROW_VOUCHERS + 1))
        return RowTrace(row=row, events=self._event_hops(events[:MAX_ROW_EVENTS]),
                        vouchers=self._voucher_hops(vouchers[:MAX_ROW_VOUCHERS]),
                        truncated=len(events) > MAX_ROW_EVENTS or len(vouchers) > MAX_ROW_VOUCHERS)

    def _event_hops(self, events: Sequence[_EventRow]) -> tuple[EventHop, ...]:
        if not events:
            return ()
        coords = ([e.consumer_group for e in events], [e.topic for e in events], [e.kafka_partition for e in events],
                  [e.kafka_offset for e in events])
        rejections: dict[tuple[str, int, int], list[RejectionHop]] = {}
        for r in self.rows(_RejectionRow, self.q(
                "SELECT r.topic, r.kafka_partition, r.kafka_offset, r.code, r.message, r.rule_id, r.field, r.value, "
                "r.created_at FROM unnest(%s::text[], %s::text[], %s::int[], %s::bigint[]) AS c(g, t, p, o) "
                "JOIN {s}.rejections r ON r.topic = c.t AND r.kafka_partition = c.p AND r.kafka_offset = c.o "
                "AND r.consumer_group = c.g ORDER BY r.id"), coords):
            rejections.setdefault((r.topic, r.kafka_partition, r.kafka_offset), []).append(RejectionHop(
                code=r.code, message=r.message, rule_id=r.rule_id, field=r.field, value=r.value, at=r.created_at))
        letters = {(d.topic, d.kafka_partition, d.kafka_offset): DeadLetterHop(
            id=d.id, stage=d.stage, reason=d.reason, error_class=d.error_class, status=DeadLetterStatus(d.status),
            at=d.created_at) for d in self.rows(_DeadLetterRow, self.q(
                "SELECT d.id, d.topic, d.kafka_partition, d.kafka_offset, d.stage, d.reason, d.error_class, d.status, "
                "d.created_at FROM unnest(%s::text[], %s::text[], %s::int[], %s::bigint[]) AS c(g, t, p, o) "
                "JOIN {s}.dead_letters d ON d.consumer_group = c.g AND d.topic = c.t AND d.kafka_partition = c.p "
                "AND d.kafka_offset = c.o"), coords)}
        record_statuses = (FeedbackStatus.REJECTED, FeedbackStatus.DEAD_LETTERED)
        feedback = self._feedback([f"{e.consumer_group}:{e.topic}:{e.kafka_partition}:{e.kafka_offset}:{s}"
                                   for e in events for s in record_statuses])
        out = []
        for e in events:
            where = (e.topic, e.kafka_partition, e.kafka_offset)
            prefix = f"{e.consumer_group}:{e.topic}:{e.kafka_partition}:{e.kafka_offset}:"
            out.append(EventHop(
                group=e.consumer_group, kafka=KafkaPosition(topic=e.topic, partition=e.kafka_partition,
                                                            offset=e.kafka_offset),
                outcome=Outcome(e.outcome), op=e.op, position=e.source_position, kafka_at=_ms(e.kafka_ts_ms),
                journaled_at=e.journaled_at, voucher_keys=tuple(e.voucher_keys or ()), detail=e.detail,
                rejections=tuple(rejections.get(where, ())), dead_letter=letters.get(where),
                feedback=tuple(f for f in feedback if f.event_id.startswith(prefix))))
        return tuple(out)

    def _voucher_hops(self, vouchers: Sequence[_VoucherRow]) -> tuple[VoucherHop, ...]:
        if not vouchers:
            return ()
        keys = [v.key for v in vouchers]
        entries: dict[str, list[EntryHop]] = {}
        for e in self.rows(_EntryRow, self.q(
                "SELECT voucher_key, seq, account, side, amount, currency, rate, amount_for, dimensions, explanation "
                "FROM {s}.entries WHERE voucher_key = ANY(%s) ORDER BY voucher_key, seq"), (keys,)):
            dims = {str(k): str(v) for k, v in _json_object(e.dimensions).items() if v not in (None, "")}
            entries.setdefault(e.voucher_key, []).append(EntryHop(
                seq=e.seq, account=e.account, side=e.side, amount=e.amount, currency=e.currency, rate=e.rate,
                amount_for=e.amount_for, dimensions=dims, explanation=e.explanation))
        audit: dict[str, list[AuditHop]] = {}
        # its own rows, and the row of the batch that journaled it (one per batch since 0009: decision 0010)
        batches = [v.batch_id for v in vouchers]
        for a in self.rows(_AuditRow, self.q(
                "SELECT id, at, actor, action, voucher_key, detail FROM {s}.audit WHERE voucher_key = ANY(%s) "
                "UNION ALL SELECT a.id, a.at, a.actor, a.action, b.key, a.detail FROM unnest(%s::text[], "
                "%s::bigint[]) AS b(key, batch) JOIN {s}.audit a ON a.id = b.batch ORDER BY 1"), (keys, keys, batches)):
            audit.setdefault(a.voucher_key or "", []).append(AuditHop(id=a.id, at=a.at, actor=a.actor,
                                                                       action=a.action, detail=_json_object(a.detail)))
        feedback = self._feedback([f"{k}:{s}" for k in keys for s in FeedbackStatus])
        carriers = self._carriers(keys)
        out = []
        for v in vouchers:
            trail = tuple(audit.get(v.key, ()))
            settled = next((a.at for a in reversed(trail) if a.action in _SETTLING), None)
            out.append(VoucherHop(
                key=v.key, kind=v.kind, reverses=v.reverses, reversed_by=v.reversed_by, book=v.book,
                voucher_date=v.voucher_date, original_date=v.original_date, voucher_group=v.voucher_group,
                explanation=v.explanation, debit_total=v.debit_total, rule_id=v.rule_id, rule_version=v.rule_version,
                kafka=KafkaPosition(topic=v.topic, partition=v.kafka_partition, offset=v.kafka_offset)
                if v.topic is not None and v.kafka_partition is not None and v.kafka_offset is not None else None,
                journaled_at=v.journaled_at, entries=tuple(entries.get(v.key, ())),
                kingdee=KingdeeHop(status=VoucherStatus(v.status), id=v.kingdee_id, number=v.kingdee_number,
                                   group_no=v.kingdee_group_no, messages=v.kingdee_messages, at=settled),
                carried_by=carriers.get(v.key, ()), audit=trail,
                feedback=tuple(f for f in feedback if f.event_id.startswith(f"{v.key}:"))))
        return tuple(out)

    def _carriers(self, keys: Sequence[str]) -> dict[str, tuple[CarrierHop, ...]]:
        """The summary voucher carrying each of ``keys`` (decision 0007): a contribution's summary, once it closed,
        with the summary voucher's status, Kingdee number and when it was settled."""
        if not keys:
            return {}
        out: dict[str, tuple[CarrierHop, ...]] = {}
        for c in self.rows(_CarrierRow, self.q(
                "SELECT v.key AS contribution, sv.key, sv.status, sv.kingdee_number, sv.updated_at "
                "FROM {s}.vouchers v JOIN {s}.summaries s ON s.id = v.summary_id "
                "JOIN {s}.vouchers sv ON sv.key = s.voucher_key WHERE v.key = ANY(%s)"), (list(keys),)):
            out[c.contribution] = (CarrierHop(key=c.key, status=VoucherStatus(c.status),
                                              kingdee_number=c.kingdee_number,
                                              at=c.updated_at if c.status != VoucherStatus.JOURNALED else None),)
        return out

    def _feedback(self, event_ids: Sequence[str]) -> list[FeedbackHop]:
        if not event_ids:
            return []
        return [FeedbackHop(event_id=o.event_id, status=FeedbackStatus(o.status), system=o.source_system,
                            created_at=o.created_at, sent_at=o.sent_at)
                for o in self.rows(_OutboxRow, self.q(
                    "SELECT event_id, source_system, status, created_at, sent_at FROM {s}.outbox "
                    "WHERE event_id = ANY(%s) ORDER BY id"), (list(event_ids),))]

    # ------------------------------------------------------------------ triage
    def triage_counts(self, f: TriageFilter) -> list[TriageCount]:
        out = []
        for kind in f.kinds():
            query, args = triage_counts_query(self.schema, self.group, f, kind)
            zone = ZoneInfo(f.tz)
            out += [TriageCount(bucket=r.bucket.astimezone(zone).replace(tzinfo=None), kind=kind, source=r.source,
                                reason=r.reason, count=r.n) for r in self.rows(_CountRow, query, args)]
        return sorted(out, key=lambda c: (c.bucket, c.kind, c.source, c.reason))

    def problem_events(self, f: TriageFilter, *, limit: int = 200) -> list[ProblemEvent]:
        query, args = problem_events_query(self.schema, self.group, f, limit=limit)
        return [ProblemEvent(
            at=r.at, kind=ProblemKind(r.kind),
            kafka=KafkaPosition(topic=r.topic, partition=r.kafka_partition, offset=r.kafka_offset), source=r.source,
            row=SourceRow(system=r.source_system, table=r.source_table, pk=r.source_pk)
            if r.source_system and r.source_table and r.source_pk else None,
            reason=r.reason, message=r.message, field=r.field, value=r.value, dead_letter_id=r.dead_letter_id,
            dead_letter_status=DeadLetterStatus(r.dead_letter_status) if r.dead_letter_status else None)
            for r in self.rows(_ProblemRow, query, args)]

    def dead_letter_ids(self, ids: Sequence[int]) -> list[tuple[int, DeadLetterStatus]]:
        """Which of ``ids`` are dead letters of this group, with their status."""
        return [(int(i), DeadLetterStatus(s)) for i, s in self.conn.execute(self.q(
            "SELECT id, status FROM {s}.dead_letters WHERE id = ANY(%s) AND consumer_group = %s ORDER BY id"),
            (list(ids), self.group)).fetchall()]

    def recent_audit(self, action: str, actor: str, *, limit: int = 10) -> list[AuditHop]:
        """The newest audit rows of ``action`` by ``actor`` (a backward scan of the primary key)."""
        return [AuditHop(id=a.id, at=a.at, actor=a.actor, action=a.action, detail=_json_object(a.detail))
                for a in self.rows(_AuditRow, self.q(
                    "SELECT id, at, actor, action, voucher_key, detail FROM {s}.audit WHERE action = %s AND actor = %s "
                    "ORDER BY id DESC LIMIT %s"), (action, actor, limit))]

    # ------------------------------------------------------------------ reconciliation
    def reconciliations(self) -> list[ReconciliationRun]:
        """The latest run per book and period (book, then newest period first)."""
        return [_run_of(r) for r in self.rows(_RunRow, self.q(
            "SELECT DISTINCT ON (book, period) id, run_at, book, period, by_dimension, with_source, lines, flagged, "
            "abs_difference, report FROM {s}.reconciliations ORDER BY book, period DESC, run_at DESC"))]

    def reconciliation(self, run_id: int) -> ReconciliationRun | None:
        found = self.rows(_RunRow, self.q(
            "SELECT id, run_at, book, period, by_dimension, with_source, lines, flagged, abs_difference, report "
            "FROM {s}.reconciliations WHERE id = %s"), (run_id,))
        return _run_of(found[0]) if found else None
