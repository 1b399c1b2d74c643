"""Dead-letter operations: list, inspect and requeue dead letters recorded in the journal.

Requeueing re-publishes the original key, value and headers to the original topic (or ``--to``); the record
flows through the pipeline again. Voucher keys come from the source identity, so a requeued change that
already produced vouchers is a no-op, and one that was rejected now maps under the fixed rules.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from confluent_kafka import Producer
from psycopg import sql

from connector.errors import InfraError
from connector.journal import AuditAction, AuditRow, DeadLetterStatus, Journal


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetter:
    id: int
    consumer_group: str
    topic: str
    partition: int
    offset: int
    stage: str
    reason: str
    error_class: str
    status: DeadLetterStatus
    created_at: datetime
    raw_key: bytes | None
    raw_value: bytes | None
    headers: list[tuple[str, bytes | None]]

    @property
    def where(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


@dataclass(frozen=True, slots=True)
class _Row:
    """A ``dead_letters`` row as stored (headers: [[name, base64 value or null], …])."""

    id: int
    consumer_group: str
    topic: str
    kafka_partition: int
    kafka_offset: int
    stage: str
    reason: str
    error_class: str
    status: str
    created_at: datetime
    raw_key: bytes | None
    raw_value: bytes | None
    headers: list[list[str | None]] | None

    def letter(self) -> DeadLetter:
        headers = [(str(k), base64.b64decode(v) if v is not None else None) for k, v in (self.headers or [])]
        return DeadLetter(id=self.id, consumer_group=self.consumer_group, topic=self.topic,
                          partition=self.kafka_partition, offset=self.kafka_offset, stage=self.stage,
                          reason=self.reason, error_class=self.error_class, status=DeadLetterStatus(self.status),
                          created_at=self.created_at, raw_key=bytes(self.raw_key) if self.raw_key else None,
                          raw_value=bytes(self.raw_value) if self.raw_value else None, headers=headers)


_COLS = ("id, consumer_group, topic, kafka_partition, kafka_offset, stage, reason, error_class, status, created_at, "
         "raw_key, raw_value, headers")


def list_dead_letters(journal: Journal, *, status: str | None = DeadLetterStatus.NEW, stage: str | None = None,
                      limit: int = 100) -> list[DeadLetter]:
    """Dead letters of the journal's group, oldest first (``status``: a ``DeadLetterStatus``, None for all)."""
    where: list[sql.Composable] = [sql.SQL("consumer_group = %s")]
    args: list[object] = [journal.group]
    if status:
        where.append(sql.SQL("status = %s"))
        args.append(status)
    if stage:
        where.append(sql.SQL("stage = %s"))
        args.append(stage)
    query = sql.SQL("SELECT {cols} FROM {s}.dead_letters WHERE {where} ORDER BY id LIMIT %s").format(
        cols=sql.SQL(_COLS), s=sql.Identifier(journal.schema), where=sql.SQL(" AND ").join(where))
    return [r.letter() for r in journal.rows(_Row, query, (*args, limit))]


def get_dead_letter(journal: Journal, dl_id: int) -> DeadLetter | None:
    found = journal.rows(_Row, journal.q(f"SELECT {_COLS} FROM {{s}}.dead_letters WHERE id = %s"), (dl_id,))
    return found[0].letter() if found else None


def requeue(journal: Journal, letters: Sequence[DeadLetter], *, producer_conf: dict[str, str],
            to_topic: str | None = None, actor: str = "cli") -> int:
    """Re-publish ``letters`` and mark them REQUEUED (audited). Returns how many were sent."""
    if not letters:
        return 0
    producer = Producer({**producer_conf, "enable.idempotence": "true"})
    for dl in letters:
        hdrs: list[tuple[str, str | bytes | None]] = [
            (k, v) for k, v in dl.headers if not k.startswith("__connect.errors.") and not k.startswith("kdcdc.")]
        hdrs.append(("kdcdc.requeued-from", dl.where.encode()))
        producer.produce(to_topic or dl.topic, key=dl.raw_key, value=dl.raw_value, headers=hdrs)
    if producer.flush(30) != 0:
        raise InfraError("Kafka did not acknowledge the requeued records within 30 s; nothing marked as requeued")
    with journal.transaction() as conn:
        conn.execute(journal.q("UPDATE {s}.dead_letters SET status = {requeued} WHERE id = ANY(%s)",
                               requeued=DeadLetterStatus.REQUEUED), ([d.id for d in letters],))
        journal.insert_audit([AuditRow.of(actor, AuditAction.DLQ_REQUEUED, None, {
            "dead_letter": d.id, "from": d.where, "to": to_topic or d.topic}) for d in letters])
    return len(letters)
