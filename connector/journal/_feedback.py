"""Feedback events: what the upstream system is told about one of its changes, built in one place.

A ``FeedbackEvent`` becomes an outbox row in the same transaction as the state it reports (the journal owns
the outbox); the relay (``connector.feedback``) sends it on. Its JSON payload carries every field of
``schemas/feedback.event.avsc`` except ``event_id``, ``status`` and ``ts_ms`` (outbox columns the relay adds),
with one difference kept for existing consumers: the schema's ``note`` is the payload's ``reason``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, NamedTuple

import msgspec

from connector.events import KafkaCoordinates
from connector.journal._status import FeedbackStatus
from connector.ledger import Rejection, Voucher, VoucherKind


_ENCODER: Final = msgspec.json.Encoder()


def _to_json(obj: Any) -> str:
    return _ENCODER.encode(obj).decode()


#: JSON text of journal payloads (outbox, audit detail): compact, non-ASCII kept as is (explanations and reasons
#: are often Chinese); msgspec (decision 0009), several times faster than the standard library's encoder
to_json: Final[Callable[[Any], str]] = _to_json


class FeedbackSource(NamedTuple):
    """The source row (and change) an event is about."""

    system: str  #: also picks the feedback topic, ``<prefix>.<system>``
    table: str | None
    pk: str | None
    position: str | None
    op: str | None

    @classmethod
    def of_voucher(cls, v: Voucher) -> FeedbackSource:
        s = v.source
        return cls(s.row.system, s.row.table, s.row.pk, s.position, s.op)


class FeedbackReason(NamedTuple):
    code: str
    message: str
    rule: str | None = None
    field: str | None = None
    value: str | None = None

    @classmethod
    def of_rejection(cls, r: Rejection) -> FeedbackReason:
        return cls(r.code.value, r.message, r.rule, r.field, r.value)


class KingdeeRef(NamedTuple):
    """The Kingdee voucher a journal voucher became."""

    id: str | None
    number: str | None
    group_no: str | None


class OutboxRow(NamedTuple):
    """A row of the journal's ``outbox`` table."""

    event_id: str
    source_system: str
    message_key: str
    status: FeedbackStatus
    payload: str  #: JSON


class FeedbackEvent(NamedTuple):
    """One feedback event (immutable). Build it with ``for_voucher`` or ``for_record``; ``to_outbox_row`` is
    its outbox row. (A NamedTuple rather than a frozen dataclass: the pipeline builds one per voucher.)"""

    #: stable across re-sends (consumers de-duplicate on it): ``<voucher key>:<status>`` or
    #: ``<group>:<topic>:<partition>:<offset>:<status>`` for a record without vouchers
    event_id: str
    status: FeedbackStatus
    #: the Kafka message key: the source row's key, so a document's statuses stay in order
    message_key: str
    source: FeedbackSource
    kafka: KafkaCoordinates | None = None
    voucher_key: str | None = None
    kind: VoucherKind | None = None
    reverses: str | None = None
    kingdee: KingdeeRef | None = None
    reasons: tuple[FeedbackReason, ...] = ()
    reversed_by: str | None = None  #: REVERSED: the key of the reversal that reversed ``voucher_key``
    note: str | None = None  #: why a voucher was journaled outside the stream (``REMAPPED``)

    @classmethod
    def for_voucher(cls, status: FeedbackStatus, v: Voucher, *, source: FeedbackSource | None = None,
                    kafka: KafkaCoordinates | None = None, kingdee: KingdeeRef | None = None,
                    reasons: tuple[FeedbackReason, ...] = (), note: str | None = None) -> FeedbackEvent:
        """What became of voucher ``v`` (``source``: as the consumed record named it; default the voucher's)."""
        src = source or FeedbackSource.of_voucher(v)
        return cls(event_id=f"{v.key}:{status}", status=status, message_key=src.pk or v.source.row.pk, source=src,
                   kafka=kafka, voucher_key=v.key, kind=v.kind, reverses=v.reverses, kingdee=kingdee,
                   reasons=reasons, note=note)

    @classmethod
    def for_record(cls, status: FeedbackStatus, *, group: str, kafka: KafkaCoordinates, source: FeedbackSource,
                   reasons: tuple[FeedbackReason, ...]) -> FeedbackEvent:
        """A consumed record that made no voucher (rejected, dead-lettered); keyed by its row, or by its
        coordinates when it has no key."""
        k = kafka
        return cls(event_id=f"{group}:{k.topic}:{k.partition}:{k.offset}:{status}", status=status,
                   message_key=source.pk or f"{k.topic}:{k.partition}:{k.offset}", source=source, kafka=kafka,
                   reasons=reasons)

    def reversed_original(self) -> FeedbackEvent:
        """For a posted reversal's event: the event that tells the original it was reversed."""
        assert self.reverses is not None and self.voucher_key is not None
        return self._replace(event_id=f"{self.reverses}:{FeedbackStatus.REVERSED}", status=FeedbackStatus.REVERSED,
                             voucher_key=self.reverses, reversed_by=self.voucher_key)

    def payload(self) -> dict[str, object]:
        s, k, kd = self.source, self.kafka, self.kingdee
        return {
            "status": self.status.value,
            "source": {"system": s.system, "table": s.table, "pk": s.pk, "position": s.position, "op": s.op},
            "kafka": {"topic": k.topic, "partition": k.partition, "offset": k.offset} if k is not None else None,
            "voucher_key": self.voucher_key, "kind": self.kind.value if self.kind is not None else None,
            "reverses": self.reverses,
            "kingdee": {"id": kd.id, "number": kd.number, "group_no": kd.group_no} if kd is not None else None,
            "reasons": [{"code": r.code, "message": r.message, "rule": r.rule, "field": r.field, "value": r.value}
                        for r in self.reasons],
            "reversed_by": self.reversed_by, "reason": self.note,
        }

    def to_outbox_row(self) -> OutboxRow:
        return OutboxRow(self.event_id, self.source.system, self.message_key, self.status, to_json(self.payload()))
