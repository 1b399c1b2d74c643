"""Kafka's log end offsets, for the status page's lag (log end − the journal's next offset per partition).

One ``list_offsets`` request for every partition the journal has positions for, answered from a cache for
``ttl_s`` so that page refreshes do not each ask the brokers; when Kafka does not answer within ``timeout_s`` the
page shows the lag as unknown rather than waiting.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("kingdee_cdc.console")

Partition = tuple[str, int]


class LogEnds:
    """Cached log end offsets of partitions (``None``: Kafka did not answer)."""

    def __init__(self, conf: Mapping[str, str] | None, *, ttl_s: float = 10.0, timeout_s: float = 2.0) -> None:
        self.conf = dict(conf) if conf is not None else None
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self._admin: Any = None
        self._cached: tuple[float, frozenset[Partition], dict[Partition, int] | None] | None = None
        self._lock = threading.Lock()

    def get(self, positions: Mapping[Partition, int]) -> dict[Partition, int] | None:
        """The log end of each partition of ``positions`` (partition → the journal's next offset). A cached answer
        older than ``ttl_s``, or behind a position the journal already reached, is asked again."""
        wanted = frozenset(positions)
        if self.conf is None or not wanted:
            return {} if self.conf is not None else None
        with self._lock:
            now = time.monotonic()
            cached = self._cached
            if cached is not None and cached[1] >= wanted and now - cached[0] < self.ttl_s:
                ends = cached[2]
                if ends is None or all(ends.get(p, 0) >= offset for p, offset in positions.items()):
                    return ends  # (Kafka not answering is remembered as long: pages do not each wait for it)
            ends = self._ask(wanted)
            self._cached = (now, wanted, ends)
            return ends

    def _ask(self, partitions: frozenset[Partition]) -> dict[Partition, int] | None:
        from confluent_kafka import TopicPartition
        from confluent_kafka.admin import AdminClient
        from confluent_kafka.admin._listoffsets import OffsetSpec

        try:
            if self._admin is None:
                self._admin = AdminClient({**(self.conf or {}), "log_level": "0"})
            latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]
            futures = self._admin.list_offsets({TopicPartition(t, p): latest for t, p in partitions},
                                               request_timeout=self.timeout_s)
            return {(tp.topic, tp.partition): int(f.result(self.timeout_s).offset) for tp, f in futures.items()}
        except Exception as e:  # KafkaException, a future's timeout (its type differs between versions) …
            log.warning("console: Kafka log ends unavailable (%s); lag shown as unknown", type(e).__name__)
            return None
