"""The chart of accounts fetched from Kingdee (``BD_Account``) and merged with the rules' ledger file.

Kingdee is the authority for what it stores on the account itself: number, name, balance direction
(``FDC``), leaf flag (``FISDETAIL``) and forbidden status (``FForbidStatus`` ``B`` = frozen). What the
WebAPI does not expose in a documented field — the dimensions an account requires and its currency rules —
stays in ``ledger.yaml``. An account the file knows but Kingdee does not is dropped from the merged chart
(events using it are rejected ``UNKNOWN_ACCOUNT``) and reported as drift.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from connector.kingdee._client import KingdeeError
from connector.ledger import Account, LedgerContext, Side

FIELDS: Final = ("FNumber", "FName", "FDC", "FISDETAIL", "FForbidStatus")
PAGE: Final = 2000


class _Queries(Protocol):
    def execute_bill_query(self, form_id: str, field_keys: list[str] | tuple[str, ...], filter_string: str = "", *,
                           order: str = "", limit: int = 2000, start_row: int = 0) -> list[list[Any]]: ...


def _flag(v: Any) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("1", "true", "t", "y", "yes")
    return bool(v)


def fetch_accounts(client: _Queries, *, filter_string: str = "FDocumentStatus = 'C'", page: int = PAGE
                   ) -> dict[str, Account]:
    """Every audited account from ``BD_Account`` (paged). Raises ``KingdeeError`` on a malformed answer."""
    out: dict[str, Account] = {}
    start = 0
    while True:
        rows = client.execute_bill_query("BD_Account", list(FIELDS), filter_string, order="FNumber",
                                         limit=page, start_row=start)
        for row in rows:
            if not isinstance(row, list) or len(row) != len(FIELDS):
                raise KingdeeError(f"BD_Account query returned an unexpected row: {row!r}",
                                   operation="ExecuteBillQuery")
            number, name, dc, detail, forbid = row
            if not number:
                continue
            try:
                direction = Side.CREDIT if int(dc) == -1 else Side.DEBIT
            except (TypeError, ValueError):
                raise KingdeeError(f"BD_Account {number}: balance direction FDC={dc!r} is not 1 or -1",
                                   operation="ExecuteBillQuery") from None
            out[str(number)] = Account(number=str(number), name=str(name or ""), direction=direction,
                                       leaf=_flag(detail), frozen=str(forbid or "A").upper() == "B")
        if len(rows) < page:
            return out
        start += page


@dataclass(frozen=True, slots=True)
class ChartDrift:
    """Differences between ``ledger.yaml`` and Kingdee, for the operator to fix in the file."""

    only_in_file: tuple[str, ...] = ()
    only_in_kingdee: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()  #: "1001: leaf True → False" style descriptions

    @property
    def empty(self) -> bool:
        return not (self.only_in_file or self.only_in_kingdee or self.changed)

    def lines(self) -> list[str]:
        out = [f"only in ledger.yaml (dropped; entries on it are rejected UNKNOWN_ACCOUNT): {n}"
               for n in self.only_in_file]
        out += [f"only in Kingdee (used with no required dimensions or currency rule): {n}"
                for n in self.only_in_kingdee]
        return out + [f"changed in Kingdee: {c}" for c in self.changed]


def merge_chart(ledger: LedgerContext, fetched: Mapping[str, Account]) -> tuple[LedgerContext, ChartDrift]:
    """The ledger context with Kingdee's accounts; dimensions and currency rules carried over from the file."""
    merged: dict[str, Account] = {}
    changed: list[str] = []
    for number, k in fetched.items():
        f = ledger.accounts.get(number)
        if f is None:
            merged[number] = k
            continue
        for attr in ("name", "direction", "leaf", "frozen"):
            fv, kv = getattr(f, attr), getattr(k, attr)
            if fv != kv:
                changed.append(f"{number} {attr}: {getattr(fv, 'value', fv)} → {getattr(kv, 'value', kv)}")
        merged[number] = dataclasses.replace(k, required_dimensions=f.required_dimensions, currencies=f.currencies)
    drift = ChartDrift(only_in_file=tuple(sorted(set(ledger.accounts) - set(fetched))),
                       only_in_kingdee=tuple(sorted(set(fetched) - set(ledger.accounts))),
                       changed=tuple(changed))
    return dataclasses.replace(ledger, accounts=merged), drift
