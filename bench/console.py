"""Console page times on a journal of ten million events (issue #19: every page under 200 ms).

1. A journal is filled in SQL with ``generate_series`` (no pipeline: minutes, not hours), migrated without 0008:
   ``--events`` records over 30 days in one consumer group, five source systems, two books; per 100 records 94
   vouchered, 2 rejected by the rules, 0.5 undecodable, 3.5 skipped. Each vouchered record has its voucher (mostly
   POSTED with a Kingdee number, the newest 0.5 % still waiting, a few refused by Kingdee) with three entries (in its
   payload, and in the entries table before migration 0009), an audit row and a feedback event; rejected and undecodable ones have their rejection, dead letter and feedback. Voucher
   keys are ascending hex (the loader appends to the indexes; a lookup by key costs the same as with hash keys).
2. Migration 0008 (the console's indexes) is applied on the full journal and timed — what an upgrade costs.
3. ``VACUUM ANALYZE`` (what autovacuum does in production), then the console is served on uvicorn and each page is
   requested over HTTP: warm-up, then ``--repeat`` times; median, p95 and max. Kafka is not configured, so the
   status page's lag is not asked for (that call is cached for 10 s and bounded at 2 s by the console).

Run: ``python -m bench.console`` (an embedded PostgreSQL in a temporary directory; ``--dsn`` to use another whose
user may create databases). ``--events 200000`` for a quick look.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg import sql

SYSTEMS = ("pos", "purchasing", "payroll", "mes", "bank")
CODES = ("MISSING_FIELD", "UNMATCHED", "UNBALANCED", "UNKNOWN_ACCOUNT", "CLOSED_PERIOD", "PERMISSION")
STAGES = ("json", "schema", "wire", "envelope")
GROUP = "kingdee-cdc"
ADMIN = ("bench", "bench-password-1")
DAYS = 30

#: the fill, in SQL: %(n)s records, record i journaled at now - 30 days + i/n × 30 days. {lo} {hi}: the chunk.
_EVENTS = """
INSERT INTO kdcdc.event_log (consumer_group, topic, kafka_partition, kafka_offset, outcome, source_system,
    source_table, source_pk, source_position, op, voucher_keys, detail, kafka_ts_ms, journaled_at)
SELECT %(group)s, s.sys || '.public.t', i %% 6, i / 6,
       CASE WHEN m < 94 THEN 'VOUCHERED' WHEN m < 96 THEN 'REJECTED' WHEN m < 97 AND i %% 2 = 0 THEN 'DEAD_LETTERED'
            ELSE 'SKIPPED' END,
       CASE WHEN m = 96 AND i %% 2 = 0 THEN NULL ELSE s.sys END,
       CASE WHEN m = 96 AND i %% 2 = 0 THEN NULL ELSE s.sys || 'db.public.t' END,
       CASE WHEN m = 96 AND i %% 2 = 0 THEN NULL ELSE '{{"id":' || i || '}}' END,
       'lsn:' || i, 'c',
       CASE WHEN m < 94 THEN ARRAY[lpad(to_hex(i), 32, '0')] ELSE '{{}}' END, NULL,
       (extract(epoch FROM t.at) * 1000)::bigint, t.at
FROM generate_series({lo}, {hi}) AS i
CROSS JOIN LATERAL (SELECT i %% 100 AS m, (ARRAY{systems})[i %% 5 + 1] AS sys) AS s
CROSS JOIN LATERAL (SELECT now() - interval '{days} days' + (i::float8 / %(n)s) * interval '{days} days' AS at) AS t
"""
_VOUCHERS = """
INSERT INTO kdcdc.vouchers (key, kind, status, book, voucher_date, voucher_group, explanation, debit_total,
    source_system, source_table, source_pk, source_position, source_op, topic, kafka_partition, kafka_offset,
    rule_id, rule_version, payload, kingdee_id, kingdee_number, kingdee_group_no, journaled_at, updated_at)
