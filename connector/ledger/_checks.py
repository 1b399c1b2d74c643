"""Accounting checks: an ordered registry of small named functions that return rejections as values.

``check_voucher`` runs every check in ``CHECKS`` order and the balance check last; the balance check
cannot be switched off. Limit checks (``REVIEWS``) never reject: they mark the voucher for human review
(posted as a draft, not auto-submitted). Everything a check needs is in ``LedgerContext`` — the chart of
accounts, books and periods, per-source permissions and limits — loaded from files or from Kingdee.
"""

from __future__ import annotations

import fnmatch
import functools
import math
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
import datetime as dt
from datetime import date
from decimal import Decimal, getcontext, setcontext
from typing import Final, Literal
from zoneinfo import ZoneInfo

from connector.ledger._model import ReasonCode, Rejection, Side, Voucher, VoucherKind, storable
from connector.money import CENT, MONEY_CONTEXT, ZERO

#: Standard 核算维度 slots of GL_VOUCHER (``FDetailID.FDETAILID__<slot>``) with their friendly names.
DIMENSION_SLOTS: Final[dict[str, str]] = {
    "supplier": "FLEX4", "department": "FLEX5", "customer": "FLEX6", "employee": "FLEX7",
    "material": "FLEX8", "expense_item": "FLEX9", "asset_type": "FLEX10", "organisation": "FLEX11",
    "material_group": "FLEX12", "customer_group": "FLEX13",
}
DIMENSION_LABELS: Final[dict[str, str]] = {
    "FLEX4": "供应商", "FLEX5": "部门", "FLEX6": "客户", "FLEX7": "员工", "FLEX8": "物料", "FLEX9": "费用项目",
    "FLEX10": "资产类别", "FLEX11": "组织机构", "FLEX12": "物料分组", "FLEX13": "客户分组",
}


def dimension_slot(name: str) -> str:
    """``supplier`` → ``FLEX4``; ``FLEX4``/``FF100002`` are returned unchanged; anything else → ``ValueError``."""
    if name in DIMENSION_SLOTS:
        return DIMENSION_SLOTS[name]
    upper = name.upper()
    if upper in DIMENSION_LABELS or (upper.startswith("FF") and upper[2:].isdigit()):
        return upper
    raise ValueError(f"unknown dimension {name!r}: use one of {', '.join(DIMENSION_SLOTS)}, FLEXn, or FF1000nn")


@dataclass(frozen=True, slots=True, kw_only=True)
class Account:
    """A chart-of-accounts entry (``BD_Account``)."""

    number: str
    name: str
    direction: Side = Side.DEBIT  #: normal balance side
    leaf: bool = True  #: only leaf (明细) accounts accept entries
    frozen: bool = False
    required_dimensions: frozenset[str] = frozenset()  #: slots that every entry must carry
    #: ISO codes allowed for foreign-currency accounting; ``None`` = any currency.
    currencies: frozenset[str] | None = None

    @property
    def label(self) -> str:
        return f"{self.number}-{self.name}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Book:
    """An account book (账簿) and the Kingdee data centre that holds it."""

    number: str
    name: str = ""
    local_currency: str = "CNY"
    data_centre: str | None = None
    #: Periods (``YYYY-MM``) accepting postings; ``None`` = every period not in ``closed_periods``.
    open_periods: frozenset[str] | None = None
    closed_periods: frozenset[str] = frozenset()
    #: ISO currency code → Kingdee currency number (``CNY`` → ``PRE001``): the book's currency table.
    currency_numbers: Mapping[str, str] = field(default_factory=lambda: {"CNY": "PRE001"})
    auto_submit: bool = False
    auto_audit: bool = False
    #: The book's time zone: instants (``ZonedTimestamp``, ``ts_ms``) become dates in it.
    timezone: ZoneInfo = field(default_factory=lambda: ZoneInfo("Asia/Shanghai"))
    #: Where a voucher whose date falls in a closed period goes — reversals, reposts and late documents
    #: alike: the first open period after it (红字冲销 in the current period, as accountants do), or its
    #: original period (then a closed period rejects it, CLOSED_PERIOD).
    reverse_in: Literal["first_open_period", "original_period"] = "first_open_period"
    #: A rate given by the source may differ from the rate table's by at most this fraction (0.05 = 5 %).
    rate_band: Decimal = Decimal("0.05")

    def period_open(self, period: str) -> bool:
        if period in self.closed_periods:
            return False
        return self.open_periods is None or period in self.open_periods

    def knows_currency(self, currency: str) -> bool:
        return currency == self.local_currency or currency in self.currency_numbers

    def first_open_on_or_after(self, day: date, *, months: int = 240) -> date | None:
        """``day`` if its period is open, else the first day of the first open period after it."""
        year, month = day.year, day.month
        for i in range(months):
            if self.period_open(f"{year:04d}-{month:02d}"):
                return day if i == 0 else date(year, month, 1)
            year, month = (year + 1, 1) if month == 12 else (year, month + 1)
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class Permission:
    """What one source system may post: books and account patterns (``fnmatch``: ``2211*``)."""

    system: str
    books: frozenset[str] | None = None  #: ``None`` = any book
    accounts: tuple[str, ...] = ("*",)
    deny_accounts: tuple[str, ...] = ()

    def allows_account(self, number: str) -> bool:
        return _allows(self.accounts, self.deny_accounts, number)


