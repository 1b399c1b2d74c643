"""Poster throughput into the sandbox over HTTP with 20 ms added latency per call (real PostgreSQL journal).

Baseline in the same run: one voucher per Save call, one call at a time (what a naive integration does).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from harness.devstack import EmbeddedPostgres
from connector.journal import Journal
from connector.kingdee import KingdeeClient, KingdeeCredentials
from connector.kingdee.poster import Poster, PosterOptions
from connector.sandbox import RunningSandbox, start_sandbox
from connector.mapping import load_rules
from tests.integration.test_poster import RULES, journal_vouchers


def _client(sb: RunningSandbox, concurrency: int) -> KingdeeClient:
    cfg = sb.server.state.config
    app_id = next(iter(cfg.apps))
    return KingdeeClient(KingdeeCredentials(server_url=sb.url, acct_id=cfg.data_centre, username="integration",
                                            app_id=app_id, app_secret=cfg.apps[app_id]["secret"]),
                         max_concurrency=concurrency, rate_limit_per_s=10_000, timeout_s=30)


def _measure(dsn: str, n: int, *, batch: int, concurrency: int, latency_ms: float) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS kdcdc CASCADE")
    journal = Journal(dsn, group="bench-poster")
    journal_vouchers(journal, n, seed=4)
    sb = start_sandbox(seed=1)
    sb.server.state.config.faults.update({"latency_ms": latency_ms})
    try:
        with _client(sb, concurrency) as client:
            poster = Poster(journal, client, books=load_rules(RULES).ledger.books,
                            options=PosterOptions(batch_size=batch, concurrency=concurrency))
            start = time.monotonic()
            stats = poster.run(idle_sleep_s=0.05, exit_when_idle=True)
            elapsed = time.monotonic() - start
            calls = client.calls
        assert len(sb.server.state.vouchers) == n, "every voucher must be in the sandbox exactly once"
    finally:
        sb.stop()
        journal.close()
    return {"vouchers": stats.posted, "seconds": elapsed, "per_s": stats.posted / elapsed, "calls": calls,
            "batch": batch, "concurrency": concurrency}


def run(n: int = 10_000) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d, EmbeddedPostgres(Path(d) / "pg", durable=True) as pg:
        return {"batched": _measure(pg.dsn(), n, batch=100, concurrency=4, latency_ms=20),
                "naive": _measure(pg.dsn(), 500, batch=1, concurrency=1, latency_ms=20)}


def markdown(r: dict[str, Any]) -> str:
    b, nv = r["batched"], r["naive"]
    return "\n".join([
        "| mode | vouchers | time | vouchers/s | Kingdee calls | target |", "|---|---:|---:|---:|---:|---:|",
        f"| BatchSave ×{b['batch']}, {b['concurrency']} calls in flight | {b['vouchers']:,} | {b['seconds']:.1f} s | "
        f"{b['per_s']:,.0f} | {b['calls']:,} | ≥ 1,000/s |",
        f"| baseline: one Save per voucher, one call at a time | {nv['vouchers']:,} | {nv['seconds']:.1f} s | "
        f"{nv['per_s']:,.0f} | {nv['calls']:,} | — |",
        f"| ratio | | | {b['per_s'] / nv['per_s']:.0f}× | | ≥ 100× |",
    ])
