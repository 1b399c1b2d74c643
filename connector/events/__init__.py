"""Debezium change events: the typed model and the one place where bytes become events.

Downstream code sees only ``ChangeEvent`` / ``Tombstone`` / ``TransactionMarker`` / ``DecodeFailure``;
no raw dicts travel past this package.
"""

from connector.events._decode import (
    Decoder,
    DecoderLimits,
    FixedSchemas,
    RegistrySchemas,
    SchemaNotFound,
    SchemaSource,
)
from connector.events._model import (
    ChangeEvent,
    Decoded,
    DecodeFailure,
    KafkaCoordinates,
    LogicalMessage,
    Op,
    SourceInfo,
    Tombstone,
    TransactionInfo,
    TransactionMarker,
    transaction_group,
)
from connector.events._types import decimal_from_unscaled, decode_base64_decimal
from connector.events._json import to_jsonable, event_to_json

__all__ = [
    "ChangeEvent", "Decoded", "DecodeFailure", "Decoder", "DecoderLimits", "FixedSchemas", "KafkaCoordinates",
    "LogicalMessage", "Op", "RegistrySchemas", "SchemaNotFound", "SchemaSource", "SourceInfo", "Tombstone",
    "TransactionInfo", "TransactionMarker", "decimal_from_unscaled", "decode_base64_decimal", "event_to_json",
    "to_jsonable", "transaction_group",
]
