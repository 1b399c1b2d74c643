"""The poster against the sandbox over real HTTP, with a real journal: faults, rejections, ordering."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx
import pytest

from connector.events import KafkaCoordinates
from connector.journal import EventRecord, Journal, Outcome
from connector.kingdee import KingdeeClient
from connector.kingdee.poster import FORM, Poster, PosterOptions
from connector.sandbox import DEFAULT_CONFIG, RunningSandbox, SandboxConfig, start_sandbox
from connector.mapping import load_rules
from tests.integration.helpers import RULES, client_for, journal_vouchers, keys_in_sandbox, rows

#: A slow Kingdee: writes arriving in 75 ms of every 250 ms wait 1.5 s before committing, then answer — after a
#: client with a 1 s timeout has given up. The grace period must outlast that (the sandbox's "request limit").
#: Windows this short and frequent are hit by any posting that lasts a quarter of a second, however fast the
#: poster (with 0.3 s of every second, a poster that finished 1,500 vouchers in under 0.7 s could miss them all).
LATE_COMMITS: Mapping[str, float] = {"slow_ms": 1500, "slow_every_s": 0.25, "slow_for_s": 0.075}
LATE_TIMEOUT_S = 1.0
LATE_GRACE_S = 2.5


def assert_exactly_once(pg_dsn: str, sb: RunningSandbox, n: int) -> dict[str, int]:
    """Every journaled key is in the sandbox exactly once, and the journal holds the sandbox's own id and number."""
    in_kingdee = keys_in_sandbox(sb)
    twice = {k: v for k, v in in_kingdee.items() if len(v) > 1}
    assert not twice, f"{len(twice)} keys are in Kingdee more than once, e.g. {list(twice.items())[:3]}"
    assert len(in_kingdee) == n
    statuses = dict(rows(pg_dsn, "SELECT status, count(*) FROM kdcdc.vouchers GROUP BY 1"))
    assert set(statuses) <= {"POSTED", "REVERSED"} and sum(statuses.values()) == n, statuses
    for key, kid, number in rows(pg_dsn, "SELECT key, kingdee_id, kingdee_number FROM kdcdc.vouchers"):
        assert [int(kid)] == in_kingdee[key]
        assert number == sb.server.state.vouchers[int(kid)]["FBillNo"]
    return {str(k): int(v) for k, v in statuses.items()}


def assert_reversals_first_and_named(pg_dsn: str, sb: RunningSandbox) -> int:
    """A correction's reversal is saved before its repost, and every line says 冲销 <the original's number>."""
    pairs = rows(pg_dsn, "SELECT r.key, r.kingdee_id, p.kingdee_id, o.kingdee_number FROM kdcdc.vouchers r "
                         "JOIN kdcdc.vouchers o ON o.key = r.reverses "
                         "JOIN kdcdc.vouchers p ON p.kind <> 'reversal' AND p.source_system = r.source_system "
                         "AND p.source_table = r.source_table AND p.source_pk = r.source_pk "
                         "AND p.source_position = r.source_position AND p.source_op = r.source_op "
                         "WHERE r.kind = 'reversal'")
    assert pairs, "the sample stream has corrections (reversal + repost)"
    late = [(k, rid, pid) for k, rid, pid, _ in pairs if int(rid) > int(pid)]
    assert not late, f"{len(late)} reposts reached Kingdee before their reversal, e.g. {late[:3]}"
    for key, rid, _, number in pairs:
        rec = sb.server.state.vouchers[int(rid)]
        assert number and rec["FBillNo"] > "" and number != rec["FBillNo"]
        texts = [e["FEXPLANATION"] for e in rec["model"]["FEntity"]]
        assert all(t.startswith(f"冲销 {number} ") and len(t) <= 500 for t in texts), (key, texts)
        assert texts[0].endswith(f"[kdcdc:{key}]")
    reversals = rows(pg_dsn, "SELECT r.kingdee_id, o.kingdee_number FROM kdcdc.vouchers r JOIN kdcdc.vouchers o "
                             "ON o.key = r.reverses WHERE r.kind = 'reversal'")
    for rid, number in reversals:  # deletes too (a reversal without a repost)
        expl = sb.server.state.vouchers[int(rid)]["model"]["FEntity"][0]["FEXPLANATION"]
        assert expl.startswith(f"冲销 {number} ")
    return len(pairs)


