"""Invariant 1 on the real thing: SIGKILL the pipeline at random moments, restart it, check every outcome.

Events are Debezium bank-statement changes in JSON with ``decimal.handling.mode=string`` (no registry is
needed across processes). The expected vouchers are computed independently by mapping the same stream
in memory; the journal must hold exactly those, one outcome per record, and offsets at the log end.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import Producer

from connector.events import ChangeEvent, Decoder
from connector.mapping import InMemoryLedger, Mapper, load_rules
from harness import samples
from tests.integration.helpers import CLI, group_assignment, log_end, rows, wait_for

RULES = Path(__file__).resolve().parent / "rules_string_decimals"
pytestmark = pytest.mark.slow


def _produce_bank(bootstrap: str, topic: str, n: int, seed: int = 3) -> tuple[list[tuple[bytes, bytes]], int]:
    gen = samples.SampleGenerator(seed=seed)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": "20", "enable.idempotence": "true",
                         "log_level": "3"})
    records = []
    for i, (key, env) in enumerate(samples.change_stream(gen, samples.BANK, n, update_every=4, delete_every=9)):
        k = samples.json_key(key)
        v = samples.encode_json(samples.BANK, env, schemas=False, decimals="string")
        if i % 997 == 996:
            v = b"\x00\x00\x00\x00\x07corrupt"  # poison: must be dead-lettered, not stop anything
        producer.produce(topic, key=k, value=v)
        records.append((k, v))
        if i % 1000 == 0:
            producer.poll(0)
    assert producer.flush(60) == 0
    return records, len(records)


def _expected_keys(records: list[tuple[bytes, bytes]]) -> tuple[set[str], int, int]:
    """(voucher keys, entries, dead letters) the stream must give, mapped in memory."""
    mapper, ledger, decoder = Mapper(load_rules(RULES)), InMemoryLedger(), Decoder()
    entries = dead = 0
    for k, v in records:  # one partition per key: per-key order is production order
        ev = decoder.decode(v, key=k)
        if isinstance(ev, ChangeEvent):
            result = mapper.map(ev, ledger)
            ledger.apply(result)
            entries += sum(len(x.entries) for x in result.vouchers)
            dead += bool(result.rejections)
        else:
            dead += 1
    keys = {v.key for v in ledger.posted}
    # Guard against a vacuous run: if the rules rejected everything (as they did once a default-deny permission
    # check arrived and this test's ledger had no permissions), "nothing lost, nothing twice" proves nothing.
    assert len(keys) > len(records) // 2 and dead < len(records) // 100, (len(keys), dead, len(records))
    return keys, entries, dead


def _config(tmp: Path, bootstrap: str, dsn: str, topic: str, group: str, instance: str = "1",
            batch_size: int = 250) -> Path:
    """Static membership (``group.instance.id``) as on Kubernetes StatefulSets: a restarted instance takes its
    partitions back at once instead of waiting for the dead member's session to time out."""
    cfg = tmp / f"{group}-{instance}.yaml"
    cfg.write_text(yaml.safe_dump({
        "kafka": {"bootstrap_servers": bootstrap, "group_id": group, "topics": [topic],
                  "dead_letter_topic": f"{topic}.dlq", "batch_size": batch_size,
                  "client": {"log_level": "3", "group.instance.id": f"{group}-{instance}",
                             "session.timeout.ms": "6000", "heartbeat.interval.ms": "500"}},
        "journal": {"dsn": dsn}, "mapping": {"rules_dir": str(RULES)}, "log_level": "WARNING",
        "metrics": {"port": 0}}))  # several instances on one host: any free port
    return cfg


Start = Callable[..., "subprocess.Popen[bytes]"]


