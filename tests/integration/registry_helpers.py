"""Helpers of the schema-registry tests (test_registry_e2e.py): connectors added to a running Kafka Connect
worker over its REST API, topics renamed per test, a registry client that counts the look-ups the decoder
makes, fresh journal databases, and the journal's content in a form two journals can be compared in."""

from __future__ import annotations

import functools
import re
import struct
import threading
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from decimal import Decimal
from typing import Any, Self

import httpx
import psycopg
from psycopg import sql

from harness.debezium import KafkaConnect
from harness.samples import SampleGenerator, SampleTable
from connector.mapping import load_rules
from connector.pipeline import Pipeline, PipelineStats
from tests.integration.helpers import RULES, consume_all, record_counts, rows, wait_for


def routed(config: Mapping[str, str], prefix: str, *, variant: str = "") -> dict[str, str]:
    """A connector configuration whose topics get ``prefix.`` in front (Kafka Connect's RegexRouter), so a
    test owns its topics while ``topic.prefix`` — the events' ``source.name``, the system rules match on —
    stays the system. The connector's name carries the prefix too: a standalone worker keeps source offsets
    by connector name, and a later test's connector must not resume from an earlier one's position. So do its
    JMX metrics (``custom.metric.tags``): their names carry ``topic.prefix``, and a second connector with the
    same one waits a minute for the name. ``variant`` tells a second connector on the same database apart
    (its replication slot and publication)."""
    tag = re.sub(r"[^A-Za-z0-9_-]", "_", f"{prefix}-{variant}" if variant else prefix)
    out = dict(config) | {"name": f"{config['name']}-{tag}", "custom.metric.tags": f"run={tag}"}
    if variant:
        out["slot.name"] = f"{out['slot.name']}_{variant}"
        out["publication.name"] = f"{out['publication.name']}_{variant}"
    out |= {"transforms": "route", "transforms.route.type": "org.apache.kafka.connect.transforms.RegexRouter",
            "transforms.route.regex": "(.*)", "transforms.route.replacement": f"{prefix}.$1"}
    return out


def add_connectors(connect: KafkaConnect, configs: Sequence[Mapping[str, str]], timeout_s: float = 120) -> None:
    """Create connectors on a running worker (standalone workers take them over REST too) and wait until they
    and their tasks run (a failed task raises with its trace)."""
    def put(cfg: Mapping[str, str]) -> bool:
        conf = {k: v for k, v in cfg.items() if k != "name"}
        r = httpx.put(f"{connect.rest_url}/connectors/{cfg['name']}/config", json=conf, timeout=30)
        if r.status_code in (404, 409, 503):  # the worker's resources are not up yet / it is rebalancing
            return False
        if r.status_code >= 400:
            raise AssertionError(f"Kafka Connect refused connector {cfg['name']}: {r.status_code} {r.text[:2000]}")
        return True

    for cfg in configs:
        # the worker may still be starting (module fixture)
        wait_for(functools.partial(put, cfg), 90, f"Kafka Connect to accept {cfg['name']}",
                 ignore=(httpx.HTTPError,), interval_s=0.25)
        connect.connectors.append(dict(cfg))
    connect.wait_running(timeout_s)


def remove_connectors(connect: KafkaConnect, configs: Sequence[Mapping[str, str]]) -> None:
    names = {c["name"] for c in configs}
    for name in names:
        try:
            httpx.delete(f"{connect.rest_url}/connectors/{name}", timeout=30)
        except httpx.HTTPError:
            pass
    connect.connectors = [c for c in connect.connectors if c["name"] not in names]


