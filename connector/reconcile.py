"""Reconciliation: does Kingdee hold what the journal says was posted, per account, for a book and period?

Compares, per account, the net (debit − credit, local currency) of the journal's vouchers that reached
Kingdee (POSTED / REVERSED) with the net of the vouchers Kingdee returns through ExecuteBillQuery, and
matches vouchers by their ``[kdcdc:<key>]`` marker to name the ones involved: missing in Kingdee, unknown
to the journal, or with different amounts. Differences fully explained by in-flight vouchers (JOURNALED /
POSTING in the period) are marked as such; anything else is flagged.
"""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

from connector.journal import Journal
from connector.kingdee import KingdeeClient

_MARKER = re.compile(r"\[kdcdc:([0-9a-f]{8,64})\]")
ZERO = Decimal(0)


@dataclass(slots=True)
class AccountDiff:
    account: str
    journal: Decimal
    kingdee: Decimal
    in_flight: Decimal = ZERO
    vouchers: list[str] = field(default_factory=list)  # keys / bill numbers involved

    @property
    def difference(self) -> Decimal:
        return self.journal - self.kingdee

    @property
    def explained(self) -> bool:
        return self.difference == ZERO or self.difference == self.in_flight


@dataclass(slots=True)
class Report:
    book: str
    period: str
    accounts: list[AccountDiff]
    missing_in_kingdee: list[str]
    unknown_to_journal: list[str]
    amount_mismatch: list[str]

    @property
    def flagged(self) -> list[AccountDiff]:
        return [a for a in self.accounts if not a.explained]

    def write_csv(self, path: Path) -> None:
        with path.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["book", "period", "account", "journal_net", "kingdee_net", "difference", "in_flight",
                        "status", "vouchers"])
            for a in self.accounts:
                w.writerow([self.book, self.period, a.account, a.journal, a.kingdee, a.difference, a.in_flight,
                            "ok" if a.difference == ZERO else ("in-flight" if a.explained else "FLAGGED"),
                            " ".join(a.vouchers)])


def _period(period: str) -> tuple[date, date]:
    y, m = (int(x) for x in period.split("-"))
    start = date(y, m, 1)
    end = date(y + (m == 12), m % 12 + 1, 1)
    return start, end


def reconcile(journal: Journal, client: KingdeeClient, *, book: str, period: str) -> Report:
    start, end = _period(period)
    q = journal.q(
        "SELECT v.key, v.status, e.account, sum(CASE e.side WHEN 'debit' THEN e.amount ELSE -e.amount END) "
        "FROM {s}.vouchers v JOIN {s}.entries e ON e.voucher_key = v.key "
        "WHERE v.book = %s AND v.voucher_date >= %s AND v.voucher_date < %s "
        "AND v.status IN ('POSTED', 'REVERSED', 'JOURNALED', 'POSTING') GROUP BY 1, 2, 3")
    journal_by_voucher: dict[str, dict[str, Decimal]] = defaultdict(dict)
    posted_net: dict[str, Decimal] = defaultdict(Decimal)
    in_flight: dict[str, Decimal] = defaultdict(Decimal)
    in_flight_keys: dict[str, list[str]] = defaultdict(list)
    for key, status, account, net in journal.conn.execute(q, (book, start, end)).fetchall():
        if status in ("POSTED", "REVERSED"):
            journal_by_voucher[key][account] = net
            posted_net[account] += net
        else:
            in_flight[account] += net
            in_flight_keys[account].append(key)
    rows: list[Any] = client.execute_bill_query(
        "GL_VOUCHER", ["FBillNo", "FEXPLANATION", "FACCOUNTID.FNumber", "FDEBIT", "FCREDIT", "FVOUCHERID"],
        f"FAccountBookID.FNumber = '{book}' and FYEAR = {start.year} and FPERIOD = {start.month}", limit=1_000_000)
    kingdee_net: dict[str, Decimal] = defaultdict(Decimal)
    kingdee_by_voucher: dict[str, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    bill_of: dict[str, str] = {}
    marker_of_id: dict[Any, str] = {}
    for bill, expl, account, debit, credit, vid in rows:
        m = _MARKER.search(str(expl or ""))
        if m:
            marker_of_id[vid] = m.group(1)
    for bill, expl, account, debit, credit, vid in rows:
        net = Decimal(str(debit or 0)) - Decimal(str(credit or 0))
        kingdee_net[str(account)] += net
        ident = marker_of_id.get(vid) or f"bill:{bill}"
        kingdee_by_voucher[ident][str(account)] += net
        bill_of[ident] = str(bill)
    missing = sorted(k for k in journal_by_voucher if k not in kingdee_by_voucher)
    unknown = sorted(f"{bill_of[k]} ({k})" for k in kingdee_by_voucher if k not in journal_by_voucher)
    mismatch = sorted(k for k in journal_by_voucher if k in kingdee_by_voucher
                      and {a: v for a, v in journal_by_voucher[k].items() if v} !=
                      {a: v for a, v in kingdee_by_voucher[k].items() if v})
    accounts = []
    for account in sorted(set(posted_net) | set(kingdee_net) | set(in_flight)):
        diff = AccountDiff(account, posted_net.get(account, ZERO) + in_flight.get(account, ZERO),
                           kingdee_net.get(account, ZERO), in_flight.get(account, ZERO))
        involved = [k for k in missing + mismatch if account in journal_by_voucher.get(k, {})]
        involved += [u for u in unknown if account in kingdee_by_voucher.get(u.split("(")[-1].rstrip(")"), {})]
        diff.vouchers = involved + [f"in-flight:{k}" for k in in_flight_keys.get(account, [])]
        accounts.append(diff)
    return Report(book, period, accounts, missing, unknown, mismatch)
