"""Decoding throughput: ``Decoder.decode`` for Avro and JSON vs a bare ``fastavro.schemaless_reader`` loop.

One core; the paths are measured in interleaved rounds and each keeps its best round."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from typing import Any

import fastavro

from harness import samples
from connector.events import ChangeEvent, Decoder, FixedSchemas


def _rate(fn: Callable[[], int], seconds: float) -> float:
    n = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        n += fn()
    return n / (time.perf_counter() - start)


def run(n: int = 5000, seconds: float = 0.5, rounds: int = 5) -> dict[str, Any]:
    t = samples.POS
    gen = samples.SampleGenerator(seed=1)
    envs = [env for _, env in samples.change_stream(gen, t, n, update_every=5)]
    avro = [samples.encode_avro(t, e, 1) for e in envs]
    json_typed = [samples.encode_json(t, e, schemas=True) for e in envs]
    json_plain = [samples.encode_json(t, e, schemas=False) for e in envs]
    parsed = fastavro.parse_schema(samples.value_schema(t))
    decoder = Decoder(FixedSchemas(samples.value_schema(t)))

    def ceiling() -> int:
        for raw in avro:
            fastavro.schemaless_reader(io.BytesIO(raw[5:]), parsed, None)
        return len(avro)

    def loop(records: list[bytes]) -> Callable[[], int]:
        def go() -> int:
            for raw in records:
                ev = decoder.decode(raw)
                assert isinstance(ev, ChangeEvent)
            return len(records)
        return go

    paths = {
        "fastavro.schemaless_reader (ceiling)": ceiling,
        "Decoder: Avro wire format": loop(avro),
        "Decoder: JSON, schemas.enable=false": loop(json_plain),
        "Decoder: JSON, schemas.enable=true": loop(json_typed),
    }
    for fn in paths.values():
        fn()  # warm-up (schema compile, caches)
    results = {name: 0.0 for name in paths}
    for _ in range(rounds):
        for name, fn in paths.items():
            results[name] = max(results[name], _rate(fn, seconds))
    return results


def markdown(results: dict[str, Any]) -> str:
    ceiling = results["fastavro.schemaless_reader (ceiling)"]
    lines = ["| path | events/s | vs ceiling |", "|---|---:|---:|"]
    for name, rate in results.items():
        lines.append(f"| {name} | {rate:,.0f} | {rate / ceiling:.2f}× |")
    return "\n".join(lines)
