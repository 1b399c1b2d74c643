"""The poster: journaled vouchers → Kingdee, exactly once, with the outcome recorded per voucher.

K/3 Cloud has no idempotency key, and a call can time out *before the server commits*: a slow or locked
server keeps working on a request the client gave up on and saves it seconds later. Looking the voucher
up at once finds nothing yet, and sending it again makes a second copy. So:

1. **Claim** vouchers with ``FOR UPDATE SKIP LOCKED`` and mark them POSTING with ``attempts + 1`` in one
   short transaction — several posters can run side by side. Vouchers whose outcome is unknown are claimed
   first, but only once their grace period has passed (see 3). A reversal or delta is only claimed once
   the voucher it refers to is settled (or is OPENING history, never posted); a voucher is not claimed while
   a reversal from the same source change is unsettled, so a correction's reversal reaches Kingdee before
   its repost.
2. **Look up before re-sending.** A voucher claimed again (``attempts > 1``: an unknown outcome, a lease
   taken over, a round left unfinished) is searched in Kingdee by its key — the ``[kdcdc:<key>]`` marker
   in the first line's explanation or a configured custom field — with ExecuteBillQuery: found once →
   POSTED with the found ids; found more than once → NEEDS_ATTENTION (nothing deleted: the journal has
   no copy of its own to keep); not found → sent again. A voucher posted by such a re-send is looked up
   once more after the grace period (``recheck_after``): a copy that still turns up is handled like the
   duplicate scan's (5).
3. **BatchSave** the rest in batches, several batches in flight, per-item results matched by ``DIndex``.
   A call whose outcome is unknown (timeout, lost answer, HTTP 5xx) is *not* looked up at once: its
   vouchers stay POSTING with ``unknown_since`` set and are left unclaimed until
   ``unknown_grace_s`` (longer than the longest time Kingdee may still commit a request) has passed —
   no worker thread sleeps through it. A poster never starts a call after its claim's lease
   (``lease_s``) expired, so vouchers left POSTING by a poster that died or stalled are taken over (and
   looked up) only after ``lease_s + unknown_grace_s``; each take-over is logged and audited.
4. **Record** each voucher's new status, its audit row and its feedback outbox row in one transaction,
   only for vouchers still held by this claim. A posted reversal also moves the original to REVERSED.
   Steps 1–4 overlap: the next claim is taken while the previous one's batches are in flight, and the
   batches that finished meanwhile are recorded together — one transaction, not one per batch. Each claim
   keeps its own lease; the ordering rules of 1 hold because they are the claim's own conditions on the
   journal, whatever is still in flight.
5. **Scan for duplicates** every ``duplicate_scan_every_s`` (and on demand, ``kingdee-cdc scan-duplicates``):
   every voucher of the periods posted since the previous scan carrying a key marker (or key field) is read
   from Kingdee; a key held more than once keeps the copy the journal recorded, and each extra copy that is
   unaudited (document status A, D or Z) with the same lines is deleted, with an audit row; audited or
   submitted copies (B, C), copies with other lines, and keys the journal holds no copy of are flagged for a
   human (``duplicate_copies``, audit row, ``kingdee_cdc_kingdee_duplicates_*`` metrics), never touched.

A reversal's explanations name the voucher it reverses: ``冲销 <Kingdee number of the original> <text>``
(``冲销 期初 <text>`` when the original is OPENING history that was never posted by us).
"""

from __future__ import annotations

import enum
import logging
import re
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, Final, NamedTuple, Protocol

import psycopg

from connector.errors import InfraError
from connector.journal import (
    OPEN_COPIES,
    UNSETTLED,
    AuditAction,
    AuditRow,
    CopyState,
    FeedbackEvent,
    FeedbackReason,
    FeedbackStatus,
    Journal,
    KingdeeRef,
    VoucherStatus,
)
from connector.kingdee._client import (
    KingdeeAmbiguous,
    KingdeeBusinessError,
    KingdeeClient,
    KingdeeError,
    KingdeeRetryable,
)
from connector.events import KafkaCoordinates
from connector.ledger import Book, Voucher, VoucherKind, carried, to_kingdee, voucher_from_json
from connector.ledger._serde import key_marker
from connector.ops import OUTAGES, ThrottleFilter

if TYPE_CHECKING:
    from connector.config import Settings

log = logging.getLogger("kingdee_cdc.poster")
#: Kingdee's "busy, retry" answers (MsgCode 13/14): one line per ``OUTAGES.every_s``, saying how many it held back
#: — a throttling Kingdee answers every call of every worker that way
retry_log = logging.getLogger("kingdee_cdc.poster.retry")
retry_log.addFilter(ThrottleFilter(lambda: OUTAGES.every_s, lambda record: "retry"))
ACTOR: Final = "poster"
FORM: Final = "GL_VOUCHER"
REVERSAL_PREFIX: Final = "冲销 "
#: what a reversal names instead of a Kingdee number when the original is OPENING history (never posted by us)
OPENING_NUMBER: Final = "期初"
EXPLANATION_LIMIT: Final = 500  #: FEXPLANATION is text(500)
#: document statuses Kingdee lets a voucher be deleted in (Z 暂存, A 创建, D 重新审核) — not B 审核中, C 已审核
DELETABLE: Final = frozenset({"A", "D", "Z"})
#: a reversal or delta is claimed once the voucher it refers to is settled (or opening history, never posted)
SETTLED_ORIGINAL: Final = (VoucherStatus.POSTED, VoucherStatus.REVERSED, VoucherStatus.REJECTED_BY_KINGDEE,
                           VoucherStatus.OPENING)
#: failures the run loop waits out: the journal connection, Kingdee unreachable or not answering
_OUTAGE: Final = (InfraError, psycopg.OperationalError, psycopg.InterfaceError)
_MARKER_IN_TEXT: Final = re.compile(r"\[kdcdc:([^\]\s]+)\]")
_SCAN_PAGE: Final = 10_000


@dataclass(frozen=True, slots=True, kw_only=True)
class PosterOptions:
    """Poster tuning (``kingdee.*`` settings; see ``poster_options``).

    ==========================  =======  ===========================================================
    option                      default  meaning
    ==========================  =======  ===========================================================
    ``batch_size``              100      vouchers per BatchSave call
    ``concurrency``             4        BatchSave calls in flight (also bounded by the client's limit)
    ``claim_limit``             2000     vouchers per claim (the next is taken when half of them are left)
    ``key_field``               none     custom header field holding the key (e.g. ``F_KDCDC_KEY``)
    ``marker``                  true     also write ``[kdcdc:<key>]`` into the first entry's explanation
    ``lease_s``                 300      no call is started for a claim older than this; a POSTING voucher
                                         is taken over after ``lease_s + unknown_grace_s`` (a dead poster)
    ``unknown_grace_s``         300      an unknown outcome is looked up only after this (longer than
                                         Kingdee may still commit a request it received)
    ``duplicate_scan_every_s``  600      scan Kingdee for keys held more than once (0: never)
    ``delete_duplicates``       true     delete unaudited extra copies (false: flag them only)
    ``max_rounds``              5        look-up/send rounds per batch within one claim (MsgCode 13/14 …)
    ==========================  =======  ===========================================================
    """

    batch_size: int = 100
    concurrency: int = 4
    claim_limit: int = 2000
    key_field: str | None = None
    marker: bool = True
    lease_s: float = 300.0
    unknown_grace_s: float = 300.0
    duplicate_scan_every_s: float = 600.0
    delete_duplicates: bool = True
    max_rounds: int = 5

    def __post_init__(self) -> None:
        if self.lease_s <= 0 or self.unknown_grace_s <= 0:
            raise ValueError(f"lease_s and unknown_grace_s must be positive, got {self.lease_s} and "
                             f"{self.unknown_grace_s}")
        if self.duplicate_scan_every_s < 0:
            raise ValueError(f"duplicate_scan_every_s must be 0 (off) or positive, got {self.duplicate_scan_every_s}")
        if not self.marker and not self.key_field:
            raise ValueError("with marker off, key_field must name the custom field holding the key: the poster "
                             "cannot look vouchers up otherwise")


def poster_options(settings: Settings) -> PosterOptions:
    """``PosterOptions`` from the settings' ``kingdee`` section."""
    k = settings.kingdee
    return PosterOptions(batch_size=k.batch_size, concurrency=k.max_concurrency, key_field=k.key_field,
                         lease_s=k.lease_s, unknown_grace_s=k.unknown_outcome_grace_s,
                         duplicate_scan_every_s=k.duplicate_scan_every_s, delete_duplicates=k.delete_duplicates)


class PosterMetrics(Protocol):
    """What the poster reports (``connector.ops.Metrics``)."""

    def kingdee_request(self, operation: str, seconds: float, outcome: str) -> None: ...

    def voucher_settled(self, status: str) -> None: ...

    def voucher_posted(self, *, source_ts_ms: int | None, journaled_at: datetime | None) -> None: ...

    def outcomes_unknown(self, n: int) -> None: ...

    def leases_taken_over(self, n: int) -> None: ...

    def duplicate_copies(self, action: str, n: int = 1) -> None: ...

    def duplicate_copies_open(self, n: int) -> None: ...


