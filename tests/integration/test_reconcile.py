"""Reconciliation against the sandbox: a clean period, a voucher deleted in Kingdee, an altered journal amount,
a dimension re-booked behind the journal's back, source totals from a source database, reports and metrics."""

from __future__ import annotations

import uuid
from decimal import Decimal
from pathlib import Path

import httpx
import psycopg

from connector.journal import Journal
from connector.kingdee.poster import Poster
from connector.sandbox import start_sandbox
from connector.mapping import load_rules
from connector.ops import JournalBacklog
from connector.reconcile import reconcile, record, source_totals
from tests.integration.helpers import RULES, client_for, journal_vouchers, rows, tamper_lines


def test_reconcile_finds_deleted_and_altered_vouchers(pg_dsn: str) -> None:
    sb = start_sandbox(seed=4)
    journal = Journal(pg_dsn, group="reconcile")
    try:
        journal_vouchers(journal, 400, seed=14)
        with client_for(sb) as client:
            Poster(journal, client, books=load_rules(RULES).ledger.books).run(exit_when_idle=True)
            clean = reconcile(journal, client, book="001", period="2026-11")
            assert clean.accounts and not clean.flagged
            assert not (clean.missing_in_kingdee or clean.unknown_to_journal or clean.amount_mismatch)
            # 1) a voucher vanishes from Kingdee
            key, kid = rows(pg_dsn, "SELECT key, kingdee_id FROM kdcdc.vouchers WHERE book = '001' AND "
                                    "status = 'POSTED' ORDER BY key LIMIT 1")[0]
            deleted_lines = dict(rows(pg_dsn, "SELECT account, sum(CASE side WHEN 'debit' THEN amount ELSE -amount END) "
                                              "FROM kdcdc.entries WHERE voucher_key = %s GROUP BY 1", key))
            base = sb.url.replace("/k3cloud/", "")
            assert httpx.post(f"{base}/sandbox/admin/delete_voucher", json={"id": int(kid)}).json()["removed"]
            # 2) someone alters a journal amount behind the triggers' back
            other = rows(pg_dsn, "SELECT e.voucher_key, e.account, e.side FROM kdcdc.entries e JOIN kdcdc.vouchers v ON "
                                 "v.key = e.voucher_key WHERE v.book = '001' AND v.status = 'POSTED' AND v.key <> %s "
                                 "AND e.seq = 1 ORDER BY v.key LIMIT 1", key)[0]
            tamper_lines(pg_dsn, other[0], lambda lines: lines[0].__setitem__(2, str(Decimal(lines[0][2]) + 1)))
            report = reconcile(journal, client, book="001", period="2026-11")
        assert report.missing_in_kingdee == [key]
        assert report.amount_mismatch == [other[0]]
        flagged = {a.account: a for a in report.flagged}
        for account, net in deleted_lines.items():
            if net and account != other[1]:
                assert flagged[account].difference == net and key in flagged[account].vouchers
        altered = flagged[other[1]]
        change = Decimal(1) if other[2] == "debit" else Decimal(-1)  # +1.00 on a debit raises the net, on a credit lowers it
        assert altered.difference == deleted_lines.get(other[1], Decimal(0)) + change and other[0] in altered.vouchers
    finally:
        journal.close()
        sb.stop()


