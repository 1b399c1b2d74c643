"""Wiring: from one ``Settings`` object to the running parts (decoder, mapper, journal, pipeline).

Kept separate from the parts themselves so each can be built directly in tests with explicit arguments.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from connector.config import Settings
from connector.errors import ConfigError
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

log = logging.getLogger("kingdee_cdc")


def registry_client(settings: Settings) -> SchemaRegistryClient | None:
    url = settings.schema_registry.url
    if not url:
        return None
    from confluent_kafka.schema_registry import SchemaRegistryClient

    conf: dict[str, Any] = {"url": url}
    if settings.schema_registry.basic_auth is not None:
        conf["basic.auth.user.info"] = settings.schema_registry.basic_auth.get_secret_value()
    return SchemaRegistryClient.new_client(conf)


def journal_dsn(settings: Settings) -> str:
    if settings.journal.dsn is None:
        raise ConfigError("journal.dsn is not set (KDCDC_JOURNAL__DSN); `kingdee-cdc demo` starts an embedded "
                          "PostgreSQL, `run` needs a real one")
    return settings.journal.dsn.get_secret_value()


def build_journal(settings: Settings) -> Journal:
    return Journal(journal_dsn(settings), schema=settings.journal.schema_name, group=settings.kafka.group_id)


def build_pipeline(settings: Settings, *, metrics: PipelineMetrics | None = None) -> Pipeline:
    if not settings.kafka.topics:
        raise ConfigError("kafka.topics is empty: name the Debezium topics to consume")
    client = registry_client(settings)
    decoder = Decoder(RegistrySchemas(client) if client is not None else None)
    rules = load_rules(settings.mapping.rules_dir)
    processor = Processor(decoder, Mapper(rules, ledger=ledger_context(settings, rules)))
    kafka = settings.kafka.librdkafka()
    return Pipeline(
        consumer_conf={**kafka, "group.id": settings.kafka.group_id, "client.id": "kingdee-cdc"},
        producer_conf=kafka, topics=settings.kafka.topics, journal=build_journal(settings), processor=processor,
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
    return FeedbackRelay(build_journal(settings), settings.kafka.librdkafka(),
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
