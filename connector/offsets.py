"""Offsets tooling: show and move the journal's stored offsets (the truth the pipeline resumes from).

Moving offsets is refused while any member of the consumer group is active, so an instance can never have
its position changed under it; stop the instances first. Every change is audited.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from psycopg import sql

from connector.errors import ConnectorError
from connector.journal import AuditAction, AuditRow, FeedbackStatus, Journal


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
    with journal.transaction():
        for p, off in target.items():
            for table, n in _rewind(journal, topic, p, off, actor=actor).items():
                cleared[table] = cleared.get(table, 0) + n
        journal.insert_audit([AuditRow.of(actor, AuditAction.OFFSETS_SET, None, {
            "group": journal.group, "topic": topic, "to": to, "from": {p: current[p].stored for p in target},
            "now": target, "cleared": cleared})])
    return target


#: per-record rows that move back with a rewound offset
_PER_RECORD: tuple[str, ...] = ("event_log", "rejections", "dead_letters")


def _rewind(journal: Journal, topic: str, partition: int, offset: int, *, actor: str) -> dict[str, int]:
    """Set one partition's stored offset (in the caller's transaction); rows cleared per table.

    Rewinding means the records from ``offset`` on are consumed again and their outcomes recorded again: their
    per-record rows move back with the offset (vouchers and the audit log stay; re-read changes are recognised
    as DUPLICATE). Feedback for re-read rejections and dead letters is re-sent with the same event ids.
    """
    conn = journal.conn
    args = (journal.group, topic, partition, offset)
    cleared: dict[str, int] = {}
    # a range of skipped records (decision 0012) that straddles the new position keeps the records before it
    conn.execute(journal.q(
        "UPDATE {s}.event_log SET last_offset = CASE WHEN %(o)s - 1 > kafka_offset THEN %(o)s - 1 END "
        "WHERE consumer_group = %(g)s AND topic = %(t)s AND kafka_partition = %(p)s AND kafka_offset < %(o)s "
        "AND last_offset >= %(o)s"), {"g": journal.group, "t": topic, "p": partition, "o": offset})
    for table in _PER_RECORD:
        cur = conn.execute(sql.SQL("DELETE FROM {s}.{t} WHERE consumer_group = %s AND topic = %s AND "
                                   "kafka_partition = %s AND kafka_offset >= %s").format(
            s=sql.Identifier(journal.schema), t=sql.Identifier(table)), args)
        cleared[table] = cur.rowcount
    cur = conn.execute(journal.q(
        "DELETE FROM {s}.outbox WHERE status IN ({per_record}) AND "
        "(payload->'kafka'->>'topic') = %s AND (payload->'kafka'->>'partition')::int = %s AND "
        "(payload->'kafka'->>'offset')::bigint >= %s AND event_id LIKE %s",
        per_record=(FeedbackStatus.REJECTED, FeedbackStatus.DEAD_LETTERED)),
        (topic, partition, offset, f"{journal.group}:%"))
    cleared["outbox"] = cur.rowcount
    conn.execute(journal.q(
        "INSERT INTO {s}.offsets (consumer_group, topic, kafka_partition, next_offset, owner) "
        "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (consumer_group, topic, kafka_partition) DO UPDATE "
        "SET next_offset = EXCLUDED.next_offset, owner = EXCLUDED.owner, updated_at = now()"),
        (journal.group, topic, partition, offset, f"offsets-tool:{actor}"))
    return cleared
