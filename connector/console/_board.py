"""The status page's rows, and which numbers cross a threshold — a pure function of the journal's ``SyncStatus``,
Kafka's log ends, the ledger's books and ``console.thresholds``.

A source system's lag is the sum over the partitions of the topics its latest records came from (a topic that
several systems share counts for each of them); the lag of the journal's partitions is listed too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from connector.config import ConsoleThresholds
from connector.console._format import age_seconds
from connector.journal import Outcome
from connector.journal.views import BookActivity, PartitionPosition, SourceActivity, SyncStatus
from connector.ledger import Book

Partition = tuple[str, int]


def crossed(value: float | None, threshold: float | None) -> bool:
    """``value`` reaches ``threshold`` (neither unknown nor switched off)."""
    return value is not None and threshold is not None and value >= threshold


@dataclass(frozen=True, slots=True, kw_only=True)
class PartitionLine:
    position: PartitionPosition
    log_end: int | None
    lag: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class BookLine:
    activity: BookActivity
    book: Book | None  #: None: a book the ledger file does not name
    oldest_age_s: float | None
    red: frozenset[str]  #: the fields past their threshold


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceLine:
    activity: SourceActivity
    lag: int | None
    last_age_s: float | None
    books: tuple[BookLine, ...]
    red: frozenset[str]

    @property
    def vouchered(self) -> int:
        return self.activity.count(Outcome.VOUCHERED, Outcome.DUPLICATE, Outcome.GROUPED)


@dataclass(frozen=True, slots=True, kw_only=True)
class Board:
    status: SyncStatus
    sources: tuple[SourceLine, ...]
    partitions: tuple[PartitionLine, ...]
    kafka_answered: bool
    total_lag: int | None
    waiting: int
    oldest_age_s: float | None
    oldest_key: str | None
    feedback_age_s: float | None
    reconciliation_flagged: int
    red: frozenset[str]  #: the summary cards past their threshold


def board(status: SyncStatus, log_ends: Mapping[Partition, int] | None, books: Mapping[str, Book],
          thresholds: ConsoleThresholds, now: datetime, *, reconciliation_flagged: int = 0) -> Board:
    th = thresholds
    partitions = tuple(PartitionLine(position=p, log_end=log_ends.get((p.topic, p.partition)) if log_ends else None,
                                     lag=_lag(p, log_ends)) for p in status.positions)
    lag_by_topic: dict[str, int | None] = {}
    for line in partitions:
        known = lag_by_topic.get(line.position.topic, 0)
        lag_by_topic[line.position.topic] = None if known is None or line.lag is None else known + line.lag
    lines = []
    for src in status.sources:
        lag = _sum([lag_by_topic.get(t) for t in src.topics if t in lag_by_topic]) if log_ends is not None else None
        last_age = age_seconds(src.last_event_at, now)
        red = {name for name, hit in (
            ("lag", crossed(lag, th.lag_records)),
            ("last_event", crossed(last_age, th.silence_s)),
            ("rejected", crossed(src.count(Outcome.REJECTED), th.rejected_today)),
            ("dead_lettered", crossed(src.count(Outcome.DEAD_LETTERED), th.dead_lettered_today))) if hit}
        lines.append(SourceLine(activity=src, lag=lag, last_age_s=last_age, red=frozenset(red), books=tuple(
            _book_line(b, books.get(b.book), now, th) for b in status.books_of(src.system))))
    # vouchers of a system with no event in this group (journaled by another group, a replay) still show
    shown = {src.system for src in status.sources}
    for system in sorted({b.system for b in status.books if b.system not in shown}):
        lines.append(SourceLine(activity=SourceActivity(system=system, last_event_at=None), lag=None,
                                last_age_s=None, red=frozenset(), books=tuple(
                                    _book_line(b, books.get(b.book), now, th) for b in status.books_of(system))))
    waiting_lines = [b for b in status.books if b.oldest_waiting_at is not None]
    oldest = min(waiting_lines, key=lambda b: b.oldest_waiting_at or now, default=None)
    oldest_age = age_seconds(oldest.oldest_waiting_at, now) if oldest else None
    total = _sum([p.lag for p in partitions]) if log_ends is not None else None
    feedback_age = age_seconds(status.feedback_oldest_unsent_at, now)
    red = {name for name, hit in (
        ("lag", crossed(total, th.lag_records)), ("oldest", crossed(oldest_age, th.oldest_unposted_s)),
        ("dead_letters", crossed(status.dead_letters_new, th.dead_letters_new)),
        ("feedback", crossed(feedback_age, th.feedback_unsent_s)),
        ("reconciliation", crossed(reconciliation_flagged, th.reconciliation_flagged))) if hit}
    return Board(status=status, sources=tuple(lines), partitions=partitions, kafka_answered=log_ends is not None,
                 total_lag=total, waiting=sum(b.waiting for b in status.books), oldest_age_s=oldest_age,
                 oldest_key=oldest.oldest_waiting_key if oldest else None, feedback_age_s=feedback_age,
                 reconciliation_flagged=reconciliation_flagged, red=frozenset(red))


def _lag(p: PartitionPosition, log_ends: Mapping[Partition, int] | None) -> int | None:
    if log_ends is None or (p.topic, p.partition) not in log_ends:
        return None
    return max(0, log_ends[(p.topic, p.partition)] - p.next_offset)


def _sum(values: Sequence[int | None]) -> int | None:
    return None if any(v is None for v in values) else sum(v for v in values if v is not None)


def _book_line(b: BookActivity, book: Book | None, now: datetime, th: ConsoleThresholds) -> BookLine:
    age = age_seconds(b.oldest_waiting_at, now)
    red = {name for name, hit in (
        ("oldest_waiting", crossed(age, th.oldest_unposted_s)),
        ("rejected_by_kingdee", crossed(b.rejected_by_kingdee, th.rejected_by_kingdee)),
        ("needs_attention", crossed(b.needs_attention, th.needs_attention))) if hit}
    return BookLine(activity=b, book=book, oldest_age_s=age, red=frozenset(red))
