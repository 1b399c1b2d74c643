"""Summary vouchers (汇总凭证): `summaries list|show|close` and `trace` (drill-down both ways)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from connector.cli._app import ConfigOpt, app, fail as _fail

if TYPE_CHECKING:
    from connector.journal import Journal, SummaryRow
    from connector.summaries import Drilldown

summaries_app = typer.Typer(no_args_is_help=True, help="Summary vouchers: list, drill down, close.")
app.add_typer(summaries_app, name="summaries")


def _journal(config: ConfigOpt) -> Journal:
    from connector.config import load_settings
    from connector.service import build_journal

    return build_journal(load_settings(config))


def _key(s: SummaryRow) -> str:
    return " ".join(f"{k}={v}" for k, v in s.key.items())


@summaries_app.command("list")
def summaries_list(config: ConfigOpt = None,
                   state: Annotated[Optional[str], typer.Option(help="OPEN, CLOSED or NEEDS_ATTENTION")] = None,
                   rule: Annotated[Optional[str], typer.Option(help="only this rule")] = None,
                   book: Annotated[Optional[str], typer.Option(help="only this book")] = None,
                   limit: int = 50) -> None:
    """Summaries, newest first: key, state, contributions, when it closes or closed, its voucher."""
    from connector.journal import SummaryState, list_summaries

    if state is not None and state not in SummaryState.__members__:
        _fail(f"--state {state!r}: expected one of {', '.join(SummaryState)}")
    found = list_summaries(_journal(config), state=state, rule=rule, book=book, limit=limit)
    typer.echo(f"{'id':>6}  {'rule':<14} {'state':<16} {'contrib.':>8} {'rows':>6}  {'closes/closed':<17} key")
    for s in found:
        when = s.closed_at or s.close_due
        typer.echo(f"{s.id:>6}  {s.rule_id[:14]:<14} {s.state:<16} {s.contributions:>8} "
                   f"{'' if s.source_rows is None else s.source_rows:>6}  "
                   f"{when.astimezone().strftime('%Y-%m-%d %H:%M') if when else 'on command':<17} {_key(s)}"
                   + (f"\n        held: {s.problem}" if s.problem else ""))
    typer.echo(f"{len(found)} summar{'y' if len(found) == 1 else 'ies'}")


@summaries_app.command("show")
def summaries_show(ref: Annotated[str, typer.Argument(help="summary id, summary voucher key or Kingdee number")],
                   config: ConfigOpt = None,
                   as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False) -> None:
    """Drill down: the summary voucher, every source row it carries (amounts, Kafka coordinates) and the
    adjustments posted for its key after it closed."""
    from connector.summaries import drilldown, find_summary

    journal = _journal(config)
    summary = find_summary(journal, ref)
    if summary is None:
        _fail(f"no summary {ref!r} (give its id, its voucher's key or its Kingdee voucher number)")
    _print_drilldown(drilldown(journal, summary), as_json)


@summaries_app.command("close")
def summaries_close(ids: Annotated[Optional[list[int]], typer.Argument(help="summary ids (default: all due)")] = None,
                    config: ConfigOpt = None,
                    retry: Annotated[bool, typer.Option("--retry", help="also summaries held NEEDS_ATTENTION")] = False,
                    ) -> None:
    """Close summaries now: the given ones (``close: on command``, or before their time), or every one due."""
    from connector.config import load_settings
    from connector.mapping import load_rules
    from connector.service import build_journal, ledger_context
    from connector.summaries import SummaryCloser

    settings = load_settings(config)
    rules = load_rules(settings.mapping.rules_dir)
    closer = SummaryCloser(build_journal(settings), rules=rules, ledger=ledger_context(settings, rules))
    done = [d for i in ids if (d := closer.close(i, retry=retry)) is not None] if ids else closer.close_due()
    for d in done:
        what = (f"held: {d.problem}" if d.problem else "nets to nothing: no voucher" if d.voucher is None
                else f"voucher {d.voucher.key}, {d.source_rows} source rows, debit total {d.voucher.debit_total:,.2f}")
        typer.echo(f"summary {d.summary.id} ({d.summary.rule_id} {_key(d.summary)}): {what}")
    skipped = len(ids or ()) - len(done)
    typer.echo(f"closed {sum(d.problem is None for d in done)} summar{'y' if len(done) == 1 else 'ies'}"
               + (f"; {sum(d.problem is not None for d in done)} held" if any(d.problem for d in done) else "")
               + (f"; {skipped} not open (already closed, or held: --retry)" if skipped > 0 else ""))
    if any(d.problem for d in done):
        raise typer.Exit(1)


@app.command()
def trace(ref: Annotated[str, typer.Argument(help="Kingdee voucher number, voucher key, summary id "
                                                  "(summary:<id>) or source row (system:db.schema.table:pk)")],
          config: ConfigOpt = None,
          as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False) -> None:
    """Follow a voucher to its source rows, or a source row to the vouchers that carry it — through summaries."""
    from connector.summaries import carrier_of, drilldown, find_summary, find_vouchers, parse_row

    journal = _journal(config)
    if ref.startswith("summary:") or ref.isdigit():
        summary = find_summary(journal, ref.removeprefix("summary:"))
        if summary is None:
            _fail(f"no summary {ref!r}")
        _print_drilldown(drilldown(journal, summary), as_json)
        return
    if (row := parse_row(ref)) is None:
        summary = find_summary(journal, ref)
        if summary is not None:  # a summary voucher's key or Kingdee number
            _print_drilldown(drilldown(journal, summary), as_json)
            return
        vouchers = find_vouchers(journal, ref)
        if not vouchers:
            _fail(f"nothing found for {ref!r}: give a Kingdee voucher number, a voucher key, summary:<id> or a source "
                  "row as system:db.schema.table:{\"id\":42}")
        row = vouchers[0].row
    vouchers = find_vouchers(journal, row)
    carriers = {key: s for key, s in carrier_of(journal, row)}
    out = {"row": {"system": row.system, "table": row.table, "pk": row.pk}, "vouchers": [
        {"key": v.key, "kind": v.kind, "status": v.status, "debit_total": str(v.debit_total), "date": v.date.isoformat(),
         "kingdee_number": v.kingdee_number, "kafka": v.where,
         "summary": None if v.key not in carriers else {
             "id": carriers[v.key].id, "key": carriers[v.key].key, "state": carriers[v.key].state,
             "voucher_key": carriers[v.key].voucher_key}} for v in vouchers]}
    if as_json:
        typer.echo(json.dumps(out, ensure_ascii=False, indent=2))
        return
    typer.echo(f"source row {row}")
    typer.echo(f"  {'voucher key':<34} {'kind':<9} {'status':<20} {'date':<10} {'debit total':>14}  Kingdee / summary")
    for v in vouchers:
        s = carriers.get(v.key)
        via = (f"in summary {s.id} ({_key(s)}, {s.state})" + (f" → {v.kingdee_number}" if v.kingdee_number else "")
               if s is not None else v.kingdee_number or "")
        typer.echo(f"  {v.key:<34} {v.kind:<9} {v.status:<20} {v.date.isoformat():<10} {v.debit_total:>14,.2f}  {via}")


def _print_drilldown(d: Drilldown, as_json: bool) -> None:
    s = d.summary
    if as_json:
        typer.echo(json.dumps({
            "summary": {"id": s.id, "rule": s.rule_id, "key": s.key, "seq": s.seq, "state": s.state,
                        "book": s.book, "date": s.voucher_date.isoformat(), "contributions": s.contributions,
                        "source_rows": s.source_rows, "problem": s.problem, "voucher_key": s.voucher_key,
                        "voucher_status": d.voucher_status, "kingdee_number": d.kingdee_number},
            "rows": [{"system": r.system, "table": r.table, "pk": r.pk, "voucher_key": r.voucher_key,
                      "debit_total": str(r.debit_total), "changes": r.changes,
                      "kafka": None if r.topic is None else f"{r.topic}[{r.kafka_partition}]@{r.kafka_offset}"}
                     for r in d.rows],
            "adjustments": [{"key": k, "kind": kind, "status": st, "debit_total": str(t)}
                            for k, kind, st, t in d.adjustments]}, ensure_ascii=False, indent=2))
        return
    typer.echo(f"summary {s.id}: {s.rule_id} {_key(s)} (close #{s.seq}, {s.close_policy}) — {s.state}"
               + (f": {s.problem}" if s.problem else ""))
    if s.voucher_key:
        typer.echo(f"  voucher {s.voucher_key} {d.voucher_status or ''}"
                   + (f", Kingdee {d.kingdee_number}" if d.kingdee_number else ""))
    total = sum((r.debit_total for r in d.rows), start=0)
    typer.echo(f"  carries {len(d.rows)} source rows, debit total {total:,.2f} ({s.contributions} contributions "
               "incl. changes and reversals while it was open)")
    typer.echo(f"  {'system':<10} {'table':<26} {'pk':<22} {'debit total':>14}  {'changes':>7}  read from")
    for r in d.rows:
        where = f"{r.topic}[{r.kafka_partition}]@{r.kafka_offset}" if r.topic is not None else ""
        typer.echo(f"  {r.system:<10} {r.table[:26]:<26} {r.pk[:22]:<22} {r.debit_total:>14,.2f}  {r.changes:>7}  {where}")
    for key, kind, st, t in d.adjustments:
        typer.echo(f"  adjustment after close: {key} {kind} {st} {t:,.2f}")
