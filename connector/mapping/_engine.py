"""The pure mapping core: ``ChangeEvent`` + rules (+ the row's active vouchers) → vouchers or rejections.

Change semantics per rule: ``c``/``r`` post a voucher; ``u`` (``on_update``) reverses the row's active
voucher and posts the new one (``reverse_and_repost``, unchanged amounts are a no-op), posts only the
difference (``post_delta``) or leaves it (``ignore``); ``d`` reverses (红字冲销). The row's active vouchers
come from a ``PriorLookup`` (``connector.ledger``) — the journal's ``BatchState`` in production, an
``InMemoryLedger`` in previews and golden tests.
An event's outcome is all or nothing: one rejection and none of its vouchers are emitted.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date
from decimal import Decimal
from typing import Any, Final, NamedTuple

from connector.errors import MoneyError
from connector.events import ChangeEvent, Op
from connector.ledger._checks import Book, LedgerContext, check_voucher, period_open
from connector.ledger._model import (
    Entry,
    ReasonCode,
    Rejection,
    RowRef,
    Side,
    SourceRef,
    SummaryRef,
    Voucher,
    VoucherKind,
    canonical_pk,
    content_digest,
    reverse,
    voucher_key,
)
# Row state lives in the ledger; these names stay importable from here (and from connector.mapping).
from connector.ledger._state import NO_PRIOR as NO_PRIOR
from connector.ledger._state import InMemoryLedger as InMemoryLedger
from connector.ledger._state import PriorLookup as PriorLookup
from connector.mapping._expr import BOOK_TZ, DEFAULT_TZ, MAX_ITEMS, Compiled, EvalError, number, to_date, truth
from connector.mapping._compile import CompiledEntry, Rule, RuleSet
from connector.mapping._spec import RoundingSpec
from connector.money import MAX_MONEY, MONEY_CONTEXT, STEPS, ZERO, quantize, to_money


@dataclass(frozen=True, slots=True, kw_only=True)
class MapResult:
    """What one change event amounts to: vouchers, or rejections, or nothing (``skipped`` says why)."""

    vouchers: tuple[Voucher, ...] = ()
    rejections: tuple[Rejection, ...] = ()
    skipped: str | None = None
    #: indices (into ``Mapper.map``'s ``lines``) of the line events this result's vouchers were built from
    grouped: tuple[int, ...] = ()

    @property
    def rejected(self) -> bool:
        return bool(self.rejections)


_SET_VOUCHERS: Final[Callable[[Any, Any], None]] = vars(MapResult)["vouchers"].__set__
_SET_REJECTIONS: Final[Callable[[Any, Any], None]] = vars(MapResult)["rejections"].__set__
_SET_SKIPPED: Final[Callable[[Any, Any], None]] = vars(MapResult)["skipped"].__set__
_SET_GROUPED: Final[Callable[[Any, Any], None]] = vars(MapResult)["grouped"].__set__


def _result(vouchers: tuple[Voucher, ...], rejections: tuple[Rejection, ...], skipped: str | None,
            grouped: tuple[int, ...]) -> MapResult:
    """``MapResult(vouchers=…, rejections=…, skipped=…, grouped=…)``, built through its slots: one per event,
    and the frozen dataclass's keyword ``__init__`` costs several times as much."""
    r = object.__new__(MapResult)
    _SET_VOUCHERS(r, vouchers)
    _SET_REJECTIONS(r, rejections)
    _SET_SKIPPED(r, skipped)
    _SET_GROUPED(r, grouped)
    return r


def _rejection(e: EvalError, rule: Rule, source: SourceRef | None) -> Rejection:
    try:
        code = ReasonCode(e.code)
    except ValueError:
        code = ReasonCode.EXPRESSION_ERROR
    return Rejection(code=code, message=e.message, rule=rule.id, field=e.field,
                     value=None if e.value is None else str(e.value)[:200], source=source)


def describe_failure(e: BaseException) -> str:
    """A readable reason for an unexpected failure while mapping one event (it becomes a rejection)."""
    if isinstance(e, MemoryError):
        return "ran out of memory evaluating the rule (an expression builds too much data)"
    if isinstance(e, RecursionError):
        return "the rule's expressions recurse too deeply"
    if isinstance(e, KeyError):
        return f"a value has no key {str(e)[:100]}"
    text = str(e)
    return f"{type(e).__name__}: {text[:300]}{'…' if len(text) > 300 else ''}"


def _money(v: Any, field: str) -> Decimal:
    """A rule's amount as an exact Decimal, in any decimal mode (text and binary floats included)."""
    if type(v) is Decimal and v.is_finite() and -MAX_MONEY < v < MAX_MONEY:  # decoded amounts: the hot path
        return v
    if v is None:
        raise EvalError("MISSING_FIELD", f"{field} is empty (null)", field)
    try:
        return to_money(number(v, field), field=field)
    except EvalError as e:
        raise EvalError(e.code if e.code != "EXPRESSION_ERROR" else "INVALID_AMOUNT", e.message, field, e.value) from None
    except MoneyError as e:
        raise EvalError("INVALID_AMOUNT", str(e), field, v) from None


