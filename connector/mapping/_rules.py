"""Rule files: YAML written by finance/integration staff, validated into compiled ``Rule`` objects.

A rules directory holds YAML files, each with a ``kind``:

* ``rule`` — which change events it matches and the voucher it builds (see docs/mapping.md);
* ``lookups`` — lookup tables (``lookup('company_books', row.company_code)``) and exchange rates;
* ``ledger`` — chart of accounts, account books and periods, per-source permissions and limits;
* ``golden`` — sample events with the vouchers they must produce (``kingdee-cdc mapping test``);
* ``ignore`` — captured tables that deliberately post nothing (recorded as skipped, not rejected).

Every problem is reported with file, line and key (``rules/pos.yaml:14 entries[1].amount: …``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from connector.errors import ConnectorError
from connector.ledger._checks import (
    Account,
    Book,
    Cutover,
    LedgerContext,
    Limits,
    Permission,
    dimension_slot,
)
from connector.ledger._model import Side
from connector.mapping._expr import CURRENCY_PLACES, EVENT_NAMES, Compiled, Compiler, ExprError, Tables


class RuleError(ConnectorError):
    """Rule files are invalid. ``problems`` lists every ``file:line key: message``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid mapping rules:\n  " + "\n  ".join(problems))
        self.problems = problems


# --------------------------------------------------------------------------- YAML with line numbers
class _Located:
    """Maps a key path inside one YAML document to its line."""

    def __init__(self, node: yaml.Node | None) -> None:
        self.node = node

    def line(self, path: tuple[str | int, ...]) -> int | None:
        node = self.node
        best = node.start_mark.line + 1 if node is not None else None
        for part in path:
            if isinstance(node, yaml.MappingNode):
                nxt = next((v for k, v in node.value if getattr(k, "value", None) == str(part)), None)
                if nxt is None:
                    key_node = next((k for k, v in node.value if getattr(k, "value", None) == str(part)), None)
                    return key_node.start_mark.line + 1 if key_node is not None else best
                node = nxt
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                node = node.value[part]
            else:
                return best
            best = node.start_mark.line + 1
        return best


def _load_yaml(path: Path) -> tuple[Any, _Located]:
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise RuleError([f"{path}{line}: not valid YAML: {getattr(e, 'problem', e)}"]) from None
    return data, _Located(node)


def _fmt_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# --------------------------------------------------------------------------- models (the file format)
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


# --------------------------------------------------------------------------- compiled rules
@dataclass(frozen=True, slots=True, kw_only=True)
class CompiledAccount:
    resolve: Compiled
    source: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CompiledEntry:
    index: int
    side: Side
    account: Compiled
    amount: Compiled
    local_amount: Compiled | None
    explanation: Compiled | None
    when: Compiled | None
    currency: Compiled | None
    rate: Compiled | None
    dimensions: tuple[tuple[str, Compiled], ...]
    quantity: Compiled | None
    price: Compiled | None
    unit: Compiled | None
    settle_type: Compiled | None
    settle_no: Compiled | None
    for_each_line: bool = False
    #: negative amounts allowed for this entry (``None``: as the rule says)
    allow_negative: bool | None = None
    #: field paths for messages, built once: amount, rate, local_amount, quantity, price
    paths: tuple[str, str, str, str, str] = ("", "", "", "", "")

    @property
    def plain(self) -> bool:
        """Account, side, amount, dimensions and maybe an explanation only: the common entry, built on a
        fast path (the voucher's currency and rate, nothing optional to evaluate)."""
        return (not self.for_each_line and self.local_amount is None and self.currency is None and self.rate is None
                and self.quantity is None and self.price is None and self.unit is None
                and self.settle_type is None and self.settle_no is None)


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """A validated, compiled mapping rule."""

    spec: RuleSpec
    file: str
    when: Compiled | None
    book: Compiled
    date: Compiled
    business_date: Compiled | None
    group: Compiled
    explanation: Compiled
    data_centre: Compiled | None
    currency: Compiled | None
    rate: Compiled | None
    entries: tuple[CompiledEntry, ...]
    #: ``lines:`` compiled: which line events of the transaction join this header (None: every one)
    lines_join: Compiled | None = None
    #: (entry, entry.plain) pairs, computed once: what the voucher builder iterates
    entry_plan: tuple[tuple[CompiledEntry, bool], ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "entry_plan", tuple((e, e.plain) for e in self.entries))

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def version(self) -> str:
        return str(self.spec.version)

    def matches_table(self, system: str, schema: str | None, table: str | None) -> bool:
        m = self.spec.match
        if m.system != system or table is None:
            return False
        return m.table == table or (schema is not None and m.table == f"{schema}.{table}")

    def line_table(self) -> tuple[str, str] | None:
        """(system, table) of the document lines mapped with this header, if the rule has ``lines:``."""
        ln = self.spec.lines
        return None if ln is None else (ln.system or self.spec.match.system, ln.table)

    def is_line(self, system: str, schema: str | None, table: str | None) -> bool:
        lt = self.line_table()
        if lt is None or lt[0] != system or table is None:
            return False
        return lt[1] == table or (schema is not None and lt[1] == f"{schema}.{table}")


