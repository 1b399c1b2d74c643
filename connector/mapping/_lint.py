"""Static checks of loaded rules: what ``load_rules`` accepts but would never post (``mapping check``).

``load_rules`` validates the file format, compiles every expression and finds literal accounts missing from
the chart. A rule can pass all of that and still reject every event it matches: it reads a column its table
does not have (``row.employe_code``), an account it posts to requires a dimension the entry does not give,
or its source system may not post to that account or book. ``lint_rules`` finds these statically:

* **fields** — every ``row.X``/``after.X``/``before.X`` (and ``line.X`` in rules with ``lines:``) in any
  expression or template of a rule, plus ``key_columns`` and ``float_fields``, must be a column of the
  table. Columns come from ``<schemas_dir>/<system>.<table>.envelope.avsc`` (the ``after`` record) and from
  sample events (``--sample``); only when neither knows the table, from the golden cases' events. A field
  guarded by ``| default(…)`` or ``is defined`` is a warning (deliberately optional), not an error; a table
  whose columns are unknown is not checked (one note says so).
* **accounts** — every account known statically (a literal, ``cases``/``default``, the values of a
  ``lookup`` table, or an expression/template whose only possible values are constants and lookups) must
  be a leaf account of the chart that is not frozen; a did-you-mean names the closest chart account.
* **dimensions** — such an account's required dimensions (``Account.required_dimensions``) must be given
  in the entry's ``dimensions:``; a rounding account may require none (the rounding line carries none).
* **permissions** — the rule's ``match.system`` must have an entry under ``permissions:`` (unless the
  ledger says ``default: allow``), which must allow each such account and each statically known book.

Problems carry file, line and key like ``load_rules``' own (``rules/payroll.yaml:31 entries[2]…: …``).
Pure: the only I/O is reading the rule files again (for line numbers) and the schema files.
"""

from __future__ import annotations

import difflib
import fnmatch
import itertools
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from jinja2 import Environment, nodes
from jinja2.exceptions import TemplateSyntaxError
from jinja2.parser import Parser

from connector.events import ChangeEvent
from connector.ledger._checks import DIMENSION_SLOTS, Account, LedgerContext, Permission
from connector.mapping._compile import Rule, RuleSet
from connector.mapping._spec import AccountSpec
from connector.mapping._yaml import Located as _Located
from connector.mapping._yaml import RuleError
from connector.mapping._yaml import fmt_loc as _fmt_loc
from connector.mapping._yaml import load_yaml as _load_yaml

Severity = Literal["error", "warning", "info"]
KeyPath = tuple[str | int, ...]

_ENV: Final = Environment(autoescape=False)
#: names whose attributes are columns of the rule's table (``line``: of its line table)
_HEADER_NAMES: Final = frozenset({"row", "after", "before"})
#: rule keys whose text is a template (``POS {{ row.order_no }}``); a string ``account`` is one too
_TEMPLATE_KEYS: Final = frozenset({"book", "group", "explanation", "data_centre", "unit", "settle_type", "settle_no"})
#: keys (``*`` = any list index or mapping key) whose value is plain text, never compiled
_LITERAL: Final = frozenset({
    ("kind",), ("id",), ("version",), ("description",), ("on_update",), ("skip_zero_lines",), ("coverage",),
    ("key_columns", "*"), ("float_fields", "*"), ("match", "system"), ("match", "table"), ("match", "ops", "*"),
    ("voucher", "rate_type"), ("voucher", "attachments"), ("entries", "*", "side"), ("entries", "*", "for_each"),
    ("entries", "*", "account", "lookup"), ("entries", "*", "account", "default"),
    ("entries", "*", "account", "cases", "*", "account"), ("lines", "table"), ("lines", "system"),
    ("lines", "required"), ("rounding", "account"), ("rounding", "max"), ("rounding", "explanation"),
    ("summarize", "close"), ("summarize", "late"),
})
#: keys whose value is an expression
_EXPRESSION: Final = frozenset({
    ("match", "when"), ("voucher", "date"), ("voucher", "business_date"), ("voucher", "currency"),
    ("voucher", "rate"), ("entries", "*", "when"), ("entries", "*", "amount"), ("entries", "*", "local_amount"),
    ("entries", "*", "currency"), ("entries", "*", "rate"), ("entries", "*", "quantity"), ("entries", "*", "price"),
    ("entries", "*", "dimensions", "*"), ("entries", "*", "account", "expr"), ("entries", "*", "account", "key"),
    ("entries", "*", "account", "cases", "*", "when"), ("lines", "join"),
})
_SLOT_NAMES: Final = {slot: name for name, slot in DIMENSION_SLOTS.items()}
#: most possible values an expression may have to still be "known statically" (lookups × template pieces)
_MAX_VALUES: Final = 1000


