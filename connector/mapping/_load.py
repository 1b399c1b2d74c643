"""Loading a rules directory: parse every file, build the lookup tables and the ledger context, compile the
rules, and check what can be checked before any event arrives (accounts against the chart, duplicate ids,
tables both ignored and mapped). Nothing is half-loaded: every problem is collected and raised together.

A rules directory holds YAML files, each with a ``kind``:

* ``rule`` — which change events it matches and the voucher it builds (see docs/mapping.md);
* ``lookups`` — lookup tables (``lookup('company_books', row.company_code)``) and exchange rates;
* ``ledger`` — chart of accounts, account books and periods, per-source permissions and limits;
* ``golden`` — sample events with the vouchers they must produce (``kingdee-cdc mapping test``);
* ``ignore`` — captured tables that deliberately post nothing (recorded as skipped, not rejected).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Literal, NamedTuple
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ValidationError

from connector.ledger._checks import Account, Book, Cutover, LedgerContext, Limits, Permission, dimension_slot
from connector.ledger._model import Side
from connector.mapping._compile import Rule, RuleSet, compile_rule
from connector.mapping._expr import CURRENCY_PLACES, EVENT_NAMES, Compiler, Tables
from connector.mapping._spec import KINDS, AccountSpec, GoldenSpec, IgnoreSpec, LedgerSpec, LookupsSpec, RuleSpec
from connector.mapping._yaml import Located, RuleError, fmt_loc, load_yaml


def ledger_context(specs: list[LedgerSpec]) -> LedgerContext:
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


class _Parsed(NamedTuple):
    file: str
    model: BaseModel
    loc: Located


def load_rules(directory: str | Path) -> RuleSet:
    """Load and compile every ``*.yaml``/``*.yml`` file under ``directory`` (recursively).

    Raises ``RuleError`` listing every problem with ``file:line key``; nothing is half-loaded.
    """
    root = Path(directory)
    if not root.is_dir():
        raise RuleError([f"{root}: not a directory of rule files"])
    files = sorted(p for p in root.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
    problems: list[str] = []
    parsed = [p for path in files if (p := _parse(path, problems)) is not None]
    ledger = ledger_context([p.model for p in parsed if isinstance(p.model, LedgerSpec)])
    tables = _tables([p.model for p in parsed if isinstance(p.model, LookupsSpec)], ledger)
    rules = _compile_rules(parsed, tables, problems)
    if ledger.accounts:
        locs = {p.file: p.loc for p in parsed}
        for rule in rules:
            _check_accounts(rule, locs[rule.file], ledger, tables, problems)
    ignored = _ignored(parsed, rules, problems)
    if problems:
        raise RuleError(problems)
    golden = tuple((p.file, case) for p in parsed if isinstance(p.model, GoldenSpec) for case in p.model.cases)
    return RuleSet(rules=tuple(rules), tables=tables, ledger=ledger, golden=golden, files=tuple(str(f) for f in files),
                   ignored=ignored)


def _parse(path: Path, problems: list[str]) -> _Parsed | None:
    """One file, validated against the model of its ``kind`` (problems recorded, ``None`` if unusable)."""
    name = str(path)
    try:
        data, loc = load_yaml(path)
    except RuleError as e:
        problems.extend(e.problems)
        return None
    if not isinstance(data, Mapping) or data.get("kind") not in KINDS:
        problems.append(f"{name}:1 kind: expected one of {', '.join(KINDS)}, got "
                        f"{(data or {}).get('kind') if isinstance(data, Mapping) else type(data).__name__!r}")
        return None
    try:
        return _Parsed(name, KINDS[str(data["kind"])].model_validate(data), loc)
    except ValidationError as e:
        for err in e.errors():
            path_ = tuple(err["loc"])
            line = loc.line(tuple(p for p in path_ if isinstance(p, (str, int))))
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            problems.append(f"{name}:{line} {fmt_loc(path_)}: {msg}")
        return None


def _tables(lookups: list[LookupsSpec], ledger: LedgerContext) -> Tables:
    return Tables(
        lookups={k: v for spec in lookups for k, v in spec.lookups.items()},
        rates={cur: {typ: [(d, Decimal(str(r))) for d, r in series.items()] for typ, series in types.items()}
               for spec in lookups for cur, types in spec.rates.items()},
        currency_places=ledger.currency_places)


def _compile_rules(parsed: list[_Parsed], tables: Tables, problems: list[str]) -> list[Rule]:
    compiler = Compiler(tables)
    #: rules with ``lines:`` may also say ``line`` (the line being mapped) and ``lines`` (all of them)
    line_compiler = Compiler(tables, names=EVENT_NAMES | {"line", "lines"})
    rules: list[Rule] = []
    seen: dict[str, str] = {}
    for name, model, loc in parsed:
        if not isinstance(model, RuleSpec):
            continue
        if model.id in seen:
            problems.append(f"{name}:{loc.line(('id',))} id: rule id {model.id!r} already used in {seen[model.id]}")
            continue
        seen[model.id] = name
        rule = compile_rule(model, name, line_compiler if model.lines is not None else compiler, loc, problems)
        if rule is not None:
            rules.append(rule)
    return rules


def _static_accounts(rule: Rule, tables: Tables) -> list[tuple[tuple[str | int, ...], str]]:
    """The accounts a rule can name without an event (literals, cases, defaults, lookup values), with paths."""
    found: list[tuple[tuple[str | int, ...], str]] = []
    for i, entry in enumerate(rule.spec.entries):
        acct = entry.account
        if isinstance(acct, str) and "{{" not in acct:
            found.append((("entries", i, "account"), acct))
        elif isinstance(acct, AccountSpec):
            if acct.cases:
                found += [(("entries", i, "account", "cases", j, "account"), c.account)
                          for j, c in enumerate(acct.cases)]
            if acct.default:
                found.append((("entries", i, "account", "default"), acct.default))
            if acct.lookup is not None and acct.lookup in tables.lookups:
                found += [(("entries", i, "account", "lookup"), str(v)) for v in tables.lookups[acct.lookup].values()]
    if rule.spec.rounding:
        found.append((("rounding", "account"), rule.spec.rounding.account))
    return found


def _check_accounts(rule: Rule, loc: Located, ledger: LedgerContext, tables: Tables, problems: list[str]) -> None:
    """Accounts known at load time must be in the chart (with a did-you-mean)."""
    for path_, number in _static_accounts(rule, tables):
        if number in ledger.accounts:
            continue
        close = difflib.get_close_matches(number, list(ledger.accounts), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r} ({ledger.accounts[close[0]].name})?" if close else ""
        problems.append(f"{rule.file}:{loc.line(path_)} {fmt_loc(path_)}: account {number!r} is not in the chart of "
                        f"accounts{hint}")


def _ignored(parsed: list[_Parsed], rules: list[Rule], problems: list[str]) -> dict[tuple[str, str], str]:
    ignored: dict[tuple[str, str], str] = {}
    for name, model, loc in parsed:
        if not isinstance(model, IgnoreSpec):
            continue
        for i, t in enumerate(model.tables):
            if any(r.matches_table(t.system, None, t.table) for r in rules):
                problems.append(f"{name}:{loc.line(('tables', i))} tables[{i}]: {t.system}.{t.table} is both "
                                "ignored and mapped by a rule")
            ignored[(t.system, t.table)] = t.reason
    return ignored
