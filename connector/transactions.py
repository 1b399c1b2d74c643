"""Source transactions: hold a document's events until its whole transaction is here, then release them together.

A rule with ``lines:`` maps an order header together with the order lines written in the *same source
transaction*. Debezium puts the header and the lines on different topics (and partitions), so the pipeline
holds the events of such a transaction until it has all of them — known from the END marker on the
connector's transaction topic (``<topic.prefix>.transaction``), whose ``data_collections`` give the number of
events per table — and then releases them in one batch.

Exactly once is kept by releasing only *prefixes* of each partition (head-of-line holding): a held event
holds everything behind it on its partition, so the journal's next offset never passes an event that has
no outcome yet. After a crash the held events are simply consumed again. A transaction's END marker is
released together with its events (never before), or a restart could never complete it.

A transaction that is not complete after ``hold_s`` (the transaction topic is not consumed, part of it is
assigned to another instance, …), or while more than ``max_held`` events are held, is released ungrouped:
its events are mapped one by one, exactly as without transaction metadata; this is logged and counted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from connector.events import ChangeEvent, Decoded, TransactionMarker
from connector.mapping import RuleSet

log = logging.getLogger("kingdee_cdc.transactions")

#: Debezium's default transaction topic is ``<topic.prefix>.transaction``.
TRANSACTION_SUFFIX = ".transaction"

TxKey = tuple[str, str]  # (source system = topic prefix, transaction group id)


class Record(Protocol):
    """What the grouper reads of a consumed record (``confluent_kafka.Message`` in the pipeline)."""

    def topic(self) -> str | None: ...

    def partition(self) -> int | None: ...


M = TypeVar("M", bound=Record)


def data_collection(ev: ChangeEvent) -> str:
    """The table as Debezium names it in a transaction END marker: ``schema.table`` (PostgreSQL) or
    ``db.table`` (MySQL)."""
    s = ev.source
    return f"{s.schema or s.db}.{s.table}"


def _total_order(d: Decoded) -> int:
    return d.transaction.total_order if isinstance(d, ChangeEvent) and d.transaction is not None else 0


def marker_system(topic: str) -> str | None:
    return topic[: -len(TRANSACTION_SUFFIX)] if topic.endswith(TRANSACTION_SUFFIX) else None


@dataclass(slots=True)
class _Tx:
    first_seen: float
    events: int = 0
    per_table: dict[str, int] = field(default_factory=dict)
    end: TransactionMarker | None = None


@dataclass(frozen=True, slots=True)
class Release(Generic[M]):
    """Records ready to journal, per partition in offset order, and the transactions among them."""

    items: list[tuple[M, Decoded]]
    #: the grouped transactions: key → indices into ``items`` of their data events, in transaction order
    groups: dict[TxKey, list[int]]
    expired: int = 0  #: transactions released ungrouped this time (timeout or memory bound)


class TransactionGrouper(Generic[M]):
    """Holds records of transactions that touch grouped tables until each transaction is complete."""

    def __init__(self, rules: RuleSet, *, hold_s: float = 30.0, max_held: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.hold_s = hold_s
        self.max_held = max_held
        self.clock = clock
        self._rules = rules.grouped
        self._relevant_cache: dict[tuple[str, str | None, str | None], bool] = {}
        self._queues: dict[tuple[str, int], list[tuple[M, Decoded]]] = {}
        self._txs: dict[TxKey, _Tx] = {}
        #: transactions already released (grouped, or ungrouped after expiry): late or redelivered records of
        #: them pass straight through (an insertion-ordered dict as a bounded LRU)
        self._done: dict[TxKey, None] = {}

    @property
    def held(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def relevant_table(self, system: str, schema: str | None, table: str | None) -> bool:
        k = (system, schema, table)
        found = self._relevant_cache.get(k)
        if found is None:
            found = any(r.matches_table(system, schema, table) or r.is_line(system, schema, table)
                        for r in self._rules)
            self._relevant_cache[k] = found
        return found

    def _key(self, d: Decoded) -> TxKey | None:
        """The transaction a record must wait for, or None if it never waits."""
        if isinstance(d, ChangeEvent):
            s = d.source
            if d.transaction is None or not self.relevant_table(s.name, s.schema, s.table):
                return None
            return (s.name, d.transaction.group)
        return None

    def _end_key(self, m: M, d: Decoded) -> TxKey | None:
        if isinstance(d, TransactionMarker) and d.status == "END":
            system = marker_system(m.topic() or "")
            if system is not None and any(self._dc_relevant(system, dc) for dc in d.data_collections):
                return (system, d.group)
        return None

    def _dc_relevant(self, system: str, dc: str) -> bool:
        first, _, table = dc.rpartition(".")
        return self.relevant_table(system, first or None, table)

    # ------------------------------------------------------------------ public
    def add(self, items: Iterable[tuple[M, Decoded]]) -> None:
        now = self.clock()
        for m, d in items:
            self._queues.setdefault((m.topic() or "", m.partition() or 0), []).append((m, d))
            k = self._key(d)
            if k is not None and k not in self._done:
                tx = self._txs.setdefault(k, _Tx(first_seen=now))
                tx.events += 1
                assert isinstance(d, ChangeEvent)
                dc = data_collection(d)
                tx.per_table[dc] = tx.per_table.get(dc, 0) + 1
            ek = self._end_key(m, d)
            if ek is not None and ek not in self._done:
                assert isinstance(d, TransactionMarker)
                self._txs.setdefault(ek, _Tx(first_seen=now)).end = d

    def drop(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Forget the held records of partitions this instance no longer reads from where it was (revoked,
        fenced, re-sought): they are consumed again from the journal's offset."""
        for tp in partitions:
            for m, d in self._queues.pop(tp, []):
                k = self._key(d)
                if k is not None and k in self._txs:  # counted again if it is consumed again
                    tx = self._txs[k]
                    assert isinstance(d, ChangeEvent)
                    dc = data_collection(d)
                    tx.events -= 1
                    tx.per_table[dc] -= 1
                ek = self._end_key(m, d)
                if ek is not None and ek in self._txs:
                    self._txs[ek].end = None

    def forget(self, keys: Iterable[TxKey]) -> None:
        """Released transactions whose batch was not journaled after all (fenced): when their records are
        read again they are grouped again, not passed through as already released."""
        for k in keys:
            self._done.pop(k, None)

    def release(self) -> Release[M]:
        now = self.clock()
        expired = 0
        for k, tx in list(self._txs.items()):
            if now - tx.first_seen >= self.hold_s:
                log.warning("source transaction %s of %s incomplete after %.0f s (%s): mapping its events one by "
                            "one", k[1], k[0], self.hold_s, "no END marker seen" if tx.end is None else
                            f"{tx.events} of {tx.end.event_count} events here")
                self._expire(k)
                expired += 1
        over = self.held - self.max_held
        while over > 0 and self._txs:
            oldest = min(self._txs, key=lambda key: self._txs[key].first_seen)
            over -= self._txs[oldest].events + (self._txs[oldest].end is not None)
            log.warning("more than %d records held for source transactions: releasing transaction %s of %s "
                        "ungrouped", self.max_held, oldest[1], oldest[0])
            self._expire(oldest)
            expired += 1
        ready = {k for k, tx in self._txs.items() if self._complete(k[0], tx)}
        # Fixpoint: a transaction is released only if every record of it (and its END) is reachable, i.e.
        # nothing still held stands before any of them on their partitions.
        while True:
            cut = {tp: self._prefix(q, ready) for tp, q in self._queues.items()}
            blocked: set[TxKey] = set()
            for tp, q in self._queues.items():
                for m, d in q[cut[tp]:]:
                    for bk in (self._key(d), self._end_key(m, d)):
                        if bk is not None and bk in ready:
                            blocked.add(bk)
            if not blocked:
                break
            ready -= blocked
        items: list[tuple[M, Decoded]] = []
        groups: dict[TxKey, list[int]] = {}
        for tp, q in list(self._queues.items()):
            n = cut[tp]
            if not n:
                continue
            for m, d in q[:n]:
                gk = self._key(d)
                if gk is not None and gk in ready:
                    groups.setdefault(gk, []).append(len(items))
                items.append((m, d))
            del q[:n]
            if not q:
                del self._queues[tp]
        for k in ready:
            del self._txs[k]
            self._remember(k)
        for members in groups.values():  # in the source transaction's own order, not partition by partition
            members.sort(key=lambda i: _total_order(items[i][1]))
        return Release(items=items, groups=groups, expired=expired)

    # ------------------------------------------------------------------ internals
    def _complete(self, system: str, tx: _Tx) -> bool:
        """The END marker is here and, for every grouped table it names, so are all of that table's events."""
        if tx.end is None:
            return False
        return all(tx.per_table.get(dc, 0) == n for dc, n in tx.end.data_collections.items()
                   if self._dc_relevant(system, dc))

    def _prefix(self, q: Sequence[tuple[M, Decoded]], ready: set[TxKey]) -> int:
        """How many records at the head of a partition's queue can go now."""
        for i, (m, d) in enumerate(q):
            k = self._key(d) or self._end_key(m, d)
            if k is not None and k not in ready and k not in self._done:
                return i
        return len(q)

    def _expire(self, k: TxKey) -> None:
        self._txs.pop(k, None)
        self._remember(k)

    def _remember(self, k: TxKey) -> None:
        self._done[k] = None
        while len(self._done) > 100_000:
            del self._done[next(iter(self._done))]
