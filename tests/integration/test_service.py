"""`kingdee-cdc run --post --feedback` as one process (what the container runs): metrics of every stage move
as events flow, readiness (open to probes while /metrics needs the token; no new PostgreSQL connection per probe),
backlogs drain — and no secret shows up in its logs or in `config show`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from harness.devstack import free_port
from connector.sandbox import start_sandbox
from tests.integration.helpers import CLI, RULES, produce, rows, wait_for

APP_SECRET = "kdcdc-test-app-secret-7f3a9c"
METRICS_TOKEN = "kdcdc-test-metrics-token-51be"


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = httpx.get(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    r.raise_for_status()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(r.text) for s in fam.samples}


def _sum(s: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return sum(v for (n, lbl), v in s.items() if n == name and labels.items() <= dict(lbl).items())


def test_one_process_service_metrics_and_no_secret_in_logs(
        kafka_bootstrap: str, topic_factory: Callable[..., str], pg_dsn: str, tmp_path: Path) -> None:
    topic = topic_factory("svc", partitions=2)
    produced = produce(kafka_bootstrap, topic, 600, seed=77, poison_every=150)
    sb = start_sandbox(seed=9)
    cfg_data = sb.server.state.config
    app_id = next(iter(cfg_data.apps))
    cfg_data.apps[app_id]["secret"] = APP_SECRET  # the sandbox verifies signatures made with this secret
    port = free_port()
    group = f"svc-{uuid.uuid4().hex[:6]}"
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({
        "kafka": {"bootstrap_servers": kafka_bootstrap, "group_id": group, "topics": [topic],
                  "dead_letter_topic": f"{topic}.dlq", "client": {"log_level": "3"}},
        "journal": {"dsn": pg_dsn}, "mapping": {"rules_dir": str(RULES)},
        "kingdee": {"server_url": sb.url, "acct_id": cfg_data.data_centre, "username": "integration",
                    "app_id": app_id, "app_secret": APP_SECRET},
        "metrics": {"port": port, "token": METRICS_TOKEN, "ready_cache_s": 0},  # every probe checks
        "log_level": "DEBUG", "log_format": "json"}))
    log = tmp_path / "service.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as out:
        proc = subprocess.Popen([CLI, "run", "-c", str(cfg), "--post", "--feedback"],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        scraped: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        ready_seen = False

        def settled() -> bool:
            nonlocal scraped, ready_seen
            assert proc.poll() is None, log.read_text()[-3000:]
            scraped = _scrape(port)
            ready_seen |= httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200  # probes need no token
            return (_sum(scraped, "kingdee_cdc_events_consumed_total") == produced.count
                    and scraped.get(("kingdee_cdc_poster_backlog", ())) == 0
                    and scraped.get(("kingdee_cdc_feedback_outbox_backlog", ())) == 0
                    and _sum(scraped, "kingdee_cdc_vouchers_settled_total") > 0)
        wait_for(settled, 120, f"the service to consume all {produced.count} records and drain the poster and "
                               f"feedback backlogs (metrics on :{port})", ignore=(httpx.HTTPError,),
                 interval_s=0.3, observe=lambda: (scraped, log.read_text()[-3000:]))
        s = scraped
        # Probes are open, /metrics is not; a probe checks the journal on the metrics pool's connection, so a
        # hundred probes open no PostgreSQL session (they used to open one each).
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/metrics").status_code == 401
        sessions = "SELECT sessions FROM pg_stat_database WHERE datname = current_database()"
        opened = rows(pg_dsn, sessions)[0][0]
        for _ in range(100):
            r = httpx.get(f"http://127.0.0.1:{port}/readyz")
            assert r.status_code == 200 and r.text.startswith("ok; 2 partitions assigned"), r.text
        assert rows(pg_dsn, sessions)[0][0] - opened <= 2  # our own two queries
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sb.stop()

    assert ready_seen
    statuses = dict(rows(pg_dsn, "SELECT status, count(*) FROM kdcdc.vouchers GROUP BY 1"))
    posted_now = statuses.get("POSTED", 0)
    reversed_ = statuses.get("REVERSED", 0)
    # every voucher that reached Kingdee was counted once, as it settled
    assert _sum(s, "kingdee_cdc_vouchers_settled_total", status="POSTED") == posted_now + reversed_
    assert _sum(s, "kingdee_cdc_vouchers_settled_total", status="REVERSED") == reversed_ > 0
    assert s[("kingdee_cdc_posted_latency_seconds_count", (("since", "journal_commit"),))] == posted_now + reversed_
    assert s[("kingdee_cdc_posted_latency_seconds_count", (("since", "source_commit"),))] == posted_now + reversed_
    assert _sum(s, "kingdee_cdc_kingdee_request_duration_seconds_count", operation="BatchSave") > 0
    assert _sum(s, "kingdee_cdc_journal_commit_duration_seconds_count") >= 1
    sent = rows(pg_dsn, "SELECT source_system, count(*) FROM kdcdc.outbox GROUP BY 1")
    for system, n in sent:
        assert _sum(s, "kingdee_cdc_feedback_events_sent_total", system=system) == n
    dead = rows(pg_dsn, "SELECT count(*) FROM kdcdc.dead_letters WHERE stage <> 'TASK_PUT'")[0][0]
    assert _sum(s, "kingdee_cdc_dead_letters_total") == dead > 0
    rejected = rows(pg_dsn, "SELECT count(*) FROM kdcdc.event_records WHERE outcome = 'REJECTED'")[0][0]
    assert _sum(s, "kingdee_cdc_rejections_total") == rejected
    assert s[("kingdee_cdc_journal_up", ())] == 1

    # Secrets: never in the logs (DEBUG, JSON), never in `config show`.
    text = log.read_text()
    lines = [json.loads(x) for x in text.splitlines() if x.startswith("{")]
    assert len(lines) > 100  # DEBUG: one line per journaled record, among others
    keyed = [x for x in lines if x.get("source_key") and x.get("topic") == topic and "offset" in x]
    assert any(x.get("reason") for x in keyed), "rejections are logged with their reason and source key"
    assert any(x.get("voucher_key") for x in keyed), "journaled records are logged with their voucher keys"
    assert APP_SECRET not in text and METRICS_TOKEN not in text
    show = subprocess.run([CLI, "config", "show", "-c", str(cfg)],
                          capture_output=True, text=True, env=env)
    assert show.returncode == 0, show.stderr
    assert "app_secret" in show.stdout and APP_SECRET not in show.stdout and METRICS_TOKEN not in show.stdout
