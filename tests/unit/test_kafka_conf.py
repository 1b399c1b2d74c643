"""Consumer-only librdkafka properties stay with the consumer: producers get the connection and security part."""

from __future__ import annotations

from connector.config import load_settings


def test_producers_get_connection_and_security_properties_only() -> None:
    s = load_settings(kafka={"client": {"session.timeout.ms": "10000", "security.protocol": "SASL_SSL",
                                        "sasl.mechanism": "SCRAM-SHA-512", "sasl.password": "pw-123",
                                        "ssl.ca.location": "/ca.pem", "max.poll.interval.ms": "300000"},
                             "producer": {"linger.ms": "5"}, "consumer": {"fetch.min.bytes": "1024"}})
    producer = s.kafka.producer_conf()
    assert producer == {"bootstrap.servers": "127.0.0.1:9092", "security.protocol": "SASL_SSL",
                        "sasl.mechanism": "SCRAM-SHA-512", "sasl.password": "pw-123", "ssl.ca.location": "/ca.pem",
                        "linger.ms": "5"}
    consumer = s.kafka.consumer_conf()
    assert consumer["session.timeout.ms"] == "10000" and consumer["fetch.min.bytes"] == "1024"
    assert "linger.ms" not in consumer
    assert "pw-123" not in str(s.redacted())  # secrets in the new sections are secrets too


def test_a_producer_built_from_the_shared_settings_logs_no_config_warning() -> None:
    """librdkafka warns (CONFWARN) about consumer properties handed to a producer: none are."""
    import logging

    from confluent_kafka import Producer

    s = load_settings(kafka={"bootstrap_servers": "127.0.0.1:1", "client": {"session.timeout.ms": "10000",
                                                                              "enable.auto.commit": "false"}})
    records: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())
    logger = logging.getLogger("conf-test")
    logger.addHandler(Capture())
    logger.setLevel(logging.DEBUG)
    producer = Producer({**s.kafka.producer_conf(), "logger": logger})
    producer.flush(0)
    assert not [r for r in records if "CONFWARN" in r or "consumer property" in r], records
