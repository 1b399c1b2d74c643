"""Operations: Prometheus metrics behind an intent-named façade, and /metrics, /healthz, /readyz endpoints.

Names follow Prometheus conventions (``kingdee_cdc_…_total``, ``…_seconds``); labels are bounded (topic,
partition, outcome — never keys or amounts). The registry is injectable so tests use their own.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from psycopg import sql
from psycopg_pool import ConnectionPool

from connector import __version__
from connector.errors import ConfigError

#: the poster's backlog: ``connector.journal.UNSETTLED`` (ops sits below the journal in the package map, so the
#: names are repeated here; they match the ``vouchers_pending`` partial index)
BACKLOG_STATUSES: Final = ("JOURNALED", "POSTING")


class Metrics:
    """The pipeline's metrics. Methods are named for what happened, not for the metric type."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.consumed = Counter("kingdee_cdc_events_consumed_total", "Records consumed, by topic", ["topic"],
                                registry=r)
        self.outcomes = Counter("kingdee_cdc_event_outcomes_total", "Journaled record outcomes", ["outcome"],
                                registry=r)
        self.vouchers = Counter("kingdee_cdc_vouchers_journaled_total", "Vouchers written to the journal", registry=r)
        self.duplicates = Counter("kingdee_cdc_duplicate_vouchers_skipped_total",
                                  "Vouchers skipped because their key was already journaled", registry=r)
        self.batch_size = Histogram("kingdee_cdc_batch_size", "Records per journal transaction",
                                    buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000), registry=r)
        self.batch_seconds = Histogram("kingdee_cdc_batch_duration_seconds", "Decode + map + journal per batch",
                                       registry=r)
        self.latency = Histogram("kingdee_cdc_end_to_end_latency_seconds",
                                 "Kafka record timestamp to journal commit",
                                 buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), registry=r)
        self.lag = Gauge("kingdee_cdc_consumer_lag", "Log end minus position", ["topic", "partition"], registry=r)
        self.retries = Counter("kingdee_cdc_retries_total", "Retried infrastructure failures", registry=r)
        self.source_latency = Histogram("kingdee_cdc_source_to_journal_latency_seconds",
                                        "Source database commit time to journal commit",
                                        buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300), registry=r)
        self.journal_commit = Histogram("kingdee_cdc_journal_commit_duration_seconds",
                                        "One journal transaction (vouchers, outcomes, offsets)", registry=r)
        self.dead_letters = Counter("kingdee_cdc_dead_letters_total", "Records dead-lettered, by stage and reason code",
                                    ["stage", "reason"], registry=r)
        self.rejections = Counter("kingdee_cdc_rejections_total", "Changes rejected by mapping/checks, by reason code",
                                  ["reason"], registry=r)
        self.transaction_held = Gauge("kingdee_cdc_transaction_held_records",
                                      "Records held until their source transaction is complete (rules with lines:)",
                                      registry=r)
        self.transactions_ungrouped = Counter(
            "kingdee_cdc_transactions_ungrouped_total",
            "Source transactions released event by event because they did not complete in time", registry=r)
        # poster
        self.settled = Counter("kingdee_cdc_vouchers_settled_total",
                               "Poster outcomes: POSTED, REJECTED_BY_KINGDEE, NEEDS_ATTENTION, REVERSED", ["status"],
                               registry=r)
        self.posted_latency = Histogram("kingdee_cdc_posted_latency_seconds",
                                        "Time until a voucher is posted in Kingdee, from the source commit or "
                                        "from the journal commit", ["since"],
                                        buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600), registry=r)
        self.kingdee_seconds = Histogram("kingdee_cdc_kingdee_request_duration_seconds",
                                         "Kingdee WebAPI calls, by operation", ["operation"], registry=r)
        self.kingdee_errors = Counter("kingdee_cdc_kingdee_request_errors_total",
                                      "Failed Kingdee WebAPI calls, by operation and outcome (msgcode_N, "
                                      "unavailable, ambiguous, error)", ["operation", "outcome"], registry=r)
        self.unknown = Counter("kingdee_cdc_vouchers_outcome_unknown_total",
                               "Vouchers whose BatchSave outcome was unknown (timeout, lost answer, HTTP 5xx): looked "
                               "up by key after the grace period", registry=r)
        self.taken_over = Counter("kingdee_cdc_poster_lease_takeovers_total",
                                  "POSTING vouchers taken over after their poster's lease expired", registry=r)
        self.duplicates_found = Counter("kingdee_cdc_kingdee_duplicates_total",
                                        "Extra copies of a voucher key found in Kingdee, by action (deleted, flagged)",
                                        ["action"], registry=r)
        self.duplicates_open = Gauge("kingdee_cdc_kingdee_duplicates_open",
                                     "Extra copies of voucher keys in Kingdee waiting for a human (or a deletion)",
                                     registry=r)
        # feedback
        self.feedback_sent = Counter("kingdee_cdc_feedback_events_sent_total",
                                     "Feedback events acknowledged by Kafka, by source system", ["system"], registry=r)
        self.info = Gauge("kingdee_cdc_build_info", "Build information", ["version"], registry=r)
        self.info.labels(__version__).set(1)

    # intent-named methods ------------------------------------------------
    def batch_journaled(self, records: Sequence[Any], result: Any, seconds: float) -> None:
        """``records``: ``connector.journal.EventRecord``s, ``result``: their ``BatchResult`` (ops sits below the
        journal, so it reads them by duck typing)."""
        now_ms = time.time() * 1000
        for rec in records:
            self.consumed.labels(rec.kafka.topic).inc()
            if rec.kafka.timestamp_ms:
                self.latency.observe(max(0.0, (now_ms - rec.kafka.timestamp_ms) / 1000))
            ev = rec.event
            if ev is not None and ev.source.ts_ms:
                self.source_latency.observe(max(0.0, (now_ms - ev.source.ts_ms) / 1000))
            if rec.failure is not None:
                self.dead_letters.labels(rec.failure.stage, rec.failure.error_class).inc()
            for rej in rec.rejections[:1]:
                self.rejections.labels(rej.code.value).inc()
        for outcome, n in result.outcomes.items():
            self.outcomes.labels(outcome).inc(n)
        self.vouchers.inc(result.vouchers_inserted)
        self.duplicates.inc(result.vouchers_duplicate)
        self.batch_size.observe(len(records))
        self.batch_seconds.observe(seconds)

    def transactions_observed(self, held: int, ungrouped: int) -> None:
        self.transaction_held.set(held)
        if ungrouped:
            self.transactions_ungrouped.inc(ungrouped)

    def lag_observed(self, topic: str, partition: int, lag: int) -> None:
        self.lag.labels(topic, str(partition)).set(max(0, lag))

    def journal_committed(self, seconds: float) -> None:
        self.journal_commit.observe(seconds)

    def retried(self) -> None:
        self.retries.inc()

    def kingdee_request(self, operation: str, seconds: float, outcome: str) -> None:
        self.kingdee_seconds.labels(operation).observe(seconds)
        if outcome != "ok":
            self.kingdee_errors.labels(operation, outcome).inc()

    def voucher_settled(self, status: str) -> None:
        """A voucher reached a settled status (POSTED, REJECTED_BY_KINGDEE, NEEDS_ATTENTION, REVERSED)."""
        self.settled.labels(status).inc()

    def voucher_posted(self, *, source_ts_ms: int | None, journaled_at: datetime | None) -> None:
        """How long a posted voucher took, from its source commit and from its journal commit."""
        now = time.time()
        if source_ts_ms:
            self.posted_latency.labels("source_commit").observe(max(0.0, now - source_ts_ms / 1000))
        if journaled_at is not None:
            self.posted_latency.labels("journal_commit").observe(max(0.0, now - journaled_at.timestamp()))

    def outcomes_unknown(self, n: int) -> None:
        self.unknown.inc(n)

    def leases_taken_over(self, n: int) -> None:
        self.taken_over.inc(n)

    def duplicate_copies(self, action: str, n: int = 1) -> None:
        """Extra copies of keys in Kingdee ``deleted`` or ``flagged`` for a person."""
        self.duplicates_found.labels(action).inc(n)

    def duplicate_copies_open(self, n: int) -> None:
        self.duplicates_open.set(n)

    def feedback_sent_to(self, system: str, n: int) -> None:
        self.feedback_sent.labels(system).inc(n)