SELECT e.voucher_keys[1], 'original',
       CASE WHEN e.kafka_offset * 6 + e.kafka_partition > %(n)s * 0.995 THEN 'JOURNALED'
            WHEN (e.kafka_offset * 6 + e.kafka_partition) %% 5000 = 7 THEN 'REJECTED_BY_KINGDEE' ELSE 'POSTED' END,
       CASE WHEN e.kafka_offset %% 2 = 0 THEN '001' ELSE '002' END, e.journaled_at::date, 'PRE001',
       upper(left(e.source_system, 3)) || ' SO' || to_char(e.journaled_at, 'YYYYMMDD') ||
           lpad((e.kafka_offset * 6 + e.kafka_partition)::text, 8, '0') || ' 销售收入',
       a.d, e.source_system, e.source_table, e.source_pk, e.source_position, 'c', e.topic, e.kafka_partition,
       e.kafka_offset, e.source_system || '-rule', '1', convert_to(json_build_object(
           'key', e.voucher_keys[1], 'entries', json_build_array(
               json_build_array('1012.03', 'debit', a.d::text, 'receipt', 'CNY', 'HLTX01_SYS', '1', a.d::text,
                                NULL, NULL, NULL, NULL, NULL, '{{}}'::json),
               json_build_array('6001.01', 'credit', (a.d - 1)::text, 'revenue', 'CNY', 'HLTX01_SYS', '1',
                                (a.d - 1)::text, NULL, NULL, NULL, NULL, NULL, '{{}}'::json),
               json_build_array('2221.01.05', 'credit', '1.00', 'output VAT', 'CNY', 'HLTX01_SYS', '1', '1.00',
                                NULL, NULL, NULL, NULL, NULL, '{{}}'::json)))::text, 'UTF8'),
       (e.kafka_offset * 6 + e.kafka_partition)::text,
       '记-' || to_char(e.journaled_at, 'YYYYMM') || '-' || lpad((e.kafka_offset * 6 + e.kafka_partition)::text, 8, '0'),
       '1', e.journaled_at, e.journaled_at + interval '3 seconds'
FROM kdcdc.event_log e CROSS JOIN LATERAL (SELECT ((e.kafka_offset %% 300000) / 100.0 + 10)::numeric(28, 2) AS d) AS a
WHERE e.outcome = 'VOUCHERED' AND e.kafka_offset * 6 + e.kafka_partition BETWEEN {lo} AND {hi}
"""
_FIX_UNPOSTED = """
UPDATE kdcdc.vouchers SET kingdee_id = NULL, kingdee_number = NULL, kingdee_group_no = NULL,
    kingdee_messages = CASE WHEN status = 'REJECTED_BY_KINGDEE' THEN '科目 6711 已冻结' END
WHERE status IN ('JOURNALED', 'REJECTED_BY_KINGDEE')
"""
_ENTRIES = """
INSERT INTO kdcdc.entries (voucher_key, seq, account, side, amount, currency, rate, amount_for, explanation)
SELECT v.key, x.seq, x.account, x.side, CASE x.seq WHEN 1 THEN v.debit_total WHEN 2 THEN v.debit_total - 1
       ELSE 1 END, 'CNY', 1, CASE x.seq WHEN 1 THEN v.debit_total WHEN 2 THEN v.debit_total - 1 ELSE 1 END,
       v.explanation
FROM kdcdc.vouchers v CROSS JOIN (VALUES (1, '1012.03', 'debit'), (2, '6001.01', 'credit'),
                                         (3, '2221.01.05', 'credit')) AS x(seq, account, side)
WHERE v.key BETWEEN lpad(to_hex({lo}), 32, '0') AND lpad(to_hex({hi}), 32, '0')
"""
_AUDIT = """
INSERT INTO kdcdc.audit (at, actor, action, voucher_key, detail)
SELECT v.updated_at, 'poster', 'POSTED', v.key, jsonb_build_object('number', v.kingdee_number)
FROM kdcdc.vouchers v WHERE v.status = 'POSTED'
  AND v.key BETWEEN lpad(to_hex({lo}), 32, '0') AND lpad(to_hex({hi}), 32, '0')
"""
_OUTBOX = """
INSERT INTO kdcdc.outbox (event_id, source_system, message_key, status, payload, created_at, sent_at)
SELECT v.key || ':POSTED', v.source_system, v.source_pk, 'POSTED', '{{}}'::jsonb, v.updated_at,
       v.updated_at + interval '1 second'
FROM kdcdc.vouchers v WHERE v.status = 'POSTED'
  AND v.key BETWEEN lpad(to_hex({lo}), 32, '0') AND lpad(to_hex({hi}), 32, '0')
"""
_PROBLEMS = """
INSERT INTO kdcdc.rejections (consumer_group, topic, kafka_partition, kafka_offset, code, message, rule_id, field,
    value, source_system, source_table, source_pk, created_at)
SELECT e.consumer_group, e.topic, e.kafka_partition, e.kafka_offset,
       (ARRAY{codes})[(e.kafka_offset %% 6) + 1], 'rejected by the bench', e.source_system || '-rule', 'row.x', '1',
       e.source_system, e.source_table, e.source_pk, e.journaled_at
