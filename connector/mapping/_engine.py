"""The pure mapping core: ``ChangeEvent`` + rules (+ the row's active vouchers) → vouchers or rejections.

Change semantics per rule: ``c``/``r`` post a voucher; ``u`` (``on_update``) reverses the row's active
voucher and posts the new one (``reverse_and_repost``, unchanged amounts are a no-op), posts only the
difference (``post_delta``) or leaves it (``ignore``); ``d`` reverses (红字冲销). The row's active vouchers
come from a ``PriorLookup`` — the journal in production, ``InMemoryLedger`` in previews and golden tests.
An event's outcome is all or nothing: one rejection and none of its vouchers are emitted.
"""

from __future__ import annotations


from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, Protocol

from connector.errors import MoneyError
from connector.events import ChangeEvent, Op
from connector.ledger._checks import LedgerContext, check_voucher
from connector.ledger._model import (
    Entry,
    ReasonCode,
    Rejection,
    RowRef,
    Side,
    SourceRef,
    Voucher,
    VoucherKind,
    canonical_pk,
    reverse,
    voucher_key,
)
from connector.mapping._expr import EvalError, to_date
from connector.mapping._rules import Rule, RuleSet
from connector.money import MAX_MONEY, MONEY_CONTEXT, ZERO, quantize, to_money


class PriorLookup(Protocol):
    """The vouchers currently in force (posted, not yet reversed) for a source row and rule, oldest first."""

    def active(self, row: RowRef, rule_id: str) -> Sequence[Voucher]: ...


class _NoPrior:
    def active(self, row: RowRef, rule_id: str) -> Sequence[Voucher]:
        return ()


NO_PRIOR: PriorLookup = _NoPrior()


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


class InMemoryLedger:
    """A ``PriorLookup`` that remembers what it was given: for previews, golden tests and benchmarks."""

    def __init__(self) -> None:
        self._active: dict[tuple[RowRef, str], list[Voucher]] = {}
        self.posted: list[Voucher] = []

    def active(self, row: RowRef, rule_id: str) -> Sequence[Voucher]:
        return tuple(self._active.get((row, rule_id), ()))

    def seed(self, vouchers: Iterable[Voucher]) -> None:
        """Start from vouchers already in force (e.g. read from the journal), oldest first."""
        for v in vouchers:
            self._active.setdefault((v.source.row, v.rule_id), []).append(v)

    def apply(self, result: MapResult) -> None:
        for v in result.vouchers:
            self.posted.append(v)
            slot = self._active.setdefault((v.source.row, v.rule_id), [])
            if v.kind is VoucherKind.REVERSAL:
                slot[:] = [x for x in slot if x.key != v.reverses]
            else:
                slot.append(v)


def _rejection(e: EvalError, rule: Rule, source: SourceRef | None) -> Rejection:
    try:
        code = ReasonCode(e.code)
    except ValueError:
        code = ReasonCode.EXPRESSION_ERROR
    return Rejection(code=code, message=e.message, rule=rule.id, field=e.field,
                     value=None if e.value is None else str(e.value), source=source)


def _money(v: Any, field: str) -> Decimal:
    if type(v) is Decimal and v.is_finite() and -MAX_MONEY < v < MAX_MONEY:  # decoded amounts: the hot path
        return v
    try:
        return to_money(v, field=field)
    except MoneyError as e:
        code = "FLOAT_AMOUNT" if isinstance(v, float) else "INVALID_AMOUNT"
        raise EvalError(code, str(e), field, v) from None


def _dimensions(ce: Any, s: Mapping[str, Any]) -> dict[str, str]:
    """An entry's dimension values; empty ones are left out (Kingdee wants no blank FDetailID refs)."""
    dims = {}
    for slot, c in ce.dimensions:
        v = c(s)
        if v is not None and v != "":
            dims[slot] = str(v)
    return dims


def _optional_money(expr: Any, s: Mapping[str, Any], field: str) -> Decimal | None:
    """Quantity / price: optional, so an absent expression or a null value means "not given"."""
    if expr is None:
        return None
    v = expr(s)
    return None if v is None else _money(v, field)


