"""Vouchers Kingdee refused (``REJECTED_BY_KINGDEE``), sent again once someone fixed the cause in Kingdee — a
period reopened, an account enabled or made a leaf, a dimension's base data added.

A refused voucher was never saved in Kingdee, so sending it again cannot post it twice; it goes back to
JOURNALED and the poster takes it like any other voucher, looking its key up first (it was claimed before).
Its source system hears POSTED (or the new refusal) as usual. What is refused here, with the reason:

* a voucher that is not ``REJECTED_BY_KINGDEE`` (posted, waiting, held for a person …);
* a voucher whose source change was reversed after Kingdee refused it: the reversal settled as "nothing to
  reverse", and posting the original now would book what the source no longer holds;
* a reversal of a voucher Kingdee refused: there is nothing in Kingdee to reverse.

Every voucher sent again is audited (``VOUCHER_RESENT``: who, Kingdee's earlier messages)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal

from connector.journal import AuditAction, AuditRow, Journal, VoucherStatus
from connector.ledger import VoucherKind


@dataclass(frozen=True, slots=True)
class Refused:
    """A voucher Kingdee refused, with what a bookkeeper needs to decide whether to send it again."""

    key: str
    kind: str
    status: str
    book: str
    voucher_date: date
    rule_id: str
    source_system: str
    source_table: str
    source_pk: str
    debit_total: Decimal
    kingdee_messages: str | None
    updated_at: datetime
    reversed_by: str | None  #: its source change was reversed meanwhile: it is not sent again
    original_status: str | None  #: a reversal's original: REJECTED_BY_KINGDEE means nothing to reverse

    @property
    def blocked(self) -> str | None:
        """Why this voucher is not sent again (``None``: it can be)."""
        if self.reversed_by is not None:
            return (f"its source change was reversed after Kingdee refused it (reversal {self.reversed_by}): "
                    "sending it now would book what the source no longer holds")
        if self.kind == VoucherKind.REVERSAL and self.original_status == VoucherStatus.REJECTED_BY_KINGDEE:
            return "the voucher it reverses was refused by Kingdee too: there is nothing in Kingdee to reverse"
        return None


@dataclass(slots=True)
class ResendResult:
    resent: list[str] = field(default_factory=list)
    #: key → why it was not sent again
    refused: dict[str, str] = field(default_factory=dict)


_SELECT = ("SELECT v.key, v.kind, v.status, v.book, v.voucher_date, v.rule_id, v.source_system, v.source_table, v.source_pk, "
           "v.debit_total, v.kingdee_messages, v.updated_at, v.reversed_by, o.status AS original_status "
           "FROM {s}.vouchers v LEFT JOIN {s}.vouchers o ON o.key = v.reverses ")


def list_refused(journal: Journal, *, book: str | None = None, period: str | None = None, rule: str | None = None,
                 limit: int = 200) -> list[Refused]:
    """Vouchers Kingdee refused, by book, date and journal order (``period``: ``YYYY-MM`` of the voucher date)."""
    return journal.rows(Refused, journal.q(
        _SELECT + "WHERE v.status = {rejected} AND (%(book)s::text IS NULL OR v.book = %(book)s) "
        "AND (%(period)s::text IS NULL OR to_char(v.voucher_date, 'YYYY-MM') = %(period)s) "
        "AND (%(rule)s::text IS NULL OR v.rule_id = %(rule)s) ORDER BY v.book, v.voucher_date, v.seq "
        "LIMIT %(limit)s", rejected=VoucherStatus.REJECTED_BY_KINGDEE),
        {"book": book, "period": period, "rule": rule, "limit": limit})


def resend(journal: Journal, keys: Sequence[str], *, actor: str, dry_run: bool = False) -> ResendResult:
    """Send ``keys`` to Kingdee again: each refused voucher that may be goes back to JOURNALED (audited), in one
    transaction; the others are reported with the reason."""
    result = ResendResult()
    wanted = list(dict.fromkeys(keys))
    if not wanted:
        return result
    with journal.transaction() as conn:
        found = {r.key: r for r in journal.rows(Refused, journal.q(
            _SELECT + "WHERE v.key = ANY(%s) FOR UPDATE OF v"), (wanted,))}
        ok: list[Refused] = []
        for key in wanted:
            if key not in found:
                result.refused[key] = "no such voucher in the journal"
            elif found[key].status != VoucherStatus.REJECTED_BY_KINGDEE:
                result.refused[key] = f"it is {found[key].status}: only vouchers Kingdee refused are sent again"
            elif (why := found[key].blocked) is not None:
                result.refused[key] = why
            else:
                ok.append(found[key])
        if ok and not dry_run:
            conn.execute(journal.q(
                "UPDATE {s}.vouchers SET status = {journaled}, kingdee_messages = NULL, unknown_since = NULL, "
                "updated_at = now() WHERE key = ANY(%s) AND status = {rejected}",
                journaled=VoucherStatus.JOURNALED, rejected=VoucherStatus.REJECTED_BY_KINGDEE), ([r.key for r in ok],))
            journal.insert_audit([AuditRow.of(actor, AuditAction.VOUCHER_RESENT, r.key, {
                "kingdee_messages": r.kingdee_messages, "refused_at": r.updated_at.isoformat()}) for r in ok])
        result.resent = [r.key for r in ok]
    return result
