"""Row state: what is known of source rows before a change is mapped — pure values, no I/O.

The mapper reads a row's vouchers in force through ``PriorLookup``; the journal answers it for a batch
(``BatchState``: the changes already journaled and the rows' vouchers, as an ``InMemoryLedger``), previews,
golden tests and benchmarks fill an ``InMemoryLedger`` themselves.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from connector.ledger._model import RowRef, Voucher, VoucherKind


class PriorLookup(Protocol):
    """What is known about a source row under a rule."""

    def active(self, row: RowRef, rule_id: str) -> Sequence[Voucher]:
        """The vouchers currently in force (not reversed), oldest first."""
        ...

    def latest(self, row: RowRef, rule_id: str) -> str | None:
        """Key of the row's newest non-reversal voucher under the rule, in force or not (``None``: none yet)."""
        ...


class _NoPrior:
    def active(self, row: RowRef, rule_id: str) -> Sequence[Voucher]:
        return ()

    def latest(self, row: RowRef, rule_id: str) -> str | None:
        return None


NO_PRIOR: PriorLookup = _NoPrior()


class Mapped(Protocol):
    """A mapping result, as far as row state cares: the vouchers it made (``connector.mapping.MapResult``)."""

    @property
    def vouchers(self) -> Sequence[Voucher]: ...


class InMemoryLedger:
    """A ``PriorLookup`` that remembers what it was given and what was mapped since."""

    def __init__(self) -> None:
        self._active: dict[tuple[RowRef, str], list[Voucher]] = {}
        self._latest: dict[tuple[RowRef, str], str] = {}
        self.posted: list[Voucher] = []

    def active(self, row: RowRef, rule_id: str) -> Sequence[Voucher]:
        return tuple(self._active.get((row, rule_id), ()))

    def latest(self, row: RowRef, rule_id: str) -> str | None:
        return self._latest.get((row, rule_id))

    def seed(self, vouchers: Iterable[Voucher]) -> None:
        """Start from vouchers already in force (e.g. read from the journal), oldest first."""
        for v in vouchers:
            self._active.setdefault((v.source.row, v.rule_id), []).append(v)
            self._latest[(v.source.row, v.rule_id)] = v.key

    def seed_latest(self, latest: Mapping[tuple[RowRef, str], str]) -> None:
        """The newest voucher key per row and rule, including reversed ones (read from the journal)."""
        self._latest.update(latest)

    def apply(self, result: Mapped) -> None:
        """Take a mapped change's vouchers into the state: reversals end what they reverse, others are in force."""
        for v in result.vouchers:
            self.posted.append(v)
            slot = self._active.setdefault((v.source.row, v.rule_id), [])
            if v.kind is VoucherKind.REVERSAL:
                slot[:] = [x for x in slot if x.key != v.reverses]
            else:
                slot.append(v)
                self._latest[(v.source.row, v.rule_id)] = v.key

    def copy(self) -> InMemoryLedger:
        """An independent copy: applying to it leaves this one as it is."""
        other = InMemoryLedger()
        other._active = {k: list(v) for k, v in self._active.items()}
        other._latest = dict(self._latest)
        other.posted = list(self.posted)
        return other


class SourceChange(NamedTuple):
    """One change of a source row: the row, where in the source log, and the operation (never a Kafka offset)."""

    row: RowRef
    position: str  #: ``SourceInfo.position`` (LSN / binlog / GTID)
    op: str  #: Debezium op code


@dataclass(frozen=True, slots=True)
class BatchState:
    """What the journal knows about a batch's rows before it is mapped."""

    #: changes that already produced vouchers (replays, redeliveries) → those vouchers' keys
    done: Mapping[SourceChange, tuple[str, ...]] = field(default_factory=dict)
    #: the rows' vouchers in force and each row's newest voucher key per rule
    rows: InMemoryLedger = field(default_factory=InMemoryLedger)
