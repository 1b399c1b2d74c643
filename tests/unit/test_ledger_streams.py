"""Property tests over random streams of business changes (Hypothesis): the ledger an accountant would accept.

A stream is a random sequence of creates, updates, deletes, re-snapshots (the same row read again with a new
log position, in any Debezium decimal mode) and period closes, on a few POS orders. After every stream:

* nothing is posted twice (every key once; at most one voucher in force per row);
* every voucher balances, so every book and period balances;
* every reversal nets its original to zero, per account, side and dimension;
* each row's net effect on the ledger equals the voucher its latest state gives (nothing for a deleted or
  unpaid order);
* nothing was dated in a period that was closed when it was booked, and no reversal predates its original.

The stream machinery (``stream_ledger``, ``check_ledger``) lives in tests/unit/helpers.py: the integration variant
runs the same streams through the real journal.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings

from connector.events import ChangeEvent
from connector.mapping import InMemoryLedger, Mapper, MapResult
from tests.unit.helpers import ABAB, Journaling, check_ledger, stream_ledger, streams


def in_memory() -> Journaling:
    ledger = InMemoryLedger()

    def journal(ev: ChangeEvent, mapper: Mapper) -> MapResult:
        result = mapper.map(ev, ledger)
        ledger.apply(result)
        return result
    return journal


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(ABAB)
@given(streams)
def test_random_streams_keep_the_ledger_right(ops: list[tuple[str, Any, Any]]) -> None:
    check_ledger(stream_ledger(ops, in_memory()))


def test_the_checks_catch_a_voucher_posted_twice() -> None:
    """The property's checks can fail: a journal that forgets what it holds (no prior vouchers) double-posts."""
    ops = [("write", 1, {"net": 10000, "tax": 1300, "points": 0, "method": "CASH", "channel": "STORE",
                         "day": date(2026, 11, 12), "paid": True, "currency": "CNY", "company": "100"}),
           ("resnapshot", 1, "string")]

    def forgetful(ev: ChangeEvent, mapper: Mapper) -> MapResult:
        return mapper.map(ev, InMemoryLedger())
    with pytest.raises(AssertionError, match="journaled twice|in force"):
        check_ledger(stream_ledger(ops, forgetful))
