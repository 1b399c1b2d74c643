"""Summary vouchers at the scale of a retail chain's day, on the real thing, with crashes.

100,000 POS receipts over 20 stores, 3 payment methods and 2 days go through Kafka into `kingdee-cdc run`
(SIGKILLed at random moments and restarted), with updates and deletes before the day is closed; then
`kingdee-cdc summaries close`; then more updates, deletes and late receipts for the closed days, a service
that posts to the Kingdee sandbox over HTTP (killed once mid-way) and `kingdee-cdc post` to finish. Exactly the
expected summary and adjustment vouchers must reach Kingdee, and the journal, the sandbox and the source rows
must agree per account to the cent.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import Producer

from harness import samples
from connector.ledger import Voucher, voucher_from_json
from connector.mapping import Mapper, load_rules
from connector.sandbox import RunningSandbox, start_sandbox
from tests.integration.helpers import CLI, rows, wait_for
from tests.unit.helpers import rules_with, summarizing_pos_rule

pytestmark = pytest.mark.slow

STORES = [f"S{i:02d}" for i in range(1, 21)]
METHODS = ["CASH", "WECHAT", "ALIPAY"]
DAYS = [date(2026, 11, 12), date(2026, 11, 13)]
RECEIPTS = 100_000
APP_SECRET = "scale-secret"


def receipt(i: int, rng: random.Random) -> dict[str, Any]:
    gross = Decimal(rng.randint(1_000, 300_000)) / 100
    net = (gross / Decimal("1.13")).quantize(Decimal("0.01"))
    return {"id": i, "order_no": f"SO{i:07d}", "channel": "STORE", "store_code": STORES[i % 20],
            "company_code": "100", "customer_code": None, "order_date": DAYS[(i // 20) % 2], "currency": "CNY",
            "net_amount": net, "tax_amount": gross - net, "gross_amount": gross, "points_deduction": Decimal("0.00"),
            "payment_method": METHODS[(i // 40) % 3], "status": "PAID", "created_at": None, "updated_at": None}


class Source:
    """The POS database as the test sees it, and its changes published to Kafka as Debezium would."""

    def __init__(self, bootstrap: str, topic: str, seed: int = 100) -> None:
        self.rows: dict[int, dict[str, Any] | None] = {}
        self.rng = random.Random(seed)
        self.topic = topic
        self.lsn = 1_000
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": "20", "enable.idempotence": "true",
                                  "log_level": "3"})
        self.published = 0

    def _send(self, oid: int, op: str, before: dict[str, Any] | None, after: dict[str, Any] | None) -> None:
        self.lsn += 136
        env = samples.envelope(samples.POS, op, before=before, after=after, lsn=self.lsn, tx_id=self.lsn)
        self.producer.produce(self.topic, key=samples.json_key({"id": oid}),
                              value=samples.encode_json(samples.POS, env, schemas=True))
        self.published += 1
        if self.published % 2000 == 0:
            self.producer.poll(0)

    def create(self, oid: int) -> None:
        self.rows[oid] = receipt(oid, self.rng)
        self._send(oid, "c", None, self.rows[oid])

    def update(self, oid: int) -> None:
        before = self.rows[oid]
        assert before is not None
        gross = before["gross_amount"] + Decimal("1.00")
        net = (gross / Decimal("1.13")).quantize(Decimal("0.01"))
        self.rows[oid] = {**before, "gross_amount": gross, "net_amount": net, "tax_amount": gross - net}
        self._send(oid, "u", before, self.rows[oid])

    def delete(self, oid: int) -> None:
        before = self.rows[oid]
        self.rows[oid] = None
        self._send(oid, "d", before, None)

    def live(self) -> list[int]:
        return [i for i, r in self.rows.items() if r is not None]

    def flush(self) -> int:
        assert self.producer.flush(120) == 0
        return self.published


Start = Callable[..., "subprocess.Popen[bytes]"]


@pytest.fixture
def start() -> Iterator[Start]:
    started: list[subprocess.Popen[bytes]] = []

    def run(args: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            proc = subprocess.Popen([CLI, *args], stdout=out, stderr=subprocess.STDOUT,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1"})
        started.append(proc)
        return proc
    yield run
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.fixture
def scale_sandbox() -> Iterator[RunningSandbox]:
    sb = start_sandbox(seed=5)
    app_id = next(iter(sb.server.state.config.apps))
    sb.server.state.config.apps[app_id]["secret"] = APP_SECRET
    yield sb
    sb.stop()


def kingdee_net(sb: RunningSandbox) -> tuple[dict[str, Decimal], dict[str, int]]:
    """Net per account over the sandbox's vouchers, and how many vouchers carry each key marker."""
    net: dict[str, Decimal] = {}
    keys: dict[str, int] = {}
    with sb.server.state.lock:
        records = list(sb.server.state.vouchers.values())
    for rec in records:
        lines = rec["model"]["FEntity"]
        key = lines[0]["FEXPLANATION"].rsplit("[kdcdc:", 1)[1].rstrip("]")
        keys[key] = keys.get(key, 0) + 1
        for e in lines:
            a = e["FACCOUNTID"]["FNumber"]
            net[a] = net.get(a, Decimal(0)) + Decimal(str(e["FDEBIT"])) - Decimal(str(e["FCREDIT"]))
    return {a: n for a, n in net.items() if n}, keys


