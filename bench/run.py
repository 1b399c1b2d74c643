"""``make bench``: every benchmark in one run on one host → ``docs/benchmarks.md`` and ``docs/benchmarks.json``.

Targets are ratios against baselines measured side by side in the same run (hosts differ 2–3× in speed and
are shared), plus the few absolute limits the product promises (latency, memory, the poster's rate).
``python -m bench.run [decode] [mapping] [pipeline] [poster] [summaries]`` runs only the named sections and prints them
(the documents are written by a full run only); ``--rounds N`` sets the interleaved rounds of the
side-by-side pipeline measures (default 2).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import decode, mapping, pipeline, poster, summaries

DOCS = Path(__file__).resolve().parents[1] / "docs"
DOC = DOCS / "benchmarks.md"
DOC_JSON = DOCS / "benchmarks.json"
COMMAND = "make bench"
SECTIONS = ("decode", "mapping", "pipeline", "poster", "summaries")
#: ADR 0004: ≈ 280 µs of CPU per event (pipeline process + PostgreSQL) on the host it was measured on
CPU_BASELINE_US = 280.0


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _load() -> str:
    a, b, c = os.getloadavg()
    return f"{a:.2f} / {b:.2f} / {c:.2f}"


def host() -> str:
    cpu = "unknown CPU"
    mem = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f", {int(line.split()[1]) / 1024 / 1024:.0f} GiB RAM"
    except OSError:
        pass
    return (f"{os.cpu_count()} cores ({cpu}){mem}, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")


def _commit() -> str:
    root = DOCS.parent
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=root)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "connector", "bench", "harness", "rules"],
                           capture_output=True, text=True, cwd=root)
    return rev.stdout.strip() + (" + uncommitted changes" if dirty.stdout.strip() else "")


# --------------------------------------------------------------------------- measures and targets
@dataclass(frozen=True, slots=True)
class Measure:
    """One line of ``docs/benchmarks.json``: ``target`` is a comparison (``">= 10"``) or ``None`` (reported
    only), ``met`` whether ``value`` satisfies it (``None`` without a target)."""

    name: str
    value: float | None
    unit: str
    target: str | None = None
    met: bool | None = None
    detail: str = ""


def _check(value: float | None, target: str | None) -> bool | None:
    if target is None or value is None:
        return None
    op, bound = target.split()
    return value >= float(bound) if op == ">=" else value <= float(bound)


def measure(name: str, value: float | None, unit: str, target: str | None = None, detail: str = "") -> Measure:
    """A measure, its value kept to 4 significant digits (the noise is larger than that)."""
    kept = None if value is None else float(f"{value:.4g}")
    return Measure(name, kept, unit, target, _check(value, target), detail)


def measures(res: dict[str, Any]) -> list[Measure]:
    """The targets of the issue (first, in its order), then everything else the run measured."""
    out: list[Measure] = []
    info: list[Measure] = []
    if "pipeline" in res:
        p = res["pipeline"]
        best = p["best"]
        k = best["kingdee_cdc"]["events_per_s"]
        out.append(measure("pipeline_vs_naive", k / best["naive"]["events_per_s"], "×", ">= 10",
                           "kingdee-cdc sustained ÷ the naive per-event design (decode, map, INSERT, COMMIT)"))
        if "jdbc" in best:
            out.append(measure("pipeline_vs_jdbc_sink", k / best["jdbc"]["events_per_s"], "×", ">= 1.0",
                               "kingdee-cdc sustained ÷ the Debezium JDBC sink (Kafka Connect, worker start → "
                               "last row) on the same topic into the same PostgreSQL"))
        out.append(measure("pipeline_vs_raw_ceiling", k / best["raw"]["events_per_s"], "×", ">= 0.25",
                           "kingdee-cdc sustained ÷ consume + json.loads + COPY + commit of the same records"))
    if "mapping" in res:
        topic, w = mapping.worst(res["mapping"])
        out.append(measure("map_check_vs_fastavro_decode", w["ratio"], "×", ">= 1.0",
                           f"map + check (fresh rows) per core ÷ bare fastavro decode per core, same events; the "
                           f"lowest scenario ({topic})"))
        for t, r in res["mapping"].items():
            info += [measure(f"map_check_fresh[{t}]", r["fresh_per_s"], "events/s"),
                     measure(f"map_check_reread[{t}]", r["reread_per_s"], "events/s"),
                     measure(f"fastavro_decode[{t}]", r["fastavro_per_s"], "events/s"),
                     measure(f"map_check_vs_fastavro_decode[{t}]", r["ratio"], "×", ">= 1.0")]
    if "pipeline" in res:
        p = res["pipeline"]
        lat = p["latency"]
        out.append(measure("latency_p99_ms", lat["p99_ms"], "ms", "<= 250",
                           f"Kafka timestamp → journal commit at a steady {lat['rate']:,.0f} events/s (50 % of the "
                           f"sustained rate), records produced after {lat['warmup_s']:.0f} s of warm-up"))
        out.append(measure("peak_rss_mb", p["peak_rss_mb"], "MB", "<= 300",
                           "the pipeline process (its own process), max over its runs"))
    if "poster" in res:
        b, nv = res["poster"]["batched"], res["poster"]["naive"]
        out.append(measure("poster_vs_one_save_baseline", b["per_s"] / nv["per_s"], "×", ">= 100",
                           "BatchSave ×100, 4 calls in flight ÷ one Save per voucher, one call at a time; sandbox at "
                           "20 ms per call"))
        out.append(measure("poster_vouchers_per_s", b["per_s"], "vouchers/s", ">= 1000"))
        info.append(measure("poster_one_save_baseline_per_s", nv["per_s"], "vouchers/s"))
    if "pipeline" in res:
        p = res["pipeline"]
        best = p["best"]
        c = pipeline.cpu_per_event(best["kingdee_cdc"])
        half = CPU_BASELINE_US / 2
        out.append(measure("cpu_per_event_us", c["sum"], "µs", f"<= {half:g}",
                           f"pipeline process {c['pipeline']:.0f} µs + PostgreSQL {c['postgres']:.0f} µs per event "
                           f"over the best sustained run (target: half of ≈ {CPU_BASELINE_US:.0f} µs, ADR 0004)"))
        info += [measure("cpu_per_event_pipeline_us", c["pipeline"], "µs"),
                 measure("cpu_per_event_postgres_us", c["postgres"], "µs"),
                 measure("cpu_per_event_broker_us", c["broker"], "µs", detail="the Kafka broker, apart")]
        for key, name in (("kingdee_cdc", "pipeline_sustained"), ("raw", "raw_ceiling"), ("naive", "naive_baseline"),
                          ("jdbc", "jdbc_sink")):
            if key in best:
                info.append(measure(f"{name}_events_per_s", best[key]["events_per_s"], "events/s",
                                    detail="best of " + ", ".join(f"{x['events_per_s']:,.0f}"
                                                                  for x in p["runs"][key])))
        if "jdbc" in best:
            warm = max((x["warm_events_per_s"] or 0.0 for x in p["runs"]["jdbc"]), default=0.0)
            info.append(measure("jdbc_sink_warm_events_per_s", warm or None, "events/s",
                                detail="committed offsets 10 % → 90 %"))
            if warm:
                info.append(measure("pipeline_vs_jdbc_sink_warm", best["kingdee_cdc"]["events_per_s"] / warm, "×"))
        info.append(measure("pipeline_avro_events_per_s", p["avro"]["events_per_s"], "events/s",
                            detail="the same changes as Avro, its own topic, once"))
        info.append(measure("latency_p50_ms", p["latency"]["p50_ms"], "ms"))
        info.append(measure("latency_warmup_p99_ms", p["latency"]["warmup"]["p99_ms"], "ms",
                            detail="records produced in the warm-up (a fresh process's first batches)"))
        k = best["kingdee_cdc"]
        info.append(measure("wal_per_event_bytes", k["wal_bytes"] / k["events"], "bytes",
                            detail=f"{k['wal_fpi']:,} full-page images"))
    if "decode" in res:
        for name, r in res["decode"].items():
            info.append(measure(f"decode[{name}]", r, "events/s"))
    if "summaries" in res:
        sm = res["summaries"]
        info += [measure("summary_mode_events_per_s", sm["summary"]["events_per_s"], "events/s",
                         detail="POS changes journaled with summary vouchers (pos-sale-summary.yaml)"),
                 measure("summary_vs_single_journal_rate", sm["journal_ratio"], "×",
                         detail="summary mode ÷ one voucher per receipt, same events, same run"),
                 measure("kingdee_calls_per_10k_events[summary]", sm["summary"]["calls_per_10k_events"], "calls"),
                 measure("kingdee_calls_per_10k_events[single]", sm["single"]["calls_per_10k_events"], "calls")]
    return out + info


def _fmt(m: Measure) -> str:
    if m.value is None:
        return "—"
    if m.unit == "×":
        near = m.target is not None and abs(m.value - float(m.target.split()[1])) < 0.005
        return f"{m.value:.3f}×" if near else f"{m.value:.2f}×"  # (1.00× beside "not met" would puzzle)
    return f"{m.value:,.0f} {m.unit}"


def summary(ms: list[Measure], res: dict[str, Any]) -> str:
    by = {m.name: m for m in ms}
    rows: list[tuple[str, str, str, bool | None]] = []

    def row(label: str, name: str, target: str) -> None:
        m = by.get(name)
        if m is not None:
            rows.append((label, _fmt(m), target, m.met))

    row("pipeline sustained ÷ naive per-event baseline", "pipeline_vs_naive", "≥ 10×")
    if "pipeline_vs_jdbc_sink" in by:
        m, warm = by["pipeline_vs_jdbc_sink"], by.get("pipeline_vs_jdbc_sink_warm")
        rows.append(("pipeline sustained ÷ Debezium JDBC sink, worker start → last row (same topic, same PostgreSQL)",
                     _fmt(m) + (f" (warm ÷ warm: {_fmt(warm)})" if warm else ""), "≥ 1.0×", m.met))
    row("pipeline sustained ÷ raw ceiling (consume + COPY + commit)", "pipeline_vs_raw_ceiling", "≥ 0.25×")
    row("map + check per core ÷ bare fastavro decode per core (lowest scenario)", "map_check_vs_fastavro_decode",
        "≥ 1.0×")
    if "latency_p99_ms" in by:
        lat = res["pipeline"]["latency"]
        rows.append((f"p99 Kafka timestamp → journal commit at a steady 50 % of the sustained rate "
                     f"({lat['rate']:,.0f} events/s, after {lat['warmup_s']:.0f} s of warm-up)",
                     f"{lat['p99_ms']:,.0f} ms (p50 {lat['p50_ms']:,.0f} ms)"
                     + ("" if lat["kept_up"] else "; did not keep up: a backlog, see below"),
                     "≤ 250 ms", by["latency_p99_ms"].met))
    row("peak RSS, pipeline process", "peak_rss_mb", "≤ 300 MB")
    if "poster_vs_one_save_baseline" in by:
        a, b = by["poster_vs_one_save_baseline"], by["poster_vouchers_per_s"]
        rows.append(("poster into the sandbox at 20 ms per call ÷ one-Save-at-a-time baseline",
                     f"{_fmt(a)} ({_fmt(b)})", "≥ 100×, and ≥ 1,000 vouchers/s", bool(a.met and b.met)))
    if "cpu_per_event_us" in by:
        c = by["cpu_per_event_us"]
        rows.append(("CPU per event: pipeline process + PostgreSQL",
                     f"{by['cpu_per_event_pipeline_us'].value:,.0f} + {by['cpu_per_event_postgres_us'].value:,.0f} = "
                     f"{c.value:,.0f} µs", f"reported; goal: halve ≈ {CPU_BASELINE_US:.0f} µs (≤ "
                     f"{CPU_BASELINE_US / 2:.0f} µs)", c.met))
    lines = ["| measure | this run | target | met |", "|---|---:|---:|:---:|"]
    for label, value, target, met in rows:
        lines.append(f"| {label} | {value} | {target} | {'yes' if met else 'no' if met is not None else '—'} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the documents
_TEXT = {
    "pipeline": ("Pipeline end to end, side by side", pipeline.__doc__ or ""),
    "mapping": ("Mapping (map + check) per core", mapping.__doc__ or ""),
    "decode": ("Decoding per core", "One core, 5,000 POS sales-order change events (creates + updates). The ceiling "
               "is a bare `fastavro.schemaless_reader` loop over the same Avro bodies (no envelope handling, no "
               "logical types). Best of 5 interleaved rounds of 0.5 s per path."),
    "poster": ("Poster into the Kingdee sandbox", "10,000 journaled vouchers (creates, reversals, reposts from the "
               "shipped scenarios) posted over HTTP to the sandbox with 20 ms added latency per call; the journal is "
               "PostgreSQL with fsync on; every voucher is checked to be in the sandbox exactly once. Baseline: one "
               "Save per voucher, sequentially (500 vouchers). The sandbox runs in a process of its own "
               "(`bench.sandbox_proc`), so its request handling is not counted as the poster's time; the CPU "
               "columns say where the work went."),
}
_TEXT["summaries"] = ("Summary vouchers against one voucher per document", summaries.__doc__ or "")
_MARKDOWN: dict[str, Callable[[Any], str]] = {"pipeline": pipeline.markdown, "mapping": mapping.markdown,
                                              "decode": decode.markdown, "poster": poster.markdown,
                                              "summaries": summaries.markdown}


def _docstring_text(doc: str) -> str:
    """A module docstring as Markdown (reStructuredText's ``code`` → Markdown's `code`)."""
    return doc.strip().replace("``", "`")


def document(res: dict[str, Any], ms: list[Measure], meta: dict[str, Any]) -> str:
    out = [
        "# Benchmarks",
        "",
        f"Produced by `{meta['command']}` (`python -m bench.run`) on {meta['finished_utc']} UTC, commit "
        f"`{meta['commit']}`, in {meta['minutes']:.1f} minutes.",
        f"Host: {meta['host']}. Load average (1 / 5 / 15 min) at the start {meta['load_start']}, at the end "
        f"{meta['load_end']}.",
        "",
        "Hosts differ 2–3× in speed and are shared, so the targets are ratios measured side by side in this one "
        "run (the short measures repeated in interleaved rounds, best round kept); absolute rates are for "
        "comparing runs on one host only. Every number here is also in `docs/benchmarks.json`.",
        "",
        "## Targets",
        "",
        summary(ms, res),
        "",
    ]
    for key in ("pipeline", "mapping", "decode", "poster", "summaries"):
        if key in res:
            title, text = _TEXT[key]
            out += [f"## {title}", "", _docstring_text(text), "", _MARKDOWN[key](res[key]), ""]
    out += ["## Console", "", "The operator console's page times on a journal of 10 million events are measured apart "
            "(`make bench-console`, about 10 minutes): docs/benchmarks-console.md.", ""]
    out += ["## Partitions and instances", "", "Throughput against partitions and instances (one instance on 1, 3 and "
            "6 partitions, two instances in one consumer group on 6) is measured apart (`make bench-scale`, about 3 "
            "minutes): docs/benchmarks-scale.md.", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("sections", nargs="*", help=f"sections to run: {', '.join(SECTIONS)} (default: all)")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the side-by-side pipeline measures")
    ap.add_argument("--events", type=int, default=30_000, help="events of the sustained pipeline measures")
    ap.add_argument("--no-jdbc", action="store_true", help="skip the Debezium JDBC sink")
    ap.add_argument("--render", action="store_true",
                    help="measure nothing: write docs/benchmarks.md again from docs/benchmarks.json (its last run)")
    args = ap.parse_args(argv)
    if args.render:
        saved = json.loads(DOC_JSON.read_text())
        raw, last = saved["raw"], {k: v for k, v in saved.items() if k not in ("measures", "raw")}
        kept = measures(raw)
        DOC.write_text(document(raw, kept, last))
        DOC_JSON.write_text(json.dumps({**last, "measures": [asdict(m) for m in kept], "raw": raw}, indent=1,
                                       ensure_ascii=False, default=str) + "\n")
        _say(f"bench: wrote {DOC.relative_to(DOCS.parent)} from {DOC_JSON.relative_to(DOCS.parent)}")
        return 0
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown section(s) {', '.join(sorted(unknown))}: choose from {', '.join(SECTIONS)}")
    only = set(args.sections) or set(SECTIONS)
    started = time.monotonic()
    load_start = _load()
    _say(f"bench: {host()}; load average {load_start}")
    res: dict[str, Any] = {}
    if "decode" in only:
        _say("bench: decode (one core, best of 5 rounds per path) …")
        res["decode"] = decode.run()
    if "mapping" in only:
        _say("bench: mapping (one core per scenario: fastavro, fresh, re-read; best of 5 rounds) …")
        res["mapping"] = mapping.run()
    if "pipeline" in only:
        _say("bench: pipeline (real Kafka + durable PostgreSQL; kingdee-cdc, raw ceiling, naive, JDBC sink) …")
        res["pipeline"] = pipeline.run(n=args.events, rounds=args.rounds, jdbc=not args.no_jdbc)
    if "poster" in only:
        _say("bench: poster into the sandbox (20 ms per call) …")
        res["poster"] = poster.run()
    if "summaries" in only:
        _say("bench: summary vouchers against one voucher per receipt (journal, close, post into the sandbox) …")
        res["summaries"] = summaries.run()
    ms = measures(res)
    meta = {"command": COMMAND if only == set(SECTIONS) else f"python -m bench.run {' '.join(sorted(only))}",
            "finished_utc": f"{datetime.now(UTC):%Y-%m-%d %H:%M}", "commit": _commit(), "host": host(),
            "load_start": load_start, "load_end": _load(), "minutes": (time.monotonic() - started) / 60}
    text = document(res, ms, meta)
    print(text)
    if only == set(SECTIONS):
        DOC.write_text(text)
        DOC_JSON.write_text(json.dumps({**meta, "measures": [asdict(m) for m in ms], "raw": res}, indent=1,
                                       ensure_ascii=False, default=str) + "\n")
        _say(f"bench: wrote {DOC.relative_to(DOCS.parent)} and {DOC_JSON.relative_to(DOCS.parent)}")
    _say(f"bench: done in {meta['minutes']:.1f} min; load average {meta['load_end']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
