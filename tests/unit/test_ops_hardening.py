"""The ops server, outages, readiness and shutdown without services: probes stay open behind a token, a silent
client is cut off, a failing dependency is logged once per interval (librdkafka's flood included), readiness
checks are shared, and a shutdown ends within its grace whatever blocks."""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from connector.ops import Metrics, OpsServer, Outages, Readiness, Shutdown, kafka_callbacks


class Lines(logging.Handler):
    """Every line a logger emits, formatted."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def lines() -> Iterator[Lines]:
    handler = Lines()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(level)


# --------------------------------------------------------------------------- the ops server
@pytest.fixture
def server() -> Iterator[OpsServer]:
    ops = OpsServer(Metrics(), ready=lambda: (False, "kafka unavailable: refused"), token="s3cret-token",
                    timeout_s=0.5).start()
    yield ops
    ops.stop()


def test_probes_stay_open_when_metrics_need_a_token(server: OpsServer) -> None:
    base = f"http://127.0.0.1:{server.port}"
    assert httpx.get(f"{base}/healthz").status_code == 200
    ready = httpx.get(f"{base}/readyz?verbose=1")
    assert ready.status_code == 503 and ready.text == "kafka unavailable: refused\n"  # the reason, not a 401
    assert httpx.get(f"{base}/metrics").status_code == 401
    assert httpx.get(f"{base}/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    ok = httpx.get(f"{base}/metrics", headers={"Authorization": "Bearer s3cret-token"})
    assert ok.status_code == 200 and "kingdee_cdc_build_info" in ok.text
    # anything that is not a probe needs the token, whatever its path looks like
    for path in ("/admin", "/healthzz", "/metrics/../x", "/"):
        assert httpx.get(f"{base}{path}").status_code == 401, path
    assert httpx.get(f"{base}/nope", headers={"Authorization": "Bearer s3cret-token"}).status_code == 404


def test_a_client_that_connects_and_sends_nothing_is_cut_off(server: OpsServer) -> None:
    idle = socket.create_connection(("127.0.0.1", server.port))
    idle.settimeout(10)
    try:
        # the server keeps answering others meanwhile
        assert httpx.get(f"http://127.0.0.1:{server.port}/healthz").status_code == 200
        started = time.monotonic()
        assert idle.recv(1024) == b""  # closed by the server (timeout_s=0.5), not by our 10 s
        assert time.monotonic() - started < 5
    finally:
        idle.close()


# --------------------------------------------------------------------------- outages
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_failing_dependency_is_logged_once_per_interval_and_once_when_it_recovers(lines: Lines) -> None:
    clock = Clock()
    states: list[tuple[str, bool]] = []
    outages = Outages(30, clock=clock).configure(hints={"journal": "PostgreSQL at db:5432/x: check journal.dsn"},
                                                 observer=lambda d, up: states.append((d, up)))
    for _ in range(100):  # 100 failed attempts over 99 s, from any number of threads
        outages.failed("journal", 'connection to server at "db", port 5432 failed: Connection refused\n\tIs the '
                                  "server running?")
        clock.now += 1
    mine = [x for x in lines.lines if "journal" in x]
    assert len(mine) == 4, mine  # at once, then after 30, 60 and 90 s
    assert "PostgreSQL at db:5432/x: check journal.dsn" in mine[0] and "\n" not in mine[0]
    assert mine[1].startswith("journal still unavailable after 30s (31 failed attempts)")
    assert outages.problem("journal") and outages.down_for("journal") == 100
    outages.ok("journal")
    assert lines.lines[-1] == "journal available again after 100s (100 failed attempts)"
    assert outages.problem("journal") is None and states[-1] == ("journal", True) and ("journal", False) in states
    outages.ok("journal")  # working as usual: nothing to say
    assert lines.lines[-1] == "journal available again after 100s (100 failed attempts)"


def test_librdkafka_against_a_dead_broker_logs_a_line_per_interval_not_per_attempt(lines: Lines) -> None:
    from confluent_kafka import Consumer, Producer

    outages = Outages(30)
    consumer = Consumer({"bootstrap.servers": "127.0.0.1:1", "group.id": "dead", **kafka_callbacks(outages)})
    producer = Producer({"bootstrap.servers": "127.0.0.1:1", **kafka_callbacks(outages)})
    consumer.subscribe(["t"])
    try:
        started = time.monotonic()
        while time.monotonic() - started < 3:  # a few seconds of librdkafka reconnecting (~25 attempts a second)
            consumer.consume(10, 0.1)
            producer.poll(0)
        assert outages.problem("kafka") and "Connection refused" in str(outages.problem("kafka"))
        assert 1 <= len(lines.lines) <= 3, lines.lines  # the outage line, one FAIL line (the rest held back)
        assert any(x.startswith("kafka unavailable: 1/1 brokers are down") for x in lines.lines)
    finally:
        consumer.close()


class Err:
    """What librdkafka hands the error callback."""

    def __init__(self, code: int, text: str) -> None:
        self._code, self._text = code, text

    def code(self) -> int:
        return self._code

    def str(self) -> str:
        return self._text

    def fatal(self) -> bool:
        return False


def test_a_broker_closing_an_idle_connection_is_no_outage_but_refused_connections_are() -> None:
    from confluent_kafka import KafkaError

    outages = Outages(30)
    on_error = kafka_callbacks(outages)["error_cb"]
    on_error(Err(KafkaError._TRANSPORT, "b:9092/1: Disconnected (after 600000ms in state UP)"))
    on_error(Err(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
    assert outages.problem("kafka") is None  # the next request reconnects
    on_error(Err(KafkaError._TRANSPORT, "b:9092/1: Connect to ipv4#10.0.0.9:9092 failed: Connection refused"))
    assert "Connection refused" in str(outages.problem("kafka"))


# --------------------------------------------------------------------------- readiness
def test_readiness_checks_run_once_per_ttl_however_many_ask() -> None:
    clock = Clock()
    calls: list[str] = []
    gate: list[str] = ["starting: waiting for journal"]

    def journal() -> str | None:
        calls.append("journal")
        time.sleep(0.05)  # a slow check: concurrent callers wait for it instead of running their own
        return None

    def kafka() -> str | None:
        raise RuntimeError("no metadata")
    ready = Readiness([("journal", journal), ("kafka", kafka)], cache_s=2, gate=lambda: gate[0] or None,
                      detail=lambda: "2 partitions assigned", outages=Outages(clock=clock), clock=clock)
    assert ready() == (False, "starting: waiting for journal") and not calls  # the gate: no checks
    gate[0] = ""
    answers: list[tuple[bool, str]] = []
    threads = [threading.Thread(target=lambda: answers.append(ready())) for _ in range(20)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert calls == ["journal"] and ready.runs == 1
    assert set(answers) == {(False, "kafka unavailable: RuntimeError: no metadata")}
    clock.now += 2
    ready.checks[1] = ("kafka", lambda: None)
    assert ready() == (True, "ok; 2 partitions assigned") and calls == ["journal", "journal"]


# --------------------------------------------------------------------------- shutdown
def test_shutdown_exits_when_the_grace_runs_out_naming_what_blocks(lines: Lines) -> None:
    exited: list[int] = []
    done = threading.Event()
    def exit(code: int) -> None:
        exited.append(code)
        done.set()
    shutdown = Shutdown(0.3, exit=exit, backstop=False)
    stopped: list[str] = []
    shutdown.on_stop(lambda: stopped.append("pipeline"))
    release = threading.Event()
    stuck = shutdown.watch(threading.Thread(target=release.wait, name="poster", daemon=True))
    stuck.start()
    try:
        shutdown.begin("SIGTERM")
        assert stopped == ["pipeline"] and shutdown.stopping
        assert shutdown.join() == ["poster"]  # joined within the grace, still running
        assert done.wait(5) and exited == [1]
        last = lines.lines[-1]
        assert last.startswith("the shutdown grace of 0.3s ran out (stopping since SIGTERM)") and "poster at " in last
        shutdown.begin("again")  # once only
        assert stopped == ["pipeline"]
    finally:
        release.set()


def test_a_second_signal_exits_at_once() -> None:
    exited: list[int] = []
    shutdown = Shutdown(30, exit=exited.append, backstop=False)
    shutdown._signal(signal.SIGTERM, None)
    assert shutdown.stopping and not exited
    shutdown._signal(signal.SIGINT, None)
    assert exited == [128 + signal.SIGINT]
    assert shutdown._timer is not None
    shutdown._timer.cancel()
