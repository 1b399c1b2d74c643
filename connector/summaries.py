"""Closing summaries (汇总凭证, decision 0007) and following a summary down to its source rows.

``SummaryCloser`` runs in ``kingdee-cdc run`` (and ``kingdee-cdc summaries close``): every summary whose close
is due is added up (``connector.ledger.add_up``), put into an open period by the book's period policy,
checked like any voucher (accounts, dimensions, currencies, permissions, balance) and journaled for the
poster, in one transaction with the summary's new state (``connector.journal.close_summary``). A summary
that fails a check is held as NEEDS_ATTENTION with the reason; its contributions stay where they are, and
``summaries close --retry`` tries again once the cause (a frozen account, a closed period) is fixed.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Final, NamedTuple

import psycopg

from connector.errors import InfraError
from connector.journal import (
    Closed,
    Journal,
    SummaryRow,
    close_summary,
    due_summaries,
    get_summary,
    list_summaries,
)
from connector.ledger import (
    REVIEWS,
    LedgerContext,
    Rejection,
    RowRef,
    SourceRef,
    Voucher,
    add_up,
    canonical_pk,
    carried,
    check_voucher,
    summary_voucher_key,
    voucher_from_json,
)
from connector.mapping import RuleSet
from connector.ops import OUTAGES

log = logging.getLogger("kingdee_cdc.summaries")
ACTOR: Final = "summaries"
#: the table name a summary voucher's source gets: the rule's table with this suffix (never a real row)
SUMMARY_TABLE_SUFFIX: Final = "#summary"


def _period(d: date) -> str:
    return f"{d.year:04d}-{d.month:02d}"


@dataclass
class SummaryCloser:
    """Closes due summaries. ``rules`` give the summary explanations; ``ledger`` the checks and periods."""

    journal: Journal
    rules: RuleSet | None = None
    ledger: LedgerContext | None = None
    skip_checks: Sequence[str] = ()
    every_s: float = 5.0
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """Close what is due every ``every_s`` seconds until stopped. A journal outage is reported to the process's
        outages (one log line per interval) and waited out; any other failure is logged and retried next round
        (a summary is closed in one transaction: a failed close leaves it open)."""
        while not self._stop.is_set():
            try:
                self.close_due()
                if OUTAGES.problem("journal") is not None:
                    OUTAGES.ok("journal")
            except (InfraError, psycopg.OperationalError, psycopg.InterfaceError) as e:
                OUTAGES.failed("journal", str(e))
                self.journal.reset()
            except Exception:
                log.exception("closing summaries failed; trying again in %.0fs", self.every_s)
                self.journal.reset()
            self._stop.wait(self.every_s)

    def close_due(self, *, now: datetime | None = None, page: int = 100) -> list[Closed]:
        """Close every summary whose close is due, ``page`` at a time (skipping any a batch is writing to right
        now: the next round takes it)."""
        closed: list[Closed] = []
        skipped: set[int] = set()
        while not self._stop.is_set():
            due = [sid for sid in due_summaries(self.journal, now=now, limit=page + len(skipped))
                   if sid not in skipped]
            if not due:
                break
            for sid in due:
                done = close_summary(self.journal, sid, self.build, actor=ACTOR)
                if done is None:
                    skipped.add(sid)
                    continue
                self._log(done)
                closed.append(done)
        return closed

    def close(self, summary_id: int, *, retry: bool = False) -> Closed | None:
        """Close one summary now (``on command``, or before its time), waiting for a batch writing to it."""
        done = close_summary(self.journal, summary_id, self.build, actor=ACTOR, wait=True, retry=retry)
        if done is not None:
            self._log(done)
        return done

    # ------------------------------------------------------------------ the summary voucher
    def build(self, summary: SummaryRow, contributions: Sequence[Voucher]) -> Voucher | str | None:
        """The summary voucher, ``None`` when it nets to nothing, or why it cannot be posted."""
        if not contributions:
            return None
        rows = carried(contributions)
        day = summary.voucher_date
        problem, date_moved = self._period_policy(summary)
        if problem is not None:
            return problem
        first = contributions[0]
        source = SourceRef(RowRef(first.source.row.system, f"{first.source.row.table}{SUMMARY_TABLE_SUFFIX}",
                                  json.dumps(summary.key, ensure_ascii=False, sort_keys=True, separators=(",", ":"))),
                           position=f"summary:{summary.id}#{summary.seq}", op="c")
        made = add_up(contributions, key=summary_voucher_key(summary.group_id, summary.seq),
                      date=date_moved or day, explanation=self.explanation(summary, rows.source_rows),
                      source=source)
        if made is None:
            return None
        if date_moved is not None:
            made = made._replace(original_date=day)
        if self.ledger is None:
            return made
        checked = check_voucher(made, self.ledger, skip=(*self.skip_checks, *(name for name, _ in REVIEWS)))
        if isinstance(checked, Voucher):
            return checked
        return "; ".join(_reason(r) for r in checked)

    def _period_policy(self, summary: SummaryRow) -> tuple[str | None, date | None]:
        """(problem, moved date): a summary dated in a closed period goes to the first open one, as the book's
        ``reverse_in`` says — or is held (``original_period``)."""
        book = self.ledger.books.get(summary.book) if self.ledger is not None else None
        day = summary.voucher_date
        if book is None or book.period_open(_period(day)):
            return None, None
        if book.reverse_in == "original_period":
            return (f"CLOSED_PERIOD: period {_period(day)} of book {summary.book} is closed (期间已结账) and the book "
                    "posts in the original period (reverse_in: original_period)"), None
        moved = book.first_open_on_or_after(day)
        if moved is None:
            return f"CLOSED_PERIOD: period {_period(day)} of book {summary.book} is closed and no later period is open", \
                None
        return None, moved

    def explanation(self, summary: SummaryRow, count: int) -> str:
        """The rule's ``summarize.explanation`` over the key and the count; a plain text if it cannot be had."""
        rule = next((r for r in self.rules.rules if r.id == summary.rule_id), None) if self.rules else None
        if rule is not None and rule.summary_explanation is not None:
            try:
                return str(rule.summary_explanation({"key": dict(summary.key), "count": count}))[:500]
            except Exception as e:  # the template's own error: fall back, and say so
                log.warning("summary %s: explanation template failed (%s); using the default", summary.id, e)
        parts = " ".join(str(v) for v in summary.key.values())
        return f"{summary.rule_id} 汇总 {parts} 共{count}笔"[:500]

    @staticmethod
    def _log(done: Closed) -> None:
        s = done.summary
        if done.problem:
            log.warning("summary %s (%s %s) held: %s", s.id, s.rule_id, _key_text(s.key), done.problem)
        elif done.voucher is None:
            log.info("summary %s (%s %s) closed: its %d contributions net to nothing", s.id, s.rule_id,
                     _key_text(s.key), s.contributions)
        else:
            log.info("summary %s (%s %s) closed: %d source rows, debit total %s, voucher %s", s.id, s.rule_id,
                     _key_text(s.key), done.source_rows, done.voucher.debit_total, done.voucher.key)


