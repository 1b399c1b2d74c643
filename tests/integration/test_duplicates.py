"""Vouchers Kingdee holds more than once (a save sent twice): the poster's duplicate scan deletes unaudited extra
copies and flags the rest, from its loop and as `kingdee-cdc scan-duplicates` — against the sandbox over HTTP and
a real journal."""

from __future__ import annotations

import subprocess
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client import CollectorRegistry

from connector.journal import Journal
from connector.kingdee.poster import FORM, Poster, PosterOptions
from connector.sandbox import RunningSandbox, SandboxState
from connector.mapping import load_rules
from connector.ops import Metrics
from tests.integration.helpers import CLI, RULES, client_for, journal_vouchers, keys_in_sandbox, rows, wait_for


def _admin(sb: RunningSandbox, op: str, **body: Any) -> dict[str, Any]:
    r = httpx.post(f"{sb.url.replace('/k3cloud/', '')}/sandbox/admin/{op}", json=body)
    r.raise_for_status()
    result: dict[str, Any] = r.json()
    return result


def _posted(pg_dsn: str, n: int) -> list[tuple[str, str, str]]:
    """(key, kingdee_id, number) of n posted vouchers."""
    return [(str(k), str(i), str(b)) for k, i, b in rows(
        pg_dsn, "SELECT key, kingdee_id, kingdee_number FROM kdcdc.vouchers WHERE status IN ('POSTED', 'REVERSED') "
                "ORDER BY key LIMIT %s", n)]


def _audit(pg_dsn: str) -> list[tuple[str, str, str]]:
    return [(str(a), str(k), str(d.get("kingdee_id"))) for a, k, d in rows(
        pg_dsn, "SELECT action, voucher_key, detail FROM kdcdc.audit WHERE starts_with(action, 'DUPLICATE_') ORDER BY id")]


def test_scan_deletes_unaudited_copies_and_flags_audited_ones(pg_dsn: str, sandbox: RunningSandbox) -> None:
    journal = Journal(pg_dsn, group="dup-scan")
    journal_vouchers(journal, 60, seed=31)
    with client_for(sandbox) as client:
        poster = Poster(journal, client, books=load_rules(RULES).ledger.books,
                        options=PosterOptions(duplicate_scan_every_s=0))
        poster.run(exit_when_idle=True)
        (ka, ida, na), (kb, idb, _), (kc, idc, _), (kd, idd, nd), (ke, ide, _) = _posted(pg_dsn, 5)
        # Extra copies, as a save sent twice leaves them: unaudited (A) and, after someone acted on them,
        # submitted (B) and audited (C); one whose lines someone changed; and for key e the journal's own
        # copy is the audited one while the extra copy is unaudited.
        copy_a = _admin(sandbox, "copy_voucher", id=int(ida))
        copy_b = _admin(sandbox, "copy_voucher", id=int(idb), status="B")
        copy_c = _admin(sandbox, "copy_voucher", id=int(idc), status="C")
        copy_d = _admin(sandbox, "copy_voucher", id=int(idd))
        with sandbox.server.state.lock:
            changed = sandbox.server.state.vouchers[copy_d["id"]]
            line = changed["model"]["FEntity"][0]
            line["FDEBIT"] = str(Decimal(str(line["FDEBIT"])) + 1)
            SandboxState._index(changed)
        client.submit(FORM, ids=[ide])
        client.audit(FORM, ids=[ide])
        copy_e = _admin(sandbox, "copy_voucher", id=int(ide))
        scan = poster.scan_duplicates()
        assert sorted((k, int(v)) for k, v, _ in scan.deleted) == sorted([(ka, copy_a["id"]), (ke, copy_e["id"])])
        flagged = {(k, int(v)): why for k, v, _, why in scan.flagged}
        assert set(flagged) == {(kb, copy_b["id"]), (kc, copy_c["id"]), (kd, copy_d["id"])}
        assert "document status B" in flagged[(kb, copy_b["id"])]
        assert "document status C" in flagged[(kc, copy_c["id"])]
        assert f"lines differ from the copy the journal recorded ({nd})" in flagged[(kd, copy_d["id"])]
        assert set(scan.duplicated) == {ka, kb, kc, kd, ke} and scan.open_copies == 3
        assert na in scan.duplicated[ka] and copy_a["number"] in scan.duplicated[ka]
        # Kingdee: the deleted copies are gone, the journal's copies and the flagged ones stay.
        in_kingdee = keys_in_sandbox(sandbox)
        assert in_kingdee[ka] == [int(ida)] and in_kingdee[ke] == [int(ide)]
        assert in_kingdee[kc] == [int(idc), copy_c["id"]] and len(in_kingdee[kb]) == len(in_kingdee[kd]) == 2
        assert sorted(rows(pg_dsn, "SELECT voucher_key, kingdee_id::int, state FROM kdcdc.duplicate_copies")) == sorted(
            [(ka, copy_a["id"], "DELETED"), (ke, copy_e["id"], "DELETED"), (kb, copy_b["id"], "NEEDS_HUMAN"),
             (kc, copy_c["id"], "NEEDS_HUMAN"), (kd, copy_d["id"], "NEEDS_HUMAN")])
        audit = _audit(pg_dsn)
        for key, copy in ((ka, copy_a), (ke, copy_e)):  # the intent, then the deletion
            assert [a for a, k, v in audit if k == key and v == str(copy["id"])] == ["DUPLICATE_FOUND",
                                                                                     "DUPLICATE_DELETED"]
        for key, copy in ((kb, copy_b), (kc, copy_c), (kd, copy_d)):
            assert [a for a, k, v in audit if k == key and v == str(copy["id"])] == ["DUPLICATE_FLAGGED"]
        # The journal still says what it said: the copies it recorded are untouched.
        assert {k: (s, i) for k, s, i in rows(pg_dsn, "SELECT key, status, kingdee_id FROM kdcdc.vouchers WHERE "
                                                      "key = ANY(%s)", [ka, kb, kc, kd, ke])} == {
            ka: ("POSTED", ida), kb: ("POSTED", idb), kc: ("POSTED", idc), kd: ("POSTED", idd), ke: ("POSTED", ide)}

        # Scanning again changes nothing and writes no new audit rows.
        again = poster.scan_duplicates()
        assert not again.deleted and not again.flagged and again.open_copies == 3 and set(again.duplicated) == {
            kb, kc, kd}
        assert _audit(pg_dsn) == audit
        # A person removes the audited copy (UnAudit, then Delete): the next scan notices.
        client.unaudit(FORM, ids=[str(copy_c["id"])])
        client.delete(FORM, ids=[str(copy_c["id"])])
        third = poster.scan_duplicates()
        assert third.open_copies == 2 and kc not in third.duplicated
        assert rows(pg_dsn, "SELECT state FROM kdcdc.duplicate_copies WHERE voucher_key = %s", kc) == [("RESOLVED",)]
        assert _audit(pg_dsn)[-1] == ("DUPLICATE_RESOLVED", kc, str(copy_c["id"]))
        assert rows(pg_dsn, "SELECT count(*), sum(deleted), max(flagged) FROM kdcdc.duplicate_scans")[0] == (3, 2, 3)
    journal.close()