@dataclass(frozen=True, slots=True, kw_only=True)
class RuleSet:
    """Everything loaded from one rules directory."""

    rules: tuple[Rule, ...]
    tables: Tables
    ledger: LedgerContext
    golden: tuple[tuple[str, GoldenCase], ...] = ()
    files: tuple[str, ...] = field(default_factory=tuple)
    #: (system, table) → why its changes post nothing; ``table`` may be ``schema.table``
    ignored: Mapping[tuple[str, str], str] = field(default_factory=dict)
    _by_table: dict[tuple[str, str | None, str | None], tuple[Rule, ...]] = field(
        default_factory=dict, compare=False, repr=False)

    def for_table(self, system: str, schema: str | None, table: str | None) -> tuple[Rule, ...]:
        """Rules for a table, memoised: every event asks, the answer only depends on the table."""
        k = (system, schema, table)
        found = self._by_table.get(k)
        if found is None:
            found = tuple(r for r in self.rules if r.matches_table(system, schema, table))
            if len(self._by_table) < 10_000:
                self._by_table[k] = found
        return found

    @property
    def grouped(self) -> tuple[Rule, ...]:
        """Rules that map a header together with its lines of the same source transaction."""
        return tuple(r for r in self.rules if r.spec.lines is not None)

    def ignored_reason(self, system: str, schema: str | None, table: str | None) -> str | None:
        """Why changes of this table are deliberately not posted (``None``: they are not ignored)."""
        if table is None or not self.ignored:
            return None
        found = self.ignored.get((system, table))
        if found is None and schema is not None:
            found = self.ignored.get((system, f"{schema}.{table}"))
        return found


def _compile_rule(spec: RuleSpec, file: str, compiler: Compiler, loc: _Located, problems: list[str]) -> Rule | None:
    def where(*path: str | int) -> str:
        line = loc.line(path)
        return f"{file}:{line} {_fmt_loc(path)}" if line else f"{file} {_fmt_loc(path)}"

    def compiled(how: Callable[[str], Compiled], text: str | None, path: tuple[str | int, ...]) -> Compiled | None:
        """Compile ``text`` (None stays None); a bad one is recorded with file:line key instead of raising."""
        if text is None:
            return None
        try:
            return how(text)
        except ExprError as e:
            problems.append(f"{where(*path)}: {e}")
            return None

    def expr(text: str | None, *path: str | int) -> Compiled | None:
        return compiled(compiler.expression, text, path)

    def tmpl(text: str | None, *path: str | int) -> Compiled | None:
        return compiled(compiler.template, text, path)

    def account(a: str | AccountSpec, i: int) -> Compiled | None:
        if isinstance(a, str):
            return compiler.template(a)
        if a.expr is not None:
            inner = expr(a.expr, "entries", i, "account", "expr")
            if inner is None:
                return None
            as_text = inner

            def from_expr(s: Any) -> str:
                return str(as_text(s))
            return from_expr
        if a.lookup is not None:
            key = expr(a.key, "entries", i, "account", "key")
            table, default = a.lookup, a.default
            if key is None:
                return None
            if table not in compiler.tables.lookups:
                problems.append(f"{where('entries', i, 'account', 'lookup')}: unknown lookup table {table!r}")
                return None
            key_expr = key

            def from_lookup(s: Any) -> str:
                if default is not None:
                    return str(compiler.tables.lookup(table, key_expr(s), default))
                return str(compiler.tables.lookup(table, key_expr(s)))
            return from_lookup
        cases: list[tuple[Compiled, str]] = []
        for j, case in enumerate(a.cases or []):
            cond = expr(case.when, "entries", i, "account", "cases", j, "when")
            if cond is not None:
                cases.append((cond, case.account))
        fallback = a.default

        def pick(s: Any) -> str:
            for cond, acct in cases:
                if cond(s):
                    return acct
            if fallback is None:
                from connector.mapping._expr import EvalError

                raise EvalError("EXPRESSION_ERROR", "no account case matched and no default is given",
                                f"entries[{i}].account")
            return fallback
        return pick

    entries: list[CompiledEntry] = []
    for i, e in enumerate(spec.entries):
        acct = account(e.account, i)
        amount = expr(e.amount, "entries", i, "amount")
        dims = tuple((slot, c) for slot, text in e.dimensions.items()
                     if (c := expr(text, "entries", i, "dimensions", slot)) is not None)
        if acct is None or amount is None:
            continue
        entries.append(CompiledEntry(
            index=i, side=Side(e.side), account=acct, amount=amount,
            local_amount=expr(e.local_amount, "entries", i, "local_amount"),
            explanation=tmpl(e.explanation, "entries", i, "explanation"), when=expr(e.when, "entries", i, "when"),
            currency=expr(e.currency, "entries", i, "currency"), rate=expr(e.rate, "entries", i, "rate"),
            dimensions=dims, quantity=expr(e.quantity, "entries", i, "quantity"),
            price=expr(e.price, "entries", i, "price"), unit=tmpl(e.unit, "entries", i, "unit"),
            settle_type=tmpl(e.settle_type, "entries", i, "settle_type"),
            settle_no=tmpl(e.settle_no, "entries", i, "settle_no"), for_each_line=e.for_each == "lines",
            allow_negative=e.allow_negative,
            paths=tuple(f"entries[{i}].{f}" for f in ("amount", "rate", "local_amount", "quantity",  # type: ignore[arg-type]
                                                       "price"))))
    v = spec.voucher
    book, date_, group, expl = (tmpl(v.book, "voucher", "book"), expr(v.date, "voucher", "date"),
                                tmpl(v.group, "voucher", "group"), tmpl(v.explanation, "voucher", "explanation"))
    when = expr(spec.match.when, "match", "when")
    if book is None or date_ is None or group is None or expl is None or len(entries) != len(spec.entries):
        return None
    if spec.match.when is not None and when is None:
        return None
    return Rule(spec=spec, file=file, when=when, book=book, date=date_,
                business_date=expr(v.business_date, "voucher", "business_date"), group=group, explanation=expl,
                data_centre=tmpl(v.data_centre, "voucher", "data_centre"),
                currency=expr(v.currency, "voucher", "currency"), rate=expr(v.rate, "voucher", "rate"),
                entries=tuple(entries),
                lines_join=expr(spec.lines.join, "lines", "join") if spec.lines is not None else None)


