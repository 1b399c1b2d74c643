"""Kingdee K/3 Cloud: WebAPI client, idempotent voucher poster, and a compatible sandbox server."""

from connector.kingdee._client import (
    ItemResult,
    KingdeeAmbiguous,
    KingdeeBusinessError,
    KingdeeClient,
    KingdeeCredentials,
    KingdeeError,
    KingdeeRetryable,
    KingdeeSessionLost,
)

__all__ = ["ItemResult", "KingdeeAmbiguous", "KingdeeBusinessError", "KingdeeClient", "KingdeeCredentials",
           "KingdeeError", "KingdeeRetryable", "KingdeeSessionLost"]
