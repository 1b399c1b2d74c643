"""Log lines: JSON with event keys, secrets scrubbed wherever they appear."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from connector import logs
from connector.config import Settings
from connector.events import KafkaCoordinates
from connector.journal import EventRecord, Outcome


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    buf = io.StringIO()
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    yield buf
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def _use(buf: io.StringIO, fmt: str, secrets: list[str]) -> None:
    logs.setup("DEBUG", fmt, secrets)
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(buf)


def test_json_lines_carry_event_keys(captured: io.StringIO) -> None:
    _use(captured, "json", [])
    rec = EventRecord(kafka=KafkaCoordinates(topic="pos.public.sales_order", partition=2, offset=41), outcome=Outcome.REJECTED)
    logging.getLogger("t").info('rejected: "quoted" 科目', extra=logs.event_context(rec, "abc123", reason="X"))
    line = json.loads(captured.getvalue().strip())
    assert line["msg"] == 'rejected: "quoted" 科目' and line["voucher_key"] == "abc123"
    assert (line["topic"], line["partition"], line["offset"], line["reason"]) == ("pos.public.sales_order", 2, 41, "X")


def test_secrets_are_scrubbed_from_messages_arguments_and_tracebacks(captured: io.StringIO) -> None:
    settings = Settings.model_validate({
        "journal": {"dsn": "postgresql://cdc:Pg-s3cret-pw@db:5432/journal"},
        "kingdee": {"app_secret": "app-secret-123456"},
        "kafka": {"client": {"sasl.password": "kafka-pw-9876"}}, "metrics": {"token": "tok-abcdef"}})
    secrets = logs.secret_values(settings)
    assert {"Pg-s3cret-pw", "app-secret-123456", "kafka-pw-9876", "tok-abcdef"} <= set(secrets)
    _use(captured, "text", secrets)
    log = logging.getLogger("t")
    log.warning("connect to %s failed", "postgresql://cdc:Pg-s3cret-pw@db:5432/journal")
    try:
        raise RuntimeError("librdkafka said: sasl.password=kafka-pw-9876 rejected")
    except RuntimeError:
        log.exception("kafka error with token %s", SecretStr("x").get_secret_value() + "tok-abcdef")
    out = captured.getvalue()
    for s in ("Pg-s3cret-pw", "app-secret-123456", "kafka-pw-9876", "tok-abcdef"):
        assert s not in out
    assert out.count("***") >= 3 and "RuntimeError" in out
