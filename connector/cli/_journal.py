"""The journal and its records: `journal migrate`, `replay`, `reconcile`, `offsets`, `dlq`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

if TYPE_CHECKING:
    from connector.reconcile import Report

from connector.cli._app import ConfigOpt, app, dlq_app, fail as _fail, journal_app, offsets_app

@journal_app.command("migrate")
def journal_migrate(config: ConfigOpt = None) -> None:
    """Apply pending journal migrations."""
    from connector.config import load_settings
    from connector.service import build_journal

    journal = build_journal(load_settings(config))
    applied = journal.migrate()
    typer.echo(f"applied migrations {applied}" if applied else "journal is up to date")


@app.command()
def replay(topic: Annotated[str, typer.Option("--topic", help="topic to replay, e.g. pos.public.sales_order.replay")],
           config: ConfigOpt = None,
           from_offset: Annotated[Optional[int], typer.Option("--from-offset")] = None,
           from_time: Annotated[Optional[str], typer.Option("--from-time", help="ISO-8601")] = None,
           to_time: Annotated[Optional[str], typer.Option("--to-time", help="ISO-8601; default: the log end")] = None,
           group: Annotated[Optional[str], typer.Option("--group", help="default: <group>-replay")] = None,
           dry_run: Annotated[bool, typer.Option("--dry-run", help="count what would happen, write nothing")]
           = False,
           repost_changed: Annotated[bool, typer.Option(
               "--repost-changed", help="after a rule change: re-map the rows the range touches and journal "
                                        "reversal + corrected voucher where the vouchers in force differ "
                                        "(with --dry-run: print the differences)")] = False) -> None:
    """Run a topic through the pipeline in its own consumer group; already-journaled changes create nothing."""
    from connector.config import load_settings
    from connector.events import Decoder, RegistrySchemas
    from connector.mapping import Mapper, load_rules
    from connector.pipeline import Processor
    from connector.replay import dry_run as run_dry
    from connector.replay import replay as run_replay
    from connector.journal import Outcome
    from connector.service import build_journal, registry_client

    settings = load_settings(config)
    journal = build_journal(settings)
    journal.group = group or f"{settings.kafka.group_id}-replay"
    client = registry_client(settings)
    processor = Processor(Decoder(RegistrySchemas(client) if client else None),
                          Mapper(load_rules(settings.mapping.rules_dir)))
    start = str(from_offset) if from_offset is not None else (from_time or "earliest")
    if repost_changed:
        from connector.ledger import render_entry
        from connector.replay import repost_changed as run_repost

        journal.group = settings.kafka.group_id  # compare with what the service journaled
        r = run_repost(journal=journal, processor=processor, kafka_conf=settings.kafka.librdkafka(), topic=topic,
                       start=start, to_time=to_time, dry_run=dry_run)
        for ch in r.changes:
            typer.echo(f"{ch.row.system}/{ch.row.table}/{ch.row.pk}:")
            for v in ch.old:
                typer.echo(f"  in force  {v.key}  " + " | ".join(render_entry(e) for e in v.entries))
            for v in ch.new:
                typer.echo(f"  {'reverse ' if v.kind.value == 'reversal' else 'correct '}  {v.key}  "
                           + " | ".join(render_entry(e) for e in v.entries))
        for row in r.stale[:20]:
            typer.echo(f"skipped {row.system}/{row.table}/{row.pk}: the journal knows a later change (or none) "
                       "of this row; replay up to its newest change")
        for row, why in r.rejections[:20]:
            typer.echo(f"rejected {row.system}/{row.table}/{row.pk}: {why}")
        typer.echo(f"{'would re-post' if dry_run else 're-posted'} {len(r.changes)} of {r.rows} rows "
                   f"(rules {r.tag}; {r.records} records read in {r.seconds:.1f}s): {r.unchanged} unchanged, "
                   f"{r.deleted} deleted, {r.rejected} rejected by the new rules, {len(r.stale)} skipped as stale"
                   + ("" if dry_run else f"; {r.inserted} vouchers journaled for the poster"))
        return
    run = run_dry if dry_run else run_replay
    s = run(journal=journal, processor=processor, kafka_conf=settings.kafka.librdkafka(), topic=topic,
            start=start, to_time=to_time)
    typer.echo(f"replayed {s.records} records in {s.seconds:.1f}s (group {s.group}): {s.new} new, "
               f"{s.already_present} already journaled, {s.outcomes.get(Outcome.REJECTED, 0)} rejected, "
               f"{s.outcomes.get(Outcome.DEAD_LETTERED, 0)} dead letters, {s.outcomes.get(Outcome.SKIPPED, 0)} skipped")


@app.command()
def reconcile(book: Annotated[str, typer.Option("--book")],
              period: Annotated[str, typer.Option("--period", help="YYYY-MM")],
              config: ConfigOpt = None,
              by_dimension: Annotated[bool, typer.Option("--by-dimension", help="one line per account and "
                                                                                  "dimension combination")] = False,
              source_dsn: Annotated[Optional[str], typer.Option(
                  "--source-dsn", help="source database to compute expected totals from (with --query)")] = None,
              query: Annotated[Optional[Path], typer.Option(
                  "--query", exists=True, dir_okay=False, help="SQL returning (account[, dimensions], net); "
                  "parameters %(book)s %(period)s %(period_start)s %(period_end)s")] = None,
              tolerance: Annotated[str, typer.Option(help="differences up to this amount that in-flight "
                                                          "vouchers explain are not flagged")] = "0.00",
              csv_path: Annotated[Optional[Path], typer.Option("--csv", help="write the report as CSV")] = None,
              html_path: Annotated[Optional[Path], typer.Option("--html", help="write the report as HTML")] = None,
              ) -> None:
    """Compare source totals (optional), the journal and Kingdee per account (and dimension); exit 1 on
    unexplained differences. The run is recorded in the journal and exported as metrics by the service."""
    from decimal import Decimal, InvalidOperation

    from connector.config import load_settings
    from connector.reconcile import record, source_totals
    from connector.reconcile import reconcile as run_reconcile
    from connector.service import build_journal, build_kingdee_client

    if (source_dsn is None) != (query is None):
        _fail("--source-dsn and --query go together")
    try:
        tol = Decimal(tolerance)
    except InvalidOperation:
        _fail(f"--tolerance must be an amount such as 0.01, got {tolerance!r}")
    settings = load_settings(config)
    journal = build_journal(settings)
    journal.migrate()
    expected = None
    if source_dsn and query:
        expected = source_totals(source_dsn, query.read_text(encoding="utf-8"), book=book, period=period)
    with build_kingdee_client(settings) as client:
        report = run_reconcile(journal, client, book=book, period=period, by_dimension=by_dimension,
                               tolerance=tol, source=expected)
    _print_report(report)
    if csv_path:
        report.write_csv(csv_path)
    if html_path:
        report.write_html(html_path)
    record(journal, report)
    typer.echo(f"{len(report.flagged)} of {len(report.accounts)} lines flagged"
               + (f"; {len(report.duplicated_in_kingdee)} keys present more than once in Kingdee"
                  if report.duplicated_in_kingdee else ""))
    if report.is_flagged:
        raise typer.Exit(1)




def _print_report(report: Report) -> None:
    """The reconciliation as a table (with column headers) and the vouchers behind each difference."""
    from connector.reconcile import LineStatus

    src_head = f" {'source':>16}" if report.with_source else ""
    typer.echo(f"{'account':<28}{src_head} {'journal':>16} {'Kingdee':>16} {'difference':>14}  status")
    for a in report.accounts:
        src = f" {a.source:>16,.2f}" if a.source is not None else ""
        typer.echo(f"{a.account:<28}{src} {a.journal:>16,.2f} {a.kingdee:>16,.2f} {a.difference:>14,.2f}  "
                   f"{a.status}" + (f"  {' '.join(a.vouchers[:5])}" if a.status != LineStatus.OK else ""))
    for title, items in (("missing in Kingdee", report.missing_in_kingdee),
                         ("unknown to the journal", report.unknown_to_journal),
                         ("different amounts", report.amount_mismatch),
                         ("present more than once in Kingdee", report.duplicate_lines()),
                         ("summary vouchers that are not the sum of their source rows", report.summary_mismatch)):
        if items:
            typer.echo(f"{title}: {'; '.join(items[:20])}{' …' if len(items) > 20 else ''}")


@offsets_app.command("show")
def offsets_show(topic: Annotated[str, typer.Option("--topic")], config: ConfigOpt = None,
                 group: Annotated[Optional[str], typer.Option("--group")] = None) -> None:
    """Stored next offset, log range and lag per partition."""
    from connector.config import load_settings
    from connector.offsets import show
    from connector.service import build_journal

    settings = load_settings(config)
    journal = build_journal(settings)
    if group:
        journal.group = group
    typer.echo(f"{'partition':<40} {'stored (next)':>14} {'log start':>12} {'log end':>12} {'lag':>10}")
    for o in show(journal, settings.kafka.consumer_conf(), topic):
        typer.echo(f"{f'{o.topic}[{o.partition}]':<40} {o.stored if o.stored is not None else '-':>14} "
                   f"{o.low:>12} {o.high:>12} {o.lag if o.lag is not None else '-':>10}")


@offsets_app.command("set")
def offsets_set(topic: Annotated[str, typer.Option("--topic")],
                to: Annotated[str, typer.Option("--to", help="earliest | latest | ISO time | offset")],
                config: ConfigOpt = None, group: Annotated[Optional[str], typer.Option("--group")] = None,
                partition: Annotated[Optional[list[int]], typer.Option("--partition")] = None) -> None:
    """Move stored offsets (refused while the group has active members). Vouchers never duplicate: keys come
    from the source identity, so moving back re-reads as DUPLICATE."""
    from connector.config import load_settings
    from connector.offsets import set_offsets
    from connector.service import build_journal

    settings = load_settings(config)
    journal = build_journal(settings)
    if group:
        journal.group = group
    moved = set_offsets(journal, settings.kafka.librdkafka(), topic, to, partitions=partition)
    for p, off in sorted(moved.items()):
        typer.echo(f"{topic}[{p}] → {off}")




@dlq_app.command("list")
def dlq_list(config: ConfigOpt = None,
             status: Annotated[str, typer.Option(help="NEW, REQUEUED, RESOLVED or ALL")] = "NEW",
             stage: Annotated[Optional[str], typer.Option(help="e.g. TASK_PUT (rejected by rules), schema, json")] = None,
             limit: int = 100) -> None:
    """List dead letters of the configured consumer group."""
    from connector.config import load_settings
    from connector.dlq import list_dead_letters
    from connector.journal import REJECTED_STAGE
    from connector.service import build_journal

    journal = build_journal(load_settings(config))
    letters = list_dead_letters(journal, status=None if status == "ALL" else status, stage=stage, limit=limit)
    typer.echo(f"{'id':>8}  {'record (topic[partition]@offset)':<40} {'kind':<22} {'status':<9} reason")
    for d in letters:
        kind = "rejected by mapping" if d.stage == REJECTED_STAGE else f"undecodable: {d.stage}"
        typer.echo(f"{d.id:>8}  {d.where:<40} {kind:<22} {d.status:<9} {d.reason[:90]}")
    typer.echo(f"{len(letters)} dead letter(s): {sum(d.stage == REJECTED_STAGE for d in letters)} rejected by the "
               f"mapping rules or checks, {sum(d.stage != REJECTED_STAGE for d in letters)} undecodable")


@dlq_app.command("show")
def dlq_show(dl_id: int, config: ConfigOpt = None) -> None:
    """Show one dead letter: reason, headers and the record as the decoder sees it now."""
    from connector.config import load_settings
    from connector.dlq import get_dead_letter
    from connector.events import Decoder, KafkaCoordinates, RegistrySchemas, event_to_json
    from connector.journal import REJECTED_STAGE
    from connector.ledger import explain
    from connector.service import build_journal, registry_client

    settings = load_settings(config)
    d = get_dead_letter(build_journal(settings), dl_id)
    if d is None:
        _fail(f"no dead letter with id {dl_id}")
        return
    client = registry_client(settings)
    decoded = Decoder(RegistrySchemas(client) if client else None).decode(
        d.raw_value, key=d.raw_key, kafka=KafkaCoordinates(topic=d.topic, partition=d.partition, offset=d.offset))
    code = d.reason.split(" ", 1)[0].split(":", 1)[0] if d.stage == REJECTED_STAGE else d.stage
    meaning = explain(code)
    typer.echo(json.dumps({"id": d.id, "where": d.where, "stage": d.stage, "reason": d.reason,
                           "explanation": None if meaning is None else {"code": code, **meaning._asdict()},
                           "status": d.status,
                           "created_at": d.created_at.isoformat(), "key": (d.raw_key or b"").decode("utf-8", "replace"),
                           "value_bytes": len(d.raw_value or b""),
                           "headers": {k: (v or b"").decode("utf-8", "replace") for k, v in d.headers},
                           "decoded_now": event_to_json(decoded)}, ensure_ascii=False, indent=2))


@dlq_app.command("reasons")
def dlq_reasons() -> None:
    """What every rejection reason code and dead-letter stage means, and what to do about it."""
    from connector.ledger import REASONS, STAGES

    for title, items in (("rejection reasons (stage TASK_PUT)", {c.value: e for c, e in REASONS.items()}),
                         ("dead-letter stages", STAGES)):
        typer.echo(f"{title}:")
        for code, e in items.items():
            typer.echo(f"  {code:<20} {e.cause}\n  {'':<20} → {e.remedy}")


@dlq_app.command("requeue")
def dlq_requeue(ids: Annotated[Optional[list[int]], typer.Argument(help="dead letter ids (default: all NEW)")] = None,
                config: ConfigOpt = None,
                stage: Annotated[Optional[str], typer.Option(help="only this stage, e.g. TASK_PUT")] = None,
                to: Annotated[Optional[str], typer.Option("--to", help="topic to send to (default: the original)")] = None,
                dry_run: Annotated[bool, typer.Option("--dry-run")] = False) -> None:
    """Send dead letters back through the pipeline (after a rule fix). Replays never duplicate vouchers."""
    from connector.config import load_settings
    from connector.dlq import get_dead_letter, list_dead_letters, requeue
    from connector.journal import DeadLetterStatus
    from connector.service import build_journal

    settings = load_settings(config)
    journal = build_journal(settings)
    if ids:
        letters = [d for i in ids if (d := get_dead_letter(journal, i)) is not None]
    else:
        letters = list_dead_letters(journal, status=DeadLetterStatus.NEW, stage=stage, limit=100_000)
    for d in letters:
        typer.echo(f"{'would requeue' if dry_run else 'requeue'} {d.id} {d.where} {d.reason[:80]}")
    if not dry_run:
        n = requeue(journal, letters, producer_conf=settings.kafka.producer_conf(), to_topic=to)
        typer.echo(f"requeued {n} dead letter(s)")
