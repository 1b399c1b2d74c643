"""Dead-letter operations: list, inspect and requeue dead letters recorded in the journal.

Requeueing re-publishes the original key, value and headers to the original topic (or ``--to``); the record
flows through the pipeline again. Voucher keys come from the source identity, so a requeued change that
already produced vouchers is a no-op, and one that was rejected now maps under the fixed rules.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from confluent_kafka import Producer

from connector.errors import InfraError
from connector.journal import Journal


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
    status: str
    created_at: datetime
    raw_key: bytes | None
    raw_value: bytes | None
    headers: list[tuple[str, bytes | None]]

    @property
    def where(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


_COLS = ("id, consumer_group, topic, kafka_partition, kafka_offset, stage, reason, error_class, status, created_at, "
         "raw_key, raw_value, headers")


def _row(r: Sequence[Any]) -> DeadLetter:
    headers = [(k, base64.b64decode(v) if v is not None else None) for k, v in (r[12] or [])]
    return DeadLetter(id=r[0], consumer_group=r[1], topic=r[2], partition=r[3], offset=r[4], stage=r[5], reason=r[6],
                      error_class=r[7], status=r[8], created_at=r[9], raw_key=bytes(r[10]) if r[10] else None,
                      raw_value=bytes(r[11]) if r[11] else None, headers=headers)


def list_dead_letters(journal: Journal, *, status: str | None = "NEW", stage: str | None = None,
                      limit: int = 100) -> list[DeadLetter]:
    where, args = ["consumer_group = %s"], [journal.group]
    if status:
        where.append("status = %s")
        args.append(status)
    if stage:
        where.append("stage = %s")
        args.append(stage)
    q = journal.q(f"SELECT {_COLS} FROM {{s}}.dead_letters WHERE {' AND '.join(where)} ORDER BY id LIMIT %s")
    return [_row(r) for r in journal.conn.execute(q, (*args, limit)).fetchall()]


def get_dead_letter(journal: Journal, dl_id: int) -> DeadLetter | None:
    r = journal.conn.execute(journal.q(f"SELECT {_COLS} FROM {{s}}.dead_letters WHERE id = %s"), (dl_id,)).fetchone()
    return _row(r) if r else None


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
        conn.execute(journal.q("UPDATE {s}.dead_letters SET status = 'REQUEUED' WHERE id = ANY(%s)"),
                     ([d.id for d in letters],))
        for d in letters:
            conn.execute(journal.q("INSERT INTO {s}.audit (actor, action, detail) VALUES (%s, 'DLQ_REQUEUED', %s)"),
                         (actor, json.dumps({"dead_letter": d.id, "from": d.where, "to": to_topic or d.topic})))
    return len(letters)
