"""The batch loop: Kafka → decode → map → check → journal, with dead letters and crash-safe offsets.

Each arrow is a plain call on a batch. Ordering: records are handled in offset order per partition, and
Debezium keys a row's events to one partition, so a create, its updates and its delete map in order.
Retries: infrastructure failures (PostgreSQL connection loss, serialization failures, deadlocks) retry the
*whole* batch with exponential backoff and jitter; nothing is skipped. A dependency that keeps failing is logged
once per interval (``connector.ops.Outages``), not once per attempt, and a stop request ends the retrying: the
batch is abandoned — never half-committed, the journal transaction is atomic — and read again by the next owner.
Poison records never stop the line in lenient mode (``errors.tolerance: all``); in strict mode (``none``) the
partition is paused at the first one and an error is logged, with everything before it journaled.
"""

from __future__ import annotations

import gc
import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, TypeVar

import psycopg
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, Message, Producer, TopicPartition
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_delay, wait_exponential_jitter

from connector.errors import ConnectorError, InfraError
from connector.events import (
    ChangeEvent,
    DecodeFailure,
    Decoded,
    Decoder,
    KafkaCoordinates,
    Tombstone,
    TransactionMarker,
)
from connector.journal import REJECTED_STAGE, BatchResult, EventRecord, Fenced, Journal, Outcome, Partition
from connector.ledger import BatchState, RowRef, SourceChange, canonical_pk
from connector.logs import event_context
from connector.mapping import Mapper
from connector.ops import OUTAGES, Outages, kafka_callbacks
from connector.transactions import TRANSACTION_SUFFIX, TransactionGrouper, TxKey

log = logging.getLogger("kingdee_cdc.pipeline")
T = TypeVar("T")

#: Kafka Connect dead-letter header names (DeadLetterQueueReporter), so existing DLQ tooling works.
DLQ_PREFIX: Final = "__connect.errors."


@dataclass(frozen=True, slots=True, kw_only=True)
class PipelineOptions:
    """Pipeline tuning.

    ====================  ===========  ==============================================================
    option                default      meaning
    ====================  ===========  ==============================================================
    ``batch_size``        2000         records per journal transaction (upper bound)
    ``batch_wait_s``      0.1          how long to wait for a record when none is fetched (then poll again)
    ``tolerance``         ``all``      ``all``: dead-letter poison and continue; ``none``: pause the partition
    ``retry_for_s``       300          give up (and exit non-zero) after this long of infrastructure errors
    ``start_from``        earliest     where a partition with no journal offset starts
    ``dead_letter_topic`` ``kingdee-cdc.dlq``  Kafka topic for dead letters (empty: journal only)
    ``group_transactions`` true        hold the events of source transactions that rules with ``lines:``
                                       need, and map a header with its lines (needs the transaction topic)
    ``transaction_hold_s`` 30          a transaction not complete after this is mapped event by event
    ``transaction_max_held`` 100000    records held for transactions at most (then the oldest goes ungrouped)
    ====================  ===========  ==============================================================
    """

    batch_size: int = 2000
    batch_wait_s: float = 0.1
    tolerance: str = "all"
    retry_for_s: float = 300.0
    start_from: str = "earliest"
    dead_letter_topic: str = "kingdee-cdc.dlq"
    connector_name: str = "kingdee-cdc"
    group_transactions: bool = True
    transaction_hold_s: float = 30.0
    transaction_max_held: int = 100_000


@dataclass(slots=True)
class PipelineStats:
    batches: int = 0
    records: int = 0
    vouchers: int = 0
    duplicates: int = 0
    rejected: int = 0
    dead_lettered: int = 0
    skipped: int = 0
    grouped: int = 0
    transactions_ungrouped: int = 0
    fenced: int = 0
    retries: int = 0
    paused: set[tuple[str, int]] = field(default_factory=set)
    #: errors.tolerance=none: where each stopped partition stopped (kept after revocation, for operators)
    stopped_at: dict[tuple[str, int], int] = field(default_factory=dict)


_TRANSIENT: Final = (psycopg.OperationalError, psycopg.errors.SerializationFailure,
                     psycopg.errors.DeadlockDetected, psycopg.errors.UniqueViolation, InfraError)