@dataclass(frozen=True, slots=True, kw_only=True)
class LintProblem:
    """One finding: ``str()`` gives ``file:line key: message`` (``warning:``/``note:`` before non-errors)."""

    file: str
    line: int | None
    key: str
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        tag = {"error": "", "warning": "warning: ", "info": "note: "}[self.severity]
        return f"{where} {self.key}: {tag}{self.message}" if self.key else f"{where}: {tag}{self.message}"


# --------------------------------------------------------------------------- columns of the tables
@dataclass(frozen=True, slots=True)
class _Columns:
    names: frozenset[str]
    origin: str  #: where the list came from, for messages


def _avro_named(schema: Any, namespace: str | None, out: dict[str, Any]) -> None:
    """Collect named record types (by short and full name) so ``"Value"`` references resolve."""
    if isinstance(schema, list):
        for s in schema:
            _avro_named(s, namespace, out)
    elif isinstance(schema, dict):
        ns = schema.get("namespace", namespace)
        if schema.get("type") in ("record", "error") and isinstance(schema.get("name"), str):
            name = schema["name"]
            out.setdefault(name, schema)
            out[name if "." in name or not ns else f"{ns}.{name}"] = schema
            for f in schema.get("fields") or ():
                if isinstance(f, dict):
                    _avro_named(f.get("type"), ns, out)
        else:
            _avro_named(schema.get("type") if isinstance(schema.get("type"), (dict, list)) else None, ns, out)
            for k in ("items", "values"):
                _avro_named(schema.get(k), ns, out)


def _record_fields(t: Any, named: Mapping[str, Any]) -> list[str] | None:
    if isinstance(t, list):
        for alt in t:
            found = _record_fields(alt, named)
            if found is not None:
                return found
        return None
    if isinstance(t, str):
        return _record_fields(named[t], named) if t in named else None
    if isinstance(t, dict) and t.get("type") in ("record", "error"):
        return [str(f["name"]) for f in t.get("fields") or () if isinstance(f, dict) and "name" in f]
    return None


def envelope_columns(schema: Any) -> list[str] | None:
    """The row columns of a Debezium envelope schema: the fields of its ``after`` (else ``before``) record."""
    if not isinstance(schema, dict):
        return None
    named: dict[str, Any] = {}
    _avro_named(schema, None, named)
    fields = {f.get("name"): f.get("type") for f in schema.get("fields") or () if isinstance(f, dict)}
    for image in ("after", "before"):
        if image in fields:
            found = _record_fields(fields[image], named)
            if found is not None:
                return found
    return None


def _schema_columns(schemas_dir: Path, problems: list[LintProblem]) -> dict[tuple[str, str], _Columns]:
    out: dict[tuple[str, str], _Columns] = {}
    for path in sorted(schemas_dir.glob("*.envelope.avsc")):
        stem = path.name[: -len(".envelope.avsc")]
        system, _, table = stem.partition(".")
        if not table:
            continue
        try:
            schema = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            problems.append(LintProblem(file=str(path), line=None, key="", severity="warning",
                                        message=f"not read, its table's fields are not checked: {e}"))
            continue
        cols = envelope_columns(schema)
        if cols is None:
            problems.append(LintProblem(file=str(path), line=None, key="", severity="warning",
                                        message="no after/before record found: not a Debezium envelope schema"))
            continue
        entry = _Columns(frozenset(cols), str(path))
        names = {table}
        if "." in table:
            names.add(table.rsplit(".", 1)[1])
        ns = str(schema.get("namespace") or "").split(".")  # Debezium: <topic.prefix>.<schema>.<table>
        if len(ns) == 3 and ns[0] == system and ns[2] == table:
            names.add(f"{ns[1]}.{ns[2]}")
        for t in names:
            out.setdefault((system, t), entry)
    return out