def _ledger_context(specs: list[LedgerSpec]) -> LedgerContext:
    accounts: dict[str, Account] = {}
    books: dict[str, Book] = {}
    perms: dict[str, Permission] = {}
    limits: dict[str, Limits] = {}
    labels: dict[str, str] = {}
    places: dict[str, int] = dict(CURRENCY_PLACES)
    cutover: dict[str, Cutover] = {}
    default_permission: Literal["deny", "allow"] = "deny"
    max_digits = 15
    for s in specs:
        places.update(s.currency_places)
        cutover.update({system: Cutover(date=c.on, lsn=c.lsn) for system, c in s.cutover.items()})
        if s.default_permission is not None:
            default_permission = s.default_permission
        if "max_amount_digits" in s.model_fields_set:
            max_digits = s.max_amount_digits
        for a in s.accounts:
            accounts[a.number] = Account(
                number=a.number, name=a.name, direction=Side(a.direction), leaf=a.leaf, frozen=a.frozen,
                required_dimensions=frozenset(dimension_slot(d) for d in a.dimensions),
                currencies=frozenset(a.currencies) if a.currencies is not None else None)
        for b in s.books:
            books[b.number] = Book(
                number=b.number, name=b.name, local_currency=b.local_currency, data_centre=b.data_centre,
                open_periods=frozenset(b.open_periods) if b.open_periods is not None else None,
                closed_periods=frozenset(b.closed_periods), currency_numbers=dict(b.currency_numbers),
                auto_submit=b.auto_submit, auto_audit=b.auto_audit, timezone=ZoneInfo(b.timezone),
                reverse_in=b.reverse_in, rate_band=b.rate_band)
        for system, p in s.permissions.items():
            perms[system] = Permission(system=system, books=frozenset(p.books) if p.books is not None else None,
                                       accounts=tuple(p.accounts), deny_accounts=tuple(p.deny_accounts))
        for system, lim in s.limits.items():
            limits[system] = Limits(review_above=lim.review_above, zscore=lim.zscore,
                                    zscore_dimension=dimension_slot(lim.zscore_dimension),
                                    zscore_window=lim.zscore_window, zscore_min_samples=lim.zscore_min_samples)
        labels.update({dimension_slot(k): v for k, v in s.dimension_labels.items()})
    return LedgerContext(accounts=accounts, books=books, permissions=perms, limits=limits, dimension_labels=labels,
                         currency_places=places, cutover=cutover, default_permission=default_permission,
                         max_amount_digits=max_digits)


_KINDS: dict[str, type[_Model]] = {"rule": RuleSpec, "ignore": IgnoreSpec, "lookups": LookupsSpec, "ledger": LedgerSpec,
                                   "golden": GoldenSpec}


