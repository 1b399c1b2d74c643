"""Audit rows: who did what to which voucher, with a JSON detail (append-only, enforced by the database)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from connector.journal._feedback import to_json
from connector.journal._status import AuditAction


class AuditRow(NamedTuple):
    """A row of the journal's ``audit`` table."""

    actor: str  #: ``pipeline``, ``poster``, ``cli``, ``replay --repost-changed`` …
    action: AuditAction
    voucher_key: str | None
    detail: str  #: JSON

    @classmethod
    def of(cls, actor: str, action: AuditAction, voucher_key: str | None, detail: Mapping[str, object]) -> AuditRow:
        return cls(actor, action, voucher_key, to_json(detail))
