"""The poster against the sandbox over real HTTP, with a real journal: faults, rejections, ordering."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
import httpx
import pytest

from connector import samples
from connector.events import ChangeEvent, Decoder, FixedSchemas, KafkaCoordinates
from connector.journal import EventRecord, Journal, Outcome
from connector.kingdee import KingdeeClient, KingdeeCredentials
from connector.kingdee.poster import Poster, PosterOptions
from connector.kingdee.sandbox import RunningSandbox, SandboxConfig, start_sandbox
from connector.mapping import InMemoryLedger, Mapper, load_rules
from tests.integration.helpers import rows

RULES = Path(__file__).resolve().parents[2] / "rules"


def journal_vouchers(journal: Journal, n_vouchers: int, *, seed: int = 5) -> int:
    """Map sample changes (creates, updates → reversal + repost, deletes) and journal exactly n vouchers."""
    journal.migrate()
    mapper, ledger = Mapper(load_rules(RULES)), InMemoryLedger()
    gen = samples.SampleGenerator(seed=seed)
    records: list[EventRecord] = []
    total = offset = 0
    tables = [samples.POS, samples.PURCHASING, samples.PAYROLL, samples.MES, samples.BANK]
    decoders = {t: Decoder(FixedSchemas(samples.value_schema(t))) for t in tables}
    streams = {t: samples.change_stream(gen, t, 10**9, update_every=6, delete_every=10) for t in tables}
    while total < n_vouchers:
        t = tables[offset % len(tables)]
        key, env = next(streams[t])
        ev = decoders[t].decode(samples.encode_avro(t, env, 1), key=samples.json_key(key),
                                kafka=KafkaCoordinates(topic="journal-only", partition=0, offset=offset))
        offset += 1
        assert isinstance(ev, ChangeEvent)
        result = mapper.map(ev, ledger)
        if not result.vouchers or total + len(result.vouchers) > n_vouchers:
            continue
        ledger.apply(result)
        total += len(result.vouchers)
        assert ev.kafka is not None
        records.append(EventRecord(kafka=ev.kafka, outcome=Outcome.VOUCHERED, event=ev, vouchers=result.vouchers))
        if len(records) >= 1000:
            journal.write_batch(records, {("journal-only", 0): (records[0].kafka.offset, offset)})
            records = []
    if records:
        journal.write_batch(records, {("journal-only", 0): (records[0].kafka.offset, offset)})
    return total


@pytest.fixture
def sandbox() -> Iterator[RunningSandbox]:
    sb = start_sandbox(seed=7)
    yield sb
    sb.stop()


def client_for(sb: RunningSandbox, timeout_s: float = 5.0, concurrency: int = 4) -> KingdeeClient:
    cfg = sb.server.state.config
    app_id = next(iter(cfg.apps))
    return KingdeeClient(KingdeeCredentials(server_url=sb.url, acct_id=cfg.data_centre, username="integration",
                                            app_id=app_id, app_secret=cfg.apps[app_id]["secret"]),
                         timeout_s=timeout_s, max_concurrency=concurrency, rate_limit_per_s=1000)


def test_ten_thousand_vouchers_exactly_once_through_faults(
        pg_dsn: str, sandbox: RunningSandbox, capsys: pytest.CaptureFixture[str]) -> None:
    journal = Journal(pg_dsn, group="poster-test")
    n = journal_vouchers(journal, 10_000)
    sandbox.server.state.config.faults.update({"timeout_after_commit_rate": 0.05, "http_5xx_rate": 0.02,
                                               "session_ttl_s": 2.0})
    books = load_rules(RULES).ledger.books
    with client_for(sandbox) as client:
        poster = Poster(journal, client, books=books, options=PosterOptions(batch_size=50, lease_s=1.0))
        started = time.monotonic()
        stats = poster.run(idle_sleep_s=0.2, exit_when_idle=True)
        elapsed = time.monotonic() - started
        relogins = client.relogins
    # Kingdee (the sandbox) holds each voucher exactly once.
    in_kingdee: Counter[str] = Counter()
    ids_by_key: dict[str, int] = {}
    for vid, rec in sandbox.server.state.vouchers.items():
        expl = rec["model"]["FEntity"][0]["FEXPLANATION"]
        key = expl.rsplit("[kdcdc:", 1)[1].rstrip("]")
        in_kingdee[key] += 1
        ids_by_key[key] = vid
    assert len(in_kingdee) == n == 10_000 and max(in_kingdee.values()) == 1
    # Every journal row is settled with the sandbox's own ids.
    statuses = dict(rows(pg_dsn, "SELECT status, count(*) FROM kdcdc.vouchers GROUP BY 1"))
    assert set(statuses) <= {"POSTED", "REVERSED"} and sum(statuses.values()) == n
    for key, kid, number in rows(pg_dsn, "SELECT key, kingdee_id, kingdee_number FROM kdcdc.vouchers"):
        assert int(kid) == ids_by_key[key]
        assert number == sandbox.server.state.vouchers[int(kid)]["FBillNo"]
    # The faults really happened and were survived.
    assert stats.ambiguous_calls > 5 and stats.found_after_timeout > 50 and relogins > 0
    reversed_ = rows(pg_dsn, "SELECT count(*) FROM kdcdc.vouchers WHERE status = 'REVERSED'")[0][0]
    fb = dict(rows(pg_dsn, "SELECT status, count(*) FROM kdcdc.outbox GROUP BY 1"))
    journal.close()
    assert fb["POSTED"] == n and fb["REVERSED"] == reversed_ > 0
    with capsys.disabled():
        print(f"\n[poster faults] {n} vouchers in {elapsed:.1f}s; sandbox holds {len(in_kingdee)} (max copies "
              f"{max(in_kingdee.values())}); {stats.ambiguous_calls} ambiguous calls, {stats.found_after_timeout} "
              f"found by key, {relogins} re-logins, statuses {statuses}")


def test_kingdee_rejections_reach_the_journal_and_feedback(pg_dsn: str) -> None:
    cfg = SandboxConfig.load(Path(__file__).resolve().parents[2] / "connector" / "kingdee" / "sandbox.yaml")
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


def test_admin_endpoint_sets_faults(sandbox: RunningSandbox) -> None:
    base = sandbox.url.replace("/k3cloud/", "")
    r = httpx.post(f"{base}/sandbox/admin/faults", json={"latency_ms": 5, "msgcode14_rate": 0.5})
    assert r.status_code == 200 and r.json()["msgcode14_rate"] == 0.5
    assert httpx.post(f"{base}/sandbox/admin/faults", json={"nope": 1}).status_code == 400