def _reason(r: Rejection) -> str:
    return f"{r.code.value}: {r.message}"


def _key_text(key: Mapping[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in key.items())


# --------------------------------------------------------------------------- drill-down
class CarriedRow(NamedTuple):
    """A source row a summary voucher carries, with its amount and where its last change was read."""

    system: str
    table: str
    pk: str
    voucher_key: str
    debit_total: Decimal
    topic: str | None
    kafka_partition: int | None
    kafka_offset: int | None
    changes: int  #: contributions of the row in the summary (its versions and their reversals)


class Drilldown(NamedTuple):
    summary: SummaryRow
    voucher_status: str | None
    kingdee_number: str | None
    rows: tuple[CarriedRow, ...]
    #: vouchers posted on their own for this summary's key after it closed (late changes, late rows)
    adjustments: tuple[tuple[str, str, str, Decimal], ...]  #: (key, kind, status, debit total)


class _ContributionRow(NamedTuple):
    key: str
    payload: bytes
    topic: str | None
    kafka_partition: int | None
    kafka_offset: int | None


class _AdjustmentRow(NamedTuple):
    key: str
    kind: str
    status: str
    debit_total: Decimal


class _VoucherState(NamedTuple):
    status: str
    kingdee_number: str | None


def find_summary(journal: Journal, ref: str) -> SummaryRow | None:
    """A summary by id, by its voucher's key or by its Kingdee voucher number."""
    if ref.isdigit():
        return get_summary(journal, int(ref))
    found = journal.conn.execute(journal.q(
        "SELECT s.id FROM {s}.summaries s JOIN {s}.vouchers v ON v.key = s.voucher_key "
        "WHERE v.key = %s OR v.kingdee_number = %s ORDER BY s.id DESC LIMIT 1"), (ref, ref)).fetchone()
    return get_summary(journal, int(found[0])) if found else None


def drilldown(journal: Journal, summary: SummaryRow) -> Drilldown:
    """Everything under one summary: its voucher and Kingdee number, the source rows it carries (amounts, Kafka
    coordinates of their last change) and the adjustments posted for it after it closed."""
    contributions = journal.rows(_ContributionRow, journal.q(
        "SELECT key, payload, topic, kafka_partition, kafka_offset FROM {s}.vouchers WHERE summary_id = %s "
        "ORDER BY seq"), (summary.id,))
    vouchers = {c.key: voucher_from_json(bytes(c.payload)) for c in contributions}
    where = {c.key: c for c in contributions}
    live = carried(list(vouchers.values())).live
    changes: dict[RowRef, int] = {}
    for v in vouchers.values():
        changes[v.source.row] = changes.get(v.source.row, 0) + 1
    rows = tuple(CarriedRow(v.source.row.system, v.source.row.table, v.source.row.pk, v.key, v.debit_total,
                            where[v.key].topic, where[v.key].kafka_partition, where[v.key].kafka_offset,
                            changes[v.source.row]) for v in live)
    state = None
    if summary.voucher_key:
        found = journal.rows(_VoucherState, journal.q("SELECT status, kingdee_number FROM {s}.vouchers WHERE key = %s"),
                             (summary.voucher_key,))
        state = found[0] if found else None
    adjustments = journal.rows(_AdjustmentRow, journal.q(
        "SELECT key, kind, status, debit_total FROM {s}.vouchers WHERE adjusts_summary = %s ORDER BY seq"),
        (summary.id,))
    return Drilldown(summary, state.status if state else None, state.kingdee_number if state else None, rows,
                     tuple((a.key, a.kind, a.status, a.debit_total) for a in adjustments))


def carrier_of(journal: Journal, row: RowRef) -> list[tuple[str, SummaryRow]]:
    """The summaries carrying a source row's contributions: (contribution key, summary), oldest first."""
    found = journal.conn.execute(journal.q(
        "SELECT key, summary_id FROM {s}.vouchers WHERE source_system = %s AND source_table = %s AND source_pk = %s "
        "AND summary_id IS NOT NULL ORDER BY seq"), (row.system, row.table, row.pk)).fetchall()
    out = []
    for key, sid in found:
        s = get_summary(journal, int(sid))
        if s is not None:
            out.append((str(key), s))
    return out


class VoucherInfo(NamedTuple):
    """A journal voucher as the drill-down shows it."""

    key: str
    kind: str
    status: str
    voucher_date: date
    debit_total: Decimal
    kingdee_number: str | None
    source_system: str
    source_table: str
    source_pk: str
    topic: str | None
    kafka_partition: int | None
    kafka_offset: int | None

    @property
    def row(self) -> RowRef:
        return RowRef(self.source_system, self.source_table, self.source_pk)

    @property
    def date(self) -> date:
        return self.voucher_date

    @property
    def where(self) -> str | None:
        return None if self.topic is None else f"{self.topic}[{self.kafka_partition}]@{self.kafka_offset}"


def find_vouchers(journal: Journal, ref: str | RowRef) -> list[VoucherInfo]:
    """A source row's vouchers in journal order, or the voucher(s) with this key or Kingdee number."""
    cols = ", ".join(VoucherInfo._fields)
    if isinstance(ref, RowRef):
        return journal.rows(VoucherInfo, journal.q(
            f"SELECT {cols} FROM {{s}}.vouchers WHERE source_system = %s AND source_table = %s AND source_pk = %s "
            "ORDER BY seq"), (ref.system, ref.table, ref.pk))
    return journal.rows(VoucherInfo, journal.q(
        f"SELECT {cols} FROM {{s}}.vouchers WHERE key = %s OR kingdee_number = %s ORDER BY seq"), (ref, ref))


def parse_row(ref: str) -> RowRef | None:
    """``pos:pos.public.sales_order:{"id":42}`` → the source row (its key canonical); ``None``: not that form."""
    parts = ref.split(":", 2)
    if len(parts) != 3 or not parts[2].lstrip().startswith("{"):
        return None
    try:
        key = json.loads(parts[2])
    except ValueError:
        return None
    return RowRef(parts[0], parts[1], canonical_pk(key)) if isinstance(key, dict) and key else None


__all__ = ["ACTOR", "CarriedRow", "Drilldown", "SummaryCloser", "VoucherInfo", "carrier_of", "drilldown",
           "find_summary", "find_vouchers", "list_summaries", "parse_row"]
