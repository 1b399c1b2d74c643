"""Mapping (map + check) per core against a bare fastavro decode of the same events, per shipped scenario.

Per scenario, 5,000 create events (one row each), decoded once; then, interleaved in 5 rounds of 0.5 s
each (the best round counts, so a noisy neighbour costs a round, not a ratio):

* **fastavro** — ``fastavro.schemaless_reader`` over the same events' Avro bodies: the per-core ceiling a
  Python decoder of these events has, measured on the same host in the same minute;
* **fresh** — ``Mapper.map`` of every event against a *new* ``InMemoryLedger`` per pass: each row is new, so
  every event builds, checks and keys its voucher (what the pipeline does for new documents);
* **re-read** — ``Mapper.map`` against a ledger holding the vouchers of a first pass: each row's content is
  already in force, so the mapper builds the voucher, compares it with the one in force and posts nothing
  (a snapshot read again, a redelivered change). Cheaper; reported so that the two are not confused.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence
from typing import Any

import fastavro

from harness import samples
from harness.devstack import REPO_ROOT
from connector.events import ChangeEvent, Decoder, FixedSchemas
from connector.mapping import InMemoryLedger, Mapper, load_rules

TARGET = 1.0  # map + check per core ÷ fastavro decode per core


def _events(t: samples.SampleTable, n: int) -> tuple[list[bytes], list[ChangeEvent]]:
    gen = samples.SampleGenerator(seed=42)
    decoder = Decoder(FixedSchemas(samples.value_schema(t)))
    bodies, events = [], []
    for key, env in samples.change_stream(gen, t, n):  # creates only: one voucher each
        raw = samples.encode_avro(t, env, 1)
        ev = decoder.decode(raw, key=samples.json_key(key))
        assert isinstance(ev, ChangeEvent)
        bodies.append(raw)
        events.append(ev)
    return bodies, events


def rate(fn: Callable[[], int], seconds: float) -> float:
    """Events per second of ``fn`` (which handles a batch and returns its size), called for ``seconds``."""
    n = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        n += fn()
    return n / (time.perf_counter() - start)


def _scenario(t: samples.SampleTable, rules: Any, n: int) -> tuple[dict[str, Any], dict[str, Callable[[], int]]]:
    bodies, events = _events(t, n)
    parsed = fastavro.parse_schema(samples.value_schema(t))
    mapper = Mapper(rules)
    seeded = InMemoryLedger()
    vouchers = rejected = 0
    for ev in events:  # warm-up, outcome counts, and the ledger the re-read pass finds
        r = mapper.map(ev, seeded)
        seeded.apply(r)
        vouchers += len(r.vouchers)
        rejected += bool(r.rejections)
    reread_vouchers = sum(len(mapper.map(ev, seeded).vouchers) for ev in events)

    def ceiling() -> int:
        for raw in bodies:
            fastavro.schemaless_reader(io.BytesIO(raw[5:]), parsed, None)
        return len(bodies)

    def fresh() -> int:
        ledger = InMemoryLedger()  # every row new, as for new documents
        for ev in events:
            mapper.map(ev, ledger)
        return len(events)

    def reread() -> int:
        for ev in events:
            mapper.map(ev, seeded)
        return len(events)

    info = {"events": len(events), "vouchers": vouchers, "rejected": rejected, "reread_vouchers": reread_vouchers}
    return info, {"fastavro": ceiling, "fresh": fresh, "reread": reread}


def run(n: int = 5000, seconds: float = 0.5, rounds: int = 5, tables: Sequence[samples.SampleTable] = samples.TABLES
        ) -> dict[str, Any]:
    rules = load_rules(REPO_ROOT / "rules")
    results: dict[str, Any] = {}
    for t in tables:
        info, fns = _scenario(t, rules, n)
        best = {k: 0.0 for k in fns}
        for _ in range(rounds):
            for k, fn in fns.items():
                best[k] = max(best[k], rate(fn, seconds))
        results[t.topic] = info | {f"{k}_per_s": v for k, v in best.items()} | {
            "ratio": best["fresh"] / best["fastavro"], "ratio_reread": best["reread"] / best["fastavro"]}
    return results


def worst(results: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The scenario with the lowest fresh-mapping ratio (the target must hold for every scenario)."""
    return min(results.items(), key=lambda kv: float(kv[1]["ratio"]))


def markdown(results: dict[str, Any]) -> str:
    lines = ["| scenario (topic) | fastavro decode, events/s | map + check, fresh rows | ÷ fastavro | "
             "map + check, rows re-read (in force) | ÷ fastavro | vouchers / rejected per 5,000 (fresh) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for topic, r in results.items():
        lines.append(f"| {topic} | {r['fastavro_per_s']:,.0f} | {r['fresh_per_s']:,.0f} | {r['ratio']:.2f}× | "
                     f"{r['reread_per_s']:,.0f} | {r['ratio_reread']:.2f}× | {r['vouchers']:,} / {r['rejected']:,} |")
    return "\n".join(lines)
