"""Configuration: file + environment, named errors, secrets from files, never printed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from connector.config import load_settings
from connector.errors import ConfigError


def test_defaults_are_valid() -> None:
    s = load_settings()
    assert s.kafka.group_id == "kingdee-cdc" and s.errors.tolerance == "all" and s.kingdee.verify_tls


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("kafka:\n  bootstrap_servers: file-host:9092\n  group_id: from-file\n")
    monkeypatch.setenv("KDCDC_KAFKA__BOOTSTRAP_SERVERS", "env-host:9093")
    s = load_settings(cfg)
    assert s.kafka.bootstrap_servers == "env-host:9093" and s.kafka.group_id == "from-file"


def test_unknown_key_is_named(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("kafka:\n  bootstrap_server: x:1\n")
    with pytest.raises(ConfigError, match=r"kafka\.bootstrap_server: unknown key"):
        load_settings(cfg)


def test_bad_value_names_key_value_and_expectation(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("kafka:\n  bootstrap_servers: no-port\nerrors:\n  tolerance: some\n")
    with pytest.raises(ConfigError) as e:
        load_settings(cfg)
    msg = str(e.value)
    assert "kafka.bootstrap_servers" in msg and "'no-port'" in msg and "host:port" in msg
    assert "errors.tolerance" in msg and "'all' or 'none'" in msg


def test_secret_from_file_is_loaded_and_redacted(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cr3t-value\n")
    s = load_settings(kingdee={"app_secret": f"file:{secret}"},
                      kafka={"client": {"sasl.password": "kafka-pw-123", "security.protocol": "SASL_SSL"}},
                      journal={"dsn": "postgresql://u:dbpw@h/db"})
    assert s.kingdee.app_secret is not None and s.kingdee.app_secret.get_secret_value() == "s3cr3t-value"
    assert s.kafka.librdkafka()["sasl.password"] == "kafka-pw-123"
    shown = json.dumps(s.redacted())
    for value in ("s3cr3t-value", "kafka-pw-123", "dbpw"):
        assert value not in shown and value not in repr(s) and value not in str(s)
    assert "SASL_SSL" in shown


def test_invalid_secret_is_not_echoed() -> None:
    with pytest.raises(ConfigError) as e:
        load_settings(journal={"dsn": 12345678}, kingdee={"app_secret": ["top-secret-list"]})
    assert "top-secret-list" not in str(e.value) and "12345678" not in str(e.value)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read configuration file"):
        load_settings(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("kafka: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(bad)