@pytest.fixture
def start() -> Iterator[Start]:
    """``start(cfg, log, idle=6.0)``: `kingdee-cdc run` as a child process; whatever still runs when the test
    ends (a failed assertion) is killed, so no instance outlives its test."""
    started: list[subprocess.Popen[bytes]] = []

    def run(cfg: Path, log: Path, idle: float = 6.0) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with log.open("ab") as out:  # the child keeps its own descriptor
            proc = subprocess.Popen([CLI, "run", "-c", str(cfg),
                                     "--exit-when-idle", str(idle)], stdout=out, stderr=subprocess.STDOUT, env=env)
        started.append(proc)
        return proc
    yield run
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _verify(dsn: str, group: str, topic: str, partitions: int, total: int, bootstrap: str,
            expected: set[str], expected_entries: int, expected_dead: int) -> dict[str, Any]:
    # event_records: one row per record (a range of skipped records is one event_log row: decision 0012)
    q = "SELECT kafka_partition, count(*), min(kafka_offset), max(kafka_offset) FROM kdcdc.event_records " \
        "WHERE consumer_group = %s GROUP BY 1"
    per_part = {r[0]: r[1:] for r in rows(dsn, q, group)}
    ends = {p: n for (_, p), n in log_end(bootstrap, [topic]).items()}
    assert len(ends) == partitions, ends
    logged = sum(v[0] for v in per_part.values())
    for p, end in ends.items():
        count, lo, hi = per_part.get(p, (0, None, None))
        assert (count, lo, hi) == (end, 0, end - 1), f"partition {p}: {count} outcomes for offsets 0..{end - 1}"
    stored = dict(rows(dsn, "SELECT kafka_partition, next_offset FROM kdcdc.offsets WHERE consumer_group = %s",
                       group))
    assert stored == ends, f"journal offsets {stored} != log end {ends}"
    keys = {r[0] for r in rows(dsn, "SELECT key FROM kdcdc.vouchers")}
    assert keys == expected, f"{len(keys - expected)} unexpected, {len(expected - keys)} missing vouchers"
    (entries,) = rows(dsn, "SELECT count(*) FROM kdcdc.entries")[0]
    assert entries == expected_entries
    # The audit trail (decision 0010): each voucher names the audit row of the batch that journaled it, and that
    # row's offsets hold the voucher's record; the committed batches count exactly the vouchers there are.
    (orphans,) = rows(dsn, "SELECT count(*) FROM kdcdc.vouchers v LEFT JOIN kdcdc.audit a ON a.id = v.batch_id "
                           "AND a.action = 'BATCH_JOURNALED' AND a.detail->>'group' = %s AND v.kafka_offset >= "
                           "(a.detail->'offsets'->(v.topic || '[' || v.kafka_partition || ']')->>0)::bigint "
                           "AND v.kafka_offset < (a.detail->'offsets'->(v.topic || '[' || v.kafka_partition || ']')"
                           "->>1)::bigint WHERE a.id IS NULL", group)[0]
    assert orphans == 0, f"{orphans} vouchers without the audit row of their batch"
    (audit_rows, counted) = rows(dsn, "SELECT count(*), sum((detail->>'vouchers')::int) FROM kdcdc.audit "
                                      "WHERE action = 'BATCH_JOURNALED' AND detail->>'group' = %s", group)[0]
    assert counted == len(expected)
    (unbalanced,) = rows(dsn, "SELECT count(*) FROM (SELECT voucher_key FROM kdcdc.entries GROUP BY 1 HAVING "
                              "sum(CASE side WHEN 'debit' THEN amount ELSE -amount END) <> 0) x")[0]
    assert unbalanced == 0
    (dead,) = rows(dsn, "SELECT count(*) FROM kdcdc.dead_letters WHERE consumer_group = %s", group)[0]
    assert dead == expected_dead, f"{dead} dead letters, expected {expected_dead} (the poison records)"
    assert logged == total
    return {"records": logged, "vouchers": len(keys), "entries": entries, "dead_letters": dead,
            "audit_batches": audit_rows, "partitions": dict(sorted(ends.items()))}


def test_sigkill_at_random_moments_loses_and_duplicates_nothing(
        kafka_bootstrap: str, topic_factory: Callable[..., str], pg_dsn: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], start: Start) -> None:
    partitions = 4
    topic = topic_factory("bank-crash", partitions=partitions)
    records, total = _produce_bank(kafka_bootstrap, topic, 30_000)
    expected, expected_entries, expected_dead = _expected_keys(records)
    group = f"crash-{uuid.uuid4().hex[:6]}"
    cfg = _config(tmp_path, kafka_bootstrap, pg_dsn, topic, group)
    log = tmp_path / "run.log"
    rng = random.Random(20261125)
    kills = 0
    progress: list[int] = []
    while sum(0 < p < total for p in progress) < 10 and kills < 40:
        before = progress[-1] if progress else 0
        proc = start(cfg, log)
        if rng.random() < 0.2:
            # A kill during start-up or the group join: at a random moment of the first second.
            time.sleep(rng.uniform(0.05, 1.0))
        else:
            # A kill while records are being journaled: once this instance has committed a batch (observed in
            # the journal), at a random moment of the next quarter second — inside a batch, its commit or the
            # next poll. The delay is the test's randomness (seeded above), not a wait for anything.
            def journaled_or_done(proc: subprocess.Popen[bytes] = proc, before: int = before) -> bool:
                return proc.poll() is not None or (_has_journal(pg_dsn) and int(rows(
                    pg_dsn, "SELECT count(*) FROM kdcdc.event_records")[0][0]) > before)
            wait_for(journaled_or_done, 120, "the restarted instance to journal a batch")
            time.sleep(rng.uniform(0.0, 0.25))
        if proc.poll() is not None:
            break  # finished everything before we could kill it
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        progress.append(rows(pg_dsn, "SELECT count(*) FROM kdcdc.event_records")[0][0] if _has_journal(pg_dsn) else 0)
    proc = start(cfg, log)
    assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    report = _verify(pg_dsn, group, topic, partitions, total, kafka_bootstrap, expected, expected_entries,
                     expected_dead)
    midstream = sum(0 < p < total for p in progress)
    assert midstream >= 10, f"only {midstream} kills landed mid-stream: progress {progress}"
    with capsys.disabled():
        print(f"\n[exactly-once] {kills} SIGKILLs, {midstream} mid-stream (journal progress at each: {progress}); "
              f"checked {report}")