def _dimensions(ce: CompiledEntry, s: Mapping[str, Any]) -> dict[str, str]:
    """An entry's dimension values; empty and blank ones are left out (a blank is not a value, and Kingdee
    wants no blank FDetailID refs)."""
    dims = {}
    for slot, c in ce.dimensions:
        v = c(s)
        if v is None or v == "":
            continue
        text = v if type(v) is str else str(v)
        if text.strip():
            dims[slot] = text
    return dims


def _optional_money(expr: Compiled | None, s: Mapping[str, Any], field: str) -> Decimal | None:
    """Quantity / price: optional, so an absent expression or a null value means "not given"."""
    if expr is None:
        return None
    v = expr(s)
    return None if v is None else _money(v, field)


def _same_lines(a: Sequence[Voucher], b: Voucher) -> bool:
    """Would posting ``b`` change nothing compared with the active vouchers ``a``? Dates compare as the rule
    gave them (before a period policy moved them)."""
    if len(a) != 1:
        return False
    old = a[0]
    if (old.book, old.original_date or old.date, old.group) != (b.book, b.original_date or b.date, b.group):
        return False
    if (old.summary and old.summary.parts) != (b.summary and b.summary.parts):
        return False  # same lines, other summary key (another store, another payment method): it moves

    def lines(v: Voucher) -> list[tuple[Any, ...]]:
        return sorted((e.account, e.side.value, e.amount, e.amount_for, e.currency, e.rate,
                       tuple(sorted(e.dimensions.items())), e.quantity) for e in v.entries)
    return lines(old) == lines(b)


def _period(d: date) -> str:
    return f"{d.year:04d}-{d.month:02d}"


