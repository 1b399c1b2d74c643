"""Offsets tooling: show and move the journal's stored offsets (the truth the pipeline resumes from).

Moving offsets is refused while any member of the consumer group is active, so an instance can never have
its position changed under it; stop the instances first. Every change is audited.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from connector.errors import ConnectorError
from connector.journal import Journal


class OffsetsError(ConnectorError):
    pass


@dataclass(frozen=True, slots=True)
class PartitionOffsets:
    topic: str
    partition: int
    stored: int | None  #: next offset in the journal (None: never consumed by this group)
    low: int
    high: int

    @property
    def lag(self) -> int | None:
        return None if self.stored is None else max(0, self.high - self.stored)


def _partitions(conf: dict[str, str], topic: str) -> list[int]:
    md = AdminClient(dict(conf.items())).list_topics(topic, timeout=10)
    t = md.topics.get(topic)
    if t is None or t.error is not None:
        raise OffsetsError(f"topic {topic!r} not found: {t.error if t else 'no metadata'}")
    return sorted(t.partitions)


def show(journal: Journal, kafka_conf: dict[str, str], topic: str) -> list[PartitionOffsets]:
    parts = _partitions(kafka_conf, topic)
    stored = journal.stored_offsets((topic, p) for p in parts)
    c = Consumer({**kafka_conf, "group.id": f"{journal.group}-offsets-tool", "enable.auto.commit": "false"})
    try:
        out = []
        for p in parts:
            low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            out.append(PartitionOffsets(topic, p, stored.get((topic, p)), low, high))
        return out
    finally:
        c.close()


def _group_active(kafka_conf: dict[str, str], group: str) -> bool:
    admin = AdminClient(dict(kafka_conf.items()))
    fut = admin.describe_consumer_groups([group])[group]
    try:
        desc: Any = fut.result(10)
    except Exception:
        return False  # unknown group: nobody is consuming
    return bool(desc.members)


def set_offsets(journal: Journal, kafka_conf: dict[str, str], topic: str, to: str, *,
                partitions: list[int] | None = None, actor: str = "cli") -> dict[int, int]:
    """Move the stored offsets of ``topic`` to ``earliest``, ``latest``, an ISO time or an absolute offset."""
    if _group_active(kafka_conf, journal.group):
        raise OffsetsError(f"consumer group {journal.group!r} has active members: stop every `kingdee-cdc run` "
                           "of this group before moving its offsets")
    parts = partitions if partitions is not None else _partitions(kafka_conf, topic)
    current = {o.partition: o for o in show(journal, kafka_conf, topic) if o.partition in parts}
    target: dict[int, int] = {}
    if to in ("earliest", "latest"):
        target = {p: (o.low if to == "earliest" else o.high) for p, o in current.items()}
    elif to.lstrip("-").isdigit():
        target = {p: int(to) for p in current}
    else:
        try:
            ts = datetime.fromisoformat(to.replace("Z", "+00:00"))
        except ValueError:
            raise OffsetsError(f"--to must be earliest, latest, an offset or an ISO-8601 time, got {to!r}") from None
        c = Consumer({**kafka_conf, "group.id": f"{journal.group}-offsets-tool"})
        try:
            found = c.offsets_for_times([TopicPartition(topic, p, int(ts.timestamp() * 1000)) for p in current],
                                        timeout=10)
        finally:
            c.close()
        target = {tp.partition: (tp.offset if tp.offset >= 0 else current[tp.partition].high) for tp in found}
    for p, off in target.items():
        o = current[p]
        if not o.low <= off <= o.high:
            raise OffsetsError(f"{topic}[{p}]: offset {off} is outside the log ({o.low}..{o.high})")
    journal.migrate()
    cleared: dict[str, int] = {}
    with journal.transaction() as conn:
        for p, off in target.items():
            # Rewinding means the records from `off` on are consumed again and their outcomes recorded again:
            # their per-record rows move back with the offset, in the same transaction (vouchers and the audit log
            # stay; re-read changes are recognised as DUPLICATE). Feedback for re-read rejections is re-sent with
            # the same event ids.
            args = (journal.group, topic, p, off)
            where = "consumer_group = %s AND topic = %s AND kafka_partition = %s AND kafka_offset >= %s"
            for table in ("event_log", "rejections", "dead_letters"):
                cur = conn.execute(journal.q(f"DELETE FROM {{s}}.{table} WHERE {where}"), args)
                cleared[table] = cleared.get(table, 0) + cur.rowcount
            cur = conn.execute(journal.q(
                "DELETE FROM {s}.outbox WHERE status IN ('REJECTED', 'DEAD_LETTERED') AND "
                "(payload->'kafka'->>'topic') = %s AND (payload->'kafka'->>'partition')::int = %s AND "
                "(payload->'kafka'->>'offset')::bigint >= %s AND event_id LIKE %s"),
                (topic, p, off, f"{journal.group}:%"))
            cleared["outbox"] = cleared.get("outbox", 0) + cur.rowcount
            conn.execute(journal.q(
                "INSERT INTO {s}.offsets (consumer_group, topic, kafka_partition, next_offset, owner) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (consumer_group, topic, kafka_partition) DO UPDATE "
                "SET next_offset = EXCLUDED.next_offset, owner = EXCLUDED.owner, updated_at = now()"),
                (journal.group, topic, p, off, f"offsets-tool:{actor}"))
        conn.execute(journal.q("INSERT INTO {s}.audit (actor, action, detail) VALUES (%s, 'OFFSETS_SET', %s)"),
                     (actor, json.dumps({"group": journal.group, "topic": topic, "to": to,
                                         "from": {p: current[p].stored for p in target}, "now": target,
                                         "cleared": cleared})))
    return target
