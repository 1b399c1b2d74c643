"""Feedback relay: the journal's outbox → Kafka feedback topics, so every upstream system learns what
happened to each of its changes (JOURNALED, POSTED with the voucher number, REJECTED with reasons, …).

Protocol (at least once, never lost, ordered per business document):

1. Take the relay lock (a PostgreSQL advisory lock): one active relay per journal keeps per-key order.
2. Read the oldest unsent outbox rows, in id order.
3. Produce each to ``<prefix>.<source system>`` keyed by the source row's key, with the stable ``event_id``
   as a header; the idempotent producer keeps per-partition order.
4. Flush; mark as sent only the rows up to the first one the broker did not acknowledge. A crash before
   this step re-sends those rows later with the same ``event_id`` (consumers de-duplicate on it).

If the broker is down the journal keeps working; the backlog is ``pending()`` and drains on recovery. The relay
keeps running through outages of Kafka or the journal (reported once per interval through
``connector.ops.Outages``), takes the lock again after a lost journal connection, and stands by while another
relay holds it.

Values are JSON by default; with a schema registry client (``feedback.format: avro``) they are Avro in the
Confluent wire format, schema ``schemas/feedback.event.avsc`` under subject ``<topic>-value``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any, Final, Protocol

import psycopg
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from connector.errors import InfraError
from connector.journal import Journal
from connector.ops import OUTAGES, Outages, kafka_callbacks

log = logging.getLogger("kingdee_cdc.feedback")
_LOCK_ID: Final = 0x6B64_6662  # "kdfb"
#: how long the relay's producer tries to deliver a record (librdkafka ``message.timeout.ms``) unless configured:
#: a round then ends with every record acknowledged or failed, so a round never re-sends records still queued
DELIVERY_TIMEOUT_MS: Final = 30_000
#: failures of the journal connection, the broker or the producer's queue: the relay waits and tries again
_OUTAGE: Final = (InfraError, psycopg.OperationalError, psycopg.InterfaceError, KafkaException, BufferError)
SCHEMA_PATH: Final = resources.files("connector.schemas").joinpath("feedback.event.avsc")


def _opt(v: Any) -> str | None:
    return None if v is None else str(v)


def avro_record(event: dict[str, Any]) -> dict[str, Any]:
    """A feedback event (as relayed in JSON) shaped for ``feedback.event.avsc``: every field present,
    identifiers as text, unknown keys dropped."""
    src = event.get("source") or {}
    k = event.get("kafka")
    kd = event.get("kingdee")
    return {
        "event_id": str(event["event_id"]), "status": str(event["status"]),
        "source": {"system": str(src.get("system") or ""), "table": _opt(src.get("table")), "pk": _opt(src.get("pk")),
                   "position": _opt(src.get("position")), "op": _opt(src.get("op"))},
        "kafka": {"topic": str(k["topic"]), "partition": int(k["partition"]), "offset": int(k["offset"])}
        if isinstance(k, dict) else None,
        "voucher_key": _opt(event.get("voucher_key")), "kind": _opt(event.get("kind")),
        "reverses": _opt(event.get("reverses")),
        "kingdee": {"id": _opt(kd.get("id")), "number": _opt(kd.get("number")), "group_no": _opt(kd.get("group_no"))}
        if isinstance(kd, dict) else None,
        "reasons": [{"code": str(r.get("code") or ""), "message": str(r.get("message") or ""),
                     "rule": _opt(r.get("rule")), "field": _opt(r.get("field")), "value": _opt(r.get("value"))}
                    for r in event.get("reasons") or []],
        "reversed_by": _opt(event.get("reversed_by")), "note": _opt(event.get("reason")),
        "ts_ms": int(event["ts_ms"]),
    }


class FeedbackMetrics(Protocol):
    """What the relay reports (``connector.ops.Metrics``)."""

    def feedback_sent_to(self, system: str, n: int) -> None: ...


@dataclass(frozen=True, slots=True)
class _Unsent:
    """An outbox row not sent yet."""

    id: int
    event_id: str
    source_system: str
    message_key: str
    status: str
    payload: dict[str, Any]  #: ``connector.journal.FeedbackEvent.payload``
    created_at: datetime

    def event(self) -> dict[str, Any]:
        """The feedback event as relayed: the payload with its id, status and time."""
        return {**self.payload, "event_id": self.event_id, "status": self.status,
                "ts_ms": int(self.created_at.timestamp() * 1000)}


@dataclass(slots=True)
class RelayStats:
    sent: int = 0
    failed: int = 0
    rounds: int = 0


class FeedbackRelay:
    def __init__(self, journal: Journal, producer_conf: dict[str, str], *, topic_prefix: str = "kingdee-cdc.feedback",
                 batch: int = 1000, metrics: FeedbackMetrics | None = None, registry: Any = None,
                 outages: Outages | None = None) -> None:
        self.journal = journal
        self.metrics = metrics
        self.outages = outages or OUTAGES
        self._avro: Any = None
        if registry is not None:  # Avro through the schema registry (subject <topic>-value)
            from confluent_kafka.schema_registry.avro import AvroSerializer

            self._avro = AvroSerializer(registry, SCHEMA_PATH.read_text(encoding="utf-8"),
                                        lambda obj, ctx: avro_record(obj))
        self.prefix = topic_prefix
        self.batch = batch
        self.producer = Producer({**kafka_callbacks(self.outages), "message.timeout.ms": str(DELIVERY_TIMEOUT_MS),
                                  **producer_conf, "enable.idempotence": "true", "acks": "all", "linger.ms": "5"})
        self._stop = threading.Event()
        self._last_error: str | None = None
        #: test hook: called after the broker acknowledged a round, before it is marked sent
        self.before_mark: Callable[[list[int]], None] | None = None

    def _encode(self, topic: str, value: dict[str, Any]) -> bytes:
        if self._avro is None:
            return json.dumps(value, ensure_ascii=False, default=str).encode()
        from confluent_kafka.serialization import MessageField, SerializationContext

        out: bytes = self._avro(value, SerializationContext(topic, MessageField.VALUE))
        return out

    def _drain(self) -> None:
        """Wait until every record produced is acknowledged or failed (each fails after ``message.timeout.ms``), but
        not past a stop request: unacknowledged rows stay unsent and go again (same ``event_id``)."""
        deadline = time.monotonic() + DELIVERY_TIMEOUT_MS / 1000 + 30
        while self.producer.flush(0.5) > 0:
            if self._stop.is_set() or time.monotonic() >= deadline:
                return

    def topic_for(self, system: str) -> str:
        return f"{self.prefix}.{system}"

    def stop(self) -> None:
        self._stop.set()

    def pending(self) -> int:
        return self.journal.count(self.journal.q("SELECT count(*) FROM {s}.outbox WHERE sent_at IS NULL"))

    def run(self, *, idle_sleep_s: float = 0.5, exit_when_idle: bool = False, standby_s: float = 5.0) -> RelayStats:
        """Relay until stopped (or, with ``exit_when_idle``, until a round sends nothing). Outages of the journal or
        Kafka are waited out with backoff (up to 30 s between attempts) and reported to the outages; after a lost
        journal connection the lock is taken again before anything is sent. While another relay holds the lock
        this one stands by (``exit_when_idle``: ``RuntimeError`` instead)."""
        stats = RelayStats()
        locked = False
        standing_by = False
        backoff = idle_sleep_s
        try:
            while not self._stop.is_set():
                try:
                    if not locked:
                        locked = self._lock()
                        if not locked:
                            if exit_when_idle:
                                raise RuntimeError("another feedback relay holds the relay lock for this journal")
                            if not standing_by:
                                log.info("feedback: another relay holds the relay lock for this journal; standing by")
                                standing_by = True
                            self._stop.wait(standby_s)
                            continue
                        if standing_by:
                            log.info("feedback: took the relay lock; relaying")
                            standing_by = False
                    n = self.relay_once(stats)
                except _OUTAGE as e:
                    journal = not isinstance(e, (KafkaException, BufferError))
                    self.outages.failed("journal" if journal else "kafka", str(e))
                    if journal:  # the lock went with the connection
                        self.journal.reset()
                        locked = False
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, 30.0)
                    continue
                backoff = idle_sleep_s
                if n == 0:
                    if exit_when_idle:
                        break
                    self._stop.wait(idle_sleep_s)
        finally:
            if locked:
                try:
                    self.journal.conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_ID,))
                except Exception:  # the lock ends with the session anyway
                    pass
            self.producer.flush(0 if self._stop.is_set() else 10)
        return stats

    def _lock(self) -> bool:
        """Migrate and take the relay lock (a session lock: it lasts as long as the journal connection)."""
        self.journal.migrate()
        got = self.journal.conn.execute("SELECT pg_try_advisory_lock(%s)", (_LOCK_ID,)).fetchone()
        if self.outages.problem("journal") is not None:
            self.outages.ok("journal")
        return bool(got and got[0])

    def relay_once(self, stats: RelayStats | None = None) -> int:
        """One round (steps 2–4); returns how many rows were acknowledged and marked sent."""
        stats = stats or RelayStats()
        j = self.journal
        rows = j.rows(_Unsent, j.q("SELECT id, event_id, source_system, message_key, status, payload, created_at "
                                   "FROM {s}.outbox WHERE sent_at IS NULL ORDER BY id LIMIT %s"), (self.batch,))
        if not rows:
            return 0
        acked = self._send(rows)
        stats.rounds += 1
        stats.failed += len(rows) - len(acked)
        if self.before_mark is not None:
            self.before_mark(acked)
        if acked:
            with j.transaction() as conn:
                conn.execute(j.q("UPDATE {s}.outbox SET sent_at = now() WHERE id = ANY(%s)"), (acked,))
            if self.metrics is not None:
                per_system: dict[str, int] = {}
                for row in rows[:len(acked)]:
                    per_system[row.source_system] = per_system.get(row.source_system, 0) + 1
                for system, n in per_system.items():
                    self.metrics.feedback_sent_to(system, n)
        stats.sent += len(acked)
        if acked and self.outages.problem("kafka") is not None:
            self.outages.ok("kafka")
        if len(acked) < len(rows):
            self.outages.failed("kafka", f"feedback: {len(rows) - len(acked)} of {len(rows)} events not acknowledged "
                                         f"({self._last_error or 'no answer'}); they are sent again")
        return len(acked)

    def _send(self, rows: list[_Unsent]) -> list[int]:
        """Produce ``rows`` and flush; the ids of the prefix the broker acknowledged (a failure and everything
        after it wait for the next round, which keeps per-key order)."""
        results: dict[int, KafkaError | None] = {}
        self._last_error = None

        def delivered(row_id: int) -> Callable[[KafkaError | None, Message], None]:
            def cb(err: KafkaError | None, msg: Message) -> None:
                results[row_id] = err
                if err is not None:
                    self._last_error = err.str()
            return cb

        for row in rows:
            topic = self.topic_for(row.source_system)
            try:
                self.producer.produce(topic, key=str(row.message_key).encode(), value=self._encode(topic, row.event()),
                                      headers=[("kdcdc.event_id", row.event_id.encode()),
                                               ("kdcdc.status", row.status.encode())],
                                      on_delivery=delivered(row.id))
            except BufferError:  # the producer's queue is full: the rest waits for a later round
                break
            self.producer.poll(0)
        self._drain()
        acked: list[int] = []
        for row in rows:
            if results.get(row.id, KafkaError(KafkaError._TIMED_OUT)) is not None:
                break
            acked.append(row.id)
        return acked


def tail(kafka: str | dict[str, Any], topic: str, *, from_beginning: bool = True, limit: int | None = None,
         timeout_s: float = 5.0, printer: Callable[[dict[str, Any]], None] = print, registry: Any = None) -> int:
    """Print feedback events (the reference consumer for upstream teams): one JSON object per line.

    ``kafka`` is a bootstrap address or a librdkafka configuration; with ``registry`` the values are
    Avro (Confluent wire format) and decoded through it, otherwise JSON.
    """
    import time
    import uuid

    from confluent_kafka import Consumer

    conf = {"bootstrap.servers": kafka} if isinstance(kafka, str) else dict(kafka)
    decode: Callable[[bytes | None], dict[str, Any]] = lambda raw: json.loads(raw or b"{}")  # noqa: E731
    if registry is not None:
        from confluent_kafka.schema_registry.avro import AvroDeserializer
        from confluent_kafka.serialization import MessageField, SerializationContext

        avro = AvroDeserializer(registry)
        ctx = SerializationContext(topic, MessageField.VALUE)
        decode = lambda raw: dict(avro(raw, ctx) or {})  # noqa: E731
    c = Consumer({**conf, "group.id": f"feedback-tail-{uuid.uuid4().hex[:6]}",
                  "auto.offset.reset": "earliest" if from_beginning else "latest", "enable.auto.commit": "false"})
    c.subscribe([topic])
    seen: set[str] = set()
    shown = 0
    idle_since = time.monotonic()
    try:
        while limit is None or shown < limit:
            m = c.poll(0.5)
            if m is None or m.error():
                if time.monotonic() - idle_since > timeout_s:
                    break
                continue
            idle_since = time.monotonic()
            event = decode(m.value())
            if event["event_id"] in seen:  # at-least-once delivery: de-duplicate on the stable id
                continue
            seen.add(event["event_id"])
            printer(event)
            shown += 1
    finally:
        c.close()
    return shown
