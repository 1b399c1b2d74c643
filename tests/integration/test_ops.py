"""Metrics and health endpoints, scraped while a real pipeline runs."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families

from connector.ops import Metrics, OpsServer
from tests.integration.helpers import make_pipeline, produce


def _samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_metrics_move_with_the_stream_and_lag_returns_to_zero(kafka_bootstrap: str,
                                                             topic_factory: Callable[..., str], pg_dsn: str) -> None:
    topic = topic_factory("ops", partitions=2)
    produced = produce(kafka_bootstrap, topic, 800, seed=41, poison_every=200)
    metrics = Metrics()
    pipe = make_pipeline(kafka_bootstrap, pg_dsn, [topic], batch_size=100)
    pipe.metrics = metrics
    server = OpsServer(metrics, ready=lambda: (bool(pipe.assigned), "assigned" if pipe.assigned else "joining"),
                       token=None).start()
    runner = threading.Thread(target=lambda: pipe.run(max_idle_s=4))
    runner.start()
    try:
        assert httpx.get(f"http://127.0.0.1:{server.port}/healthz").status_code == 200
        seen_mid_stream = False
        deadline = time.monotonic() + 60
        while runner.is_alive() and time.monotonic() < deadline:
            consumed = sum(v for (n, _), v in _samples(server.port).items() if n == "kingdee_cdc_events_consumed_total")
            seen_mid_stream |= 0 < consumed < produced.count
            time.sleep(0.05)
        runner.join(30)
        s = _samples(server.port)
        consumed = sum(v for (n, _), v in s.items() if n == "kingdee_cdc_events_consumed_total")
        outcomes = {dict(lbl)["outcome"]: v for (n, lbl), v in s.items() if n == "kingdee_cdc_event_outcomes_total"}
        lags = [v for (n, _), v in s.items() if n == "kingdee_cdc_consumer_lag"]
        assert consumed == produced.count == sum(outcomes.values())
        assert outcomes["DEAD_LETTERED"] + outcomes.get("REJECTED", 0) >= produced.poison
        assert s[("kingdee_cdc_vouchers_journaled_total", ())] == pipe.stats.vouchers > 0
        assert lags and all(v == 0 for v in lags)
        assert s[("kingdee_cdc_end_to_end_latency_seconds_count", ())] == produced.count
        assert s[("kingdee_cdc_build_info", (("version", "0.1.0"),))] == 1
        assert seen_mid_stream, "the counters should move while the stream flows, not only at the end"
    finally:
        server.stop()
    locked = OpsServer(metrics, token="s3cret").start()
    try:
        assert httpx.get(f"http://127.0.0.1:{locked.port}/metrics").status_code == 401
        r = httpx.get(f"http://127.0.0.1:{locked.port}/metrics", headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200 and "kingdee_cdc_events_consumed_total" in r.text
    finally:
        locked.stop()
