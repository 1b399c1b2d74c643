"""The ledger model: vouchers, entries and rejections — small immutable records, no I/O.

A ``Voucher`` is what Kingdee calls 凭证 (``GL_VOUCHER``): a header plus entries (分录) whose local-currency
debits equal credits. Reversals are red-ink (红字冲销): the same accounts and sides with negated amounts,
so original + reversal net to zero per account and dimension. A ``Rejection`` is a value, never an
exception: it names the reason code, the rule, the field and the offending value.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
import datetime as dt
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Final, NamedTuple

from connector.money import MONEY_CONTEXT, ZERO

KEY_VERSION: Final = "v2"


class Side(enum.StrEnum):
    """Debit (借方, Kingdee ``FDC`` 1) or credit (贷方, ``FDC`` -1)."""

    DEBIT = "debit"
    CREDIT = "credit"

    @property
    def fdc(self) -> int:
        return 1 if self is Side.DEBIT else -1


#: ``side.value`` without the enum property lookup (the digest asks per line)
_SIDE_TEXT: Final = {Side.DEBIT: "debit", Side.CREDIT: "credit"}


class VoucherKind(enum.StrEnum):
    ORIGINAL = "original"  #: posts a business change
    REVERSAL = "reversal"  #: red-ink reversal (红字冲销) of an earlier voucher
    DELTA = "delta"  #: the difference after an update (``on_update: post_delta``)
    SUMMARY = "summary"  #: a summary voucher (汇总凭证): the frozen sum of a summary's contributions


class RowRef(NamedTuple):
    """Identity of a source row, independent of the topic it was read from."""

    system: str  #: Debezium ``topic.prefix`` / logical server name (``pos``, ``payroll`` …)
    table: str  #: ``db.schema.table``
    pk: str  #: canonical JSON of the primary-key columns, e.g. ``{"id":42}``

    def __str__(self) -> str:
        return f"{self.system}:{self.table}:{self.pk}"


class SourceRef(NamedTuple):
    """Which change produced a voucher: the row, where in the source log, and the operation."""

    row: RowRef
    position: str  #: ``SourceInfo.position`` (LSN / binlog / GTID) — never a Kafka offset
    op: str  #: Debezium op code
    ts_ms: int | None = None  #: source database commit time


#: how a NUL character is shown in stored text (as JSON writes it): PostgreSQL text and jsonb refuse NUL
NUL_SHOWN_AS: Final = "\\u0000"


def storable(text: str) -> str:
    """``text`` as PostgreSQL can store it: a NUL character (which MySQL text may hold) shown as ``\\u0000``."""
    return text.replace("\x00", NUL_SHOWN_AS) if "\x00" in text else text


def canonical_pk(values: Mapping[str, Any]) -> str:
    """Stable text for primary-key values (sorted keys, no whitespace, decimals and dates as text)."""
    if len(values) == 1:  # the usual single integer id, without the JSON encoder (same output)
        ((k, v),) = values.items()
        if type(v) is int and k.isidentifier():
            return f'{{"{k}":{v}}}'
    return json.dumps({k: values[k] for k in sorted(values)}, separators=(",", ":"), default=str,
                      ensure_ascii=False)


def voucher_key(row: RowRef, rule_id: str, role: str, content: str, after: str = "") -> str:
    """Deterministic voucher key from the *source row* and its *accounting content* — never the log position.

    ``role`` is ``post`` or ``delta``; ``content`` is ``content_digest`` of the voucher; ``after`` is the key
    of the row's previous voucher under this rule (``""`` for its first). So a row read again with unchanged
    content (a second snapshot, an incremental snapshot, a replay) maps to the key already journaled and
    posts nothing, while A → B → A gives three distinct keys. The key goes into the Kingdee voucher so an
    ambiguous post can be looked up before it is retried.
    """
    text = "|".join((KEY_VERSION, row.system, row.table, row.pk, rule_id, role, content, after))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def reversal_key(original_key: str) -> str:
    """A voucher is reversed at most once: the reversal's key depends on the original's key alone."""
    return hashlib.sha256(f"{KEY_VERSION}|reverse|{original_key}".encode()).hexdigest()[:32]


def content_digest(v: Voucher) -> str:
    """A digest of what the voucher books: book, date (as the rule gave it, before any period policy moved
    it), voucher group and the lines (account, side, amounts, currency, rate, dimensions, quantity) — not the
    explanations, not the source position."""
    lines = []
    for e in v.entries:
        dims = e.dimensions
        rate = e.rate
        cacheable = rate.is_finite() and rate  # equal non-zero numbers normalise alike; zero shows its sign
        rate_text = _NORMALIZED.get(rate) if cacheable else None
        if rate_text is None:
            rate_text = str(rate.normalize())
            if cacheable and len(_NORMALIZED) < 4096:
                _NORMALIZED[rate] = rate_text
        q = e.quantity
        lines.append((e.account, _SIDE_TEXT[e.side], str(e.amount), str(e.amount_for), e.currency, rate_text,
                      tuple(dims.items()) if len(dims) < 2 else tuple(sorted(dims.items())),
                      None if q is None else str(q.normalize())))
    lines.sort()
    # repr((book, date, group, lines)), written out: the same text, without repr's per-container overhead.
    # Amounts, rates and quantities are str() of Decimals, whose repr is the text in single quotes.
    reprs = _REPRS
    texts = []
    for a, side, amount, amount_for, cur, rate_text, dim_items, qty_text in lines:
        texts.append("(%s, '%s', '%s', '%s', %s, '%s', %s, %s)" % (
            reprs.get(a) or _text_repr(a), side, amount, amount_for, reprs.get(cur) or _text_repr(cur), rate_text,
            repr(dim_items) if dim_items else "()", "None" if qty_text is None else f"'{qty_text}'"))
    text = "(%s, '%s', %s, [%s])" % (
        _text_repr(v.book), (v.original_date or v.date).isoformat(), _text_repr(v.group), ", ".join(texts))
    if v.summary is not None:  # the summary it goes into is part of what it books (same text as before otherwise)
        text += repr(v.summary.parts)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _text_repr(value: object) -> str:
    """``repr(value)``, memoised for text (account numbers, currencies, books and groups repeat)."""
    if type(value) is not str:
        return repr(value)
    found = _REPRS.get(value)
    if found is None:
        found = repr(value)
        if len(_REPRS) < 65536:
            _REPRS[value] = found
    return found


_REPRS: Final[dict[str, str]] = {}

#: ``str(rate.normalize())`` by rate (a handful of distinct rates; zero, whose sign shows, is never cached)
_NORMALIZED: Final[dict[Decimal, str]] = {}


#: close policies of ``summarize:``: a time of day after the voucher date, a fixed interval, or on command
CLOSE_DAILY: Final = re.compile(r"^(?P<h>\d{1,2}):(?P<m>\d{2}) next day(?: in the book's time zone)?$")
CLOSE_EVERY: Final = re.compile(r"^every (?P<n>\d{1,4}) minutes?$")
CLOSE_ON_COMMAND: Final = "on command"


class SummaryRef(NamedTuple):
    """The summary (汇总凭证) a voucher contributes to, from its rule's ``summarize:`` block.

    ``parts`` are the rule's key parts in order, ``(name, value)``; the value ``None`` stands for the
    voucher's own ``book`` or ``date`` (resolved by ``summary_parts``, after any period policy moved the
    date). ``close`` is the rule's close policy text, ``late`` its late policy and ``tz`` the book's time
    zone (IANA name), so the journal can time the close without the rules.
    """

    parts: tuple[tuple[str, str | None], ...]
    close: str
    late: str = "adjust"
    tz: str = "Asia/Shanghai"

    def daily_close(self) -> tuple[int, int] | None:
        """(hour, minute) of a ``"HH:MM next day …"`` close."""
        m = CLOSE_DAILY.match(self.close)
        return (int(m["h"]), int(m["m"])) if m else None

    def every_minutes(self) -> int | None:
        m = CLOSE_EVERY.match(self.close)
        return int(m["n"]) if m else None


def summary_parts(v: Voucher) -> tuple[tuple[str, str], ...]:
    """The summary key of a contribution with ``book`` and ``date`` filled in from the voucher."""
    assert v.summary is not None
    out = []
    for name, value in v.summary.parts:
        if value is None:
            value = v.book if name == "book" else v.date.isoformat()
        out.append((name, value))
    return tuple(out)


def summary_group(v: Voucher) -> str:
    """The identity of the summaries a contribution belongs to: its rule, book, voucher date, voucher group,
    data centre and summary key. Contributions of one group share one voucher header, so their sum is one
    voucher; ``book`` and ``date`` are part of it whether or not ``by:`` names them."""
    text = repr((KEY_VERSION, "summary", v.rule_id, v.book, v.date.isoformat(), v.group, v.data_centre or "",
                 summary_parts(v)))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def summary_voucher_key(group: str, seq: int) -> str:
    """A summary voucher's key: its group and close sequence (one summary voucher per summary, ever)."""
    return hashlib.sha256(f"{KEY_VERSION}|summary|{group}|{seq}".encode()).hexdigest()[:32]


