"""Operations: Prometheus metrics behind an intent-named façade, the /metrics, /healthz, /readyz endpoints, and
how the process lives with its dependencies: what each one did last (``Outages``, logged once per interval
instead of once per attempt), librdkafka's logs and errors through the same throttle, readiness from cached
checks, and a shutdown that ends within its grace period whatever still blocks (``Shutdown``).

Names follow Prometheus conventions (``kingdee_cdc_…_total``, ``…_seconds``); labels are bounded (topic,
partition, outcome — never keys or amounts). The registry is injectable so tests use their own.
"""

from __future__ import annotations

import faulthandler
import hmac
import logging
import os
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any, Final
from urllib.parse import urlsplit

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
        self.dependency_up = Gauge("kingdee_cdc_dependency_up",
                                   "1 when the dependency (journal, kafka, kingdee, schema_registry) answered the "
                                   "last time it was used or checked, 0 while it fails", ["dependency"], registry=r)

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

    def dependency_state(self, dependency: str, up: bool) -> None:
        self.dependency_up.labels(dependency).set(1 if up else 0)


def exported_series(registry: CollectorRegistry | None = None) -> set[str]:
    """Every series name the service exports (what dashboards and alert rules may refer to)."""
    m = Metrics(registry)
    names = {n for n, _ in (*JournalBacklog.FAMILIES, *JournalBacklog.RECONCILIATION, *JournalBacklog.SUMMARIES)}
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
    #: summary vouchers (rules with summarize:): summaries open or held, and open ones long past their close
    SUMMARIES: tuple[tuple[str, str], ...] = (
        ("kingdee_cdc_summaries", "Summaries taking contributions (OPEN) or held at close (NEEDS_ATTENTION)"),
        ("kingdee_cdc_summaries_overdue", "Open summaries more than 10 minutes past their close time (no closer?)"))
    #: the latest `kingdee-cdc reconcile` run per book (labelled by book)
    RECONCILIATION: tuple[tuple[str, str], ...] = (
        ("kingdee_cdc_reconciliation_flagged_lines", "Lines flagged by the latest reconciliation of the book"),
        ("kingdee_cdc_reconciliation_abs_difference", "Sum of absolute flagged differences (local currency)"),
        ("kingdee_cdc_reconciliation_last_run_timestamp_seconds", "When the book was last reconciled"))

    def __init__(self, dsn: str, schema: str = "kdcdc", *, outages: Outages | None = None) -> None:
        self.dsn = dsn
        self.schema = schema
        self.outages = outages or OUTAGES
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
        self._summaries = sql.SQL(
            "SELECT state, count(*), count(*) FILTER (WHERE close_due < now() - interval '10 minutes') "
            "FROM {s}.summaries WHERE state IN ('OPEN', 'NEEDS_ATTENTION') GROUP BY state").format(s=s)
        self._pool: ConnectionPool | None = None
        self._closer: weakref.finalize[[], JournalBacklog] | None = None
        self._pool_lock = threading.Lock()

    def _connections(self) -> ConnectionPool:
        with self._pool_lock:
            if self._pool is None:
                _report_pool_failures(self.outages)
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

    def ping(self, timeout_s: float = 2.0) -> str | None:
        """``None`` when the journal answers ``SELECT 1`` on a pooled connection within ``timeout_s``, else why not
        (what the last connection attempt said, when the pool saw one fail)."""
        try:
            with self._connections().connection(timeout=timeout_s) as conn:
                conn.execute("SELECT 1")
        except Exception as e:
            seen = self.outages.problem("journal")
            return seen or f"no connection within {timeout_s:g} s ({type(e).__name__})"
        self.outages.ok("journal")
        return None

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        counts, oldest, outbox, outbox_age, up = (GaugeMetricFamily(name, h) for name, h in self.FAMILIES)
        recon = [GaugeMetricFamily(name, h, labels=["book"]) for name, h in self.RECONCILIATION]
        summaries = GaugeMetricFamily(*self.SUMMARIES[0], labels=["state"])
        overdue = GaugeMetricFamily(*self.SUMMARIES[1])
        try:
            with self._connections().connection(timeout=2) as conn:
                waiting, age = conn.execute(self._waiting).fetchone() or (0, 0)
                unsent, unsent_age = conn.execute(self._unsent).fetchone() or (0, 0)
                for book, flagged, diff, at in conn.execute(self._reconciled).fetchall():
                    for fam, value in zip(recon, (flagged, diff, at)):
                        fam.add_metric([str(book)], float(value))
                by_state = {str(st): (n, late) for st, n, late in conn.execute(self._summaries).fetchall()}
            for st in ("OPEN", "NEEDS_ATTENTION"):
                summaries.add_metric([st], float(by_state.get(st, (0, 0))[0]))
            overdue.add_metric([], float(by_state.get("OPEN", (0, 0))[1]))
            counts.add_metric([], float(waiting))
            oldest.add_metric([], float(age))
            outbox.add_metric([], float(unsent))
            outbox_age.add_metric([], float(unsent_age))
            up.add_metric([], 1.0)
            if self.outages.problem("journal") is not None:
                self.outages.ok("journal")
            yield from (counts, oldest, outbox, outbox_age, up, *recon, summaries, overdue)
        except Exception:  # the journal being down must not break /metrics
            up.add_metric([], 0.0)
            yield up


