"""Mapping throughput: already-decoded events through ``Mapper.map`` (rules + checks), one core, per scenario."""

from __future__ import annotations

import time
from typing import Any

from harness import samples
from harness.devstack import REPO_ROOT
from connector.events import ChangeEvent, Decoder, FixedSchemas
from connector.mapping import InMemoryLedger, Mapper, load_rules


def _events(t: samples.SampleTable, n: int) -> list[ChangeEvent]:
    gen = samples.SampleGenerator(seed=42)
    decoder = Decoder(FixedSchemas(samples.value_schema(t)))
    out = []
    for key, env in samples.change_stream(gen, t, n):  # creates only: one voucher each
        ev = decoder.decode(samples.encode_avro(t, env, 1), key=samples.json_key(key))
        assert isinstance(ev, ChangeEvent)
        out.append(ev)
    return out


def run(n: int = 5000, seconds: float = 2.0) -> dict[str, Any]:
    rules = load_rules(REPO_ROOT / "rules")
    results: dict[str, Any] = {}
    for t in samples.TABLES:
        events = _events(t, n)
        mapper = Mapper(rules)
        ledger = InMemoryLedger()
        vouchers = rejected = 0
        for ev in events:  # warm-up + outcome counts
            r = mapper.map(ev, ledger)
            vouchers += len(r.vouchers)
            rejected += bool(r.rejections)
        done = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            for ev in events:
                mapper.map(ev, ledger)
            done += len(events)
        rate = done / (time.perf_counter() - start)
        results[t.topic] = {"events_per_s": rate, "vouchers": vouchers, "rejected": rejected, "events": len(events)}
    return results


def markdown(results: dict[str, Any]) -> str:
    lines = ["| scenario (topic) | events/s (map + check) | vs 30,000 target | vouchers / rejected per 5,000 |",
             "|---|---:|---:|---:|"]
    for topic, r in results.items():
        lines.append(f"| {topic} | {r['events_per_s']:,.0f} | {r['events_per_s'] / 30000:.2f}× | "
                     f"{r['vouchers']:,} / {r['rejected']:,} |")
    return "\n".join(lines)
