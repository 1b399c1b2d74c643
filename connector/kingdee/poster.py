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

import json
import logging
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Final

import psycopg

from connector.errors import InfraError
from connector.journal import Journal
from connector.kingdee._client import (
    KingdeeAmbiguous,
    KingdeeBusinessError,
    KingdeeClient,
    KingdeeError,
    KingdeeRetryable,
)
from connector.ledger import Book, Voucher, VoucherKind, to_kingdee, voucher_from_json
from connector.ledger._serde import key_marker

log = logging.getLogger("kingdee_cdc.poster")
FORM: Final = "GL_VOUCHER"
REVERSAL_PREFIX: Final = "冲销 "
#: what a reversal names instead of a Kingdee number when the original is OPENING history (never posted by us)
OPENING_NUMBER: Final = "期初"
EXPLANATION_LIMIT: Final = 500  #: FEXPLANATION is text(500)
#: document statuses Kingdee lets a voucher be deleted in (Z 暂存, A 创建, D 重新审核) — not B 审核中, C 已审核
DELETABLE: Final = frozenset({"A", "D", "Z"})
SETTLED_ORIGINAL: Final = ("POSTED", "REVERSED", "REJECTED_BY_KINGDEE", "OPENING")
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
    ``claim_limit``             2000     vouchers claimed per round
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


def poster_options(settings: Any) -> PosterOptions:
    """``PosterOptions`` from ``connector.config.Settings`` (the ``kingdee`` section)."""
    k = settings.kingdee
    return PosterOptions(batch_size=k.batch_size, concurrency=k.max_concurrency, key_field=k.key_field,
                         lease_s=k.lease_s, unknown_grace_s=k.unknown_outcome_grace_s,
                         duplicate_scan_every_s=k.duplicate_scan_every_s, delete_duplicates=k.delete_duplicates)


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


@dataclass(frozen=True, slots=True)
class _Outcome:
    key: str
    #: POSTED | REJECTED_BY_KINGDEE | NEEDS_ATTENTION (settled); UNKNOWN (look up after the grace period);
    #: RELEASED (nothing sent in this claim)
    status: str
    kingdee_id: str | None = None
    number: str | None = None
    group_no: str | None = None
    messages: tuple[str, ...] = ()
    found: bool = False
    recheck: bool = False  #: sent again after an earlier attempt: look the key up once more after the grace


_SETTLED: Final = frozenset({"POSTED", "REJECTED_BY_KINGDEE", "NEEDS_ATTENTION"})


@dataclass
class _Claimed:
    voucher: Voucher
    attempts: int
    pk: str
    system: str
    journaled_at: datetime | None = None
    #: the original's Kingdee number (reversals) and journal status (OPENING: history never posted)
    original_number: str | None = None
    original_status: str | None = None


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


class _Series:
    """Poster series beyond ``connector.ops.Metrics``, registered once on the same registry."""

    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter, Gauge

        self.unknown = Counter("kingdee_cdc_vouchers_outcome_unknown_total",
                               "Vouchers whose BatchSave outcome was unknown (timeout, lost answer, HTTP 5xx): looked "
                               "up by key after the grace period", registry=registry)
        self.taken_over = Counter("kingdee_cdc_poster_lease_takeovers_total",
                                  "POSTING vouchers taken over after their poster's lease expired", registry=registry)
        self.duplicates = Counter("kingdee_cdc_kingdee_duplicates_total",
                                  "Extra copies of a voucher key found in Kingdee, by action (deleted, flagged)",
                                  ["action"], registry=registry)
        self.open = Gauge("kingdee_cdc_kingdee_duplicates_open",
                          "Extra copies of voucher keys in Kingdee waiting for a human (or a deletion)",
                          registry=registry)

    @classmethod
    def of(cls, metrics: Any) -> _Series | None:
        registry = getattr(metrics, "registry", None)
        if registry is None:
            return None
        series = getattr(metrics, "_kdcdc_poster_series", None)
        if series is None:
            series = cls(registry)
            metrics._kdcdc_poster_series = series
        return series if isinstance(series, cls) else None