@functools.lru_cache(maxsize=65536)
def _allows(accounts: tuple[str, ...], deny: tuple[str, ...], number: str) -> bool:
    """Memoised: a chart has hundreds of accounts, every entry of every event asks."""
    return _patterns(accounts).match(number) is not None and (not deny or _patterns(deny).match(number) is None)


@functools.lru_cache(maxsize=1024)
def _patterns(patterns: tuple[str, ...]) -> re.Pattern[str]:
    """One compiled regex for a tuple of ``fnmatch`` patterns."""
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Review thresholds for one source system."""

    review_above: Decimal | None = None  #: voucher debit total above this → review
    zscore: float | None = None  #: |z| of the amount vs. recent amounts of the same counterparty above this → review
    zscore_dimension: str = "FLEX4"  #: counterparty dimension the pattern is tracked by (default supplier)
    zscore_window: int = 200
    zscore_min_samples: int = 20


class _Window:
    """A sliding window of amounts with running sums: O(1) mean and variance per observation."""

    __slots__ = ("values", "total", "squares")

    def __init__(self, size: int) -> None:
        self.values: deque[float] = deque(maxlen=size)
        self.total = 0.0
        self.squares = 0.0

    def push(self, x: float) -> None:
        if len(self.values) == self.values.maxlen:
            old = self.values[0]
            self.total -= old
            self.squares -= old * old
        self.values.append(x)
        self.total += x
        self.squares += x * x


class AmountHistory:
    """Recent voucher amounts per (system, counterparty): the only state the checks keep (bounded)."""

    def __init__(self) -> None:
        self._series: dict[tuple[str, str], _Window] = {}

    def zscore(self, key: tuple[str, str], amount: Decimal, *, window: int, min_samples: int) -> float | None:
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Window(window)
        # Statistics only (never money arithmetic): a float here cannot move a cent.
        x = float(amount)
        z = None
        n = len(series.values)
        if n >= min_samples:
            mean = series.total / n
            sd = math.sqrt(max(series.squares / n - mean * mean, 0.0))
            z = (x - mean) / sd if sd > 1e-9 * max(1.0, abs(mean)) else (0.0 if abs(x - mean) < 0.005 else math.inf)
        series.push(x)
        return z


@dataclass(slots=True, kw_only=True)
class LedgerContext:
    """Everything the checks consult. Loaded from the rules directory (``chart.yaml``) or from Kingdee."""

    accounts: Mapping[str, Account] = field(default_factory=dict)
    books: Mapping[str, Book] = field(default_factory=dict)
    permissions: Mapping[str, Permission] = field(default_factory=dict)
    limits: Mapping[str, Limits] = field(default_factory=dict)
    dimension_labels: Mapping[str, str] = field(default_factory=dict)  #: custom slot → 中文 name
    history: AmountHistory = field(default_factory=AmountHistory)
    #: Tolerance between ``amount`` and ``amount_for × rate`` (rounding of one line).
    rate_tolerance: Decimal = CENT
    #: A source system without an entry in ``permissions`` posts nothing (``deny``) unless the ledger file
    #: says ``permissions: {default: allow}``.
    default_permission: Literal["deny", "allow"] = "deny"
    #: Decimals per currency (ISO 4217 minor units plus the ledger's ``currency_places``); 2 when not listed.
    currency_places: Mapping[str, int] = field(default_factory=dict)
    #: Amounts with more digits than this (integer + decimals) are implausible and held for review:
    #: 15 digits is 10^13 in a 2-decimal currency — also the limit below which a double is exact.
    max_amount_digits: int = 15
    #: Per source system: where history ends (``Cutover``); earlier rows are opening state, not posted.
    cutover: Mapping[str, Cutover] = field(default_factory=dict)
    _max: dict[str, Decimal] = field(default_factory=dict, repr=False, compare=False)

    def label(self, slot: str) -> str:
        return self.dimension_labels.get(slot) or DIMENSION_LABELS.get(slot, slot)

    def places(self, currency: str) -> int:
        return self.currency_places.get(currency, 2)

    def max_amount(self, currency: str) -> Decimal:
        """The smallest implausible amount in ``currency`` (10^(max_amount_digits − places))."""
        found = self._max.get(currency)
        if found is None:
            found = self._max[currency] = Decimal(10) ** (self.max_amount_digits - self.places(currency))
        return found


@dataclass(frozen=True, slots=True, kw_only=True)
class Cutover:
    """Where a source system's history ends when kingdee-cdc takes over from an earlier process.

    ``date``: snapshot rows (``op r``) dated before it are recorded as opening state — in force, so later
    updates and deletes reverse them, but never posted (the ledger already has them). ``lsn``: every change
    with a source LSN below it is history (snapshot rows carry the snapshot's LSN).
    """

    date: dt.date | None = None
    lsn: int | None = None


Check = Callable[[Voucher, LedgerContext], list[Rejection]]


def _rej(v: Voucher, code: ReasonCode, message: str, field_: str | None = None, value: object = None) -> Rejection:
    return Rejection(code=code, message=message, rule=v.rule_id, field=field_,
                     value=None if value is None else str(value), source=v.source, voucher_key=v.key)


def check_entries_present(v: Voucher, ctx: LedgerContext) -> list[Rejection]:
    out: list[Rejection] = []
    if len(v.entries) < 2:
        out.append(_rej(v, ReasonCode.EMPTY_VOUCHER,
                   f"a voucher needs at least one debit and one credit line, got {len(v.entries)}", "entries"))
    return out


#: the friendly name of a 核算维度 slot (``FLEX6`` → ``customer``), as rules write it
_SLOT_NAMES: Final = {slot: name for name, slot in DIMENSION_SLOTS.items()}


def _texts(v: Voucher) -> Iterator[tuple[str, str | None]]:
    """Every text of a voucher that is stored and sent to Kingdee, with its field path."""
    yield "explanation", v.explanation
    yield "group", v.group
    yield "book", v.book
    yield "data_centre", v.data_centre
    for i, e in enumerate(v.entries):
        yield f"entries[{i}].account", e.account
        yield f"entries[{i}].explanation", e.explanation
        yield f"entries[{i}].unit", e.unit
        yield f"entries[{i}].settle_type", e.settle_type
        yield f"entries[{i}].settle_no", e.settle_no
        for slot, value in e.dimensions.items():
            yield f"entries[{i}].dimensions.{_SLOT_NAMES.get(slot, slot)}", value


def check_text(v: Voucher, ctx: LedgerContext) -> list[Rejection]:
    """Texts Kingdee and the journal can store: no NUL character (MySQL text may hold one; PostgreSQL text and
    jsonb refuse it, and the batch carrying it could not be journaled)."""
    out: list[Rejection] = []
    for where, text in _texts(v):
        if text is not None and "\x00" in text:
            shown = storable(text)
            out.append(_rej(v, ReasonCode.INVALID_TEXT,
                       f"{where} holds a NUL character (shown as \\u0000), which neither Kingdee nor the journal can "
                       f"store: {shown[:80]}{'…' if len(shown) > 80 else ''}", where, shown))
    return out


def _has_nul(v: Voucher) -> bool:
    """Would ``check_text`` report? (The usual voucher: a handful of ``in`` tests.)"""
    if "\x00" in v.explanation or "\x00" in v.group or "\x00" in v.book or (v.data_centre and "\x00" in v.data_centre):
        return True
    for e in v.entries:
        if "\x00" in e.account or "\x00" in e.explanation:
            return True
        if e.unit is not None or e.settle_type is not None or e.settle_no is not None:
            if any(t is not None and "\x00" in t for t in (e.unit, e.settle_type, e.settle_no)):
                return True
        for value in e.dimensions.values():
            if "\x00" in value:
                return True
    return False


def check_book(v: Voucher, ctx: LedgerContext) -> list[Rejection]:
    out: list[Rejection] = []
    if ctx.books and v.book not in ctx.books:
        out.append(_rej(v, ReasonCode.UNKNOWN_BOOK, f"account book {v.book!r} is not configured", "book", v.book))
    return out


def check_accounts(v: Voucher, ctx: LedgerContext) -> list[Rejection]:
    out: list[Rejection] = []
    if not ctx.accounts:
        return out
    accounts = ctx.accounts
    for i, e in enumerate(v.entries, 1):
        acct = accounts.get(e.account)
        if acct is not None and acct.leaf and not acct.frozen and not acct.required_dimensions \
                and acct.currencies is None:
            continue  # the common, unconstrained leaf account: nothing to report
        where = f"entries[{i}].account"
        if acct is None:
            out.append(_rej(v, ReasonCode.UNKNOWN_ACCOUNT, f"第{i}行分录：科目 {e.account} 不存在 (unknown account)",
                       where, e.account))
            continue
        if not acct.leaf:
            out.append(_rej(v, ReasonCode.NON_LEAF_ACCOUNT,
                       f"第{i}行分录：科目（{acct.label}）不是明细科目 (not a leaf account)", where, e.account))
        if acct.frozen:
            out.append(_rej(v, ReasonCode.FROZEN_ACCOUNT, f"第{i}行分录：科目（{acct.label}）已禁用 (frozen)", where,
                       e.account))
        missing = sorted(s for s in acct.required_dimensions if not (e.dimensions.get(s) or "").strip()) \
            if acct.required_dimensions else None
        if missing:
            names = "、".join(ctx.label(s) for s in missing)
            out.append(_rej(v, ReasonCode.MISSING_DIMENSION,
                       f"第{i}行分录：科目（{acct.label}）设置的下列必录维度未录入或不可用：{names}",
                       f"entries[{i}].dimensions", ",".join(missing)))
        if acct.currencies is not None and e.currency not in acct.currencies:
            out.append(_rej(v, ReasonCode.CURRENCY_NOT_ALLOWED,
                       f"第{i}行分录：科目（{acct.label}）不核算币别 {e.currency}", f"entries[{i}].currency", e.currency))
    return out


def check_currency(v: Voucher, ctx: LedgerContext) -> list[Rejection]:
    out: list[Rejection] = []
    book = ctx.books.get(v.book)
    local = book.local_currency if book else None
    for i, e in enumerate(v.entries, 1):
        if e.rate == 1 and e.amount == e.amount_for and (local is None or e.currency == local) \
                and abs(e.amount) < ctx.max_amount(e.currency):
            continue  # the common local-currency line: nothing to reconcile
        if book is not None and not book.knows_currency(e.currency):
            out.append(_rej(v, ReasonCode.UNKNOWN_CURRENCY,
                       f"entry {i}: currency {e.currency!r} is not in book {v.book}'s currency table "
                       f"({', '.join(sorted({book.local_currency, *book.currency_numbers}))})",
                       f"entries[{i}].currency", e.currency))
            continue
        if e.rate <= 0:
            out.append(_rej(v, ReasonCode.INVALID_RATE, f"entry {i}: exchange rate {e.rate} for {e.currency} must be "
                                                        "above 0", f"entries[{i}].rate", e.rate))
            continue
        for what, amount, cur in (("amount", e.amount_for, e.currency), ("local amount", e.amount, local)):
            if cur is not None and abs(amount) >= ctx.max_amount(cur):
                out.append(_rej(v, ReasonCode.AMOUNT_OUT_OF_RANGE,
                           f"entry {i}: {what} {amount} {cur} has more than {ctx.max_amount_digits} digits — "
                           "implausible, held back for review", f"entries[{i}].amount", amount))
        expected = MONEY_CONTEXT.multiply(e.amount_for, e.rate)
        if abs(MONEY_CONTEXT.subtract(e.amount, expected)) > ctx.rate_tolerance:
            out.append(_rej(v, ReasonCode.CURRENCY_INCONSISTENT,
                       f"entry {i}: local amount {e.amount} ≠ {e.amount_for} {e.currency} × rate {e.rate} "
                       f"(= {expected})", f"entries[{i}].amount", e.amount))
        if local is not None and e.currency == local and e.rate != 1:
            out.append(_rej(v, ReasonCode.CURRENCY_INCONSISTENT,
                       f"entry {i}: local-currency line ({local}) with rate {e.rate}", f"entries[{i}].rate", e.rate))
    return out


def check_period(v: Voucher, ctx: LedgerContext) -> list[Rejection]:
    out: list[Rejection] = []
    book = ctx.books.get(v.book)
    period = f"{v.date.year:04d}-{v.date.month:02d}"
    if v.opening:
        return out  # opening state is never posted: its period may well be closed
    if book is not None and not book.period_open(period):
        out.append(_rej(v, ReasonCode.CLOSED_PERIOD, f"accounting period {period} of book {v.book} is closed (期间已结账)",
                   "date", v.date.isoformat()))
    return out


def check_permissions(v: Voucher, ctx: LedgerContext) -> list[Rejection]:
    out: list[Rejection] = []
    perm = ctx.permissions.get(v.source.row.system)
    if perm is None:
        if ctx.default_permission == "deny" and (ctx.accounts or ctx.books):
            out.append(_rej(v, ReasonCode.PERMISSION_DENIED,
                            f"source system {v.source.row.system!r} has no entry under permissions: in the ledger "
                            "file, so it may post nothing (add one, or say permissions: {default: allow})",
                            "permissions", v.source.row.system))
        return out
    if perm.books is not None and v.book not in perm.books:
        out.append(_rej(v, ReasonCode.PERMISSION_DENIED,
                   f"source system {perm.system!r} may not post to book {v.book}", "book", v.book))
    for i, e in enumerate(v.entries, 1):
        if not perm.allows_account(e.account):
            out.append(_rej(v, ReasonCode.PERMISSION_DENIED,
                       f"source system {perm.system!r} may not post to account {e.account}",
                       f"entries[{i}].account", e.account))
    return out


def check_balance(v: Voucher, ctx: LedgerContext) -> list[Rejection]:
    """Debits equal credits in local currency, to the cent — and in the transaction currency too when every
    line is in one currency. Always runs, always last."""
    out: list[Rejection] = []
    entries = v.entries
    currency = entries[0].currency if entries else None
    book = ctx.books.get(v.book)
    places = ctx.places(book.local_currency) if book else 2
    step = _STEPS.get(places)
    # The sums and the precision test run in the money context, as the thread's context for the loop: the same
    # arithmetic as MONEY_CONTEXT.add(…) and .quantize(…, context=MONEY_CONTEXT), without a context argument
    # per operation.
    previous = getcontext()
    setcontext(MONEY_CONTEXT)
    try:
        debit = credit = debit_for = credit_for = ZERO
        single = True
        debit_side = Side.DEBIT
        for e in entries:
            if e.side is debit_side:
                debit = debit + e.amount
                debit_for = debit_for + e.amount_for
            else:
                credit = credit + e.amount
                credit_for = credit_for + e.amount_for
            if e.currency != currency:
                single = False
        if step is None:
            step = Decimal(1).scaleb(-places)
        imprecise = [(i, e) for i, e in enumerate(entries, 1) if e.amount != e.amount.quantize(step)]
    finally:
        setcontext(previous)
    if debit != credit:
        diff = MONEY_CONTEXT.subtract(debit, credit)
        out.append(_rej(v, ReasonCode.UNBALANCED,
                   f"debits {debit} ≠ credits {credit} (difference {diff}); add an explicit rounding rule if this "
                   "is a rounding difference", "entries", diff))
    elif single and debit_for != credit_for:
        diff = MONEY_CONTEXT.subtract(debit_for, credit_for)
        out.append(_rej(v, ReasonCode.UNBALANCED,
                   f"in {currency}: debits {debit_for} ≠ credits {credit_for} (difference {diff}); a voucher in one "
                   "currency must balance in it, not only after conversion", "entries", diff))
    for i, e in imprecise:
        out.append(_rej(v, ReasonCode.INVALID_AMOUNT,
                   f"entry {i}: local amount {e.amount} has more than {places} decimals",
                   f"entries[{i}].amount", e.amount))
    return out


#: ``Decimal(1).scaleb(-places)`` for the usual numbers of decimals.
_STEPS: Final = {p: Decimal(1).scaleb(-p) for p in range(0, 7)}


#: Ordered registry of rejecting checks (name, function). ``check_balance`` is not in it: it always runs last.
CHECKS: Final[tuple[tuple[str, Check], ...]] = (
    ("entries_present", check_entries_present),
    ("text", check_text),
    ("book", check_book),
    ("accounts", check_accounts),
    ("currency", check_currency),
    ("period", check_period),
    ("permissions", check_permissions),
)


def review_amount(v: Voucher, ctx: LedgerContext, total: Decimal | None = None) -> list[str]:
    out: list[str] = []
    lim = ctx.limits.get(v.source.row.system)
    if lim is not None and lim.review_above is not None:
        total = v.debit_total if total is None else total
        if total > lim.review_above:
            out.append(f"amount {total} above review threshold {lim.review_above}")
    return out


def review_pattern(v: Voucher, ctx: LedgerContext, total: Decimal | None = None) -> list[str]:
    out: list[str] = []
    lim = ctx.limits.get(v.source.row.system)
    if lim is None or lim.zscore is None:
        return out
    dim = lim.zscore_dimension
    counterparty = None
    for e in v.entries:
        counterparty = e.dimensions.get(dim)
        if counterparty:
            break
    if not counterparty:
        return out
    total = v.debit_total if total is None else total
    z = ctx.history.zscore((v.source.row.system, counterparty), total, window=lim.zscore_window,
                           min_samples=lim.zscore_min_samples)
    if z is not None and abs(z) > lim.zscore:
        out.append(f"amount {total} deviates from {counterparty}'s recent pattern (z={z:.1f})")
    return out


REVIEWS: Final[tuple[tuple[str, Callable[[Voucher, LedgerContext, Decimal | None], list[str]]], ...]] = (
    ("review_amount", review_amount),
    ("review_pattern", review_pattern),
)


_SKIPPABLE: Final = frozenset(name for name, _ in CHECKS) | frozenset(name for name, _ in REVIEWS)


def check_voucher(v: Voucher, ctx: LedgerContext, *, skip: Iterable[str] = ()) -> Voucher | tuple[Rejection, ...]:
    """Run the checks; return the voucher (with review reasons) or every rejection found.

    ``skip`` names checks to leave out (e.g. ``accounts`` when no chart is loaded); the balance check runs
    regardless.
    """
    skipped = frozenset(skip) if skip else frozenset()
    if skipped and not skipped <= _SKIPPABLE:
        raise ValueError(f"unknown check(s) {sorted(skipped - _SKIPPABLE)}; the balance check cannot be skipped")
    if skipped or CHECKS is not _DEFAULT_CHECKS:
        found: list[Rejection] = []
        for name, check in CHECKS:
            if name not in skipped:
                problems = check(v, ctx)
                if problems:
                    found.extend(problems)
        found.extend(check_balance(v, ctx))
    else:
        found = _default_checks(v, ctx)
    if found:
        return tuple(found)
    if v.kind is VoucherKind.REVERSAL:
        return v  # undoing a posted voucher is never held back for review
    if v.source.row.system not in ctx.limits:
        return v  # no limits for this source: nothing to review
    total = v.debit_total  # once for every review
    reasons = [r for name, review in REVIEWS if name not in skipped for r in review(v, ctx, total)]
    return v._replace(review_reasons=tuple(reasons)) if reasons else v


_DEFAULT_CHECKS: Final = CHECKS


def _default_checks(v: Voucher, ctx: LedgerContext) -> list[Rejection]:
    """``CHECKS`` in order, then the balance check — each check's function runs only when a cheap test does not
    already show it would find nothing (the common voucher passes every check), so the rejections are exactly
    the registry's, in its order. The tests below mirror the conditions under which the checks report, in one
    pass over the lines."""
    found: list[Rejection] = []
    entries = v.entries
    if len(entries) < 2:
        found.extend(check_entries_present(v, ctx))
    if _has_nul(v):
        found.extend(check_text(v, ctx))
    books = ctx.books
    if books and v.book not in books:
        found.extend(check_book(v, ctx))
    accounts = ctx.accounts
    book = books.get(v.book)
    local = None if book is None else book.local_currency
    perm = ctx.permissions.get(v.source.row.system)
    allowed: dict[str, bool] | None = None
    if perm is None:
        permitted = not (ctx.default_permission == "deny" and (accounts or books))
    else:
        permitted = perm.books is None or v.book in perm.books
        if permitted:
            allowed = _allowed(perm)
    accounts_clean = currency_clean = True
    for e in entries:
        account = e.account
        if accounts_clean and accounts:  # would check_accounts find nothing?
            acct = accounts.get(account)
            if acct is None or not acct.leaf or acct.frozen:
                accounts_clean = False
            else:
                if acct.required_dimensions:
                    dims = e.dimensions
                    for slot in acct.required_dimensions:
                        if not (dims.get(slot) or "").strip():
                            accounts_clean = False
                            break
                if acct.currencies is not None and e.currency not in acct.currencies:
                    accounts_clean = False
        if currency_clean and not (e.rate == 1 and e.amount == e.amount_for and (local is None or e.currency == local)
                                   and abs(e.amount) < ctx.max_amount(e.currency)):
            currency_clean = False  # check_currency looks further at this line
        if allowed is not None and permitted:
            ok = allowed.get(account)
            if ok is None:
                ok = _allows(perm.accounts, perm.deny_accounts, account)  # type: ignore[union-attr]
                if len(allowed) < 100_000:
                    allowed[account] = ok
            if not ok:
                permitted = False
    if not accounts_clean:
        found.extend(check_accounts(v, ctx))
    if not currency_clean:
        found.extend(check_currency(v, ctx))
    if not v.opening and book is not None and not period_open(book, v.date):
        found.extend(check_period(v, ctx))
    if not permitted:
        found.extend(check_permissions(v, ctx))
    found.extend(check_balance(v, ctx))
    return found


#: Per book object: (the book, {(year, month): open?}) — books are immutable; a replaced book is a new key.
_PERIODS: Final[dict[int, tuple[Book, dict[tuple[int, int], bool]]]] = {}


def period_open(book: Book, day: date) -> bool:
    """``book.period_open`` of ``day``'s period, memoised per book (every voucher asks)."""
    found = _PERIODS.get(id(book))
    if found is None or found[0] is not book:
        if len(_PERIODS) > 1000:
            _PERIODS.clear()
        found = _PERIODS[id(book)] = (book, {})
    cache = found[1]
    k = (day.year, day.month)
    is_open = cache.get(k)
    if is_open is None:
        is_open = cache[k] = book.period_open(f"{day.year:04d}-{day.month:02d}")
    return is_open


#: Per permission object: (the permission, {account: allowed?}).
_ALLOWED: Final[dict[int, tuple[Permission, dict[str, bool]]]] = {}


def _allowed(perm: Permission) -> dict[str, bool]:
    """The memo of ``perm.allows_account`` (per permission object: a replaced permission is a new memo)."""
    found = _ALLOWED.get(id(perm))
    if found is None or found[0] is not perm:
        if len(_ALLOWED) > 1000:
            _ALLOWED.clear()
        found = _ALLOWED[id(perm)] = (perm, {})
    return found[1]