class OpsServer:
    """``/metrics``, ``/healthz`` (process alive) and ``/readyz`` (dependencies reachable) on one port.

    The probes are open: Kubernetes and load balancers cannot send a token. Every other path — ``/metrics``, and any
    endpoint added later — needs ``Authorization: Bearer <token>`` when a token is set. Each connection has a socket
    timeout (``timeout_s``): a client that connects and sends nothing, or stops reading, is cut off instead of holding
    a thread.
    """

    #: paths answered without the token
    PROBES: Final = frozenset({"/healthz", "/readyz"})

    def __init__(self, metrics: Metrics, *, host: str = "127.0.0.1", port: int = 0,
                 ready: Callable[[], tuple[bool, str]] = lambda: (True, "ok"), token: str | None = None,
                 timeout_s: float = 5.0) -> None:
        ops = self

        class Handler(BaseHTTPRequestHandler):
            timeout = timeout_s  # StreamRequestHandler: the socket timeout of every connection

            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                path = urlsplit(self.path).path.rstrip("/") or "/"
                if path not in ops.PROBES and not ops.authorized(self.headers.get("Authorization")):
                    self._send(401, b"unauthorized\n", "text/plain", {"WWW-Authenticate": "Bearer"})
                elif path == "/metrics":
                    self._send(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._send(200, b"ok\n", "text/plain")
                elif path == "/readyz":
                    ok, why = ready()
                    self._send(200 if ok else 503, (why + "\n").encode(), "text/plain")
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _send(self, code: int, body: bytes, ctype: str, headers: Mapping[str, str] | None = None) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
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

    def authorized(self, header: str | None) -> bool:
        if not self.token:
            return True
        return hmac.compare_digest((header or "").encode(), f"Bearer {self.token}".encode())

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> OpsServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --------------------------------------------------------------------------- dependencies and outages
def _one_line(text: str, limit: int = 500) -> str:
    """An error text on one line (psycopg's have a hint on a second one), cut at ``limit`` characters."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[:limit - 1] + "…"


@dataclass(slots=True)
class _Failing:
    problem: str
    since: float
    logged: float
    failures: int = 1


class Outages:
    """What each dependency (``journal``, ``kafka``, ``kingdee``, ``schema_registry``) did the last time a part of the
    process used it, and the log lines about it.

    A failure is logged at once, with what to check (``hints``); while the dependency keeps failing, at most one line
    per ``every_s`` says for how long and how many attempts failed; one line says when it works again. So an outage
    costs a handful of lines, not one per retry of every thread. ``observer`` (``Metrics.dependency_state``) sees
    every state report. One instance serves the process (``OUTAGES``): the pipeline, poster, relay, readiness
    checks and librdkafka's error callback all report to it, so one journal outage is one line per interval.
    """

    def __init__(self, every_s: float = 30.0, *, clock: Callable[[], float] = time.monotonic,
                 logger: logging.Logger | None = None) -> None:
        self.every_s = every_s
        self.clock = clock
        self.log = logger or logging.getLogger("kingdee_cdc.health")
        self._lock = threading.Lock()
        self._failing: dict[str, _Failing] = {}
        self._hints: dict[str, str] = {}
        self._observer: Callable[[str, bool], None] | None = None

    def configure(self, *, every_s: float | None = None, hints: Mapping[str, str] | None = None,
                  observer: Callable[[str, bool], None] | None = None) -> Outages:
        if every_s is not None:
            self.every_s = every_s
        if hints is not None:
            self._hints.update(hints)
        if observer is not None:
            self._observer = observer
        return self

    def failed(self, dependency: str, problem: str) -> None:
        """``dependency`` just failed with ``problem`` (logged now, or counted until the next interval)."""
        text = _one_line(problem)
        now = self.clock()
        with self._lock:
            f = self._failing.get(dependency)
            if f is None:
                self._failing[dependency] = _Failing(text, now, now)
                first, line = True, True
            else:
                f.failures += 1
                f.problem = text
                first, line = False, now - f.logged >= self.every_s
                if line:
                    f.logged = now
            since, failures = now - (f.since if f else now), f.failures if f else 1
        if self._observer is not None:
            self._observer(dependency, False)
        if not line:
            return
        hint = self._hints.get(dependency)
        if first:
            self.log.warning("%s unavailable: %s%s; retrying (while it fails, one line per %gs)", dependency, text,
                             f" — {hint}" if hint else "", self.every_s)
        else:
            self.log.warning("%s still unavailable after %.0fs (%d failed attempts): %s", dependency, since, failures,
                             text)

    def ok(self, dependency: str) -> None:
        """``dependency`` just worked."""
        with self._lock:
            f = self._failing.pop(dependency, None)
        if self._observer is not None:
            self._observer(dependency, True)
        if f is not None:
            self.log.info("%s available again after %.0fs (%d failed attempts)", dependency, self.clock() - f.since,
                          f.failures)

    def problem(self, dependency: str) -> str | None:
        """The last problem of ``dependency`` while it fails."""
        with self._lock:
            f = self._failing.get(dependency)
            return f.problem if f else None

    def failing(self) -> dict[str, str]:
        with self._lock:
            return {d: f.problem for d, f in self._failing.items()}

    def down_for(self, dependency: str) -> float:
        """Seconds ``dependency`` has been failing (0 when it is not)."""
        with self._lock:
            f = self._failing.get(dependency)
            return self.clock() - f.since if f else 0.0


#: the process's outages (configured by the service from the settings)
OUTAGES: Final = Outages()


class ThrottleFilter(logging.Filter):
    """Lets one line per key through per interval, holds back the rest and says how many with the next one."""

    def __init__(self, every_s: Callable[[], float], key: Callable[[logging.LogRecord], str]) -> None:
        super().__init__()
        self.every_s = every_s
        self.key = key
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[float, int]] = {}

    def forget(self) -> None:
        """Start afresh: the next line of every key goes through."""
        with self._lock:
            self._seen.clear()

    def filter(self, record: logging.LogRecord) -> bool:
        k = self.key(record)
        now = time.monotonic()
        with self._lock:
            last, held = self._seen.get(k, (None, 0))
            if last is not None and now - last < self.every_s():
                self._seen[k] = (last, held + 1)
                return False
            self._seen[k] = (now, 0)
        if held:
            record.msg = f"{record.getMessage()} ({held} more like it since the last one)"
            record.args = None
        return True


_pool_filtered = False


def _report_pool_failures(outages: Outages) -> None:
    """psycopg_pool logs three warnings per failed connection attempt: they become journal outage reports."""
    global _pool_filtered
    if _pool_filtered:
        return
    _pool_filtered = True

    def to_outages(record: logging.LogRecord) -> bool:
        if record.msg == "error connecting in %r: %s" and isinstance(record.args, tuple) and len(record.args) == 2:
            outages.failed("journal", str(record.args[1]))
            return False
        return not str(record.msg).startswith(("reconnection attempt in pool", "error connecting in"))
    logging.getLogger("psycopg.pool").addFilter(to_outages)


_kafka_logger: logging.Logger | None = None


def kafka_callbacks(outages: Outages | None = None) -> dict[str, Any]:
    """librdkafka client properties that route its log lines and errors through ``outages``: all brokers down (or
    an authentication failure) is a ``kafka`` outage — one line per interval, naming the last connection error —
    other log lines go to the ``kingdee_cdc.kafka`` logger at most once per interval per kind."""
    from confluent_kafka import KafkaError

    global _kafka_logger
    o = outages or OUTAGES
    if _kafka_logger is None:
        _kafka_logger = logging.getLogger("kingdee_cdc.kafka")

        def kind(record: logging.LogRecord) -> str:  # confluent-kafka logs ("%s [%s] %s", facility, client, text)
            args = record.args if isinstance(record.args, tuple) else ()
            return str(args[0] if args else record.msg)
        _kafka_logger.addFilter(ThrottleFilter(lambda: o.every_s, kind))
    logger = _kafka_logger
    # An outage is all brokers down *and* connection attempts failing: a broker closing an idle connection (an
    # idle producer, connections.max.idle.ms) also leaves "all brokers down" behind, until the next request
    # reconnects without trouble; one broker of several failing is no outage either.
    state: dict[str, Any] = {"all_down_at": None, "refused": None}

    def on_error(err: Any) -> None:
        code, text = err.code(), err.str()
        now = time.monotonic()
        if err.fatal():
            logger.error("fatal Kafka error: %s", text)
            o.failed("kafka", text)
        elif code == KafkaError._AUTHENTICATION:
            o.failed("kafka", text)
        elif code == KafkaError._ALL_BROKERS_DOWN:
            state["all_down_at"] = now
            if state["refused"] is not None:
                o.failed("kafka", f"{text} (last error: {state['refused']})")
        elif code in (KafkaError._TRANSPORT, KafkaError._RESOLVE, KafkaError._SSL):
            if code != KafkaError._TRANSPORT or "Connect to " in text:  # a connection attempt failed
                state["refused"] = text
                if state["all_down_at"] is not None and now - state["all_down_at"] < 30:
                    o.failed("kafka", f"all brokers are down (last error: {text})")
            else:  # a connection that was up closed: fine if the next attempt works
                state["refused"] = None
        else:
            logger.warning("kafka: %s", text)
    return {"logger": logger, "error_cb": on_error}


class Readiness:
    """``/readyz``: ``gate`` first (starting, stopping: not ready, no checks), then the named checks — each returns
    ``None`` or what is wrong — at most once per ``cache_s`` however many probes and scrapers ask (concurrent
    callers wait for the one check in progress). Check results are reported to ``outages``."""

    def __init__(self, checks: Sequence[tuple[str, Callable[[], str | None]]], *, cache_s: float = 2.0,
                 gate: Callable[[], str | None] = lambda: None, detail: Callable[[], str] | None = None,
                 outages: Outages | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.checks = list(checks)
        self.cache_s = cache_s
        self.gate = gate
        self.detail = detail
        self.outages = outages or OUTAGES
        self.clock = clock
        self._lock = threading.Lock()
        self._cached: list[str] | None = None
        self._at = 0.0
        self.runs = 0  #: how often the checks ran (tests)

    def problems(self) -> list[str]:
        with self._lock:
            if self._cached is None or self.clock() - self._at >= self.cache_s:
                found: list[str] = []
                for name, check in self.checks:
                    try:
                        problem = check()
                    except Exception as e:  # a check that breaks is a problem, never a 500
                        problem = f"{type(e).__name__}: {e}"
                    if problem:
                        found.append(f"{name} unavailable: {_one_line(problem)}")
                        self.outages.failed(name, problem)
                    else:
                        self.outages.ok(name)
                self._cached, self._at = found, self.clock()
                self.runs += 1
            return list(self._cached)

    def __call__(self) -> tuple[bool, str]:
        why = self.gate()
        if why:
            return False, why
        problems = self.problems()
        if problems:
            return False, "; ".join(problems)
        return True, "ok" + (f"; {self.detail()}" if self.detail is not None else "")


class Shutdown:
    """Stopping the process within ``grace_s``: SIGTERM or SIGINT (or ``begin``) tells every registered part to stop
    (``on_stop``); the caller then lets the current batch finish or be abandoned, joins its threads with
    ``remaining()`` and exits. If anything still blocks when the grace runs out, a watchdog logs what is still
    running and exits the process with status 1 (a C-level backstop, ``faulthandler``, dumps every thread's stack
    and exits if even the watchdog cannot run). A second signal exits at once (status 128 + signal number).
    Nothing is half-committed either way: each journal batch is one PostgreSQL transaction."""

    def __init__(self, grace_s: float, *, exit: Callable[[int], object] = os._exit,
                 logger: logging.Logger | None = None, backstop: bool = True) -> None:
        self.grace_s = grace_s
        self.backstop = backstop
        self.event = threading.Event()
        self.reason: str | None = None
        self.deadline: float | None = None
        self.log = logger or logging.getLogger("kingdee_cdc")
        self._exit = exit
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], object]] = []
        self._threads: list[threading.Thread] = []
        self._timer: threading.Timer | None = None
        self._expired = False

    @property
    def stopping(self) -> bool:
        return self.event.is_set()

    def on_stop(self, fn: Callable[[], object]) -> None:
        self._callbacks.append(fn)

    def watch(self, thread: threading.Thread) -> threading.Thread:
        """A thread to name in the log line when the grace runs out (and to ``join``)."""
        self._threads.append(thread)
        return thread

    def install(self) -> Shutdown:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._signal)
        return self

    def begin(self, reason: str) -> None:
        """Stop everything (once): the grace period starts now."""
        with self._lock:
            if self.reason is not None:
                return
            self.reason = reason
            self.deadline = time.monotonic() + self.grace_s
        self.log.info("stopping (%s); exiting within %gs", reason, self.grace_s)
        self.event.set()
        for fn in self._callbacks:
            try:
                fn()
            except Exception as e:  # one part failing to stop must not keep the others running
                self.log.warning("while stopping: %s", e)
        self._timer = threading.Timer(self.grace_s, self._expire)
        self._timer.name = "shutdown-watchdog"
        self._timer.daemon = True
        self._timer.start()
        if self.backstop:
            try:
                faulthandler.dump_traceback_later(self.grace_s + 3, exit=True)
            except (RuntimeError, ValueError, OSError):  # no usable stderr: the Python watchdog still runs
                pass

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic()) if self.deadline is not None else self.grace_s

    def join(self, threads: Sequence[threading.Thread] | None = None) -> list[str]:
        """Join ``threads`` (default: the watched ones) within the grace; the names of those still running."""
        for th in threads if threads is not None else self._threads:
            if th.is_alive():
                th.join(self.remaining())
        return [th.name for th in (threads if threads is not None else self._threads) if th.is_alive()]

    def _signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.reason is not None:
            self.log.warning("%s again while stopping (%s): exiting now", name, self.reason)
            self._flush()
            self._exit(128 + signum)
            return
        self.begin(name)

    def _expire(self) -> None:
        self.expire_now()

    def expire_now(self, why: str = "") -> None:
        """The grace is over: log what still runs, and exit with status 1."""
        with self._lock:
            if self._expired:
                return
            self._expired = True
        running = self.blocked()
        self.log.error("the shutdown grace of %gs ran out (stopping since %s%s); still running: %s; exiting now",
                       self.grace_s, self.reason, f"; {why}" if why else "",
                       "; ".join(running) or "interpreter shutdown")
        self._flush()
        self._exit(1)

    def blocked(self) -> list[str]:
        """Each watched thread still running, and the main thread, with where it is (innermost frames)."""
        frames = sys._current_frames()
        out = []
        main = threading.main_thread()
        for th in [main, *self._threads]:
            if not th.is_alive() or th.ident is None or th.ident not in frames:
                continue
            out.append(f"{th.name} at {_where(frames[th.ident])}")
        return out

    @staticmethod
    def _flush() -> None:
        for h in logging.getLogger().handlers:
            try:
                h.flush()
            except Exception:
                pass
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass


def _where(frame: FrameType | None, depth: int = 3) -> str:
    """The innermost ``depth`` frames of a stack, innermost first: ``file:line function`` each."""
    parts: list[str] = []
    while frame is not None and len(parts) < depth:
        code = frame.f_code
        parts.append(f"{os.path.basename(code.co_filename)}:{frame.f_lineno} {code.co_name}")
        frame = frame.f_back
    return " < ".join(parts)
