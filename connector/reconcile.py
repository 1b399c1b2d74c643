"""Reconciliation: does Kingdee hold what the journal says was posted, per account, for a book and period?

Compares, per account, the net (debit − credit, local currency) of the journal's vouchers that reached
Kingdee (POSTED / REVERSED) with the net of the vouchers Kingdee returns through ExecuteBillQuery, and
matches vouchers by their ``[kdcdc:<key>]`` marker to name the ones involved: missing in Kingdee, unknown
to the journal, with different amounts, or held by Kingdee more than once (the same key on several vouchers:
a save that was sent twice). Differences fully explained by in-flight vouchers (JOURNALED / POSTING in the
period, within ``tolerance``) are marked as such; anything else is flagged, and so is any duplicated key.

``by_dimension`` splits every account by its auxiliary dimensions (``FLEX5=D01,FLEX9=TRAVEL``).
``source`` adds a third column: totals the operator computes from the source database with their own SQL
(see ``source_totals``) — rows rejected by mapping show up there as differences. Each run can be recorded
in the journal (``record``), which the service exports as ``kingdee_cdc_reconciliation_*`` metrics.
"""

from __future__ import annotations

import csv
import enum
import json
import re
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

from connector.journal import IN_KINGDEE, UNSETTLED, Journal, summary_differences
from connector.kingdee import KingdeeClient
from connector.ledger import Side

_MARKER = re.compile(r"\[kdcdc:([0-9a-f]{8,64})\]")
ZERO = Decimal(0)


class LineStatus(enum.StrEnum):
    """How a reconciled line stands."""

    OK = "ok"
    IN_FLIGHT = "in-flight"  #: the difference is vouchers still being posted
    FLAGGED = "FLAGGED"


@dataclass(slots=True)
class AccountDiff:
    account: str  #: account number, or ``account|FLEX5=D01,…`` when reconciling by dimension
    journal: Decimal
    kingdee: Decimal
    in_flight: Decimal = ZERO
    vouchers: list[str] = field(default_factory=list)  # keys / bill numbers involved
    source: Decimal | None = None  #: from the source database query, when given
    tolerance: Decimal = ZERO

    @property
    def difference(self) -> Decimal:
        return self.journal - self.kingdee

    @property
    def source_difference(self) -> Decimal:
        return ZERO if self.source is None else self.source - self.journal

    @property
    def explained(self) -> bool:
        kingdee_ok = abs(self.difference - self.in_flight) <= self.tolerance or self.difference == ZERO
        return kingdee_ok and abs(self.source_difference) <= self.tolerance

    @property
    def status(self) -> LineStatus:
        if self.difference == ZERO and self.source_difference == ZERO:
            return LineStatus.OK
        if self.explained:
            return LineStatus.IN_FLIGHT if self.in_flight else LineStatus.OK
        return LineStatus.FLAGGED