def _same_lines(a: Sequence[Voucher], b: Voucher) -> bool:
    """Would posting ``b`` change nothing compared with the active vouchers ``a``?"""
    if len(a) != 1:
        return False
    old = a[0]
    if (old.book, old.date, old.group) != (b.book, b.date, b.group):
        return False

    def lines(v: Voucher) -> list[tuple[Any, ...]]:
        return sorted((e.account, e.side.value, e.amount, e.amount_for, e.currency, e.rate,
                       tuple(sorted(e.dimensions.items())), e.quantity) for e in v.entries)
    return lines(old) == lines(b)


class Mapper:
    """Applies a ``RuleSet`` to change events. Pure: no I/O; the only state is the limits' amount history."""

    def __init__(self, rules: RuleSet, *, ledger: LedgerContext | None = None, skip_checks: Sequence[str] = ()) -> None:
        self.rules = rules
        self.ledger = ledger if ledger is not None else rules.ledger
        self.skip_checks = tuple(skip_checks)

    # ------------------------------------------------------------------ public
    def map(self, event: ChangeEvent, prior: PriorLookup = NO_PRIOR, *, remap: str | None = None,
            lines: Sequence[ChangeEvent] | None = None) -> MapResult:
        """Map one change. ``lines``: the other change events of the event's source transaction (``None``
        when it was not grouped by transaction): rules with ``lines:`` take their document lines from them. With ``remap`` (a tag naming the rules version), ``event`` is a row's *latest*
        change and the row's current state is re-mapped against the vouchers in force: unchanged → nothing;
        different → reversals of the vouchers in force plus the corrected voucher, keyed by the tag (so a
        second re-map with the same rules finds its keys and adds nothing); a deleted row → nothing."""
        if remap is not None:
            if event.op is Op.DELETE or event.after is None:
                return MapResult(skipped="row deleted: nothing in force to correct")
            event = replace(event, op=Op.UPDATE, before=event.after)
        src = event.source
        rules = self.rules.for_table(src.name, src.schema, src.table)
        if not rules:
            if event.op in (Op.TRUNCATE, Op.MESSAGE):
                return MapResult(skipped=f"op {event.op.value} ignored (no rule asks for it)")
            why = self.rules.ignored_reason(src.name, src.schema, src.table)
            if why is not None:
                return MapResult(skipped=f"table {src.table_id} ignored: {why}")
            return MapResult(rejections=(Rejection(
                code=ReasonCode.NO_RULE, message=f"no mapping rule for system {src.name!r} table "
                f"{src.table_id!r}", value=src.table_id),))
        op = event.op.value
        applicable = [r for r in rules if op in r.spec.match.ops]
        if not applicable:
            return MapResult(skipped=f"op {event.op.value} not mapped by {', '.join(r.id for r in rules)}")
        vouchers: list[Voucher] = []
        rejections: list[Rejection] = []
        grouped: set[int] = set()
        for rule in applicable:
            source_ref: SourceRef | None = None
            try:
                source_ref = self._source_ref(rule, event)
                if remap is not None:
                    source_ref = source_ref._replace(position=f"{source_ref.position}#remap:{remap}")
                vouchers.extend(self._apply(rule, event, source_ref, prior, force_repost=remap is not None,
                                            lines=lines, used=grouped))
            except EvalError as e:
                rejections.append(_rejection(e, rule, source_ref))
            except ArithmeticError as e:  # decimal overflow of amount × rate etc. (found by the fuzz test)
                rejections.append(Rejection(code=ReasonCode.INVALID_AMOUNT, rule=rule.id, source=source_ref,
                                            message=f"amounts out of range for ledger arithmetic "
                                                    f"({type(e).__name__})"))
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
        if rejections:
            return MapResult(rejections=tuple(rejections))
        if not checked:
            return MapResult(skipped="no accounting effect (conditions not met, or nothing to reverse/unchanged)",
                             grouped=tuple(sorted(grouped)))
        return MapResult(vouchers=tuple(checked), grouped=tuple(sorted(grouped)))

    # ------------------------------------------------------------------ internals
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
        return SourceRef(RowRef(src.name, src.table_id, pk), src.position, event.op.value, src.ts_ms)

    def _scope(self, rule: Rule, event: ChangeEvent, row: Mapping[str, Any] | None) -> dict[str, Any]:
        before, after = event.before, event.after
        if rule.spec.float_fields and event.float_fields:
            allowed = set(rule.spec.float_fields)

            def exact(img: Mapping[str, Any] | None, prefix: str) -> Mapping[str, Any] | None:
                if img is None:
                    return None
                return {k: (Decimal(repr(v)) if isinstance(v, float) and (k in allowed or f"{prefix}.{k}" in allowed)
                            else v) for k, v in img.items()}
            before, after = exact(before, "before"), exact(after, "after")
            row = after if row is event.after else before
        src = event.source
        return {"row": row, "before": before, "after": after, "key": event.key or {}, "op": event.op.value,
                "source": {"system": src.name, "db": src.db, "schema": src.schema, "table": src.table,
                           "ts_ms": src.ts_ms, "lsn": src.lsn, "tx_id": src.tx_id, "snapshot": src.snapshot},
                "vars": {}}

    def _matches(self, rule: Rule, scope: Mapping[str, Any]) -> bool:
        if scope["row"] is None:
            return False
        return rule.when is None or bool(rule.when(scope))

    def _event_date(self, event: ChangeEvent, fallback: date) -> date:
        ts = event.source.ts_ms
        return datetime.fromtimestamp(ts / 1000, UTC).date() if ts else fallback

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
            if join is not None and not join({**scope, "line": ev.after}):
                continue
            rows.append(ev.after)
            picked.append(i)
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

    def _apply(self, rule: Rule, event: ChangeEvent, src: SourceRef, prior: PriorLookup, *,
               force_repost: bool, lines: Sequence[ChangeEvent] | None, used: set[int]) -> list[Voucher]:
        op = event.op
        if op in (Op.CREATE, Op.READ):
            scope = self._scope(rule, event, event.after)
            if not self._matches(rule, scope):
                return []
            if rule.spec.lines is not None:
                self._lines(rule, event, scope, lines, used)
            return [self._build(rule, scope, src)]
        if op is Op.DELETE:
            olds = prior.active(src.row, rule.id)
            return [reverse(o, by=src, on=self._event_date(event, o.date)) for o in olds]
        if op is Op.UPDATE:
            scope = self._scope(rule, event, event.after)
            new = None
            if self._matches(rule, scope):
                if rule.spec.lines is not None:
                    self._lines(rule, event, scope, lines, used)
                new = self._build(rule, scope, src)
            olds = prior.active(src.row, rule.id)
            mode = "reverse_and_repost" if force_repost else rule.spec.on_update
            if not olds:
                return [new] if new is not None else []
            if mode == "ignore":
                return []
            reversals = [reverse(o, by=src, on=self._event_date(event, o.date)) for o in olds]
            if new is None:
                return reversals
            if mode == "reverse_and_repost":
                return [] if _same_lines(olds, new) else [*reversals, new]
            delta = self._delta(new, olds, src, rule)
            return [delta] if delta is not None else []
        return []

    def _delta(self, new: Voucher, olds: Sequence[Voucher], src: SourceRef, rule: Rule) -> Voucher | None:
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
        return new._replace(key=voucher_key(src, rule.id, "delta"), kind=VoucherKind.DELTA, entries=lines,
                       reverses=olds[-1].key, explanation=f"调整 {new.explanation}"[:500])

    def _build(self, rule: Rule, s: Mapping[str, Any], src: SourceRef) -> Voucher:
        spec = rule.spec
        book = rule.book(s)
        if not book:
            raise EvalError("UNKNOWN_BOOK", "the book expression gave an empty value", "voucher.book")
        book_cfg = self.ledger.books.get(book)
        local = book_cfg.local_currency if book_cfg else "CNY"
        try:
            day = to_date(rule.date(s))
            bday = to_date(rule.business_date(s)) if rule.business_date else None
        except EvalError as e:
            raise EvalError(e.code, e.message, e.field or "voucher.date", e.value) from None
        explanation = rule.explanation(s)[:500]
        currency = str(rule.currency(s)) if rule.currency else local
        rate_type = spec.voucher.rate_type
        tables = self.rules.tables
        rate = _money(rule.rate(s), "voucher.rate") if rule.rate else tables.rate(currency, day, rate_type, local)
        entries: list[Entry] = []
        make = Entry._make  # positional tuple construction: the hot path builds several per event
        local_rate = currency == local and rate == 1
        skip_zero = spec.skip_zero_lines
        for ce, plain, es in self._entry_scopes(rule, s):
            if ce.when is not None and not ce.when(es):
                continue
            p_amount, p_rate, p_local, p_qty, p_price = ce.paths
            amount_for = _money(ce.amount(es), p_amount)
            if skip_zero and amount_for == ZERO:
                continue
            if plain:  # the voucher's currency and rate, no optional fields
                dims = _dimensions(ce, es)
                entries.append(make((
                    ce.account(es), ce.side,
                    amount_for if local_rate else quantize(MONEY_CONTEXT.multiply(amount_for, rate)),
                    (ce.explanation(es) if ce.explanation else explanation)[:500], currency, rate_type, rate,
                    amount_for, None, None, None, None, None, dims)))
                continue
            cur = str(ce.currency(es)) if ce.currency else currency
            if ce.rate is not None:
                r = _money(ce.rate(es), p_rate)
            elif cur == currency:
                r = rate
            else:
                r = tables.rate(cur, day, rate_type, local)
            if ce.local_amount is not None:
                amount = _money(ce.local_amount(es), p_local)
            elif cur == local and r == 1:
                amount = amount_for
            else:
                amount = quantize(MONEY_CONTEXT.multiply(amount_for, r))
            dims = _dimensions(ce, es)
            entries.append(make((
                ce.account(es), ce.side, amount, (ce.explanation(es) if ce.explanation else explanation)[:500], cur,
                rate_type, r, amount_for, _optional_money(ce.quantity, es, p_qty) if ce.quantity is not None else None,
                _optional_money(ce.price, es, p_price) if ce.price is not None else None, ce.unit(es) if ce.unit else None,
                ce.settle_type(es) if ce.settle_type else None, ce.settle_no(es) if ce.settle_no else None, dims)))
        if spec.rounding is not None:
            entries = self._rounding(spec.rounding, entries, local)
        return Voucher(
            key=voucher_key(src, rule.id, "post"), book=book, date=day, business_date=bday,
            group=rule.group(s), explanation=explanation, entries=tuple(entries), source=src, rule_id=rule.id,
            rule_version=rule.version, data_centre=(rule.data_centre(s) if rule.data_centre else None)
            or (book_cfg.data_centre if book_cfg else None), attachments=spec.voucher.attachments)

    @staticmethod
    def _entry_scopes(rule: Rule, s: Mapping[str, Any]) -> list[tuple[Any, bool, Mapping[str, Any]]]:
        """Each entry with the scope it is evaluated in: per-line entries once per line, with ``line``."""
        if rule.spec.lines is None:
            return [(ce, plain, s) for ce, plain in rule.entry_plan]
        out: list[tuple[Any, bool, Mapping[str, Any]]] = []
        for ce, plain in rule.entry_plan:
            if ce.for_each_line:
                out.extend((ce, plain, {**s, "line": row}) for row in s["lines"])
            else:
                out.append((ce, plain, s))
        return out

    @staticmethod
    def _rounding(spec: Any, entries: list[Entry], local: str) -> list[Entry]:
        """An explicit, visible rounding-difference line (never a silent fix) when within ``max``."""
        diff = ZERO
        for e in entries:
            diff = diff + e.amount if e.side is Side.DEBIT else diff - e.amount
        if diff == ZERO or abs(diff) > spec.max:
            return entries
        side = Side.CREDIT if diff > 0 else Side.DEBIT
        return [*entries, Entry(account=spec.account, side=side, amount=abs(diff), amount_for=abs(diff),
                                currency=local, explanation=spec.explanation)]
