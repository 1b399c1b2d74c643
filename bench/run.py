"""``make bench``: run every benchmark section and rewrite ``docs/benchmarks.md``.

Each section measures against a baseline in the same run, so the ratios hold even on a noisy machine.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from bench import decode, mapping, pipeline, poster

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def _machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, {platform.system()}"


def main() -> int:
    sections: list[tuple[str, str, str]] = []
    only = set(sys.argv[1:])

    def want(name: str) -> bool:
        return not only or name in only

    if want("decode"):
        print("bench: decode …", flush=True)
        sections.append(("Decoding", "One core, 5,000 POS sales-order change events (creates + updates), "
                         "decoded repeatedly for 2 s per path. The ceiling is a bare "
                         "`fastavro.schemaless_reader` loop over the same Avro bodies (no envelope "
                         "handling, no logical types).", decode.markdown(decode.run())))
    if want("mapping"):
        print("bench: mapping …", flush=True)
        sections.append(("Mapping (map + check)", "One core, 5,000 already-decoded create events per shipped "
                         "scenario (`rules/`), each mapped by `Mapper.map` (rule evaluation, voucher build, every "
                         "accounting check, limits) repeatedly for 2 s. Target: 30,000 events/s per scenario.",
                         mapping.markdown(mapping.run())))
    if want("pipeline"):
        print("bench: pipeline (real Kafka + durable PostgreSQL) …", flush=True)
        sections.append(("Pipeline end to end", "Real Kafka broker and PostgreSQL (fsync on) on the same 2-core "
                         "host as the pipeline. Purchase-invoice change events (Avro; creates, updates, deletes) "
                         "on a 3-partition topic; one pipeline instance, batches of up to 2,000. The naive "
                         "baseline decodes, maps and commits one event at a time.",
                         pipeline.markdown(pipeline.run())))
    if want("poster"):
        print("bench: poster into the sandbox (20 ms per call) …", flush=True)
        sections.append(("Poster into the Kingdee sandbox", "10,000 journaled vouchers (creates, reversals, "
                         "reposts from the shipped scenarios) posted over HTTP to the sandbox with 20 ms added "
                         "latency per call; the journal is PostgreSQL with fsync on; every voucher is checked to "
                         "be in the sandbox exactly once. Baseline: one Save per voucher, sequentially.",
                         poster.markdown(poster.run())))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    out = [
        "# Benchmarks",
        "",
        f"Produced by `make bench` (`python -m bench.run`) on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"commit `{commit}`, {_machine()}.",
        "Numbers are from one run on a shared 2-core machine; compare the ratios, which are measured against",
        "a baseline in the same run, rather than the absolute rates.",
        "",
    ]
    for title, text, table in sections:
        out += [f"## {title}", "", text, "", table, ""]
    DOC.write_text("\n".join(out))
    print(DOC.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
