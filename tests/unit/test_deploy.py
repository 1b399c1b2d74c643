"""Deployment artefacts that can be checked without running them: the dashboard and alert rules refer only
to series the service exports, and the compose init script is the harness's own DDL."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from harness.debezium import init_sql
from connector.ops import exported_series

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SERIES = re.compile(r"\bkingdee_cdc_[a-z0-9_]+")


def _dashboard_exprs() -> list[str]:
    dash = json.loads((DEPLOY / "grafana" / "kingdee-cdc.json").read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def _alert_exprs() -> list[tuple[str, str]]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return [(r["alert"], r["expr"]) for g in rules["groups"] for r in g["rules"]]


def _unknown_series(exprs: list[str]) -> set[str]:
    """Series the expressions use that the service does not export."""
    return {name for e in exprs for name in SERIES.findall(e)} - exported_series()


def test_every_dashboard_query_uses_exported_series() -> None:
    exprs = _dashboard_exprs()
    assert len(exprs) >= 14
    used = {name for e in exprs for name in SERIES.findall(e)}
    assert used and not _unknown_series(exprs), sorted(_unknown_series(exprs))
    # the panels: throughput, lag, latency percentiles, rejections/dead letters, Kingdee errors, backlogs
    for needed in ("kingdee_cdc_events_consumed_total", "kingdee_cdc_consumer_lag",
                   "kingdee_cdc_end_to_end_latency_seconds_bucket", "kingdee_cdc_rejections_total",
                   "kingdee_cdc_dead_letters_total", "kingdee_cdc_kingdee_request_errors_total",
                   "kingdee_cdc_poster_backlog", "kingdee_cdc_feedback_outbox_backlog"):
        assert needed in used, needed


def test_every_alert_uses_exported_series_and_has_a_runbook() -> None:
    exported = exported_series()
    alerts = _alert_exprs()
    names = {a for a, _ in alerts}
    assert {"KingdeeCdcLagGrowing", "KingdeeCdcPosterBacklogOld", "KingdeeCdcDeadLetterRate",
            "KingdeeCdcKingdeeAuthFailures", "KingdeeCdcNoEvents"} <= names
    ops_doc = (DEPLOY.parent / "docs" / "operations.md").read_text()
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    for rule in (r for g in rules["groups"] for r in g["rules"]):
        used = set(SERIES.findall(rule["expr"]))
        assert used and used <= exported, (rule["alert"], sorted(used - exported))
        anchor = rule["annotations"]["runbook"].split("#")[1]
        assert f"{{#{anchor}}}" in ops_doc or f"### {anchor.replace('-', ' ')}" in ops_doc.lower(), anchor


def test_a_renamed_metric_would_be_caught() -> None:
    """The check above can fail: a dashboard query still using a series' old name is reported."""
    exprs = _dashboard_exprs()
    stale = [e.replace("kingdee_cdc_events_consumed_total", "kingdee_cdc_events_read_total") for e in exprs]
    assert stale != exprs  # the dashboard does chart the series
    assert _unknown_series(stale) == {"kingdee_cdc_events_read_total"}
    # counters are exported with _total only: the bare name a query might use by mistake is unknown too
    assert _unknown_series(["rate(kingdee_cdc_events_consumed[5m])"]) == {"kingdee_cdc_events_consumed"}


def test_compose_init_script_is_the_harness_ddl() -> None:
    assert (DEPLOY / "compose" / "init-business.sql").read_text() == init_sql()


def test_dockerfile_is_slim_pinned_non_root_with_healthcheck() -> None:
    text = (DEPLOY.parent / "Dockerfile").read_text()
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert froms and all(re.fullmatch(r"python:3\.11\.\d+-slim-\w+", f) for f in froms), froms
    assert re.search(r"^USER 10001", text, re.M) and "HEALTHCHECK" in text and "/healthz" in text
    assert '"run", "--post", "--feedback"' in text