FROM kdcdc.event_log e WHERE e.outcome = 'REJECTED';
INSERT INTO kdcdc.dead_letters (consumer_group, topic, kafka_partition, kafka_offset, stage, reason, error_class,
    raw_value, created_at)
SELECT e.consumer_group, e.topic, e.kafka_partition, e.kafka_offset,
       CASE WHEN e.outcome = 'REJECTED' THEN 'TASK_PUT' ELSE (ARRAY{stages})[(e.kafka_offset %% 4) + 1] END,
       CASE WHEN e.outcome = 'REJECTED' THEN 'rejected by the bench' ELSE 'undecodable' END,
       CASE WHEN e.outcome = 'REJECTED' THEN 'Rejection' ELSE 'DecodeError' END, '\\x00'::bytea, e.journaled_at
FROM kdcdc.event_log e WHERE e.outcome IN ('REJECTED', 'DEAD_LETTERED');
INSERT INTO kdcdc.outbox (event_id, source_system, message_key, status, payload, created_at, sent_at)
SELECT e.consumer_group || ':' || e.topic || ':' || e.kafka_partition || ':' || e.kafka_offset || ':' ||
       CASE WHEN e.outcome = 'REJECTED' THEN 'REJECTED' ELSE 'DEAD_LETTERED' END,
       coalesce(e.source_system, e.topic), coalesce(e.source_pk, e.topic),
       CASE WHEN e.outcome = 'REJECTED' THEN 'REJECTED' ELSE 'DEAD_LETTERED' END, '{{}}'::jsonb, e.journaled_at,
       e.journaled_at + interval '1 second'
FROM kdcdc.event_log e WHERE e.outcome IN ('REJECTED', 'DEAD_LETTERED');
INSERT INTO kdcdc.offsets (consumer_group, topic, kafka_partition, next_offset)
SELECT %(group)s, topic, kafka_partition, max(kafka_offset) + 1 FROM kdcdc.event_log GROUP BY 1, 2, 3;
INSERT INTO kdcdc.reconciliations (run_at, book, period, by_dimension, with_source, lines, flagged, abs_difference,
    report)
SELECT now() - (m || ' months')::interval + (r || ' hours')::interval, b,
       to_char(now() - (m || ' months')::interval, 'YYYY-MM'), false, false, 40, CASE WHEN m = 0 THEN 2 ELSE 0 END,
       CASE WHEN m = 0 THEN 1234.56 ELSE 0 END,
       CASE WHEN m = 0 THEN '{{"flagged": [{{"line": "1403", "journal": "100.00", "kingdee": "0.00", "source": null,
            "in_flight": "0.00", "vouchers": ["00000000000000000000000000000001"]}}], "missing_in_kingdee":
            ["00000000000000000000000000000001"]}}'::jsonb ELSE '{{}}'::jsonb END
