"""Wiring: from one ``Settings`` object to the running parts (decoder, mapper, journal, pipeline), and what the
service checks about its dependencies (start-up, readiness) and says about them when they fail.

Kept separate from the parts themselves so each can be built directly in tests with explicit arguments.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from connector.config import Settings
from connector.errors import ConfigError, ConnectorError
from connector.ops import OUTAGES, Outages, kafka_callbacks
from connector.events import Decoder, RegistrySchemas
from connector.journal import Journal
from connector.ledger import LedgerContext
from connector.mapping import Mapper, RuleSet, load_rules
from connector.pipeline import Pipeline, PipelineMetrics, PipelineOptions, Processor

if TYPE_CHECKING:
    from confluent_kafka.schema_registry import SchemaRegistryClient

    from connector.feedback import FeedbackMetrics, FeedbackRelay
    from connector.kingdee import KingdeeClient
    from connector.kingdee.poster import Poster, PosterMetrics
    from connector.summaries import SummaryCloser

log = logging.getLogger("kingdee_cdc")


#: seconds a connection attempt to the journal may take when the DSN does not say (``connect_timeout``): without
#: it, a host that drops packets holds a thread for the operating system's TCP timeout (minutes)
JOURNAL_CONNECT_TIMEOUT_S = 10


def registry_client(settings: Settings) -> SchemaRegistryClient | None:
    """The schema registry client with every ``schema_registry`` option (basic auth, TLS, mutual TLS)."""
    conf = settings.schema_registry.client_conf()
    if not conf:
        return None
    from confluent_kafka.schema_registry import SchemaRegistryClient

    return SchemaRegistryClient.new_client(conf)


def journal_dsn(settings: Settings) -> str:
    """The journal's DSN, with a ``connect_timeout`` unless it names one."""
    if settings.journal.dsn is None:
        raise ConfigError("journal.dsn is not set (KDCDC_JOURNAL__DSN); `kingdee-cdc demo` starts an embedded "
                          "PostgreSQL, `run` needs a real one")
    dsn = settings.journal.dsn.get_secret_value()
    from psycopg.conninfo import conninfo_to_dict

    try:
        if "connect_timeout" in conninfo_to_dict(dsn):
            return dsn
    except Exception:  # psycopg reports a malformed DSN itself, with a better message
        return dsn
    # appended, not rebuilt: the DSN stays as written (the secret filter knows its password in that form)
    if "://" in dsn:
        return f"{dsn}{'&' if '?' in dsn else '?'}connect_timeout={JOURNAL_CONNECT_TIMEOUT_S}"
    return f"{dsn} connect_timeout={JOURNAL_CONNECT_TIMEOUT_S}"


def build_journal(settings: Settings) -> Journal:
    return Journal(journal_dsn(settings), schema=settings.journal.schema_name, group=settings.kafka.group_id,
                   journaled_feedback=settings.feedback.journaled)


def build_pipeline(settings: Settings, *, metrics: PipelineMetrics | None = None) -> Pipeline:
    if not settings.kafka.topics:
        raise ConfigError("kafka.topics is empty: name the Debezium topics to consume")
    client = registry_client(settings)
    decoder = Decoder(RegistrySchemas(client) if client is not None else None)
    rules = load_rules(settings.mapping.rules_dir)
    processor = Processor(decoder, Mapper(rules, ledger=ledger_context(settings, rules)))
    return Pipeline(
        consumer_conf={**settings.kafka.consumer_conf(), "group.id": settings.kafka.group_id,
                       "client.id": "kingdee-cdc"},
        producer_conf=settings.kafka.producer_conf(), topics=settings.kafka.topics, journal=build_journal(settings),
        processor=processor,
        options=PipelineOptions(tolerance=settings.errors.tolerance, start_from=settings.kafka.start_from,
                                dead_letter_topic=settings.kafka.dead_letter_topic,
                                batch_size=settings.kafka.batch_size,
                                group_transactions=settings.transactions.group,
                                transaction_hold_s=settings.transactions.hold_s,
                                transaction_max_held=settings.transactions.max_held), metrics=metrics)


