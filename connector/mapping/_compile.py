"""Rule specs compiled into ``Rule`` objects: every expression and template turned into a closure once, at
load time; a bad one is recorded as a problem with ``file:line key`` instead of raising."""

from __future__ import annotations

import re

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from connector.ledger._checks import LedgerContext
from connector.ledger._model import Side
from connector.mapping._expr import Compiled, Compiler, EvalError, ExprError, Tables, truth
from connector.mapping._spec import AccountSpec, EntrySpec, GoldenCase, RuleSpec, summary_key_name
from connector.mapping._yaml import Located, fmt_loc


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

    @property
    def voucher_money(self) -> bool:
        """In the voucher's currency at its rate, with no local amount of its own (optional fields or per
        line allowed): built on the fast path too, with the time budget checked as for any other entry."""
        return self.local_amount is None and self.currency is None and self.rate is None


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
    #: ``summarize:`` compiled: the key's parts (name, expression; ``None`` for ``book`` and ``date``) and the
    #: summary voucher's explanation (a template over ``key`` and ``count``)
    summary_by: tuple[tuple[str, Compiled | None], ...] = ()
    summary_explanation: Compiled | None = None
    #: (entry, entry.plain, entry.voucher_money), computed once: what the voucher builder iterates
    entry_plan: tuple[tuple[CompiledEntry, bool, bool], ...] = field(default=(), compare=False, repr=False)
    #: the rule's id and version (text), and its key columns as a tuple: read for every event
    id: str = field(default="", compare=False, repr=False)
    version: str = field(default="", compare=False, repr=False)
    key_columns: tuple[str, ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "entry_plan", tuple((e, e.plain, e.voucher_money) for e in self.entries))
        object.__setattr__(self, "id", self.spec.id)
        object.__setattr__(self, "version", str(self.spec.version))
        object.__setattr__(self, "key_columns", tuple(self.spec.key_columns))

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


