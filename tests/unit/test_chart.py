"""BD_Account rows → accounts: flags in the forms Kingdee answers with, and malformed answers."""

from __future__ import annotations

from typing import Any

import pytest

from connector.kingdee._client import KingdeeError
from connector.kingdee.chart import fetch_accounts
from connector.ledger import Side


class Rows:
    def __init__(self, rows: list[list[Any]]) -> None:
        self.rows = rows
        self.calls: list[tuple[int, int]] = []

    def execute_bill_query(self, form_id: str, field_keys: Any, filter_string: str = "", *, order: str = "",
                           limit: int = 2000, start_row: int = 0) -> list[list[Any]]:
        assert form_id == "BD_Account"
        self.calls.append((start_row, limit))
        return self.rows[start_row:start_row + limit]


def test_rows_become_accounts() -> None:
    src = Rows([["1001", "库存现金", 1, True, "A"], ["2202", "应付账款", "-1", "false", "A"],
                ["6602", "管理费用", 1, "0", "A"], ["1002", "银行存款", 1, 1, "B"], ["", "blank", 1, 1, "A"]])
    got = fetch_accounts(src, page=2)
    assert set(got) == {"1001", "2202", "6602", "1002"}
    assert got["2202"].direction is Side.CREDIT and got["1001"].direction is Side.DEBIT
    assert got["1001"].leaf and not got["2202"].leaf and not got["6602"].leaf and got["1002"].leaf
    assert got["1002"].frozen and not got["1001"].frozen
    assert src.calls == [(0, 2), (2, 2), (4, 2)]  # stops after the short page


@pytest.mark.parametrize("row, needle", [(["1001", "x", "D", True, "A"], "FDC='D'"), (["1001", "x"], "unexpected row")])
def test_malformed_rows_are_named(row: list[Any], needle: str) -> None:
    with pytest.raises(KingdeeError) as e:
        fetch_accounts(Rows([row]))
    assert needle in str(e.value)
