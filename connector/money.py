"""Money is ``decimal.Decimal`` from the wire to the database; this module is the one way in.

``to_money`` is the only constructor the rest of the package uses for amounts. It refuses binary floats
(they cannot represent 0.1) unless the caller explicitly opts in for that field, and refuses NaN and
infinities always. Arithmetic runs in a local context with enough precision for any ledger amount so
that a global ``decimal.getcontext()`` change elsewhere cannot round our sums.
"""

from __future__ import annotations

import decimal
from decimal import Decimal
from typing import Final

from connector.errors import MoneyError

ZERO: Final = Decimal(0)
#: No ledger amount (or rate) reaches this; larger values are data errors, refused before any arithmetic.
MAX_MONEY: Final = Decimal(10) ** 18
CENT: Final = Decimal("0.01")

#: Context for all money arithmetic: 38 digits is NUMERIC(38, x) territory, exact for any real ledger.
MONEY_CONTEXT: Final = decimal.Context(prec=38, rounding=decimal.ROUND_HALF_EVEN, traps=[
    decimal.InvalidOperation, decimal.DivisionByZero, decimal.Overflow,
])


def to_money(value: object, *, field: str = "", allow_float: bool = False) -> Decimal:
    """Convert ``value`` to a finite ``Decimal`` without any silent loss.

    Accepts ``Decimal``, ``int`` (not ``bool``) and numeric strings (surrounding blanks and thousands
    separators ``,`` are refused: they are ambiguous in a ledger). A ``float`` raises ``MoneyError``
    unless ``allow_float`` is true, in which case its shortest repr is used (``0.1`` → ``Decimal('0.1')``),
    which is what the upstream system most likely meant.
    """
    where = f" (field {field!r})" if field else ""
    if isinstance(value, bool):
        raise MoneyError(f"a boolean is not an amount{where}: {value!r}")
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, int):
        result = Decimal(value)
    elif isinstance(value, float):
        if not allow_float:
            raise MoneyError(
                f"binary float {value!r} used as money{where}; Debezium decimal.handling.mode=double loses "
                "cents. Use precise or string mode upstream, or opt in with allow_float for this field")
        result = Decimal(repr(value))
    elif isinstance(value, str):
        text = value.strip()
        if text != value or not text or "," in text or "_" in text:
            raise MoneyError(f"not a plain decimal number{where}: {value!r}")
        try:
            result = Decimal(text)
        except decimal.InvalidOperation:
            raise MoneyError(f"not a decimal number{where}: {value!r}") from None
    else:
        raise MoneyError(f"cannot use {type(value).__name__} as money{where}: {value!r}")
    if not result.is_finite():
        raise MoneyError(f"amount must be finite{where}: {value!r}")
    if abs(result) >= MAX_MONEY:
        raise MoneyError(f"amount {value!r} is beyond the largest amount a ledger line holds (10^18){where}")
    return result


def quantize(amount: Decimal, places: int = 2, *, rounding: str = decimal.ROUND_HALF_UP) -> Decimal:
    """Round ``amount`` to ``places`` decimals with an explicit rounding mode (default half-up, as on invoices)."""
    step = STEPS.get(places)
    if step is None:
        step = Decimal(1).scaleb(-places)
    return _QUANTIZE(amount, step, rounding, MONEY_CONTEXT)  # positional: keywords cost more than the rounding


#: ``Decimal(1).scaleb(-places)``, the quantum of ``places`` decimals, for the usual numbers of decimals.
STEPS: Final = {p: Decimal(1).scaleb(-p) for p in range(0, 7)}
_QUANTIZE: Final = Decimal.quantize