def _exact_floats(img: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """Binary floats (Debezium ``decimal.handling.mode=double``) as the Decimal of their shortest repr."""
    if img is None:
        return None
    return {k: (Decimal(repr(v)) if type(v) is float and math.isfinite(v) else v) for k, v in img.items()}


class _Header(NamedTuple):
    """What a voucher's entries are built with: its book, dates, text, currency and rate."""

    book: str
    book_cfg: Book | None
    local: str  #: the book's local currency
    local_places: int
    day: date
    business_day: date | None
    explanation: str
    currency: str  #: the voucher's (transaction) currency
    rate_type: str
    rate: Decimal


_OP_TEXT: Final = {op: op.value for op in Op}
_DEBIT: Final = Side.DEBIT
_STEPS: Final = STEPS
_QUANTIZE: Final = Decimal.quantize  #: called positionally (value, quantum, None, context): keywords cost more
#: a voucher is built positionally (``_new_tuple``): these are its fields, in order
assert Voucher._fields == ("key", "book", "date", "group", "explanation", "entries", "source", "rule_id",
                           "rule_version", "kind", "reverses", "business_date", "data_centre", "attachments",
                           "review_reasons", "original_date", "opening", "summary")
assert Entry._fields == ("account", "side", "amount", "explanation", "currency", "rate_type", "rate", "amount_for",
                         "quantity", "price", "unit", "settle_type", "settle_no", "dimensions")
_new_tuple: Final = tuple.__new__
_SCOPE: Final = object()  #: the key of the event's scope among the per-event values

#: Differences of exact source amounts below this are arithmetic noise (38-digit division), not data errors.
_NOISE: Final = Decimal("1e-9")


class Mapper:
    """Applies a ``RuleSet`` to change events. Pure: no I/O; the only state is the limits' amount history.

    ``time_budget_s`` bounds the work one event may cause (checked between entries and lines); together
    with the expression bounds of ``_expr`` no rule can hold the pipeline on one event.
    """

    def __init__(self, rules: RuleSet, *, ledger: LedgerContext | None = None, skip_checks: Sequence[str] = (),
                 time_budget_s: float = 2.0) -> None:
        self.rules = rules
        self.ledger = ledger if ledger is not None else rules.ledger
        self.skip_checks = tuple(skip_checks)
        self.time_budget_s = time_budget_s
        zones = {b.timezone for b in self.ledger.books.values()}
        #: the zone conditions are evaluated in before a rule names its book: the books' one zone, if shared
        self.default_tz = next(iter(zones)) if len(zones) == 1 else DEFAULT_TZ
        self._deadline = 0.0
        #: (system, schema, table, op) → (the table's rules, those that map the op)
        self._plans: dict[tuple[str, str | None, str | None, str], tuple[tuple[Rule, ...], tuple[Rule, ...]]] = {}

    # ------------------------------------------------------------------ public
    def map(self, event: ChangeEvent, prior: PriorLookup = NO_PRIOR, *, remap: str | None = None,
            lines: Sequence[ChangeEvent] | None = None) -> MapResult:
        """Map one change. ``lines``: the other change events of the event's source transaction (``None``
        when it was not grouped by transaction): rules with ``lines:`` take their document lines from them.

        The row's *state* decides: a create, a snapshot read or an update is compared with the vouchers in
        force for the row — the same accounting content posts nothing (a row read again), other content
        reverses them and posts the new voucher (or the difference, or nothing: ``on_update``); a delete
        reverses. With ``remap`` (a tag naming the rules version), ``event`` is a row's *latest* change and
        its current state is re-mapped against the vouchers in force even where ``on_update`` says
        otherwise; a deleted row → nothing.

        Never raises for a bad event or a bad rule: whatever fails becomes the event's rejection."""
        try:
            return self._map(event, prior, remap, lines)
        except Exception as e:  # the last line of defence: one event must never stop the pipeline
            src = event.source
            return MapResult(rejections=(Rejection(
                code=ReasonCode.EXPRESSION_ERROR, value=src.table_id,
                message=f"the event could not be mapped: {describe_failure(e)}"),))

    def _map(self, event: ChangeEvent, prior: PriorLookup, remap: str | None,
             lines: Sequence[ChangeEvent] | None) -> MapResult:
        if remap is not None:
            if event.op is Op.DELETE or event.after is None:
                return MapResult(skipped="row deleted: nothing in force to correct")
            event = replace(event, op=Op.UPDATE, before=event.after)
        src = event.source
        op = _OP_TEXT[event.op]
        plan_key = (src.name, src.schema, src.table, op)
        plan = self._plans.get(plan_key)
        if plan is None:  # the rules of a table and op, once: every event asks
            table_rules = self.rules.for_table(src.name, src.schema, src.table)
            plan = (table_rules, tuple(r for r in table_rules if op in r.spec.match.ops))
            if len(self._plans) < 10_000:
                self._plans[plan_key] = plan
        rules, applicable = plan
        if not applicable:
            return self._not_mapped(event, rules)
        grouped: set[int] = set()
        vouchers, rejections, matched = self._apply_rules(applicable, event, prior, remap, lines, grouped)
        if not rejections and not matched:
            rejections += self._uncovered(event, rules)
        checked = self._checked(vouchers, rejections) if vouchers else vouchers
        if rejections:
            return _result((), tuple(rejections), None, ())
        if not checked:
            why = ("unchanged: the row's vouchers in force already book this content" if matched
                   else "no accounting effect (conditions not met, or nothing to reverse)")
            return _result((), (), why, tuple(sorted(grouped)) if grouped else ())
        return _result(tuple(checked), (), None, tuple(sorted(grouped)) if grouped else ())

    def _not_mapped(self, event: ChangeEvent, rules: Sequence[Rule]) -> MapResult:
        """No rule maps this op of this table: skipped (an ignored table or op) or rejected (no rule at all)."""
        src = event.source
        if rules:
            return MapResult(skipped=f"op {event.op.value} not mapped by {', '.join(r.id for r in rules)}")
        if event.op in (Op.TRUNCATE, Op.MESSAGE):
            return MapResult(skipped=f"op {event.op.value} ignored (no rule asks for it)")
        why = self.rules.ignored_reason(src.name, src.schema, src.table)
        if why is not None:
            return MapResult(skipped=f"table {src.table_id} ignored: {why}")
        return MapResult(rejections=(Rejection(
            code=ReasonCode.NO_RULE, message=f"no mapping rule for system {src.name!r} table "
            f"{src.table_id!r}", value=src.table_id),))

    def _apply_rules(self, applicable: Sequence[Rule], event: ChangeEvent, prior: PriorLookup, remap: str | None,
                     lines: Sequence[ChangeEvent] | None, grouped: set[int]
                     ) -> tuple[list[Voucher], list[Rejection], bool]:
        """Each rule's vouchers (or its rejection) for the change, and whether any rule matched the row."""
        vouchers: list[Voucher] = []
        rejections: list[Rejection] = []
        matched = False
        self._deadline = time.perf_counter() + self.time_budget_s
        shared: dict[Any, Any] = {}  # per event: the scope and the source refs, built when first needed
        for rule in applicable:
            source_ref: SourceRef | None = None
            token = BOOK_TZ.set(self.default_tz)
            try:
                cols = rule.key_columns
                source_ref = shared.get(cols)
                if source_ref is None:
                    source_ref = self._source_ref(rule, event)
                    if remap is not None:
                        source_ref = source_ref._replace(position=f"{source_ref.position}#remap:{remap}")
                    shared[cols] = source_ref
                made, hit = self._apply(rule, event, source_ref, prior, remap is not None, lines, grouped, shared)
                if made:
                    vouchers.extend(made)
                matched = matched or hit
            except EvalError as e:
                rejections.append(_rejection(e, rule, source_ref))
            except ArithmeticError as e:  # decimal overflow of amount × rate etc. (found by the fuzz test)
                rejections.append(Rejection(code=ReasonCode.INVALID_AMOUNT, rule=rule.id, source=source_ref,
                                            message=f"amounts out of range for ledger arithmetic "
                                                    f"({type(e).__name__})"))
            except Exception as e:  # KeyError, RecursionError, MemoryError …: this event's rejection, not a crash
                rejections.append(Rejection(code=ReasonCode.EXPRESSION_ERROR, rule=rule.id, source=source_ref,
                                            message=f"rule {rule.id} failed on this event: {describe_failure(e)}"))
            finally:
                BOOK_TZ.reset(token)
        return vouchers, rejections, matched

    @staticmethod
    def _uncovered(event: ChangeEvent, rules: Sequence[Rule]) -> list[Rejection]:
        """A row no rule matched, of a table whose rules say every row must post (``coverage: every_row``)."""
        every = [r for r in rules if r.spec.coverage == "every_row"]
        if not every or event.op not in (Op.CREATE, Op.READ, Op.UPDATE):
            return []
        src = event.source
        conds = "; ".join(f"{r.id} ({r.spec.match.when or 'every row'})" for r in rules)
        return [Rejection(
            code=ReasonCode.UNMATCHED, rule=every[0].id, value=src.table_id,
            message=f"this {src.table} row matches none of the rules for its table — {conds} — but every "
                    f"row must post (coverage: every_row in {', '.join(r.id for r in every)})")]

    def _checked(self, vouchers: Sequence[Voucher], rejections: list[Rejection]) -> list[Voucher]:
        """The vouchers that pass the accounting checks; the others' rejections go to ``rejections``."""
        checked: list[Voucher] = []
        for v in vouchers:
            try:
                result = check_voucher(v, self.ledger, skip=self.skip_checks)
            except ArithmeticError as e:
                rejections.append(Rejection(code=ReasonCode.INVALID_AMOUNT, rule=v.rule_id, source=v.source,
                                            message=f"amounts out of range for ledger arithmetic "
                                                    f"({type(e).__name__})"))
                continue
            if isinstance(result, Voucher):
                checked.append(result)
            else:
                rejections.extend(result)
        return checked

    # ------------------------------------------------------------------ internals
    def _check_time(self) -> None:
        if time.perf_counter() > self._deadline:
            raise EvalError("EXPRESSION_ERROR", f"mapping this event took longer than {self.time_budget_s:g} s "
                                                "(the rule's expressions do too much work)")

    def _source_ref(self, rule: Rule, event: ChangeEvent) -> SourceRef:
        cols = rule.spec.key_columns
        if cols:
            row = event.row if event.row is not None else event.key
            if row is None or any(c not in row for c in cols):
                img = event.key or {}
                if not all(c in img for c in cols):
                    raise EvalError("NO_PRIMARY_KEY", f"key columns {cols} not in the event", "key_columns")
                row = img
            pk = canonical_pk({c: row[c] for c in cols})
        elif event.key:
            pk = canonical_pk(event.key)
        else:
            raise EvalError("NO_PRIMARY_KEY", "the event has no Kafka key and the rule names no key_columns",
                            "key_columns")
        src = event.source
        return _new_tuple(SourceRef, (_new_tuple(RowRef, (src.name, src.table_id, pk)), src.position,
                                      _OP_TEXT[event.op], src.ts_ms))

    def _scope(self, event: ChangeEvent, row: Mapping[str, Any] | None) -> dict[str, Any]:
        before, after = event.before, event.after
        if event.float_fields:  # double mode: every float as the exact Decimal of its shortest repr
            before, after = _exact_floats(before), _exact_floats(after)
            row = after if row is event.after else before
        src = event.source
        return {"row": row, "before": before, "after": after, "key": event.key or {}, "op": _OP_TEXT[event.op],
                "source": {"system": src.name, "db": src.db, "schema": src.schema, "table": src.table,
                           "ts_ms": src.ts_ms, "lsn": src.lsn, "tx_id": src.tx_id, "snapshot": src.snapshot},
                "vars": {}}

    def _matches(self, rule: Rule, scope: Mapping[str, Any]) -> bool:
        if scope["row"] is None:
            return False
        return rule.when is None or truth(rule.when(scope))

    def _lines(self, rule: Rule, event: ChangeEvent, scope: dict[str, Any], lines: Sequence[ChangeEvent] | None,
               used: set[int]) -> None:
        """Put the header's document lines (``lines``: row images, in transaction order) into ``scope`` and
        record which of the transaction's events they came from. Deleted lines are not lines any more."""
        spec = rule.spec.lines
        assert spec is not None
        rows: list[Mapping[str, Any]] = []
        picked: list[int] = []
        join = rule.lines_join
        for i, ev in enumerate(lines or ()):
            s = ev.source
            if ev.after is None or ev.op is Op.DELETE or not rule.is_line(s.name, s.schema, s.table):
                continue
            after = _exact_floats(ev.after) if ev.float_fields else ev.after
            if join is not None and not truth(join({**scope, "line": after})):
                continue
            rows.append(after)  # type: ignore[arg-type]
            picked.append(i)
            if len(rows) > MAX_ITEMS:
                raise EvalError("EXPRESSION_ERROR", f"the document has more than {MAX_ITEMS:,} {spec.table} lines",
                                "lines", spec.table)
        self._check_time()
        scope["lines"] = rows
        used.update(picked)
        if not rows and spec.required:
            tx = event.transaction
            if lines is None or tx is None:
                why = ("the event was not grouped with its source transaction (Debezium transaction metadata off, "
                       "or the transaction topic not consumed)")
            else:
                why = f"source transaction {tx.group} carries none of them"
            raise EvalError("LINES_MISSING", f"rule {rule.id} posts this row with its {spec.table} lines, but {why}",
                            "lines", spec.table)

    def _history(self, event: ChangeEvent, new: Voucher | None, olds: Sequence[Voucher]) -> bool:
        """Is this change before its source's cutover (opening state: journaled, in force, never posted)?"""
        c = self.ledger.cutover.get(event.source.name)
        if c is None:
            return False
        if c.lsn is not None:
            return event.source.lsn is not None and event.source.lsn < c.lsn
        # A date cutover: snapshot rows dated before it, of rows nothing but opening state was recorded for.
        return (c.date is not None and event.op is Op.READ and new is not None and new.date < c.date
                and all(o.opening for o in olds))

    def _apply(self, rule: Rule, event: ChangeEvent, src: SourceRef, prior: PriorLookup, force_repost: bool,
               lines: Sequence[ChangeEvent] | None, used: set[int], shared: dict[Any, Any]
               ) -> tuple[list[Voucher], bool]:
        """The vouchers this change makes under ``rule``, and whether the row matched the rule."""
        olds = prior.active(src.row, rule.id)
        op = event.op
        if op is Op.DELETE:
            history = self._history(event, None, olds)
            return [self._reversal(o, src, history) for o in olds], True
        if op is not Op.CREATE and op is not Op.READ and op is not Op.UPDATE:
            return [], False
        scope = shared.get(_SCOPE)
        if scope is None:
            scope = shared[_SCOPE] = self._scope(event, event.after)
        new: Voucher | None = None
        matched = scope["row"] is not None and (rule.when is None or truth(rule.when(scope)))
        if matched:
            if rule.spec.lines is not None:
                scope = dict(scope)  # this rule's lines are its own
                self._lines(rule, event, scope, lines, used)
            new = self._build(rule, scope, src)
        elif not olds:
            return [], False  # nothing to post, nothing in force to reverse
        history = self._history(event, new, olds)
        after = prior.latest(src.row, rule.id) or ""
        if not olds:
            return ([] if new is None else [self._settle(self._keyed(new, rule, "post", after), history)]), matched
        mode = "reverse_and_repost" if force_repost else rule.spec.on_update
        if new is not None and _same_lines(olds, new):
            return [], matched  # read again, or changed in nothing the ledger sees
        if mode == "ignore":
            return [], matched
        reversals = [self._reversal(o, src, history) for o in olds]
        if new is None:
            return reversals, matched
        if mode == "reverse_and_repost":
            return [*reversals, self._settle(self._keyed(new, rule, "post", after), history)], matched
        delta = self._delta(new, olds, rule, after)
        return ([self._settle(delta, history)] if delta is not None else []), matched

    @staticmethod
    def _keyed(v: Voucher, rule: Rule, role: str, after: str) -> Voucher:
        return _new_tuple(Voucher, (voucher_key(v.source.row, rule.id, role, content_digest(v), after), *v[1:]))

    def _reversal(self, original: Voucher, by: SourceRef, history: bool) -> Voucher:
        """Red-ink reversal, dated with the original (never before it), then moved by the period policy."""
        return self._settle(reverse(original, by=by, on=original.date), history)

    def _settle(self, v: Voucher, history: bool) -> Voucher:
        """Opening state at a cutover is recorded as is; anything to post must land in an open period:
        the book's policy moves it to the first open period (default) or rejects it (``original_period``)."""
        if history:
            return v._replace(opening=True)
        book = self.ledger.books.get(v.book)
        if book is None:
            return v
        if period_open(book, v.date):
            return v
        period = _period(v.date)
        what = "reversal" if v.kind is VoucherKind.REVERSAL else "voucher"
        if book.reverse_in == "original_period":
            raise EvalError("CLOSED_PERIOD", f"the {what} falls in period {period} of book {v.book}, which is closed "
                                             "(期间已结账), and the book posts corrections in their original period "
                                             "(reverse_in: original_period)", "date", v.date.isoformat())
        moved = book.first_open_on_or_after(v.date)
        if moved is None:
            raise EvalError("CLOSED_PERIOD", f"period {period} of book {v.book} is closed (期间已结账) and no later "
                                             "period is open", "date", v.date.isoformat())
        return v._replace(date=moved, original_date=v.original_date or v.date,
                          business_date=v.business_date or v.date)

    def _delta(self, new: Voucher, olds: Sequence[Voucher], rule: Rule, after: str) -> Voucher | None:
        """``post_delta``: the lines of ``new`` minus the lines in force, netted per account/side/dimension."""
        net: dict[tuple[Any, ...], Entry] = {}
        for e, sign in [(e, 1) for e in new.entries] + [(e, -1) for o in olds for e in o.entries]:
            k = (e.account, e.side, e.currency, e.rate, tuple(sorted(e.dimensions.items())))
            cur = net.get(k)
            amount = e.amount if sign > 0 else -e.amount
            amount_for = e.amount_for if sign > 0 else -e.amount_for
            if cur is None:
                net[k] = e._replace(amount=amount, amount_for=amount_for, quantity=None)
            else:
                net[k] = cur._replace(amount=MONEY_CONTEXT.add(cur.amount, amount),
                                      amount_for=MONEY_CONTEXT.add(cur.amount_for, amount_for))
        lines = tuple(e for e in net.values() if e.amount != ZERO or e.amount_for != ZERO)
        if not lines:
            return None
        delta = new._replace(kind=VoucherKind.DELTA, entries=lines, reverses=olds[-1].key,
                             explanation=f"调整 {new.explanation}"[:500])
        return self._keyed(delta, rule, "delta", after)

    # ------------------------------------------------------------------ building one voucher
    def _currency(self, value: Any, book: Book | None, field: str) -> str:
        if value is None or (type(value) is str and not value.strip()):
            raise EvalError("UNKNOWN_CURRENCY", "the currency is empty", field)
        cur = value if type(value) is str else str(value)
        if book is not None and not book.knows_currency(cur):
            known = ", ".join(sorted({book.local_currency, *book.currency_numbers}))
            raise EvalError("UNKNOWN_CURRENCY", f"currency {cur!r} is not in book {book.number}'s currency table "
                                                f"({known})", field, cur)
        return cur

    def _source_rate(self, value: Any, currency: str, day: date, rate_type: str, book: Book | None,
                     field: str) -> Decimal:
        """A rate the rule takes from the source row: above 0, and within the book's band of the rate table."""
        if value is None:
            raise EvalError("NO_EXCHANGE_RATE", f"the row gives no exchange rate for {currency} (empty)", field)
        r = _money(value, field)
        if r <= 0:
            raise EvalError("INVALID_RATE", f"exchange rate {r} for {currency} must be above 0", field, r)
        if book is not None and currency != book.local_currency:
            table = self.rules.tables.table_rate(currency, day, rate_type)
            if table is not None and abs(MONEY_CONTEXT.divide(r, table) - 1) > book.rate_band:
                off = MONEY_CONTEXT.divide(r, table) - 1
                raise EvalError("RATE_OUT_OF_BAND",
                                f"rate {r} for {currency} on {day} is {quantize(abs(off) * 100, 1)}% away from the "
                                f"rate table's {table.normalize()} (allowed ±{quantize(book.rate_band * 100, 1)}%)",
                                field, r)
        return r

    def _amount(self, raw: Any, currency: str, field: str, allow_negative: bool) -> tuple[Decimal, Decimal]:
        """(the amount at the currency's precision, its exact value before the rule's own rounding)."""
        exact = getattr(raw, "exact", None)
        v = _money(raw, field)
        places = self.ledger.places(currency)
        q = _QUANTIZE(v, _STEPS.get(places) or Decimal(1).scaleb(-places), None, MONEY_CONTEXT)
        if q != v:
            raise EvalError("TOO_MANY_DECIMALS", f"{currency} amount {v} has more decimals than {currency}'s {places}; "
                                                 "it is not rounded away — round it in the rule if that is intended",
                            field, v)
        if q < 0 and not allow_negative:
            raise EvalError("NEGATIVE_AMOUNT", f"amount {q} is negative; this rule does not allow negative amounts "
                                               "(allow_negative: true if they are legitimate)", field, q)
        return q, (exact if exact is not None else q)

    def _header(self, rule: Rule, s: Mapping[str, Any]) -> _Header:
        book = rule.book(s)
        if not book:
            raise EvalError("UNKNOWN_BOOK", "the book expression gave an empty value", "voucher.book")
        book_cfg = self.ledger.books.get(book)
        if book_cfg is not None:
            BOOK_TZ.set(book_cfg.timezone)  # instants become this book's local dates from here on
        local = book_cfg.local_currency if book_cfg else "CNY"
        try:
            day = to_date(rule.date(s))
            bday = to_date(rule.business_date(s)) if rule.business_date else None
        except EvalError as e:
            raise EvalError(e.code, e.message, e.field or "voucher.date", e.value) from None
        explanation = rule.explanation(s)[:500]
        currency = self._currency(rule.currency(s), book_cfg, "voucher.currency") if rule.currency else local
        rate_type = rule.spec.voucher.rate_type
        if rule.rate:
            rate = self._source_rate(rule.rate(s), currency, day, rate_type, book_cfg, "voucher.rate")
        else:
            rate = self.rules.tables.rate(currency, day, rate_type, local)
        return _new_tuple(_Header, (book, book_cfg, local, self.ledger.places(local), day, bday, explanation, currency,
                                    rate_type, rate))

    def _build(self, rule: Rule, s: Mapping[str, Any], src: SourceRef) -> Voucher:
        spec = rule.spec
        h = self._header(rule, s)
        _, _, local, local_places, _, _, explanation, currency, rate_type, rate = h
        entries: list[Entry] = []
        exact_for: list[Decimal] = []  # per entry, signed: debit +, credit −
        exact_local: list[Decimal] = []
        new = _new_tuple  # positional tuple construction: the hot path builds several entries per event
        local_rate = currency == local and rate == 1
        skip_zero = spec.skip_zero_lines
        places = self.ledger.places(currency)
        step = _STEPS.get(places) or Decimal(1).scaleb(-places)
        money_context = MONEY_CONTEXT
        plan = rule.entry_plan if spec.lines is None else self._entry_scopes(rule, s)
        for item in plan:
            ce, plain, money = item[0], item[1], item[2]
            es = s if len(item) == 3 else item[3]
            if ce.when is not None and not truth(ce.when(es)):
                continue
            allow_negative = spec.allow_negative if ce.allow_negative is None else ce.allow_negative
            entry: Entry | None
            if money:  # the voucher's currency and rate (the same steps as _full_entry takes for such an entry)
                if not plain:
                    self._check_time()
                raw = ce.amount(es)
                if type(raw) is Decimal and raw.is_finite() and -MAX_MONEY < raw < MAX_MONEY:  # decoded amounts
                    amount_for = _QUANTIZE(raw, step, None, money_context)
                    if amount_for != raw or (amount_for < ZERO and not allow_negative):
                        amount_for, exact = self._amount(raw, currency, ce.paths[0], allow_negative)  # raises
                    exact = amount_for
                else:
                    amount_for, exact = self._amount(raw, currency, ce.paths[0], allow_negative)
                if local_rate:
                    amount, x_local = amount_for, exact
                else:
                    amount = quantize(money_context.multiply(amount_for, rate), local_places)
                    x_local = money_context.multiply(exact, rate)
                if skip_zero and amount_for == ZERO:
                    entry = None
                elif plain:
                    account = ce.account(es)
                    text = (ce.explanation(es) if ce.explanation else explanation)[:500]
                    entry = new(Entry, (account, ce.side, amount, text, currency, rate_type, rate, amount_for, None,
                                        None, None, None, None, _dimensions(ce, es) if ce.dimensions else {}))
                else:
                    p_qty, p_price = ce.paths[3], ce.paths[4]
                    entry = new(Entry, (
                        ce.account(es), ce.side, amount, (ce.explanation(es) if ce.explanation else explanation)[:500],
                        currency, rate_type, rate, amount_for,
                        _optional_money(ce.quantity, es, p_qty) if ce.quantity is not None else None,
                        _optional_money(ce.price, es, p_price) if ce.price is not None else None,
                        ce.unit(es) if ce.unit else None, ce.settle_type(es) if ce.settle_type else None,
                        ce.settle_no(es) if ce.settle_no else None, _dimensions(ce, es)))
            else:
                entry, exact, x_local = self._full_entry(ce, es, h, allow_negative, skip_zero)
            if ce.side is _DEBIT:
                exact_for.append(exact)
                exact_local.append(x_local)
            else:
                exact_for.append(-exact)
                exact_local.append(-x_local)
            if entry is not None:
                entries.append(entry)
        entries = self._balance(spec.rounding, entries, exact_for, exact_local, h.local, rate)
        group = rule.group(s)
        data_centre = (rule.data_centre(s) if rule.data_centre else None) \
            or (h.book_cfg.data_centre if h.book_cfg else None)
        summary = self._summary(rule, s, h) if rule.summary_by else None
        return new(Voucher, ("", h.book, h.day, group, explanation, tuple(entries), src, rule.id, rule.version,
                             VoucherKind.ORIGINAL, None, h.business_day, data_centre, spec.voucher.attachments, (),
                             None, False, summary))

    @staticmethod
    def _summary(rule: Rule, s: Mapping[str, Any], h: _Header) -> SummaryRef:
        """The summary key of a ``summarize:`` rule's voucher (``book`` and ``date`` stay the voucher's own)."""
        spec = rule.spec.summarize
        assert spec is not None
        parts: list[tuple[str, str | None]] = []
        for i, (name, expr) in enumerate(rule.summary_by):
            if expr is None:
                parts.append((name, None))
                continue
            value = expr(s)
            if value is None or value == "":
                raise EvalError("MISSING_FIELD", f"summary key part {name!r} is empty: the row cannot be given to a "
                                                 "summary", f"summarize.by[{i}]", "")
            parts.append((name, value.isoformat() if isinstance(value, date) else str(value)))
        tz = h.book_cfg.timezone.key if h.book_cfg else DEFAULT_TZ.key
        return SummaryRef(tuple(parts), spec.close, spec.late, tz)

    def _full_entry(self, ce: CompiledEntry, es: Mapping[str, Any], h: _Header, allow_negative: bool,
                    skip_zero: bool) -> tuple[Entry | None, Decimal, Decimal]:
        """An entry with its own currency, rate or local amount, or optional fields (quantity, price,
        settlement …): the entry (``None``: a zero line skipped) and its exact amounts before rounding."""
        self._check_time()
        p_amount, p_rate, p_local, p_qty, p_price = ce.paths
        cur = self._currency(ce.currency(es), h.book_cfg, f"entries[{ce.index}].currency") if ce.currency \
            else h.currency
        amount_for, exact = self._amount(ce.amount(es), cur, p_amount, allow_negative)
        if ce.rate is not None:
            r = self._source_rate(ce.rate(es), cur, h.day, h.rate_type, h.book_cfg, p_rate)
        elif cur == h.currency:
            r = h.rate
        else:
            r = self.rules.tables.rate(cur, h.day, h.rate_type, h.local)
        if ce.local_amount is not None:
            amount, x_local = self._amount(ce.local_amount(es), h.local, p_local, allow_negative)
        elif cur == h.local and r == 1:
            amount, x_local = amount_for, exact
        else:
            amount = quantize(MONEY_CONTEXT.multiply(amount_for, r), h.local_places)
            x_local = MONEY_CONTEXT.multiply(exact, r)
        if skip_zero and amount_for == ZERO and amount == ZERO:
            return None, exact, x_local
        return Entry._make((
            ce.account(es), ce.side, amount, (ce.explanation(es) if ce.explanation else h.explanation)[:500], cur,
            h.rate_type, r, amount_for, _optional_money(ce.quantity, es, p_qty) if ce.quantity is not None else None,
            _optional_money(ce.price, es, p_price) if ce.price is not None else None, ce.unit(es) if ce.unit else None,
            ce.settle_type(es) if ce.settle_type else None, ce.settle_no(es) if ce.settle_no else None,
            _dimensions(ce, es))), exact, x_local

    def _entry_scopes(self, rule: Rule, s: Mapping[str, Any]
                      ) -> list[tuple[CompiledEntry, bool, bool, Mapping[str, Any]]]:
        """Each entry with the scope it is evaluated in: per-line entries once per line, with ``line``."""
        if rule.spec.lines is None:
            return [(ce, plain, money, s) for ce, plain, money in rule.entry_plan]
        out: list[tuple[CompiledEntry, bool, bool, Mapping[str, Any]]] = []
        for ce, plain, money in rule.entry_plan:
            if ce.for_each_line:
                out.extend((ce, plain, money, {**s, "line": row}) for row in s["lines"])
            else:
                out.append((ce, plain, money, s))
        if len(out) > MAX_ITEMS:
            raise EvalError("EXPRESSION_ERROR", f"the voucher would have {len(out):,} lines; at most {MAX_ITEMS:,}")
        return out

    def _balance(self, spec: RoundingSpec | None, entries: list[Entry], exact_for: list[Decimal],
                 exact_local: list[Decimal], local: str, rate: Decimal) -> list[Entry]:
        """Decide what a difference between debits and credits is.

        A difference already in the source amounts (gross ≠ net + tax) is a data error: UNBALANCED with the
        amounts, never absorbed. Only differences this voucher creates — converting to local currency, or the
        rule's own rounding of a proportional split (``round…`` helpers) — may go to the explicit ``rounding:``
        line, and only up to its ``max``. Without ``rounding:`` they are left for the balance check to reject.
        """
        if not entries:
            return entries
        currencies = {e.currency for e in entries}
        single = len(currencies) == 1
        cur = entries[0].currency
        source_diff = sum(exact_for, ZERO) if single else sum(exact_local, ZERO)
        if abs(source_diff) > _NOISE:
            debit = sum((x for x in (exact_for if single else exact_local) if x > 0), ZERO)
            credit = -sum((x for x in (exact_for if single else exact_local) if x < 0), ZERO)
            unit = cur if single else local
            places = self.ledger.places(unit)

            def shown(d: Decimal) -> str:
                q = d.quantize(Decimal(1).scaleb(-places), context=MONEY_CONTEXT)
                return f"{q if q == d else d.normalize():f}"
            raise EvalError("UNBALANCED", f"the source amounts do not balance: debits {shown(debit)} ≠ credits "
                                          f"{shown(credit)} {unit} (difference {shown(source_diff)}); a difference "
                                          "in the data is not a rounding difference and is never booked away",
                            "entries", shown(source_diff))
        if spec is None:
            return entries
        out = list(entries)
        if single:  # the rule's own rounding of a split leaves a difference in the transaction currency
            diff_for = ZERO
            for e in out:
                diff_for = diff_for + e.amount_for if e.side is Side.DEBIT else diff_for - e.amount_for
            if diff_for != ZERO and abs(diff_for) <= spec.max:
                amount = abs(diff_for) if cur == local and rate == 1 else \
                    quantize(MONEY_CONTEXT.multiply(abs(diff_for), rate), self.ledger.places(local))
                out.append(Entry(account=spec.account, side=Side.CREDIT if diff_for > 0 else Side.DEBIT,
                                 amount=amount, amount_for=abs(diff_for), currency=cur, rate=rate,
                                 explanation=spec.explanation))
        diff = ZERO
        for e in out:
            diff = diff + e.amount if e.side is Side.DEBIT else diff - e.amount
        if diff != ZERO and abs(diff) <= spec.max:  # conversion rounding, in local currency
            out.append(Entry(account=spec.account, side=Side.CREDIT if diff > 0 else Side.DEBIT, amount=abs(diff),
                             amount_for=abs(diff), currency=local, explanation=spec.explanation))
        return out