def ledger_context(settings: Settings, rules: RuleSet) -> LedgerContext:
    """The checks' ledger: the rules' own, or with the chart of accounts fetched from Kingdee."""
    if settings.mapping.chart_source != "kingdee":
        return rules.ledger
    from connector.kingdee.chart import fetch_accounts, merge_chart

    with build_kingdee_client(settings) as client:
        fetched = fetch_accounts(client)
    if not fetched:
        raise ConfigError("mapping.chart_source is kingdee but BD_Account returned no audited accounts "
                          "(check the integration user's rights on 科目)")
    ledger, drift = merge_chart(rules.ledger, fetched)
    for line in drift.lines():
        log.warning("chart of accounts: %s", line)
    log.info("chart of accounts: %d accounts from Kingdee", len(fetched))
    return ledger


def build_relay(settings: Settings, *, metrics: FeedbackMetrics | None = None) -> FeedbackRelay:
    from connector.feedback import FeedbackRelay

    registry = None
    if settings.feedback.format == "avro":
        registry = registry_client(settings)
        if registry is None:
            raise ConfigError("feedback.format is avro but schema_registry.url is not set")
    return FeedbackRelay(build_journal(settings), settings.kafka.producer_conf(),
                         topic_prefix=settings.feedback.topic_prefix, metrics=metrics, registry=registry)


def build_kingdee_client(settings: Settings) -> KingdeeClient:
    from connector.kingdee import KingdeeClient, KingdeeCredentials

    k = settings.kingdee
    missing = [name for name in ("server_url", "acct_id", "username") if not getattr(k, name)]
    if missing:
        raise ConfigError(f"kingdee.{', kingdee.'.join(missing)} must be set to post vouchers "
                          "(or run `kingdee-cdc sandbox` and point kingdee.server_url at it)")
    creds = KingdeeCredentials(
        server_url=str(k.server_url), acct_id=str(k.acct_id), username=str(k.username), app_id=k.app_id or "",
        app_secret=k.app_secret.get_secret_value() if k.app_secret else "",
        password=k.password.get_secret_value() if k.password else "", lcid=k.lcid, auth=k.auth)
    if not k.verify_tls:
        log.warning("kingdee.verify_tls is off: the Kingdee server's certificate is not checked "
                    "(acceptable for a test server only)")
    return KingdeeClient(creds, timeout_s=k.timeout_s, verify_tls=k.verify_tls, max_concurrency=k.max_concurrency,
                         rate_limit_per_s=k.rate_limit_per_s)


def build_poster(settings: Settings, *, metrics: PosterMetrics | None = None) -> Poster:
    """The poster wired from the settings: journal, Kingdee client, the rules' books and every poster option
    (lease, unknown-outcome grace, duplicate scan)."""
    from connector.kingdee.poster import Poster, poster_options

    rules = load_rules(settings.mapping.rules_dir)
    return Poster(build_journal(settings), build_kingdee_client(settings), books=rules.ledger.books,
                  options=poster_options(settings), metrics=metrics)


def build_closer(settings: Settings, mapper: Mapper) -> SummaryCloser | None:
    """The summary closer of ``run`` (with the pipeline's rules and checks), or ``None`` when no rule summarizes
    or ``summaries.close_every_s`` is 0."""
    from connector.summaries import SummaryCloser

    if settings.summaries.close_every_s <= 0 or not any(r.summary_by for r in mapper.rules.rules):
        return None
    return SummaryCloser(build_journal(settings), rules=mapper.rules, ledger=mapper.ledger,
                         skip_checks=mapper.skip_checks, every_s=settings.summaries.close_every_s)


# --------------------------------------------------------------------------- dependencies: start-up and readiness
class StartupFailed(ConnectorError):
    """The journal or Kafka did not answer within ``service.startup_timeout_s``."""


