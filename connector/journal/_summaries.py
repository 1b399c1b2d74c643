"""Summary vouchers in the journal (decision 0007): where a batch's new vouchers go, and when a summary closes.

A voucher of a ``summarize:`` rule is a *contribution*: it is journaled like any voucher, in the batch's
transaction, but with status SUMMARIZED and attached to the open summary of its group (``summary_group``:
rule, book, date, voucher group, data centre and key parts). ``route`` decides, for every new voucher:

* a contribution goes into its group's OPEN summary; with none open, a new summary is opened — unless the
  rule closes daily, a summary of the group was already closed and its late policy is ``adjust``: then the
  contribution is posted on its own as an adjustment (JOURNALED, ``adjusts_summary`` naming the summary);
* a reversal of a contribution follows its original: into the same summary while that is open (the two net
  out: no reversal noise), else posted on its own (naming the summary voucher in Kingdee);
* opening state, vouchers held for review and everything else keep their usual status.

The summaries involved are locked ``FOR UPDATE`` (in id order) for the rest of the transaction, and the
closer locks a summary the same way before adding it up, so a contribution is in exactly one summary: the
closer either sees the batch's contributions (it committed first) or the batch sees the summary closed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Final, NamedTuple
from zoneinfo import ZoneInfo

from connector.journal._audit import AuditRow
from connector.journal._status import AuditAction, SummaryState, VoucherStatus
from connector.ledger import Voucher, VoucherKind, carried, summary_group, summary_parts, voucher_from_json

if TYPE_CHECKING:
    from connector.journal._journal import Journal


class Route(NamedTuple):
    """Where one new voucher goes: its status, the summary it joins, the closed summary it corrects."""

    status: VoucherStatus
    summary_id: int | None = None
    adjusts_summary: int | None = None


def close_due(v: Voucher, *, now: datetime, first: bool) -> datetime | None:
    """When a summary opened now for contribution ``v`` is due to close.

    ``"HH:MM next day"``: the day after the voucher date at HH:MM in the book's time zone — or, for a later
    summary of the same group (``late: next_summary``), the next HH:MM after now; ``"every N minutes"``: the end
    of the current N-minute window (aligned to the hour); ``"on command"``: never by itself (``None``).
    """
    ref = v.summary
    assert ref is not None
    tz = ZoneInfo(ref.tz)
    if (daily := ref.daily_close()) is not None:
        at = time(*daily)
        if first:
            return datetime.combine(v.date + timedelta(days=1), at, tzinfo=tz)
        local = now.astimezone(tz)
        due = datetime.combine(local.date(), at, tzinfo=tz)
        return due if due > local else datetime.combine(local.date() + timedelta(days=1), at, tzinfo=tz)
    if (minutes := ref.every_minutes()) is not None:
        start = now.astimezone(timezone.utc).replace(second=0, microsecond=0)
        start -= timedelta(minutes=(start.hour * 60 + start.minute) % minutes)
        return start + timedelta(minutes=minutes)
    return None


class _Locked(NamedTuple):
    id: int
    group_id: str
    seq: int
    state: str


@dataclass(slots=True)
class _Groups:
    """The summaries a batch touches, locked: open ones per group, any one by id, the newest seq per group."""

    open: dict[str, int]
    state: dict[int, str]
    last: dict[str, tuple[int, int]]  #: group → (newest seq, its id), for groups without an open summary


def route(journal: Journal, vouchers: Sequence[Voucher]) -> dict[str, Route]:
    """Routes for the new vouchers that involve summaries (keys absent: the usual JOURNALED/OPENING)."""
    contributions = [v for v in vouchers if _contributes(v)]
    reversals = [v for v in vouchers if v.kind is VoucherKind.REVERSAL and v.reverses and v.summary is not None]
    if not contributions and not reversals:
        return {}
    in_summary = _summary_of([v.reverses for v in reversals if v.reverses], journal)
    groups = _lock(journal, {summary_group(v) for v in contributions}, set(in_summary.values()))
    now = datetime.now(timezone.utc)
    routes: dict[str, Route] = {}
    counts: dict[int, int] = {}
    for v in vouchers:
        if v.kind is VoucherKind.REVERSAL and v.reverses:
            sid = in_summary.get(v.reverses)
            if sid is None and v.reverses in routes:  # its original came in this same batch
                sid = routes[v.reverses].summary_id
            if sid is None:
                continue
            if groups.state.get(sid) == SummaryState.OPEN:
                routes[v.key] = Route(VoucherStatus.SUMMARIZED, sid)
                counts[sid] = counts.get(sid, 0) + 1
            else:
                routes[v.key] = Route(VoucherStatus.JOURNALED, adjusts_summary=sid)
        elif _contributes(v):
            r = _contribution(journal, v, groups, now)
            routes[v.key] = r
            if r.summary_id is not None:
                counts[r.summary_id] = counts.get(r.summary_id, 0) + 1
    if counts:
        ids = sorted(counts)
        journal.conn.execute(journal.q(
            "UPDATE {s}.summaries s SET contributions = s.contributions + c.n, last_at = now() "
            "FROM unnest(%s::bigint[], %s::int[]) AS c(id, n) WHERE s.id = c.id"), (ids, [counts[i] for i in ids]))
    return routes


def _contributes(v: Voucher) -> bool:
    """Goes into a summary: a summarize rule's original or delta — not opening state (never posted), not a
    voucher held for review (a person looks at it alone)."""
    return v.summary is not None and v.kind is not VoucherKind.REVERSAL and not v.opening and not v.needs_review


def _summary_of(keys: Sequence[str], journal: Journal) -> dict[str, int]:
    """The summary each of these (original) vouchers contributed to."""
    if not keys:
        return {}
    found = journal.conn.execute(journal.q(
        "SELECT key, summary_id FROM {s}.vouchers WHERE key = ANY(%s) AND summary_id IS NOT NULL"),
        (list(keys),)).fetchall()
    return {str(k): int(sid) for k, sid in found}


def _lock(journal: Journal, group_ids: set[str], summary_ids: set[int]) -> _Groups:
    rows = journal.rows(_Locked, journal.q(
        "SELECT id, group_id, seq, state FROM {s}.summaries "
        "WHERE (group_id = ANY(%s) AND state = {open}) OR id = ANY(%s) ORDER BY id FOR UPDATE",
        open=SummaryState.OPEN), (sorted(group_ids), sorted(summary_ids)))
    groups = _Groups(open={r.group_id: r.id for r in rows if r.state == SummaryState.OPEN},
                     state={r.id: r.state for r in rows}, last={})
    missing = sorted(group_ids - groups.open.keys())
    if missing:
        for g, seq, sid in journal.conn.execute(journal.q(
                "SELECT DISTINCT ON (group_id) group_id, seq, id FROM {s}.summaries WHERE group_id = ANY(%s) "
                "ORDER BY group_id, seq DESC"), (missing,)).fetchall():
            groups.last[str(g)] = (int(seq), int(sid))
    return groups


def _contribution(journal: Journal, v: Voucher, groups: _Groups, now: datetime) -> Route:
    g = summary_group(v)
    ref = v.summary
    assert ref is not None
    for _ in range(3):  # a concurrent batch may open (and the closer close) the group's summary meanwhile
        if (sid := groups.open.get(g)) is not None:
            return Route(VoucherStatus.SUMMARIZED, sid)
        last = groups.last.get(g)
        if last is not None and ref.daily_close() is not None and ref.late == "adjust":
            return Route(VoucherStatus.JOURNALED, adjusts_summary=last[1])
        seq = last[0] + 1 if last else 1
        sid = _open(journal, v, g, seq, close_due(v, now=now, first=seq == 1))
        if sid is not None:
            groups.open[g] = sid
            groups.state[sid] = SummaryState.OPEN
            return Route(VoucherStatus.SUMMARIZED, sid)
        _relock(journal, g, groups)
    raise RuntimeError(f"summary group {g} kept changing while a batch was being journaled")


def _open(journal: Journal, v: Voucher, g: str, seq: int, due: datetime | None) -> int | None:
    """Open summary ``seq`` of group ``g``; ``None`` when another batch opened one first."""
    ref = v.summary
    assert ref is not None
    found = journal.conn.execute(journal.q(
        "INSERT INTO {s}.summaries (group_id, seq, rule_id, book, voucher_date, voucher_group, data_centre, key, "
        "close_policy, late_policy, tz, close_due) VALUES (%s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s, %s, %s) "
        "ON CONFLICT DO NOTHING RETURNING id"),
        (g, seq, v.rule_id, v.book, v.date, v.group, v.data_centre, json.dumps(dict(summary_parts(v)),
                                                                              ensure_ascii=False),
         ref.close, ref.late, ref.tz, due)).fetchone()
    return int(found[0]) if found else None


def _relock(journal: Journal, g: str, groups: _Groups) -> None:
    """After losing a race to open group ``g``'s summary: lock what is there now."""
    fresh = _lock(journal, {g}, set())
    groups.open.update(fresh.open)
    groups.state.update(fresh.state)
    groups.last.update(fresh.last)


