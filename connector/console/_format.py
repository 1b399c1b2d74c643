"""How the console writes numbers, money, times and ages — pure functions of their inputs.

Money is formatted from ``Decimal`` only (a float is refused, like everywhere in the package), with the currency's
minor units (ISO 4217: ``JPY`` 0, ``KWD`` 3, most 2) and thousands separators. Display never rounds: an amount
with more significant decimals than its currency's minor units (a foreign-currency line kept to 4 places) shows
them all, so what the console shows is what the journal holds.
"""

from __future__ import annotations

from datetime import datetime, timedelta, tzinfo
from decimal import Decimal
from typing import Final, Literal

Lang = Literal["zh", "en"]

#: ISO 4217 minor units that are not 2
_MINOR_UNITS: Final = {"JPY": 0, "KRW": 0, "VND": 0, "CLP": 0, "ISK": 0, "UGX": 0, "XAF": 0, "XOF": 0,
                       "BHD": 3, "IQD": 3, "JOD": 3, "KWD": 3, "LYD": 3, "OMR": 3, "TND": 3}
#: symbols shown before the amount; other currencies show their code after it
_SYMBOLS: Final = {"CNY": "¥", "RMB": "¥", "JPY": "JP¥", "USD": "US$", "EUR": "€", "GBP": "£", "HKD": "HK$",
                   "TWD": "NT$", "SGD": "S$", "KRW": "₩", "AUD": "A$", "CAD": "C$", "MOP": "MOP$"}


def minor_units(currency: str) -> int:
    """Decimal places of ``currency`` (ISO 4217; 2 unless listed)."""
    return _MINOR_UNITS.get(currency.upper(), 2)


def format_decimal(amount: Decimal, places: int = 2) -> str:
    """``1234567.5`` → ``1,234,567.50``: at least ``places`` decimals, more when the value has them (never rounds)."""
    if not isinstance(amount, Decimal):
        raise TypeError(f"amounts are formatted from Decimal only, got {type(amount).__name__} {amount!r}")
    if not amount.is_finite():
        raise ValueError(f"not a finite amount: {amount}")
    exponent = amount.normalize().as_tuple().exponent
    shown = max(places, -exponent if isinstance(exponent, int) and exponent < 0 else 0)
    text = f"{abs(amount):,.{shown}f}"
    return f"-{text}" if amount < 0 else text


def format_money(amount: Decimal, currency: str | None) -> str:
    """``Decimal("-1234.5"), "CNY"`` → ``-¥1,234.50``; an unknown symbol shows the code (``1,234.50 CHF``); no
    currency (a book the console does not know) shows the bare amount with two places."""
    if currency is None:
        return format_decimal(amount, 2)
    code = currency.upper()
    text = format_decimal(amount, minor_units(code))
    symbol = _SYMBOLS.get(code)
    if symbol is None:
        return f"{text} {code}"
    return f"-{symbol}{text[1:]}" if text.startswith("-") else f"{symbol}{text}"


def format_count(n: int | None, cap: int | None = None) -> str:
    """``12345`` → ``12,345``; a count that reached ``cap`` (a bounded count) → ``100,000+``."""
    if n is None:
        return "—"
    return f"{cap:,}+" if cap is not None and n >= cap else f"{n:,}"


def format_time(at: datetime | None, tz: tzinfo) -> str:
    """``2026-12-02 13:37:51`` in the console's time zone; an em dash for none."""
    return "—" if at is None else at.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S")


_UNITS: Final = {"en": ("s", "min", "h", "d"), "zh": ("秒", "分钟", "小时", "天")}


def format_age(seconds: float | None, lang: Lang) -> str:
    """``95`` → ``1 min 35 s`` / ``1 分钟 35 秒``: the two largest units."""
    if seconds is None:
        return "—"
    s, m, h, d = _UNITS[lang]
    total = int(max(0.0, seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, d), (hours, h), (minutes, m), (secs, s)]
    while len(parts) > 1 and parts[0][0] == 0:
        parts.pop(0)
    return " ".join(f"{n} {unit}" for n, unit in parts[:2])


def age_seconds(at: datetime | None, now: datetime) -> float | None:
    return None if at is None else max(0.0, (now - at) / timedelta(seconds=1))