def _add_sample(out: dict[tuple[str, str], tuple[set[str], set[str]]], system: str, schema: str | None, table: str,
                images: Iterable[Any], origin: str) -> None:
    cols = {str(k) for img in images if isinstance(img, Mapping) for k in img}
    for t in {table, f"{schema}.{table}"} if schema else {table}:
        known, origins = out.setdefault((system, t), (set(), set()))
        known.update(cols)
        origins.add(origin)


def _golden_columns(rules: RuleSet) -> dict[tuple[str, str], tuple[set[str], set[str]]]:
    out: dict[tuple[str, str], tuple[set[str], set[str]]] = {}
    for file, case in rules.golden:
        for ev in case.events:
            src = ev.get("source")
            if isinstance(src, Mapping) and src.get("system") is not None and src.get("table") is not None:
                _add_sample(out, str(src["system"]), str(src.get("schema", "public")), str(src["table"]),
                            (ev.get("after"), ev.get("before")), file)
    return out


class _Tables:
    """Known columns per (system, table), ``table`` as written in a rule (``table`` or ``schema.table``)."""

    def __init__(self, rules: RuleSet, schemas_dir: Path | None, samples: Iterable[ChangeEvent],
                 problems: list[LintProblem]) -> None:
        self.schemas_dir = schemas_dir
        self.schemas = _schema_columns(schemas_dir, problems) if schemas_dir is not None and schemas_dir.is_dir() \
            else {}
        self.samples: dict[tuple[str, str], tuple[set[str], set[str]]] = {}
        for ev in samples:
            if ev.source.table is not None:
                _add_sample(self.samples, ev.source.name, ev.source.schema, ev.source.table, (ev.after, ev.before),
                            ev.kafka.topic if ev.kafka is not None else "--sample events")
        self.golden = _golden_columns(rules)

    @staticmethod
    def _get(index: Mapping[tuple[str, str], Any], system: str, table: str) -> Any:
        found = index.get((system, table))
        if found is None and "." in table:
            found = index.get((system, table.rsplit(".", 1)[1]))
        return found

    def columns(self, system: str, table: str) -> _Columns | None:
        """The schema's columns and those of ``--sample`` events; only without either, the golden events'."""
        schema: _Columns | None = self._get(self.schemas, system, table)
        sampled: tuple[set[str], set[str]] | None = self._get(self.samples, system, table)
        if schema is not None or sampled:
            names = set(schema.names if schema else ()) | (sampled[0] if sampled else set())
            origins = ([schema.origin] if schema else []) + (sorted(sampled[1]) if sampled else [])
            return _Columns(frozenset(names), ", ".join(origins))
        golden: tuple[set[str], set[str]] | None = self._get(self.golden, system, table)
        if golden:
            return _Columns(frozenset(golden[0]), "the golden events in " + ", ".join(sorted(golden[1])))
        return None

    def unknown_reason(self, system: str, table: str) -> str:
        if self.schemas_dir is None:
            return "no schemas directory (--schemas), no --sample events and no golden case for it"
        return (f"no {self.schemas_dir / f'{system}.{table}.envelope.avsc'}, no --sample events and no golden "
                "case for it")


# --------------------------------------------------------------------------- expressions: parse and walk
def _parse(text: str, template: bool) -> nodes.Node | None:
    """The syntax tree of an expression or a template (``None``: not valid, or plain text)."""
    try:
        if template:
            return _ENV.parse(text) if "{{" in text or "{%" in text else None
        parser = Parser(_ENV, text, state="variable")
        node = parser.parse_expression()
        return node if parser.stream.eos else None
    except TemplateSyntaxError:
        return None


@dataclass(frozen=True, slots=True)
class _Ref:
    name: str  #: row, after, before or line
    field: str
    guarded: bool  #: under ``| default`` or ``is defined``: missing is deliberate


def _role(name: str) -> str:
    return "line" if name == "line" else "header"


def _const_str(node: nodes.Node | None) -> str | None:
    return node.value if isinstance(node, nodes.Const) and isinstance(node.value, str) else None