def exported_series(registry: CollectorRegistry | None = None) -> set[str]:
    """Every series name the service exports (what dashboards and alert rules may refer to)."""
    m = Metrics(registry)
    names = {n for n, _ in (*JournalBacklog.FAMILIES, *JournalBacklog.RECONCILIATION)}
    for fam in m.registry.collect():  # labelled metrics without children still yield their family
        if fam.type == "counter":
            names.add(f"{fam.name}_total")
        elif fam.type == "histogram":
            names |= {f"{fam.name}_bucket", f"{fam.name}_count", f"{fam.name}_sum"}
        else:
            names.add(fam.name)
    return names


class JournalBacklog:
    """A collector that reads the poster and outbox backlogs from the journal at scrape time.

    Scrape-time reads stay correct when the poster or the relay is down (exactly when the numbers
    matter); each scrape costs three indexed queries under a 2 s statement timeout, on a connection of a
    small pool (opened on the first scrape, checked before each use) rather than a new one per scrape.
    """

    FAMILIES: tuple[tuple[str, str], ...] = (
        ("kingdee_cdc_poster_backlog", "Vouchers waiting to be posted (JOURNALED, POSTING)"),
        ("kingdee_cdc_poster_backlog_oldest_seconds", "Age of the oldest voucher waiting to be posted"),
        ("kingdee_cdc_feedback_outbox_backlog", "Feedback events not yet sent to Kafka"),
        ("kingdee_cdc_feedback_outbox_oldest_seconds", "Age of the oldest unsent feedback event"),
        ("kingdee_cdc_journal_up", "1 when the journal answered the backlog queries"))
    #: the latest `kingdee-cdc reconcile` run per book (labelled by book)
    RECONCILIATION: tuple[tuple[str, str], ...] = (
        ("kingdee_cdc_reconciliation_flagged_lines", "Lines flagged by the latest reconciliation of the book"),
        ("kingdee_cdc_reconciliation_abs_difference", "Sum of absolute flagged differences (local currency)"),
        ("kingdee_cdc_reconciliation_last_run_timestamp_seconds", "When the book was last reconciled"))

    def __init__(self, dsn: str, schema: str = "kdcdc") -> None:
        self.dsn = dsn
        self.schema = schema
        s = sql.Identifier(schema)
        self._waiting = sql.SQL(
            "SELECT count(*), coalesce(extract(epoch FROM now() - min(journaled_at)), 0) FROM {s}.vouchers "
            "WHERE status IN ({waiting})").format(s=s, waiting=sql.SQL(", ").join(map(sql.Literal, BACKLOG_STATUSES)))
        self._unsent = sql.SQL(
            "SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0) FROM {s}.outbox "
            "WHERE sent_at IS NULL").format(s=s)
        self._reconciled = sql.SQL(
            "SELECT DISTINCT ON (book) book, flagged, abs_difference, extract(epoch FROM run_at) "
            "FROM {s}.reconciliations ORDER BY book, run_at DESC").format(s=s)
        self._pool: ConnectionPool | None = None
        self._closer: weakref.finalize[[], JournalBacklog] | None = None
        self._pool_lock = threading.Lock()

    def _connections(self) -> ConnectionPool:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ConnectionPool(
                    self.dsn, min_size=1, max_size=2, open=True, name="kingdee-cdc-metrics",
                    check=ConnectionPool.check_connection, reconnect_timeout=0,
                    kwargs={"autocommit": True, "connect_timeout": 2, "application_name": "kingdee-cdc-metrics",
                            "options": "-c statement_timeout=2000"})
                # Closed with the collector (or at exit) on the thread that lets go of it: left to the garbage
                # collector, the pool could be finalized on one of its own worker threads, which cannot join itself.
                self._closer = weakref.finalize(self, self._pool.close)
            return self._pool

    def close(self) -> None:
        with self._pool_lock:
            if self._closer is not None:
                self._closer()
            self._pool = self._closer = None

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        counts, oldest, outbox, outbox_age, up = (GaugeMetricFamily(name, h) for name, h in self.FAMILIES)
        recon = [GaugeMetricFamily(name, h, labels=["book"]) for name, h in self.RECONCILIATION]
        try:
            with self._connections().connection(timeout=2) as conn:
                waiting, age = conn.execute(self._waiting).fetchone() or (0, 0)
                unsent, unsent_age = conn.execute(self._unsent).fetchone() or (0, 0)
                for book, flagged, diff, at in conn.execute(self._reconciled).fetchall():
                    for fam, value in zip(recon, (flagged, diff, at)):
                        fam.add_metric([str(book)], float(value))
            counts.add_metric([], float(waiting))
            oldest.add_metric([], float(age))
            outbox.add_metric([], float(unsent))
            outbox_age.add_metric([], float(unsent_age))
            up.add_metric([], 1.0)
            yield from (counts, oldest, outbox, outbox_age, up, *recon)
        except Exception:  # the journal being down must not break /metrics
            up.add_metric([], 0.0)
            yield up


class OpsServer:
    """``/metrics``, ``/healthz`` (process alive) and ``/readyz`` (dependencies reachable) on one port."""

    def __init__(self, metrics: Metrics, *, host: str = "127.0.0.1", port: int = 0,
                 ready: Callable[[], tuple[bool, str]] = lambda: (True, "ok"), token: str | None = None) -> None:
        ops = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                if ops.token and self.headers.get("Authorization") != f"Bearer {ops.token}":
                    self._send(401, b"unauthorized\n", "text/plain")
                elif self.path.startswith("/metrics"):
                    self._send(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
                elif self.path.startswith("/healthz"):
                    self._send(200, b"ok\n", "text/plain")
                elif self.path.startswith("/readyz"):
                    ok, why = ready()
                    self._send(200 if ok else 503, (why + "\n").encode(), "text/plain")
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.token = token
        try:
            self.server = ThreadingHTTPServer((host, port), Handler)
        except OSError as e:
            raise ConfigError(f"cannot serve metrics on {host}:{port}: {e.strerror}; set metrics.port "
                              "(0 = any free port) or metrics.host") from None
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="ops-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> OpsServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
