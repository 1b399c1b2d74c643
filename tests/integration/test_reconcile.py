"""Reconciliation against the sandbox: a clean period, a voucher deleted in Kingdee, an altered journal amount."""

from __future__ import annotations

from decimal import Decimal

import httpx
import psycopg

from connector.journal import Journal
from connector.kingdee.poster import Poster
from connector.kingdee.sandbox import start_sandbox
from connector.mapping import load_rules
from connector.reconcile import reconcile
from tests.integration.helpers import rows
from tests.integration.test_poster import RULES, client_for, journal_vouchers


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
            with psycopg.connect(pg_dsn, autocommit=True) as conn:
                conn.execute("ALTER TABLE kdcdc.entries DISABLE TRIGGER entries_append_only")
                conn.execute("UPDATE kdcdc.entries SET amount = amount + 1 WHERE voucher_key = %s AND seq = 1",
                             (other[0],))
                conn.execute("ALTER TABLE kdcdc.entries ENABLE TRIGGER entries_append_only")
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