def _field_of(node: nodes.Node, names: frozenset[str]) -> tuple[str, str] | None:
    """``row.x`` / ``row['x']`` → (row, x); ``lines[0].x`` → (line, x)."""
    if isinstance(node, nodes.Getattr):
        inner, attr = node.node, node.attr
    elif isinstance(node, nodes.Getitem) and _const_str(node.arg) is not None:
        inner, attr = node.node, str(_const_str(node.arg))
    else:
        return None
    if isinstance(inner, nodes.Name) and inner.name in names:
        return inner.name, attr
    if isinstance(inner, nodes.Getitem) and isinstance(inner.node, nodes.Name) and inner.node.name == "lines" \
            and "line" in names:
        return "line", attr
    return None


def _walk(node: nodes.Node, names: frozenset[str], guarded: bool, refs: list[_Ref],
          defined: set[tuple[str, str]]) -> None:
    found = _field_of(node, names)
    if found is not None:
        refs.append(_Ref(found[0], found[1], guarded))
        return
    if isinstance(node, nodes.Filter) and node.name in ("default", "d") and node.node is not None:
        _walk(node.node, names, True, refs, defined)  # a missing field takes the default: deliberate
        for child in itertools.chain(node.args, node.kwargs):
            _walk(child, names, guarded, refs, defined)
        return
    if isinstance(node, nodes.Filter) and node.name == "sum" and isinstance(node.node, nodes.Name) \
            and node.node.name == "lines" and "line" in names:
        for kw in node.kwargs:  # lines | sum(attribute='amount'): a column of the line table
            if kw.key == "attribute" and _const_str(kw.value) is not None:
                refs.append(_Ref("line", str(_const_str(kw.value)), guarded))
    if isinstance(node, nodes.Test) and node.name == "defined":
        inner = _field_of(node.node, names)
        if inner is not None:
            defined.add((_role(inner[0]), inner[1]))
        _walk(node.node, names, True, refs, defined)
        return
    if isinstance(node, nodes.Compare) and len(node.ops) == 1 and node.ops[0].op == "in" \
            and isinstance(node.ops[0].expr, nodes.Name) and node.ops[0].expr.name in names \
            and _const_str(node.expr) is not None:
        defined.add((_role(node.ops[0].expr.name), str(_const_str(node.expr))))  # 'x' in row
    for child in node.iter_child_nodes():
        _walk(child, names, guarded, refs, defined)


# --------------------------------------------------------------------------- statically known values
def _values(node: nodes.Node, lookups: Mapping[str, Mapping[str, Any]]) -> dict[str, str] | None:
    """Every value an expression can have, each with where it comes from; ``None``: not known statically."""
    if isinstance(node, nodes.Const) and isinstance(node.value, (str, int)) and not isinstance(node.value, bool):
        return {str(node.value): ""}
    if isinstance(node, nodes.CondExpr) and node.expr2 is not None:
        yes, no = _values(node.expr1, lookups), _values(node.expr2, lookups)
        return None if yes is None or no is None else {**no, **yes}
    if isinstance(node, nodes.Call) and isinstance(node.node, nodes.Name) and node.node.name == "lookup" \
            and node.args and not node.kwargs and node.dyn_args is None and node.dyn_kwargs is None:
        table = _const_str(node.args[0])
        if table is None or table not in lookups:
            return None
        out = {str(v): f"lookup table {table!r}, key {k!r}" for k, v in lookups[table].items()}
        if len(node.args) > 2:
            fallback = _values(node.args[2], lookups)
            if fallback is None:
                return None
            out.update({v: f"the default of lookup table {table!r}" for v in fallback if v not in out})
        return out
    return None


def _template_values(text: str, lookups: Mapping[str, Mapping[str, Any]]) -> dict[str, str] | None:
    tree = _parse(text, template=True)
    if tree is None:
        return {text: ""} if "{{" not in text and "{%" not in text else None
    pieces: list[dict[str, str]] = []
    for stmt in tree.body if isinstance(tree, nodes.Template) else ():
        if not isinstance(stmt, nodes.Output):
            return None
        for n in stmt.nodes:
            vals = {n.data: ""} if isinstance(n, nodes.TemplateData) else _values(n, lookups)
            if vals is None:
                return None
            pieces.append(vals)
    total = 1
    for p in pieces:
        total *= len(p)
    if total > _MAX_VALUES:
        return None
    out: dict[str, str] = {}
    for combo in itertools.product(*(p.items() for p in pieces)):
        out.setdefault("".join(v for v, _ in combo), "; ".join(w for _, w in combo if w))
    return out