FROM generate_series(0, 11) AS m, generate_series(1, 10) AS r, unnest(ARRAY['001', '002']) AS b;
"""


def _chunks(n: int, size: int) -> list[tuple[int, int]]:
    return [(lo, min(n - 1, lo + size - 1)) for lo in range(0, n, size)]


def fill(dsn: str, n: int, *, say: Any = print) -> dict[str, float]:
    """Migrate up to 0007, fill ``n`` records and what they made, apply 0008 (timed), vacuum. Returns the timings."""
    from connector.journal import _migrate

    times: dict[str, float] = {}
    everything = _migrate.available()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS kdcdc CASCADE")
        original = _migrate.available
        _migrate.available = lambda: [m for m in everything if m[0] != 8]  # every other migration, before or after
        try:
            _migrate.migrate(conn, "kdcdc")
        finally:
            _migrate.available = original
        conn.execute("SET synchronous_commit = off")
        # a bulk load of rows that are consistent by construction: no per-row foreign-key check (superuser)
        conn.execute("SET session_replication_role = replica")
        conn.execute("SET maintenance_work_mem = '1GB'")
        fmt = {"systems": "[" + ", ".join(f"'{s}'" for s in SYSTEMS) + "]", "days": DAYS,
               "codes": "[" + ", ".join(f"'{c}'" for c in CODES) + "]",
               "stages": "[" + ", ".join(f"'{s}'" for s in STAGES) + "]"}
        args = {"n": n, "group": GROUP}
        started = time.perf_counter()
        # entries: a table before migration 0009, a view over the vouchers' payloads after it (nothing to fill)
        kind = conn.execute("SELECT c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                            "WHERE n.nspname = 'kdcdc' AND c.relname = 'entries'").fetchone()
        entries = [("entries", _ENTRIES)] if kind and kind[0] == "r" else []
        for name, statement in (("event log", _EVENTS), ("vouchers", _VOUCHERS), *entries, ("audit", _AUDIT),
                                ("outbox", _OUTBOX)):
            t0 = time.perf_counter()
            for lo, hi in _chunks(n, 1_000_000):
                conn.execute(statement.format(lo=lo, hi=hi, **fmt).encode(), args)
            if name == "vouchers":
                conn.execute(_FIX_UNPOSTED)
            times[f"fill {name}"] = time.perf_counter() - t0
            say(f"  {name}: {times[f'fill {name}']:.0f} s")
        t0 = time.perf_counter()
        for statement in _PROBLEMS.format(**fmt).split(";\n"):
            if statement.strip():
                conn.execute(statement.encode(), args)
        times["fill rejections, dead letters, offsets, reconciliations"] = time.perf_counter() - t0
        times["fill"] = time.perf_counter() - started
        conn.execute("SET session_replication_role = DEFAULT")
        t0 = time.perf_counter()
        applied = _migrate.migrate(conn, "kdcdc")  # 0008 last, on the full journal
        assert applied == [8], applied
        times["migration 0008"] = time.perf_counter() - t0
        say(f"  migration 0008 (the console's indexes) on the full journal: {times['migration 0008']:.0f} s")
        t0 = time.perf_counter()
        conn.execute("VACUUM ANALYZE")
        times["vacuum analyze"] = time.perf_counter() - t0
        counts = {t: conn.execute(sql.SQL("SELECT count(*) FROM kdcdc.{}").format(sql.Identifier(t))).fetchone()
                  for t in ("event_log", "vouchers", "entries", "rejections", "dead_letters", "outbox", "audit")}
        say("  rows: " + ", ".join(f"{t} {c[0]:,}" for t, c in counts.items() if c))
        size = conn.execute("SELECT pg_size_pretty(pg_database_size(current_database()))").fetchone()
        say(f"  database size: {size[0] if size else '?'}")
    return times


def pages(dsn: str, n: int) -> dict[str, str]:
    """The pages to time, with searches for rows in the middle of the journal."""
    i = n // 2 - (n // 2) % 100 + 3  # a vouchered record (i % 100 < 94), mid-journal
    with psycopg.connect(dsn) as conn:
        found = conn.execute("SELECT key, explanation, kingdee_number, topic, kafka_partition, kafka_offset, source_pk "
                             "FROM kdcdc.vouchers WHERE key = lpad(to_hex(%s::bigint), 32, '0')", (i,)).fetchone()
        assert found, f"record {i} has no voucher"
        run = conn.execute("SELECT id FROM kdcdc.reconciliations ORDER BY run_at DESC LIMIT 1").fetchone()
    key, explanation, number, topic, part, offset, pk = found
    document = explanation.split()[1]
    return {
        "status": "/status",
        "trace: document number": f"/trace?q={document}",
        "trace: everything (auto)": f"/trace?q={number}",
        "trace: Kingdee number": f"/trace?by=kingdee_number&q={number}",
        "trace: source key": f"/trace?by=source_key&q={pk}",
        "trace: Kafka coordinates": f"/trace?by=kafka&q={topic}[{part}]@{offset}",
        "trace: voucher key": f"/trace?by=voucher_key&q={key}",
        "triage: 24 hours": "/triage?range=24h",
        "triage: 7 days": "/triage?range=7d",
        "triage: 30 days": "/triage?range=30d",
        "triage: 30 days, one reason": "/triage?range=30d&kind=rejected&reason=UNMATCHED",
        "triage: drill-down (one source, reason)": "/triage/events?range=30d&kind=rejected&source=pos&reason=UNBALANCED",
        "triage: new dead letters": "/triage?range=30d&status=NEW",
        "reconciliation": "/reconciliation",
        "reconciliation: one run": f"/reconciliation/{run[0] if run else 1}",
    }


def measure(dsn: str, n: int, repeat: int) -> list[dict[str, Any]]:
    from connector.config import load_settings
    from connector.console import Console, ConsoleServer

    settings = load_settings(None, journal={"dsn": dsn}, kafka={"group_id": GROUP}, console={
        "users": [{"name": ADMIN[0], "password": ADMIN[1], "role": "admin"}]})
    server = ConsoleServer(Console(settings), port=0).start()
    out = []
    try:
        with httpx.Client(base_url=server.url, auth=ADMIN, timeout=30) as http:
            for name, path in pages(dsn, n).items():
                for _ in range(3):  # warm-up: connections, caches
                    http.get(path).raise_for_status()
                times = []
                for _ in range(repeat):
                    t0 = time.perf_counter()
                    r = http.get(path)
                    times.append((time.perf_counter() - t0) * 1000)
                    r.raise_for_status()
                times.sort()
                out.append({"page": name, "path": path, "median_ms": statistics.median(times),
                            "p95_ms": times[max(0, int(len(times) * 0.95) - 1)], "max_ms": times[-1],
                            "bytes": len(r.content)})
    finally:
        server.stop()
    return out


def table(results: Sequence[dict[str, Any]]) -> str:
    lines = ["| page | median ms | p95 ms | max ms |", "|---|---:|---:|---:|"]
    lines += [f"| {r['page']} | {r['median_ms']:.1f} | {r['p95_ms']:.1f} | {r['max_ms']:.1f} |" for r in results]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.console", description=__doc__.split("\n\n")[0] if __doc__
                                 else None)
    ap.add_argument("--events", type=int, default=10_000_000, help="records in the journal (default 10 million)")
    ap.add_argument("--repeat", type=int, default=20, help="timed requests per page")
    ap.add_argument("--dsn", help="PostgreSQL whose user may create databases (default: an embedded server)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--markdown", type=Path, help="also write them as a document here (docs/benchmarks-console.md)")
    ap.add_argument("--reuse", action="store_true", help="with --dsn: time the pages of a journal an earlier run "
                                                          "filled with the same --events (no fill)")
    a = ap.parse_args(argv)
    if a.events < 1000:
        ap.error("--events must be at least 1000")
    if a.dsn:
        return _run(a.dsn, a)
    from harness.devstack import EmbeddedPostgres

    with tempfile.TemporaryDirectory(prefix="kdcdc-bench-console-") as d, \
            EmbeddedPostgres(Path(d) / "pg", durable=False) as pg:
        return _run(pg.dsn(), a)


def _run(dsn: str, a: argparse.Namespace) -> int:
    fill_times: dict[str, float] = {}
    if a.reuse:
        with psycopg.connect(dsn) as conn:
            found = conn.execute("SELECT count(*) FROM kdcdc.event_log").fetchone()
        if not found or found[0] != a.events:
            raise SystemExit(f"--reuse: the journal holds {found[0] if found else 0:,} events, not {a.events:,}")
    else:
        print(f"console bench: filling a journal of {a.events:,} records …", flush=True)
        fill_times = fill(dsn, a.events, say=lambda s: print(s, flush=True))
    results = measure(dsn, a.events, a.repeat)
    print(f"\nConsole pages over HTTP on a journal of {a.events:,} events ({a.repeat} requests each after 3 warm-up):\n")
    print(table(results))
    slow = [r["page"] for r in results if r["p95_ms"] >= 200]
    print(f"\n{'every page under 200 ms (p95)' if not slow else 'over 200 ms: ' + ', '.join(slow)}")
    if a.json:
        a.json.write_text(json.dumps({"events": a.events, "fill_s": fill_times, "pages": results}, indent=2))
    if a.markdown:
        a.markdown.write_text(document(a.events, a.repeat, results, fill_times, slow))
    return 1 if slow else 0


def document(events: int, repeat: int, results: Sequence[dict[str, Any]], fill_times: dict[str, float],
             slow: Sequence[str]) -> str:
    """docs/benchmarks-console.md: how the journal was made, the page times, the verdict."""
    import os
    import platform
    from datetime import UTC, datetime

    how = (__doc__ or "").split("\n\n", 1)[1].split("\nRun:")[0].strip().replace("``", "`")
    fill = " + ".join(f"{v:.0f} s ({k})" for k, v in fill_times.items())
    return "\n".join([
        "# Benchmarks: the operator console", "",
        f"Produced by `make bench-console` (`python -m bench.console`) on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; "
        f"{os.cpu_count()} cores, Python {platform.python_version()}; load average at the end "
        f"{' / '.join(f'{x:.2f}' for x in os.getloadavg())}. Kept apart from `make bench` (docs/benchmarks.md): "
        "filling the journal alone takes minutes.", "",
        f"A journal of **{events:,} events**; each page requested over HTTP {repeat} times after 3 warm-up requests.", "",
        how, "", table(results), "",
        "Every page under 200 ms (p95)." if not slow else f"Over 200 ms (p95): {', '.join(slow)}.",
        "" if not fill else f"Filling the journal took {fill}.", ""])


if __name__ == "__main__":
    raise SystemExit(main())
