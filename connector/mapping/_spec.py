"""The rule file format: one pydantic model per ``kind`` (``rule``, ``ignore``, ``lookups``, ``ledger``,
``golden``), strict (unknown keys are errors) and documented field by field in docs/mapping.md."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date
from decimal import Decimal
from typing import Any, Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from connector.ledger._checks import dimension_slot
from connector.ledger._model import CLOSE_DAILY, CLOSE_EVERY, CLOSE_ON_COMMAND


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AccountCase(_Model):
    when: str
    account: str


class AccountSpec(_Model):
    """``account:`` either a literal number, ``{expr: …}``, ``{lookup: table, key: …}`` or ``{cases: …}``."""

    expr: str | None = None
    lookup: str | None = None
    key: str | None = None
    default: str | None = None
    cases: list[AccountCase] | None = None

    @model_validator(mode="after")
    def _one_form(self) -> AccountSpec:
        forms = [self.expr is not None, self.lookup is not None, self.cases is not None]
        if sum(forms) != 1:
            raise ValueError("give exactly one of expr, lookup (+key) or cases (+default)")
        if self.lookup is not None and self.key is None:
            raise ValueError("lookup needs key: the expression to look up")
        return self


class EntrySpec(_Model):
    side: Literal["debit", "credit"]
    account: str | AccountSpec
    amount: str
    local_amount: str | None = None
    explanation: str | None = None
    when: str | None = None
    currency: str | None = None
    rate: str | None = None
    dimensions: dict[str, str] = Field(default_factory=dict)
    quantity: str | None = None
    price: str | None = None
    unit: str | None = None
    settle_type: str | None = None
    settle_no: str | None = None
    #: ``lines``: one entry per line of the document (rules with ``lines:`` only), ``line`` in scope
    for_each: Literal["lines"] | None = None
    #: a negative amount is a data error unless allowed (here or for the whole rule)
    allow_negative: bool | None = None

    @field_validator("dimensions")
    @classmethod
    def _dims(cls, v: dict[str, str]) -> dict[str, str]:
        return {dimension_slot(k): e for k, e in v.items()}


OpCode = Literal["c", "r", "u", "d", "t", "m"]


def _default_ops() -> list[OpCode]:
    return ["c", "r", "u", "d"]


class MatchSpec(_Model):
    system: str
    table: str
    ops: list[OpCode] = Field(default_factory=_default_ops)
    when: str | None = None


class VoucherSpec(_Model):
    book: str
    date: str
    group: str = "PRE001"
    explanation: str
    business_date: str | None = None
    data_centre: str | None = None
    attachments: int = 0
    currency: str | None = None
    rate: str | None = None
    rate_type: str = "HLTX01_SYS"


class LinesSpec(_Model):
    """``lines:`` — the document's line table: its changes in the *same source transaction* as the header
    (Debezium transaction metadata) are mapped together with the header into one voucher."""

    table: str
    system: str | None = None  #: default: the header's system
    #: which line events belong to this header (``line`` and ``row`` in scope); default: all of the table's
    join: str | None = None
    #: a matched header with no lines in its transaction is rejected (LINES_MISSING) instead of posted
    required: bool = True


class RoundingSpec(_Model):
    account: str
    max: Decimal = Decimal("0.05")
    explanation: str = "汇兑尾差 rounding difference"

    @field_validator("max", mode="before")
    @classmethod
    def _exact(cls, v: Any) -> Any:
        if isinstance(v, float):
            return str(v)  # YAML 0.05 → "0.05", never a binary float
        return v




class SummarizeSpec(_Model):
    """``summarize:`` — every event's contribution (its voucher lines) goes into the open summary voucher
    (汇总凭证) of its key; at close the summary is frozen, checked and posted as one voucher.

    ``by``: the summary key — ``book``, ``date`` (the voucher date) and expressions of the row
    (``row.store_code``; name an expression with ``{name: expr}``). ``close``: ``"02:00 next day in the book's
    time zone"`` (any HH:MM), ``"every 15 minutes"`` or ``"on command"`` (``kingdee-cdc summaries close``).
    ``late``: a contribution for a key whose summary is already closed is posted as its own adjustment voucher
    (``adjust``, default) or goes into a new summary of the same key (``next_summary``).
    """

    by: list[str | dict[str, str]] = Field(min_length=1)
    close: str
    explanation: str
    late: Literal["adjust", "next_summary"] = "adjust"

    @field_validator("close")
    @classmethod
    def _close(cls, v: str) -> str:
        text = v.strip()
        daily = CLOSE_DAILY.match(text)
        if daily and (int(daily["h"]) > 23 or int(daily["m"]) > 59):
            raise ValueError(f"{v!r}: not a time of day")
        if not (daily or CLOSE_EVERY.match(text) or text == CLOSE_ON_COMMAND):
            raise ValueError(f"{v!r}: expected \"HH:MM next day in the book's time zone\", \"every N minutes\" "
                             "or \"on command\"")
        return text

    @field_validator("by")
    @classmethod
    def _names(cls, v: list[str | dict[str, str]]) -> list[str | dict[str, str]]:
        seen: set[str] = set()
        for item in v:
            if isinstance(item, dict):
                if len(item) != 1:
                    raise ValueError(f"{item!r}: name one expression per item ({{name: expr}})")
                name = next(iter(item))
            else:
                name = summary_key_name(item)
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", name):
                raise ValueError(f"summary key {item!r}: give it a name ({{store: row.store_code}})")
            if name in seen:
                raise ValueError(f"summary key name {name!r} used twice")
            seen.add(name)
        return v

    def daily_close(self) -> tuple[int, int] | None:
        m = CLOSE_DAILY.match(self.close)
        return (int(m["h"]), int(m["m"])) if m else None

    def every_minutes(self) -> int | None:
        m = CLOSE_EVERY.match(self.close)
        return int(m["n"]) if m else None


def summary_key_name(item: str) -> str:
    """``book`` → book, ``date`` → date, ``row.store_code`` → store_code (the last field of a plain path)."""
    text = item.strip()
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*", text):
        return text.rsplit(".", 1)[-1]
    return ""


class RuleSpec(_Model):
    kind: Literal["rule"]
    id: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    version: str | int = 1
    description: str = ""
    match: MatchSpec
    key_columns: list[str] = Field(default_factory=list)
    on_update: Literal["reverse_and_repost", "post_delta", "ignore"] = "reverse_and_repost"
    #: no longer needed: binary floats (Debezium double mode) are read exactly via their shortest repr
    float_fields: list[str] = Field(default_factory=list)
    skip_zero_lines: bool = True
    #: ``every_row``: every row of the table must post — a row that matches no rule of the table is rejected
    #: (UNMATCHED) instead of skipped
    coverage: Literal["matched_rows", "every_row"] = "matched_rows"
    #: amounts below zero are rejected (NEGATIVE_AMOUNT) unless the rule or the entry allows them
    allow_negative: bool = False
    voucher: VoucherSpec
    entries: list[EntrySpec] = Field(min_length=2)
    rounding: RoundingSpec | None = None
    lines: LinesSpec | None = None
    #: post one summary voucher per key instead of one voucher per document (汇总凭证)
    summarize: SummarizeSpec | None = None

    @model_validator(mode="after")
    def _for_each_needs_lines(self) -> RuleSpec:
        if self.lines is None and any(e.for_each for e in self.entries):
            raise ValueError("entries with for_each: lines need a lines: section naming the line table")
        return self


class IgnoredTableSpec(_Model):
    system: str
    table: str
    reason: str = Field(min_length=1)


class IgnoreSpec(_Model):
    """Tables whose changes post nothing on purpose (e.g. order lines whose header carries the totals)."""

    kind: Literal["ignore"]
    tables: list[IgnoredTableSpec] = Field(min_length=1)


class LookupsSpec(_Model):
    kind: Literal["lookups"]
    lookups: dict[str, dict[str, Any]] = Field(default_factory=dict)
    #: rates[currency][rate_type][YYYY-MM-DD] = rate
    rates: dict[str, dict[str, dict[date, str | int | Decimal]]] = Field(default_factory=dict)

    @field_validator("rates", mode="before")
    @classmethod
    def _no_float_rates(cls, v: Any) -> Any:
        if isinstance(v, dict):
            for cur, types in v.items():
                for typ, series in (types or {}).items():
                    for day, r in (series or {}).items():
                        if isinstance(r, float):
                            raise ValueError(f"rates.{cur}.{typ}.{day}: write the rate as a string ('{r}') so it is "
                                             "exact")
        return v

    @field_validator("rates")
    @classmethod
    def _positive_rates(cls, v: dict[str, dict[str, dict[date, str | int | Decimal]]]
                        ) -> dict[str, dict[str, dict[date, str | int | Decimal]]]:
        for cur, types in v.items():
            for typ, series in types.items():
                for day, r in series.items():
                    try:
                        ok = Decimal(str(r)).is_finite() and Decimal(str(r)) > 0
                    except ArithmeticError:
                        ok = False
                    if not ok:
                        raise ValueError(f"rates.{cur}.{typ}.{day}: {r!r} is not an exchange rate above 0")
        return v


class AccountFile(_Model):
    number: str
    name: str
    direction: Literal["debit", "credit"] = "debit"
    leaf: bool = True
    frozen: bool = False
    dimensions: list[str] = Field(default_factory=list)
    currencies: list[str] | None = None


class BookFile(_Model):
    number: str
    name: str = ""
    local_currency: str = "CNY"
    data_centre: str | None = None
    open_periods: list[str] | None = None
    closed_periods: list[str] = Field(default_factory=list)
    currency_numbers: dict[str, str] = Field(default_factory=lambda: {"CNY": "PRE001"})
    auto_submit: bool = False
    auto_audit: bool = False
    #: IANA time zone of the book: datetimes with a zone and ts_ms-derived dates become its local date
    timezone: str = "Asia/Shanghai"
    #: where vouchers dated in a closed period go (corrections and late documents alike)
    reverse_in: Literal["first_open_period", "original_period"] = "first_open_period"
    #: how far (as a fraction) a rate from the source may be from the rate table's
    rate_band: Decimal = Field(Decimal("0.05"), gt=0, lt=1)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r} (an IANA name such as Asia/Shanghai)") from None
        return v

    @field_validator("rate_band", mode="before")
    @classmethod
    def _exact_band(cls, v: Any) -> Any:
        return str(v) if isinstance(v, float) else v


class CutoverFile(_Model):
    """``cutover: {pos: {date: 2026-11-01}}`` or ``{lsn: 123456}``: history before it is opening state."""

    on: date | None = Field(None, alias="date")
    lsn: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _one(self) -> CutoverFile:
        if (self.on is None) == (self.lsn is None):
            raise ValueError("give exactly one of date or lsn")
        return self


class PermissionFile(_Model):
    books: list[str] | None = None
    accounts: list[str] = Field(default_factory=lambda: ["*"])
    deny_accounts: list[str] = Field(default_factory=list)


class LimitsFile(_Model):
    review_above: Decimal | None = None
    zscore: float | None = None
    zscore_dimension: str = "supplier"
    zscore_window: int = 200
    zscore_min_samples: int = 20


class LedgerSpec(_Model):
    kind: Literal["ledger"]
    accounts: list[AccountFile] = Field(default_factory=list)
    books: list[BookFile] = Field(default_factory=list)
    permissions: dict[str, PermissionFile] = Field(default_factory=dict)
    #: ``permissions: {default: allow}`` lets systems without an entry post anywhere; the default is deny
    default_permission: Literal["deny", "allow"] | None = None
    limits: dict[str, LimitsFile] = Field(default_factory=dict)
    dimension_labels: dict[str, str] = Field(default_factory=dict)
    #: decimals per currency where ISO 4217's minor units are not what the books use
    currency_places: dict[str, int] = Field(default_factory=dict)
    #: more digits than this (integer + decimals) is an implausible amount, rejected for review
    max_amount_digits: int = Field(15, ge=3, le=30)
    cutover: dict[str, CutoverFile] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _permission_default(cls, data: Any) -> Any:
        """``permissions: {default: allow, pos: {...}}``: the ``default`` key is the policy, not a system."""
        if isinstance(data, Mapping) and isinstance(data.get("permissions"), Mapping) \
                and isinstance(data["permissions"].get("default"), str):
            perms = dict(data["permissions"])
            data = {**data, "permissions": perms, "default_permission": perms.pop("default")}
        return data

    @field_validator("currency_places")
    @classmethod
    def _places(cls, v: dict[str, int]) -> dict[str, int]:
        for cur, n in v.items():
            if not 0 <= n <= 6:
                raise ValueError(f"currency_places.{cur}: {n} decimals; expected 0 to 6")
        return v


class GoldenCase(_Model):
    name: str
    events: list[dict[str, Any]]
    expect: list[dict[str, Any]]
    #: run only in these Debezium decimal modes (default: all three where the table's schema is known)
    decimal_modes: list[Literal["precise", "string", "double"]] | None = None


class GoldenSpec(_Model):
    kind: Literal["golden"]
    cases: list[GoldenCase]


#: ``kind:`` → the model of that file
KINDS: dict[str, type[_Model]] = {"rule": RuleSpec, "ignore": IgnoreSpec, "lookups": LookupsSpec, "ledger": LedgerSpec,
                                  "golden": GoldenSpec}