def _expression_values(text: str, lookups: Mapping[str, Mapping[str, Any]]) -> dict[str, str] | None:
    node = _parse(text, template=False)
    return None if node is None else _values(node, lookups)


# --------------------------------------------------------------------------- suggestions
def _closest(word: str, options: Iterable[str]) -> str | None:
    found = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return found[0] if found else None


def _closest_account(number: str, accounts: Iterable[Account], name: str | None = None) -> Account | None:
    """The account most like ``number`` (or, for a known account, most like its ``name``), if any is close."""
    best: tuple[float, Account] | None = None
    for a in accounts:
        score = max(difflib.SequenceMatcher(None, number, a.number).ratio(),
                    difflib.SequenceMatcher(None, name or number, a.name).ratio())
        if score >= 0.6 and (best is None or score > best[0]):
            best = (score, a)
    return best[1] if best else None


def _did_you_mean_account(a: Account | None) -> str:
    return f"; did you mean '{a.number}' ({a.name})?" if a is not None else ""


_UNKNOWN_ACCOUNT: Final = re.compile(r"account '([^']*)' is not in the chart of accounts$")


def with_account_suggestions(directory: str | Path, problems: Sequence[str]) -> list[str]:
    """``load_rules``' problems with a did-you-mean added to each unknown account.

    ``load_rules`` raises on an unknown literal account, so ``lint_rules`` never sees such rules; the chart is
    read here from the directory's ledger files (any that do not parse are left out).
    """
    if not any(_UNKNOWN_ACCOUNT.search(p) for p in problems):
        return list(problems)
    chart: dict[str, Account] = {}
    for path in sorted(Path(directory).rglob("*")):
        if path.suffix not in (".yaml", ".yml") or not path.is_file():
            continue
        try:
            data, _ = _load_yaml(path)
        except (RuleError, OSError):
            continue
        if isinstance(data, Mapping) and data.get("kind") == "ledger":
            for a in data.get("accounts") or ():
                if isinstance(a, Mapping) and a.get("number") is not None:
                    chart[str(a["number"])] = Account(number=str(a["number"]), name=str(a.get("name", "")))
    out = []
    for p in problems:
        m = _UNKNOWN_ACCOUNT.search(p)
        out.append(p + _did_you_mean_account(_closest_account(m.group(1), chart.values())) if m and chart else p)
    return out


# --------------------------------------------------------------------------- the rule walk
def _norm(path: KeyPath) -> tuple[str, ...]:
    """A key path with list indexes and dimension names as ``*`` (``entries.*.dimensions.*``)."""
    return tuple("*" if isinstance(p, int) or (i and path[i - 1] == "dimensions") else str(p)
                 for i, p in enumerate(path))


def _strings(data: Any, path: KeyPath = ()) -> Iterator[tuple[KeyPath, str]]:
    if isinstance(data, str):
        yield path, data
    elif isinstance(data, Mapping):
        for k, v in data.items():
            yield from _strings(v, (*path, str(k)))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from _strings(v, (*path, i))


def _kind(path: KeyPath) -> Literal["literal", "template", "expression", "unknown"]:
    norm = _norm(path)
    if norm in _LITERAL:
        return "literal"
    if norm in _EXPRESSION:
        return "expression"
    if (norm and norm[-1] in _TEMPLATE_KEYS) or norm == ("entries", "*", "account"):
        return "template"
    return "unknown"


@dataclass(slots=True)
class _Cand:
    """An account an entry (or the rounding line) can post to, known without an event."""

    path: KeyPath
    number: str
    via: str = ""
    entry: int | None = None  #: index into ``entries``; ``None``: the rounding line


#: column names that hold a row's currency
_CURRENCY_COLUMNS: Final = frozenset({"currency", "currency_code", "currency_id", "curr", "ccy", "curr_code"})


