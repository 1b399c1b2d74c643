"""Replay: a topic re-published after processing creates nothing new, and the summary says so; after a rule
change, --repost-changed corrects exactly the rows whose vouchers in force differ."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from confluent_kafka import Producer

from harness import samples
from connector.events import Decoder
from connector.journal import Journal
from connector.ledger import canonical_pk
from connector.mapping import Mapper, load_rules
from connector.pipeline import Processor
from connector.replay import dry_run, replay, repost_changed
from tests.integration.helpers import RULES, make_pipeline, produce, rows, sample_stream


def test_replaying_a_processed_stream_creates_zero_vouchers(kafka_bootstrap: str, topic_factory: Callable[..., str],
                                                            pg_dsn: str) -> None:
    live, again = topic_factory("live", partitions=2), topic_factory("live.replay", partitions=3)
    produce(kafka_bootstrap, live, 600, seed=31)
    produced = produce(kafka_bootstrap, again, 600, seed=31)  # the same changes, re-published
    group = f"g-{uuid.uuid4().hex[:6]}"
    make_pipeline(kafka_bootstrap, pg_dsn, [live], group=group).run(max_idle_s=2)
    vouchered = rows(pg_dsn, "SELECT count(*) FROM kdcdc.event_records WHERE outcome = 'VOUCHERED'")[0][0]
    vouchers = rows(pg_dsn, "SELECT count(*) FROM kdcdc.vouchers")[0][0]
    journal = Journal(pg_dsn, group=f"{group}-replay")
    preview = dry_run(journal=journal, processor=Processor(Decoder(), Mapper(load_rules(RULES))),
                      kafka_conf={"bootstrap.servers": kafka_bootstrap, "log_level": "3"}, topic=again)
    assert preview.records == produced.count and preview.new == 0 and preview.already_present == vouchered
    assert rows(pg_dsn, "SELECT count(*) FROM kdcdc.event_records WHERE consumer_group = %s", f"{group}-replay")[0][0] == 0
    summary = replay(journal=journal, processor=Processor(Decoder(), Mapper(load_rules(RULES))),
                     kafka_conf={"bootstrap.servers": kafka_bootstrap, "log_level": "3"}, topic=again,
                     progress=False)
    journal.close()
    assert summary.records == produced.count
    assert summary.new == 0 and summary.already_present == vouchered > 400
    assert rows(pg_dsn, "SELECT count(*) FROM kdcdc.vouchers")[0][0] == vouchers


def test_repost_changed_reverses_and_corrects_exactly_the_rows_a_rule_change_affects(
        kafka_bootstrap: str, topic_factory: Callable[..., str], pg_dsn: str, tmp_path: Path) -> None:
    live, prefix = topic_factory("rp", partitions=2), topic_factory("rp.replay", partitions=1)
    produce(kafka_bootstrap, live, 600, seed=44)
    produce(kafka_bootstrap, prefix, 300, seed=44)  # the same stream's first half, re-published
    group = f"g-{uuid.uuid4().hex[:6]}"
    make_pipeline(kafka_bootstrap, pg_dsn, [live], group=group).run(max_idle_s=2)
    # Finance decides online sales go to 6001.01 like store sales.
    new_rules = tmp_path / "rules"
    shutil.copytree(RULES, new_rules)
    lookups = new_rules / "lookups.yaml"
    lookups.write_text(lookups.read_text().replace('ONLINE: "6001.02"', 'ONLINE: "6001.01"'))
    active_q = ("SELECT DISTINCT v.source_pk FROM kdcdc.vouchers v JOIN kdcdc.entries e ON e.voucher_key = v.key "
                "WHERE v.kind <> 'reversal' AND v.reversed_by IS NULL AND e.account = %s")
    expected = {r[0] for r in rows(pg_dsn, active_q, "6001.02")}
    assert len(expected) > 10
    before = rows(pg_dsn, "SELECT count(*) FROM kdcdc.vouchers")[0][0]
    conf = {"bootstrap.servers": kafka_bootstrap, "log_level": "3"}
    processor = Processor(Decoder(), Mapper(load_rules(new_rules)))
    journal = Journal(pg_dsn, group=group)

    preview = repost_changed(journal=journal, processor=processor, kafka_conf=conf, topic=live, dry_run=True,
                             progress=False)
    assert {c.row.pk for c in preview.changes} == expected and not preview.stale
    assert rows(pg_dsn, "SELECT count(*) FROM kdcdc.vouchers")[0][0] == before  # a dry run writes nothing
    assert all(len(c.old) == 1 and [v.kind.value for v in c.new] == ["reversal", "original"] for c in preview.changes)

    done = repost_changed(journal=journal, processor=processor, kafka_conf=conf, topic=live, progress=False)
    assert done.inserted == 2 * len(expected) and {c.row.pk for c in done.changes} == expected
    assert rows(pg_dsn, active_q, "6001.02") == []  # nothing in force uses the old account any more
    corrected = rows(pg_dsn, "SELECT v.source_pk, sum(CASE e.side WHEN 'credit' THEN e.amount ELSE -e.amount END) "
                             "FILTER (WHERE e.account LIKE '6001.0_' AND e.account <> '6001.09') "
                             "FROM kdcdc.vouchers v JOIN kdcdc.entries e ON e.voucher_key = v.key "
                             "WHERE v.source_position LIKE %s GROUP BY 1", f"%#remap:{done.tag}")
    assert {pk for pk, _ in corrected} == expected  # reversal and correction of every row, revenue unchanged
    assert all(net == 0 for _, net in corrected)
    assert rows(pg_dsn, "SELECT count(*) FROM kdcdc.audit WHERE actor = 'replay --repost-changed'")[0][0] == \
        2 * len(expected)

    again = repost_changed(journal=journal, processor=processor, kafka_conf=conf, topic=live, progress=False)
    assert again.changes == [] and again.inserted == 0  # idempotent
    # A range that stops before a row's later change never "corrects" it backwards: the first POS order
    # is cancelled in the live stream after the prefix was re-published.
    t, key, env = next((t, k, e) for t, k, e in sample_stream(600, seed=44) if t is samples.POS and e["op"] == "c")
    cancel = samples.envelope(t, "d", before=env["after"], after=None, lsn=10**12)
    producer = Producer(conf)
    producer.produce(live, key=samples.json_key({"sys": t.system, **key}), value=samples.encode_json(t, cancel))
    assert producer.flush(30) == 0
    make_pipeline(kafka_bootstrap, pg_dsn, [live], group=group).run(max_idle_s=2)
    stale = repost_changed(journal=journal, processor=processor, kafka_conf=conf, topic=prefix, dry_run=True,
                           progress=False)
    journal.close()
    assert [r.pk for r in stale.stale] == [canonical_pk({"sys": t.system, **key})] and not stale.changes