def _wait_for_outcomes(dsn: str, at_least: int, timeout: float = 60.0) -> None:
    wait_for(lambda: _has_journal(dsn) and rows(dsn, "SELECT count(*) FROM kdcdc.event_records")[0][0] >= at_least,
             timeout, f"{at_least} outcomes in the journal")


def _has_journal(dsn: str) -> bool:
    return bool(rows(dsn, "SELECT to_regclass('kdcdc.event_records') IS NOT NULL")[0][0])


def _journaled_by(dsn: str, group: str) -> dict[str, set[str]]:
    """Which partitions each instance (host:pid) journaled batches of, from the batches' audit rows."""
    out: dict[str, set[str]] = {}
    for owner, part in rows(dsn, "SELECT DISTINCT detail->>'owner', jsonb_object_keys(detail->'offsets') "
                                 "FROM kdcdc.audit WHERE action = 'BATCH_JOURNALED' AND detail->>'group' = %s", group):
        out.setdefault(owner, set()).add(part)
    return out


def test_two_instances_with_one_killed_and_restarted(
        kafka_bootstrap: str, topic_factory: Callable[..., str], pg_dsn: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], start: Start) -> None:
    partitions = 4
    topic = topic_factory("bank-rebalance", partitions=partitions)
    records, total = _produce_bank(kafka_bootstrap, topic, 20_000, seed=9)
    expected, expected_entries, expected_dead = _expected_keys(records)
    group = f"rebal-{uuid.uuid4().hex[:6]}"
    cfg_a = _config(tmp_path, kafka_bootstrap, pg_dsn, topic, group, "a")
    cfg_b = _config(tmp_path, kafka_bootstrap, pg_dsn, topic, group, "b")
    a = start(cfg_a, tmp_path / "a.log", idle=12)
    b = start(cfg_b, tmp_path / "b.log", idle=12)
    everything = {(topic, p) for p in range(partitions)}

    def split() -> bool:  # the group shares the partitions out: each instance reads its own, none twice
        state, members = group_assignment(kafka_bootstrap, group)
        shares = [members.get(f"{group}-a", set()), members.get(f"{group}-b", set())]
        return state == "STABLE" and all(shares) and not shares[0] & shares[1] and shares[0] | shares[1] == everything
    wait_for(split, 60, "the group to split the partitions between a and b",
             observe=lambda: group_assignment(kafka_bootstrap, group))
    shares = group_assignment(kafka_bootstrap, group)[1]
    # both journal their own partitions side by side (each batch's audit row names its instance and offsets)
    wait_for(lambda: _has_journal(pg_dsn) and len(_journaled_by(pg_dsn, group)) == 2, 60,
             "batches journaled by both instances", observe=lambda: _journaled_by(pg_dsn, group))
    _wait_for_outcomes(pg_dsn, total // 10)
    b.send_signal(signal.SIGKILL)  # b dies holding partitions: a takes them over after the session timeout
    b.wait()
    mid = rows(pg_dsn, "SELECT count(*) FROM kdcdc.event_records")[0][0] if _has_journal(pg_dsn) else 0
    # After session.timeout.ms the broker drops b and the group rebalances all partitions onto a.

    def a_owns_everything() -> bool:
        assert a.poll() is None, (tmp_path / "a.log").read_text()[-3000:]
        return group_assignment(kafka_bootstrap, group) == ("STABLE", {f"{group}-a": everything})
    wait_for(a_owns_everything, 60, f"the group to rebalance b's partitions onto a (all of {sorted(everything)})",
             observe=lambda: group_assignment(kafka_bootstrap, group))
    b = start(cfg_b, tmp_path / "b.log", idle=12)  # and b comes back: another rebalance
    assert a.wait(timeout=600) == 0, (tmp_path / "a.log").read_text()[-3000:]
    assert b.wait(timeout=600) == 0, (tmp_path / "b.log").read_text()[-3000:]
    report = _verify(pg_dsn, group, topic, partitions, total, kafka_bootstrap, expected, expected_entries,
                     expected_dead)
    assert 0 < mid < total, f"the kill did not land mid-stream ({mid} of {total})"
    owners = rows(pg_dsn, "SELECT count(DISTINCT owner) FROM kdcdc.offsets WHERE consumer_group = %s", group)[0][0]
    with capsys.disabled():
        print(f"\n[rebalance] partitions split {({m: sorted(p for _, p in tps) for m, tps in shares.items()})}; killed "
              f"one of two instances at {mid} outcomes; final owners {owners}; checked {report}")
