"""Secrets never reach an output: configuration dumps, error messages, log lines and uncaught tracebacks of a
failing run are scrubbed of every secret setting and of every password inside a URL."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SECRETS = ("RegPassw0rd", "DbPassw0rd9", "KdUrlPw77", "AppSecret555", "MetricsTok88", "KafkaSaslPw1", "RegBasic42")
CONFIG = """\
kafka:
  bootstrap_servers: 127.0.0.1:1
  topics: [t]
  client: {sasl.password: KafkaSaslPw1, security.protocol: PLAINTEXT}
schema_registry:
  url: "http://reg-user:RegPassw0rd@[::1"
  basic_auth: "reg:RegBasic42"
journal:
  dsn: "postgresql://kdcdc:DbPassw0rd9@127.0.0.1:1/kdcdc?connect_timeout=2"
kingdee:
  server_url: "https://kd-user:KdUrlPw77@kingdee.example/k3cloud/"
  acct_id: x
  username: u
  app_id: a
  app_secret: AppSecret555
metrics:
  token: MetricsTok88
"""


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("kingdee-cdc")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, cwd=cwd, timeout=120)


@pytest.mark.parametrize("command", [("config", "show"), ("config", "check"), ("journal", "migrate"), ("run",)])
def test_a_failing_run_prints_no_secret(tmp_path: Path, command: tuple[str, ...]) -> None:
    (tmp_path / "config.yaml").write_text(CONFIG, "utf-8")
    result = _cli(*command, "-c", "config.yaml", cwd=tmp_path)
    output = result.stdout + result.stderr
    leaked = [s for s in SECRETS if s in output]
    assert leaked == [], output[-2000:]
    if command != ("config", "show") and command != ("config", "check"):
        assert result.returncode != 0  # the run failed (unreachable PostgreSQL, unusable registry URL)
    if command == ("config", "show"):
        assert '"url": "http://reg-user:***@[::1"' in output and "https://kd-user:***@kingdee.example" in output


def test_uncaught_tracebacks_are_scrubbed() -> None:
    code = ("from connector.logs import install_excepthook, register_secrets\n"
            "register_secrets(['TopSecret99'])\ninstall_excepthook()\n"
            "raise RuntimeError('dsn postgresql://u:TopSecret99@h/db, registry http://a:Other7pw@reg:8081')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "RuntimeError" in result.stderr
    assert "TopSecret99" not in result.stderr and "Other7pw" not in result.stderr
    assert "postgresql://u:***@h/db" in result.stderr and "http://a:***@reg:8081" in result.stderr