# --------------------------------------------------------------------------- close
class SummaryRow(NamedTuple):
    """A ``summaries`` row."""

    id: int
    group_id: str
    seq: int
    rule_id: str
    book: str
    voucher_date: date
    voucher_group: str
    data_centre: str | None
    key: dict[str, str]
    close_policy: str
    late_policy: str
    tz: str
    state: str
    close_due: datetime | None
    contributions: int
    source_rows: int | None
    voucher_key: str | None
    problem: str | None
    opened_at: datetime
    last_at: datetime
    closed_at: datetime | None


#: how a closer turns a summary and its contributions into its voucher: the voucher, ``None`` when it nets to
#: nothing, or the text of a problem (a check failed, the period is closed) that holds it for a person
Build = Callable[[SummaryRow, Sequence[Voucher]], "Voucher | str | None"]


class Closed(NamedTuple):
    summary: SummaryRow
    state: SummaryState
    voucher: Voucher | None
    source_rows: int
    problem: str | None = None


_SUMMARY_COLUMNS: Final = ", ".join(SummaryRow._fields)


def due_summaries(journal: Journal, *, now: datetime | None = None, limit: int = 100) -> list[int]:
    """Open summaries whose close is due, oldest due first."""
    found = journal.conn.execute(journal.q(
        "SELECT id FROM {s}.summaries WHERE state = {open} AND close_due <= %s ORDER BY close_due, id LIMIT %s",
        open=SummaryState.OPEN), (now or datetime.now(timezone.utc), limit)).fetchall()
    return [int(i) for (i,) in found]


