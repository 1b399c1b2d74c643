"""Replay and backfill: run a topic (e.g. ``<topic>.replay``, a re-published snapshot) through the same
pipeline in its own consumer group, from an offset or a time, up to the log end or a time, with progress.

Voucher keys come from the source identity, so changes that were already journaled create nothing new;
the summary says how many were new, already present, rejected and dead-lettered.

``repost_changed`` re-maps the rows a range touches after a rule change and journals reversal +
correction pairs only where the vouchers in force differ from what the current rules produce.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from confluent_kafka import Consumer, Message, TopicPartition
from tqdm import tqdm

from connector.events import ChangeEvent, KafkaCoordinates, Op
from connector.journal import BatchResult, Journal, Outcome
from connector.ledger import RowRef, SourceChange, Voucher, canonical_pk
from connector.mapping import RuleSet
from connector.offsets import set_offsets, show
from connector.pipeline import Batch, Pipeline, PipelineOptions, Processor


@dataclass(slots=True)
class ReplaySummary:
    group: str
    records: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def new(self) -> int:
        return self.outcomes.get(Outcome.VOUCHERED, 0)

    @property
    def already_present(self) -> int:
        return self.outcomes.get(Outcome.DUPLICATE, 0)


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

    def on_batch(result: BatchResult, _: float) -> None:
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
    summary = ReplaySummary(group=f"{journal.group} (dry run)")
    started = time.monotonic()
    for msgs in _read_batches(kafka_conf, topic, start, to_time, f"{journal.group}-dry-run", batch):
        prepared = Batch.of(processor.decode(msgs))
        state = journal.batch_state(prepared.changes.values())
        for rec in processor.process(prepared, state):
            summary.outcomes[rec.outcome.value] = summary.outcomes.get(rec.outcome.value, 0) + 1
        summary.records += len(msgs)
    summary.seconds = time.monotonic() - started
    return summary


@dataclass(slots=True)
class RepostChange:
    """One row whose vouchers in force differ from what the current rules produce."""

    row: RowRef
    old: list[Voucher]
    new: list[Voucher]  #: reversals of ``old`` and the corrected voucher(s)


@dataclass(slots=True)
class RepostSummary:
    tag: str
    records: int = 0
    rows: int = 0
    unchanged: int = 0
    deleted: int = 0
    rejected: int = 0
    changes: list[RepostChange] = field(default_factory=list)
    inserted: int = 0
    rejections: list[tuple[RowRef, str]] = field(default_factory=list)
    stale: list[RowRef] = field(default_factory=list)  #: the journal knows a later (or no) change of the row
    seconds: float = 0.0


def rules_tag(rules: RuleSet) -> str:
    """A short, stable name for a rules version: the hash of every rule's id, version and source text."""
    h = hashlib.sha256()
    for r in sorted(rules.rules, key=lambda r: r.id):
        h.update(f"{r.id}\0{r.version}\0".encode())
        h.update(Path(r.file).read_bytes() if Path(r.file).exists() else b"")
    return h.hexdigest()[:12]


def _read_batches(kafka_conf: dict[str, str], topic: str, start: str, to_time: str | None, group: str,
                  batch: int = 2000) -> Iterator[list[Message]]:
    """The topic's records from ``start`` (earliest, an offset or an ISO time) up to the log end / ``to_time``,
    in batches, in offset order per partition, with a throwaway consumer (no group offsets written)."""
    c = Consumer({**kafka_conf, "group.id": f"{group}-read", "enable.auto.commit": "false"})
    try:
        md = c.list_topics(topic, timeout=10)
        parts = sorted(md.topics[topic].partitions) if topic in md.topics else []
        end = _ends(kafka_conf, topic, parts, to_time, group)
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
            remaining -= len(msgs)
            if msgs:
                yield msgs
    finally:
        c.close()


def repost_changed(*, journal: Journal, processor: Processor, kafka_conf: dict[str, str], topic: str,
                   start: str = "earliest", to_time: str | None = None, dry_run: bool = False,
                   tag: str | None = None, progress: bool = True) -> RepostSummary:
    """Re-map after a rule change: for every source row the replayed range touches, map its latest state
    with the current rules and compare with the vouchers in force; where they differ, journal a reversal
    plus the corrected voucher (the poster then posts them). ``dry_run`` only reports the differences.

    Idempotent: corrections are keyed by the rules version (``tag``), so running it again adds nothing.
    """
    mapper = processor.mapper
    summary = RepostSummary(tag=tag or rules_tag(mapper.rules))
    started = time.monotonic()
    latest: dict[RowRef, tuple[KafkaCoordinates | None, ChangeEvent]] = {}
    bar = tqdm(unit="ev", desc=f"reading {topic}", disable=not progress, dynamic_ncols=True)
    for msg in (m for msgs in _read_batches(kafka_conf, topic, start, to_time, journal.group) for m in msgs):
        summary.records += 1
        bar.update(1)
        ev = processor.decoder.decode_message(msg)
        if not isinstance(ev, ChangeEvent) or not ev.key:
            continue
        row = RowRef(ev.source.name, ev.source.table_id, canonical_pk(ev.key))
        latest.pop(row, None)  # keep first-seen order of the *latest* change
        latest[row] = (ev.kafka, ev)
    bar.close()
    summary.rows = len(latest)
    prior = journal.prefetch_active(latest)
    known = journal.latest_changes(latest)
    corrections: list[tuple[KafkaCoordinates | None, Voucher]] = []
    for row, (coords, ev) in latest.items():
        # Only the row's newest known state may be re-mapped: a replay range that stops before a later
        # change (or holds changes the pipeline has not journaled yet) would "correct" the books backwards.
        if known.get(row) != SourceChange(row, ev.source.position, ev.op.value):
            summary.stale.append(row)
            continue
        result = mapper.map(ev, prior, remap=summary.tag)
        if result.rejections:
            summary.rejected += 1
            summary.rejections.append((row, "; ".join(f"{r.code.value}: {r.message}" for r in result.rejections)))
            continue
        if not result.vouchers:
            if ev.op is Op.DELETE:
                summary.deleted += 1
            else:
                summary.unchanged += 1
            continue
        old = [v for rule_id in {v.rule_id for v in result.vouchers} for v in prior.active(row, rule_id)]
        summary.changes.append(RepostChange(row=row, old=old, new=list(result.vouchers)))
        corrections += [(coords, v) for v in result.vouchers]
    if corrections and not dry_run:
        inserted = journal.write_reposts(corrections, actor="replay --repost-changed",
                                         detail={"tag": summary.tag, "topic": topic})
        summary.inserted = len(inserted)
    summary.seconds = time.monotonic() - started
    return summary
