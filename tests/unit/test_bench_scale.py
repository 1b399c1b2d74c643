"""bench/scale.py's pure parts: the journal check that says "nothing lost or doubled", and joining the instances of
one run into one span (the measured numbers in docs/benchmarks-scale.md rest on both)."""

from __future__ import annotations

from typing import Any

import pytest

from bench.scale import busy_cores, combine, problems

ENDS = {0: 3, 1: 2}
EXACT = {0: (3, 0, 2), 1: (2, 0, 1)}


def test_a_complete_journal_has_no_problems() -> None:
    assert problems(ENDS, EXACT, dict(ENDS), {"a", "b"}, {"a", "b"}) == []


def test_an_empty_partition_needs_no_outcome() -> None:
    assert problems({0: 3, 1: 0}, {0: (3, 0, 2)}, {0: 3, 1: 0}, set(), set()) == []


@pytest.mark.parametrize(("per", "offsets", "vouchers", "said"), [
    ({0: (2, 0, 1), 1: (2, 0, 1)}, {0: 2, 1: 2}, {"a", "b"}, ["partition 0: 2 outcomes", "partition 0: journal offset 2"]),
    ({0: (3, 1, 3), 1: (2, 0, 1)}, dict(ENDS), {"a", "b"}, ["partition 0: 3 outcomes for offsets 1..3"]),
    (EXACT, dict(ENDS), {"a"}, ["vouchers: 0 unexpected, 1 missing (of 2)"]),
    (EXACT, dict(ENDS), {"a", "b", "c"}, ["vouchers: 1 unexpected, 0 missing"]),
    ({**EXACT, 2: (1, 0, 0)}, dict(ENDS), {"a", "b"}, ["outcomes for partitions the topic does not have: [2]"]),
])
def test_lost_doubled_or_stray_is_named(per: dict[int, tuple[int, int, int]], offsets: dict[int, int],
                                        vouchers: set[str], said: list[str]) -> None:
    found = problems(ENDS, per, offsets, vouchers, {"a", "b"})
    assert len(found) == len(said)
    for got, want in zip(found, said):
        assert got.startswith(want), (got, want)


def _instance(events: int, start: float, end: float, cpu: float, pg: tuple[float, float]) -> dict[str, Any]:
    return {"events": events, "started_at": start, "ended_at": end, "batches": 2, "batch_ms_mean": 100.0,
            "peak_rss_mb": 150.0, "cpu_s": {"pipeline": cpu, "postgres": pg[1] - pg[0], "broker": 0.0},
            "cpu_at": {"pipeline": (0.0, cpu), "postgres": pg, "broker": (5.0, 5.5)},
            "outcomes": {"records": events, "duplicates": 0}}


def test_instances_join_into_one_span_and_postgres_is_counted_once() -> None:
    a = _instance(600, 10.0, 12.0, 1.2, (100.0, 101.0))
    b = _instance(400, 10.5, 13.0, 0.8, (100.4, 101.5))  # PostgreSQL's counter, read by each: overlapping windows
    out = combine([a, b])
    assert out["events"] == 1000 and out["seconds"] == pytest.approx(3.0)
    assert out["events_per_s"] == pytest.approx(1000 / 3.0)
    assert out["cpu_s"]["pipeline"] == pytest.approx(2.0)  # the processes: summed
    assert out["cpu_s"]["postgres"] == pytest.approx(1.5)  # the server: from the first start to the last end
    assert out["outcomes"] == {"records": 1000, "duplicates": 0}
    assert busy_cores(out)["all"] == pytest.approx((2.0 + 1.5 + 0.5) / 3.0)


def test_an_instance_that_got_no_batch_adds_nothing() -> None:
    a = _instance(1000, 10.0, 12.0, 1.0, (100.0, 101.0))
    idle = {**_instance(0, 0.0, 0.0, 0.0, (0.0, 0.0)), "started_at": None, "batches": 0}
    out = combine([a, idle])
    assert out["events"] == 1000 and out["seconds"] == pytest.approx(2.0) and out["batches"] == 2
