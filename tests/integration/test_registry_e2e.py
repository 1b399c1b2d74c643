"""Avro through a real schema registry, end to end: business PostgreSQL → Debezium (Kafka Connect) with
Apicurio's AvroConverter → Kafka (Confluent wire format) → kingdee-cdc (``RegistrySchemas`` over Apicurio's
Confluent-compatible API) → journal.

One Apicurio Registry (from Maven Central, in-memory) and one Kafka Connect worker serve the module; each test
has its own business PostgreSQL, adds its connectors over Connect's REST API and renames its topics
(``<test prefix>.<system>.public.<table>``), so nothing is shared with test_debezium_e2e.py's topics.
"""

from __future__ import annotations

import itertools
import signal
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import psycopg
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient

from harness.apicurio import ApicurioRegistry, avro_connector_config, ensure_converter_plugin
from harness.debezium import BusinessDatabases, KafkaConnect, connector_config
from harness.devstack import EmbeddedPostgres, _stop_process
from harness.samples import SampleGenerator
from connector.events import ChangeEvent, Decoder, RegistrySchemas
from tests.integration.helpers import consume_all, make_pipeline, pos_amounts, record_counts, rows, wait_for
from tests.integration.registry_helpers import Background, CountingRegistry, DroppedColumns, add_connectors, \
    debits_by_currency, fresh_database, journal_content, journaled_to, remove_connectors, routed, run_pipelines, \
    schema_ids, wait_for_topics

pytestmark = pytest.mark.integration
SYSTEMS = ("pos", "purchasing", "payroll")


# --------------------------------------------------------------------------- module services
@pytest.fixture(scope="module")
def connect(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaConnect]:
    """A Kafka Connect worker with the Debezium PostgreSQL connector and Apicurio's converter on its plugin
    path, no connectors yet (tests add theirs). Started without waiting: it boots while the registry does."""
    ensure_converter_plugin()
    worker = KafkaConnect(tmp_path_factory.mktemp("connect"), kafka_bootstrap, [])
    worker.start()
    try:
        yield worker
    finally:
        # Its connectors are gone by now (each test removes its own), so nothing is lost by a short grace:
        # the worker's shutdown hook sometimes hangs (Jetty's own hook races it: "Unable to destroy …
        # IllegalStateException: STARTED") and JavaService.stop would wait 30 s before killing it.
        _stop_process(worker.proc, None, signal.SIGTERM, 10)
        worker.proc = None


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApicurioRegistry]:
    with ApicurioRegistry(tmp_path_factory.mktemp("apicurio")) as reg:
        print(f"\n  apicurio: {reg.info()['version']} on Java {reg.java.major if reg.java else '?'}, ready after "
              f"{reg.ready_after_s:.1f} s, {reg.rss_mb() or 0:.0f} MiB resident")
        yield reg
        print(f"\n  apicurio: {reg.rss_mb() or 0:.0f} MiB resident after the module")