#: transient failures that are not an outage (two writers met): logged at each retry
_CONFLICTS: Final = (psycopg.errors.TransactionRollback, psycopg.errors.UniqueViolation)


#: the cyclic garbage collector's first threshold while the batch loop runs (CPython's default is 700)
GC_YOUNG_THRESHOLD: Final = 50_000


def tune_gc() -> None:
    """Keep the cyclic garbage collector off the batch loop's back (once per process, before the loop).

    A batch holds ~100,000 young container objects (events, rows, vouchers) until it is journaled, nearly all
    freed by reference counting when it ends; with CPython's default thresholds the collector ran ~1,300 times
    during a 30,000-event run and walked the whole heap (rules, compiled expressions, the batch) in each of its
    ~10 full collections: 0.7 s of a 5.6 s run. ``gc.freeze()`` moves what start-up built (modules, rules,
    clients) out of every future collection, and a young threshold of ``GC_YOUNG_THRESHOLD`` allocations lets a
    batch come and go between collections. Cycles are still collected, only less often (what is garbage at
    the freeze is collected first, so nothing unreachable is kept for good)."""
    global _gc_tuned
    if _gc_tuned:
        return
    _gc_tuned = True
    gc.collect()
    gc.freeze()
    young, middle, old = gc.get_threshold()
    if young < GC_YOUNG_THRESHOLD:
        gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


_gc_tuned = False


class Stopped(ConnectorError):
    """A stop was requested while a batch waited for a dependency: the batch is abandoned, nothing committed."""


def dlq_headers(rec: EventRecord, connector: str) -> list[tuple[str, str | bytes | None]]:
    """Kafka Connect compatible context headers for a dead letter, plus ``kdcdc.*`` specifics."""
    k = rec.kafka
    if rec.failure is not None:
        stage, cls, msg = "VALUE_CONVERTER", f"connector.events.{rec.failure.error_class}", str(rec.failure.reason)
        code = f"DECODE_{rec.failure.stage.upper()}"
    else:
        first = rec.rejections[0] if rec.rejections else None
        stage, cls = REJECTED_STAGE, "connector.ledger.Rejection"
        msg = str(first) if first else (rec.detail or "rejected")
        code = first.code.value if first else Outcome.REJECTED.value
    hdrs = [(f"{DLQ_PREFIX}topic", k.topic), (f"{DLQ_PREFIX}partition", str(k.partition)),
            (f"{DLQ_PREFIX}offset", str(k.offset)), (f"{DLQ_PREFIX}connector.name", connector),
            (f"{DLQ_PREFIX}task.id", "0"), (f"{DLQ_PREFIX}stage", stage),
            (f"{DLQ_PREFIX}class.name", "connector.pipeline.Pipeline"),
            (f"{DLQ_PREFIX}exception.class.name", cls), (f"{DLQ_PREFIX}exception.message", msg),
            ("kdcdc.reason.code", code)]
    if rec.rejections:
        hdrs.append(("kdcdc.reasons", json.dumps([{"code": r.code.value, "message": r.message, "rule": r.rule,
                                                   "field": r.field, "value": r.value} for r in rec.rejections],
                                                 ensure_ascii=False)))
    out: list[tuple[str, str | bytes | None]] = [(n, v.encode()) for n, v in hdrs]
    return out + [(n, v) for n, v in rec.headers]


def _positions(records: Sequence[EventRecord]) -> dict[Partition, tuple[int, int]]:
    """Each partition's (first offset, next offset) in ``records``."""
    positions: dict[Partition, tuple[int, int]] = {}
    for r in records:
        tp = (r.kafka.topic, r.kafka.partition)
        first, _ = positions.get(tp, (r.kafka.offset, 0))
        positions[tp] = (min(first, r.kafka.offset), r.kafka.offset + 1)
    return positions