@dataclass(slots=True)
class Report:
    book: str
    period: str
    accounts: list[AccountDiff]
    missing_in_kingdee: list[str]
    unknown_to_journal: list[str]
    amount_mismatch: list[str]
    by_dimension: bool = False
    with_source: bool = False
    #: keys Kingdee holds on more than one voucher → the bill numbers (FBillNo) of every copy
    duplicated_in_kingdee: dict[str, list[str]] = field(default_factory=dict)
    #: summary voucher lines that are not the sum of their contributions (汇总凭证 ≠ its source rows)
    summary_mismatch: list[str] = field(default_factory=list)

    @property
    def flagged(self) -> list[AccountDiff]:
        return [a for a in self.accounts if not a.explained]

    @property
    def is_flagged(self) -> bool:
        """Unexplained differences on any line, a key present more than once in Kingdee, or a summary voucher
        that is not the sum of its source rows."""
        return bool(self.flagged or self.duplicated_in_kingdee or self.summary_mismatch)

    def duplicate_lines(self) -> list[str]:
        """``<key>: <bill number>, <bill number>…`` per key held more than once."""
        return [f"{k}: {', '.join(bills)}" for k, bills in sorted(self.duplicated_in_kingdee.items())]

    def write_csv(self, path: Path) -> None:
        with path.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["book", "period", "account", "dimensions", "source_net", "journal_net", "kingdee_net",
                        "difference", "in_flight", "status", "vouchers"])
            for a in self.accounts:
                account, _, dims = a.account.partition("|")
                w.writerow([self.book, self.period, account, dims, "" if a.source is None else a.source, a.journal,
                            a.kingdee, a.difference, a.in_flight, a.status, " ".join(a.vouchers)])

    def write_html(self, path: Path) -> None:
        from jinja2 import Environment

        env = Environment(autoescape=True)
        path.write_text(env.from_string(_HTML).render(r=self, flagged=len(self.flagged)), encoding="utf-8")

    def as_json(self) -> dict[str, Any]:
        return {"book": self.book, "period": self.period, "flagged": [
            {"line": a.account, "journal": str(a.journal), "kingdee": str(a.kingdee),
             "source": None if a.source is None else str(a.source), "in_flight": str(a.in_flight),
             "vouchers": a.vouchers[:20]} for a in self.flagged],
            "missing_in_kingdee": self.missing_in_kingdee[:100], "unknown_to_journal": self.unknown_to_journal[:100],
            "amount_mismatch": self.amount_mismatch[:100],
            "duplicated_in_kingdee": dict(sorted(self.duplicated_in_kingdee.items())[:100]),
            "summary_mismatch": self.summary_mismatch[:100]}


_HTML: Final = """<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8"><title>Reconciliation {{ r.book }} {{ r.period }}</title>
<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;
padding:.3em .6em}td.n{text-align:right;font-variant-numeric:tabular-nums}tr.FLAGGED{background:#fdd}
tr.in-flight{background:#ffd}</style></head><body>
<h1>Reconciliation — book {{ r.book }}, period {{ r.period }}</h1>
<p>{{ r.accounts|length }} lines{% if r.by_dimension %} (by account and dimension){% endif %};
<strong>{{ flagged }} flagged</strong>{% if r.duplicated_in_kingdee %};
<strong>{{ r.duplicated_in_kingdee|length }} keys present more than once in Kingdee</strong>{% endif %}.</p>
<table><tr><th>account</th><th>dimensions</th>{% if r.with_source %}<th>source</th>{% endif %}<th>journal</th>
<th>Kingdee</th><th>difference</th><th>in flight</th><th>status</th><th>vouchers involved</th></tr>
{% for a in r.accounts %}{% set acct, _, dims = a.account.partition("|") %}<tr class="{{ a.status }}">
<td>{{ acct }}</td><td>{{ dims }}</td>{% if r.with_source %}<td class="n">{{ a.source if a.source is not none else "" }}</td>{% endif %}
<td class="n">{{ a.journal }}</td><td class="n">{{ a.kingdee }}</td><td class="n">{{ a.difference }}</td>
<td class="n">{{ a.in_flight }}</td><td>{{ a.status }}</td><td>{{ a.vouchers[:10]|join(" ") }}</td></tr>
{% endfor %}</table>
{% for title, items in [("Missing in Kingdee", r.missing_in_kingdee), ("Unknown to the journal", r.unknown_to_journal),
                        ("Different amounts", r.amount_mismatch),
                        ("Present more than once in Kingdee", r.duplicate_lines()),
                        ("Summary vouchers that are not the sum of their source rows", r.summary_mismatch)] %}{% if items %}
<h2>{{ title }}</h2><ul>{% for i in items %}<li><code>{{ i }}</code></li>{% endfor %}</ul>{% endif %}{% endfor %}
</body></html>
"""


def _dims(dimensions: str | Mapping[str, object] | None) -> str:
    """``FLEX5=D01,FLEX9=TRAVEL``: an entry's dimensions (jsonb, or its text) without the empty ones."""
    values: Mapping[str, object] = (json.loads(dimensions or "{}") if isinstance(dimensions, str)
                                    else dimensions or {})
    return ",".join(f"{k}={v}" for k, v in sorted(values.items()) if v not in (None, ""))