@dataclass(slots=True)
class PostStats:
    claimed: int = 0
    posted: int = 0
    found_after_timeout: int = 0
    rejected: int = 0
    needs_attention: int = 0
    ambiguous_calls: int = 0
    retried_calls: int = 0
    left_pending: int = 0
    #: vouchers whose BatchSave outcome became unknown (looked up after the grace period)
    unknown: int = 0
    #: POSTING vouchers taken over from a poster whose lease expired
    taken_over: int = 0
    #: extra copies deleted / flagged by re-checks and duplicate scans
    duplicates_deleted: int = 0
    duplicates_flagged: int = 0

    def add(self, other: PostStats) -> None:
        for k in self.__slots__:
            setattr(self, k, getattr(self, k) + getattr(other, k))


@dataclass(slots=True)
class DuplicateScan:
    """What one duplicate scan (or re-check) saw and did."""

    periods: list[tuple[str, str]] = field(default_factory=list)  #: (book, YYYY-MM) scanned
    vouchers_seen: int = 0  #: Kingdee vouchers carrying a key
    duplicated: dict[str, list[str]] = field(default_factory=dict)  #: key → bill numbers of all its copies
    deleted: list[tuple[str, str, str]] = field(default_factory=list)  #: (key, id, number) deleted now
    flagged: list[tuple[str, str, str, str]] = field(default_factory=list)  #: (key, id, number, reason) new
    in_flight: list[str] = field(default_factory=list)  #: keys still being posted (settled by the look-up)
    #: NEEDS_ATTENTION keys Kingdee now holds once (a person removed the other copies): recorded POSTED with
    #: the copy left
    handed_back: list[str] = field(default_factory=list)
    open_copies: int = 0  #: copies waiting for a human (or a deletion) after this scan
    skipped: str | None = None  #: why no scan ran (another poster scanning, scanned recently)
    error: str | None = None


@dataclass(frozen=True, slots=True)
class _Copy:
    """One Kingdee voucher carrying a key."""

    id: str
    number: str
    group_no: str | None = None
    status: str = ""  #: FDocumentStatus


def _again(event: FeedbackEvent, attempts: int) -> FeedbackEvent:
    """A refusal after an earlier attempt gets an event id of its own (``key:status:attempt``): a voucher sent
    again (``vouchers resend``) and refused again must reach its source system again, with Kingdee's new
    messages — the outbox keeps one event per id. Other statuses happen once per voucher."""
    if attempts > 1 and event.status is FeedbackStatus.REJECTED_BY_KINGDEE:
        return event._replace(event_id=f"{event.event_id}:{attempts}")
    return event


class Unsettled(enum.StrEnum):
    """A claimed voucher's outcome that leaves it unsettled (it is not a voucher status)."""

    UNKNOWN = "UNKNOWN"  #: the BatchSave outcome is unknown: looked up after the grace period
    RELEASED = "RELEASED"  #: nothing was sent in this claim: JOURNALED again


#: the statuses a claim settles a voucher in
_SETTLED: Final = frozenset({VoucherStatus.POSTED, VoucherStatus.REJECTED_BY_KINGDEE, VoucherStatus.NEEDS_ATTENTION})


@dataclass(frozen=True, slots=True)
class _Outcome:
    key: str
    status: VoucherStatus | Unsettled  #: a status of ``_SETTLED``, or ``Unsettled``
    kingdee_id: str | None = None
    number: str | None = None
    group_no: str | None = None
    messages: tuple[str, ...] = ()
    found: bool = False
    recheck: bool = False  #: sent again after an earlier attempt: look the key up once more after the grace


@dataclass(slots=True)
class _ClaimRow:
    """A voucher a claim took (the claim statement's RETURNING columns)."""

    key: str
    payload: bytes
    attempts: int
    source_pk: str
    source_system: str
    reverses: str | None
    journaled_at: datetime | None
    kafka_offset: int | None
    was: VoucherStatus  #: its status before this claim (POSTING: an unknown outcome or a lease taken over)
    was_since: datetime | None  #: when the previous claim took it
    was_owner: str | None  #: the poster that held it
    unknown: datetime | None  #: when its outcome became unknown
    onum: str | None  #: the reversed original's Kingdee number
    ostatus: VoucherStatus | None  #: the reversed original's status

    def __post_init__(self) -> None:  # the database gives text
        self.was = VoucherStatus(self.was)
        self.ostatus = VoucherStatus(self.ostatus) if self.ostatus is not None else None

    @property
    def taken_over(self) -> bool:
        """Claimed from a poster whose lease ran out (not an unknown outcome whose grace passed)."""
        return self.was is VoucherStatus.POSTING and self.unknown is None


@dataclass(eq=False)
class _Claimed:
    """A claimed voucher. Its payload is decoded on first use — on the worker thread that posts it, so the
    thread holding the journal connection does not spend its time decoding a whole claim."""

    key: str
    payload: bytes
    attempts: int
    pk: str
    system: str
    reverses: str | None = None
    journaled_at: datetime | None = None
    #: the original's Kingdee number (reversals) and journal status (OPENING: history never posted)
    original_number: str | None = None
    original_status: VoucherStatus | None = None
    _voucher: Voucher | None = field(default=None, repr=False)

    @classmethod
    def of(cls, r: _ClaimRow) -> _Claimed:
        return cls(r.key, bytes(r.payload), r.attempts, r.source_pk, r.source_system, r.reverses, r.journaled_at,
                   original_number=r.onum, original_status=r.ostatus)

    @property
    def voucher(self) -> Voucher:
        v = self._voucher
        if v is None:  # (two threads decoding at once would only both do the work)
            v = self._voucher = voucher_from_json(self.payload)
        return v

    def feedback(self, o: _Outcome, status: FeedbackStatus) -> FeedbackEvent:
        """The feedback event of settling this voucher with ``o``."""
        return FeedbackEvent.for_voucher(status, self.voucher, kingdee=KingdeeRef(o.kingdee_id, o.number, o.group_no),
                                         reasons=tuple(FeedbackReason("KINGDEE", m) for m in o.messages))


class _Contribution(NamedTuple):
    """A contribution of a summary voucher, with the Kafka coordinates of its change."""

    key: str
    payload: bytes
    topic: str | None
    kafka_partition: int | None
    kafka_offset: int | None
    kafka_ts_ms: int | None

    def coordinates(self) -> KafkaCoordinates | None:
        if self.topic is None or self.kafka_partition is None or self.kafka_offset is None:
            return None
        return KafkaCoordinates(topic=self.topic, partition=self.kafka_partition, offset=self.kafka_offset,
                                timestamp_ms=self.kafka_ts_ms)


@dataclass(slots=True)
class _KeyStatus:
    key: str
    status: VoucherStatus
    kingdee_id: str | None

    def __post_init__(self) -> None:
        self.status = VoucherStatus(self.status)


@dataclass(frozen=True, slots=True)
class _Recheck:
    key: str
    book: str
    voucher_date: date


@dataclass(slots=True)
class _CopyChange:
    """A ``duplicate_copies`` row an upsert or update changed."""

    voucher_key: str
    kingdee_id: str
    kingdee_number: str
    state: CopyState
    reason: str | None

    def __post_init__(self) -> None:
        self.state = CopyState(self.state)


@dataclass(frozen=True, slots=True)
class _CopyRecord:
    """A copy to record in ``duplicate_copies``: the copy, the one the journal keeps, the state and why."""

    key: str
    copy: _Copy
    kept_id: str | None
    state: CopyState
    reason: str


def reversal_text(text: str, number: str) -> str:
    """``冲销 <number> <rest>``: the 冲销 prefix of ``text`` (added when missing) followed by the original's number."""
    rest = text[len(REVERSAL_PREFIX):] if text.startswith(REVERSAL_PREFIX) else text
    return f"{REVERSAL_PREFIX}{number} {rest}".rstrip()[:EXPLANATION_LIMIT]


def name_original(v: Voucher, number: str) -> Voucher:
    """The reversal ``v`` with its header and every line explanation naming the original (``reversal_text``);
    a line without its own explanation shows the header's, as Kingdee receives it."""
    return v._replace(explanation=reversal_text(v.explanation, number),
                      entries=tuple(e._replace(explanation=reversal_text(e.explanation, number)) if e.explanation
                                    else e for e in v.entries))


def _period(d: date) -> str:
    return f"{d:%Y-%m}"


def _month_range(period: str) -> tuple[date, date]:
    y, m = (int(x) for x in period.split("-"))
    return date(y, m, 1), date(y + (m == 12), m % 12 + 1, 1)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@dataclass(slots=True)
class _Chunk:
    """One chunk's way through its look-up and send rounds (on a worker thread: Kingdee only, no journal)."""

    pending: list[_Claimed]
    must_look: set[str] = field(default_factory=set)  #: keys to look up in Kingdee before sending
    outcomes: list[_Outcome] = field(default_factory=list)
    stats: PostStats = field(default_factory=PostStats)

    def settle(self, c: _Claimed, outcome: _Outcome) -> None:
        self.pending.remove(c)
        self.outcomes.append(outcome)

    def settle_all(self, status: VoucherStatus | Unsettled, message: str) -> None:
        self.outcomes += [_Outcome(c.key, status, messages=(message,)) for c in self.pending]
        self.pending = []