_NO_DIMENSIONS: Final[Mapping[str, str]] = MappingProxyType({})


class Entry(NamedTuple):
    """One voucher line (分录, ``FEntity`` row).

    ``amount`` is in the book's local currency (本位币, ``FDEBIT``/``FCREDIT``); ``amount_for`` in the
    transaction currency (原币, ``FAMOUNTFOR``) with ``rate`` = local / original. Both are negative on a
    red-ink reversal. A ``NamedTuple`` rather than a frozen dataclass: equally immutable, and about five
    times cheaper to build, which matters at tens of thousands of lines per second (docs/benchmarks.md).
    """

    account: str  #: account number (科目编码, ``FACCOUNTID.FNumber``)
    side: Side
    amount: Decimal  #: local currency
    explanation: str = ""  #: 摘要 ``FEXPLANATION``
    currency: str = "CNY"  #: ISO code of the transaction currency (mapped to Kingdee numbers on output)
    rate_type: str = "HLTX01_SYS"  #: 汇率类型 ``FEXCHANGERATETYPE``
    rate: Decimal = Decimal(1)  #: 汇率 ``FEXCHANGERATE``
    amount_for: Decimal = ZERO  #: transaction currency 原币金额
    quantity: Decimal | None = None  #: ``FQty``
    price: Decimal | None = None  #: ``FPrice``
    unit: str | None = None  #: ``FUnitId.FNumber``
    settle_type: str | None = None  #: 结算方式 ``FSettleTypeID``
    settle_no: str | None = None  #: 结算号 ``FSETTLENO``
    #: 核算维度: slot → value number, slots ``FLEX4`` supplier … ``FLEX13``, or custom ``FF100002``.
    dimensions: Mapping[str, str] = _NO_DIMENSIONS

    @property
    def debit(self) -> Decimal:
        return self.amount if self.side is Side.DEBIT else ZERO

    @property
    def credit(self) -> Decimal:
        return self.amount if self.side is Side.CREDIT else ZERO

    def negated(self) -> Entry:
        return self._replace(amount=-self.amount, amount_for=-self.amount_for,
                             quantity=-self.quantity if self.quantity is not None else None)