def post_through_late_commits(pg_dsn: str, sb: RunningSandbox, make_poster: Callable[[Journal, KingdeeClient], Any],
                              n: int = 1500) -> tuple[int, Any, float]:
    """Journal ``n`` vouchers and post them through a sandbox with late commits (the test below; also run once
    against the previous poster to show it saved vouchers twice). Returns (n, the poster's stats, seconds)."""
    journal = Journal(pg_dsn, group="late-commits")
    n = journal_vouchers(journal, n, seed=12)
    sb.server.state.config.faults.update(LATE_COMMITS)
    try:
        with client_for(sb, timeout_s=LATE_TIMEOUT_S) as client:
            poster = make_poster(journal, client)
            started = time.monotonic()
            stats = poster.run(idle_sleep_s=0.1, exit_when_idle=True)
            return n, stats, time.monotonic() - started
    finally:
        sb.server.state.config.faults.update({k: 0 for k in LATE_COMMITS})
        journal.close()


def test_late_commits_of_a_slow_kingdee_are_not_sent_twice(
        pg_dsn: str, sandbox: RunningSandbox, capsys: pytest.CaptureFixture[str]) -> None:
    """Kingdee commits a save after the client timed out: looking it up at once finds nothing and a re-send makes
    a second copy. The poster waits for the grace period before it looks, and never re-sends before that."""
    books = load_rules(RULES).ledger.books
    n, stats, elapsed = post_through_late_commits(pg_dsn, sandbox, lambda journal, client: Poster(
        journal, client, books=books, options=PosterOptions(batch_size=20, unknown_grace_s=LATE_GRACE_S,
                                                            lease_s=30, duplicate_scan_every_s=0)))
    late = sandbox.server.state.late_commits
    statuses = assert_exactly_once(pg_dsn, sandbox, n)
    corrections = assert_reversals_first_and_named(pg_dsn, sandbox)
    # The fault really bit: calls timed out, their vouchers were saved late and found by key after the grace.
    assert late > 5 and stats.ambiguous_calls > 5 and stats.unknown > 50 and stats.found_after_timeout > 0
    assert stats.needs_attention == 0 and stats.taken_over == 0
    audit = dict(rows(pg_dsn, "SELECT action, count(*) FROM kdcdc.audit WHERE actor = 'poster' GROUP BY 1"))
    assert audit["OUTCOME_UNKNOWN"] == stats.unknown
    with capsys.disabled():
        print(f"\n[late commits] {n} vouchers in {elapsed:.1f}s; {late} writes committed late, "
              f"{stats.ambiguous_calls} calls timed out ({stats.unknown} vouchers unknown), "
              f"{stats.found_after_timeout} found by key after the grace, {corrections} corrections in order, "
              f"statuses {statuses}")


class _Crash(Exception):
    """The poster process dies: its claimed vouchers stay POSTING, its calls in flight still reach Kingdee."""


