"""Offsets tooling on the real broker and journal: show, move back (re-reads are duplicates), refuse while active."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable

import pytest

from connector.journal import Journal
from connector.offsets import OffsetsError, set_offsets, show
from tests.integration.helpers import make_pipeline, produce, rows, wait_for


def test_show_set_and_replay_without_duplicates(kafka_bootstrap: str, topic_factory: Callable[..., str],
                                                pg_dsn: str) -> None:
    topic = topic_factory("offs", partitions=2)
    produced = produce(kafka_bootstrap, topic, 400, seed=21, poison_every=150)  # rejections and dead letters too
    group = f"g-{uuid.uuid4().hex[:6]}"
    make_pipeline(kafka_bootstrap, pg_dsn, [topic], group=group).run(max_idle_s=2)
    conf = {"bootstrap.servers": kafka_bootstrap, "log_level": "3"}
    journal = Journal(pg_dsn, group=group)
    before = show(journal, conf, topic)
    assert sum(o.high for o in before) == produced.count and all(o.lag == 0 for o in before)
    vouchers = rows(pg_dsn, "SELECT count(*) FROM kdcdc.vouchers")[0][0]
    moved = set_offsets(journal, conf, topic, "earliest")
    assert moved == {0: 0, 1: 0} and all(o.lag == o.high for o in show(journal, conf, topic))
    assert rows(pg_dsn, "SELECT count(*) FROM kdcdc.audit WHERE action = 'OFFSETS_SET'")[0][0] == 1
    assert rows(pg_dsn, "SELECT count(*) FROM kdcdc.event_records WHERE consumer_group = %s", group)[0][0] == 0
    stats = make_pipeline(kafka_bootstrap, pg_dsn, [topic], group=group).run(max_idle_s=2)
    assert stats.records == produced.count and stats.vouchers == 0  # everything re-read, nothing posted twice
    assert rows(pg_dsn, "SELECT count(*) FROM kdcdc.vouchers")[0][0] == vouchers
    assert rows(pg_dsn, "SELECT count(*) FROM kdcdc.event_records WHERE consumer_group = %s", group)[0][0] \
        == produced.count  # one outcome per record again
    assert stats.dead_lettered + stats.rejected >= produced.poison
    with pytest.raises(OffsetsError, match="outside the log"):
        set_offsets(journal, conf, topic, "99999")
    # While an instance is consuming, moving offsets is refused.
    pipe = make_pipeline(kafka_bootstrap, pg_dsn, [topic], group=group)
    runner = threading.Thread(target=lambda: pipe.run(max_idle_s=6))
    runner.start()
    try:
        wait_for(lambda: pipe.assigned, 20, f"the running pipeline to be assigned partitions of {topic}")
        with pytest.raises(OffsetsError, match="active members"):
            set_offsets(journal, conf, topic, "latest")
    finally:
        pipe.stop()
        runner.join(30)
        journal.close()
