"""Operations: Prometheus metrics behind an intent-named façade, and /metrics, /healthz, /readyz endpoints.

Names follow Prometheus conventions (``kingdee_cdc_…_total``, ``…_seconds``); labels are bounded (topic,
partition, outcome — never keys or amounts). The registry is injectable so tests use their own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from connector import __version__
from connector.errors import ConfigError


class Metrics:
    """The pipeline's metrics. Methods are named for what happened, not for the metric type."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.consumed = Counter("kingdee_cdc_events_consumed_total", "Records consumed, by topic", ["topic"],
                                registry=r)
        self.outcomes = Counter("kingdee_cdc_event_outcomes_total", "Journaled record outcomes", ["outcome"],
                                registry=r)
        self.vouchers = Counter("kingdee_cdc_vouchers_journaled_total", "Vouchers written to the journal", registry=r)
        self.duplicates = Counter("kingdee_cdc_duplicate_vouchers_skipped_total",
                                  "Vouchers skipped because their key was already journaled", registry=r)
        self.batch_size = Histogram("kingdee_cdc_batch_size", "Records per journal transaction",
                                    buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000), registry=r)
        self.batch_seconds = Histogram("kingdee_cdc_batch_duration_seconds", "Decode + map + journal per batch",
                                       registry=r)
        self.latency = Histogram("kingdee_cdc_end_to_end_latency_seconds",
                                 "Kafka record timestamp to journal commit",
                                 buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), registry=r)
        self.lag = Gauge("kingdee_cdc_consumer_lag", "Log end minus position", ["topic", "partition"], registry=r)
        self.retries = Counter("kingdee_cdc_retries_total", "Retried infrastructure failures", registry=r)
        self.info = Gauge("kingdee_cdc_build_info", "Build information", ["version"], registry=r)
        self.info.labels(__version__).set(1)

    # intent-named methods ------------------------------------------------
    def batch_journaled(self, records: Sequence[Any], result: Any, seconds: float) -> None:
        now_ms = time.time() * 1000
        for rec in records:
            self.consumed.labels(rec.kafka.topic).inc()
            if rec.kafka.timestamp_ms:
                self.latency.observe(max(0.0, (now_ms - rec.kafka.timestamp_ms) / 1000))
        for outcome, n in result.outcomes.items():
            self.outcomes.labels(outcome).inc(n)
        self.vouchers.inc(result.vouchers_inserted)
        self.duplicates.inc(result.vouchers_duplicate)
        self.batch_size.observe(len(records))
        self.batch_seconds.observe(seconds)

    def lag_observed(self, topic: str, partition: int, lag: int) -> None:
        self.lag.labels(topic, str(partition)).set(max(0, lag))


class OpsServer:
    """``/metrics``, ``/healthz`` (process alive) and ``/readyz`` (dependencies reachable) on one port."""

    def __init__(self, metrics: Metrics, *, host: str = "127.0.0.1", port: int = 0,
                 ready: Callable[[], tuple[bool, str]] = lambda: (True, "ok"), token: str | None = None) -> None:
        ops = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                if ops.token and self.headers.get("Authorization") != f"Bearer {ops.token}":
                    self._send(401, b"unauthorized\n", "text/plain")
                elif self.path.startswith("/metrics"):
                    self._send(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
                elif self.path.startswith("/healthz"):
                    self._send(200, b"ok\n", "text/plain")
                elif self.path.startswith("/readyz"):
                    ok, why = ready()
                    self._send(200 if ok else 503, (why + "\n").encode(), "text/plain")
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.token = token
        try:
            self.server = ThreadingHTTPServer((host, port), Handler)
        except OSError as e:
            raise ConfigError(f"cannot serve metrics on {host}:{port}: {e.strerror}; set metrics.port "
                              "(0 = any free port) or metrics.host") from None
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="ops-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> OpsServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
