"""The poster's round (``run_once``) with its journal and Kingdee replaced by fakes: what finished is recorded
even when another chunk's worker fails while the recorder is busy."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any, cast

import pytest

from connector.journal import VoucherStatus
from connector.kingdee.poster import Poster, PosterOptions, PostStats, _Outcome


class _Journal:
    dsn = "postgresql://unused"
    schema = "kdcdc"
    group = "g"
    owner = "me"


class _Claimed:
    def __init__(self, key: str) -> None:
        self.key = key


def test_outcomes_finished_while_the_recorder_is_busy_are_recorded_before_a_worker_failure_is_raised() -> None:
    poster = Poster(cast(Any, _Journal()), cast(Any, type("K", (), {"observer": None})()), options=PosterOptions(
        batch_size=1, concurrency=4, claim_limit=3, duplicate_scan_every_s=0))
    p = cast(Any, poster)
    p._recheck = lambda stats: None
    claims = [[_Claimed("A"), _Claimed("B"), _Claimed("X")]]
    p._claim = lambda stats=None: claims.pop() if claims else []
    recording_a, b_returning, x_failing = threading.Event(), threading.Event(), threading.Event()
    recorded: list[str] = []

    def post(chunk: Sequence[_Claimed], deadline: float) -> tuple[list[_Outcome], PostStats]:
        key = chunk[0].key
        if key == "A":
            return [_Outcome("A", VoucherStatus.POSTED, "1", "n1")], PostStats(posted=1)
        if key == "B":  # saved in Kingdee while the recorder is busy with A
            assert recording_a.wait(10)
            b_returning.set()
            return [_Outcome("B", VoucherStatus.POSTED, "2", "n2")], PostStats(posted=1)
        assert b_returning.wait(10)
        x_failing.set()
        raise ValueError("worker X failed (a model that cannot be built)")

    def record(outcomes: Sequence[_Outcome], claimed: object) -> None:
        keys = [o.key for o in outcomes]
        if "A" in keys:
            recording_a.set()
            assert x_failing.wait(10)
            time.sleep(0.3)  # a slow journal commit: the pump sees X's failure while A is still being recorded
        recorded.extend(keys)

    p._post_or_release = post
    p._record_finished = record
    with pytest.raises(ValueError, match="worker X failed"):
        poster.run_once()
    assert sorted(recorded) == ["A", "B"], "B was saved in Kingdee: its POSTED outcome must be recorded"


def test_kingdee_busy_answers_are_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    # A throttling Kingdee answers every call of every worker with "retry": one line per interval, the next one
    # saying how many were held back.
    from connector.kingdee.poster import retry_log
    from connector.ops import OUTAGES, ThrottleFilter

    for f in retry_log.filters:  # earlier tests' retries (a real poster against a faulty sandbox) are forgotten
        if isinstance(f, ThrottleFilter):
            f.forget()
    every = OUTAGES.every_s
    OUTAGES.every_s = 3600.0
    try:
        with caplog.at_level("WARNING", logger="kingdee_cdc.poster.retry"):
            for _ in range(50):
                retry_log.warning("Kingdee asked to retry (%s); backing off", "MsgCode 14")
            OUTAGES.every_s = 0.0
            retry_log.warning("Kingdee asked to retry (%s); backing off", "MsgCode 14")
    finally:
        OUTAGES.every_s = every
    lines = [r.getMessage() for r in caplog.records if r.name == "kingdee_cdc.poster.retry"]
    assert len(lines) == 2 and "(49 more like it since the last one)" in lines[1]