def source_totals(dsn: str, query: str, *, book: str, period: str) -> dict[str, Decimal]:
    """Run the operator's SQL against the source database: rows of ``(account, net)`` or
    ``(account, dimensions, net)`` where ``net`` is debit − credit in local currency and ``dimensions``
    is ``FLEX5=D01,FLEX9=TRAVEL`` style text. Parameters: ``%(book)s``, ``%(period)s``,
    ``%(period_start)s``, ``%(period_end)s`` (end exclusive)."""
    import psycopg

    start, end = _period(period)
    out: dict[str, Decimal] = defaultdict(Decimal)
    with psycopg.connect(dsn) as conn:
        cur = conn.execute(query.encode(), {"book": book, "period": period, "period_start": start,
                                            "period_end": end})
        for row in cur.fetchall():
            if len(row) == 2:
                key = str(row[0])
            elif len(row) == 3:
                key = f"{row[0]}|{row[1] or ''}" if row[1] else str(row[0])
            else:
                raise ValueError(f"the source query must return (account, net) or (account, dimensions, net); "
                                 f"got {len(row)} columns")
            out[key] += Decimal(str(row[-1] or 0))
    return dict(out)


def _period(period: str) -> tuple[date, date]:
    y, m = (int(x) for x in period.split("-"))
    start = date(y, m, 1)
    end = date(y + (m == 12), m % 12 + 1, 1)
    return start, end


@dataclass(frozen=True, slots=True)
class _JournalLine:
    """A voucher's net on one account and dimension set, from the journal."""

    key: str
    status: str
    account: str
    dimensions: str | Mapping[str, object] | None
    net: Decimal


@dataclass(slots=True)
class _JournalSide:
    """The journal's side of a period: nets of what reached Kingdee, and what is still being posted."""

    by_voucher: dict[str, dict[str, Decimal]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(Decimal)))
    posted: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    in_flight: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    in_flight_keys: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    slots: set[str] = field(default_factory=set)  #: dimension slots used


@dataclass(slots=True)
class _KingdeeSide:
    """Kingdee's side of a period: nets per line and per voucher (by key marker, else by bill number)."""

    net: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    by_voucher: dict[str, dict[str, Decimal]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(Decimal)))
    bill_of: dict[str, str] = field(default_factory=dict)
    copies: dict[str, dict[str, str]] = field(default_factory=lambda: defaultdict(dict))  #: key → id → bill number


def _journal_side(journal: Journal, book: str, start: date, end: date, by_dimension: bool) -> _JournalSide:
    side = _JournalSide()
    lines = journal.rows(_JournalLine, journal.q(
        "SELECT v.key, v.status, e.account, e.dimensions, "
        "sum(CASE e.side WHEN {debit} THEN e.amount ELSE -e.amount END) AS net "
        "FROM {s}.vouchers v JOIN {s}.entries e ON e.voucher_key = v.key "
        "WHERE v.book = %s AND v.voucher_date >= %s AND v.voucher_date < %s "
        "AND v.status IN ({counted}) GROUP BY 1, 2, 3, 4", debit=Side.DEBIT, counted=(*IN_KINGDEE, *UNSETTLED)),
        (book, start, end))
    for r in lines:
        dim_text = _dims(r.dimensions)
        side.slots |= {d.split("=", 1)[0] for d in dim_text.split(",") if d}
        line = f"{r.account}|{dim_text}" if by_dimension and dim_text else str(r.account)
        if r.status in IN_KINGDEE:
            side.by_voucher[r.key][line] += r.net
            side.posted[line] += r.net
        else:
            side.in_flight[line] += r.net
            side.in_flight_keys[line].append(r.key)
    return side


