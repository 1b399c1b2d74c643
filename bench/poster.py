"""Poster throughput into the sandbox over HTTP with 20 ms added latency per call (real PostgreSQL journal).

Baseline in the same run: one voucher per Save call, one call at a time (what a naive integration does).
The sandbox runs in a process of its own (``bench.sandbox_proc``): in the benchmark's process its request
handling — parsing and validating every voucher of each BatchSave — would compete with the poster for the
interpreter and be measured as the poster's time.

Both sides use the product's client limits (``kingdee.rate_limit_per_s``, ``timeout_s``: the defaults) and run
in ``rounds`` interleaved rounds (the second in reverse order); each keeps its best round, as the other sections
do, so a noisy neighbour on a shared host costs a round rather than one side of the ratio.

``python -m bench.poster [--rounds N] [--vouchers N]`` prints the table (and the JSON with ``--json``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psycopg

from bench.worker import tree_cpu_s
from harness.devstack import REPO_ROOT, EmbeddedPostgres
from connector.config import KingdeeSettings
from connector.journal import Journal
from connector.kingdee import KingdeeClient, KingdeeCredentials
from connector.kingdee.poster import Poster, PosterOptions
from connector.mapping import load_rules
from tests.integration.helpers import RULES, journal_vouchers


@dataclass(frozen=True, slots=True)
class Sandbox:
    url: str
    data_centre: str
    app_id: str
    app_secret: str
    stdin: IO[str]
    stdout: IO[str]

    def _ask(self, what: str) -> str:
        self.stdin.write(f"{what}\n")
        self.stdin.flush()
        return self.stdout.readline()

    def count(self) -> int:
        return int(self._ask("count"))

    def cpu_s(self) -> float:
        return float(self._ask("cpu"))


@contextmanager
def sandbox(latency_ms: float, seed: int = 1) -> Iterator[Sandbox]:
    proc = subprocess.Popen([sys.executable, "-m", "bench.sandbox_proc", json.dumps({"seed": seed,
                                                                                     "latency_ms": latency_ms})],
                            cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        info = json.loads(proc.stdout.readline())
        yield Sandbox(info["url"], info["data_centre"], info["app_id"], info["app_secret"], proc.stdin, proc.stdout)
    finally:
        try:
            proc.stdin.write("stop\n")
            proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _client(sb: Sandbox, concurrency: int) -> KingdeeClient:
    defaults = KingdeeSettings.model_validate({})  # the limits a deployment gets unless it sets its own
    return KingdeeClient(KingdeeCredentials(server_url=sb.url, acct_id=sb.data_centre, username="integration",
                                            app_id=sb.app_id, app_secret=sb.app_secret),
                         max_concurrency=concurrency, rate_limit_per_s=defaults.rate_limit_per_s,
                         timeout_s=defaults.timeout_s)


def _commits(dsn: str) -> int:
    """Transactions committed in ``dsn``'s database so far (``pg_stat_database``)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_force_next_flush()")
        row = conn.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()").fetchone()
    return int(row[0]) if row else 0


def _measure(dsn: str, n: int, *, batch: int, concurrency: int, latency_ms: float, pg_pid: int | None = None
             ) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS kdcdc CASCADE")
    journal = Journal(dsn, group="bench-poster")
    journal_vouchers(journal, n, seed=4)
    try:
        with sandbox(latency_ms) as sb, _client(sb, concurrency) as client:
            poster = Poster(journal, client, books=load_rules(RULES).ledger.books,
                            options=PosterOptions(batch_size=batch, concurrency=concurrency))
            commits = _commits(dsn)
            start = time.monotonic()
            cpu, sb_cpu, pg_cpu = time.process_time(), sb.cpu_s(), tree_cpu_s(pg_pid)
            stats = poster.run(idle_sleep_s=0.05, exit_when_idle=True)
            elapsed = time.monotonic() - start
            cpu, sb_cpu, pg_cpu = time.process_time() - cpu, sb.cpu_s() - sb_cpu, tree_cpu_s(pg_pid) - pg_cpu
            commits = _commits(dsn) - commits - 1  # (the second _commits' own transaction is not counted yet)
            calls = client.calls
            held = sb.count()
        assert held == n, f"every voucher must be in the sandbox exactly once ({held} there, {n} journaled)"
    finally:
        journal.close()
    return {"vouchers": stats.posted, "seconds": elapsed, "per_s": stats.posted / elapsed, "calls": calls,
            "batch": batch, "concurrency": concurrency, "poster_cpu_s": cpu, "sandbox_cpu_s": sb_cpu,
            "postgres_cpu_s": pg_cpu, "commits": commits}