@dataclass
class _RuleLint:
    rule: Rule
    data: Any
    loc: _Located
    tables: _Tables
    ledger: LedgerContext
    ledger_files: list[str]
    lookups: Mapping[str, Mapping[str, Any]]
    out: list[LintProblem] = field(default_factory=list)

    def problem(self, path: KeyPath, message: str, severity: Severity = "error") -> None:
        self.out.append(LintProblem(file=self.rule.file, line=self.loc.line(path), key=_fmt_loc(path),
                                    message=message, severity=severity))

    # fields ---------------------------------------------------------------
    def _references(self, with_lines: bool
                    ) -> tuple[list[tuple[KeyPath, list[_Ref], set[tuple[str, str]]]], set[tuple[str, str]],
                               dict[int, set[tuple[str, str]]]]:
        """Every field reference of the rule by key path, with the fields guarded rule-wide (``match.when``)
        and per entry (``entries[i].when``)."""
        names = _HEADER_NAMES | ({"line"} if with_lines else set())
        parsed: list[tuple[KeyPath, list[_Ref], set[tuple[str, str]]]] = []
        rule_guards: set[tuple[str, str]] = set()
        entry_guards: dict[int, set[tuple[str, str]]] = {}
        for path, text in _strings(self.data):
            kind = _kind(path)
            if kind == "literal":
                continue
            tree = _parse(text, template=kind == "template" or (kind == "unknown" and "{{" in text))
            if tree is None:
                continue
            refs: list[_Ref] = []
            defined: set[tuple[str, str]] = set()
            _walk(tree, frozenset(names), False, refs, defined)
            parsed.append((path, refs, defined))
            if path == ("match", "when"):
                rule_guards |= defined
            elif len(path) == 3 and path[0] == "entries" and isinstance(path[1], int) and path[2] == "when":
                entry_guards[path[1]] = defined
        # plain column names: key_columns and float_fields (``after.amount`` or ``amount``)
        for key in ("key_columns", "float_fields"):
            values = self.data.get(key) if isinstance(self.data, Mapping) else None
            for i, col in enumerate(values if isinstance(values, list) else ()):
                name, _, rest = str(col).partition(".")
                ref = _Ref(name, rest, False) if rest and name in _HEADER_NAMES else _Ref("row", str(col), False)
                parsed.append(((key, i), [ref], set()))
        return parsed, rule_guards, entry_guards

    def fields(self) -> None:
        spec = self.rule.spec
        line_table = self.rule.line_table()
        tables = {"header": (spec.match.system, spec.match.table)}
        if line_table:
            tables["line"] = line_table
        columns = {role: self.tables.columns(*t) for role, t in tables.items()}
        parsed, rule_guards, entry_guards = self._references(line_table is not None)
        unchecked: set[str] = set()
        seen: set[tuple[KeyPath, str, str]] = set()
        for path, refs, defined in parsed:
            guards = rule_guards | defined
            if path[:1] == ("entries",) and len(path) > 1 and isinstance(path[1], int):
                guards = guards | entry_guards.get(path[1], set())
            for ref in refs:
                role = _role(ref.name)
                if role not in tables:
                    continue
                cols = columns[role]
                if cols is None:
                    unchecked.add(role)
                    continue
                if ref.field in cols.names or (path, ref.name, ref.field) in seen:
                    continue
                seen.add((path, ref.name, ref.field))
                system, table = tables[role]
                guarded = ref.guarded or (role, ref.field) in guards
                hint = _closest(ref.field, cols.names)
                what = f"{ref.name}.{ref.field}" if path[0] not in ("key_columns", "float_fields") else repr(ref.field)
                msg = f"{what}: {system}.{table} has no column {ref.field!r} (columns from {cols.origin})"
                if guarded:
                    msg += ("; it is guarded (| default / is defined), so it always takes the fallback"
                            + (f" — did you mean {hint!r}?" if hint else ""))
                else:
                    msg += f"; did you mean {hint!r}?" if hint else ""
                self.problem(path, msg, "warning" if guarded else "error")
        for role in sorted(unchecked):
            system, table = tables[role]
            path = ("match", "table") if role == "header" else ("lines", "table")
            self.problem(path, f"fields of {system}.{table} not checked: {self.tables.unknown_reason(system, table)}",
                         "info")

    # currency -------------------------------------------------------------
    def currency(self) -> None:
        """A source row that carries its currency must be booked in it, not silently in local currency."""
        spec = self.rule.spec
        cols = self.tables.columns(spec.match.system, spec.match.table)
        if cols is None:
            return
        carried = [c for c in cols.names if c.lower() in _CURRENCY_COLUMNS]
        if not carried or spec.voucher.currency is not None or any(e.currency is not None for e in spec.entries):
            return
        self.problem(("voucher",), f"{spec.match.system}.{spec.match.table} carries a currency in column "
                     f"{carried[0]!r}, but the rule books every line in the book's local currency: add "
                     f"currency: \"row.{carried[0]}\" (a foreign amount would be booked 1:1)")

    # accounts, dimensions, permissions ------------------------------------
    def candidates(self) -> list[_Cand]:
        out: list[_Cand] = []
        for i, e in enumerate(self.rule.spec.entries):
            base: KeyPath = ("entries", i, "account")
            a = e.account
            if isinstance(a, str):
                if "{{" not in a and "{%" not in a:
                    out.append(_Cand(base, a, entry=i))
                else:
                    out += [_Cand(base, v, f" (from {w})" if w else "", i)
                            for v, w in (_template_values(a, self.lookups) or {}).items()]
                continue
            assert isinstance(a, AccountSpec)
            if a.expr is not None:
                out += [_Cand((*base, "expr"), v, f" (from {w})" if w else "", i)
                        for v, w in (_expression_values(a.expr, self.lookups) or {}).items()]
            if a.lookup is not None:
                out += [_Cand((*base, "lookup"), str(v), f" (lookup table {a.lookup!r}, key {k!r})", i)
                        for k, v in self.lookups.get(a.lookup, {}).items()]
            for j, case in enumerate(a.cases or ()):
                out.append(_Cand((*base, "cases", j, "account"), case.account, entry=i))
            if a.default is not None:
                out.append(_Cand((*base, "default"), a.default, entry=i))
        if self.rule.spec.rounding is not None:
            out.append(_Cand(("rounding", "account"), self.rule.spec.rounding.account))
        return out

    def accounts(self) -> None:
        chart = self.ledger.accounts
        spec = self.rule.spec
        system = spec.match.system
        perm: Permission | None = self.ledger.permissions.get(system)
        check_perm = perm is not None
        # as the permissions check at run time: default deny, once the ledger has a chart or books
        if perm is None and (self.ledger.accounts or self.ledger.books):
            if str(getattr(self.ledger, "default_permission", "deny")) != "allow":
                where = " or ".join(self.ledger_files) or "the ledger file"
                self.problem(("match", "system"), f"source system {system!r} has no entry under permissions: in "
                             f"{where}; nothing it maps can post (add one, or `default: allow`)")
        seen: set[tuple[KeyPath, str]] = set()
        for c in self.candidates():
            if (c.path, c.number) in seen:
                continue
            seen.add((c.path, c.number))
            acct = chart.get(c.number)
            label = f"account {c.number!r}{c.via}"
            if chart and acct is None:
                self.problem(c.path, f"{label} is not in the chart of accounts"
                             + _did_you_mean_account(_closest_account(c.number, chart.values())))
                continue
            if acct is not None:
                label = f"account {c.number!r} ({acct.name}){c.via}"
                if not acct.leaf:
                    leaves = [a for a in chart.values() if a.leaf and a.number.startswith(f"{acct.number}.")]
                    self.problem(c.path, f"{label} is not a leaf account (明细科目): Kingdee rejects entries on it"
                                 + (f"; use one of {', '.join(a.number for a in leaves[:5])}" if leaves else ""))
                if acct.frozen:
                    self.problem(c.path, f"{label} is frozen (已禁用) in the chart of accounts")
                self._dimensions(c, acct, label)
            if check_perm and perm is not None and not perm.allows_account(c.number):
                self._denied(c, perm, label)

    def _dimensions(self, c: _Cand, acct: Account, label: str) -> None:
        if not acct.required_dimensions:
            return
        given = set(self.rule.spec.entries[c.entry].dimensions) if c.entry is not None else set()
        missing = sorted(acct.required_dimensions - given)
        if not missing:
            return
        names = ", ".join(f"{self.ledger.label(s)} ({_SLOT_NAMES[s] + '/' if s in _SLOT_NAMES else ''}{s})"
                          for s in missing)
        plural = "s" if len(missing) > 1 else ""
        if c.entry is None:
            self.problem(c.path, f"rounding {label} requires dimension{plural} {names}, but the rounding line "
                         "carries no dimensions: use an account without required dimensions")
            return
        example = ", ".join(f"{_SLOT_NAMES.get(s, s)}: …" for s in missing)
        self.problem(c.path, f"{label} requires dimension{plural} {names}, which entries[{c.entry}] does not give: "
                     f"add dimensions: {{{example}}}")

    def _denied(self, c: _Cand, perm: Permission, label: str) -> None:
        chart = self.ledger.accounts
        denied = any(fnmatch.fnmatchcase(c.number, pat) for pat in perm.deny_accounts)
        why = f"denied by permissions.{perm.system}.deny_accounts" if denied \
            else f"not in permissions.{perm.system}.accounts [{', '.join(perm.accounts)}]"
        allowed = [a for a in chart.values() if a.leaf and not a.frozen and perm.allows_account(a.number)]
        acct = chart.get(c.number)
        hint = _closest_account(c.number, allowed, acct.name if acct else None)
        self.problem(c.path, f"source system {perm.system!r} may not post to {label}: {why} in "
                     f"{' or '.join(self.ledger_files) or 'the ledger file'}" + _did_you_mean_account(hint))

    def book(self) -> None:
        text = self.rule.spec.voucher.book
        values = _template_values(text, self.lookups)
        if values is None:
            return
        books = self.ledger.books
        perm = self.ledger.permissions.get(self.rule.spec.match.system)
        path: KeyPath = ("voucher", "book")
        for value, via in sorted(values.items()):
            label = f"book {value!r}" + (f" (from {via})" if via else "")
            if books and value not in books:
                hint = _closest(value, books)
                self.problem(path, f"{label} is not configured under books: in "
                             f"{' or '.join(self.ledger_files) or 'the ledger file'}"
                             + (f"; did you mean {hint!r}?" if hint else ""))
            if perm is not None and perm.books is not None and value not in perm.books:
                self.problem(path, f"source system {perm.system!r} may not post to {label}: not in "
                             f"permissions.{perm.system}.books [{', '.join(sorted(perm.books))}]")