def _headers(m: Message) -> tuple[tuple[str, bytes | None], ...]:
    out: list[tuple[str, bytes | None]] = []
    for item in m.headers() or ():
        name, value = item[0], item[1]
        out.append((str(name), value if value is None or isinstance(value, bytes) else str(value).encode()))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Batch:
    """Decoded records ready to map, with the source change each data event carries and the complete source
    transactions among them."""

    items: Sequence[tuple[Message, Decoded]]
    #: index → the source change of each change event with a key: compared with the journal's (``BatchState``)
    changes: Mapping[int, SourceChange]
    #: complete source transactions: key → indices of their data events (a document header maps with its lines)
    groups: Mapping[TxKey, Sequence[int]]

    @classmethod
    def of(cls, items: Sequence[tuple[Message, Decoded]], groups: Mapping[TxKey, Sequence[int]] | None = None
           ) -> Batch:
        changes: dict[int, SourceChange] = {}
        for i, (_, d) in enumerate(items):
            if isinstance(d, ChangeEvent) and d.key:
                # every change is compared with the row's state: a create or snapshot read of a row already in
                # force (read again) posts nothing, an update reverses, a re-created row gets a new key
                s = d.source
                changes[i] = SourceChange(RowRef(s.name, s.table_id, canonical_pk(d.key)), s.position, d.op.value)
        return cls(items, changes, groups or {})


class Processor:
    """The pure step of a batch: decoded records and what the journal knows of their rows (``BatchState``) →
    one ``EventRecord`` per record. No I/O: the pipeline decodes before and fetches the state."""

    def __init__(self, decoder: Decoder, mapper: Mapper) -> None:
        self.decoder = decoder
        self.mapper = mapper
        self._grouped = mapper.rules.grouped  # rules with lines:, looked up per grouped record

    def decode(self, msgs: Sequence[Message]) -> list[tuple[Message, Decoded]]:
        """Decode ``msgs`` (may ask the schema registry: ``InfraError`` when it is unreachable)."""
        return [(m, self.decoder.decode_message(m)) for m in msgs]

    def process(self, batch: Batch, state: BatchState) -> list[EventRecord]:
        """Outcomes for the batch's records, in order. A change ``state`` says already produced vouchers (a
        replay from any topic, a redelivery) is not mapped again — mapping it against today's state could
        reverse a *later* voucher — its outcome is DUPLICATE. ``state`` itself is left as it is."""
        tx_events, needs = self._transactions(batch)
        run = _BatchRun(self.mapper, batch, state, tx_events)
        for i in _schedule(batch.items, needs):
            run.decide(i)
        return run.records()

    def _transactions(self, batch: Batch) -> tuple[dict[int, list[int]], dict[int, list[int]]]:
        """Source transactions: each header is mapped with its transaction's other data events (header index →
        those events); the lines it takes are journaled as GROUPED, so a line waits for the headers of its
        transaction (line index → those headers)."""
        tx_events: dict[int, list[int]] = {}
        needs: dict[int, list[int]] = {}
        for members in batch.groups.values():
            headers = [i for i in members if self._is_header(batch.items[i][1])]
            for h in headers:
                tx_events[h] = [i for i in members if i not in headers]
            for i in members:
                if headers and i not in headers:
                    needs[i] = headers
        return tx_events, needs

    def _is_header(self, d: Decoded) -> bool:
        if not isinstance(d, ChangeEvent):
            return False
        s = d.source
        return any(r.matches_table(s.name, s.schema, s.table) for r in self._grouped)


def _schedule(items: Sequence[tuple[Message, Decoded]], needs: Mapping[int, Sequence[int]]) -> Iterator[int]:
    """The order records are mapped in. In order when no line waits for a header; otherwise partition by
    partition, in offset order, and a partition whose next record is a line whose headers are not mapped yet
    waits. When nothing can move (header and line on one partition, the line first) the blocked line's
    headers are mapped now."""
    if not needs:
        yield from range(len(items))
        return
    queues: dict[tuple[str | None, int | None], list[int]] = {}
    for i, (m, _) in enumerate(items):
        queues.setdefault((m.topic(), m.partition()), []).append(i)
    heads = {tp: 0 for tp in queues}
    done: set[int] = set()
    while len(done) < len(items):
        progressed = False
        for tp, q in queues.items():
            while heads[tp] < len(q):
                i = q[heads[tp]]
                if i in done:  # mapped early (a header its own line was waiting for)
                    heads[tp] += 1
                    continue
                if any(h not in done for h in needs.get(i, ())):
                    break
                done.add(i)
                yield i
                heads[tp] += 1
                progressed = True
        if not progressed:
            blocked = next(q[heads[tp]] for tp, q in queues.items() if heads[tp] < len(q))
            for h in needs[blocked]:
                if h not in done:
                    done.add(h)
                    yield h


