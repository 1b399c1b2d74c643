"""Normalised JSON output of decoded events (``kingdee-cdc events decode``): decimals as strings, times ISO-8601 UTC."""

from __future__ import annotations

import base64
import dataclasses
import enum
from collections.abc import Mapping
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

from connector.events._model import Decoded, DecodeFailure


def to_jsonable(v: Any) -> Any:
    """Convert decoded values to JSON-safe ones without losing precision."""
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, Decimal):
        return str(v)
    if isinstance(v, float):
        return v
    if isinstance(v, datetime):
        if v.tzinfo is not None:
            v = v.astimezone(UTC)
            return v.isoformat().replace("+00:00", "Z")
        return v.isoformat()
    if isinstance(v, (date, time)):
        return v.isoformat()
    if isinstance(v, (bytes, bytearray)):
        return base64.b64encode(bytes(v)).decode()
    if isinstance(v, enum.Enum):
        return v.value
    if isinstance(v, Mapping):
        return {str(k): to_jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, frozenset, set)):
        items = sorted(v) if isinstance(v, (frozenset, set)) else v
        return [to_jsonable(x) for x in items]
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: to_jsonable(getattr(v, f.name)) for f in dataclasses.fields(v)}
    return str(v)


def event_to_json(d: Decoded) -> dict[str, Any]:
    """One decode result as a JSON object with a ``kind`` discriminator."""
    kind = type(d).__name__
    body = to_jsonable(d)
    assert isinstance(body, dict)
    if isinstance(d, DecodeFailure):
        body.pop("raw_value", None)
        body.pop("raw_key", None)
        body["raw_value_bytes"] = len(d.raw_value or b"")
    if "headers" in body and not body["headers"]:
        body.pop("headers")
    return {"kind": kind, **body}
