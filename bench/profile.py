"""``make bench-profile``: where the pipeline process spends its CPU during a sustained run (py-spy).

Starts a broker and a durable PostgreSQL, puts the benchmark's JSON topic (``bench.peers``: 30,000
purchase-invoice change events, 3 partitions) in place and runs ``bench.worker`` — the pipeline in a process
of its own — under ``py-spy record`` (100 samples/s, on-CPU samples of its Python threads). Writes

* ``docs/profiles/pipeline-sustained.txt`` — the collapsed stacks (``flamegraph.pl`` or speedscope.app draw
  them), and
* ``docs/profiles/pipeline-sustained.md`` — the same samples as tables: by step of the batch loop, by
  package area (leaf frames), and the top functions by self and by inclusive time.

py-spy (PyPI) is not a dependency of the project: ``make bench-profile`` installs it into the venv.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from bench import peers, pipeline
from bench.run import _commit, _load
from harness.devstack import REPO_ROOT, EmbeddedPostgres, KafkaBroker

OUT = REPO_ROOT / "docs" / "profiles"
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

#: The batch loop's steps, by the function (and file) whose frame is on the stack.
STEPS: tuple[tuple[str, str, str], ...] = (
    ("journal write (write_batch)", "Journal.write_batch", "connector/journal/"),
    ("map + check (process)", "Processor.process", "connector/pipeline.py"),
    ("journal read (batch_state)", "Journal.batch_state", "connector/journal/"),
    ("decode", "Processor.decode", "connector/pipeline.py"),
    ("Kafka fetch (consume)", "Pipeline._next_batch", "connector/pipeline.py"),
    ("journal migration check", "Journal.migrate", "connector/journal/"),
)
#: Samples outside this frame (interpreter start, imports, building the pipeline) are left out.
LOOP = "Pipeline.run"
#: Package areas for leaf frames: the first prefix the frame's file (as py-spy shortens it) starts with.
AREAS: tuple[tuple[str, str], ...] = (
    ("connector.events (decode)", "connector/events/"),
    ("connector.mapping (rules, expressions)", "connector/mapping/"),
    ("connector.ledger (vouchers, checks, serialisation)", "connector/ledger/"),
    ("connector.journal (SQL, COPY rows)", "connector/journal/"),
    ("connector.pipeline", "connector/pipeline.py"),
    ("connector (other)", "connector/"),
    ("psycopg (query and COPY formatting, I/O)", "psycopg"),
    ("confluent_kafka", "confluent_kafka"),
    ("fastavro", "fastavro"),
    ("json (stdlib: encode, decode)", "json/"),
    ("decimal (stdlib)", "decimal"),
    ("bench (timing wrappers)", "bench/"),
)


def _frames(stack: str) -> list[tuple[str, str]]:
    out = []
    for f in stack.split(";"):
        m = _FRAME.match(f.strip())
        out.append((m.group("func"), m.group("file")) if m else (f.strip(), ""))
    return out


def _short(path: str) -> str:
    for mark in ("/site-packages/", "/lib/python3.11/", str(REPO_ROOT) + "/"):
        if mark in path:
            return path.split(mark, 1)[1]
    return path


def parse(lines: Iterable[str]) -> list[tuple[list[tuple[str, str]], int]]:
    samples_ = []
    for line in lines:
        line = line.rstrip("\n")
        if not line:
            continue
        stack, _, count = line.rpartition(" ")
        samples_.append((_frames(stack), int(count)))
    return samples_


def tables(samples_: list[tuple[list[tuple[str, str]], int]], top: int = 30) -> str:
    everything = sum(c for _, c in samples_)
    samples_ = [(frames, c) for frames, c in samples_ if any(fn == LOOP for fn, _ in frames)]
    total = sum(c for _, c in samples_)
    steps: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    self_t: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    for frames, c in samples_:
        step = next((name for name, func, file in STEPS
                     if any(fn == func and file in fl for fn, fl in frames)), "the rest of the loop")
        steps[step] += c
        leaf_fn, leaf_file = frames[-1] if frames else ("?", "")
        areas[next((name for name, pat in AREAS if leaf_file.startswith(pat)), "Python stdlib (other), builtins")] += c
        self_t[f"{leaf_fn} ({_short(leaf_file)})" if leaf_file else f"{leaf_fn or '?'} (no Python file)"] += c
        for key in {f"{fn} ({_short(fl)})" for fn, fl in frames}:
            incl[key] += c

    def table(title: str, counter: Counter[str], n: int | None = None) -> list[str]:
        rows = [f"| {title} | samples | share |", "|---|---:|---:|"]
        rows += [f"| {k} | {v:,} | {v / total:.1%} |" for k, v in counter.most_common(n)]
        return rows + [""]

    out = [f"{total:,} samples in `{LOOP}` (of {everything:,} in all: the rest is the interpreter's start, imports "
           "and building the pipeline), on-CPU, Python threads of the pipeline process.", ""]
    out += ["### By step of the batch loop", ""] + table("step (a frame of it on the stack)", steps)
    out += ["### By package area (leaf frame)", ""] + table("area", areas)
    out += [f"### Top {top} functions, self time", ""] + table("function (file)", self_t, top)
    out += [f"### Top {top} functions, inclusive time", ""] + table("function (file)", incl, top)
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.profile", description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--events", type=int, default=30_000)
    ap.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    raw = args.out / "pipeline-sustained.txt"
    load_start = _load()
    with tempfile.TemporaryDirectory(prefix="kdcdc-profile-") as d:
        work = Path(d)
        with KafkaBroker(work / "kafka") as k, EmbeddedPostgres(work / "pg", durable=True) as pg:
            stack = pipeline.Stack(k.bootstrap, pg.dsn(), pg.proc.pid if pg.proc else None,
                                   k.proc.pid if k.proc else None, work)
            records, expected = peers.purchase_invoice_records(args.events, seed=1)
            topic = peers.create_topic(k.bootstrap, pipeline.PARTITIONS, prefix="profile-json")
            peers.produce(k.bootstrap, topic, records)
            del records
            peers.settle(stack.dsn)
            print(f"profile: kingdee-cdc over {expected.events:,} events under py-spy …", file=sys.stderr)
            t = time.monotonic()
            res = pipeline.sustained(stack, topic, expected.events, profile=raw,
                                     profile_args=["--rate", str(args.rate), "--function", "--nonblocking"])
            wall = time.monotonic() - t
    c = pipeline.cpu_per_event(res)
    text = "\n".join([
        "# Profile: the pipeline process during a sustained run",
        "",
        f"`make bench-profile` (`python -m bench.profile`) on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit "
        f"`{_commit()}`, load average {load_start} at the start: "
        f"kingdee-cdc over {expected.events:,} purchase-invoice change events (JSON with schemas, 3 partitions) "
        f"into a fresh journal on a durable PostgreSQL, in a process of its own under py-spy. "
        f"{res['events_per_s']:,.0f} events/s under the profiler ({res['seconds']:.1f} s, {wall:.0f} s with "
        f"start-up); CPU per event: pipeline process {c['pipeline']:.0f} µs, PostgreSQL {c['postgres']:.0f} µs. "
        f"Collapsed stacks: `{raw.name}`.",
        "",
        "Wall and main-thread CPU per step of the batch loop (the worker's own timing of the same run):",
        "",
        "| step | wall s | CPU s |", "|---|---:|---:|",
        *[f"| {name} | {s['wall_s']:.2f} | {s['cpu_s']:.2f} |" for name, s in res["stages"].items()],
        "",
        tables(parse(raw.read_text().splitlines())),
    ])
    (args.out / "pipeline-sustained.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