class Poster:
    def __init__(self, journal: Journal, client: KingdeeClient, *, books: Mapping[str, Book] | None = None,
                 options: PosterOptions = PosterOptions(), metrics: Any = None) -> None:
        self.journal = journal
        self.client = client
        self.metrics = metrics  #: connector.ops.Metrics, optional
        if metrics is not None and client.observer is None:
            client.observer = metrics.kingdee_request
        self.series = _Series.of(metrics) if metrics is not None else None
        self.books = dict(books or {})
        self.opts = options
        self._stop = threading.Event()
        self._next_scan = time.monotonic() + options.duplicate_scan_every_s

    def stop(self) -> None:
        self._stop.set()

    # ------------------------------------------------------------------ public
    def run(self, *, idle_sleep_s: float = 1.0, exit_when_idle: bool = False) -> PostStats:
        """Post until stopped. Infrastructure failures (journal or Kingdee unreachable) pause with backoff.
        Every ``duplicate_scan_every_s`` the loop also scans Kingdee for keys held more than once."""
        total = PostStats()
        self.journal.migrate()
        backoff = idle_sleep_s
        while not self._stop.is_set():
            try:
                stats = self.run_once()
                if self.opts.duplicate_scan_every_s and time.monotonic() >= self._next_scan:
                    self._next_scan = time.monotonic() + self.opts.duplicate_scan_every_s
                    scan = self.scan_duplicates(periodic=True)
                    stats.duplicates_deleted += len(scan.deleted)
                    stats.duplicates_flagged += len(scan.flagged)
            except (InfraError, psycopg.OperationalError) as e:
                log.warning("poster paused %.1fs: %s", backoff, e)
                self.journal.reset()
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            backoff = idle_sleep_s
            total.add(stats)
            if stats.claimed == 0 and exit_when_idle and self.pending() == 0:
                break
            if stats.claimed == 0 or stats.left_pending >= stats.claimed:  # idle, or nothing could be sent
                self._stop.wait(idle_sleep_s)
        return total

    def pending(self) -> int:
        """Vouchers not settled yet (JOURNALED, POSTING — including unknown outcomes waiting for their grace)."""
        row = self.journal.conn.execute(self.journal.q(
            "SELECT count(*) FROM {s}.vouchers WHERE status IN ('JOURNALED', 'POSTING')")).fetchone()
        return int(row[0]) if row else 0

    def run_once(self) -> PostStats:
        stats = PostStats()
        self._recheck(stats)
        deadline = time.monotonic() + self.opts.lease_s  # taken before the claim: never later than the journal's
        claimed = self._claim(stats)
        stats.claimed = len(claimed)
        if not claimed:
            return stats
        chunks = [claimed[i:i + self.opts.batch_size] for i in range(0, len(claimed), self.opts.batch_size)]
        # Journal access stays on this thread (one connection); worker threads only talk to Kingdee.
        rejected_originals = self._originals_rejected([c.voucher for c in claimed])
        with ThreadPoolExecutor(max_workers=self.opts.concurrency) as pool:
            for outcomes, chunk_stats in pool.map(lambda ch: self._post_chunk(ch, rejected_originals, deadline),
                                                  chunks):
                stats.add(chunk_stats)
                if outcomes:
                    self._record(outcomes, {c.voucher.key: c for c in claimed})
        return stats

    # ------------------------------------------------------------------ claim
    _CLAIM: Final = (
        "WITH c AS (SELECT v.key, v.status AS was, v.posting_since AS was_since, v.posting_owner AS was_owner, "
        "    v.unknown_since AS unknown, o.kingdee_number AS onum, o.status AS ostatus "
        "  FROM {s}.vouchers v LEFT JOIN {s}.vouchers o ON o.key = v.reverses "
        "  WHERE {cond} "
        "    AND (v.reverses IS NULL OR o.status IN ('POSTED', 'REVERSED', 'REJECTED_BY_KINGDEE', 'OPENING')) "
        # a correction's reversal goes first: nothing else of the same source change while it is unsettled
        "    AND (v.kind = 'reversal' OR NOT EXISTS (SELECT 1 FROM {s}.vouchers r WHERE r.kind = 'reversal' "
        "         AND r.status IN ('JOURNALED', 'POSTING') AND r.source_system = v.source_system "
        "         AND r.source_table = v.source_table AND r.source_pk = v.source_pk "
        "         AND r.source_position = v.source_position AND r.source_op = v.source_op)) "
        "  ORDER BY v.seq LIMIT %(limit)s FOR UPDATE OF v SKIP LOCKED) "
        # unknown_since is cleared: this claim's own lease now guards the voucher (attempts > 1 still forces the
        # look-up), and a second poster must not see an expired grace on a voucher this one is working on
        "UPDATE {s}.vouchers v SET status = 'POSTING', attempts = v.attempts + 1, posting_since = now(), "
        "posting_owner = %(owner)s, unknown_since = NULL, updated_at = now() FROM c WHERE v.key = c.key "
        "RETURNING v.key, v.payload, v.attempts, v.source_pk, v.source_system, v.journaled_at, v.kafka_offset, "
        "c.was, c.was_since, c.was_owner, c.unknown, c.onum, c.ostatus")
    #: unknown outcomes whose grace has passed, and claims of posters that died or stalled (lease + grace)
    _AGAIN: Final = ("v.status = 'POSTING' AND CASE WHEN v.unknown_since IS NOT NULL "
                     "THEN v.unknown_since < now() - make_interval(secs => %(grace)s) "
                     "ELSE v.posting_since < now() - make_interval(secs => %(lease)s + %(grace)s) END")
    _FRESH: Final = ("v.status = 'JOURNALED' AND (v.unknown_since IS NULL "
                     "OR v.unknown_since < now() - make_interval(secs => %(grace)s))")

    def _claim(self, stats: PostStats | None = None) -> list[_Claimed]:
        j = self.journal
        params = {"grace": self.opts.unknown_grace_s, "lease": self.opts.lease_s, "owner": j.owner,
                  "limit": self.opts.claim_limit}
        with j.transaction() as conn:
            # Unknown outcomes first: they are looked up before anything else is sent.
            rows = conn.execute(j.q(self._CLAIM.replace("{cond}", self._AGAIN)), params).fetchall()
            if len(rows) < self.opts.claim_limit:
                rows += conn.execute(j.q(self._CLAIM.replace("{cond}", self._FRESH)),
                                     {**params, "limit": self.opts.claim_limit - len(rows)}).fetchall()
            taken = [r for r in rows if r[7] == "POSTING" and r[10] is None]
            if taken:
                j.insert_audit(conn, [("poster", "LEASE_TAKEN_OVER", r[0], json.dumps(
                    {"from": r[9], "claimed_at": r[8].isoformat() if r[8] else None, "attempt": r[2],
                     "lease_s": self.opts.lease_s, "grace_s": self.opts.unknown_grace_s})) for r in taken])
        if taken:
            by_owner: dict[str, list[Any]] = {}
            for r in taken:
                by_owner.setdefault(str(r[9] or "an unknown poster"), []).append(r)
            for owner, rs in by_owner.items():
                log.warning("took over %d POSTING vouchers from %s, claimed at %s: its lease (%.0fs) and the grace "
                            "period (%.0fs) expired without an outcome (the poster stopped or stalled); looking "
                            "them up in Kingdee before re-sending: %s%s", len(rs), owner,
                            min(r[8] for r in rs if r[8]) if any(r[8] for r in rs) else "?", self.opts.lease_s,
                            self.opts.unknown_grace_s, ", ".join(r[0] for r in rs[:5]), " …" if len(rs) > 5 else "")
            if stats is not None:
                stats.taken_over += len(taken)
            if self.series is not None:
                self.series.taken_over.inc(len(taken))
        rows.sort(key=lambda r: (r[7] != "POSTING", r[5], r[6] or 0))  # look-ups first, then journal order
        return [_Claimed(voucher_from_json(bytes(r[1])), int(r[2]), r[3], r[4], r[5], original_number=r[11],
                         original_status=r[12]) for r in rows]

    # ------------------------------------------------------------------ post one chunk
    def _post_chunk(self, chunk: list[_Claimed], originals_rejected: set[str], deadline: float = float("inf")
                    ) -> tuple[list[_Outcome], PostStats]:
        stats = PostStats()
        outcomes: list[_Outcome] = []
        pending = list(chunk)
        for c in list(pending):
            if c.voucher.reverses in originals_rejected:
                outcomes.append(_Outcome(c.voucher.key, "REJECTED_BY_KINGDEE",
                                         messages=("the voucher it reverses was rejected by Kingdee: nothing to "
                                                   "reverse",)))
                stats.rejected += 1
                pending.remove(c)
        must_look = {c.voucher.key for c in pending if c.attempts > 1}
        for _ in range(self.opts.max_rounds):
            if not pending:
                break
            sending = False
            try:
                if must_look:
                    found = self._lookup([c.voucher.key for c in pending if c.voucher.key in must_look])
                    for c in list(pending):
                        hits = found.get(c.voucher.key)
                        if not hits:
                            continue
                        pending.remove(c)
                        if len(hits) == 1:
                            h = hits[0]
                            outcomes.append(_Outcome(c.voucher.key, "POSTED", h.id, h.number, h.group_no, found=True))
                            stats.found_after_timeout += 1
                        else:
                            outcomes.append(_Outcome(c.voucher.key, "NEEDS_ATTENTION", messages=(
                                f"{len(hits)} Kingdee vouchers carry this key: {', '.join(h.number for h in hits)}",)))
                            stats.needs_attention += 1
                    must_look = set()
                if not pending:
                    break
                if time.monotonic() >= deadline:
                    # Past the lease, another poster may take these over: starting a call now could race it.
                    log.warning("the claim's lease (%.0fs) ran out before %d vouchers were sent; releasing them",
                                self.opts.lease_s, len(pending))
                    break
                sending = True
                results = self.client.batch_save(FORM, [self._model(c) for c in pending],
                                                 NeedReturnFields=["FBillNo", "FVOUCHERGROUPNO"], IsDeleteEntry="true",
                                                 IsAutoSubmitAndAudit="false")
                for c, r in zip(pending, results):
                    if r.ok:
                        outcomes.append(_Outcome(c.voucher.key, "POSTED", r.id, r.number,
                                                 str(r.return_data.get("FVOUCHERGROUPNO") or "") or None,
                                                 recheck=c.attempts > 1))
                        stats.posted += 1
                    else:
                        outcomes.append(_Outcome(c.voucher.key, "REJECTED_BY_KINGDEE", messages=r.messages))
                        stats.rejected += 1
                pending = []
            except KingdeeAmbiguous as e:
                # Kingdee may still be working on it and commit later: looking now could find nothing yet.
                stats.ambiguous_calls += 1
                stats.unknown += len(pending)
                log.warning("BatchSave of %d vouchers: %s; they are looked up by key after the %.0fs grace period, "
                            "not re-sent before", len(pending), e, self.opts.unknown_grace_s)
                outcomes += [_Outcome(c.voucher.key, "UNKNOWN", messages=(str(e),)) for c in pending]
                pending = []
            except KingdeeRetryable as e:
                stats.retried_calls += 1
                log.warning("Kingdee asked to retry (%s); backing off", e)
                time.sleep(0.2)
            except KingdeeBusinessError as e:
                for c in pending:
                    outcomes.append(_Outcome(c.voucher.key, "REJECTED_BY_KINGDEE", messages=(str(e),)))
                    stats.rejected += 1
                pending = []
            except KingdeeError as e:
                if sending:  # an answer we cannot read: the save may have happened
                    stats.unknown += len(pending)
                    log.error("BatchSave of %d vouchers failed with an unreadable answer (%s); they are looked up "
                              "by key after the %.0fs grace period", len(pending), e, self.opts.unknown_grace_s)
                    outcomes += [_Outcome(c.voucher.key, "UNKNOWN", messages=(str(e),)) for c in pending]
                    pending = []
                else:
                    log.error("Kingdee error, leaving %d vouchers for the next round: %s", len(pending), e)
                break
        stats.left_pending = len(pending)
        outcomes += [_Outcome(c.voucher.key, "RELEASED") for c in pending]
        self._auto_submit([o for o in outcomes if o.status == "POSTED" and not o.found], chunk)
        return outcomes, stats

    def _model(self, c: _Claimed) -> dict[str, Any]:
        v = c.voucher
        if v.kind is VoucherKind.REVERSAL:
            number = OPENING_NUMBER if c.original_status == "OPENING" else c.original_number
            if number:
                v = name_original(v, number)
        return to_kingdee(v, self.books.get(v.book), key_field=self.opts.key_field, marker=self.opts.marker)

    def _originals_rejected(self, vouchers: Sequence[Voucher]) -> set[str]:
        refs = [v.reverses for v in vouchers if v.reverses]
        if not refs:
            return set()
        j = self.journal
        with j.transaction() as conn:
            rows = conn.execute(j.q("SELECT key FROM {s}.vouchers WHERE key = ANY(%s) AND "
                                    "status = 'REJECTED_BY_KINGDEE'"), (refs,)).fetchall()
        return {r[0] for r in rows}

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
        by_key = {c.voucher.key: c.voucher for c in chunk}
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
        j = self.journal
        settled = [o for o in outcomes if o.status in _SETTLED]
        unknown = [o for o in outcomes if o.status == "UNKNOWN"]
        released = [o for o in outcomes if o.status == "RELEASED"]

        def still_ours(batch: Sequence[_Outcome]) -> tuple[list[str], list[int]]:
            # the attempt number identifies this claim: a voucher taken over meanwhile is left to its new holder
            return [o.key for o in batch], [claimed[o.key].attempts for o in batch]
        with j.transaction() as conn:
            applied: set[str] = set()
            if settled:
                keys, attempts = still_ours(settled)
                applied = {r[0] for r in conn.execute(j.q(
                    "UPDATE {s}.vouchers v SET status = o.status, kingdee_id = o.kid, kingdee_number = o.num, "
                    "kingdee_group_no = o.gno, kingdee_messages = o.msg, unknown_since = NULL, "
                    "recheck_after = CASE WHEN o.recheck THEN now() + make_interval(secs => %s) END, "
                    "updated_at = now() "
                    "FROM unnest(%s::text[], %s::int[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], "
                    "%s::boolean[]) AS o(key, attempts, status, kid, num, gno, msg, recheck) "
                    "WHERE v.key = o.key AND v.status = 'POSTING' AND v.attempts = o.attempts RETURNING v.key"),
                    (self.opts.unknown_grace_s, keys, attempts, [o.status for o in settled],
                     [o.kingdee_id for o in settled], [o.number for o in settled], [o.group_no for o in settled],
                     ["; ".join(o.messages) or None for o in settled], [o.recheck for o in settled])).fetchall()}
            marked: set[str] = set()
            if unknown:
                keys, attempts = still_ours(unknown)
                marked = {r[0] for r in conn.execute(j.q(
                    "UPDATE {s}.vouchers v SET unknown_since = now(), kingdee_messages = o.msg, updated_at = now() "
                    "FROM unnest(%s::text[], %s::int[], %s::text[]) AS o(key, attempts, msg) "
                    "WHERE v.key = o.key AND v.status = 'POSTING' AND v.attempts = o.attempts RETURNING v.key"),
                    (keys, attempts, ["; ".join(o.messages) for o in unknown])).fetchall()}
            if released:  # nothing was sent in this claim: JOURNALED again (attempts > 1: looked up first)
                keys, attempts = still_ours(released)
                conn.execute(j.q(
                    "UPDATE {s}.vouchers v SET status = 'JOURNALED', updated_at = now() "
                    "FROM unnest(%s::text[], %s::int[]) AS o(key, attempts) "
                    "WHERE v.key = o.key AND v.status = 'POSTING' AND v.attempts = o.attempts"), (keys, attempts))
            settled = [o for o in settled if o.key in applied]
            reversed_originals = [claimed[o.key].voucher.reverses for o in settled if o.status == "POSTED"
                                  and claimed[o.key].voucher.kind is VoucherKind.REVERSAL]
            if reversed_originals:
                conn.execute(j.q("UPDATE {s}.vouchers SET status = 'REVERSED', updated_at = now() "
                                 "WHERE key = ANY(%s) AND status = 'POSTED'"), (reversed_originals,))
            audit, outbox = [], []
            for o in settled:
                c = claimed[o.key]
                v = c.voucher
                detail = {"kingdee_id": o.kingdee_id, "number": o.number, "group_no": o.group_no,
                          "messages": list(o.messages), "attempts": c.attempts, "found_by_key": o.found}
                audit.append(("poster", o.status, o.key, json.dumps(detail, ensure_ascii=False)))
                payload = {"status": o.status, "voucher_key": o.key, "kind": v.kind.value, "reverses": v.reverses,
                           "source": {"system": c.system, "table": v.source.row.table, "pk": c.pk,
                                      "position": v.source.position, "op": v.source.op},
                           "kingdee": {"id": o.kingdee_id, "number": o.number, "group_no": o.group_no},
                           "reasons": [{"code": "KINGDEE", "message": m} for m in o.messages]}
                outbox.append((f"{o.key}:{o.status}", c.system, c.pk, o.status,
                               json.dumps(payload, ensure_ascii=False)))
                if o.status == "POSTED" and v.kind is VoucherKind.REVERSAL and v.reverses:
                    audit.append(("poster", "REVERSED", v.reverses, json.dumps({"by": o.key})))
                    outbox.append((f"{v.reverses}:REVERSED", c.system, c.pk, "REVERSED", json.dumps(
                        {**payload, "status": "REVERSED", "voucher_key": v.reverses, "reversed_by": o.key},
                        ensure_ascii=False)))
            for o in unknown:
                if o.key in marked:
                    audit.append(("poster", "OUTCOME_UNKNOWN", o.key, json.dumps(
                        {"messages": list(o.messages), "attempts": claimed[o.key].attempts,
                         "look_up_after_s": self.opts.unknown_grace_s}, ensure_ascii=False)))
            # One statement each (not executemany: its pipeline mode stalled for seconds at a time under
            # psycopg 3.3 while the worker threads were busy with HTTP)
            j.insert_audit(conn, audit)
            j.insert_outbox(conn, outbox)
        for o in settled:
            if o.status != "POSTED":
                v = claimed[o.key].voucher
                log.warning("%s: %s", o.status, "; ".join(o.messages) or "no message", extra={
                    "voucher_key": o.key, "source_key": f"{claimed[o.key].system}/{v.source.row.table}/"
                                                        f"{claimed[o.key].pk}@{v.source.position}"})
        if self.series is not None and marked:
            self.series.unknown.inc(len(marked))
        if self.metrics is not None:  # after the commit: counted once they are durable
            for o in settled:
                c = claimed[o.key]
                self.metrics.voucher_settled(o.status, source_ts_ms=c.voucher.source.ts_ms,
                                             journaled_at=c.journaled_at)
                if o.status == "POSTED" and c.voucher.kind is VoucherKind.REVERSAL and c.voucher.reverses:
                    self.metrics.voucher_settled("REVERSED", source_ts_ms=None, journaled_at=None)

    # ------------------------------------------------------------------ duplicates
    def _recheck(self, stats: PostStats) -> None:
        """Vouchers posted by a re-send: once the grace period has passed, look their keys up again."""
        j = self.journal
        rows = j.conn.execute(j.q(
            "SELECT key, book, voucher_date FROM {s}.vouchers WHERE recheck_after IS NOT NULL "
            "AND recheck_after < now() ORDER BY recheck_after LIMIT %s"), (self.opts.claim_limit,)).fetchall()
        if not rows:
            return
        scan = DuplicateScan()
        try:
            found = self._lookup([r[0] for r in rows])
            dups = {k: copies for k, copies in found.items() if len(copies) > 1}
            if dups:
                self._settle_copies(dups, {r[0]: (str(r[1]), _period(r[2])) for r in rows}, scan)
                self._open_copies(scan)
        except KingdeeError as e:
            log.warning("re-check of %d re-sent vouchers postponed: %s", len(rows), e)
            return
        finally:
            stats.duplicates_deleted += len(scan.deleted)
            stats.duplicates_flagged += len(scan.flagged)
        with j.transaction() as conn:
            conn.execute(j.q("UPDATE {s}.vouchers SET recheck_after = NULL WHERE key = ANY(%s)"),
                         ([r[0] for r in rows],))

    def periods(self, *, book: str | None = None, period: str | None = None, since: datetime | None = None
                ) -> list[tuple[str, str]]:
        """(book, YYYY-MM) holding vouchers the journal sent to Kingdee (optionally one book / period, or
        settled since ``since``)."""
        j = self.journal
        rows = j.conn.execute(j.q(
            "SELECT DISTINCT book, to_char(voucher_date, 'YYYY-MM') FROM {s}.vouchers "
            "WHERE (kingdee_id IS NOT NULL OR status = 'NEEDS_ATTENTION') "
            "AND (%(book)s::text IS NULL OR book = %(book)s) "
            "AND (%(period)s::text IS NULL OR to_char(voucher_date, 'YYYY-MM') = %(period)s) "
            "AND (%(since)s::timestamptz IS NULL OR updated_at >= %(since)s) ORDER BY 1, 2"),
            {"book": book, "period": period, "since": since}).fetchall()
        return [(str(r[0]), str(r[1])) for r in rows]

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
        lock = j.conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (f"kdcdc-duplicate-scan:{j.schema}",)
                              ).fetchone()
        if not lock or not lock[0]:
            scan.skipped = "another poster is scanning"
            return scan
        try:
            if periods is None:
                since = None
                if periodic:
                    row = j.conn.execute(j.q(
                        "SELECT max(started_at), max(started_at) > now() - make_interval(secs => %s) "
                        "FROM {s}.duplicate_scans WHERE error IS NULL"),
                        (self.opts.duplicate_scan_every_s * 0.9,)).fetchone()
                    if row and row[1]:
                        scan.skipped = "scanned recently"
                        return scan
                    if row and row[0] is not None:
                        since = row[0] - timedelta(seconds=self.opts.unknown_grace_s + 60)
                periods = self.periods(since=since)
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
            j.conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (f"kdcdc-duplicate-scan:{j.schema}",))
        if scan.duplicated or scan.error:
            log.warning("duplicate scan of %d periods: %d vouchers with keys, %d keys held more than once, %d copies "
                        "deleted, %d newly flagged for a human, %d open%s", len(scan.periods), scan.vouchers_seen,
                        len(scan.duplicated), len(scan.deleted), len(scan.flagged), scan.open_copies,
                        f"; {scan.error}" if scan.error else "")
        else:
            log.info("duplicate scan of %d periods: %d vouchers with keys, none held twice", len(scan.periods),
                     scan.vouchers_seen)
        return scan

    def _scan_period(self, book: str, period: str, scan: DuplicateScan) -> None:
        start, end = _month_range(period)
        base = (f"FAccountBookID.FNumber = {_quote(book)} and FDate >= '{start.isoformat()}' "
                f"and FDate < '{end.isoformat()}'")
        copies: dict[str, dict[str, _Copy]] = {}

        def page(fields: list[str], flt: str) -> Iterable[list[Any]]:
            start_row = 0
            while True:
                rows = self.client.execute_bill_query(FORM, fields, flt, order="FVOUCHERID", limit=_SCAN_PAGE,
                                                      start_row=start_row)
                yield from rows
                if len(rows) < _SCAN_PAGE:
                    return
                start_row += len(rows)
        if self.opts.marker:
            for vid, bill, status, expl in page(["FVOUCHERID", "FBillNo", "FDocumentStatus", "FEXPLANATION"],
                                                f"{base} and FEXPLANATION like '%kdcdc:%'"):
                m = _MARKER_IN_TEXT.search(str(expl or ""))
                if m:
                    copies.setdefault(m.group(1), {})[str(vid)] = _Copy(str(vid), str(bill), status=str(status or ""))
        if self.opts.key_field:
            fk = self.opts.key_field
            for vid, bill, status, key in page(["FVOUCHERID", "FBillNo", "FDocumentStatus", fk],
                                               f"{base} and {fk} <> ''"):
                if key:
                    copies.setdefault(str(key), {})[str(vid)] = _Copy(str(vid), str(bill), status=str(status or ""))
        scan.vouchers_seen += len({vid for c in copies.values() for vid in c})
        dups = {k: list(c.values()) for k, c in copies.items() if len(c) > 1}
        if dups:
            self._settle_copies(dups, {k: (book, period) for k in dups}, scan)
        # Copies flagged (or being deleted) earlier that this full read of the period no longer sees as extra
        # copies: deleted (by us, confirmed) or resolved by a person.
        seen = [(k, vid) for k, c in copies.items() if len(c) > 1 for vid in c]
        j = self.journal
        with j.transaction() as conn:
            gone = conn.execute(j.q(
                "UPDATE {s}.duplicate_copies d SET state = CASE WHEN d.state = 'FOUND' THEN 'DELETED' ELSE 'RESOLVED' END, "
                "settled_at = now() WHERE d.book = %s AND d.period = %s AND d.state IN ('FOUND', 'NEEDS_HUMAN') "
                "AND (d.voucher_key, d.kingdee_id) NOT IN (SELECT * FROM unnest(%s::text[], %s::text[])) "
                "RETURNING d.voucher_key, d.kingdee_id, d.kingdee_number, d.state"),
                (book, period, [k for k, _ in seen], [v for _, v in seen])).fetchall()
            j.insert_audit(conn, [("poster", "DUPLICATE_RESOLVED" if r[3] == "RESOLVED" else "DUPLICATE_DELETED", r[0],
                                   json.dumps({"kingdee_id": r[1], "number": r[2], "confirmed_by_scan": True},
                                              ensure_ascii=False)) for r in gone])

    def _settle_copies(self, dups: Mapping[str, Sequence[_Copy]], where: Mapping[str, tuple[str, str]],
                       scan: DuplicateScan) -> None:
        """Keys held more than once: keep the journal's copy; delete unaudited identical extras; flag the rest."""
        j = self.journal
        keys = list(dups)
        journal = {r[0]: (r[1], r[2]) for r in j.conn.execute(j.q(
            "SELECT key, status, kingdee_id FROM {s}.vouchers WHERE key = ANY(%s)"), (keys,)).fetchall()}
        delete: list[tuple[str, _Copy, _Copy]] = []  # (key, extra, kept)
        flag: list[tuple[str, _Copy, str | None, str]] = []  # (key, copy, kept id, reason)
        for key, copies in dups.items():
            status, kept_id = journal.get(key, (None, None))
            if status in ("JOURNALED", "POSTING"):
                scan.in_flight.append(key)  # the poster's own look-up settles it (NEEDS_ATTENTION if still twice)
                continue
            scan.duplicated[key] = [c.number for c in copies]
            kept = next((c for c in copies if c.id == kept_id), None)
            if status is None:
                flag += [(key, c, None, "a key this journal does not know") for c in copies]
            elif kept is None:
                why = ("no copy recorded by the journal (NEEDS_ATTENTION): a person chooses the one to keep"
                       if status == "NEEDS_ATTENTION" else
                       f"the copy the journal recorded ({kept_id}) is not among them")
                flag += [(key, c, kept_id, why) for c in copies]
            else:
                for c in copies:
                    if c.id == kept.id:
                        continue
                    if c.status not in DELETABLE:
                        flag.append((key, c, kept.id, f"document status {c.status} (submitted or audited): UnAudit "
                                                      "and delete it in Kingdee"))
                    elif not self.opts.delete_duplicates:
                        flag.append((key, c, kept.id, "unaudited; kingdee.delete_duplicates is off"))
                    else:
                        delete.append((key, c, kept))
        if delete:
            lines = self._lines([i for _, x, k in delete for i in (x.id, k.id)])
            for key, x, k in list(delete):
                if lines.get(x.id) != lines.get(k.id):
                    delete.remove((key, x, k))
                    flag.append((key, x, k.id, f"its lines differ from the copy the journal recorded ({k.number})"))
        changed = self._upsert_copies(
            [(key, x, k.id, "FOUND", "unaudited extra copy: deleting") for key, x, k in delete]
            + [(key, c, kept_id, "NEEDS_HUMAN", why) for key, c, kept_id, why in flag], where)
        scan.flagged += [(key, c.id, c.number, why) for key, c, _, why in flag if (key, c.id) in changed]
        if self.series is not None and changed:
            n = sum((key, c.id) in changed for key, c, _, _ in flag)
            if n:
                self.series.duplicates.labels("flagged").inc(n)
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
                self._settle_copy(key, x, "DELETED", "DUPLICATE_DELETED", {"kept_id": k.id, "kept_number": k.number})
                scan.deleted.append((key, x.id, x.number))
                if self.series is not None:
                    self.series.duplicates.labels("deleted").inc()
                log.warning("deleted extra copy %s (id %s, status %s) of voucher %s; kept %s (id %s)", x.number, x.id,
                            x.status, key, k.number, k.id)
            else:
                why = f"Kingdee refused the deletion: {'; '.join(errors) or 'no reason given'}"
                self._settle_copy(key, x, "NEEDS_HUMAN", "DUPLICATE_FLAGGED", {"kept_id": k.id, "reason": why})
                scan.flagged.append((key, x.id, x.number, why))
                if self.series is not None:
                    self.series.duplicates.labels("flagged").inc()

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

    def _upsert_copies(self, rows: Sequence[tuple[str, _Copy, str | None, str, str]],
                       where: Mapping[str, tuple[str, str]]) -> set[tuple[str, str]]:
        """Record found copies; returns those new or changed (each gets an audit row)."""
        if not rows:
            return set()
        j = self.journal
        with j.transaction() as conn:
            changed = conn.execute(j.q(
                "INSERT INTO {s}.duplicate_copies AS d (voucher_key, kingdee_id, kingdee_number, document_status, "
                "kept_id, book, period, state, reason) SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], "
                "%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[]) "
                "ON CONFLICT (voucher_key, kingdee_id) DO UPDATE SET state = EXCLUDED.state, reason = EXCLUDED.reason, "
                "document_status = EXCLUDED.document_status, kept_id = EXCLUDED.kept_id, settled_at = NULL "
                "WHERE (d.state, d.reason, d.document_status) IS DISTINCT FROM "
                "(EXCLUDED.state, EXCLUDED.reason, EXCLUDED.document_status) "
                "RETURNING d.voucher_key, d.kingdee_id, d.state, d.reason"),
                ([r[0] for r in rows], [r[1].id for r in rows], [r[1].number for r in rows], [r[1].status for r in rows],
                 [r[2] for r in rows], [where[r[0]][0] for r in rows], [where[r[0]][1] for r in rows],
                 [r[3] for r in rows], [r[4] for r in rows])).fetchall()
            by = {(r[0], r[1].id): r for r in rows}
            j.insert_audit(conn, [("poster", "DUPLICATE_FOUND" if state == "FOUND" else "DUPLICATE_FLAGGED", key,
                                   json.dumps({"kingdee_id": vid, "number": by[(key, vid)][1].number,
                                               "document_status": by[(key, vid)][1].status,
                                               "kept_id": by[(key, vid)][2], "reason": reason,
                                               "book": where[key][0], "period": where[key][1]}, ensure_ascii=False))
                                  for key, vid, state, reason in changed])
        return {(r[0], r[1]) for r in changed}

    def _settle_copy(self, key: str, copy: _Copy, state: str, action: str, detail: Mapping[str, Any]) -> None:
        j = self.journal
        with j.transaction() as conn:
            conn.execute(j.q("UPDATE {s}.duplicate_copies SET state = %s, reason = coalesce(%s, reason), "
                             "settled_at = CASE WHEN %s = 'DELETED' THEN now() END "
                             "WHERE voucher_key = %s AND kingdee_id = %s"),
                         (state, detail.get("reason"), state, key, copy.id))
            j.insert_audit(conn, [("poster", action, key, json.dumps(
                {"kingdee_id": copy.id, "number": copy.number, "document_status": copy.status, **detail},
                ensure_ascii=False))])

    def _open_copies(self, scan: DuplicateScan) -> None:
        j = self.journal
        row = j.conn.execute(j.q("SELECT count(*) FROM {s}.duplicate_copies WHERE state IN ('FOUND', 'NEEDS_HUMAN')")
                             ).fetchone()
        scan.open_copies = int(row[0]) if row else 0
        if self.series is not None:
            self.series.open.set(scan.open_copies)


def _amount(v: Any) -> Decimal:
    try:
        return Decimal(str(v)).normalize() if v not in (None, "") else Decimal(0)
    except InvalidOperation:
        return Decimal(0)