class CountingRegistry:
    """A ``SchemaRegistryClient`` stand-in for the decoder that counts ``get_schema`` calls per id (the
    decoder's own cache is what keeps that at one per id; the client underneath caches too)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.calls: Counter[int] = Counter()
        self._lock = threading.Lock()

    def get_schema(self, schema_id: int, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            self.calls[schema_id] += 1
        return self.client.get_schema(schema_id, *args, **kwargs)


@contextmanager
def fresh_database(server_dsn: str) -> Iterator[str]:
    """An empty database on the session's PostgreSQL (a second journal), dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    info = psycopg.conninfo.conninfo_to_dict(server_dsn)
    info["dbname"] = name
    try:
        yield psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in info.items() if v is not None})
    finally:
        with psycopg.connect(server_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def journal_content(dsn: str, group: str) -> dict[str, Any]:
    """What a journal holds, independent of the Kafka coordinates and the source positions: vouchers (keys are
    derived from the source row and the accounting content, so two captures of the same changes give the same
    keys), their lines, outcomes per source operation, rejection codes."""
    return {
        "vouchers": rows(dsn, "SELECT key, kind, reverses, reversed_by, status, book, voucher_date, voucher_group, "
                              "explanation, debit_total, source_system, source_table, source_pk, source_op "
                              "FROM kdcdc.vouchers ORDER BY key"),
        "entries": rows(dsn, "SELECT voucher_key, seq, account, side, amount, currency, rate, amount_for, "
                             "dimensions::text, explanation FROM kdcdc.entries ORDER BY voucher_key, seq"),
        "outcomes": rows(dsn, "SELECT source_system, source_table, op, outcome, count(*) FROM kdcdc.event_records "
                              "WHERE consumer_group = %s GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4", group),
        "rejections": rows(dsn, "SELECT source_system, source_pk, code FROM kdcdc.rejections ORDER BY 1, 2, 3"),
    }


def debits_by_currency(dsn: str) -> dict[tuple[str, str], Decimal]:
    """(system, currency) → what the journal debits in transaction currency (reversals net out), without the
    rules' rounding-difference lines: comparable with ``BusinessDatabases.source_debits`` (as the demo does)."""
    rules = load_rules(RULES)
    rounding = [r.spec.rounding.account for r in rules.rules if r.spec.rounding]
    return {(s, c): Decimal(a).quantize(Decimal("0.01")) for s, c, a in rows(
        dsn, "SELECT v.source_system, e.currency, sum(e.amount_for) FROM kdcdc.entries e JOIN kdcdc.vouchers v "
             "ON v.key = e.voucher_key WHERE e.side = 'debit' AND NOT e.account = ANY(%s) GROUP BY 1, 2",
        rounding) if a != 0}


def wait_for_topics(bootstrap: str, expected: Mapping[str, int], timeout_s: float = 120) -> dict[str, int]:
    """Until every topic holds at least its expected number of records (helpers.wait_for_records reads
    JSON values when it times out; these topics hold Avro)."""
    def there() -> dict[str, int] | None:
        got = record_counts(bootstrap, list(expected))
        return got if all(got[t] >= n for t, n in expected.items()) else None
    return wait_for(there, timeout_s, f"Debezium to write {dict(expected)}",
                    observe=lambda: record_counts(bootstrap, list(expected)), interval_s=0.2)


def schema_ids(bootstrap: str, topic: str, n: int) -> list[int | None]:
    """The schema id of every record value of ``topic`` in offset order (``None`` for a tombstone)."""
    out: list[int | None] = []
    for m in sorted(consume_all(bootstrap, topic, n), key=lambda m: m.offset()):
        v = m.value()
        out.append(None if not v else struct.unpack(">I", v[1:5])[0] if v[0] == 0 else -1)
    return out


class DroppedColumns:
    """A ``SampleGenerator`` whose rows leave out columns dropped from the business tables (the sample
    application after its own schema change); everything else is the wrapped generator's."""

    def __init__(self, gen: SampleGenerator) -> None:
        self._gen = gen
        self.dropped: dict[str, set[str]] = {}

    def row(self, t: SampleTable) -> dict[str, Any]:
        r = self._gen.row(t)
        return {k: v for k, v in r.items() if k not in self.dropped.get(t.table, ())}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._gen, name)


class Background:
    """The pipeline running in a thread while the test writes to the business databases."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.error: BaseException | None = None
        self.stats: PipelineStats | None = None
        self.thread = threading.Thread(target=self._run, name="pipeline", daemon=True)

    def _run(self) -> None:
        try:
            self.stats = self.pipeline.run()
        except BaseException as e:  # noqa: BLE001 — reported by alive() and __exit__
            self.error = e

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def alive(self) -> bool:
        if self.error is not None:
            raise AssertionError(f"the pipeline failed: {self.error!r}") from self.error
        return self.thread.is_alive()

    def __exit__(self, *exc: object) -> None:
        self.pipeline.stop()
        self.thread.join(60)
        if self.error is not None and exc[0] is None:
            raise AssertionError(f"the pipeline failed: {self.error!r}") from self.error


def journaled_to(dsn: str, group: str, expected: Mapping[str, int]) -> bool:
    """Whether the journal's offsets of ``group`` reached ``expected`` (topic → records) on every topic."""
    try:
        stored = dict(rows(dsn, "SELECT topic, next_offset FROM kdcdc.offsets WHERE consumer_group = %s", group))
    except psycopg.errors.UndefinedTable:  # the pipeline has not migrated the journal yet
        return False
    return all(stored.get(t, 0) >= n for t, n in expected.items())


def run_pipelines(runs: Sequence[tuple[Pipeline, str, Mapping[str, int]]], timeout_s: float = 60) -> None:
    """Run pipelines side by side until each has journaled its topics up to the given record counts
    (``(pipeline, journal dsn, topic → records)``), then stop them."""
    with ExitStack() as stack:
        bgs = [stack.enter_context(Background(p)) for p, _, _ in runs]
        wait_for(lambda: all(bg.alive() and journaled_to(dsn, p.journal.group, exp)
                             for bg, (p, dsn, exp) in zip(bgs, runs, strict=True)),
                 timeout_s, "the pipelines to journal every record", interval_s=0.2)
