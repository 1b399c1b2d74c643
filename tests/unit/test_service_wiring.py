"""Wiring from the settings: the service's new options, the schema registry client with its TLS options, the
producers built from the producer properties and the consumer from the consumer's, a bounded journal connect."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from connector.config import load_settings
from connector.errors import ConfigError


def test_service_options_have_safe_defaults_and_are_validated() -> None:
    s = load_settings()
    assert s.service.shutdown_grace_s <= 30 and s.service.startup_timeout_s == 60
    assert s.service.outage_log_every_s == 30 and s.metrics.request_timeout_s == 5 and s.metrics.ready_cache_s == 2
    with pytest.raises(ConfigError, match=r"service\.shutdown_grace_s"):
        load_settings(service={"shutdown_grace_s": 0})
    with pytest.raises(ConfigError, match=r"metrics\.request_timeout_s"):
        load_settings(metrics={"request_timeout_s": -1})


def test_the_registry_client_gets_every_tls_option(monkeypatch: pytest.MonkeyPatch) -> None:
    from confluent_kafka.schema_registry import SchemaRegistryClient

    from connector.service import registry_client

    seen: list[dict[str, Any]] = []
    def new_client(conf: dict[str, Any]) -> dict[str, Any]:
        seen.append(conf)
        return conf
    monkeypatch.setattr(SchemaRegistryClient, "new_client", staticmethod(new_client))
    settings = load_settings(schema_registry={"url": "https://registry:8081", "basic_auth": "u:pw",
                                              "ssl_ca_location": "/ca.pem", "ssl_certificate_location": "/c.pem",
                                              "ssl_key_location": "/k.pem", "ssl_key_password": "kpw"})
    registry_client(settings)
    assert seen == [{"url": "https://registry:8081", "basic.auth.user.info": "u:pw", "ssl.ca.location": "/ca.pem",
                     "ssl.certificate.location": "/c.pem", "ssl.key.location": "/k.pem", "ssl.key.password": "kpw"}]


def test_producers_get_the_producer_conf_and_the_consumer_the_consumer_conf(monkeypatch: pytest.MonkeyPatch) -> None:
    import connector.feedback
    import connector.pipeline
    from connector.service import build_pipeline, build_relay

    confs: dict[str, list[dict[str, Any]]] = {"consumer": [], "producer": []}

    class Fake:
        def __init__(self, kind: str, conf: dict[str, Any]) -> None:
            confs[kind].append(conf)

    monkeypatch.setattr(connector.pipeline, "Consumer", lambda conf: Fake("consumer", conf))
    monkeypatch.setattr(connector.pipeline, "Producer", lambda conf: Fake("producer", conf))
    monkeypatch.setattr(connector.feedback, "Producer", lambda conf: Fake("producer", conf))
    settings = load_settings(kafka={"topics": ["t"], "consumer": {"fetch.min.bytes": "1024"},
                                    "client": {"session.timeout.ms": "10000", "ssl.ca.location": "/ca"},
                                    "producer": {"batch.num.messages": "50"}}, journal={"dsn": "postgresql://h/db"})
    build_pipeline(settings)
    build_relay(settings)
    (consumer,) = confs["consumer"]
    assert consumer["session.timeout.ms"] == "10000" and consumer["fetch.min.bytes"] == "1024"
    assert "batch.num.messages" not in consumer
    assert len(confs["producer"]) == 2  # dead letters, feedback
    for producer in confs["producer"]:
        assert "session.timeout.ms" not in producer and "fetch.min.bytes" not in producer
        assert producer["batch.num.messages"] == "50" and producer["ssl.ca.location"] == "/ca"
        assert callable(producer["error_cb"]) and isinstance(producer["logger"], logging.Logger)


def test_the_journal_dsn_gets_a_connect_timeout_unless_it_has_one() -> None:
    from psycopg.conninfo import conninfo_to_dict

    from connector.service import journal_dsn

    for dsn, expected in (("postgresql://u:pw@h:5/db?sslmode=require", "10"), ("host=h dbname=x", "10"),
                          ("postgresql://h/db?connect_timeout=3", "3")):
        got = journal_dsn(load_settings(journal={"dsn": dsn}))
        assert got.startswith(dsn) and conninfo_to_dict(got)["connect_timeout"] == expected