def close_summary(journal: Journal, summary_id: int, build: Build, *, actor: str, wait: bool = False,
                  retry: bool = False) -> Closed | None:
    """Close one summary in one transaction: lock it (skip it if a batch holds it, unless ``wait``), add up its
    contributions with ``build``, journal the summary voucher for the poster and freeze the summary — or hold
    it as NEEDS_ATTENTION with the problem. ``retry`` also takes a summary held NEEDS_ATTENTION. ``None``: not
    open (already closed, or locked by a batch right now)."""
    states = [SummaryState.OPEN, SummaryState.NEEDS_ATTENTION] if retry else [SummaryState.OPEN]
    with journal.transaction():
        rows = journal.rows(SummaryRow, journal.q(
            f"SELECT {_SUMMARY_COLUMNS} FROM {{s}}.summaries WHERE id = %s AND state IN ({{states}}) "
            f"FOR UPDATE{'' if wait else ' SKIP LOCKED'}", states=states), (summary_id,))
        if not rows:
            return None
        summary = rows[0]
        contributions = [voucher_from_json(bytes(p)) for (p,) in journal.conn.execute(journal.q(
            "SELECT payload FROM {s}.vouchers WHERE summary_id = %s ORDER BY seq"), (summary_id,)).fetchall()]
        made = build(summary, contributions)
        rows_carried = carried(contributions).source_rows
        if isinstance(made, str):
            journal.conn.execute(journal.q(
                "UPDATE {s}.summaries SET state = {held}, problem = %s, last_at = now() WHERE id = %s",
                held=SummaryState.NEEDS_ATTENTION), (made, summary_id))
            journal.insert_audit([AuditRow.of(actor, AuditAction.SUMMARY_NEEDS_ATTENTION, None, {
                "summary": summary_id, "key": summary.key, "problem": made})])
            return Closed(summary, SummaryState.NEEDS_ATTENTION, None, rows_carried, made)
        if made is not None:
            journal.insert_vouchers([(None, made)])
        journal.conn.execute(journal.q(
            "UPDATE {s}.summaries SET state = {closed}, voucher_key = %s, source_rows = %s, problem = NULL, "
            "closed_at = now(), last_at = now() WHERE id = %s", closed=SummaryState.CLOSED),
            (made.key if made else None, rows_carried, summary_id))
        journal.insert_audit([AuditRow.of(actor, AuditAction.SUMMARY_CLOSED, made.key if made else None, {
            "summary": summary_id, "key": summary.key, "seq": summary.seq, "contributions": len(contributions),
            "source_rows": rows_carried, "debit_total": str(made.debit_total) if made else "0"})])
        return Closed(summary, SummaryState.CLOSED, made, rows_carried)


