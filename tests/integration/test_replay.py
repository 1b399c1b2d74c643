"""Replay: a topic re-published after processing creates nothing new, and the summary says so."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from connector.events import Decoder
from connector.journal import Journal
from connector.mapping import Mapper, load_rules
from connector.pipeline import Processor
from connector.replay import dry_run, replay
from tests.integration.helpers import RULES, make_pipeline, produce, rows


def test_replaying_a_processed_stream_creates_zero_vouchers(kafka_bootstrap: str, topic_factory: Callable[..., str],
                                                            pg_dsn: str) -> None:
    live, again = topic_factory("live", partitions=2), topic_factory("live.replay", partitions=3)
    produce(kafka_bootstrap, live, 600, seed=31)
    produced = produce(kafka_bootstrap, again, 600, seed=31)  # the same changes, re-published
    group = f"g-{uuid.uuid4().hex[:6]}"
    make_pipeline(kafka_bootstrap, pg_dsn, [live], group=group).run(max_idle_s=2)
    vouchered = rows(pg_dsn, "SELECT count(*) FROM kdcdc.event_log WHERE outcome = 'VOUCHERED'")[0][0]
    vouchers = rows(pg_dsn, "SELECT count(*) FROM kdcdc.vouchers")[0][0]
    journal = Journal(pg_dsn, group=f"{group}-replay")
    preview = dry_run(journal=journal, processor=Processor(Decoder(), Mapper(load_rules(RULES))),
                      kafka_conf={"bootstrap.servers": kafka_bootstrap, "log_level": "3"}, topic=again)
    assert preview.records == produced.count and preview.new == 0 and preview.already_present == vouchered
    assert rows(pg_dsn, "SELECT count(*) FROM kdcdc.event_log WHERE consumer_group = %s", f"{group}-replay")[0][0] == 0
    summary = replay(journal=journal, processor=Processor(Decoder(), Mapper(load_rules(RULES))),
                     kafka_conf={"bootstrap.servers": kafka_bootstrap, "log_level": "3"}, topic=again,
                     progress=False)
    journal.close()
    assert summary.records == produced.count
    assert summary.new == 0 and summary.already_present == vouchered > 400
    assert rows(pg_dsn, "SELECT count(*) FROM kdcdc.vouchers")[0][0] == vouchers
