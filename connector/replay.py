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


def dry_run(*, journal: Journal, processor: Processor, kafka_conf: dict[str, str], topic: str,
            start: str = "earliest", to_time: str | None = None, batch: int = 2000) -> ReplaySummary:
    """What a replay would do, without writing anything: outcomes counted per record.

    Reads the journal (already journaled changes, vouchers in force) but never writes to it. Within the run,
    each batch only sees what is already journaled, so an update whose create is in the same replay may be
    counted as new twice; the real replay maps them in order.
    """
    parts = [o.partition for o in show(journal, kafka_conf, topic)]
    c = Consumer({**kafka_conf, "group.id": f"{journal.group}-dry-run", "enable.auto.commit": "false"})
    summary = ReplaySummary(group=f"{journal.group} (dry run)")
    started = time.monotonic()
    try:
        end = _ends(kafka_conf, topic, parts, to_time, journal.group)
        lows = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[0] for p in parts}
        if start.lstrip("-").isdigit():
            begin = {p: max(lows[p], int(start)) for p in parts}
        elif start == "earliest":
            begin = lows
        else:
            ts = int(datetime.fromisoformat(start.replace("Z", "+00:00")).timestamp() * 1000)
            found = c.offsets_for_times([TopicPartition(topic, p, ts) for p in parts], timeout=10)
            begin = {tp.partition: tp.offset if tp.offset >= 0 else end[tp.partition] for tp in found}
        c.assign([TopicPartition(topic, p, begin[p]) for p in parts if begin[p] < end[p]])
        remaining = sum(max(0, end[p] - begin[p]) for p in parts)
        while remaining > 0:
            msgs = [m for m in c.consume(batch, 1.0) if m.error() is None
                    and (m.offset() or 0) < end[m.partition() or 0]]
            if not msgs:
                continue
            for rec in processor.process(msgs, journal):
                summary.outcomes[rec.outcome.value] = summary.outcomes.get(rec.outcome.value, 0) + 1
            summary.records += len(msgs)
            remaining -= len(msgs)
    finally:
        c.close()
    summary.seconds = time.monotonic() - started
    return summary
