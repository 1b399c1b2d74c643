"""Adding up a summary (汇总凭证): the contributions of one summary → one voucher. Pure, no I/O.

Lines with the same account, side, dimensions, currency, rate type and rate (and unit, settlement type)
are added up exactly — local amount, transaction-currency amount and quantity; a reversal inside the
summary has negated amounts, so a row changed or deleted while its summary was open nets out. Lines that
net to zero are left out. Each contribution is a balanced, checked voucher, so their sum balances without a
rounding line of its own.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from decimal import Decimal
from typing import Any, NamedTuple

from connector.ledger._model import Entry, Side, SourceRef, Voucher, VoucherKind
from connector.money import MONEY_CONTEXT, ZERO


class Carried(NamedTuple):
    """What a summary carries: the contributions still in force at close (a row changed or deleted while the
    summary was open is carried by its last version only) and how many source rows they are."""

    live: tuple[Voucher, ...]
    source_rows: int


def carried(contributions: Sequence[Voucher]) -> Carried:
    reversed_inside = {v.reverses for v in contributions if v.kind is VoucherKind.REVERSAL and v.reverses}
    live = tuple(v for v in contributions if v.kind is not VoucherKind.REVERSAL and v.key not in reversed_inside)
    return Carried(live, len({v.source.row for v in live}))


def _line_key(e: Entry) -> tuple[Any, ...]:
    return (e.side is not Side.DEBIT, e.account, tuple(sorted(e.dimensions.items())), e.currency, e.rate_type,
            e.rate.normalize(), e.unit or "", e.settle_type or "")


def add_up(contributions: Sequence[Voucher], *, key: str, date: dt.date, explanation: str, source: SourceRef,
           ) -> Voucher | None:
    """The summary voucher of ``contributions`` (all of one summary group: same book, date, voucher group and
    data centre), or ``None`` when everything nets to zero. Lines come debits first, then by account."""
    if not contributions:
        return None
    sums: dict[tuple[Any, ...], list[Any]] = {}
    for v in contributions:
        for e in v.entries:
            k = _line_key(e)
            acc = sums.get(k)
            if acc is None:
                sums[k] = [e, e.amount, e.amount_for, e.quantity]
            else:
                acc[1] = MONEY_CONTEXT.add(acc[1], e.amount)
                acc[2] = MONEY_CONTEXT.add(acc[2], e.amount_for)
                acc[3] = None if acc[3] is None or e.quantity is None else MONEY_CONTEXT.add(acc[3], e.quantity)
    entries = []
    for k in sorted(sums):
        first, amount, amount_for, quantity = sums[k]
        if amount == ZERO and amount_for == ZERO and not quantity:
            continue
        entries.append(first._replace(amount=amount, amount_for=amount_for, quantity=quantity, price=None,
                                      settle_no=None, explanation=explanation[:500]))
    if not entries:
        return None
    head = contributions[-1]
    return Voucher(key=key, book=head.book, date=date, group=head.group, explanation=explanation[:500],
                   entries=tuple(entries), source=source, rule_id=head.rule_id,
                   rule_version=max((v.rule_version for v in contributions), key=_version_order),
                   kind=VoucherKind.SUMMARY, data_centre=head.data_centre)


def _version_order(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (1 << 62, version)


def totals(vouchers: Sequence[Voucher]) -> dict[Side, Decimal]:
    """Exact local-currency totals per side of several vouchers (reconciling a summary with its rows)."""
    out = {Side.DEBIT: ZERO, Side.CREDIT: ZERO}
    for v in vouchers:
        for e in v.entries:
            out[e.side] = MONEY_CONTEXT.add(out[e.side], e.amount)
    return out