def test_reconcile_by_dimension_against_source_totals_with_report_and_metric(
        pg_dsn: str, pg_server_dsn: str, tmp_path: Path) -> None:
    sb = start_sandbox(seed=6)
    journal = Journal(pg_dsn, group="reconcile-dims")
    try:
        journal_vouchers(journal, 300, seed=21)
        with client_for(sb) as client:
            Poster(journal, client, books=load_rules(RULES).ledger.books).run(exit_when_idle=True)
            clean = reconcile(journal, client, book="001", period="2026-11", by_dimension=True)
            assert not clean.flagged and any("|FLEX" in a.account for a in clean.accounts)
            # Someone re-books a department in the journal: account totals still agree with Kingdee ...
            key, seq, account, dims = rows(
                pg_dsn, "SELECT e.voucher_key, e.seq, e.account, e.dimensions FROM kdcdc.entries e JOIN kdcdc.vouchers v "
                        "ON v.key = e.voucher_key WHERE v.book = '001' AND v.status = 'POSTED' AND "
                        "e.dimensions ? 'FLEX5' ORDER BY v.key, e.seq LIMIT 1")[0]
            moved = "D02" if dims["FLEX5"] != "D02" else "D03"
            tamper_lines(pg_dsn, key, lambda lines: lines[seq - 1][13].__setitem__("FLEX5", moved))
            per_account = reconcile(journal, client, book="001", period="2026-11")
            assert not per_account.flagged
            # ... but by dimension the two department lines of that account are flagged, and the voucher named.
            by_dim = reconcile(journal, client, book="001", period="2026-11", by_dimension=True)
            flagged = {a.account: a for a in by_dim.flagged}
            assert len(flagged) == 2 and all(a.startswith(f"{account}|") for a in flagged)
            assert sum((a.difference for a in flagged.values()), Decimal(0)) == 0
            assert key in by_dim.amount_mismatch

            # Source totals from the source database: one account's expected total is 5.00 higher.
            nets = {a.account: a.journal for a in per_account.accounts}
            target = sorted(nets)[0]
            src_db = f"src_{uuid.uuid4().hex[:6]}"
            with psycopg.connect(pg_server_dsn, autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {src_db}")
            src_dsn = pg_server_dsn.rsplit("/", 1)[0] + f"/{src_db}"
            with psycopg.connect(src_dsn, autocommit=True) as conn:
                conn.execute("CREATE TABLE expected (book text, period text, account text, net numeric)")
                for acct, net in nets.items():
                    conn.execute("INSERT INTO expected VALUES ('001', '2026-11', %s, %s)",
                                 (acct, net + (Decimal("5.00") if acct == target else 0)))
            query = "SELECT account, sum(net) FROM expected WHERE book = %(book)s AND period = %(period)s GROUP BY 1"
            with_source = reconcile(journal, client, book="001", period="2026-11",
                                    source=source_totals(src_dsn, query, book="001", period="2026-11"))
        assert [a.account for a in with_source.flagged] == [target]
        assert with_source.flagged[0].source_difference == Decimal("5.00")
        html = tmp_path / "recon.html"
        with_source.write_html(html)
        text = html.read_text()
        assert 'class="FLAGGED"' in text and target in text and "<th>source</th>" in text
        csv_file = tmp_path / "recon.csv"
        with_source.write_csv(csv_file)
        assert "FLAGGED" in csv_file.read_text()
        record(journal, clean)
        record(journal, with_source)  # the latest run per book is what the service exports
        metrics = {(s.name, tuple(s.labels.items())): s.value
                   for fam in JournalBacklog(pg_dsn).collect() for s in fam.samples}
        assert metrics[("kingdee_cdc_reconciliation_flagged_lines", (("book", "001"),))] == 1
        assert metrics[("kingdee_cdc_reconciliation_abs_difference", (("book", "001"),))] == 5.0
    finally:
        journal.close()
        sb.stop()


def test_reconcile_reports_keys_present_more_than_once(pg_dsn: str, tmp_path: Path) -> None:
    sb = start_sandbox(seed=8)
    journal = Journal(pg_dsn, group="reconcile-dups")
    try:
        journal_vouchers(journal, 200, seed=16)
        with client_for(sb) as client:
            Poster(journal, client, books=load_rules(RULES).ledger.books).run(exit_when_idle=True)
            assert not reconcile(journal, client, book="001", period="2026-11").is_flagged
            # The same voucher saved twice (a re-send after a late commit): one key, two Kingdee vouchers.
            key, kid, number = rows(pg_dsn, "SELECT key, kingdee_id, kingdee_number FROM kdcdc.vouchers WHERE "
                                            "book = '001' AND status = 'POSTED' ORDER BY key LIMIT 1")[0]
            base = sb.url.replace("/k3cloud/", "")
            copy = httpx.post(f"{base}/sandbox/admin/copy_voucher", json={"id": int(kid)}).json()
            report = reconcile(journal, client, book="001", period="2026-11")
        assert report.duplicated_in_kingdee == {key: [number, copy["number"]]}
        assert report.is_flagged and report.duplicate_lines() == [f"{key}: {number}, {copy['number']}"]
        assert report.as_json()["duplicated_in_kingdee"] == {key: [number, copy["number"]]}
        html = tmp_path / "recon.html"
        report.write_html(html)
        assert "Present more than once in Kingdee" in html.read_text() and copy["number"] in html.read_text()
        record(journal, report)
        flagged = rows(pg_dsn, "SELECT flagged, report->'duplicated_in_kingdee' FROM kdcdc.reconciliations "
                               "ORDER BY id DESC LIMIT 1")[0]
        assert flagged[0] == len(report.flagged) + 1 and key in flagged[1]
    finally:
        journal.close()
        sb.stop()