class _RuleCompiler:
    """Compiles one rule spec; every bad expression is recorded as ``file:line key: problem``."""

    def __init__(self, spec: RuleSpec, file: str, compiler: Compiler, loc: Located, problems: list[str]) -> None:
        self.spec, self.file, self.compiler, self.loc, self.problems = spec, file, compiler, loc, problems

    def where(self, *path: str | int) -> str:
        line = self.loc.line(path)
        return f"{self.file}:{line} {fmt_loc(path)}" if line else f"{self.file} {fmt_loc(path)}"

    def _compiled(self, how: Callable[[str], Compiled], text: str | None, path: tuple[str | int, ...]
                  ) -> Compiled | None:
        """Compile ``text`` (None stays None); a bad one is recorded with file:line key instead of raising."""
        if text is None:
            return None
        try:
            return how(text)
        except ExprError as e:
            self.problems.append(f"{self.where(*path)}: {e}")
            return None

    def expr(self, text: str | None, *path: str | int) -> Compiled | None:
        return self._compiled(self.compiler.expression, text, path)

    def tmpl(self, text: str | None, *path: str | int) -> Compiled | None:
        return self._compiled(self.compiler.template, text, path)

    def account(self, a: str | AccountSpec, i: int) -> Compiled | None:
        if isinstance(a, str):
            return self.tmpl(a, "entries", i, "account")
        if a.expr is not None:
            inner = self.expr(a.expr, "entries", i, "account", "expr")
            return None if inner is None else _as_text(inner)
        if a.lookup is not None:
            return self._lookup_account(a, i)
        return self._case_account(a, i)

    def _lookup_account(self, a: AccountSpec, i: int) -> Compiled | None:
        key = self.expr(a.key, "entries", i, "account", "key")
        table, default, tables = a.lookup, a.default, self.compiler.tables
        if key is None or table is None:
            return None
        if table not in tables.lookups:
            self.problems.append(f"{self.where('entries', i, 'account', 'lookup')}: unknown lookup table {table!r}")
            return None
        key_expr = key

        def from_lookup(s: Any) -> str:
            if default is not None:
                return str(tables.lookup(table, key_expr(s), default))
            return str(tables.lookup(table, key_expr(s)))
        return from_lookup

    def _case_account(self, a: AccountSpec, i: int) -> Compiled:
        cases: list[tuple[Compiled, str]] = []
        for j, case in enumerate(a.cases or []):
            cond = self.expr(case.when, "entries", i, "account", "cases", j, "when")
            if cond is not None:
                cases.append((cond, case.account))
        fallback = a.default

        def pick(s: Any) -> str:
            for cond, acct in cases:
                if truth(cond(s)):
                    return acct
            if fallback is None:
                raise EvalError("EXPRESSION_ERROR", "no account case matched and no default is given",
                                f"entries[{i}].account")
            return fallback
        return pick

    def entry(self, i: int, e: EntrySpec) -> CompiledEntry | None:
        acct = self.account(e.account, i)
        amount = self.expr(e.amount, "entries", i, "amount")
        dims = tuple((slot, c) for slot, text in e.dimensions.items()
                     if (c := self.expr(text, "entries", i, "dimensions", slot)) is not None)
        if acct is None or amount is None:
            return None
        expr, tmpl = self.expr, self.tmpl
        return CompiledEntry(
            index=i, side=Side(e.side), account=acct, amount=amount,
            local_amount=expr(e.local_amount, "entries", i, "local_amount"),
            explanation=tmpl(e.explanation, "entries", i, "explanation"), when=expr(e.when, "entries", i, "when"),
            currency=expr(e.currency, "entries", i, "currency"), rate=expr(e.rate, "entries", i, "rate"),
            dimensions=dims, quantity=expr(e.quantity, "entries", i, "quantity"),
            price=expr(e.price, "entries", i, "price"), unit=tmpl(e.unit, "entries", i, "unit"),
            settle_type=tmpl(e.settle_type, "entries", i, "settle_type"),
            settle_no=tmpl(e.settle_no, "entries", i, "settle_no"), for_each_line=e.for_each == "lines",
            allow_negative=e.allow_negative,
            paths=(f"entries[{i}].amount", f"entries[{i}].rate", f"entries[{i}].local_amount",
                   f"entries[{i}].quantity", f"entries[{i}].price"))

    def rule(self) -> Rule | None:
        spec, expr, tmpl = self.spec, self.expr, self.tmpl
        entries = [c for i, e in enumerate(spec.entries) if (c := self.entry(i, e)) is not None]
        v = spec.voucher
        book, date_, group, expl = (tmpl(v.book, "voucher", "book"), expr(v.date, "voucher", "date"),
                                    tmpl(v.group, "voucher", "group"), tmpl(v.explanation, "voucher", "explanation"))
        when = expr(spec.match.when, "match", "when")
        if book is None or date_ is None or group is None or expl is None or len(entries) != len(spec.entries):
            return None
        if spec.match.when is not None and when is None:
            return None
        summary_by, summary_expl = self.summary()
        if spec.summarize is not None and summary_expl is None:
            return None
        return Rule(spec=spec, file=self.file, when=when, book=book, date=date_,
                    business_date=expr(v.business_date, "voucher", "business_date"), group=group, explanation=expl,
                    data_centre=tmpl(v.data_centre, "voucher", "data_centre"),
                    currency=expr(v.currency, "voucher", "currency"), rate=expr(v.rate, "voucher", "rate"),
                    entries=tuple(entries),
                    lines_join=expr(spec.lines.join, "lines", "join") if spec.lines is not None else None,
                    summary_by=summary_by, summary_explanation=summary_expl)

    def summary(self) -> tuple[tuple[tuple[str, Compiled | None], ...], Compiled | None]:
        """The ``summarize:`` key parts and explanation, compiled (empty when the rule does not summarize)."""
        s = self.spec.summarize
        if s is None:
            return (), None
        parts: list[tuple[str, Compiled | None]] = []
        for i, item in enumerate(s.by):
            name, text = next(iter(item.items())) if isinstance(item, dict) else (summary_key_name(item), item)
            if text in ("book", "date"):
                parts.append((name, None))
            elif (c := self.expr(text, "summarize", "by", i)) is not None:
                parts.append((name, c))
        key_names = Compiler(self.compiler.tables, names=frozenset({"key", "count"}))
        explanation = self._compiled(key_names.template, s.explanation, ("summarize", "explanation"))
        named = [name for name, _ in parts]
        unknown = sorted({m for m in re.findall(r"\bkey\.([A-Za-z_]\w*)", s.explanation) if m not in named})
        if unknown:  # found now, not when the first summary closes
            self.problems.append(f"{self.where('summarize', 'explanation')}: key.{unknown[0]} is not a part of the "
                                 f"summary key (summarize.by names: {', '.join(named)})")
            return tuple(parts), None
        return tuple(parts), explanation


def _as_text(inner: Compiled) -> Compiled:
    def text(s: Any) -> str:
        return str(inner(s))
    return text


def compile_rule(spec: RuleSpec, file: str, compiler: Compiler, loc: Located, problems: list[str]) -> Rule | None:
    """The compiled rule, or ``None`` when any of its expressions is bad (each recorded in ``problems``)."""
    return _RuleCompiler(spec, file, compiler, loc, problems).rule()