def journal_address(settings: Settings) -> str:
    """``host:port/database`` of the journal (no credentials)."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        info = conninfo_to_dict(journal_dsn(settings))
    except Exception:
        return "(unparseable journal.dsn)"
    host = str(info.get("hostaddr") or info.get("host") or "localhost")
    return f"{host}:{info.get('port') or 5432}/{info.get('dbname') or info.get('user') or ''}".rstrip("/")


def dependency_hints(settings: Settings) -> dict[str, str]:
    """What to check, per dependency, in the first line logged when it fails (``Outages``)."""
    hints = {
        "journal": f"PostgreSQL at {journal_address(settings)}: check journal.dsn (KDCDC_JOURNAL__DSN) and that "
                   "PostgreSQL runs and accepts connections from this host",
        "kafka": f"brokers {settings.kafka.bootstrap_servers}: check kafka.bootstrap_servers, kafka.client "
                 "(TLS/SASL) and that the brokers run",
    }
    if settings.kingdee.server_url:
        hints["kingdee"] = f"{settings.kingdee.server_url}: check kingdee.server_url and that Kingdee answers"
    if settings.schema_registry.url:
        from connector.logs import scrub

        hints["schema_registry"] = f"{scrub(settings.schema_registry.url)}: check schema_registry.url"
    return hints


def configure_outages(settings: Settings, observer: Callable[[str, bool], None] | None = None) -> Outages:
    """The process's ``Outages`` with the settings' interval and hints (and the metrics as observer)."""
    return OUTAGES.configure(every_s=settings.service.outage_log_every_s, hints=dependency_hints(settings),
                             observer=observer)


def journal_problem(settings: Settings, timeout_s: float = 5.0) -> str | None:
    """``None`` when the journal answers ``SELECT 1`` on a new connection, else the first line of why not."""
    import psycopg

    try:
        with psycopg.connect(journal_dsn(settings), connect_timeout=max(1, int(timeout_s)),
                             application_name="kingdee-cdc-check") as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as e:
        text = str(e).strip()
        return text.splitlines()[0] if text else type(e).__name__
    return None


class KafkaProbe:
    """Is Kafka reachable: a metadata request on one silent librdkafka admin client, shared by the start-up check
    and every readiness check (created on first use). Its answer names librdkafka's last connection error."""

    def __init__(self, settings: Settings) -> None:
        self.conf: dict[str, Any] = {**settings.kafka.producer_conf(), "log_level": "0",
                                     "error_cb": self._on_error}
        self._admin: Any = None
        self._last: str | None = None
        self._lock = threading.Lock()

    def _on_error(self, err: Any) -> None:
        self._last = str(err.str())

    def __call__(self, timeout_s: float = 2.0) -> str | None:
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        with self._lock:
            if self._admin is None:
                self._admin = AdminClient(self.conf)
            try:
                self._admin.list_topics(timeout=timeout_s)
            except KafkaException as e:
                self._admin.poll(0)  # serves the error callback: the connection error behind the timeout
                err = e.args[0] if e.args else e
                return self._last or str(err.str() if hasattr(err, "str") else err)
            self._last = None
            return None

    def close(self) -> None:
        """Destroy the admin client now (its librdkafka thread calls back into Python: left to interpreter
        shutdown, that can crash the process on its way out)."""
        with self._lock:
            self._admin = None


def kingdee_problem(settings: Settings, timeout_s: float = 2.0) -> str | None:
    """``None`` when Kingdee's host accepts a TCP connection (no call, no login: cheap enough for every probe)."""
    if not settings.kingdee.server_url:
        return None
    url = urlparse(str(settings.kingdee.server_url))
    try:
        socket.create_connection((url.hostname or "", url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=timeout_s).close()
    except OSError as e:
        return f"{url.hostname}:{url.port or (443 if url.scheme == 'https' else 80)}: {e.strerror or type(e).__name__}"
    return None


def wait_for_dependencies(settings: Settings, *, stop: threading.Event, kafka: KafkaProbe | None,
                          outages: Outages = OUTAGES, status: Callable[[str], None] = lambda text: None) -> bool:
    """Start-up: wait until the journal (and Kafka, given its probe) answer — True — or ``stop`` is set — False.

    While one fails, ``outages`` logs it (the first time at once, naming the address and what to check; then once
    per interval) and ``status`` receives what the service waits for (for /readyz). After
    ``service.startup_timeout_s`` it raises ``StartupFailed`` with one line naming each failing dependency.
    """
    timeout = settings.service.startup_timeout_s
    deadline = time.monotonic() + timeout
    pause = 0.5
    while True:
        problems: dict[str, str] = {}
        checks: list[tuple[str, Callable[[], str | None]]] = [("journal", lambda: journal_problem(settings))]
        if kafka is not None:
            checks.append(("kafka", kafka))
        for name, check in checks:
            problem = check()
            if problem:
                problems[name] = problem
                outages.failed(name, problem)
                status("starting: waiting for " + "; ".join(f"{d} ({p})" for d, p in problems.items()))
            else:
                outages.ok(name)
        if not problems:
            status("")
            return True
        hints = dependency_hints(settings)
        left = deadline - time.monotonic()
        if left <= 0:
            raise StartupFailed(f"cannot start: no answer after {timeout:g}s (service.startup_timeout_s) from "
                                + "; ".join(f"{d}: {p} — {hints.get(d, '')}" for d, p in problems.items())
                                + ". `kingdee-cdc config check` tests every connection")
        if stop.wait(min(pause, left)):
            return False
        pause = min(pause * 2, 10.0)
