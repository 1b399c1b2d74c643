"""`kingdee-cdc run --post --feedback` (a real process) when its dependencies are gone: clear start-up errors, a few
log lines instead of a flood, readiness that says why, workers that survive a PostgreSQL outage and recover, and a
SIGTERM that always ends the process within the configured grace."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from connector.sandbox import RunningSandbox
from harness.devstack import EmbeddedPostgres, free_port
from tests.integration.helpers import CLI, RULES, produce, rows, wait_for

SANDBOX_APP_SECRET = "sandbox-app-secret-do-not-use-in-prod"


def _config(path: Path, *, bootstrap: str, dsn: str, kingdee_url: str, metrics_port: int, topic: str = "t",
            acct: str = "acct", app_id: str = "app", **sections: Any) -> Path:
    data: dict[str, Any] = {
        "kafka": {"bootstrap_servers": bootstrap, "group_id": f"outage-{uuid.uuid4().hex[:6]}", "topics": [topic],
                  "dead_letter_topic": f"{topic}.dlq",
                  "consumer": {"session.timeout.ms": "10000", "heartbeat.interval.ms": "3000"}},
        "journal": {"dsn": dsn}, "mapping": {"rules_dir": str(RULES)},
        "kingdee": {"server_url": kingdee_url, "acct_id": acct, "username": "integration", "app_id": app_id,
                    "app_secret": SANDBOX_APP_SECRET},
        "metrics": {"port": metrics_port}}
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    path.write_text(yaml.safe_dump(data))
    return path


def _start(cfg: Path, log: Path, *args: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([CLI, "run", "-c", str(cfg), "--post", "--feedback", *args], stdout=out,
                                stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _lines(log: Path) -> list[str]:
    return log.read_text(errors="replace").splitlines()


def _get(port: int, path: str) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=10)


def _sigterm(proc: subprocess.Popen[bytes], limit_s: float) -> tuple[int, float]:
    """SIGTERM ``proc``; its exit status and how long it took (it must exit within ``limit_s``)."""
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(limit_s + 30)  # bounded; the assertion below names the limit
    return rc, time.monotonic() - started


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_start_up_without_kafka_and_postgresql_is_clear_quiet_and_stoppable(
        tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    kafka_port, pg_port, kingdee_port = free_port(), free_port(), free_port()  # nothing listens on any of them
    common = {"bootstrap": f"127.0.0.1:{kafka_port}", "dsn": f"postgresql://postgres@127.0.0.1:{pg_port}/postgres",
              "kingdee_url": f"http://127.0.0.1:{kingdee_port}/k3cloud/"}
    waiting_port = free_port()
    waiting = _config(tmp_path / "waiting.yaml", metrics_port=waiting_port, **common,
                      metrics={"token": "metrics-token-123"}, service={"shutdown_grace_s": 5})
    giving_up = _config(tmp_path / "giving-up.yaml", metrics_port=free_port(), **common,
                        service={"startup_timeout_s": 3})
    log_a, log_b = tmp_path / "waiting.log", tmp_path / "giving-up.log"
    a = _start(waiting, log_a)
    b = _start(giving_up, log_b, "--exit-when-idle", "1")
    procs += [a, b]

    # One line per dependency at once, naming the address and what to check.
    def outage_lines() -> list[str] | None:
        assert a.poll() is None, _lines(log_a)
        found = [x for x in _lines(log_a) if " unavailable: " in x]
        return found if len(found) >= 2 else None
    journal_line, kafka_line = sorted(wait_for(outage_lines, 30, "the journal and kafka outage lines",
                                               observe=lambda: _lines(log_a)))
    assert f"127.0.0.1:{pg_port}" in journal_line and "journal.dsn" in journal_line, journal_line
    assert f"127.0.0.1:{kafka_port}" in kafka_line and "kafka.bootstrap_servers" in kafka_line, kafka_line

    # Probes answer without the token; readiness says what it waits for; metrics need the token.
    assert _get(waiting_port, "/healthz").status_code == 200
    ready = _get(waiting_port, "/readyz")
    assert ready.status_code == 503 and ready.text.startswith("starting: waiting for journal"), ready.text
    assert f"port {pg_port} failed" in ready.text and f"127.0.0.1:{kafka_port}" in ready.text, ready.text
    assert _get(waiting_port, "/metrics").status_code == 401

    # --exit-when-idle does not hang: after service.startup_timeout_s the run ends, status 3, one error line.
    assert b.wait(60) == 3, _lines(log_b)
    out_b = _lines(log_b)
    errors = [x for x in out_b if x.startswith("error: cannot start")]
    assert len(errors) == 1 and f"port {pg_port} failed" in errors[0] and f"127.0.0.1:{kafka_port}" in errors[0]
    assert "service.startup_timeout_s" in errors[0]

    # Meanwhile (several seconds of both services refused ~25 times a second) the waiting one said little.
    out_a = _lines(log_a)
    assert len(out_a) <= 8 and len(out_b) <= 10, (out_a, out_b)
    for text in (out_a, out_b):
        assert not [x for x in text if "Traceback" in x or "Exception in thread" in x or "FAIL" in x], text

    rc, took = _sigterm(a, 5)
    assert rc == 0 and took < 5, (rc, took, _lines(log_a))
    print(f"\n  dead ports: {len(out_a)} lines in the waiting service's log, SIGTERM → exit in {took:.2f}s")


@pytest.fixture
def own_postgres() -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL of this test alone (killed and restarted by it; the session's stays untouched)."""
    workdir = Path(tempfile.mkdtemp(prefix="kdcdc-test-pg-outage-"))
    pg = EmbeddedPostgres(workdir, durable=False).start()
    yield pg
    pg.stop()
    shutil.rmtree(workdir, ignore_errors=True)


