"""Replay and backfill: run a topic (e.g. ``<topic>.replay``, a re-published snapshot) through the same
pipeline in its own consumer group, from an offset or a time, up to the log end or a time, with progress.

Voucher keys come from the source identity, so changes that were already journaled create nothing new;
the summary says how many were new, already present, rejected and dead-lettered.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from tqdm import tqdm

from connector.journal import Journal
from connector.offsets import set_offsets, show
from connector.pipeline import Pipeline, PipelineOptions, Processor


@dataclass(slots=True)
class ReplaySummary:
    group: str
    records: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def new(self) -> int:
        return self.outcomes.get("VOUCHERED", 0)

    @property
    def already_present(self) -> int:
        return self.outcomes.get("DUPLICATE", 0)


def _ends(kafka_conf: dict[str, str], topic: str, partitions: list[int], to_time: str | None,
          group: str) -> dict[int, int]:
    c = Consumer({**kafka_conf, "group.id": f"{group}-ends"})
    try:
        if to_time is None:
            return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
        ts = int(datetime.fromisoformat(to_time.replace("Z", "+00:00")).timestamp() * 1000)
        found = c.offsets_for_times([TopicPartition(topic, p, ts) for p in partitions], timeout=10)
        highs = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
        return {tp.partition: tp.offset if tp.offset >= 0 else highs[tp.partition] for tp in found}
    finally:
        c.close()


def replay(*, journal: Journal, processor: Processor, kafka_conf: dict[str, str], topic: str,
           start: str = "earliest", to_time: str | None = None, progress: bool = True) -> ReplaySummary:
    """Replay ``topic`` from ``start`` (earliest, an offset or an ISO time) to the log end or ``to_time``."""
    parts = [o.partition for o in show(journal, kafka_conf, topic)]
    set_offsets(journal, kafka_conf, topic, start, actor="replay")
    begin = {o.partition: o.stored or 0 for o in show(journal, kafka_conf, topic)}
    end = _ends(kafka_conf, topic, parts, to_time, journal.group)
    total = sum(max(0, end[p] - begin[p]) for p in parts)
    summary = ReplaySummary(group=journal.group)
    if total == 0:
        return summary
    bar = tqdm(total=total, unit="ev", desc=f"replay {topic}", disable=not progress, dynamic_ncols=True)
    pipeline = Pipeline(consumer_conf={**kafka_conf, "group.id": journal.group}, topics=[topic], journal=journal,
                        processor=processor, options=PipelineOptions(dead_letter_topic=""))
    pipeline.stop_at = {(topic, p): end[p] for p in parts}

    def on_batch(result: Any, _: float) -> None:
        bar.update(result.records)
        for k, v in result.outcomes.items():
            summary.outcomes[k] = summary.outcomes.get(k, 0) + v
        summary.records += result.records
        if summary.records >= total:
            pipeline.stop()
    pipeline.on_batch = on_batch
    started = time.monotonic()
    try:
        pipeline.run(max_idle_s=10)
    finally:
        bar.close()
    summary.seconds = time.monotonic() - started
    return summary