class _BatchRun:
    """One batch being mapped: the row state it extends record by record, and the records decided so far."""

    def __init__(self, mapper: Mapper, batch: Batch, state: BatchState, tx_events: Mapping[int, Sequence[int]]
                 ) -> None:
        self.mapper = mapper
        self.batch = batch
        self.tx_events = tx_events
        #: changes already journaled, and (so the same change again later in this batch is a duplicate too)
        #: the ones this batch maps
        self.done: dict[SourceChange, tuple[str, ...]] = dict(state.done)
        self.rows = state.rows.copy()
        self.carried: dict[int, EventRecord] = {}  # line index → the header record whose voucher carries it
        self.out: dict[int, EventRecord] = {}

    def records(self) -> list[EventRecord]:
        return [self.out[i] for i in range(len(self.batch.items))]

    def decide(self, i: int) -> None:
        m, d = self.batch.items[i]
        header = self.carried.get(i)
        if header is not None and isinstance(d, ChangeEvent) and d.kafka:
            self.out[i] = EventRecord(outcome=Outcome.GROUPED, event=d, kafka=d.kafka,
                                      grouped_into=tuple(v.key for v in header.vouchers),
                                      detail=f"line of {header.kafka} (source transaction "
                                             f"{d.transaction.group if d.transaction else '?'})")
        else:  # an ordinary event, or a line no header of its transaction took
            self.out[i] = self._one(i, m, d)

    def _one(self, i: int, m: Message, d: Decoded) -> EventRecord:
        kafka = d.kafka
        assert kafka is not None
        change = self.batch.changes.get(i)
        if change is not None and change in self.done:
            return EventRecord(outcome=Outcome.DUPLICATE, event=d if isinstance(d, ChangeEvent) else None,
                               duplicate_of=self.done[change], detail="change already journaled", kafka=kafka)
        if isinstance(d, DecodeFailure):
            return EventRecord(outcome=Outcome.DEAD_LETTERED, failure=d, detail=f"{d.stage}: {d.reason}",
                               kafka=kafka, raw_key=m.key(), raw_value=m.value(), headers=_headers(m))
        if isinstance(d, (Tombstone, TransactionMarker)):
            return EventRecord(outcome=Outcome.SKIPPED, detail=type(d).__name__, kafka=kafka)
        return self._mapped(i, m, d, kafka, change)

    def _mapped(self, i: int, m: Message, d: ChangeEvent, kafka: KafkaCoordinates, change: SourceChange | None
                ) -> EventRecord:
        members = self.tx_events.get(i)
        items = self.batch.items
        lines = [e for j in members if isinstance(e := items[j][1], ChangeEvent)] if members is not None else None
        result = self.mapper.map(d, self.rows, lines=lines)
        self.rows.apply(result)
        if result.rejections:
            return EventRecord(outcome=Outcome.REJECTED, event=d, rejections=result.rejections,
                               detail=str(result.rejections[0]), kafka=kafka, raw_key=m.key(),
                               raw_value=m.value(), headers=_headers(m))
        if not result.vouchers:
            return EventRecord(outcome=Outcome.SKIPPED, event=d, detail=result.skipped, kafka=kafka)
        rec = EventRecord(outcome=Outcome.VOUCHERED, event=d, vouchers=result.vouchers, kafka=kafka)
        if members is not None:
            index = [j for j in members if isinstance(items[j][1], ChangeEvent)]
            for g in result.grouped:
                self.carried[index[g]] = rec
        if change is not None:
            self.done[change] = tuple(v.key for v in result.vouchers)
        return rec


class PipelineMetrics(Protocol):
    """What the pipeline reports (``connector.ops.Metrics``)."""

    def batch_journaled(self, records: Sequence[EventRecord], result: BatchResult, seconds: float) -> None: ...

    def journal_committed(self, seconds: float) -> None: ...

    def transactions_observed(self, held: int, ungrouped: int) -> None: ...

    def lag_observed(self, topic: str, partition: int, lag: int) -> None: ...

    def retried(self) -> None: ...