def _samples(port: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(_get(port, "/metrics").text):
        for s in fam.samples:
            key = s.name + ("{" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) + "}" if s.labels else "")
            out[key] = s.value
    return out


def _consumed(port: int) -> float:
    return sum(v for k, v in _samples(port).items() if k.startswith("kingdee_cdc_events_consumed_total"))


def test_a_postgresql_outage_is_waited_out_quietly_and_the_service_recovers(
        kafka_bootstrap: str, topic_factory: Callable[..., str], own_postgres: EmbeddedPostgres,
        sandbox: RunningSandbox, tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    topic = topic_factory("outage", partitions=2)
    first = produce(kafka_bootstrap, topic, 200, seed=61)
    cfg_data = sandbox.server.state.config
    port = free_port()
    cfg = _config(tmp_path / "config.yaml", bootstrap=kafka_bootstrap, dsn=own_postgres.dsn(),
                  kingdee_url=sandbox.url, metrics_port=port, topic=topic, acct=cfg_data.data_centre,
                  app_id=next(iter(cfg_data.apps)), service={"shutdown_grace_s": 10, "outage_log_every_s": 2})
    log = tmp_path / "service.log"
    proc = _start(cfg, log)
    procs.append(proc)

    def flowing() -> bool:
        assert proc.poll() is None, _lines(log)
        s = _samples(port)
        return (_get(port, "/readyz").status_code == 200 and _consumed(port) == first.count
                and s.get("kingdee_cdc_poster_backlog") == 0 and s.get("kingdee_cdc_feedback_outbox_backlog") == 0)
    wait_for(flowing, 90, f"the service to journal, post and relay {first.count} records",
             ignore=(httpx.HTTPError,), interval_s=0.3, observe=lambda: _lines(log)[-5:])

    before = len(_lines(log))
    assert own_postgres.proc is not None
    own_postgres.proc.kill()  # the journal is gone, mid-flight
    own_postgres.proc.wait()
    second = produce(kafka_bootstrap, topic, 50, seed=62)

    def not_ready() -> str | None:
        r = _get(port, "/readyz")
        return r.text if r.status_code == 503 else None
    why = wait_for(not_ready, 30, "/readyz to answer 503")
    assert why.startswith("journal unavailable") and str(own_postgres.port) in why, why
    assert _get(port, "/healthz").status_code == 200  # alive: it recovers by itself

    def repeated() -> list[str] | None:  # two reminders (outage_log_every_s: 2): a window of four seconds or more
        found = [x for x in _lines(log)[before:] if "journal still unavailable after" in x]
        return found if len(found) >= 2 else None
    wait_for(repeated, 30, "two 'journal still unavailable' reminders", observe=lambda: _lines(log)[before:])
    during = _lines(log)[before:]
    assert not [x for x in during if "Traceback" in x or "Exception in thread" in x or "stopped by an error" in x], \
        during  # the poster and the relay keep waiting: no thread died
    assert sum(1 for x in during if "journal" in x) <= 6 and len(during) <= 12, during
    assert _samples(port).get("kingdee_cdc_dependency_up{dependency=journal}") == 0

    restarted = EmbeddedPostgres(own_postgres.workdir, port=own_postgres.port, durable=False).start()
    own_postgres.proc = restarted.proc

    def recovered() -> bool:
        assert proc.poll() is None, _lines(log)
        s = _samples(port)
        return (_get(port, "/readyz").status_code == 200 and _consumed(port) == first.count + second.count
                and s.get("kingdee_cdc_poster_backlog") == 0)
    wait_for(recovered, 90, "the service to recover and journal the records produced during the outage",
             ignore=(httpx.HTTPError,), interval_s=0.3, observe=lambda: _lines(log)[-5:])
    assert any("journal available again after" in x for x in _lines(log)[before:])
    journaled = rows(own_postgres.dsn(), "SELECT count(*) FROM kdcdc.event_records WHERE topic = %s", topic)[0][0]
    assert journaled == first.count + second.count  # nothing lost, nothing twice

    rc, took = _sigterm(proc, 10)
    assert rc == 0 and took < 10, (rc, took, _lines(log)[-10:])
    print(f"\n  postgresql outage: {len(during)} lines while it was down; SIGTERM → exit in {took:.2f}s")


def test_sigterm_ends_the_process_within_the_grace_even_when_a_call_blocks(
        kafka_bootstrap: str, topic_factory: Callable[..., str], pg_dsn: str, tmp_path: Path,
        procs: list[subprocess.Popen[bytes]]) -> None:
    topic = topic_factory("grace")
    produce(kafka_bootstrap, topic, 20, seed=63)
    black_hole = socket.socket()  # accepts connections (the kernel does) and never answers
    black_hole.bind(("127.0.0.1", 0))
    black_hole.listen(64)
    try:
        cfg = _config(tmp_path / "config.yaml", bootstrap=kafka_bootstrap, dsn=pg_dsn, topic=topic,
                      kingdee_url=f"http://127.0.0.1:{black_hole.getsockname()[1]}/k3cloud/",
                      metrics_port=free_port(), kingdee={"timeout_s": 120}, service={"shutdown_grace_s": 3})
        log = tmp_path / "service.log"
        proc = _start(cfg, log)
        procs.append(proc)

        def posting() -> int:  # the poster sent a BatchSave that will not be answered for two minutes
            assert proc.poll() is None, _lines(log)
            return int(rows(pg_dsn, "SELECT count(*) FROM kdcdc.vouchers WHERE status = 'POSTING'")[0][0])
        wait_for(posting, 60, "vouchers in POSTING", ignore=(Exception,), interval_s=0.2)
        rc, took = _sigterm(proc, 3)
        out = _lines(log)
        assert rc == 1 and took < 3 + 2, (rc, took, out[-10:])
        last = [x for x in out if "the shutdown grace of 3s ran out" in x]
        assert last and "poster at " in last[0], out[-10:]
        assert any("revoked" in x for x in out), "the consumer left the group before the grace ran out"
        print(f"\n  blocked poster: SIGTERM → exit {rc} in {took:.2f}s")
    finally:
        black_hole.close()
