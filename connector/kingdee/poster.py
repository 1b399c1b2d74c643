"""The poster: journaled vouchers → Kingdee, exactly once, with the outcome recorded per voucher.

K/3 Cloud has no idempotency key and a call can time out *after* the server committed. So:

1. **Claim** JOURNALED vouchers (and POSTING ones whose lease expired) with ``FOR UPDATE SKIP LOCKED`` and
   mark them POSTING with ``attempts + 1`` in one short transaction — several posters can run side by side.
   A reversal or delta is only claimed once the voucher it refers to is settled in Kingdee.
2. **Look up before re-sending.** A voucher whose previous attempt had an unknown outcome (``attempts > 1``,
   or a call that just timed out) is searched in Kingdee by its key — the ``[kdcdc:<key>]`` marker in the
   explanation or a configured custom field — with ExecuteBillQuery: found once → POSTED with the found
   ids; found more than once → NEEDS_ATTENTION (never deleted automatically); not found → sent.
3. **BatchSave** the rest in batches, several batches in flight, per-item results matched by ``DIndex``.
4. **Record** each voucher's new status, its audit row and its feedback outbox row in one transaction.
   A posted reversal also moves the original to REVERSED.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import datetime
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
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


@dataclass(frozen=True, slots=True, kw_only=True)
class PosterOptions:
    """Poster tuning.

    ====================  =======  =================================================================
    option                default  meaning
    ====================  =======  =================================================================
    ``batch_size``        100      vouchers per BatchSave call
    ``concurrency``       4        BatchSave calls in flight (also bounded by the client's limit)
    ``claim_limit``       2000     vouchers claimed per round
    ``key_field``         none     custom header field holding the key (e.g. ``F_KDCDC_KEY``)
    ``marker``            true     also write ``[kdcdc:<key>]`` into the first entry's explanation
    ``lease_s``           300      a POSTING voucher older than this is claimed again (after a crash)
    ``max_rounds``        5        lookup/re-send rounds per batch within one claim
    ====================  =======  =================================================================
    """

    batch_size: int = 100
    concurrency: int = 4
    claim_limit: int = 2000
    key_field: str | None = None
    marker: bool = True
    lease_s: float = 300.0
    max_rounds: int = 5


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

    def add(self, other: PostStats) -> None:
        for k in self.__slots__:
            setattr(self, k, getattr(self, k) + getattr(other, k))


@dataclass(frozen=True, slots=True)
class _Outcome:
    key: str
    status: str  # POSTED | REJECTED_BY_KINGDEE | NEEDS_ATTENTION
    kingdee_id: str | None = None
    number: str | None = None
    group_no: str | None = None
    messages: tuple[str, ...] = ()
    found: bool = False


@dataclass
class _Claimed:
    voucher: Voucher
    attempts: int
    pk: str
    system: str
    journaled_at: datetime | None = None


class Poster:
    def __init__(self, journal: Journal, client: KingdeeClient, *, books: Mapping[str, Book] | None = None,
                 options: PosterOptions = PosterOptions(), metrics: Any = None) -> None:
        self.journal = journal
        self.client = client
        self.metrics = metrics  #: connector.ops.Metrics, optional
        if metrics is not None and client.observer is None:
            client.observer = metrics.kingdee_request
        self.books = dict(books or {})
        self.opts = options
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    # ------------------------------------------------------------------ public
    def run(self, *, idle_sleep_s: float = 1.0, exit_when_idle: bool = False) -> PostStats:
        """Post until stopped. Infrastructure failures (journal or Kingdee unreachable) pause with backoff."""
        total = PostStats()
        self.journal.migrate()
        backoff = idle_sleep_s
        while not self._stop.is_set():
            try:
                stats = self.run_once()
            except (InfraError, psycopg.OperationalError) as e:
                log.warning("poster paused %.1fs: %s", backoff, e)
                self.journal.reset()
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            backoff = idle_sleep_s
            total.add(stats)
            if stats.claimed == 0:
                if exit_when_idle and self.pending() == 0:
                    break
                self._stop.wait(idle_sleep_s)
        return total

    def pending(self) -> int:
        row = self.journal.conn.execute(self.journal.q(
            "SELECT count(*) FROM {s}.vouchers WHERE status IN ('JOURNALED', 'POSTING')")).fetchone()
        return int(row[0]) if row else 0

    def run_once(self) -> PostStats:
        stats = PostStats()
        claimed = self._claim()
        stats.claimed = len(claimed)
        if not claimed:
            return stats
        chunks = [claimed[i:i + self.opts.batch_size] for i in range(0, len(claimed), self.opts.batch_size)]
        # Journal access stays on this thread (one connection); worker threads only talk to Kingdee.
        rejected_originals = self._originals_rejected([c.voucher for c in claimed])
        with ThreadPoolExecutor(max_workers=self.opts.concurrency) as pool:
            for outcomes, chunk_stats in pool.map(lambda ch: self._post_chunk(ch, rejected_originals), chunks):
                stats.add(chunk_stats)
                if outcomes:
                    self._record(outcomes, {c.voucher.key: c for c in claimed})
        return stats

    # ------------------------------------------------------------------ claim
    def _claim(self) -> list[_Claimed]:
        j = self.journal
        with j.transaction() as conn:
            rows = conn.execute(j.q(
                "WITH c AS (SELECT v.key FROM {s}.vouchers v "
                "  WHERE (v.status = 'JOURNALED' OR (v.status = 'POSTING' AND v.posting_since < now() - "
                "         make_interval(secs => %s))) "
                "    AND (v.reverses IS NULL OR EXISTS (SELECT 1 FROM {s}.vouchers o WHERE o.key = v.reverses "
                "         AND o.status IN ('POSTED', 'REVERSED', 'REJECTED_BY_KINGDEE'))) "
                "  ORDER BY v.journaled_at, v.kafka_offset, v.key LIMIT %s FOR UPDATE SKIP LOCKED) "
                "UPDATE {s}.vouchers v SET status = 'POSTING', attempts = v.attempts + 1, posting_since = now(), "
                "updated_at = now() FROM c WHERE v.key = c.key "
                "RETURNING v.payload, v.attempts, v.source_pk, v.source_system, v.journaled_at, v.kafka_offset"),
                (self.opts.lease_s, self.opts.claim_limit)).fetchall()
        rows.sort(key=lambda r: (r[4], r[5] or 0))
        return [_Claimed(voucher_from_json(bytes(r[0])), int(r[1]), r[2], r[3], r[4]) for r in rows]

    # ------------------------------------------------------------------ post one chunk
    def _post_chunk(self, chunk: list[_Claimed], originals_rejected: set[str]) -> tuple[list[_Outcome], PostStats]:
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
            try:
                if must_look:
                    found = self._lookup([c.voucher for c in pending if c.voucher.key in must_look])
                    for c in list(pending):
                        hits = found.get(c.voucher.key)
                        if not hits:
                            continue
                        pending.remove(c)
                        if len(hits) == 1:
                            vid, bill, group_no = hits[0]
                            outcomes.append(_Outcome(c.voucher.key, "POSTED", vid, bill, group_no, found=True))
                            stats.found_after_timeout += 1
                        else:
                            outcomes.append(_Outcome(c.voucher.key, "NEEDS_ATTENTION", messages=(
                                f"{len(hits)} Kingdee vouchers carry this key: {', '.join(h[1] for h in hits)}",)))
                            stats.needs_attention += 1
                    must_look = set()
                if not pending:
                    break
                results = self.client.batch_save(FORM, [self._model(c.voucher) for c in pending],
                                                 NeedReturnFields=["FBillNo", "FVOUCHERGROUPNO"], IsDeleteEntry="true",
                                                 IsAutoSubmitAndAudit="false")
                for c, r in zip(pending, results):
                    if r.ok:
                        outcomes.append(_Outcome(c.voucher.key, "POSTED", r.id, r.number,
                                                 str(r.return_data.get("FVOUCHERGROUPNO") or "") or None))
                        stats.posted += 1
                    else:
                        outcomes.append(_Outcome(c.voucher.key, "REJECTED_BY_KINGDEE", messages=r.messages))
                        stats.rejected += 1
                pending = []
            except KingdeeAmbiguous as e:
                stats.ambiguous_calls += 1
                log.warning("BatchSave of %d vouchers: %s; looking them up before re-sending", len(pending), e)
                must_look = {c.voucher.key for c in pending}
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
                log.error("Kingdee error, leaving %d vouchers for the next round: %s", len(pending), e)
                break
        stats.left_pending = len(pending)
        self._auto_submit([o for o in outcomes if o.status == "POSTED" and not o.found], chunk)
        return outcomes, stats

    def _model(self, v: Voucher) -> dict[str, Any]:
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

    def _lookup(self, vouchers: Sequence[Voucher]) -> dict[str, list[tuple[str, str, str | None]]]:
        """Find vouchers in Kingdee by key: key → [(FVOUCHERID, FBillNo, FVOUCHERGROUPNO)], distinct ids."""
        keys = [v.key for v in vouchers]
        out: dict[str, list[tuple[str, str, str | None]]] = {}
        if self.opts.key_field:
            fk = self.opts.key_field
            flt = f"{fk} IN ({', '.join(repr(k) for k in keys)})"
            rows = self.client.execute_bill_query(FORM, ["FVOUCHERID", "FBillNo", "FVOUCHERGROUPNO", fk], flt,
                                                  limit=10_000)
            for vid, bill, group_no, key in rows:
                out.setdefault(str(key), [])
                if all(h[0] != str(vid) for h in out[str(key)]):
                    out[str(key)].append((str(vid), str(bill), None if group_no is None else str(group_no)))
            return out
        # Marker search. Brackets are left out of the LIKE pattern: SQL Server reads [...] as a character class.
        flt = " or ".join(f"FEXPLANATION like '%kdcdc:{k}%'" for k in keys)
        rows = self.client.execute_bill_query(FORM, ["FVOUCHERID", "FBillNo", "FVOUCHERGROUPNO", "FEXPLANATION"],
                                              flt, limit=10_000)
        for vid, bill, group_no, expl in rows:
            for k in keys:
                if key_marker(k) in str(expl or ""):
                    out.setdefault(k, [])
                    if all(h[0] != str(vid) for h in out[k]):
                        out[k].append((str(vid), str(bill), None if group_no is None else str(group_no)))
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
        with j.transaction() as conn:
            conn.execute(j.q(
                "UPDATE {s}.vouchers v SET status = o.status, kingdee_id = o.kid, kingdee_number = o.num, "
                "kingdee_group_no = o.gno, kingdee_messages = o.msg, updated_at = now() "
                "FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[]) "
                "AS o(key, status, kid, num, gno, msg) WHERE v.key = o.key AND v.status = 'POSTING'"),
                ([o.key for o in outcomes], [o.status for o in outcomes], [o.kingdee_id for o in outcomes],
                 [o.number for o in outcomes], [o.group_no for o in outcomes],
                 ["; ".join(o.messages) or None for o in outcomes]))
            reversed_originals = [claimed[o.key].voucher.reverses for o in outcomes if o.status == "POSTED"
                                  and claimed[o.key].voucher.kind is VoucherKind.REVERSAL]
            if reversed_originals:
                conn.execute(j.q("UPDATE {s}.vouchers SET status = 'REVERSED', updated_at = now() "
                                 "WHERE key = ANY(%s) AND status = 'POSTED'"), (reversed_originals,))
            audit, outbox = [], []
            for o in outcomes:
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
            # One statement each (not executemany: its pipeline mode stalled for seconds at a time under
            # psycopg 3.3 while the worker threads were busy with HTTP)
            j.insert_audit(conn, audit)
            j.insert_outbox(conn, outbox)
        for o in outcomes:
            if o.status != "POSTED":
                v = claimed[o.key].voucher
                log.warning("%s: %s", o.status, "; ".join(o.messages) or "no message", extra={
                    "voucher_key": o.key, "source_key": f"{claimed[o.key].system}/{v.source.row.table}/"
                                                        f"{claimed[o.key].pk}@{v.source.position}"})
        if self.metrics is not None:  # after the commit: counted once they are durable
            for o in outcomes:
                c = claimed[o.key]
                self.metrics.voucher_settled(o.status, source_ts_ms=c.voucher.source.ts_ms,
                                             journaled_at=c.journaled_at)
                if o.status == "POSTED" and c.voucher.kind is VoucherKind.REVERSAL and c.voucher.reverses:
                    self.metrics.voucher_settled("REVERSED", source_ts_ms=None, journaled_at=None)