# --------------------------------------------------------------------------- entry point
def lint_rules(rules: RuleSet, *, schemas_dir: Path | None = None,
               samples: Iterable[ChangeEvent] = ()) -> list[LintProblem]:
    """Everything in ``rules`` that loads but cannot post, sorted by file and line.

    ``schemas_dir`` holds ``<system>.<table>.envelope.avsc`` files (Debezium envelopes); ``samples`` are
    decoded change events whose row images show more columns. Without either for a table, the golden
    cases' events are its columns; without those, its fields are not checked (an ``info`` problem).
    """
    problems: list[LintProblem] = []
    tables = _Tables(rules, schemas_dir, samples, problems)
    docs: dict[str, tuple[Any, _Located]] = {}
    for name in dict.fromkeys([*rules.files, *(r.file for r in rules.rules)]):
        try:
            docs[name] = _load_yaml(Path(name))
        except (RuleError, OSError):
            docs[name] = ({}, _Located(None))
    ledger_files = [n for n, (d, _) in docs.items() if isinstance(d, Mapping) and d.get("kind") == "ledger"]
    for rule in rules.rules:
        data, loc = docs.get(rule.file) or ({}, _Located(None))
        if not isinstance(data, Mapping) or data.get("id") != rule.id:
            data = rule.spec.model_dump(exclude_none=True)  # the file changed since it was loaded
        lint = _RuleLint(rule=rule, data=data, loc=loc, tables=tables, ledger=rules.ledger, ledger_files=ledger_files,
                         lookups=rules.tables.lookups)
        lint.fields()
        lint.currency()
        lint.accounts()
        lint.book()
        problems += lint.out
    unique = list(dict.fromkeys(problems))
    return sorted(unique, key=lambda p: (p.file, p.line or 0, p.key))