def get_summary(journal: Journal, summary_id: int) -> SummaryRow | None:
    rows = journal.rows(SummaryRow, journal.q(f"SELECT {_SUMMARY_COLUMNS} FROM {{s}}.summaries WHERE id = %s"),
                        (summary_id,))
    return rows[0] if rows else None


def list_summaries(journal: Journal, *, state: str | None = None, rule: str | None = None, book: str | None = None,
                   limit: int = 100) -> list[SummaryRow]:
    """Summaries, newest first, optionally of one state, rule or book."""
    return journal.rows(SummaryRow, journal.q(
        f"SELECT {_SUMMARY_COLUMNS} FROM {{s}}.summaries WHERE (%(state)s::text IS NULL OR state = %(state)s) "
        "AND (%(rule)s::text IS NULL OR rule_id = %(rule)s) AND (%(book)s::text IS NULL OR book = %(book)s) "
        "ORDER BY id DESC LIMIT %(limit)s"), {"state": state, "rule": rule, "book": book, "limit": limit})


class SummaryDifference(NamedTuple):
    """A summary voucher line that is not the sum of its contributions' lines."""

    summary_id: int
    voucher_key: str
    account: str
    side: str
    currency: str
    contributions: Decimal
    summary: Decimal


def summary_differences(journal: Journal, *, book: str, start: date, end: date) -> list[SummaryDifference]:
    """Summary vouchers of ``book`` dated in [start, end) whose lines (per account, side, dimensions and currency,
    local and transaction amounts) differ from the sum of their contributions — what closing froze must stay
    what the source rows added up to."""
    return journal.rows(SummaryDifference, journal.q(
        "WITH s AS (SELECT s.id, s.voucher_key FROM {s}.summaries s JOIN {s}.vouchers v ON v.key = s.voucher_key "
        "           WHERE s.book = %(book)s AND v.voucher_date >= %(start)s AND v.voucher_date < %(end)s), "
        "c AS (SELECT v.summary_id AS id, e.account, e.side, e.dimensions, e.currency, sum(e.amount) AS a, "
        "             sum(e.amount_for) AS f FROM {s}.vouchers v JOIN {s}.entries e ON e.voucher_key = v.key "
        "      WHERE v.summary_id IN (SELECT id FROM s) GROUP BY 1, 2, 3, 4, 5), "
        "t AS (SELECT s.id, e.account, e.side, e.dimensions, e.currency, sum(e.amount) AS a, sum(e.amount_for) AS f "
        "      FROM s JOIN {s}.entries e ON e.voucher_key = s.voucher_key GROUP BY 1, 2, 3, 4, 5) "
        "SELECT coalesce(c.id, t.id) AS summary_id, s.voucher_key, coalesce(c.account, t.account) AS account, "
        "       coalesce(c.side, t.side) AS side, coalesce(c.currency, t.currency) AS currency, "
        "       coalesce(c.a, 0) AS contributions, coalesce(t.a, 0) AS summary "
        "FROM c FULL JOIN t ON t.id = c.id AND t.account = c.account AND t.side = c.side "
        "     AND t.dimensions = c.dimensions AND t.currency = c.currency "
        "JOIN s ON s.id = coalesce(c.id, t.id) "
        "WHERE coalesce(c.a, 0) <> coalesce(t.a, 0) OR coalesce(c.f, 0) <> coalesce(t.f, 0) ORDER BY 1, 3, 4"),
        {"book": book, "start": start, "end": end})