@pytest.fixture
def business(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    with EmbeddedPostgres(tmp_path / "business", durable=False) as pg:
        yield pg


def _routed_counts(biz: BusinessDatabases, prefix: str) -> dict[str, int]:
    return {f"{prefix}.{t}": n for t, n in biz.expected_records.items()}


def _one_outcome_per_record(dsn: str, group: str, produced: dict[str, int]) -> None:
    outcomes = rows(dsn, "SELECT topic, count(*), count(DISTINCT kafka_offset) FROM kdcdc.event_records "
                         "WHERE consumer_group = %s GROUP BY topic", group)
    assert {t: (n, d) for t, n, d in outcomes} == {t: (n, n) for t, n in produced.items()}
    offsets = dict(rows(dsn, "SELECT topic, next_offset FROM kdcdc.offsets WHERE consumer_group = %s", group))
    assert offsets == produced


# --------------------------------------------------------------------------- the tests
def test_debezium_avro_through_the_registry_gives_the_vouchers_json_gives(
        kafka_bootstrap: str, pg_server_dsn: str, pg_dsn: str, connect: KafkaConnect, registry: ApicurioRegistry,
        business: EmbeddedPostgres, capsys: pytest.CaptureFixture[str]) -> None:
    """The same business changes captured twice from the same databases — once as Avro through the registry,
    once as JSON with schemas — journal the same vouchers, line for line, and tie to the source databases."""
    biz = BusinessDatabases(business.dsn(), SYSTEMS).create()
    cny: dict[str, Any] = {"currency": "CNY"}
    snap = [biz.insert("pos", lines=2, payment_method="CASH", **cny, **pos_amounts(g)) for g in ("113.00", "56.50")]
    snap += [biz.insert("purchasing"), biz.insert("payroll")]

    prefix = f"reg{uuid.uuid4().hex[:6]}"
    avro_topics, json_topics = f"{prefix}.avro", f"{prefix}.json"
    configs = []
    for s in SYSTEMS:
        base = connector_config(s, "127.0.0.1", business.port)
        configs.append(routed(avro_connector_config(base, registry.v2_url), avro_topics))
        configs.append(routed(base, json_topics, variant="json"))
    add_connectors(connect, configs)
    try:
        # both captures finish their snapshots before anything streams (else a new row may arrive as a read)
        wait_for_topics(kafka_bootstrap, _routed_counts(biz, avro_topics) | _routed_counts(biz, json_topics))
        biz.update("pos", snap[0].row_id, **pos_amounts("141.25"))  # a snapshot row corrected
        biz.delete("purchasing", snap[2].row_id)  # a snapshot row cancelled
        bad = biz.insert("pos", payment_method="CREDIT", customer_code=None, **cny, **pos_amounts("90.40"))
        biz.bad.add(("pos", bad.row_id))  # a credit sale without a customer: rejected, both ways
        for _ in biz.traffic(90, seed=23, bad_every=0):
            pass
        expected = _routed_counts(biz, avro_topics) | _routed_counts(biz, json_topics)
        wait_for_topics(kafka_bootstrap, expected)
    finally:
        remove_connectors(connect, configs)
        biz.close()

    avro = [t for t in expected if t.startswith(avro_topics)]
    jsons = [t for t in expected if t.startswith(json_topics)]
    produced = record_counts(kafka_bootstrap, avro + jsons)
    assert [produced[t] for t in avro] == [produced[t] for t in jsons]  # the twin captured the same changes
    first = consume_all(kafka_bootstrap, avro[0], 1)[0].value()
    assert first[:1] == b"\x00", "Debezium did not write the Confluent wire format"

    with SchemaRegistryClient({"url": registry.ccompat_url}) as client, fresh_database(pg_server_dsn) as json_dsn:
        counting = CountingRegistry(client)
        run_pipelines([
            (make_pipeline(kafka_bootstrap, pg_dsn, avro, group="avro", registry=counting), pg_dsn,
             {t: produced[t] for t in avro}),
            (make_pipeline(kafka_bootstrap, json_dsn, jsons, group="json"), json_dsn, {t: produced[t] for t in jsons})])
        _one_outcome_per_record(pg_dsn, "avro", {t: produced[t] for t in avro})
        _one_outcome_per_record(json_dsn, "json", {t: produced[t] for t in jsons})
        from_avro, from_json = journal_content(pg_dsn, "avro"), journal_content(json_dsn, "json")
        subjects = client.get_subjects()

    assert not [o for o in from_avro["outcomes"] if o[3] == "DEAD_LETTERED"], from_avro["outcomes"]
    for part in ("vouchers", "entries", "outcomes", "rejections"):
        assert from_avro[part] == from_json[part], part
    outcomes = {(s, t.rpartition(".")[2], op, o): n for s, t, op, o, n in from_avro["outcomes"] if s}
    assert outcomes.get(("pos", "sales_order", "r", "VOUCHERED")) == 2
    assert outcomes.get(("purchasing", "purchase_invoice", "d", "VOUCHERED"), 0) >= 1
    assert sum(n for (_, _, _, o), n in outcomes.items() if o == "VOUCHERED") >= 80
    assert ("pos", f'{{"id":{bad.row_id}}}', "MISSING_DIMENSION") in from_avro["rejections"]
    assert debits_by_currency(pg_dsn) == biz.source_debits()  # exact amounts, tied to the business databases

    # one registry look-up per schema id however many records carry it: keys, values, per table
    assert {f"{t}-value" for t in avro} <= set(subjects)
    assert counting.calls and max(counting.calls.values()) == 1
    assert len(counting.calls) == 2 * len(avro), counting.calls  # a key and a value schema per table
    with capsys.disabled():
        print(f"\n  registry e2e: {sum(produced[t] for t in avro)} Avro records (= {sum(produced[t] for t in jsons)} "
              f"JSON) from {len(biz.changes)} business changes; {len(from_avro['vouchers'])} vouchers equal line "
              f"for line; {len(counting.calls)} schema ids fetched once each")


def test_schema_evolution_under_load(
        kafka_bootstrap: str, pg_dsn: str, connect: KafkaConnect, registry: ApicurioRegistry,
        business: EmbeddedPostgres, capsys: pytest.CaptureFixture[str]) -> None:
    """While changes stream and the pipeline consumes, the business tables change shape: a column is added
    (sales_order.note), one the rules do not read is dropped (purchase_invoice.created_at, NOT NULL), and an
    amount the rules read is widened (payroll_line.gross_salary numeric(12,2) → numeric(18,2)). Debezium
    registers a new schema version for each; every record is decoded with its writer schema; nothing is lost;
    an amount the old column could not hold is vouchered, and an implausible one is rejected with its reason."""
    biz = BusinessDatabases(business.dsn(), SYSTEMS).create()
    gen = DroppedColumns(biz.gen)
    biz.gen = cast(SampleGenerator, gen)
    _ddl(biz, "payroll", "ALTER TABLE payroll_line ALTER COLUMN gross_salary TYPE numeric(12,2)")
    for system in SYSTEMS:
        biz.insert(system, lines=1 if system == "pos" else 0)

    prefix = f"evo{uuid.uuid4().hex[:6]}"
    configs = [routed(avro_connector_config(connector_config(s, "127.0.0.1", business.port), registry.v2_url), prefix)
               for s in SYSTEMS]
    topics = [f"{prefix}.{t}" for t in biz.expected_records]
    big = Decimal("23456789012.34")  # more than numeric(12,2) holds
    huge = Decimal("12345678901234.56")  # fits numeric(18,2), beyond the ledger's 15 plausible digits
    with SchemaRegistryClient({"url": registry.ccompat_url}) as client:
        counting = CountingRegistry(client)
        add_connectors(connect, configs)
        try:
            wait_for_topics(kafka_bootstrap, _routed_counts(biz, prefix))  # snapshot done: the topics exist
            pipeline = make_pipeline(kafka_bootstrap, pg_dsn, topics, group="evo", registry=counting, batch_size=50)
            with Background(pipeline) as running:
                for i, _ in enumerate(biz.traffic(400, seed=31, bad_every=0)):
                    assert running.alive()
                    if i == 100:
                        _ddl(biz, "pos", "ALTER TABLE sales_order ADD COLUMN note text")
                        noted = [biz.insert("pos", lines=1, note=f"evolved {n}", payment_method="CASH").row_id
                                 for n in range(3)]
                    elif i == 200:
                        _ddl(biz, "purchasing", "ALTER TABLE purchase_invoice DROP COLUMN created_at")
                        gen.dropped["purchase_invoice"] = {"created_at"}
                    elif i == 300:
                        _ddl(biz, "payroll", "ALTER TABLE payroll_line ALTER COLUMN gross_salary TYPE numeric(18,2)")
                        widened = biz.insert("payroll", **_payroll_amounts(big)).row_id
                        implausible = biz.insert("payroll", **_payroll_amounts(huge)).row_id
                        biz.bad.add(("payroll", implausible))
                expected = _routed_counts(biz, prefix)
                wait_for_topics(kafka_bootstrap, expected)

                wait_for(lambda: running.alive() and journaled_to(pg_dsn, "evo", expected), 60,
                         "the pipeline to journal every record", interval_s=0.2)
        finally:
            remove_connectors(connect, configs)
            biz.close()

        produced = record_counts(kafka_bootstrap, topics)
        assert produced == expected
        _one_outcome_per_record(pg_dsn, "evo", produced)
        assert rows(pg_dsn, "SELECT count(*) FROM kdcdc.event_records WHERE outcome = 'DEAD_LETTERED'") == [(0,)]

        # A new registry version for each evolved table; each record names the version it was written with.
        versions = {t: len(client.get_versions(f"{prefix}.{t}-value")) for t in biz.expected_records}
        ids = {t: schema_ids(kafka_bootstrap, f"{prefix}.{t}", produced[f"{prefix}.{t}"])
               for t in biz.expected_records}
        for table in ("pos.public.sales_order", "purchasing.public.purchase_invoice", "payroll.public.payroll_line"):
            assert versions[table] == 2, (table, versions)
            seen = [i for i in ids[table] if i is not None]
            switches = sum(1 for a, b in itertools.pairwise(seen) if a != b)
            assert len(set(seen)) == 2 and switches == 1, (table, seen)  # one id per version, switched once
        assert versions["pos.public.sales_order_line"] == 1

        # Decoded with its writer schema: a record has the note column exactly when its schema has it, etc.
        check = CountingRegistry(client)
        decoder = Decoder(RegistrySchemas(check))
        for table, column in (("pos.public.sales_order", "note"), ("purchasing.public.purchase_invoice", "created_at")):
            topic = f"{prefix}.{table}"
            has_by_id: dict[int, set[bool]] = {}
            for m in consume_all(kafka_bootstrap, topic, produced[topic]):
                value = m.value()
                if not value:
                    continue
                ev = decoder.decode_message(m)
                assert isinstance(ev, ChangeEvent), ev
                has_by_id.setdefault(int.from_bytes(value[1:5], "big"), set()).add(column in (ev.after or ev.before or {}))
            assert sorted(has_by_id.values(), key=sorted) == [{False}, {True}], (table, has_by_id)
        # one registry look-up per schema id and decoder, however many records carry it
        assert counting.calls and max(counting.calls.values()) == 1, counting.calls
        assert max(check.calls.values()) == 1 and check.calls.keys() <= counting.calls.keys(), check.calls

    # The rules kept working across the versions: exact amounts, the wide one included, the implausible one held.
    assert debits_by_currency(pg_dsn) == biz.source_debits()
    noted_out = rows(pg_dsn, "SELECT DISTINCT outcome FROM kdcdc.event_records WHERE consumer_group = 'evo' AND "
                             "source_system = 'pos' AND source_table LIKE '%%.sales_order' AND op = 'c' AND "
                             "source_pk = ANY(%s)", [f'{{"id":{r}}}' for r in noted])
    assert noted_out == [("VOUCHERED",)]
    wide = rows(pg_dsn, "SELECT debit_total FROM kdcdc.vouchers WHERE source_system = 'payroll' AND source_pk = %s",
                f'{{"id":{widened}}}')
    assert wide == [(big + _payroll_amounts(big)["social_insurance_company"],)]
    held = rows(pg_dsn, "SELECT code, message FROM kdcdc.rejections WHERE source_system = 'payroll' AND "
                        "source_pk = %s", f'{{"id":{implausible}}}')
    assert held and {c for c, _ in held} == {"AMOUNT_OUT_OF_RANGE"}, held
    outcomes = dict(rows(pg_dsn, "SELECT outcome, count(*) FROM kdcdc.event_records WHERE consumer_group = 'evo' "
                                 "GROUP BY 1"))
    with capsys.disabled():
        print(f"\n  schema evolution: {sum(produced.values())} records, outcomes {outcomes}; value schema versions "
              f"{versions}; ids per table {ids_summary(ids)}; registry look-ups {dict(counting.calls)}; "
              f"rejected: {held[0][1][:120]}")


def ids_summary(ids: dict[str, list[int | None]]) -> dict[str, list[tuple[int, int]]]:
    """Per table: (schema id, how many records in a row carry it), tombstones left out."""
    out: dict[str, list[tuple[int, int]]] = {}
    for table, seq in ids.items():
        runs: list[tuple[int, int]] = []
        for i in seq:
            if i is None:
                continue
            if runs and runs[-1][0] == i:
                runs[-1] = (i, runs[-1][1] + 1)
            else:
                runs.append((i, 1))
        out[table] = runs
    return out


def _ddl(biz: BusinessDatabases, system: str, statement: str) -> None:
    """A schema change made by the business application's owner, on its own connection."""
    with psycopg.connect(biz.dsn(system), autocommit=True) as conn:
        conn.execute(statement)  # trusted constant DDL


def _payroll_amounts(gross: Decimal) -> dict[str, Any]:
    si_emp = (gross * Decimal("0.105")).quantize(Decimal("0.01"))
    si_co = (gross * Decimal("0.26")).quantize(Decimal("0.01"))
    tax = ((gross - si_emp) * Decimal("0.03")).quantize(Decimal("0.01"))
    return {"gross_salary": gross, "social_insurance_company": si_co, "social_insurance_employee": si_emp,
            "income_tax": tax, "net_pay": gross - si_emp - tax}
