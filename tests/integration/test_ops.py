"""Metrics and health endpoints, scraped while a real pipeline runs."""

from __future__ import annotations

import threading
from collections.abc import Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families

from connector.ops import Metrics, OpsServer
from tests.integration.helpers import make_pipeline, produce, wait_for


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
        def consumed_now() -> float:
            return sum(v for (n, _), v in _samples(server.port).items() if n == "kingdee_cdc_events_consumed_total")

        def mid_stream() -> bool:  # the counters move while the stream flows, not only at the end
            consumed = consumed_now()
            assert consumed < produced.count, "the consumed counter was never seen between 0 and the end"
            return consumed > 0
        wait_for(mid_stream, 60, f"kingdee_cdc_events_consumed_total between 0 and {produced.count}",
                 observe=consumed_now)
        wait_for(lambda: not runner.is_alive(), 60, "the pipeline to go idle and stop (max_idle_s=4)",
                 observe=consumed_now)
        runner.join()
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
    finally:
        server.stop()
    locked = OpsServer(metrics, token="s3cret").start()
    try:
        assert httpx.get(f"http://127.0.0.1:{locked.port}/metrics").status_code == 401
        r = httpx.get(f"http://127.0.0.1:{locked.port}/metrics", headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200 and "kingdee_cdc_events_consumed_total" in r.text
    finally:
        locked.stop()