def test_poster_loop_scans_for_duplicates_and_counts_them(pg_dsn: str, sandbox: RunningSandbox) -> None:
    journal = Journal(pg_dsn, group="dup-loop")
    journal_vouchers(journal, 40, seed=32)
    metrics = Metrics(CollectorRegistry())
    with client_for(sandbox) as client:
        poster = Poster(journal, client, books=load_rules(RULES).ledger.books, metrics=metrics,
                        options=PosterOptions(duplicate_scan_every_s=0.3))
        worker = threading.Thread(target=poster.run, kwargs={"idle_sleep_s": 0.05}, daemon=True)
        worker.start()
        try:
            wait_for(lambda: len(sandbox.server.state.vouchers) == 40 and rows(
                pg_dsn, "SELECT count(*) FROM kdcdc.vouchers WHERE status IN ('JOURNALED', 'POSTING')")[0][0] == 0,
                60, "the 40 vouchers posted (all in the sandbox, none left JOURNALED or POSTING)")
            (ka, ida, _), (kc, idc, _) = _posted(pg_dsn, 2)
            copy_a = _admin(sandbox, "copy_voucher", id=int(ida))
            copy_c = _admin(sandbox, "copy_voucher", id=int(idc), status="C")
            wait_for(lambda: copy_a["id"] not in sandbox.server.state.vouchers, 60,
                     "the poster loop's duplicate scan to delete the unaudited copy")
            wait_for(lambda: rows(pg_dsn, "SELECT count(*) FROM kdcdc.duplicate_copies WHERE state = 'NEEDS_HUMAN'")
                     [0][0] == 1, 60, "the poster loop's duplicate scan to flag the audited copy (NEEDS_HUMAN)")
        finally:
            poster.stop()
            worker.join(30)
    journal.close()
    assert copy_c["id"] in sandbox.server.state.vouchers
    value = metrics.registry.get_sample_value
    assert value("kingdee_cdc_kingdee_duplicates_total", {"action": "deleted"}) == 1
    assert value("kingdee_cdc_kingdee_duplicates_total", {"action": "flagged"}) == 1
    assert value("kingdee_cdc_kingdee_duplicates_open") == 1
    assert [a for a, k, _ in _audit(pg_dsn) if k == kc] == ["DUPLICATE_FLAGGED"]


def test_scan_duplicates_command(pg_dsn: str, sandbox: RunningSandbox, tmp_path: Path) -> None:
    journal = Journal(pg_dsn, group="dup-cli")
    journal_vouchers(journal, 30, seed=33)
    with client_for(sandbox) as client:
        Poster(journal, client, books=load_rules(RULES).ledger.books).run(exit_when_idle=True)
    journal.close()
    (ka, ida, _), (kc, idc, _) = _posted(pg_dsn, 2)
    copy_a = _admin(sandbox, "copy_voucher", id=int(ida))
    copy_c = _admin(sandbox, "copy_voucher", id=int(idc), status="C")
    cfg = sandbox.server.state.config
    app_id = next(iter(cfg.apps))
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "journal": {"dsn": pg_dsn}, "mapping": {"rules_dir": str(RULES)},
        "kingdee": {"server_url": sandbox.url, "acct_id": cfg.data_centre, "username": "integration",
                    "app_id": app_id, "app_secret": cfg.apps[app_id]["secret"]}}))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([CLI, "scan-duplicates", "-c", str(config), *args],
                              capture_output=True, text=True, timeout=120)
    flag_only = cli("--flag-only")
    assert flag_only.returncode == 1, flag_only.stdout + flag_only.stderr
    assert "2 keys held more than once" in flag_only.stdout and "kingdee.delete_duplicates is off" in flag_only.stdout
    assert copy_a["id"] in sandbox.server.state.vouchers
    done = cli()
    assert done.returncode == 1, done.stdout + done.stderr  # the audited copy still waits for a person
    assert f"deleted  {copy_a['number']} (id {copy_a['id']}), an extra copy of {ka}" in done.stdout
    assert "1 extra copies wait for a person" in done.stdout
    assert copy_a["id"] not in sandbox.server.state.vouchers and copy_c["id"] in sandbox.server.state.vouchers
    bad = cli("--period", "2026-13-01")
    assert bad.returncode == 2 and "--period must be YYYY-MM" in bad.stderr