class Voucher(NamedTuple):
    """A balanced general-ledger voucher for one account book.

    A ``NamedTuple`` (immutable; change with ``_replace``): one is built per change event on the hot path,
    and a frozen dataclass of this size cost three times as much to construct (docs/benchmarks.md).
    """

    key: str  #: deterministic idempotency key (see ``voucher_key``)
    book: str  #: 账簿 number (``FAccountBookID``)
    date: dt.date  #: 日期 ``FDate`` (decides the accounting period)
    group: str  #: 凭证字 number (``FVOUCHERGROUPID``), e.g. ``PRE001`` = 记
    explanation: str  #: header explanation (also the default entry explanation)
    entries: tuple[Entry, ...]
    source: SourceRef
    rule_id: str
    rule_version: str
    kind: VoucherKind = VoucherKind.ORIGINAL
    reverses: str | None = None  #: key of the voucher this one reverses (REVERSAL / DELTA)
    business_date: dt.date | None = None  #: 业务日期 ``FBUSDATE``
    data_centre: str | None = None  #: Kingdee data centre (账套) serving the book
    attachments: int = 0  #: 附件数 ``FATTACHMENTS``
    #: Set by limit checks: post as a draft for a human instead of auto-submit/audit.
    review_reasons: tuple[str, ...] = ()
    #: The date the rule gave when the book's period policy moved the voucher into an open period
    #: (``date`` is then the first day of that period); ``None`` when not moved.
    original_date: dt.date | None = None
    #: Opening state recorded at a source's cutover: in force (later changes reverse it) but never posted.
    opening: bool = False
    #: The summary this voucher contributes to (rules with ``summarize:``); ``None``: posted on its own.
    summary: SummaryRef | None = None

    def total(self, side: Side) -> Decimal:
        """Exact local-currency total of one side (38-digit money context, never rounded)."""
        total = ZERO
        for e in self.entries:
            if e.side is side:
                total = MONEY_CONTEXT.add(total, e.amount)
        return total

    @property
    def debit_total(self) -> Decimal:
        return self.total(Side.DEBIT)

    @property
    def credit_total(self) -> Decimal:
        return self.total(Side.CREDIT)

    @property
    def needs_review(self) -> bool:
        return bool(self.review_reasons)


REVERSAL_PREFIX: Final = "冲销 "