MODES = ("batched", "naive")


def run(n: int = 10_000, rounds: int = 2, naive_n: int = 500) -> dict[str, Any]:
    """``rounds`` interleaved rounds of both modes; ``batched`` and ``naive`` are each mode's best round."""
    defaults = KingdeeSettings.model_validate({})
    spec = {"batched": (n, defaults.batch_size, defaults.max_concurrency), "naive": (naive_n, 1, 1)}
    done: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as d, EmbeddedPostgres(Path(d) / "pg", durable=True) as pg:
        pid = pg.proc.pid if pg.proc else None
        for i in range(rounds):
            measured = {}
            for mode in MODES if i % 2 == 0 else MODES[::-1]:
                vouchers, batch, concurrency = spec[mode]
                measured[mode] = _measure(pg.dsn(), vouchers, batch=batch, concurrency=concurrency, latency_ms=20,
                                          pg_pid=pid)
            done.append(measured)
    best = {mode: max((r[mode] for r in done), key=lambda x: float(x["per_s"])) for mode in MODES}
    return {**best, "rounds": done}


def markdown(r: dict[str, Any]) -> str:
    b, nv = r["batched"], r["naive"]
    rounds = r.get("rounds") or [r]
    defaults = KingdeeSettings.model_validate({})

    def us(x: dict[str, Any], key: str) -> str:
        return f"{1e6 * x[key] / x['vouchers']:,.0f}"

    def each(mode: str) -> str:
        return " / ".join(f"{x[mode]['per_s']:,.0f}" for x in rounds)

    return "\n".join([
        f"Client limits as deployed by default (`rate_limit_per_s` {defaults.rate_limit_per_s:g}, `max_concurrency` "
        f"{defaults.max_concurrency}, `batch_size` {defaults.batch_size}); best of {len(rounds)} interleaved "
        f"round(s) per mode — batched {each('batched')}, baseline {each('naive')} vouchers/s.",
        "",
        "| mode | vouchers | time | vouchers/s | Kingdee calls | journal commits | CPU µs per voucher: poster / "
        "sandbox / PostgreSQL | target |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| BatchSave ×{b['batch']}, {b['concurrency']} calls in flight | {b['vouchers']:,} | {b['seconds']:.1f} s | "
        f"{b['per_s']:,.0f} | {b['calls']:,} | {b['commits']:,} | {us(b, 'poster_cpu_s')} / {us(b, 'sandbox_cpu_s')} / "
        f"{us(b, 'postgres_cpu_s')} | ≥ 1,000/s |",
        f"| baseline: one Save per voucher, one call at a time | {nv['vouchers']:,} | {nv['seconds']:.1f} s | "
        f"{nv['per_s']:,.0f} | {nv['calls']:,} | {nv['commits']:,} | {us(nv, 'poster_cpu_s')} / "
        f"{us(nv, 'sandbox_cpu_s')} / {us(nv, 'postgres_cpu_s')} | — |",
        f"| ratio | | | {b['per_s'] / nv['per_s']:.0f}× | | | | ≥ 100× |",
    ])


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m bench.poster", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--vouchers", type=int, default=10_000)
    ap.add_argument("--json", action="store_true", help="print the measures as JSON too")
    args = ap.parse_args(argv)
    r = run(args.vouchers, rounds=args.rounds)
    print(markdown(r))
    if args.json:
        print(json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