def _kingdee_side(client: KingdeeClient, book: str, start: date, slots: list[str], by_dimension: bool
                  ) -> _KingdeeSide:
    side = _KingdeeSide()
    fields = ["FBillNo", "FEXPLANATION", "FACCOUNTID.FNumber", "FDEBIT", "FCREDIT", "FVOUCHERID"]
    fields += [f"FDetailID.F{s_}.FNumber" if s_.startswith("FLEX") else f"FDetailID.{s_}.FNumber" for s_ in slots]
    rows = client.execute_bill_query(
        "GL_VOUCHER", fields,
        f"FAccountBookID.FNumber = '{book}' and FYEAR = {start.year} and FPERIOD = {start.month}", limit=1_000_000)
    marker_of_id: dict[Any, str] = {}
    for row in rows:
        m = _MARKER.search(str(row[1] or ""))
        if m:
            marker_of_id[row[5]] = m.group(1)
            side.copies[m.group(1)][str(row[5])] = str(row[0])
    for row in rows:
        bill, _, account, debit, credit, vid = row[:6]
        net = Decimal(str(debit or 0)) - Decimal(str(credit or 0))
        dim_text = ",".join(f"{s_}={v}" for s_, v in zip(slots, row[6:]) if v not in (None, ""))
        line = f"{account}|{dim_text}" if by_dimension and dim_text else str(account)
        side.net[line] += net
        ident = marker_of_id.get(vid) or f"bill:{bill}"
        side.by_voucher[ident][line] += net
        side.bill_of[ident] = str(bill)
    return side


def reconcile(journal: Journal, client: KingdeeClient, *, book: str, period: str, by_dimension: bool = False,
              tolerance: Decimal = ZERO, source: Mapping[str, Decimal] | None = None) -> Report:
    start, end = _period(period)
    js = _journal_side(journal, book, start, end, by_dimension)
    slot_list = sorted(js.slots) if by_dimension else []
    ks = _kingdee_side(client, book, start, slot_list, by_dimension)

    def nonzero(d: Mapping[str, Decimal]) -> dict[str, Decimal]:
        return {a: v for a, v in d.items() if v}
    missing = sorted(k for k in js.by_voucher if k not in ks.by_voucher)
    unknown = sorted(f"{ks.bill_of[k]} ({k})" for k in ks.by_voucher if k not in js.by_voucher)
    mismatch = sorted(k for k in js.by_voucher if k in ks.by_voucher
                      and nonzero(js.by_voucher[k]) != nonzero(ks.by_voucher[k]))
    accounts = []
    src = dict(source or {})
    for line in sorted(set(js.posted) | set(ks.net) | set(js.in_flight) | set(src)):
        diff = AccountDiff(line, js.posted.get(line, ZERO) + js.in_flight.get(line, ZERO),
                           ks.net.get(line, ZERO), js.in_flight.get(line, ZERO),
                           source=src.get(line, ZERO) if source is not None else None, tolerance=tolerance)
        involved = [k for k in missing + mismatch if line in js.by_voucher.get(k, {})]
        involved += [u for u in unknown if line in ks.by_voucher.get(u.split("(")[-1].rstrip(")"), {})]
        diff.vouchers = involved + [f"in-flight:{k}" for k in js.in_flight_keys.get(line, [])]
        accounts.append(diff)
    duplicated = {k: [bills[v] for v in sorted(bills, key=lambda x: (len(x), x))]
                  for k, bills in ks.copies.items() if len(bills) > 1}
    summaries = [f"summary {d.summary_id} ({d.voucher_key}): {d.account} {d.side} {d.currency} contributions "
                 f"{d.contributions} ≠ summary voucher {d.summary}"
                 for d in summary_differences(journal, book=book, start=start, end=end)]
    return Report(book, period, accounts, missing, unknown, mismatch, by_dimension=by_dimension,
                  with_source=source is not None, duplicated_in_kingdee=duplicated, summary_mismatch=summaries)


def record(journal: Journal, report: Report) -> None:
    """Keep the run in the journal: the service exports the latest one per book as metrics. ``flagged``
    counts the flagged lines plus the keys Kingdee holds more than once."""
    total = sum((abs(a.difference) + abs(a.source_difference) for a in report.flagged), ZERO)
    with journal.transaction() as conn:
        conn.execute(journal.q(
            "INSERT INTO {s}.reconciliations (book, period, by_dimension, with_source, lines, flagged, "
            "abs_difference, report) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"),
            (report.book, report.period, report.by_dimension, report.with_source, len(report.accounts),
             len(report.flagged) + len(report.duplicated_in_kingdee) + len(report.summary_mismatch), total,
             json.dumps(report.as_json(), ensure_ascii=False)))