def load_rules(directory: str | Path) -> RuleSet:
    """Load and compile every ``*.yaml``/``*.yml`` file under ``directory`` (recursively).

    Raises ``RuleError`` listing every problem with ``file:line key``; nothing is half-loaded.
    """
    root = Path(directory)
    if not root.is_dir():
        raise RuleError([f"{root}: not a directory of rule files"])
    files = sorted(p for p in root.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
    problems: list[str] = []
    parsed: list[tuple[str, _Model, _Located]] = []
    for path in files:
        name = str(path)
        try:
            data, loc = _load_yaml(path)
        except RuleError as e:
            problems.extend(e.problems)
            continue
        if not isinstance(data, Mapping) or data.get("kind") not in _KINDS:
            problems.append(f"{name}:1 kind: expected one of {', '.join(_KINDS)}, got "
                            f"{(data or {}).get('kind') if isinstance(data, Mapping) else type(data).__name__!r}")
            continue
        model_cls = _KINDS[str(data["kind"])]
        try:
            parsed.append((name, model_cls.model_validate(data), loc))
        except ValidationError as e:
            for err in e.errors():
                path_ = tuple(err["loc"])
                line = loc.line(tuple(p for p in path_ if isinstance(p, (str, int))))
                msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
                problems.append(f"{name}:{line} {_fmt_loc(path_)}: {msg}")
    lookups = [m for _, m, _ in parsed if isinstance(m, LookupsSpec)]
    ledger = _ledger_context([m for _, m, _ in parsed if isinstance(m, LedgerSpec)])
    tables = Tables(
        lookups={k: v for spec in lookups for k, v in spec.lookups.items()},
        rates={cur: {typ: [(d, Decimal(str(r))) for d, r in series.items()] for typ, series in types.items()}
               for spec in lookups for cur, types in spec.rates.items()},
        currency_places=ledger.currency_places)
    compiler = Compiler(tables)
    #: rules with ``lines:`` may also say ``line`` (the line being mapped) and ``lines`` (all of them)
    line_compiler = Compiler(tables, names=EVENT_NAMES | {"line", "lines"})
    rules: list[Rule] = []
    seen: dict[str, str] = {}
    for name, model, loc in parsed:
        if isinstance(model, RuleSpec):
            if model.id in seen:
                problems.append(f"{name}:{loc.line(('id',))} id: rule id {model.id!r} already used in {seen[model.id]}")
                continue
            seen[model.id] = name
            rule = _compile_rule(model, name, line_compiler if model.lines is not None else compiler, loc, problems)
            if rule is not None:
                rules.append(rule)
    locs = {name: loc for name, _, loc in parsed}
    for rule in rules:  # literal and looked-up accounts can be checked against the chart at load time
        if not ledger.accounts:
            break
        loc = locs[rule.file]
        candidates: list[tuple[tuple[str | int, ...], str]] = []
        for i, entry in enumerate(rule.spec.entries):
            acct = entry.account
            if isinstance(acct, str) and "{{" not in acct:
                candidates.append((("entries", i, "account"), acct))
            elif isinstance(acct, AccountSpec):
                if acct.cases:
                    candidates += [(("entries", i, "account", "cases", j, "account"), c.account)
                                   for j, c in enumerate(acct.cases)]
                if acct.default:
                    candidates.append((("entries", i, "account", "default"), acct.default))
                if acct.lookup is not None and acct.lookup in tables.lookups:
                    candidates += [(("entries", i, "account", "lookup"), str(v))
                                   for v in tables.lookups[acct.lookup].values()]
        if rule.spec.rounding:
            candidates.append((("rounding", "account"), rule.spec.rounding.account))
        for path_, number in candidates:
            if number not in ledger.accounts:
                problems.append(f"{rule.file}:{loc.line(path_)} {_fmt_loc(path_)}: account {number!r} is not in the "
                                "chart of accounts")
    golden = tuple((name, case) for name, m, _ in parsed if isinstance(m, GoldenSpec) for case in m.cases)
    ignored: dict[tuple[str, str], str] = {}
    for name, model, loc in parsed:
        if isinstance(model, IgnoreSpec):
            for i, t in enumerate(model.tables):
                if any(r.matches_table(t.system, None, t.table) for r in rules):
                    problems.append(f"{name}:{loc.line(('tables', i))} tables[{i}]: {t.system}.{t.table} is both "
                                    "ignored and mapped by a rule")
                ignored[(t.system, t.table)] = t.reason
    if problems:
        raise RuleError(problems)
    return RuleSet(rules=tuple(rules), tables=tables, ledger=ledger, golden=golden, files=tuple(str(f) for f in files),
                   ignored=ignored)
