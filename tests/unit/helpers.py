"""Shared helpers of the pure tests: Debezium-shaped events of the sample tables, rule directories, results."""

from __future__ import annotations

import shutil
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

from connector.events import ChangeEvent
from connector.ledger import ReasonCode
from connector.mapping import MapResult
from connector.mapping._golden import golden_event, load_table_schemas

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "rules"
SCHEMAS = load_table_schemas(ROOT / "schemas")

SALE: dict[str, Any] = {"id": 1, "order_no": "SO1", "channel": "STORE", "company_code": "100", "customer_code": None,
                        "order_date": "2026-11-12", "currency": "CNY", "net_amount": "100.00",
                        "tax_amount": "13.00", "gross_amount": "113.00", "points_deduction": "0.00",
                        "payment_method": "CASH", "status": "PAID"}


def sale(**changes: Any) -> dict[str, Any]:
    return {**SALE, **changes}


def event(system: str, table: str, op: str = "c", *, after: dict[str, Any] | None = None,
          before: dict[str, Any] | None = None, key: dict[str, Any] | None = None, lsn: int = 1,
          ts_ms: int = 1794535200000, mode: str | None = None, snapshot: str = "false") -> ChangeEvent:
    """A change event as Debezium's JSON converter would send it, decoded by the real decoder. ``mode``
    (precise | string | double) encodes the table's decimal columns (from schemas/) that way."""
    def fix(img: dict[str, Any] | None) -> dict[str, Any] | None:
        if img is None:
            return None
        return {k: date.fromisoformat(v) if k.endswith("_date") and isinstance(v, str) and v[:4].isdigit() else v
                for k, v in img.items()}
    return golden_event({"op": op, "source": {"system": system, "table": table, "lsn": lsn, "ts_ms": ts_ms,
                                              "snapshot": snapshot},
                         "key": key if key is not None else {"id": (after or before or {}).get("id", 1)},
                         "after": fix(after), "before": fix(before)},
                        row_type=SCHEMAS.get((system, table)) if mode else None, mode=mode)


def rules_with(tmp_path: Path, **files: str) -> Path:
    """The shipped rules (without golden files) plus/overridden by extra files."""
    target = tmp_path / "rules"
    shutil.copytree(RULES, target, ignore=shutil.ignore_patterns("golden"))
    for name, text in files.items():
        (target / f"{name}.yaml").write_text(text, encoding="utf-8")
    return target


def only_rejection(result: MapResult) -> ReasonCode:
    assert not result.vouchers, result
    assert result.rejections, result
    return result.rejections[0].code


def dec(text: str) -> Decimal:
    return Decimal(text)