class _Extra(NamedTuple):
    """An extra copy of a key to delete, and the copy the journal keeps."""

    key: str
    copy: _Copy
    kept: _Copy


class Poster:
    def __init__(self, journal: Journal, client: KingdeeClient, *, books: Mapping[str, Book] | None = None,
                 options: PosterOptions = PosterOptions(), metrics: PosterMetrics | None = None) -> None:
        self.journal = journal
        self.client = client
        self.metrics = metrics
        if metrics is not None and client.observer is None:
            client.observer = metrics.kingdee_request
        self.books = dict(books or {})
        self.opts = options
        self._stop = threading.Event()
        self._next_scan = time.monotonic() + options.duplicate_scan_every_s
        #: calls to Kingdee in flight (``concurrency``): a worker builds its batch's models before taking one, and
        #: one worker more than there are slots keeps every slot busy while the next batch is being built
        self._calls = threading.BoundedSemaphore(options.concurrency)
        #: the record step's own connection (step 4 runs beside the claims: see run_once)
        self._record_journal: Journal | None = None
        self._in_run = False

    def stop(self) -> None:
        self._stop.set()

    # ------------------------------------------------------------------ public
    def run(self, *, idle_sleep_s: float = 1.0, exit_when_idle: bool = False) -> PostStats:
        """Post until stopped. Infrastructure failures (journal or Kingdee unreachable, the journal's migration at
        start included) never end the loop: it waits with backoff (up to 30 s between attempts) and reports them to
        the process's outages, which log the first failure at once and then one line per interval. A round in which
        nothing could be sent backs off the same way. Every ``duplicate_scan_every_s`` the loop also scans Kingdee
        for keys held more than once."""
        self._in_run = True
        try:
            return self._run(idle_sleep_s, exit_when_idle)
        finally:
            self._in_run = False
            self._close_record_journal()

    def _run(self, idle_sleep_s: float, exit_when_idle: bool) -> PostStats:
        total = PostStats()
        migrated = False
        backoff = idle_sleep_s
        while not self._stop.is_set():
            try:
                if not migrated:
                    self.journal.migrate()
                    migrated = True
                stats = self.run_once()
                if self.opts.duplicate_scan_every_s and time.monotonic() >= self._next_scan:
                    self._next_scan = time.monotonic() + self.opts.duplicate_scan_every_s
                    scan = self.scan_duplicates(periodic=True)
                    stats.duplicates_deleted += len(scan.deleted)
                    stats.duplicates_flagged += len(scan.flagged)
                done = stats.claimed == 0 and exit_when_idle and self.pending() == 0
            except _OUTAGE as e:
                OUTAGES.failed("kingdee" if isinstance(e, KingdeeError) else "journal", str(e))
                self.journal.reset()
                self._close_record_journal()
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            if OUTAGES.problem("journal") is not None:
                OUTAGES.ok("journal")
            total.add(stats)
            if done:
                break
            if stats.claimed and stats.left_pending >= stats.claimed:  # nothing could be sent: Kingdee down …
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            backoff = idle_sleep_s
            if stats.claimed == 0:
                self._stop.wait(idle_sleep_s)
        return total

    def pending(self) -> int:
        """Vouchers not settled yet (JOURNALED, POSTING — including unknown outcomes waiting for their grace)."""
        j = self.journal
        return j.count(j.q("SELECT count(*) FROM {s}.vouchers WHERE status IN ({unsettled})", unsettled=UNSETTLED))

    def run_once(self) -> PostStats:
        """Steps 1–4 until there is nothing left to claim: the next claim is taken while the chunks of the
        previous ones are still being sent, so ``concurrency`` calls stay in flight, and the chunks that finished
        meanwhile are recorded together, in one transaction, by a recorder thread with a journal connection of its
        own — claims and records run side by side. Ends when a claim finds nothing, when a chunk could send
        nothing (Kingdee down or refusing: the run loop backs off), after ``ROUND_S``, or when stopping — and
        always with every claimed voucher sent and recorded (or released)."""
        stats = PostStats()
        self._recheck(stats)
        started = time.monotonic()
        claimed: dict[str, _Claimed] = {}  # what is in flight, for the record step
        running: set[Future[tuple[list[_Outcome], PostStats]]] = set()
        # Claims stay on this thread (self.journal), records on the recorder's (its own connection); worker
        # threads only talk to Kingdee.
        try:
            with ThreadPoolExecutor(max_workers=self.opts.concurrency + 1, thread_name_prefix="poster") as pool, \
                    ThreadPoolExecutor(max_workers=1, thread_name_prefix="poster-record") as recorder:
                try:
                    self._pump(pool, recorder, stats, claimed, running, started)
                except BaseException:
                    # The journal failed (or a thread did): chunks not started are not sent, since their outcome
                    # could not be recorded. They stay POSTING under this claim and are looked up once taken over.
                    for f in running:
                        f.cancel()
                    raise
        finally:
            if not self._in_run:  # called on its own: nothing keeps the recorder's connection
                self._close_record_journal()
        return stats

    def _pump(self, pool: ThreadPoolExecutor, recorder: ThreadPoolExecutor, stats: PostStats,
              claimed: dict[str, _Claimed], running: set[Future[tuple[list[_Outcome], PostStats]]],
              started: float) -> None:
        """``run_once``'s loop: claim, hand the chunks to the pool, hand what finished to the recorder (all of it
        at once whenever it is free) — ``running``: the chunks handed over and not finished yet, kept up to date
        for the caller."""
        more = True
        finished: list[_Outcome] = []  # not handed to the recorder yet
        recording: Future[None] | None = None
        failed: BaseException | None = None
        while True:
            if recording is not None and recording.done():
                recording.result()  # (the recorder's failure is raised here)
                recording = None
            if finished and recording is None:
                recording = recorder.submit(self._record_finished, finished, claimed)
                finished = []
            if failed is not None and not running:
                # A worker failed: what the other chunks did is recorded first — all of it, also what finished
                # while the recorder was busy — then its failure is raised.
                if recording is not None:
                    recording.result()
                if finished:
                    recorder.submit(self._record_finished, finished, claimed).result()
                raise failed
            # Claim again once half of the previous claim's chunks are left: enough to keep every call slot busy
            # while this thread claims.
            if more and failed is None and len(running) <= self._refill_at and not self._stop.is_set() \
                    and time.monotonic() - started < self.ROUND_S:
                deadline = time.monotonic() + self.opts.lease_s  # before the claim: never later than the journal's
                batch = self._claim(stats)
                stats.claimed += len(batch)
                if not batch:
                    more = False
                    continue
                claimed.update((c.key, c) for c in batch)
                for i in range(0, len(batch), self.opts.batch_size):
                    running.add(pool.submit(self._post_or_release, batch[i:i + self.opts.batch_size], deadline))
                continue
            watched: set[Future[Any]] = set(running)
            if recording is not None:
                watched.add(recording)
            if not watched:
                if finished:
                    continue
                return
            done, _ = wait(watched, return_when=FIRST_COMPLETED)
            for f in done:
                if f is recording:
                    continue
                running.discard(f)
                if (e := f.exception()) is not None:
                    failed = failed or e
                    continue
                chunk_outcomes, chunk_stats = f.result()
                stats.add(chunk_stats)
                finished += chunk_outcomes
                if chunk_stats.left_pending:  # nothing more is claimed in this round (the run loop backs off)
                    more = False

    def _record_finished(self, outcomes: list[_Outcome], claimed: dict[str, _Claimed]) -> None:
        """The recorder thread's step: record, then forget what was recorded."""
        self._record(outcomes, claimed)
        for o in outcomes:
            claimed.pop(o.key, None)

    def _recording(self) -> Journal:
        """The record step's journal: a connection of its own, beside the claims'."""
        if self._record_journal is None:
            j = self.journal
            self._record_journal = Journal(j.dsn, schema=j.schema, group=j.group, owner=j.owner)
        return self._record_journal

    def _close_record_journal(self) -> None:
        if self._record_journal is not None:
            self._record_journal.close()
            self._record_journal = None

    #: a round (``run_once``) stops claiming after this many seconds, so the run loop's periodic work (the
    #: duplicate scan, re-checks) is not held off by a backlog that never empties
    ROUND_S: Final = 10.0

    @property
    def _refill_at(self) -> int:
        return max(self.opts.concurrency, self.opts.claim_limit // self.opts.batch_size // 2)

    def _post_or_release(self, chunk: list[_Claimed], deadline: float) -> tuple[list[_Outcome], PostStats]:
        if self._stop.is_set():  # stopping: a chunk not started yet goes back to JOURNALED at once
            return [_Outcome(c.key, Unsettled.RELEASED) for c in chunk], PostStats(left_pending=len(chunk))
        return self._post_chunk(chunk, deadline)

    # ------------------------------------------------------------------ claim
    _CLAIM: Final = (
        "WITH c AS (SELECT v.key, v.status AS was, v.posting_since AS was_since, v.posting_owner AS was_owner, "
        "    v.unknown_since AS unknown, o.kingdee_number AS onum, o.status AS ostatus "
        "  FROM {s}.vouchers v LEFT JOIN {s}.vouchers o ON o.key = v.reverses "
        "  WHERE {cond} "
        "    AND (v.reverses IS NULL OR o.status IN ({settled_original}) "
        # a late change to a row carried by a summary voucher: once that summary voucher is in Kingdee
        "         OR (o.status = {summarized} AND o.kingdee_number IS NOT NULL)) "
        # a correction's reversal goes first: nothing else of the same source change while it is unsettled
        "    AND (v.kind = {reversal} OR NOT EXISTS (SELECT 1 FROM {s}.vouchers r WHERE r.kind = {reversal} "
        "         AND r.status IN ({unsettled}) AND r.source_system = v.source_system "
        "         AND r.source_table = v.source_table AND r.source_pk = v.source_pk "
        "         AND r.source_position = v.source_position AND r.source_op = v.source_op)) "
        "  ORDER BY v.seq LIMIT %(limit)s FOR UPDATE OF v SKIP LOCKED) "
        # unknown_since is cleared: this claim's own lease now guards the voucher (attempts > 1 still forces the
        # look-up), and a second poster must not see an expired grace on a voucher this one is working on
        "UPDATE {s}.vouchers v SET status = {posting}, attempts = v.attempts + 1, posting_since = now(), "
        "posting_owner = %(owner)s, unknown_since = NULL, updated_at = now() FROM c WHERE v.key = c.key "
        "RETURNING v.key, v.payload, v.attempts, v.source_pk, v.source_system, v.reverses, v.journaled_at, "
        "v.kafka_offset, c.was, c.was_since, c.was_owner, c.unknown, c.onum, c.ostatus")
    #: unknown outcomes whose grace has passed, and claims of posters that died or stalled (lease + grace)
    _AGAIN: Final = ("v.status = {posting} AND CASE WHEN v.unknown_since IS NOT NULL "
                     "THEN v.unknown_since < now() - make_interval(secs => %(grace)s) "
                     "ELSE v.posting_since < now() - make_interval(secs => %(lease)s + %(grace)s) END")
    _FRESH: Final = ("v.status = {journaled} AND (v.unknown_since IS NULL "
                     "OR v.unknown_since < now() - make_interval(secs => %(grace)s))")

    def _claim(self, stats: PostStats | None = None) -> list[_Claimed]:
        """Step 1: claim vouchers — unknown outcomes and expired leases first: they are looked up before
        anything is sent — and audit each lease taken over. Look-ups first, then journal order."""
        with self.journal.transaction():
            rows = self._claim_rows(self._AGAIN, self.opts.claim_limit)
            if len(rows) < self.opts.claim_limit:
                rows += self._claim_rows(self._FRESH, self.opts.claim_limit - len(rows))
            taken = [r for r in rows if r.taken_over]
            self.journal.insert_audit([AuditRow.of(ACTOR, AuditAction.LEASE_TAKEN_OVER, r.key, {
                "from": r.was_owner, "claimed_at": r.was_since.isoformat() if r.was_since else None,
                "attempt": r.attempts, "lease_s": self.opts.lease_s, "grace_s": self.opts.unknown_grace_s})
                for r in taken])
        if taken:
            self._report_takeovers(taken, stats)
        rows.sort(key=lambda r: (r.was is not VoucherStatus.POSTING, r.journaled_at, r.kafka_offset or 0))
        return [_Claimed.of(r) for r in rows]

    def _claim_rows(self, cond: str, limit: int) -> list[_ClaimRow]:
        j = self.journal
        query = j.q(self._CLAIM.replace("{cond}", cond), settled_original=SETTLED_ORIGINAL,
                    reversal=VoucherKind.REVERSAL, unsettled=UNSETTLED, posting=VoucherStatus.POSTING,
                    journaled=VoucherStatus.JOURNALED, summarized=VoucherStatus.SUMMARIZED)
        return j.rows(_ClaimRow, query, {"grace": self.opts.unknown_grace_s, "lease": self.opts.lease_s,
                                         "owner": j.owner, "limit": limit})

    def _report_takeovers(self, taken: Sequence[_ClaimRow], stats: PostStats | None) -> None:
        by_owner: dict[str, list[_ClaimRow]] = {}
        for r in taken:
            by_owner.setdefault(str(r.was_owner or "an unknown poster"), []).append(r)
        for owner, rs in by_owner.items():
            since = [r.was_since for r in rs if r.was_since]
            log.warning("took over %d POSTING vouchers from %s, claimed at %s: its lease (%.0fs) and the grace "
                        "period (%.0fs) expired without an outcome (the poster stopped or stalled); looking "
                        "them up in Kingdee before re-sending: %s%s", len(rs), owner, min(since) if since else "?",
                        self.opts.lease_s, self.opts.unknown_grace_s, ", ".join(r.key for r in rs[:5]),
                        " …" if len(rs) > 5 else "")
        if stats is not None:
            stats.taken_over += len(taken)
        if self.metrics is not None:
            self.metrics.leases_taken_over(len(taken))

    # ------------------------------------------------------------------ post one chunk
    def _post_chunk(self, chunk: list[_Claimed], deadline: float = float("inf")) -> tuple[list[_Outcome], PostStats]:
        """Steps 2 and 3 for one chunk: look up what may already be in Kingdee, send the rest."""
        work = _Chunk(list(chunk))
        for c in [c for c in chunk if c.reverses and c.original_status is VoucherStatus.REJECTED_BY_KINGDEE]:
            work.settle(c, _Outcome(c.key, VoucherStatus.REJECTED_BY_KINGDEE, messages=(
                "the voucher it reverses was rejected by Kingdee: nothing to reverse",)))
            work.stats.rejected += 1
        work.must_look = {c.key for c in work.pending if c.attempts > 1}
        for _ in range(self.opts.max_rounds):
            if not work.pending or not self._round(work, deadline):
                break
        work.stats.left_pending = len(work.pending)
        work.outcomes += [_Outcome(c.key, Unsettled.RELEASED) for c in work.pending]
        self._auto_submit([o for o in work.outcomes if o.status is VoucherStatus.POSTED and not o.found], chunk)
        return work.outcomes, work.stats

    def _round(self, work: _Chunk, deadline: float) -> bool:
        """One round: the look-up (if due), then BatchSave. False: no further round (nothing left, the lease
        ran out, or Kingdee failed in a way another round cannot fix now)."""
        sending = False
        try:
            if work.must_look:
                with self._calls:
                    self._look_up(work)
                work.must_look = set()
            if not work.pending:
                return False
            models = [self._model(c) for c in work.pending]  # built before taking a call slot
            with self._calls:
                if time.monotonic() >= deadline:
                    # Past the lease, another poster may take these over: starting a call now could race it.
                    log.warning("the claim's lease (%.0fs) ran out before %d vouchers were sent; releasing them",
                                self.opts.lease_s, len(work.pending))
                    return False
                sending = True
                self._send(work, models)
        except KingdeeAmbiguous as e:
            # Kingdee may still be working on it and commit later: looking now could find nothing yet.
            work.stats.ambiguous_calls += 1
            work.stats.unknown += len(work.pending)
            log.warning("BatchSave of %d vouchers: %s; they are looked up by key after the %.0fs grace period, "
                        "not re-sent before", len(work.pending), e, self.opts.unknown_grace_s)
            work.settle_all(Unsettled.UNKNOWN, str(e))
        except KingdeeRetryable as e:
            work.stats.retried_calls += 1
            retry_log.warning("Kingdee asked to retry (%s); backing off", e)
            time.sleep(0.2)
        except KingdeeBusinessError as e:
            work.stats.rejected += len(work.pending)
            work.settle_all(VoucherStatus.REJECTED_BY_KINGDEE, str(e))
        except KingdeeError as e:
            if sending:  # an answer we cannot read: the save may have happened
                work.stats.unknown += len(work.pending)
                log.error("BatchSave of %d vouchers failed with an unreadable answer (%s); they are looked up "
                          "by key after the %.0fs grace period", len(work.pending), e, self.opts.unknown_grace_s)
                work.settle_all(Unsettled.UNKNOWN, str(e))
            else:
                log.error("Kingdee error, leaving %d vouchers for the next round: %s", len(work.pending), e)
            return False
        return True

    def _look_up(self, work: _Chunk) -> None:
        """Step 2: vouchers claimed again are looked up by key: found once → POSTED, more than once →
        NEEDS_ATTENTION, not found → sent again."""
        found = self._lookup([c.key for c in work.pending if c.key in work.must_look])
        for c in list(work.pending):
            hits = found.get(c.key)
            if not hits:
                continue
            if len(hits) == 1:
                h = hits[0]
                work.settle(c, _Outcome(c.key, VoucherStatus.POSTED, h.id, h.number, h.group_no, found=True))
                work.stats.found_after_timeout += 1
            else:
                work.settle(c, _Outcome(c.key, VoucherStatus.NEEDS_ATTENTION, messages=(
                    f"{len(hits)} Kingdee vouchers carry this key: {', '.join(h.number for h in hits)}",)))
                work.stats.needs_attention += 1

    def _send(self, work: _Chunk, models: Sequence[Mapping[str, Any]]) -> None:
        """Step 3: BatchSave the pending vouchers (``models``: theirs, in order); per-item results in order."""
        results = self.client.batch_save(FORM, models,
                                         NeedReturnFields=["FBillNo", "FVOUCHERGROUPNO"], IsDeleteEntry="true",
                                         IsAutoSubmitAndAudit="false")
        for c, r in zip(work.pending, results):
            if r.ok:
                work.outcomes.append(_Outcome(c.key, VoucherStatus.POSTED, r.id, r.number,
                                              str(r.return_data.get("FVOUCHERGROUPNO") or "") or None,
                                              recheck=c.attempts > 1))
                work.stats.posted += 1
            else:
                work.outcomes.append(_Outcome(c.key, VoucherStatus.REJECTED_BY_KINGDEE, messages=r.messages))
                work.stats.rejected += 1
        work.pending = []

    def _model(self, c: _Claimed) -> dict[str, Any]:
        v = c.voucher
        if v.kind is VoucherKind.REVERSAL:
            number = OPENING_NUMBER if c.original_status is VoucherStatus.OPENING else c.original_number
            if number:
                v = name_original(v, number)
        return to_kingdee(v, self.books.get(v.book), key_field=self.opts.key_field, marker=self.opts.marker)

    def _lookup(self, keys: Sequence[str]) -> dict[str, list[_Copy]]:
        """Find vouchers in Kingdee by key: key → its copies (distinct FVOUCHERIDs, in the order Kingdee lists them)."""
        out: dict[str, list[_Copy]] = {}

        def add(key: str, vid: Any, bill: Any, group_no: Any, status: Any) -> None:
            copies = out.setdefault(key, [])
            if all(h.id != str(vid) for h in copies):
                copies.append(_Copy(str(vid), str(bill), None if group_no is None else str(group_no),
                                    str(status or "")))
        for i in range(0, len(keys), self.opts.batch_size):
            part = keys[i:i + self.opts.batch_size]
            if self.opts.key_field:
                fk = self.opts.key_field
                flt = f"{fk} IN ({', '.join(_quote(k) for k in part)})"
                rows = self.client.execute_bill_query(
                    FORM, ["FVOUCHERID", "FBillNo", "FVOUCHERGROUPNO", "FDocumentStatus", fk], flt, limit=10_000)
                for vid, bill, group_no, status, key in rows:
                    add(str(key), vid, bill, group_no, status)
                continue
            # Marker search. Brackets are left out of the LIKE pattern: SQL Server reads [...] as a character class.
            flt = " or ".join(f"FEXPLANATION like '%kdcdc:{k}%'" for k in part)
            rows = self.client.execute_bill_query(
                FORM, ["FVOUCHERID", "FBillNo", "FVOUCHERGROUPNO", "FDocumentStatus", "FEXPLANATION"], flt,
                limit=10_000)
            for vid, bill, group_no, status, expl in rows:
                for k in part:
                    if key_marker(k) in str(expl or ""):
                        add(k, vid, bill, group_no, status)
        return out

    def _auto_submit(self, posted: Sequence[_Outcome], chunk: Sequence[_Claimed]) -> None:
        by_key = {c.key: c.voucher for c in chunk}
        for book_no, book in self.books.items():
            if not book.auto_submit:
                continue
            ids = [o.kingdee_id for o in posted if o.kingdee_id and by_key[o.key].book == book_no
                   and not by_key[o.key].needs_review]
            if not ids:
                continue
            try:
                self.client.submit(FORM, ids=ids)
                if book.auto_audit:
                    self.client.audit(FORM, ids=ids)
            except KingdeeError as e:  # the vouchers are saved; a human can submit them
                log.warning("auto submit/audit of %d vouchers in book %s failed: %s", len(ids), book_no, e)

    # ------------------------------------------------------------------ record
    def _record(self, outcomes: Sequence[_Outcome], claimed: Mapping[str, _Claimed]) -> None:
        """Step 4: each voucher's new status, audit row and feedback event in one transaction — only for vouchers
        still held by this claim (the attempt number identifies it: a voucher taken over meanwhile is left to
        its new holder). A posted reversal also moves the original to REVERSED."""
        settled = [o for o in outcomes if o.status in _SETTLED]
        unknown = [o for o in outcomes if o.status is Unsettled.UNKNOWN]
        released = [o for o in outcomes if o.status is Unsettled.RELEASED]
        j = self._recording()
        with j.transaction():
            applied = self._update_claimed(j, settled, claimed, self._SETTLE, self.opts.unknown_grace_s,
                                           ["; ".join(o.messages) or None for o in settled],
                                           [o.status.value for o in settled], [o.kingdee_id for o in settled],
                                           [o.number for o in settled], [o.group_no for o in settled],
                                           [o.recheck for o in settled])
            marked = self._update_claimed(j, unknown, claimed, self._UNKNOWN, None,
                                          ["; ".join(o.messages) for o in unknown])
            self._update_claimed(j, released, claimed, self._RELEASE, None)
            settled = [o for o in settled if o.key in applied]
            self._mark_reversed(j, settled, claimed)
            audit, outbox = self._settled_rows(settled, claimed)
            outbox += self._summary_feedback(j, settled, claimed)
            audit += [AuditRow.of(ACTOR, AuditAction.OUTCOME_UNKNOWN, o.key, {
                "messages": list(o.messages), "attempts": claimed[o.key].attempts,
                "look_up_after_s": self.opts.unknown_grace_s}) for o in unknown if o.key in marked]
            # One statement each (not executemany: its pipeline mode stalled for seconds at a time under
            # psycopg 3.3 while the worker threads were busy with HTTP)
            self._insert_audit(j, audit)
            self._insert_outbox(j, outbox)
        self._report_settled(settled, claimed, len(marked))

    # Arrays go as binary parameters (%b) throughout: in text form psycopg quotes and escapes every element of
    # a text[] with a regular expression, which cost the poster ~45 µs per outbox row (its JSON is full of
    # quotes) — more than the rest of the record step together.
    _INSERT_AUDIT: Final = (
        "INSERT INTO {s}.audit (actor, action, voucher_key, detail) SELECT a, b, c, d::jsonb "
        "FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[]) AS r(a, b, c, d)")
    #: an event id already there is left as it is (as ``Journal.insert_outbox``)
    _INSERT_OUTBOX: Final = (
        "INSERT INTO {s}.outbox (event_id, source_system, message_key, status, payload) "
        "SELECT a, b, c, d, e::jsonb FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], %b::text[]) "
        "AS r(a, b, c, d, e) ON CONFLICT (event_id) DO NOTHING")

    def _insert_audit(self, j: Journal, rows: Sequence[AuditRow]) -> None:
        if rows:
            j.conn.execute(j.q(self._INSERT_AUDIT), ([r.actor for r in rows], [str(r.action) for r in rows],
                                                     [r.voucher_key for r in rows], [r.detail for r in rows]))

    def _insert_outbox(self, j: Journal, events: Sequence[FeedbackEvent]) -> None:
        if events:
            rows = [e.to_outbox_row() for e in events]
            j.conn.execute(j.q(self._INSERT_OUTBOX), ([r.event_id for r in rows], [r.source_system for r in rows],
                                                      [r.message_key for r in rows], [str(r.status) for r in rows],
                                                      [r.payload for r in rows]))

    #: each UPDATE applies to the vouchers still held by this claim: ``o`` holds (key, attempts, …)
    _SETTLE: Final = (
        "UPDATE {s}.vouchers v SET status = o.status, kingdee_id = o.kid, kingdee_number = o.num, "
        "kingdee_group_no = o.gno, kingdee_messages = o.msg, unknown_since = NULL, "
        "recheck_after = CASE WHEN o.recheck THEN now() + make_interval(secs => %s) END, updated_at = now() "
        "FROM unnest(%b::text[], %b::int[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[], "
        "%b::boolean[]) AS o(key, attempts, msg, status, kid, num, gno, recheck) "
        "WHERE v.key = o.key AND v.status = {posting} AND v.attempts = o.attempts RETURNING v.key")
    _UNKNOWN: Final = (
        "UPDATE {s}.vouchers v SET unknown_since = now(), kingdee_messages = o.msg, updated_at = now() "
        "FROM unnest(%b::text[], %b::int[], %b::text[]) AS o(key, attempts, msg) "
        "WHERE v.key = o.key AND v.status = {posting} AND v.attempts = o.attempts RETURNING v.key")
    #: nothing was sent in this claim: JOURNALED again (attempts > 1: looked up first)
    _RELEASE: Final = (
        "UPDATE {s}.vouchers v SET status = {journaled}, updated_at = now() "
        "FROM unnest(%b::text[], %b::int[]) AS o(key, attempts) "
        "WHERE v.key = o.key AND v.status = {posting} AND v.attempts = o.attempts RETURNING v.key")

    @staticmethod
    def _update_claimed(j: Journal, outcomes: Sequence[_Outcome], claimed: Mapping[str, _Claimed], statement: str,
                        lead: float | None, *columns: Sequence[object]) -> set[str]:
        """Run ``statement`` for ``outcomes`` (``lead``: a first parameter, then keys, attempts and ``columns``);
        the keys it changed."""
        if not outcomes:
            return set()
        params = [[o.key for o in outcomes], [claimed[o.key].attempts for o in outcomes], *columns]
        query = j.q(statement, posting=VoucherStatus.POSTING, journaled=VoucherStatus.JOURNALED)
        rows = j.conn.execute(query, ([lead] if lead is not None else []) + params).fetchall()
        return {key for (key,) in rows}

    @staticmethod
    def _mark_reversed(j: Journal, settled: Sequence[_Outcome], claimed: Mapping[str, _Claimed]) -> None:
        originals = [claimed[o.key].voucher.reverses for o in settled if o.status is VoucherStatus.POSTED
                     and claimed[o.key].voucher.kind is VoucherKind.REVERSAL]
        if originals:
            j.conn.execute(j.q("UPDATE {s}.vouchers SET status = {reversed}, updated_at = now() "
                               "WHERE key = ANY(%b::text[]) AND status = {posted}", reversed=VoucherStatus.REVERSED,
                               posted=VoucherStatus.POSTED), (originals,))

    @staticmethod
    def _settled_rows(settled: Sequence[_Outcome], claimed: Mapping[str, _Claimed]
                      ) -> tuple[list[AuditRow], list[FeedbackEvent]]:
        """An audit row and a feedback event per settled voucher; a posted reversal's original gets REVERSED."""
        audit: list[AuditRow] = []
        outbox: list[FeedbackEvent] = []
        for o in settled:
            c = claimed[o.key]
            v = c.voucher
            audit.append(AuditRow.of(ACTOR, AuditAction(o.status), o.key, {
                "kingdee_id": o.kingdee_id, "number": o.number, "group_no": o.group_no,
                "messages": list(o.messages), "attempts": c.attempts, "found_by_key": o.found}))
            event = _again(c.feedback(o, FeedbackStatus(o.status)), c.attempts)
            if v.kind is not VoucherKind.SUMMARY:  # a summary voucher's rows are told one by one (_summary_feedback)
                outbox.append(event)
            if o.status is VoucherStatus.POSTED and v.kind is VoucherKind.REVERSAL and v.reverses:
                audit.append(AuditRow.of(ACTOR, AuditAction.REVERSED, v.reverses, {"by": o.key}))
                outbox.append(event.reversed_original())
        return audit, outbox

    @staticmethod
    def _summary_feedback(j: Journal, settled: Sequence[_Outcome], claimed: Mapping[str, _Claimed]
                          ) -> list[FeedbackEvent]:
        """A settled summary voucher: every source row it carries is told (POSTED naming the summary voucher's
        Kingdee number, or REJECTED_BY_KINGDEE), and its contributions learn that number (a later reversal of
        one of them names it, the drill-down shows it)."""
        out: list[FeedbackEvent] = []
        for o in settled:
            v = claimed[o.key].voucher
            if v.kind is not VoucherKind.SUMMARY or o.status is VoucherStatus.NEEDS_ATTENTION:
                continue
            if o.status is VoucherStatus.POSTED:
                j.conn.execute(j.q(
                    "UPDATE {s}.vouchers SET kingdee_number = %s, kingdee_group_no = %s, updated_at = now() "
                    "WHERE summary_id = (SELECT id FROM {s}.summaries WHERE voucher_key = %s)"),
                    (o.number, o.group_no, o.key))
            rows = {r.key: r for r in j.rows(_Contribution, j.q(
                "SELECT key, payload, topic, kafka_partition, kafka_offset, kafka_ts_ms FROM {s}.vouchers "
                "WHERE summary_id = (SELECT id FROM {s}.summaries WHERE voucher_key = %s) ORDER BY seq"), (o.key,))}
            kingdee = KingdeeRef(o.kingdee_id, o.number, o.group_no)
            reasons = tuple(FeedbackReason("KINGDEE", m) for m in o.messages)
            for row in carried([voucher_from_json(bytes(r.payload)) for r in rows.values()]).live:
                out.append(_again(FeedbackEvent.for_voucher(
                    FeedbackStatus(o.status), row, kingdee=kingdee, reasons=reasons,
                    kafka=rows[row.key].coordinates(), note=f"SUMMARY {o.key}"), claimed[o.key].attempts))
        return out

    def _report_settled(self, settled: Sequence[_Outcome], claimed: Mapping[str, _Claimed], unknown: int) -> None:
        for o in settled:
            if o.status is not VoucherStatus.POSTED:
                c = claimed[o.key]
                log.warning("%s: %s", o.status, "; ".join(o.messages) or "no message", extra={
                    "voucher_key": o.key, "source_key": f"{c.system}/{c.voucher.source.row.table}/"
                                                        f"{c.pk}@{c.voucher.source.position}"})
        if self.metrics is None:
            return
        if unknown:
            self.metrics.outcomes_unknown(unknown)
        for o in settled:  # after the commit: counted once they are durable
            c = claimed[o.key]
            self.metrics.voucher_settled(o.status)
            if o.status is not VoucherStatus.POSTED:
                continue
            self.metrics.voucher_posted(source_ts_ms=c.voucher.source.ts_ms, journaled_at=c.journaled_at)
            if c.voucher.kind is VoucherKind.REVERSAL and c.voucher.reverses:
                self.metrics.voucher_settled(VoucherStatus.REVERSED)

    # ------------------------------------------------------------------ duplicates
    def _recheck(self, stats: PostStats) -> None:
        """Vouchers posted by a re-send: once the grace period has passed, look their keys up again."""
        j = self.journal
        rows = j.rows(_Recheck, j.q(
            "SELECT key, book, voucher_date FROM {s}.vouchers WHERE recheck_after IS NOT NULL "
            "AND recheck_after < now() ORDER BY recheck_after LIMIT %s"), (self.opts.claim_limit,))
        if not rows:
            return
        scan = DuplicateScan()
        try:
            found = self._lookup([r.key for r in rows])
            dups = {k: copies for k, copies in found.items() if len(copies) > 1}
            if dups:
                self._settle_copies(dups, {r.key: (str(r.book), _period(r.voucher_date)) for r in rows}, scan)
                self._open_copies(scan)
        except KingdeeError as e:
            log.warning("re-check of %d re-sent vouchers postponed: %s", len(rows), e)
            return
        finally:
            stats.duplicates_deleted += len(scan.deleted)
            stats.duplicates_flagged += len(scan.flagged)
        with j.transaction() as conn:
            conn.execute(j.q("UPDATE {s}.vouchers SET recheck_after = NULL WHERE key = ANY(%s)"),
                         ([r.key for r in rows],))

    def periods(self, *, book: str | None = None, period: str | None = None, since: datetime | None = None
                ) -> list[tuple[str, str]]:
        """(book, YYYY-MM) holding vouchers the journal sent to Kingdee (optionally one book / period, or
        settled since ``since``)."""
        j = self.journal
        rows = j.conn.execute(j.q(
            "SELECT DISTINCT book, to_char(voucher_date, 'YYYY-MM') FROM {s}.vouchers "
            "WHERE (kingdee_id IS NOT NULL OR status = {needs_attention}) "
            "AND (%(book)s::text IS NULL OR book = %(book)s) "
            "AND (%(period)s::text IS NULL OR to_char(voucher_date, 'YYYY-MM') = %(period)s) "
            # a voucher waiting for a person is in every scan: the scan notices when the extra copies are gone
            "AND (%(since)s::timestamptz IS NULL OR updated_at >= %(since)s OR status = {needs_attention}) "
            "ORDER BY 1, 2",
            needs_attention=VoucherStatus.NEEDS_ATTENTION), {"book": book, "period": period, "since": since}
        ).fetchall()
        return [(str(b), str(p)) for b, p in rows]

    def scan_duplicates(self, periods: Sequence[tuple[str, str]] | None = None, *, periodic: bool = False
                        ) -> DuplicateScan:
        """Find keys Kingdee holds more than once in ``periods`` ((book, YYYY-MM); default: every period the
        journal posted to). Extra copies are deleted when unaudited with the same lines as the copy the journal
        recorded (and ``delete_duplicates``), flagged otherwise. ``periodic``: the poster loop's scan — skipped
        when another poster scanned within ``duplicate_scan_every_s``, and limited to the periods posted
        since the previous scan (less the grace period)."""
        j = self.journal
        scan = DuplicateScan()
        started = datetime.now().astimezone()
        lock = f"kdcdc-duplicate-scan:{j.schema}"
        got = j.conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (lock,)).fetchone()
        if not got or not got[0]:
            scan.skipped = "another poster is scanning"
            return scan
        try:
            if periods is None:
                periods = self._periods_due(periodic, scan)
                if periods is None:
                    return scan
            scan.periods = list(periods)
            try:
                for book, period in scan.periods:
                    self._scan_period(book, period, scan)
            except KingdeeError as e:
                scan.error = f"{type(e).__name__}: {e}"
                log.warning("duplicate scan stopped: %s", scan.error)
            self._open_copies(scan)
            with j.transaction() as conn:
                conn.execute(j.q(
                    "INSERT INTO {s}.duplicate_scans (started_at, periods, vouchers_seen, duplicated, deleted, "
                    "flagged, error) VALUES (%s, %s, %s, %s, %s, %s, %s)"),
                    (started, len(scan.periods), scan.vouchers_seen, len(scan.duplicated), len(scan.deleted),
                     len(scan.flagged), scan.error))
        finally:
            j.conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (lock,))
        self._log_scan(scan)
        return scan

    def _periods_due(self, periodic: bool, scan: DuplicateScan) -> list[tuple[str, str]] | None:
        """The periods to scan when none are given (``None``: the periodic scan is not due, ``scan.skipped``)."""
        since = None
        if periodic:
            j = self.journal
            row = j.conn.execute(j.q(
                "SELECT max(started_at), max(started_at) > now() - make_interval(secs => %s) "
                "FROM {s}.duplicate_scans WHERE error IS NULL"), (self.opts.duplicate_scan_every_s * 0.9,)).fetchone()
            last, recent = row if row else (None, None)
            if recent:
                scan.skipped = "scanned recently"
                return None
            if last is not None:
                since = last - timedelta(seconds=self.opts.unknown_grace_s + 60)
        return self.periods(since=since)

    @staticmethod
    def _log_scan(scan: DuplicateScan) -> None:
        if scan.duplicated or scan.error:
            log.warning("duplicate scan of %d periods: %d vouchers with keys, %d keys held more than once, %d copies "
                        "deleted, %d newly flagged for a human, %d open%s", len(scan.periods), scan.vouchers_seen,
                        len(scan.duplicated), len(scan.deleted), len(scan.flagged), scan.open_copies,
                        f"; {scan.error}" if scan.error else "")
        else:
            log.info("duplicate scan of %d periods: %d vouchers with keys, none held twice", len(scan.periods),
                     scan.vouchers_seen)

    def _scan_period(self, book: str, period: str, scan: DuplicateScan) -> None:
        copies = self._copies_in(book, period)
        scan.vouchers_seen += len({vid for c in copies.values() for vid in c})
        dups = {k: list(c.values()) for k, c in copies.items() if len(c) > 1}
        if dups:
            self._settle_copies(dups, {k: (book, period) for k in dups}, scan)
        self._confirm_gone(book, period, [(k, vid) for k, c in dups.items() for vid in (x.id for x in c)])
        self._hand_back(book, period, {k: next(iter(c.values())) for k, c in copies.items() if len(c) == 1}, scan)

    def _hand_back(self, book: str, period: str, single: Mapping[str, _Copy], scan: DuplicateScan) -> None:
        """NEEDS_ATTENTION vouchers of the period whose key Kingdee now holds once (``single``: key → that copy):
        a person removed the extra copies. Each is looked up by key once more (its group number too) and, found
        exactly once, claimed and recorded POSTED with that copy through the poster's own record step — feedback,
        a summary voucher's rows and reversals waiting for it follow. Nothing is ever sent from here: a voucher
        whose copies are all gone by the look-up (or were all deleted) stays NEEDS_ATTENTION, since only a person
        knows whether removing them all was meant."""
        j = self.journal
        waiting = {str(k) for (k,) in j.conn.execute(j.q(
            "SELECT key FROM {s}.vouchers WHERE status = {needs_attention} AND book = %s "
            "AND to_char(voucher_date, 'YYYY-MM') = %s", needs_attention=VoucherStatus.NEEDS_ATTENTION),
            (book, period)).fetchall()}
        keys = sorted(waiting & set(single))
        if not keys:
            return
        found = {k: c[0] for k, c in self._lookup(keys).items() if len(c) == 1}
        keys = [k for k in keys if k in found]
        if not keys:
            return
        query = j.q(self._CLAIM.replace("{cond}", "v.key = ANY(%(keys)s) AND v.status = {needs_attention}"),
                    settled_original=SETTLED_ORIGINAL, reversal=VoucherKind.REVERSAL, unsettled=UNSETTLED,
                    posting=VoucherStatus.POSTING, journaled=VoucherStatus.JOURNALED,
                    summarized=VoucherStatus.SUMMARIZED, needs_attention=VoucherStatus.NEEDS_ATTENTION)
        with j.transaction():
            taken = j.rows(_ClaimRow, query, {"grace": self.opts.unknown_grace_s, "lease": self.opts.lease_s,
                                              "owner": j.owner, "limit": len(keys), "keys": keys})
            j.insert_audit([AuditRow.of(ACTOR, AuditAction.DUPLICATE_RESOLVED, r.key, {
                "kingdee_id": found[r.key].id, "number": found[r.key].number, "one_copy_left": True})
                for r in taken])
        if not taken:
            return
        claimed = {r.key: _Claimed.of(r) for r in taken}
        try:
            self._record([_Outcome(k, VoucherStatus.POSTED, found[k].id, found[k].number, found[k].group_no,
                                   found=True) for k in claimed], claimed)
        finally:
            if not self._in_run:  # scan-duplicates on its own: nothing keeps the recorder's connection
                self._close_record_journal()
        scan.handed_back += list(claimed)
        log.warning("%d vouchers that needed attention are held once in Kingdee now (%s %s): recorded POSTED "
                    "with the copy left: %s%s", len(claimed), book, period,
                    ", ".join(f"{k} {found[k].number}" for k in list(claimed)[:5]), " …" if len(claimed) > 5 else "")

    def _copies_in(self, book: str, period: str) -> dict[str, dict[str, _Copy]]:
        """Every Kingdee voucher of the period carrying a key marker (or key field): key → id → copy."""
        start, end = _month_range(period)
        base = (f"FAccountBookID.FNumber = {_quote(book)} and FDate >= '{start.isoformat()}' "
                f"and FDate < '{end.isoformat()}'")
        copies: dict[str, dict[str, _Copy]] = {}
        if self.opts.marker:
            for vid, bill, status, expl in self._pages(["FVOUCHERID", "FBillNo", "FDocumentStatus", "FEXPLANATION"],
                                                       f"{base} and FEXPLANATION like '%kdcdc:%'"):
                m = _MARKER_IN_TEXT.search(str(expl or ""))
                if m:
                    copies.setdefault(m.group(1), {})[str(vid)] = _Copy(str(vid), str(bill), status=str(status or ""))
        if self.opts.key_field:
            fk = self.opts.key_field
            for vid, bill, status, key in self._pages(["FVOUCHERID", "FBillNo", "FDocumentStatus", fk],
                                                      f"{base} and {fk} <> ''"):
                if key:
                    copies.setdefault(str(key), {})[str(vid)] = _Copy(str(vid), str(bill), status=str(status or ""))
        return copies

    def _pages(self, fields: list[str], flt: str) -> Iterator[list[Any]]:
        start_row = 0
        while True:
            rows = self.client.execute_bill_query(FORM, fields, flt, order="FVOUCHERID", limit=_SCAN_PAGE,
                                                  start_row=start_row)
            yield from rows
            if len(rows) < _SCAN_PAGE:
                return
            start_row += len(rows)

    def _confirm_gone(self, book: str, period: str, seen: Sequence[tuple[str, str]]) -> None:
        """Copies flagged (or being deleted) earlier that this full read of the period no longer sees as extra
        copies (``seen``: key, id): deleted (by us, confirmed) or resolved by a person."""
        j = self.journal
        with j.transaction():
            gone = j.rows(_CopyChange, j.q(
                "UPDATE {s}.duplicate_copies d SET state = CASE WHEN d.state = {found} THEN {deleted} "
                "ELSE {resolved} END, settled_at = now() WHERE d.book = %s AND d.period = %s AND d.state IN ({open}) "
                "AND (d.voucher_key, d.kingdee_id) NOT IN (SELECT * FROM unnest(%s::text[], %s::text[])) "
                "RETURNING d.voucher_key, d.kingdee_id, d.kingdee_number, d.state, d.reason",
                found=CopyState.FOUND, deleted=CopyState.DELETED, resolved=CopyState.RESOLVED, open=OPEN_COPIES),
                (book, period, [k for k, _ in seen], [v for _, v in seen]))
            j.insert_audit([AuditRow.of(ACTOR, AuditAction.DUPLICATE_RESOLVED if r.state is CopyState.RESOLVED
                                        else AuditAction.DUPLICATE_DELETED, r.voucher_key,
                                        {"kingdee_id": r.kingdee_id, "number": r.kingdee_number,
                                         "confirmed_by_scan": True}) for r in gone])

    def _settle_copies(self, dups: Mapping[str, Sequence[_Copy]], where: Mapping[str, tuple[str, str]],
                       scan: DuplicateScan) -> None:
        """Keys held more than once: keep the journal's copy; delete unaudited identical extras; flag the rest."""
        j = self.journal
        journal = {r.key: r for r in j.rows(_KeyStatus, j.q(
            "SELECT key, status, kingdee_id FROM {s}.vouchers WHERE key = ANY(%s)"), (list(dups),))}
        delete, flag = self._plan_copies(dups, journal, scan)
        if delete:
            lines = self._lines([i for e in delete for i in (e.copy.id, e.kept.id)])
            for e in [e for e in delete if lines.get(e.copy.id) != lines.get(e.kept.id)]:
                delete.remove(e)
                flag.append(_CopyRecord(e.key, e.copy, e.kept.id, CopyState.NEEDS_HUMAN,
                                        f"its lines differ from the copy the journal recorded ({e.kept.number})"))
        changed = self._upsert_copies(
            [_CopyRecord(e.key, e.copy, e.kept.id, CopyState.FOUND, "unaudited extra copy: deleting") for e in delete]
            + flag, where)
        flagged = [f for f in flag if (f.key, f.copy.id) in changed]
        scan.flagged += [(f.key, f.copy.id, f.copy.number, f.reason) for f in flagged]
        if self.metrics is not None and flagged:
            self.metrics.duplicate_copies("flagged", len(flagged))
        self._delete_copies(delete, scan)

    def _plan_copies(self, dups: Mapping[str, Sequence[_Copy]], journal: Mapping[str, _KeyStatus],
                     scan: DuplicateScan) -> tuple[list[_Extra], list[_CopyRecord]]:
        """Which extra copies to delete (unaudited, ``delete_duplicates``) and which to flag for a person."""
        delete: list[_Extra] = []
        flag: list[_CopyRecord] = []
        for key, copies in dups.items():
            known = journal.get(key)
            if known is not None and known.status in UNSETTLED:
                scan.in_flight.append(key)  # the poster's own look-up settles it (NEEDS_ATTENTION if still twice)
                continue
            scan.duplicated[key] = [c.number for c in copies]
            kept_id = known.kingdee_id if known is not None else None
            kept = next((c for c in copies if c.id == kept_id), None)
            if known is None:
                flag += [_CopyRecord(key, c, None, CopyState.NEEDS_HUMAN, "a key this journal does not know")
                         for c in copies]
            elif kept is None:
                why = ("no copy recorded by the journal (NEEDS_ATTENTION): a person chooses the one to keep"
                       if known.status is VoucherStatus.NEEDS_ATTENTION else
                       f"the copy the journal recorded ({kept_id}) is not among them")
                flag += [_CopyRecord(key, c, kept_id, CopyState.NEEDS_HUMAN, why) for c in copies]
            else:
                for c in copies:
                    if c.id == kept.id:
                        continue
                    if c.status not in DELETABLE:
                        flag.append(_CopyRecord(key, c, kept.id, CopyState.NEEDS_HUMAN,
                                                f"document status {c.status} (submitted or audited): UnAudit and "
                                                "delete it in Kingdee"))
                    elif not self.opts.delete_duplicates:
                        flag.append(_CopyRecord(key, c, kept.id, CopyState.NEEDS_HUMAN,
                                                "unaudited; kingdee.delete_duplicates is off"))
                    else:
                        delete.append(_Extra(key, c, kept))
        return delete, flag

    def _delete_copies(self, delete: Sequence[_Extra], scan: DuplicateScan) -> None:
        for key, x, k in delete:
            try:
                ok, errors = KingdeeClient.operation_outcome(self.client.delete(FORM, ids=[x.id]))
            except (KingdeeAmbiguous, KingdeeRetryable) as e:
                log.warning("deleting extra copy %s (%s) of key %s: %s; the next scan checks it", x.number, x.id,
                            key, e)
                continue
            except KingdeeError as e:
                ok, errors = [], [str(e)]
            if x.id in ok:
                self._settle_copy(key, x, CopyState.DELETED, AuditAction.DUPLICATE_DELETED,
                                  {"kept_id": k.id, "kept_number": k.number})
                scan.deleted.append((key, x.id, x.number))
                if self.metrics is not None:
                    self.metrics.duplicate_copies("deleted")
                log.warning("deleted extra copy %s (id %s, status %s) of voucher %s; kept %s (id %s)", x.number, x.id,
                            x.status, key, k.number, k.id)
            else:
                why = f"Kingdee refused the deletion: {'; '.join(errors) or 'no reason given'}"
                self._settle_copy(key, x, CopyState.NEEDS_HUMAN, AuditAction.DUPLICATE_FLAGGED,
                                  {"kept_id": k.id, "reason": why})
                scan.flagged.append((key, x.id, x.number, why))
                if self.metrics is not None:
                    self.metrics.duplicate_copies("flagged")

    def _lines(self, ids: Sequence[str]) -> dict[str, list[tuple[str, Decimal, Decimal]]]:
        """Each voucher's lines (account, debit, credit), sorted: to compare a copy with the one kept."""
        out: dict[str, list[tuple[str, Decimal, Decimal]]] = {}
        unique = sorted(set(ids), key=lambda x: (len(x), x))
        for i in range(0, len(unique), 200):
            part = unique[i:i + 200]
            rows = self.client.execute_bill_query(
                FORM, ["FVOUCHERID", "FACCOUNTID.FNumber", "FDEBIT", "FCREDIT"],
                f"FVOUCHERID in ({', '.join(p if p.isdigit() else _quote(p) for p in part)})", limit=100_000)
            for vid, account, debit, credit in rows:
                out.setdefault(str(vid), []).append((str(account), _amount(debit), _amount(credit)))
        for v in out.values():
            v.sort()
        return out

    def _upsert_copies(self, records: Sequence[_CopyRecord], where: Mapping[str, tuple[str, str]]
                       ) -> set[tuple[str, str]]:
        """Record found copies; returns those new or changed (key, id), each with an audit row."""
        if not records:
            return set()
        j = self.journal
        with j.transaction():
            changed = j.rows(_CopyChange, j.q(
                "INSERT INTO {s}.duplicate_copies AS d (voucher_key, kingdee_id, kingdee_number, document_status, "
                "kept_id, book, period, state, reason) SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], "
                "%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[]) "
                "ON CONFLICT (voucher_key, kingdee_id) DO UPDATE SET state = EXCLUDED.state, reason = EXCLUDED.reason, "
                "document_status = EXCLUDED.document_status, kept_id = EXCLUDED.kept_id, settled_at = NULL "
                "WHERE (d.state, d.reason, d.document_status) IS DISTINCT FROM "
                "(EXCLUDED.state, EXCLUDED.reason, EXCLUDED.document_status) "
                "RETURNING d.voucher_key, d.kingdee_id, d.kingdee_number, d.state, d.reason"),
                ([r.key for r in records], [r.copy.id for r in records], [r.copy.number for r in records],
                 [r.copy.status for r in records], [r.kept_id for r in records], [where[r.key][0] for r in records],
                 [where[r.key][1] for r in records], [r.state.value for r in records], [r.reason for r in records]))
            by = {(r.key, r.copy.id): r for r in records}
            j.insert_audit([AuditRow.of(
                ACTOR, AuditAction.DUPLICATE_FOUND if c.state is CopyState.FOUND else AuditAction.DUPLICATE_FLAGGED,
                c.voucher_key, {"kingdee_id": c.kingdee_id, "number": by[(c.voucher_key, c.kingdee_id)].copy.number,
                                "document_status": by[(c.voucher_key, c.kingdee_id)].copy.status,
                                "kept_id": by[(c.voucher_key, c.kingdee_id)].kept_id, "reason": c.reason,
                                "book": where[c.voucher_key][0], "period": where[c.voucher_key][1]})
                for c in changed])
        return {(c.voucher_key, c.kingdee_id) for c in changed}

    def _settle_copy(self, key: str, copy: _Copy, state: CopyState, action: AuditAction,
                     detail: Mapping[str, object]) -> None:
        j = self.journal
        with j.transaction() as conn:
            conn.execute(j.q("UPDATE {s}.duplicate_copies SET state = %s, reason = coalesce(%s, reason), "
                             "settled_at = CASE WHEN %s THEN now() END WHERE voucher_key = %s AND kingdee_id = %s"),
                         (state.value, detail.get("reason"), state is CopyState.DELETED, key, copy.id))
            j.insert_audit([AuditRow.of(ACTOR, action, key, {
                "kingdee_id": copy.id, "number": copy.number, "document_status": copy.status, **detail})])

    def _open_copies(self, scan: DuplicateScan) -> None:
        j = self.journal
        scan.open_copies = j.count(j.q("SELECT count(*) FROM {s}.duplicate_copies WHERE state IN ({open})",
                                       open=OPEN_COPIES))
        if self.metrics is not None:
            self.metrics.duplicate_copies_open(scan.open_copies)


def _amount(v: Any) -> Decimal:
    try:
        return Decimal(str(v)).normalize() if v not in (None, "") else Decimal(0)
    except InvalidOperation:
        return Decimal(0)
