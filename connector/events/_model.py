"""Typed results of decoding one Kafka record: the only shapes that travel downstream of ``events``.

Every value here is immutable and does no I/O. Row images (``before``/``after``/``key``) are plain dicts
with already-converted Python values (``Decimal`` for Connect decimals, ``date``/``datetime``/``time`` for
Debezium temporal types, ``bytes`` for binary columns); treat them as read-only.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

T = TypeVar("T")


class Op(enum.StrEnum):
    """Debezium ``op`` codes."""

    CREATE = "c"
    UPDATE = "u"
    DELETE = "d"
    READ = "r"  #: snapshot read of a pre-existing row
    TRUNCATE = "t"
    MESSAGE = "m"  #: PostgreSQL logical decoding message (pg_logical_emit_message)


@dataclass(frozen=True, slots=True, kw_only=True)
class KafkaCoordinates:
    """Where a record was read from. ``str()`` gives the ``topic[partition]@offset`` form used in every log line."""

    topic: str
    partition: int
    offset: int
    #: Kafka record timestamp (ms since epoch; CreateTime or LogAppendTime), when the broker gave one.
    timestamp_ms: int | None = None

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceInfo:
    """The Debezium ``source`` block: which database row changed and where in its log.

    Connector-specific position fields are ``None`` when the connector does not send them.
    """

    connector: str  #: ``postgresql``, ``mysql``, ``mariadb``, ``sqlserver`` …
    name: str  #: ``topic.prefix`` / logical server name: the identity of the source *system*
    db: str
    schema: str | None = None  #: PostgreSQL / SQL Server schema; MySQL has none
    table: str | None = None
    version: str | None = None  #: Debezium version that produced the event
    ts_ms: int | None = None  #: when the change happened in the source database
    #: ``true``/``first``/``last``/``incremental``/``false`` … (booleans are normalised to ``"true"``/``"false"``)
    snapshot: str = "false"
    # PostgreSQL
    lsn: int | None = None
    tx_id: int | None = None
    xmin: int | None = None
    sequence: str | None = None  #: stringified ``[last committed LSN, current LSN]``
    # MySQL / MariaDB
    file: str | None = None
    pos: int | None = None
    row: int | None = None
    gtid: str | None = None
    server_id: int | None = None
    thread: int | None = None
    query: str | None = None

    @property
    def table_id(self) -> str:
        """``db.schema.table`` (or ``db.table`` without a schema): the data collection, stable across topics."""
        db, schema, table = self.db, self.schema, self.table
        if db and schema and table:  # the usual case, without a generator (asked for every event)
            return f"{db}.{schema}.{table}"
        return ".".join(p for p in (db, schema, table) if p)

    @property
    def position(self) -> str:
        """A stable textual position of the change in the source log (never a Kafka offset).

        PostgreSQL: ``lsn:<lsn>`` (plus the txId); MySQL: GTID when present, else ``file:pos:row``;
        otherwise the source timestamp. Together with the table, primary key and op this identifies the
        change wherever it was replayed from.
        """
        if self.lsn is not None:
            return f"lsn:{self.lsn}" + (f"/tx:{self.tx_id}" if self.tx_id is not None else "")
        if self.file is not None and self.pos is not None:
            base = f"binlog:{self.file}:{self.pos}:{self.row or 0}"
            return f"gtid:{self.gtid}/{base}" if self.gtid else base
        if self.gtid:
            return f"gtid:{self.gtid}"
        return f"ts:{self.ts_ms}"

    @property
    def is_snapshot(self) -> bool:
        return self.snapshot not in ("false", "")


_PG_TX_ID: Final = re.compile(r"^(\d+):\d+$")


def transaction_group(tx_id: str) -> str:
    """The id that all events of one source transaction share.

    PostgreSQL's connector writes ``txId:lsn`` and computes it *per record*, so BEGIN, data events and END of
    one transaction carry different strings: group on the part before the colon. A MySQL GTID
    (``uuid:seq``) is already the same on every record of a transaction and is returned whole.
    """
    m = _PG_TX_ID.match(tx_id)
    return m.group(1) if m else tx_id


@dataclass(frozen=True, slots=True, kw_only=True)
class TransactionInfo:
    """The per-event ``transaction`` block (``provide.transaction.metadata=true``)."""

    id: str
    total_order: int
    data_collection_order: int

    @property
    def group(self) -> str:
        return transaction_group(self.id)


@dataclass(frozen=True, slots=True, kw_only=True)
class LogicalMessage:
    """Payload of an ``op: m`` event."""

    prefix: str
    content: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class ChangeEvent:
    """One row change captured by Debezium, decoded and typed.

    ``before`` is ``None`` for creates and snapshot reads, and may be ``None`` or key-only for updates and
    deletes depending on the table's REPLICA IDENTITY. ``after`` is ``None`` for deletes.
    """

    op: Op
    source: SourceInfo
    before: Mapping[str, Any] | None = None
    after: Mapping[str, Any] | None = None
    #: The Kafka record key (the row's primary key columns), ``None`` for keyless tables and truncates.
    key: Mapping[str, Any] | None = None
    #: Envelope ``ts_ms``: when Debezium processed the change (connector clock).
    ts_ms: int | None = None
    transaction: TransactionInfo | None = None
    message: LogicalMessage | None = None
    kafka: KafkaCoordinates | None = None
    headers: tuple[tuple[str, bytes | None], ...] = ()
    #: Paths (``after.amount``) of numeric fields that arrived as binary floats: unusable as money by default.
    float_fields: frozenset[str] = field(default_factory=frozenset)

    @property
    def row(self) -> Mapping[str, Any] | None:
        """The row image that describes the row: ``after``, or ``before`` for deletes."""
        return self.after if self.after is not None else self.before

    def where(self) -> str:
        """``topic[partition]@offset`` for log lines, or the source position when not read from Kafka."""
        return str(self.kafka) if self.kafka else f"{self.source.table_id}@{self.source.position}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Tombstone:
    """A record with a null value (sent after a delete for log compaction): carries no change."""

    key: Mapping[str, Any] | None
    kafka: KafkaCoordinates | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TransactionMarker:
    """A BEGIN or END event from the Debezium transaction topic."""

    status: str  #: ``BEGIN`` or ``END``
    id: str
    ts_ms: int | None = None
    event_count: int | None = None  #: END only
    data_collections: Mapping[str, int] = field(default_factory=dict)  #: END only: events per table
    kafka: KafkaCoordinates | None = None

    @property
    def group(self) -> str:
        return transaction_group(self.id)


@dataclass(frozen=True, slots=True, kw_only=True)
class DecodeFailure:
    """A record that could not be decoded: ready for the dead-letter path, never an exception.

    ``stage`` names what failed (``wire``, ``schema``, ``json``, ``envelope``, ``value``, ``key``,
    ``limits``) and ``error_class`` what kind of problem, so dead-letter headers, metrics and operators can
    group failures: ``RecordTooLarge``, ``NestingTooDeep``, ``NumberTooLong``, ``NotAvroOrJson``,
    ``TruncatedWireHeader``, ``NotUtf8``, ``InvalidJson``, ``NoSchemaRegistry``, ``UnknownSchemaId``,
    ``UnusableSchema``, ``MalformedConnectSchema``, ``AvroBodyMismatch``, ``NotAnEnvelope``, ``UnknownOp``,
    ``BadSourceBlock``, ``BadRowImage``, ``BadKey``, ``FieldTypeMismatch``, ``NotBase64``,
    ``DecimalOutOfRange``, ``DateOutOfRange``, ``BadTimestamp``. ``UnexpectedDecodeError`` means a decoder bug.
    """

    reason: str
    stage: str
    kafka: KafkaCoordinates | None
    raw_value: bytes | None
    raw_key: bytes | None = None
    headers: tuple[tuple[str, bytes | None], ...] = ()
    error_class: str = "DecodeError"

    def __post_init__(self) -> None:
        # The reason may quote the record; it is stored as PostgreSQL text, which refuses NUL characters.
        if "\x00" in self.reason:
            object.__setattr__(self, "reason", self.reason.replace("\x00", "\\u0000"))

    def __str__(self) -> str:
        where = str(self.kafka) if self.kafka else "<no coordinates>"
        return f"{where}: {self.stage}: {self.reason}"


Decoded = ChangeEvent | Tombstone | TransactionMarker | DecodeFailure


def slot_builder(cls: type[T]) -> Callable[..., T]:
    """A constructor of the frozen slots dataclass ``cls`` taking *every* field positionally, in declaration order,
    that sets the slots directly: the generated keyword ``__init__`` of a 19-field frozen dataclass costs about
    twice as much, and the decoder builds two such objects per record. The result is an ordinary instance
    (equal, hashable and frozen as ever)."""
    names = tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
    setters = tuple(vars(cls)[n].__set__ for n in names)
    new = object.__new__
    count = len(names)

    def build(*values: Any) -> T:
        if len(values) != count:
            raise TypeError(f"{cls.__name__} takes {count} field values, got {len(values)}")
        obj = new(cls)
        for set_value, value in zip(setters, values):
            set_value(obj, value)
        return obj
    return build
