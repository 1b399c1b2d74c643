"""Vouchers Kingdee refused, sent again after the cause is fixed in Kingdee (`kingdee-cdc vouchers refused` /
`vouchers resend`): against a sandbox with a closed period, over HTTP, and a real journal."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import yaml

from connector.journal import Journal
from connector.kingdee.poster import Poster
from connector.mapping import load_rules
from connector.resend import list_refused, resend
from connector.sandbox import DEFAULT_CONFIG, SandboxConfig, start_sandbox
from tests.integration.helpers import CLI, RULES, client_for, journal_vouchers, keys_in_sandbox, rows


def test_refused_vouchers_post_once_the_period_is_reopened_and_reversed_ones_never(pg_dsn: str,
                                                                                   tmp_path: Path) -> None:
    cfg = SandboxConfig.load(DEFAULT_CONFIG)
    book = cfg.books["002"]
    cfg.books["002"] = replace(book, closed_periods=book.closed_periods | {"2026-11"})  # closed in Kingdee
    sb = start_sandbox(cfg, seed=4)
    try:
        journal = Journal(pg_dsn, group="resend")
        journal_vouchers(journal, 400, seed=8)
        books = load_rules(RULES).ledger.books
        with client_for(sb) as client:
            Poster(journal, client, books=books).run(exit_when_idle=True)
        refused = list_refused(journal, limit=10_000)
        assert refused and {r.book for r in refused} == {"002"}
        for r in refused:  # the period was closed; a reversal of a refused voucher had nothing to reverse
            assert ("nothing to reverse" if r.original_status == "REJECTED_BY_KINGDEE" else "已结账") in (
                r.kingdee_messages or ""), r
        # Changes to a row after Kingdee refused its voucher: the reversal had nothing to reverse, so the
        # original must never be sent again; the reversal itself neither.
        blocked = {r.key: r.blocked for r in refused if r.blocked}
        sendable = [r.key for r in refused if not r.blocked]
        assert sendable and any("reversed after Kingdee refused it" in why for why in blocked.values())
        assert any("nothing in Kingdee to reverse" in why for why in blocked.values())
        posted = {r.key for r in journal.rows(_Key, journal.q("SELECT key FROM {s}.vouchers WHERE status = 'POSTED'"))}

        # Sent again too early (the period still closed): refused again, and its source system hears it again.
        first = sendable[0]
        assert resend(journal, [first], actor="test").resent == [first]
        with client_for(sb) as client:
            Poster(journal, client, books=books).run(exit_when_idle=True)
        assert rows(pg_dsn, "SELECT status FROM kdcdc.vouchers WHERE key = %s", first) == [("REJECTED_BY_KINGDEE",)]
        told = rows(pg_dsn, "SELECT event_id FROM kdcdc.outbox WHERE status = 'REJECTED_BY_KINGDEE' "
                            "AND payload->>'voucher_key' = %s ORDER BY id", first)
        assert len(told) == 2 and len({e for (e,) in told}) == 2, told

        # The accountant reopens the period in Kingdee, lists what was refused and sends it again.
        sb.server.state.config.books["002"] = book
        app_id = next(iter(cfg.apps))
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump({
            "journal": {"dsn": pg_dsn}, "mapping": {"rules_dir": str(RULES)},
            "kingdee": {"server_url": sb.url, "acct_id": cfg.data_centre, "username": "integration",
                        "app_id": app_id, "app_secret": cfg.apps[app_id]["secret"]}}))

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([CLI, "vouchers", *args, "-c", str(config)], capture_output=True, text=True,
                                  timeout=120)
        listed = cli("refused", "--book", "002", "--limit", "10000")
        assert listed.returncode == 0, listed.stderr
        assert f"{len(refused)} vouchers refused by Kingdee" in listed.stdout and "已结账" in listed.stdout
        assert listed.stdout.count("not sent again:") == len(blocked)
        dry = cli("resend", "--all", "--dry-run")
        assert dry.returncode == 0 and f"{len(sendable)} voucher(s) would go back" in dry.stdout, dry.stdout
        assert rows(pg_dsn, "SELECT count(*) FROM kdcdc.vouchers WHERE status = 'REJECTED_BY_KINGDEE'") == [
            (len(refused),)]
        # Naming a blocked one, or a posted one, says why and exits 1; nothing changes for them.
        some_blocked, some_posted = next(iter(blocked)), next(iter(posted))
        named = cli("resend", some_blocked, some_posted)
        assert named.returncode == 1 and f"not sent {some_blocked}: " in named.stdout
        assert f"not sent {some_posted}: it is POSTED" in named.stdout
        done = cli("resend", "--all")
        assert done.returncode == 0 and f"{len(sendable)} voucher(s) went back" in done.stdout, done.stdout
        with client_for(sb) as client:
            Poster(journal, client, books=books).run(exit_when_idle=True)
        # Each sent-again voucher is in Kingdee exactly once, POSTED with its number, its source told so; the
        # blocked ones stay refused and out of Kingdee; every re-send is audited with Kingdee's earlier message.
        in_kingdee = keys_in_sandbox(sb)
        assert all(len(in_kingdee.get(k, [])) == 1 for k in sendable)
        assert not any(k in in_kingdee for k in blocked)
        assert all(len(ids) == 1 for ids in in_kingdee.values())
        status = dict(rows(pg_dsn, "SELECT key, status FROM kdcdc.vouchers WHERE key = ANY(%s)",
                           sendable + list(blocked)))
        assert {status[k] for k in sendable} <= {"POSTED", "REVERSED"} and {status[k] for k in blocked} == {
            "REJECTED_BY_KINGDEE"}
        assert rows(pg_dsn, "SELECT count(*) FROM kdcdc.outbox WHERE status = 'POSTED' AND payload->>'voucher_key' = "
                            "ANY(%s)", sendable) == [(len(sendable),)]
        audit = rows(pg_dsn, "SELECT voucher_key, actor, detail FROM kdcdc.audit WHERE action = 'VOUCHER_RESENT' "
                            "ORDER BY id")
        assert sorted(k for k, _, _ in audit) == sorted([first, *sendable])
        assert audit[0][1] == "test" and all(a.startswith("cli:") for _, a, _ in audit[1:])
        assert all("已结账" in detail["kingdee_messages"] for _, _, detail in audit)
        assert all(r.kind != "reversal" or r.original_status != "REJECTED_BY_KINGDEE" for r in refused
                   if r.key in sendable)
        # Sending again what is posted now changes nothing.
        again = resend(journal, sendable, actor="test")
        assert again.resent == [] and set(again.refused) == set(sendable)
        journal.close()
    finally:
        sb.stop()


class _Key:
    def __init__(self, key: str) -> None:
        self.key = key