def reverse(original: Voucher, *, by: SourceRef, on: dt.date | None = None, opening: bool = False) -> Voucher:
    """The red-ink reversal (红字冲销) of ``original`` caused by change ``by`` (an update, a delete or a
    re-read with other content): same accounts and sides, negated amounts; the header and every line
    explanation say 冲销 (the poster adds the original's Kingdee number). Dated ``on`` — by default the
    original's date, never earlier (the period policy may move it later)."""
    when = on or original.date
    if when < original.date:
        when = original.date
    return original._replace(
        key=reversal_key(original.key),
        kind=VoucherKind.REVERSAL,
        reverses=original.key,
        date=when,
        original_date=None,
        explanation=f"{REVERSAL_PREFIX}{original.explanation}"[:500],
        entries=tuple(e._replace(amount=-e.amount, amount_for=-e.amount_for,
                                 quantity=-e.quantity if e.quantity is not None else None,
                                 explanation=f"{REVERSAL_PREFIX}{e.explanation or original.explanation}"[:500])
                      for e in original.entries),
        source=by,
        review_reasons=(),
        opening=opening,
    )


class ReasonCode(enum.StrEnum):
    """Why a change was rejected. Stable strings: they reach the feedback topic and dashboards."""

    NO_RULE = "NO_RULE"
    NO_PRIMARY_KEY = "NO_PRIMARY_KEY"
    MISSING_FIELD = "MISSING_FIELD"
    EXPRESSION_ERROR = "EXPRESSION_ERROR"
    FLOAT_AMOUNT = "FLOAT_AMOUNT"
    INVALID_AMOUNT = "INVALID_AMOUNT"
    INVALID_DATE = "INVALID_DATE"
    EMPTY_VOUCHER = "EMPTY_VOUCHER"
    UNKNOWN_BOOK = "UNKNOWN_BOOK"
    UNKNOWN_ACCOUNT = "UNKNOWN_ACCOUNT"
    NON_LEAF_ACCOUNT = "NON_LEAF_ACCOUNT"
    FROZEN_ACCOUNT = "FROZEN_ACCOUNT"
    MISSING_DIMENSION = "MISSING_DIMENSION"
    CURRENCY_NOT_ALLOWED = "CURRENCY_NOT_ALLOWED"
    NO_EXCHANGE_RATE = "NO_EXCHANGE_RATE"
    CURRENCY_INCONSISTENT = "CURRENCY_INCONSISTENT"
    CLOSED_PERIOD = "CLOSED_PERIOD"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    UNBALANCED = "UNBALANCED"
    LINES_MISSING = "LINES_MISSING"
    UNKNOWN_CURRENCY = "UNKNOWN_CURRENCY"  #: not in the book's currency table
    INVALID_RATE = "INVALID_RATE"  #: an exchange rate of 0 or below
    RATE_OUT_OF_BAND = "RATE_OUT_OF_BAND"  #: a source rate too far from the rate table's
    TOO_MANY_DECIMALS = "TOO_MANY_DECIMALS"  #: more decimals than the currency has (USD 113.005)
    NEGATIVE_AMOUNT = "NEGATIVE_AMOUNT"  #: a negative amount on a rule that does not allow it
    AMOUNT_OUT_OF_RANGE = "AMOUNT_OUT_OF_RANGE"  #: an implausibly large amount, held for review
    UNMATCHED = "UNMATCHED"  #: a row of a table whose every row must post matched no rule
    INVALID_TEXT = "INVALID_TEXT"  #: a voucher text with a character Kingdee and the journal cannot store (NUL)


@dataclass(frozen=True, slots=True, kw_only=True)
class Rejection:
    """A change that cannot become a voucher, with everything needed to fix the rule or the data."""

    code: ReasonCode
    message: str
    rule: str | None = None  #: rule id (``None`` when no rule matched)
    field: str | None = None  #: rule field path or event field path, e.g. ``entries[2].amount``
    value: str | None = None  #: the offending value, as text
    source: SourceRef | None = None
    voucher_key: str | None = None  #: key of the voucher that failed the checks, if one was built

    def __post_init__(self) -> None:
        # Message and value often quote source data, and they are stored and sent (PostgreSQL text and jsonb,
        # the feedback topic): a NUL character there would make the whole batch fail to journal.
        for name in ("message", "field", "value"):
            text = getattr(self, name)
            if text is not None and "\x00" in text:
                object.__setattr__(self, name, storable(text))

    def __str__(self) -> str:
        where = f" [{self.rule}{'/' + self.field if self.field else ''}]" if self.rule else ""
        return f"{self.code.value}{where}: {self.message}"
