"""TransactionGrouper: which records wait for their source transaction, and when they go (pure, fake clock)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from connector.events import ChangeEvent, Decoded, KafkaCoordinates, TransactionInfo, TransactionMarker
from connector.mapping import load_rules
from connector.transactions import TransactionGrouper
from tests.unit.helpers import RULES, event, sale

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "rules" / "pos-sale-by-line.yaml"


@dataclass
class Msg:
    """The three accessors of confluent_kafka.Message the grouper uses."""

    t: str
    p: int
    o: int

    def topic(self) -> str | None:
        return self.t

    def partition(self) -> int | None:
        return self.p

    def offset(self) -> int:
        return self.o


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


class Feed:
    """Records on topics ``orders`` (1 partition), ``lines`` (2), ``pos.transaction`` and ``other``."""

    def __init__(self) -> None:
        self.offsets: dict[tuple[str, int], int] = {}

    def _msg(self, topic: str, part: int) -> Msg:
        o = self.offsets.get((topic, part), 0)
        self.offsets[(topic, part)] = o + 1
        return Msg(topic, part, o)

    def header(self, tx: int | None, order_id: int, order: int = 1) -> tuple[Msg, ChangeEvent]:
        m = self._msg("orders", 0)
        ev = event("pos", "sales_order", after=sale(id=order_id), key={"id": order_id})
        return m, self._tx(ev, m, tx, order)

    def line(self, tx: int | None, line_id: int, part: int, order: int) -> tuple[Msg, ChangeEvent]:
        m = self._msg("lines", part)
        ev = event("pos", "sales_order_line", after={"id": line_id, "order_id": 1}, key={"id": line_id})
        return m, self._tx(ev, m, tx, order)

    def other(self, tx: int | None) -> tuple[Msg, ChangeEvent]:
        m = self._msg("other", 0)
        return m, self._tx(event("purchasing", "purchase_invoice", after={"id": 1}), m, tx, 1)

    def end(self, tx: int, **counts: int) -> tuple[Msg, TransactionMarker]:
        m = self._msg("pos.transaction", 0)
        return m, TransactionMarker(status="END", id=f"{tx}:99", event_count=sum(counts.values()),
                                    data_collections={f"public.{t}": n for t, n in counts.items()},
                                    kafka=KafkaCoordinates(topic=m.t, partition=m.p, offset=m.o))

    @staticmethod
    def _tx(ev: ChangeEvent, m: Msg, tx: int | None, order: int) -> ChangeEvent:
        info = TransactionInfo(id=f"{tx}:{order}", total_order=order, data_collection_order=order) if tx else None
        return replace(ev, transaction=info, kafka=KafkaCoordinates(topic=m.t, partition=m.p, offset=m.o))


@pytest.fixture()
def grouper(tmp_path: Path) -> tuple[TransactionGrouper[Msg], Clock]:
    target = tmp_path / "rules"
    shutil.copytree(RULES, target, ignore=shutil.ignore_patterns("golden", "pos-sale.yaml"))
    shutil.copy(EXAMPLE, target / "pos-sale-by-line.yaml")
    clock = Clock()
    return TransactionGrouper[Msg](load_rules(target), hold_s=30, max_held=100, clock=clock), clock


def coords(items: list[Any]) -> list[tuple[str, int, int]]:
    return [(m.t, m.p, m.o) for m, _ in items]


def test_records_that_never_wait_pass_straight_through(grouper: tuple[TransactionGrouper[Msg], Clock]) -> None:
    g, _ = grouper
    f = Feed()
    items: list[tuple[Msg, Decoded]] = [f.header(None, 1), f.other(7), f.end(7, purchase_invoice=1)]  # no tx block / ungrouped tables
    g.add(items)
    r = g.release()
    assert coords(r.items) == coords(items) and r.groups == {} and g.held == 0


def test_a_transaction_is_held_until_its_end_marker_counts_are_met(grouper: tuple[TransactionGrouper[Msg], Clock]) -> None:
    g, _ = grouper
    f = Feed()
    g.add([f.line(5, 11, 1, order=3), f.header(5, 1, order=1)])
    assert g.release().items == [] and g.held == 2
    g.add([f.end(5, sales_order=1, sales_order_line=2)])
    assert g.release().items == []  # END says two lines: one is still missing
    g.add([f.line(5, 12, 0, order=2)])
    r = g.release()
    assert len(r.items) == 4 and g.held == 0
    (members,) = r.groups.values()
    # data events in the transaction's own order (header, line 12, line 11), not partition by partition
    assert [r.items[i][1].transaction.total_order for i in members] == [1, 2, 3]  # type: ignore[union-attr]


def test_a_held_record_holds_its_partition_and_only_its_partition(grouper: tuple[TransactionGrouper[Msg], Clock]) -> None:
    g, _ = grouper
    f = Feed()
    g.add([f.header(5, 1), f.header(None, 2), f.other(None)])
    r = g.release()
    assert coords(r.items) == [("other", 0, 0)]  # order 2 waits behind order 1 on the orders partition
    g.add([f.end(5, sales_order=1)])
    assert coords(g.release().items) == [("orders", 0, 0), ("orders", 0, 1), ("pos.transaction", 0, 0)]


def test_a_complete_transaction_behind_an_incomplete_one_waits_everywhere(
        grouper: tuple[TransactionGrouper[Msg], Clock]) -> None:
    g, _ = grouper
    f = Feed()
    # tx 5's header is first on the orders partition; tx 6 is complete but its header stands behind it, so
    # its line on another partition (and its END) must not go either: the transaction goes whole or not at all
    g.add([f.header(5, 1), f.header(6, 2), f.line(6, 21, 1, order=2), f.end(6, sales_order=1, sales_order_line=1)])
    assert g.release().items == [] and g.held == 4
    g.add([f.end(5, sales_order=1)])
    r = g.release()
    assert g.held == 0 and len(r.groups) == 2 and len(r.items) == 5


def test_an_incomplete_transaction_goes_ungrouped_after_hold_s(grouper: tuple[TransactionGrouper[Msg], Clock]) -> None:
    g, clock = grouper
    f = Feed()
    g.add([f.header(5, 1), f.line(5, 11, 0, order=2)])
    clock.now = 29.9
    assert g.release().items == []
    clock.now = 30.0
    r = g.release()
    assert r.expired == 1 and r.groups == {} and len(r.items) == 2
    g.add([f.end(5, sales_order=1, sales_order_line=2), f.line(5, 12, 1, order=3)])  # late: they pass
    assert len(g.release().items) == 2 and g.held == 0


def test_dropped_partitions_are_counted_again_when_read_again(grouper: tuple[TransactionGrouper[Msg], Clock]) -> None:
    g, _ = grouper
    f = Feed()
    line = f.line(5, 11, 1, order=2)
    g.add([f.header(5, 1), line, f.end(5, sales_order=1, sales_order_line=2)])
    g.drop([("lines", 1)])  # re-sought: its records come again
    g.add([line])  # …the same record, read again: still one of two lines
    assert g.release().items == []
    g.add([f.line(5, 12, 0, order=3)])
    r = g.release()
    assert len(r.items) == 4 and len(next(iter(r.groups.values()))) == 3


def test_a_forgotten_release_is_grouped_again(grouper: tuple[TransactionGrouper[Msg], Clock]) -> None:
    g, _ = grouper
    f = Feed()
    items: list[tuple[Msg, Decoded]] = [f.header(5, 1), f.end(5, sales_order=1)]
    g.add(items)
    assert len(g.release().groups) == 1
    g.add(items[:1])  # a redelivery after the transaction was journaled: it does not wait
    assert len(g.release().items) == 1
    g.forget([("pos", "5")])  # the batch was fenced: the records are read again and grouped again
    g.add(items)
    assert len(g.release().groups) == 1


def test_memory_bound_releases_the_oldest_transaction_ungrouped(grouper: tuple[TransactionGrouper[Msg], Clock]) -> None:
    g, clock = grouper
    f = Feed()
    g.add([f.header(5, 1)])
    clock.now = 1
    g.add([f.line(6, 100 + i, 1, order=i + 1) for i in range(100)])
    r = g.release()
    assert r.expired == 1 and coords(r.items) == [("orders", 0, 0)] and g.held == 100