class Pipeline:
    """``kingdee-cdc run``: one consumer in the group, one journal connection, one thread."""

    def __init__(self, *, consumer_conf: Mapping[str, Any], topics: Sequence[str], journal: Journal,
                 processor: Processor, options: PipelineOptions = PipelineOptions(),
                 producer_conf: Mapping[str, Any] | None = None,
                 on_batch: Callable[[BatchResult, float], None] | None = None,
                 metrics: PipelineMetrics | None = None, outages: Outages | None = None) -> None:
        self.topics = list(topics)
        self.journal = journal
        self.processor = processor
        self.opts = options
        self.stats = PipelineStats()
        self.on_batch = on_batch
        self.metrics = metrics
        self.outages = outages or OUTAGES
        self._stop = threading.Event()
        self._lag_checked = 0.0
        self._kafka_warned: dict[int, float] = {}
        self.assigned: set[tuple[str, int]] = set()
        #: the group gave this member an assignment (possibly empty): from then on idle time counts
        self.joined = False
        #: replay: records at or beyond these offsets are left unread (bounded runs)
        self.stop_at: dict[tuple[str, int], int] = {}
        callbacks = kafka_callbacks(self.outages)  # librdkafka's logs and errors: throttled, as outages
        conf = {**callbacks, **consumer_conf, "enable.auto.commit": "false", "enable.auto.offset.store": "false",
                "partition.assignment.strategy": "cooperative-sticky", "isolation.level": "read_committed",
                "auto.offset.reset": options.start_from, "enable.partition.eof": "false"}
        self.consumer = Consumer(conf)
        base = producer_conf or {k: v for k, v in conf.items() if k in ("bootstrap.servers", "log_level")}
        self.producer = Producer({**callbacks, **base,
                                  "enable.idempotence": "true", "linger.ms": "5"}) \
            if options.dead_letter_topic else None
        self.grouper = self._grouper()

    def _grouper(self) -> TransactionGrouper[Message] | None:
        """Transaction grouping is on when a rule has ``lines:`` and a Debezium transaction topic is read."""
        grouped = self.processor.mapper.rules.grouped
        if not grouped or not self.opts.group_transactions:
            return None
        if not any(t.endswith(TRANSACTION_SUFFIX) for t in self.topics):
            log.warning("rules %s map documents with their lines, but no Debezium transaction topic "
                        "(<topic.prefix>%s) is consumed: their headers are mapped alone and rejected as "
                        "LINES_MISSING", ", ".join(r.id for r in grouped), TRANSACTION_SUFFIX)
            return None
        return TransactionGrouper[Message](self.processor.mapper.rules, hold_s=self.opts.transaction_hold_s,
                                  max_held=self.opts.transaction_max_held)

    # ------------------------------------------------------------------ rebalance
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Step 0 of the protocol: seek every assigned partition to the offset stored in the journal."""
        self.joined = True
        self.outages.ok("kafka")
        if not partitions:
            return
        stored = self._retry(lambda: self.journal.stored_offsets((p.topic, p.partition) for p in partitions))
        for p in partitions:
            nxt = stored.get((p.topic, p.partition))
            if nxt is not None:
                p.offset = nxt
            else:
                p.offset = OFFSET_BEGINNING if self.opts.start_from == "earliest" else OFFSET_END
        log.info("assigned %s", ", ".join(f"{p.topic}[{p.partition}]@{p.offset}" for p in partitions))
        consumer.incremental_assign(partitions)
        self.assigned |= {(p.topic, p.partition) for p in partitions}

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Batches are processed between polls, so no batch is in flight here: nothing to finish or abandon.
        log.info("revoked %s", ", ".join(f"{p.topic}[{p.partition}]" for p in partitions))
        for p in partitions:
            self.stats.paused.discard((p.topic, p.partition))
            self.assigned.discard((p.topic, p.partition))
        if self.grouper is not None:  # held records of these partitions are the next owner's to read
            self.grouper.drop((p.topic, p.partition) for p in partitions)

    # ------------------------------------------------------------------ loop
    def stop(self) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop())

    def run(self, *, max_idle_s: float | None = None) -> PipelineStats:
        """Consume until ``stop()`` (or, with ``max_idle_s``, until nothing came for that long once the group gave
        this member its partitions — none is fine). Stopping abandons a batch still waiting for a dependency.
        An idle run whose Kafka is unreachable stops with ``InfraError`` rather than report success."""
        try:
            self._retry(self.journal.migrate)
        except Stopped:
            self.journal.close()
            return self.stats
        tune_gc()
        self.consumer.subscribe(self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_revoke)
        idle_since = time.monotonic()
        try:
            while not self._stop.is_set():
                msgs = [m for m in self._next_batch() if self._usable(m)]
                if msgs:
                    self.outages.ok("kafka")
                if self.grouper is not None and (msgs or self.grouper.held):
                    self._handle_grouped(msgs)  # also when idle: held transactions may have timed out
                elif msgs:
                    self._handle(msgs)
                if msgs:
                    idle_since = time.monotonic()
                    continue
                if self.producer is not None:
                    self.producer.poll(0)  # serves the dead-letter producer's log lines and errors
                if self.metrics is not None and self.assigned:
                    self._observe_lag()
                if max_idle_s is not None and time.monotonic() - idle_since > max_idle_s and self._idle_done():
                    break
        except Stopped as e:
            log.info("%s", e)
        finally:
            self._close()
        return self.stats

    def _idle_done(self) -> bool:
        """Idle long enough: done once the group gave this member its assignment and Kafka answers. An idle spell
        while Kafka is unreachable is not the end of the input: ``InfraError``."""
        down = self.outages.problem("kafka")
        if down is None:
            return self.joined  # not joined yet: a restarted member may wait for the old one's session timeout
        try:
            self.consumer.list_topics(timeout=5)
        except Exception as e:
            raise InfraError(f"idle, but Kafka is unreachable ({down}; {e}): records may be left unread") from None
        self.outages.ok("kafka")
        return self.joined

    def _next_batch(self) -> list[Message]:
        """What is already fetched, up to ``batch_size``; if nothing is, wait up to ``batch_wait_s`` for the
        first record and take what came with it. Under load the batch is what queued up while the previous
        one was journaled (large batches, few commits); at a low rate a record is journaled as soon as it
        arrives instead of waiting for the batch to fill (low latency)."""
        n = self.opts.batch_size
        msgs = self.consumer.consume(n, 0)
        if msgs:
            return msgs
        msgs = self.consumer.consume(1, self.opts.batch_wait_s)
        if msgs and n > 1:
            msgs += self.consumer.consume(n - 1, 0)
        return msgs

    def _usable(self, m: Message) -> bool:
        err = m.error()
        if err is None:
            tp = (m.topic() or "", m.partition() or 0)
            if self.stop_at and (m.offset() or 0) >= self.stop_at.get(tp, 1 << 62):
                return False
            return tp not in self.stats.paused
        if err.code() == KafkaError._PARTITION_EOF:
            return False
        if err.fatal():
            raise InfraError(f"fatal Kafka error: {err}")
        now = time.monotonic()  # the same error (a missing topic …) comes with every fetch: once per interval
        if now - self._kafka_warned.get(err.code(), -1e9) >= self.outages.every_s:
            self._kafka_warned[err.code()] = now
            log.warning("kafka: %s", err)
        return False

    def _handle_grouped(self, msgs: list[Message]) -> None:
        """Decode, hold what waits for its source transaction, and journal what can go now."""
        assert self.grouper is not None
        self.grouper.add(self.processor.decode(msgs))
        release = self.grouper.release()
        self.stats.transactions_ungrouped += release.expired
        if self.metrics is not None:
            self.metrics.transactions_observed(self.grouper.held, release.expired)
        if release.items:
            self._handle([m for m, _ in release.items], decoded=release.items, groups=release.groups)

    def _handle(self, msgs: Sequence[Message], *, decoded: Sequence[tuple[Message, Decoded]] | None = None,
                groups: Mapping[TxKey, Sequence[int]] | None = None) -> None:
        """One batch through the protocol: decode (unless ``decoded``), read what the journal knows of its rows,
        map (pure), dead letters to their topic, the journal transaction, then the advisory Kafka commit."""
        started = time.monotonic()
        positions: dict[Partition, tuple[int, int]] = {}
        try:
            if decoded is None:
                decoded = self._retry(lambda: self.processor.decode(msgs), "schema_registry")
            batch = Batch.of(decoded, groups)
            state = self._retry(lambda: self.journal.batch_state(batch.changes.values()))
            records = self._apply_tolerance(self.processor.process(batch, state))
            if not records:
                return
            positions = _positions(records)
            self._publish_dead_letters(records)
            result = self._journal(records, positions)
        except Fenced as e:
            self._fenced(e, positions, groups)
            return
        # 5. advisory: let lag tools see progress (the journal is the truth).
        self.consumer.commit(offsets=[TopicPartition(t, p, nxt) for (t, p), (_, nxt) in positions.items()],
                             asynchronous=True)
        self._count(result)
        self._log_outcomes(records)
        elapsed = time.monotonic() - started
        if self.metrics is not None:
            self.metrics.batch_journaled(records, result, elapsed)
            self._observe_lag()
        if self.on_batch is not None:
            self.on_batch(result, elapsed)

    def _journal(self, records: Sequence[EventRecord], positions: Mapping[Partition, tuple[int, int]]
                 ) -> BatchResult:
        """Steps 1–4: the batch's one journal transaction (retried whole on transient failures)."""
        commit_started = time.monotonic()
        result = self._retry(lambda: self.journal.write_batch(records, positions))
        if self.metrics is not None:
            self.metrics.journal_committed(time.monotonic() - commit_started)
        return result

    def _fenced(self, e: Fenced, positions: Mapping[Partition, tuple[int, int]],
                groups: Mapping[TxKey, Sequence[int]] | None) -> None:
        self.stats.fenced += 1
        log.warning("%s", e)
        # The whole batch was rolled back: every partition in it — not only the fenced ones — must be
        # read again from its journal offset, or the records of the others would be skipped.
        if self.grouper is not None and groups:
            self.grouper.forget(groups)
        self._reseek(sorted(positions), fallback={tp: first for tp, (first, _) in positions.items()})

    @staticmethod
    def _log_outcomes(records: Sequence[EventRecord]) -> None:
        """One line per rejected / dead-lettered record (and per journaled one at DEBUG), with its keys."""
        debug = log.isEnabledFor(logging.DEBUG)
        for r in records:
            if r.outcome is Outcome.REJECTED and r.rejections:
                first = r.rejections[0]
                log.info("rejected: %s", first.message, extra=event_context(
                    r, first.voucher_key, rule=first.rule, reason=first.code.value))
            elif r.outcome is Outcome.DEAD_LETTERED:
                log.warning("dead-lettered (%s): %s", r.failure.stage if r.failure else "map",
                            r.failure.reason if r.failure else r.detail, extra=event_context(r))
            elif debug:
                log.debug("%s", r.outcome.value.lower(), extra=event_context(r))

    def _observe_lag(self, every_s: float = 1.0) -> None:
        """Consumer lag per partition (log end − position), from librdkafka's cached watermarks."""
        now = time.monotonic()
        metrics = self.metrics
        if metrics is None or now - self._lag_checked < every_s:
            return
        self._lag_checked = now
        try:
            for tp in self.consumer.position([TopicPartition(t, p) for t, p in self.assigned]):
                _, high = self.consumer.get_watermark_offsets(tp, cached=True)
                if tp.offset >= 0 and high >= 0:
                    metrics.lag_observed(tp.topic, tp.partition, high - tp.offset)
        except Exception as e:  # lag is advisory; never let it break the batch loop
            log.debug("lag observation failed: %s", e)

    def _apply_tolerance(self, records: list[EventRecord]) -> list[EventRecord]:
        if self.opts.tolerance != "none":
            return records
        kept: list[EventRecord] = []
        stopped: set[tuple[str, int]] = set()
        for r in records:
            tp = (r.kafka.topic, r.kafka.partition)
            if tp in stopped:
                continue
            if r.outcome in (Outcome.REJECTED, Outcome.DEAD_LETTERED):
                stopped.add(tp)
                self.stats.stopped_at[tp] = r.kafka.offset
                log.error("errors.tolerance=none: partition %s[%s] stopped at %s: %s", *tp, r.kafka,
                          r.detail or r.outcome.value)
                continue
            kept.append(r)
        if stopped:
            self.stats.paused |= stopped
            self.consumer.pause([TopicPartition(t, p) for t, p in stopped])
        return kept

    def _publish_dead_letters(self, records: list[EventRecord]) -> None:
        """Dead letters reach the DLQ topic before the journal commit (at least once, never lost)."""
        if self.producer is None:
            return
        bad = [r for r in records if r.outcome in (Outcome.REJECTED, Outcome.DEAD_LETTERED)]
        if not bad:
            return
        for r in bad:
            self.producer.produce(self.opts.dead_letter_topic, key=r.raw_key, value=r.raw_value,
                                  headers=dlq_headers(r, self.opts.connector_name))
        # Wait for the broker, but not past a stop request: the batch is then abandoned (read again later; the
        # dead letters may be published twice, never lost).
        deadline = time.monotonic() + self.opts.retry_for_s
        while self.producer.flush(1.0) != 0:
            if self._stop.is_set():
                raise Stopped("stopped while the dead-letter topic did not acknowledge; the batch is abandoned")
            self.outages.failed("kafka", f"the dead-letter topic {self.opts.dead_letter_topic} does not acknowledge")
            if time.monotonic() >= deadline:
                raise InfraError(f"dead-letter topic did not acknowledge within {self.opts.retry_for_s:g} s")

    def _reseek(self, partitions: Sequence[tuple[str, int]], fallback: Mapping[tuple[str, int], int]) -> None:
        """Read ``partitions`` again from the journal's offsets (``fallback``: where this instance started
        a partition the journal has no offset for yet)."""
        if self.grouper is not None:  # records held behind the batch are read again too
            self.grouper.drop(partitions)
        stored = self._retry(lambda: self.journal.stored_offsets(partitions))
        for tp in partitions:
            offset = stored.get(tp, fallback.get(tp))
            if offset is not None:
                self.consumer.seek(TopicPartition(tp[0], tp[1], offset))

    def _count(self, r: BatchResult) -> None:
        s = self.stats
        s.batches += 1
        s.records += r.records
        s.vouchers += r.vouchers_inserted
        s.duplicates += r.vouchers_duplicate
        s.rejected += r.rejected
        s.dead_lettered += r.dead_lettered
        s.skipped += r.skipped
        s.grouped += r.grouped

    def _retry(self, fn: Callable[[], T], dependency: str = "journal") -> T:
        """``fn`` until it succeeds, retrying transient failures with backoff for up to ``retry_for_s``. A stop request
        ends the waiting (``Stopped``). Failures of ``dependency`` are reported to the outages (a line per interval);
        conflicts between writers (serialization, deadlock, unique violation) are logged at each retry."""
        failed = False

        def before_sleep(state: RetryCallState) -> None:
            nonlocal failed
            self.stats.retries += 1
            if self.metrics is not None:
                self.metrics.retried()
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, _CONFLICTS):
                log.warning("transient failure (attempt %d), retrying: %s", state.attempt_number, exc)
            else:
                failed = True
                self.outages.failed(dependency, str(exc))
            self.journal.reset()

        def sleep(seconds: float) -> None:
            if self._stop.wait(seconds):
                raise Stopped(f"stopped while waiting for the {dependency}: the batch is abandoned (nothing of it "
                              "was committed)")

        def stop(state: RetryCallState) -> bool:
            # A unique violation is only expected from a concurrent replay of the same change: one retry
            # resolves it. Repeated violations mean a bug; fail fast instead of looping for minutes.
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, psycopg.errors.UniqueViolation) and state.attempt_number >= 3:
                return True
            return bool(stop_after_delay(self.opts.retry_for_s)(state))

        for attempt in Retrying(retry=retry_if_exception_type(_TRANSIENT), reraise=True,
                                wait=wait_exponential_jitter(multiplier=0.2, max=10), stop=stop,
                                before_sleep=before_sleep, sleep=sleep):
            with attempt:
                result = fn()
                if failed or self.outages.problem(dependency) is not None:
                    self.outages.ok(dependency)
                return result
        raise ConnectorError("unreachable")  # pragma: no cover

    def discard(self) -> None:
        """Destroy the consumer and the dead-letter producer of a pipeline whose ``run`` never ran (stopped during
        start-up) now, not at interpreter shutdown, where librdkafka's threads calling back into Python can crash
        the process on its way out. Not ``close()``: that would serve their queued connection errors into the
        log of a service that already said what it waits for. The pipeline is unusable afterwards."""
        del self.consumer
        del self.producer
        self.journal.close()

    def _close(self) -> None:
        try:
            self.consumer.close()  # leaves the group (revokes) so partitions move on quickly
        finally:
            if self.producer is not None:
                self.producer.flush(10)
            self.journal.close()
