"""One kingdee-cdc pipeline in a process of its own, for ``bench/pipeline.py``.

``python -m bench.worker '<json spec>'`` builds the pipeline the way the service does (shipped rules, batches
of up to 2,000, no dead-letter topic), runs it on one topic and prints one ``BENCH-RESULT {json}`` line on
stdout. Running it apart from the benchmark harness makes its CPU time, its peak RSS and a profile of it
(py-spy can start it) the pipeline's own.

The spec (JSON object):

* ``mode``: ``sustained`` (the records are already in the topic; run until idle for ``idle_s``) or
  ``latency`` (print ``BENCH-READY`` once every partition is assigned, then journal ``expect`` records the
  parent produces at a steady rate; per record, journal commit time − Kafka record timestamp);
* ``bootstrap``, ``dsn`` (a database of its own: a fresh journal), ``topic``, ``partitions``;
* ``pg_pid`` / ``broker_pid``: the PostgreSQL postmaster and the Kafka broker, whose CPU time is sampled at
  the same instants as the pipeline's own (first batch started, last batch done);
* ``expect``, ``timeout_s``, ``idle_s``, ``progress_s`` (a progress line on stderr this often, 0: none).

The measured span is the one ``bench.pipeline`` has always used: from the start of the first batch (its
decode) to the end of the last; ``seconds_from_start`` starts at the pipeline's construction instead (journal
migration check and consumer-group join included). Stage times come from wrapping the pipeline's four calls
per batch (decode, journal read, map, journal write): wall time and the main thread's CPU time each.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

from harness import samples
from harness.devstack import REPO_ROOT

RESULT = "BENCH-RESULT "
READY = "BENCH-READY"
T = TypeVar("T")


_TICK: Final = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name (``[0]`` is the state), ``None`` if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def _all_stats() -> dict[int, list[str]]:
    """Every process's stat fields (``/proc/<pid>/task/*/children`` is not on every kernel: scan instead)."""
    out: dict[int, list[str]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st is not None:
                out[int(entry.name)] = st
    return out


def tree_cpu_s(pid: int | None, stats: Mapping[int, list[str]] | None = None) -> float:
    """CPU seconds (user + system) of process ``pid``, of its live descendants and of the children it has
    waited for (Linux ``/proc``; ``stats``: a scan already made): for the PostgreSQL postmaster, everything
    the server has done, backends that have exited included; 0.0 when ``pid`` is ``None`` or gone."""
    if pid is None:
        return 0.0
    stats = _all_stats() if stats is None else stats
    root = stats.get(pid)
    if root is None:
        return 0.0
    kids: dict[int, list[int]] = {}
    for p, st in stats.items():
        kids.setdefault(int(st[1]), []).append(p)  # field 4 of stat(5), the parent pid
    # utime, stime, cutime, cstime are fields 14–17 of stat(5): 11–14 here
    ticks = sum(int(x) for x in root[11:15])
    todo = list(kids.get(pid, ()))
    while todo:  # (a child that exited since the scan is in its parent's cutime/cstime by now or soon)
        child = todo.pop()
        ticks += int(stats[child][11]) + int(stats[child][12])
        todo += kids.get(child, ())
    return ticks / _TICK


def peak_rss_mb() -> float:
    """This process's peak resident set size (``VmHWM``). Not ``getrusage``'s ``ru_maxrss``: Linux carries the
    high-water mark of the address space an ``exec`` replaces into it, so a worker forked from a big benchmark
    process would report the benchmark's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # (no /proc: an upper bound)


@dataclass(slots=True)
class _Stage:
    wall_s: float = 0.0
    cpu_s: float = 0.0
    calls: int = 0
    first_ms: list[float] = field(default_factory=list)  # the first calls' wall times (warm-up shows here)


@dataclass(slots=True)
class Clock:
    """The measured span and the CPU counters sampled at its ends."""

    pg_pid: int | None
    broker_pid: int | None
    started: float | None = None
    ended: float = 0.0
    batch_s: list[float] = field(default_factory=list)  # each batch's time in the pipeline (its on_batch dt)
    cpu: dict[str, tuple[float, float]] = field(default_factory=dict)  # what → (at start, at end)
    stages: dict[str, _Stage] = field(default_factory=dict)
    records: int = 0
    sampling_cpu_s: float = 0.0
    trace: list[tuple[str, float, float]] | None = None  # (step, started at (monotonic), wall ms) per call

    def _sample(self) -> dict[str, float]:
        """CPU so far: this process (minus what sampling took), PostgreSQL and the broker."""
        c0 = time.thread_time()
        stats = _all_stats()
        out = {"postgres": tree_cpu_s(self.pg_pid, stats), "broker": tree_cpu_s(self.broker_pid, stats)}
        self.sampling_cpu_s += time.thread_time() - c0
        out["pipeline"] = time.process_time() - self.sampling_cpu_s
        return out

    def start(self) -> None:
        if self.started is None:
            self.started = time.monotonic()
            self.cpu = {k: (v, v) for k, v in self._sample().items()}

    def batch_done(self, records: int, dt: float) -> None:
        self.records += records
        self.batch_s.append(dt)
        self.ended = time.monotonic()
        self.cpu = {k: (self.cpu[k][0], v) for k, v in self._sample().items()}

    def wrap(self, name: str, fn: Callable[..., T]) -> Callable[..., T]:
        stage = self.stages.setdefault(name, _Stage())

        def timed(*args: Any, **kwargs: Any) -> T:
            w, c = time.perf_counter(), time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                took = time.perf_counter() - w
                stage.wall_s += took
                stage.cpu_s += time.thread_time() - c
                stage.calls += 1
                if len(stage.first_ms) < 3:
                    stage.first_ms.append(1000 * took)
                if self.trace is not None:
                    self.trace.append((name, w, 1000 * took))
        return timed

    def result(self) -> dict[str, Any]:
        span = self.ended - (self.started or self.ended)
        cpu = {k: b - a for k, (a, b) in self.cpu.items()}
        return {"events": self.records, "seconds": span, "events_per_s": self.records / span if span else 0.0,
                "batches": len(self.batch_s), "sampling_cpu_s": self.sampling_cpu_s,
                "batch_ms_mean": 1000 * statistics.mean(self.batch_s) if self.batch_s else 0.0, "cpu_s": cpu,
                "stages": {k: {"wall_s": s.wall_s, "cpu_s": s.cpu_s, "calls": s.calls, "first_ms": s.first_ms}
                           for k, s in self.stages.items()}}


def _build(spec: Mapping[str, Any], clock: Clock, on_write: Callable[[Sequence[Any]], None] | None = None) -> Any:
    from connector.events import Decoder, FixedSchemas
    from connector.journal import BatchResult, Journal
    from connector.mapping import Mapper, load_rules
    from connector.pipeline import Pipeline, PipelineOptions, Processor

    def on_batch(result: BatchResult, dt: float) -> None:
        clock.batch_done(result.records, dt)

    journal = Journal(spec["dsn"], group=f"bench-{uuid.uuid4().hex[:6]}")
    processor = Processor(Decoder(FixedSchemas(samples.value_schema(samples.PURCHASING))),
                          Mapper(load_rules(REPO_ROOT / "rules")))
    pipe = Pipeline(consumer_conf={"bootstrap.servers": spec["bootstrap"], "group.id": journal.group,
                                   "log_level": "3"},
                    topics=[spec["topic"]], journal=journal, processor=processor,
                    options=PipelineOptions(dead_letter_topic="", batch_size=2000), on_batch=on_batch)
    decode = processor.decode

    def first_decode(msgs: Sequence[Any]) -> Any:
        clock.start()
        return decode(msgs)

    # The four calls of a batch, timed (instance attributes shadow the methods; the product is unchanged).
    processor.decode = clock.wrap("decode", first_decode)  # type: ignore[method-assign]
    journal.batch_state = clock.wrap("journal read (batch_state)", journal.batch_state)  # type: ignore[method-assign]
    processor.process = clock.wrap("map + check (process)", processor.process)  # type: ignore[method-assign]
    write = journal.write_batch

    def write_batch(records: Sequence[Any], positions: Any) -> Any:
        res = write(records, positions)
        if on_write is not None:
            on_write(records)
        return res
    journal.write_batch = clock.wrap("journal write (write_batch)", write_batch)  # type: ignore[method-assign]
    return pipe


def _progress(clock: Clock, every_s: float, label: str, stop: threading.Event, expect: int | None) -> None:
    while not stop.wait(every_s):
        if clock.started is None:
            print(f"  {label}: waiting for the first batch …", file=sys.stderr, flush=True)
            continue
        rate = clock.records / max(1e-9, clock.ended - clock.started) if clock.ended else 0.0
        of = f"/{expect:,}" if expect else ""
        print(f"  {label}: {clock.records:,}{of} events journaled ({rate:,.0f}/s so far)", file=sys.stderr,
              flush=True)


def _outcomes(pipe: Any) -> dict[str, int]:
    s = pipe.stats
    return {"records": s.records, "vouchers": s.vouchers, "duplicates": s.duplicates, "rejected": s.rejected,
            "dead_lettered": s.dead_lettered, "skipped": s.skipped, "batches": s.batches, "retries": s.retries}


def sustained(spec: Mapping[str, Any]) -> dict[str, Any]:
    clock = Clock(spec.get("pg_pid"), spec.get("broker_pid"))
    t0 = time.monotonic()
    pipe = _build(spec, clock)
    stop = threading.Event()
    if spec.get("progress_s"):
        threading.Thread(target=_progress, args=(clock, spec["progress_s"], spec.get("label", "pipeline"), stop,
                                                 spec.get("expect")), daemon=True).start()
    try:
        pipe.run(max_idle_s=spec.get("idle_s", 2.0))
    finally:
        stop.set()
    out = clock.result()
    out["seconds_from_start"] = clock.ended - t0
    out["events_per_s_from_start"] = clock.records / out["seconds_from_start"] if clock.records else 0.0
    out["outcomes"] = _outcomes(pipe)
    return out


def latency(spec: Mapping[str, Any]) -> dict[str, Any]:
    clock = Clock(spec.get("pg_pid"), spec.get("broker_pid"), trace=[] if spec.get("trace") else None)
    seen: list[tuple[float, float]] = []  # (Kafka timestamp ms, journal commit − timestamp ms) per record
    expect = int(spec["expect"])
    warmup_ms = 1000 * float(spec.get("warmup_s", 0.0))
    holder: list[Any] = []

    def on_write(records: Sequence[Any]) -> None:
        now_ms = time.time() * 1000  # write_batch returned: the batch's transaction is committed
        seen.extend((r.kafka.timestamp_ms, now_ms - r.kafka.timestamp_ms) for r in records if r.kafka.timestamp_ms)
        if len(seen) >= expect:
            holder[0].stop()

    pipe = _build(spec, clock, on_write)
    holder.append(pipe)
    stop = threading.Event()

    def ready() -> None:
        deadline = time.monotonic() + 120
        while len(pipe.assigned) < int(spec["partitions"]) and time.monotonic() < deadline:
            time.sleep(0.05)
        print(READY, flush=True)

    def watchdog() -> None:
        if not stop.wait(float(spec.get("timeout_s", 300))):
            print(f"  latency: timed out with {len(seen):,}/{expect:,} journaled", file=sys.stderr, flush=True)
            pipe.stop()

    threading.Thread(target=ready, daemon=True).start()
    threading.Thread(target=watchdog, daemon=True).start()
    if spec.get("progress_s"):
        threading.Thread(target=_progress, args=(clock, spec["progress_s"], spec.get("label", "latency"), stop,
                                                 expect), daemon=True).start()
    try:
        pipe.run()
    finally:
        stop.set()
    out = clock.result()
    out["outcomes"] = _outcomes(pipe)
    if clock.trace is not None:
        out["trace"] = clock.trace
    t0 = min((ts for ts, _ in seen), default=0.0)
    # per second of production: records, p99 and max latency (where a stall or the start-up shows)
    by_second: dict[int, list[float]] = {}
    for ts, lat in seen:
        by_second.setdefault(int((ts - t0) // 1000), []).append(lat)
    out["timeline"] = [[sec, len(v), _pct(sorted(v), 0.99), max(v)] for sec, v in sorted(by_second.items())]
    out |= {"warmup_s": warmup_ms / 1000, "warmup": _percentiles([lat for ts, lat in seen if ts < t0 + warmup_ms])}
    out |= _percentiles([lat for ts, lat in seen if ts >= t0 + warmup_ms])
    return out


def _pct(ordered: Sequence[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def _percentiles(lat: Sequence[float]) -> dict[str, Any]:
    ordered = sorted(lat)
    if not ordered:
        return {"samples": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    return {"samples": len(ordered), "p50_ms": _pct(ordered, 0.5), "p99_ms": _pct(ordered, 0.99),
            "max_ms": ordered[-1]}


def main(argv: Iterable[str]) -> int:
    args = list(argv)
    spec = json.loads(args[0])
    out = sustained(spec) if spec["mode"] == "sustained" else latency(spec)
    out["peak_rss_mb"] = peak_rss_mb()
    print(RESULT + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
