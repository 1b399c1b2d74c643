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


# --------------------------------------------------------------------------- profile (python -m bench.mapping --profile)
#: Where map + check spends its time, by part of the work: the first pattern a sample's leaf frame matches (py-spy
#: shows no frames for C code: Decimal arithmetic, dict and string work count in the Python function calling them).
PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("content digest and voucher key", ("content_digest", "voucher_key", "_text_repr", "Mapper._keyed")),
    ("accounting checks", ("connector/ledger/_checks.py", "Mapper._checked")),
    ("rule expressions and templates", ("connector/mapping/_expr.py", "connector/mapping/_compile.py")),
    ("building the voucher (header, entries, balance)",
     ("Mapper._build", "Mapper._header", "Mapper._full_entry", "Mapper._amount", "Mapper._balance", "_money",
      "_dimensions", "Mapper._currency", "Mapper._source_rate", "Mapper._entry_scopes", "Mapper._check_time")),
    ("per event and rule: rules, scope, source ref, row state, result",
     ("connector/mapping/_engine.py", "connector/ledger/", "connector/events/")),
    ("other", ("",)),
)


def loop(topic: str, seconds: float, n: int = 3000) -> None:
    """Map the scenario's events (fresh rows) again and again for ``seconds``: what ``--profile`` samples."""
    t = next(x for x in samples.TABLES if x.topic == topic)
    mapper = Mapper(load_rules(REPO_ROOT / "rules"))
    _, events = _events(t, n)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        ledger = InMemoryLedger()
        for ev in events:
            mapper.map(ev, ledger)


def _part(frame: str) -> str:
    for name, patterns in PARTS:
        if any(p in frame for p in patterns):
            return name
    return PARTS[-1][0]


def profile(seconds: float = 10.0, rate: int = 1000) -> str:
    """py-spy (installed by ``make bench-profile``) over ``loop`` per scenario: a table of where map + check spends
    its time (markdown)."""
    import re
    import shutil
    import subprocess
    import sys
    import tempfile
    from collections import Counter
    from pathlib import Path

    frame_re = re.compile(r":\d+\)$")
    lines = ["| scenario | " + " | ".join(name for name, _ in PARTS) + " | samples |",
             "|---|" + "---:|" * (len(PARTS) + 1)]
    tops: dict[str, Counter[str]] = {}
    for t in samples.TABLES:
        with tempfile.TemporaryDirectory() as tmp:
            raw = Path(tmp) / "raw.txt"
            spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
            subprocess.run([spy, "record", "-r", str(rate), "-f", "raw", "-o", str(raw),
                            "--", sys.executable, "-m", "bench.mapping", "--loop", t.topic, str(seconds)],
                           check=True, capture_output=True, cwd=REPO_ROOT)
            parts: Counter[str] = Counter()
            top: Counter[str] = Counter()
            for line in raw.read_text().splitlines():
                stack, _, count = line.rpartition(" ")
                frames = [frame_re.sub(")", f) for f in stack.split(";")]
                if not any(f.startswith("Mapper.map ") for f in frames):
                    continue
                parts[_part(frames[-1])] += int(count)
                top[frames[-1]] += int(count)
        total = sum(parts.values()) or 1
        lines.append(f"| {t.topic} | " + " | ".join(f"{parts[name] / total:.0%}" for name, _ in PARTS)
                     + f" | {total:,} |")
        tops[t.topic] = top
    out = ["\n".join(lines), ""]
    for topic, top in tops.items():
        total = sum(top.values()) or 1
        out += [f"**{topic}**, top functions by self time:", "", "| function (file) | share |", "|---|---:|"]
        out += [f"| {f} | {n / total:.1%} |" for f, n in top.most_common(12)]
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["--loop"]:
        loop(sys.argv[2], float(sys.argv[3]))
    elif sys.argv[1:2] == ["--profile"]:
        print(profile(float(sys.argv[2]) if len(sys.argv) > 2 else 10.0))
    else:
        print(markdown(run()))