def net_of(vouchers: list[Voucher]) -> dict[str, Decimal]:
    net: dict[str, Decimal] = {}
    for v in vouchers:
        for e in v.entries:
            net[e.account] = net.get(e.account, Decimal(0)) + (e.amount if e.side.value == "debit" else -e.amount)
    return {a: n for a, n in net.items() if n}


def test_a_hundred_thousand_receipts_become_exactly_the_expected_summary_and_adjustment_vouchers(
        kafka_bootstrap: str, topic_factory: Callable[..., str], pg_dsn: str, tmp_path: Path,
        scale_sandbox: RunningSandbox, start: Start, capsys: pytest.CaptureFixture[str]) -> None:
    t0 = time.monotonic()
    topic = topic_factory("pos-scale", partitions=4)
    rules_dir = rules_with(tmp_path, **{"pos-sale": summarizing_pos_rule(
        by="[book, date, row.store_code, row.payment_method]",
        explanation="POS 日汇总 {{ key.store_code }} {{ key.date }} {{ key.payment_method }} 共{{ count }}笔")})
    sb = scale_sandbox
    cfg = tmp_path / "config.yaml"
    group = f"scale-{uuid.uuid4().hex[:6]}"
    cfg.write_text(yaml.safe_dump({
        "kafka": {"bootstrap_servers": kafka_bootstrap, "group_id": group, "topics": [topic], "batch_size": 2000,
                  "client": {"log_level": "3", "group.instance.id": f"{group}-1", "session.timeout.ms": "6000"}},
        "journal": {"dsn": pg_dsn}, "mapping": {"rules_dir": str(rules_dir)}, "log_level": "WARNING",
        "metrics": {"port": 0}, "summaries": {"close_every_s": 0},  # the test closes the day itself
        "kingdee": {"server_url": sb.url, "acct_id": sb.server.state.config.data_centre, "username": "integration",
                    "app_id": next(iter(sb.server.state.config.apps)), "app_secret": APP_SECRET,
                    "timeout_s": 2, "unknown_outcome_grace_s": 4, "lease_s": 10}}))
    log = tmp_path / "run.log"
    rng = random.Random(20261202)

    # --- the day: receipts, corrections and cancellations while the summaries are open
    src = Source(kafka_bootstrap, topic)
    for i in range(1, RECEIPTS + 1):
        src.create(i)
    before_close_updated = rng.sample(range(1, RECEIPTS + 1), 3_000)
    for i in before_close_updated:
        src.update(i)
    for i in rng.sample(range(1, RECEIPTS + 1), 1_000):
        src.delete(i)
    phase1 = src.flush()

    def alive(proc: subprocess.Popen[bytes]) -> bool:
        """False while it runs (so ``alive(p) or …`` waits for the condition); fails the test once it stopped."""
        assert proc.poll() is None, f"kingdee-cdc stopped ({proc.returncode}): {log.read_text()[-2000:]}"
        return False

    def outcomes() -> int:
        return int(rows(pg_dsn, "SELECT count(*) FROM kdcdc.event_records")[0][0]) if rows(
            pg_dsn, "SELECT to_regclass('kdcdc.event_records') IS NOT NULL")[0][0] else 0

    kills: list[int] = []
    for _ in range(3):  # crashes while the day is being journaled
        proc = start(["run", "-c", str(cfg), "--exit-when-idle", "5"], log)
        wait_for(lambda: alive(proc) or outcomes() > (kills[-1] if kills else 0) + 20_000, 180,
                 "progress before a kill")
        time.sleep(rng.uniform(0.0, 1.5))  # the kill lands anywhere in a batch: the randomness is seeded
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills.append(outcomes())
    proc = start(["run", "-c", str(cfg), "--exit-when-idle", "5"], log)
    assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    assert outcomes() == phase1
    open_summaries = rows(pg_dsn, "SELECT count(*), sum(contributions) FROM kdcdc.summaries WHERE state = 'OPEN'")[0]
    assert open_summaries[0] == len(STORES) * len(METHODS) * len(DAYS)

    # --- the day closes
    closing = subprocess.run([CLI, "summaries", "close", "-c", str(cfg)], capture_output=True, text=True, timeout=300)
    assert closing.returncode == 0, closing.stdout + closing.stderr
    assert "closed 120 summaries" in closing.stdout, closing.stdout[-2000:]

    # --- after the close: corrections, cancellations, late receipts; posting, with a crash
    live = src.live()
    changed_after = rng.sample(live, 800)
    for i in changed_after[:500]:
        src.update(i)
    for i in changed_after[500:]:
        src.delete(i)
    for i in range(RECEIPTS + 1, RECEIPTS + 201):
        src.create(i)
    total = src.flush()
    proc = start(["run", "-c", str(cfg), "--post", "--exit-when-idle", "5"], log)
    wait_for(lambda: alive(proc) or rows(pg_dsn, "SELECT count(*) FROM kdcdc.vouchers WHERE status = 'POSTED'")[0][0]
             > 30, 180, "posting under way")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc = start(["run", "-c", str(cfg), "--exit-when-idle", "5"], log)
    assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    assert outcomes() == total
    post = subprocess.run([CLI, "post", "-c", str(cfg), "--exit-when-idle"], capture_output=True, text=True,
                          timeout=600)
    assert post.returncode == 0, post.stdout + post.stderr

    # --- exactly the expected vouchers reached Kingdee, once each
    net_kingdee, keys = kingdee_net(sb)
    assert all(n == 1 for n in keys.values()), {k: n for k, n in keys.items() if n > 1}
    kinds = dict(rows(pg_dsn, "SELECT kind, count(*) FROM kdcdc.vouchers WHERE status <> 'SUMMARIZED' GROUP BY 1"))
    expected_alone = 2 * 500 + 300 + 200  # reversal + repost per correction, a reversal per cancellation, late rows
    assert kinds == {"summary": 120, "reversal": 800, "original": 700}, kinds
    assert sum(kinds.values()) - 120 == expected_alone
    assert len(keys) == 120 + expected_alone
    statuses = dict(rows(pg_dsn, "SELECT status, count(*) FROM kdcdc.vouchers WHERE status <> 'SUMMARIZED' "
                                 "GROUP BY 1"))
    assert statuses == {"POSTED": 120 + expected_alone}, statuses

    # --- journal = Kingdee = the source rows, per account, to the cent
    to_kingdee = [voucher_from_json(bytes(p)) for (p,) in rows(
        pg_dsn, "SELECT payload FROM kdcdc.vouchers WHERE status <> 'SUMMARIZED'")]
    mapper = Mapper(load_rules(rules_dir))
    source_vouchers = [v for i in src.live() for v in mapper.map(_event(src.rows[i])).vouchers]
    assert net_of(to_kingdee) == net_kingdee == net_of(source_vouchers)
    posted_rows = rows(pg_dsn, "SELECT count(*) FROM kdcdc.outbox WHERE status = 'POSTED' "
                               "AND payload->>'reason' LIKE 'SUMMARY %%'")[0][0]
    assert posted_rows == RECEIPTS - 1_000  # every receipt alive at the close was told its summary voucher
    with capsys.disabled():
        print(f"\n[summaries at scale] {total:,} change events ({RECEIPTS:,} receipts), {len(kills)} SIGKILLs while "
              f"journaling (outcomes at each: {kills}) and one while posting; {kinds['summary']} summary vouchers and "
              f"{expected_alone} adjustments in Kingdee (one voucher per change would have been "
              f"{rows(pg_dsn, 'SELECT count(*) FROM kdcdc.vouchers')[0][0] - 120:,}); "
              f"{time.monotonic() - t0:.0f}s")


def _event(row: dict[str, Any] | None) -> Any:
    from connector.events import Decoder

    env = samples.envelope(samples.POS, "c", before=None, after=row, lsn=1)
    return Decoder().decode(samples.encode_json(samples.POS, env, schemas=True), key=b'{"id":1}')
