"""Plain-text connections are warned about, and refused by the production profile; registry TLS is passed on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from connector.config import load_settings, transport_warnings
from connector.errors import ConfigError

PLAIN: dict[str, Any] = {"journal": {"dsn": "postgresql://u:p@db/kdcdc?sslmode=disable"},
         "kingdee": {"server_url": "http://kingdee.example/k3cloud/"},
         "schema_registry": {"url": "http://registry:8081"}}


def test_plain_text_connections_are_named() -> None:
    problems = transport_warnings(load_settings(**PLAIN))
    assert [p.split(" ")[0] for p in problems] == ["journal.dsn", "kingdee.server_url", "schema_registry.url"]
    assert "sslmode=disable" in problems[0]
    default = transport_warnings(load_settings(journal={"dsn": "host=db dbname=kdcdc user=u"}))
    assert default and "prefer (the default)" in default[0]
    assert transport_warnings(load_settings(journal={"dsn": "postgresql://u@db/k?sslmode=verify-full"},
                                            kingdee={"server_url": "https://k/k3cloud/"},
                                            schema_registry={"url": "https://r:8081"})) == []


def test_the_production_profile_refuses_plain_text() -> None:
    with pytest.raises(ConfigError, match="profile production refuses plain-text connections: journal.dsn"):
        load_settings(profile="production", **PLAIN)
    ok = load_settings(profile="production", journal={"dsn": "postgresql://u@db/k?sslmode=verify-full"},
                       kingdee={"server_url": "https://k/k3cloud/"})
    assert ok.profile == "production"


def test_registry_tls_options_reach_the_client_configuration(tmp_path: Path) -> None:
    s = load_settings(schema_registry={"url": "https://registry:8081", "basic_auth": "u:pw",
                                       "ssl_ca_location": "/etc/ssl/ca.pem",
                                       "ssl_certificate_location": "/etc/ssl/client.pem",
                                       "ssl_key_location": "/etc/ssl/client.key", "ssl_key_password": "kp"})
    assert s.schema_registry.client_conf() == {
        "url": "https://registry:8081", "basic.auth.user.info": "u:pw", "ssl.ca.location": "/etc/ssl/ca.pem",
        "ssl.certificate.location": "/etc/ssl/client.pem", "ssl.key.location": "/etc/ssl/client.key",
        "ssl.key.password": "kp"}
    assert "kp" not in str(s.redacted())