class _DyingPoster(Poster):
    def __init__(self, *args: Any, die_after: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.die_after = die_after

    def _record(self, outcomes: Sequence[Any], claimed: Mapping[str, Any]) -> None:
        self.die_after -= 1
        if self.die_after < 0:
            raise _Crash("killed before recording what it posted")
        super()._record(outcomes, claimed)


def test_ten_thousand_vouchers_exactly_once_through_faults(
        pg_dsn: str, sandbox: RunningSandbox, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    journal = Journal(pg_dsn, group="poster-test")
    n = journal_vouchers(journal, 10_000)
    sandbox.server.state.config.faults.update({"timeout_after_commit_rate": 0.05, "http_5xx_rate": 0.02,
                                               "session_ttl_s": 2.0, "slow_ms": 1500, "slow_every_s": 3.0,
                                               "slow_for_s": 0.1})
    books = load_rules(RULES).ledger.books
    options = PosterOptions(batch_size=50, claim_limit=1000, lease_s=5.0, unknown_grace_s=LATE_GRACE_S,
                            duplicate_scan_every_s=0)
    started = time.monotonic()
    with client_for(sandbox, timeout_s=LATE_TIMEOUT_S) as client:
        # A first poster dies in its first round, after recording two batches: the others stay POSTING while its
        # calls in flight (some of them slow) still commit. A second poster takes them over after lease + grace.
        dying = _DyingPoster(Journal(pg_dsn, group="poster-test"), client, books=books, options=options,
                             die_after=2)
        with pytest.raises(_Crash):
            dying.run(idle_sleep_s=0.1, exit_when_idle=True)
        dying.journal.close()
        # Its claims (an unknown outcome it recorded before dying is no claim of its own: looked up after the grace)
        left = rows(pg_dsn, "SELECT count(*) FROM kdcdc.vouchers WHERE status = 'POSTING' "
                            "AND unknown_since IS NULL")[0][0]
        with caplog.at_level(logging.WARNING, logger="kingdee_cdc.poster"):
            stats = Poster(journal, client, books=books, options=options).run(idle_sleep_s=0.1, exit_when_idle=True)
        elapsed = time.monotonic() - started
        relogins = client.relogins
    # Kingdee (the sandbox) holds each voucher exactly once; every journal row has the sandbox's own ids.
    statuses = assert_exactly_once(pg_dsn, sandbox, n)
    assert n == 10_000
    # The faults really happened and were survived.
    late = sandbox.server.state.late_commits
    assert stats.ambiguous_calls > 5 and stats.found_after_timeout > 50 and relogins > 0 and late > 0
    assert left > 0 and stats.taken_over == left and "took over" in caplog.text
    assert rows(pg_dsn, "SELECT count(*) FROM kdcdc.audit WHERE action = 'LEASE_TAKEN_OVER'")[0][0] == left
    reversed_ = rows(pg_dsn, "SELECT count(*) FROM kdcdc.vouchers WHERE status = 'REVERSED'")[0][0]
    fb = dict(rows(pg_dsn, "SELECT status, count(*) FROM kdcdc.outbox GROUP BY 1"))
    journal.close()
    assert fb["POSTED"] == n and fb["REVERSED"] == reversed_ > 0
    with capsys.disabled():
        print(f"\n[poster faults] {n} vouchers in {elapsed:.1f}s; a poster died leaving {left} POSTING (taken over "
              f"{stats.taken_over}); {stats.ambiguous_calls} ambiguous calls, {late} late commits, "
              f"{stats.found_after_timeout} found by key, {relogins} re-logins, statuses {statuses}")


def test_kingdee_rejections_reach_the_journal_and_feedback(pg_dsn: str) -> None:
    cfg = SandboxConfig.load(DEFAULT_CONFIG)
    # Kingdee's side differs from the rules' view: a closed period, a non-leaf account, a required dimension.
    b = cfg.books["002"]
    from dataclasses import replace as dc_replace

    cfg.books["002"] = dc_replace(b, closed_periods=b.closed_periods | {"2026-11"})
    cfg.accounts["6001.02"] = dc_replace(cfg.accounts["6001.02"], leaf=False)
    cfg.accounts["1001"] = dc_replace(cfg.accounts["1001"], required_dimensions=frozenset({"FLEX5"}))
    sb = start_sandbox(cfg, seed=3)
    try:
        journal = Journal(pg_dsn, group="rejections")
        n = journal_vouchers(journal, 600, seed=8)
        # A voucher the mapping checks would never let through: one cent out of balance, written straight into
        # the journal to prove that Kingdee's own balance check is reported, not only ours.
        from decimal import Decimal

        from connector.ledger import voucher_from_json

        (payload,) = rows(pg_dsn, "SELECT payload FROM kdcdc.vouchers WHERE book = '001' AND kind = 'original' "
                                  "ORDER BY key LIMIT 1")[0]
        good = voucher_from_json(bytes(payload))
        last = good.entries[-1]
        bad = good._replace(key="unbalanced-by-one-cent", entries=(*good.entries[:-1],
                                                                    last._replace(amount=last.amount + Decimal("0.01"))))
        journal.write_batch([EventRecord(kafka=KafkaCoordinates(topic="journal-only", partition=1, offset=0),
                                         outcome=Outcome.VOUCHERED, vouchers=(bad,))],
                            {("journal-only", 1): (0, 1)})
        n += 1
        with client_for(sb) as client:
            stats = Poster(journal, client, books=load_rules(RULES).ledger.books).run(exit_when_idle=True)
        msgs = rows(pg_dsn, "SELECT book, kingdee_messages FROM kdcdc.vouchers WHERE status = 'REJECTED_BY_KINGDEE'")
        assert stats.rejected == len(msgs) > 0 and stats.posted + stats.rejected <= n
        text = "\n".join(m for _, m in msgs)
        assert "已结账" in text and all(book == "002" for book, m in msgs if "已结账" in m)
        assert "不是明细科目" in text
        assert "设置的下列必录维度未录入或不可用：部门" in text
        assert "借贷不平衡" in dict(rows(pg_dsn, "SELECT key, kingdee_messages FROM kdcdc.vouchers WHERE "
                                             "key = 'unbalanced-by-one-cent'"))["unbalanced-by-one-cent"]
        fb = rows(pg_dsn, "SELECT payload FROM kdcdc.outbox WHERE status = 'REJECTED_BY_KINGDEE'")
        assert len(fb) == len(msgs) and all(p["reasons"][0]["message"] for (p,) in fb)
        assert rows(pg_dsn, "SELECT count(*) FROM kdcdc.audit WHERE action = 'REJECTED_BY_KINGDEE'")[0][0] == len(msgs)
        journal.close()
    finally:
        sb.stop()


def test_duplicate_in_kingdee_is_flagged_not_deleted(pg_dsn: str, sandbox: RunningSandbox) -> None:
    journal = Journal(pg_dsn, group="dups")
    journal_vouchers(journal, 20, seed=9)
    key = rows(pg_dsn, "SELECT key FROM kdcdc.vouchers WHERE kind = 'original' ORDER BY key LIMIT 1")[0][0]
    with client_for(sandbox) as client:
        # Someone already entered this voucher twice by hand, marker included.
        from connector.ledger import to_kingdee, voucher_from_json

        payload = rows(pg_dsn, "SELECT payload FROM kdcdc.vouchers WHERE key = %s", key)[0][0]
        model = to_kingdee(voucher_from_json(bytes(payload)), load_rules(RULES).ledger.books["001"])
        assert client.save("GL_VOUCHER", model).ok and client.save("GL_VOUCHER", model).ok
        # The first attempt's outcome is unknown (attempts > 1), so the poster looks before it sends.
        with journal.transaction() as conn:
            conn.execute("UPDATE kdcdc.vouchers SET attempts = 1 WHERE key = %s", (key,))
        before = len(sandbox.server.state.vouchers)
        Poster(journal, client, books=load_rules(RULES).ledger.books).run(exit_when_idle=True)
        journal.close()
    status, msg = rows(pg_dsn, "SELECT status, kingdee_messages FROM kdcdc.vouchers WHERE key = %s", key)[0]
    assert status == "NEEDS_ATTENTION" and "2 Kingdee vouchers carry this key" in msg
    assert len(sandbox.server.state.vouchers) == before + 19  # the other vouchers were posted, none deleted


def test_a_voucher_needing_attention_settles_once_a_person_removes_the_extra_copy(
        pg_dsn: str, sandbox: RunningSandbox) -> None:
    journal = Journal(pg_dsn, group="attention")
    journal_vouchers(journal, 12, seed=19)
    picked = rows(pg_dsn, "SELECT key, payload FROM kdcdc.vouchers WHERE kind = 'original' AND book = '001' "
                          "ORDER BY key LIMIT 2")
    (key, _), (gone, _) = picked
    from connector.ledger import to_kingdee, voucher_from_json

    books = load_rules(RULES).ledger.books
    with client_for(sandbox) as client:
        for k, payload in picked:  # each entered twice by hand before the poster's first attempt
            model = to_kingdee(voucher_from_json(bytes(payload)), books["001"])
            assert client.save("GL_VOUCHER", model).ok and client.save("GL_VOUCHER", model).ok
        with journal.transaction() as conn:
            conn.execute("UPDATE kdcdc.vouchers SET attempts = 1 WHERE key = ANY(%s)", ([key, gone],))
        poster = Poster(journal, client, books=books, options=PosterOptions(duplicate_scan_every_s=0))
        poster.run(exit_when_idle=True)

        def status(k: str) -> list[tuple[str, str | None]]:
            return rows(pg_dsn, "SELECT status, kingdee_id FROM kdcdc.vouchers WHERE key = %s", k)
        assert status(key) == status(gone) == [("NEEDS_ATTENTION", None)]
        # Both copies still there: the scan flags them and the vouchers keep waiting for a person.
        first = poster.scan_duplicates()
        assert {key, gone} <= set(first.duplicated) and first.handed_back == []
        assert status(key) == status(gone) == [("NEEDS_ATTENTION", None)]
        # A person deletes one of the two copies of `key`, and both copies of `gone`. The periodic scan reads
        # the period although nothing in it changed lately, and records `key` POSTED with the copy left.
        kept, extra = keys_in_sandbox(sandbox)[key]
        client.delete(FORM, ids=[str(extra), *(str(i) for i in keys_in_sandbox(sandbox)[gone])])
        with journal.transaction() as conn:
            conn.execute("UPDATE kdcdc.vouchers SET updated_at = now() - interval '1 day' WHERE key = ANY(%s)",
                         ([key, gone],))
            conn.execute("UPDATE kdcdc.duplicate_scans SET started_at = now() - interval '1 hour'")
        in_kingdee = len(sandbox.server.state.vouchers)
        second = poster.scan_duplicates(periodic=True)
        assert second.handed_back == [key] and not {key, gone} & set(second.duplicated)
        assert status(key) == [("POSTED", str(kept))]
        # The poster sends neither: `key` is settled, and `gone` waits for a person (deleting every copy may
        # have been meant).
        poster.run(exit_when_idle=True)
        journal.close()
    assert len(sandbox.server.state.vouchers) == in_kingdee
    assert status(key) == [("POSTED", str(kept))] and status(gone) == [("NEEDS_ATTENTION", None)]
    assert rows(pg_dsn, "SELECT payload->>'voucher_key' FROM kdcdc.outbox WHERE status = 'POSTED' AND "
                        "payload->>'voucher_key' = ANY(%s)", [key, gone]) == [(key,)]
    # The audit trail: both flagged copies no longer need a person, then the voucher is settled with the copy
    # left.
    resolved = [d for a, d in rows(pg_dsn, "SELECT action, detail FROM kdcdc.audit WHERE voucher_key = %s "
                                           "ORDER BY id", key) if a == "DUPLICATE_RESOLVED"]
    assert sorted(d["kingdee_id"] for d in resolved[:-1]) == sorted([str(kept), str(extra)])
    assert resolved[-1]["one_copy_left"] and resolved[-1]["kingdee_id"] == str(kept)


def test_admin_endpoint_sets_faults(sandbox: RunningSandbox) -> None:
    base = sandbox.url.replace("/k3cloud/", "")
    r = httpx.post(f"{base}/sandbox/admin/faults", json={"latency_ms": 5, "msgcode14_rate": 0.5})
    assert r.status_code == 200 and r.json()["msgcode14_rate"] == 0.5
    assert httpx.post(f"{base}/sandbox/admin/faults", json={"nope": 1}).status_code == 400


def test_a_correction_reverses_before_its_repost_and_names_the_original(
        pg_dsn: str, sandbox: RunningSandbox) -> None:
    journal = Journal(pg_dsn, group="corrections")
    n = journal_vouchers(journal, 400, seed=11)
    with client_for(sandbox, concurrency=4) as client:
        # One voucher per call, four calls in flight: nothing but the claim order keeps a repost from racing
        # ahead of its reversal.
        Poster(journal, client, books=load_rules(RULES).ledger.books,
               options=PosterOptions(batch_size=1, concurrency=4)).run(idle_sleep_s=0.05, exit_when_idle=True)
    journal.close()
    assert_exactly_once(pg_dsn, sandbox, n)
    assert assert_reversals_first_and_named(pg_dsn, sandbox) > 10


def test_a_reversal_of_opening_history_posts_at_once_and_says_qichu(pg_dsn: str, sandbox: RunningSandbox) -> None:
    import psycopg

    journal = Journal(pg_dsn, group="opening")
    journal_vouchers(journal, 200, seed=13)
    original, reversal = rows(pg_dsn, "SELECT o.key, r.key FROM kdcdc.vouchers r JOIN kdcdc.vouchers o ON "
                                      "o.key = r.reverses WHERE r.kind = 'reversal' ORDER BY r.key LIMIT 1")[0]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        # History recorded at a cutover, never posted by us (journal status OPENING, migration 0005).
        conn.execute("UPDATE kdcdc.vouchers SET status = 'OPENING' WHERE key = %s", (original,))
    with client_for(sandbox) as client:
        poster = Poster(journal, client, books=load_rules(RULES).ledger.books)
        poster.run_once()  # the first round: the reversal does not wait for anything
        assert rows(pg_dsn, "SELECT status FROM kdcdc.vouchers WHERE key = %s", reversal) == [("POSTED",)]
        poster.run(idle_sleep_s=0.05, exit_when_idle=True)
    journal.close()
    in_kingdee = keys_in_sandbox(sandbox)
    assert original not in in_kingdee
    texts = [e["FEXPLANATION"] for e in sandbox.server.state.vouchers[in_kingdee[reversal][0]]["model"]["FEntity"]]
    assert all(t.startswith("冲销 期初 ") for t in texts), texts
