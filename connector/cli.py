"""The ``kingdee-cdc`` command line (Typer).

Each command is a thin shell around the package: parse arguments, load settings, call one function,
print. Errors that are the user's to fix (``ConnectorError``) print one clear message and exit 2; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from collections.abc import Callable
from typing import Annotated, Any, Optional

import typer

from connector import __version__
from connector.errors import ConnectorError

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="kingdee-cdc: Debezium change events → balanced Kingdee K/3 Cloud vouchers, exactly once.")
events_app = typer.Typer(no_args_is_help=True, help="Decode and publish Debezium change events.")
config_app = typer.Typer(no_args_is_help=True, help="Inspect the configuration.")
mapping_app = typer.Typer(no_args_is_help=True, help="Validate, preview and test mapping rules.")
app.add_typer(mapping_app, name="mapping")
app.add_typer(events_app, name="events")
app.add_typer(config_app, name="config")

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML configuration file "
                                                   "(default: $KDCDC_CONFIG)")]


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


# --------------------------------------------------------------------------- events
def _records_in(path: Path) -> list[bytes]:
    raw = path.read_bytes()
    if raw[:1] == b"\x00":
        return [raw]  # one Avro wire-format record
    try:
        json.loads(raw)
        return [raw]
    except ValueError:
        pass
    lines = [ln for ln in raw.splitlines() if ln.strip()]
    return lines or [raw]


@events_app.command("decode")
def events_decode(
    files: Annotated[list[Path], typer.Argument(exists=True, dir_okay=False, readable=True,
                                                help="Files holding one event (JSON or Avro wire format) "
                                                     "or one JSON event per line")],
    schema: Annotated[Optional[Path], typer.Option("--schema", exists=True, dir_okay=False,
                                                   help="Avro writer schema (.avsc) for Avro wire-format "
                                                        "files, whatever schema id they carry")] = None,
) -> None:
    """Print one normalised JSON line per event (decimals as strings, times ISO-8601 UTC)."""
    from connector.events import Decoder, FixedSchemas, KafkaCoordinates, event_to_json

    schemas = FixedSchemas(json.loads(schema.read_text())) if schema else None
    decoder = Decoder(schemas)
    failures = 0
    for path in files:
        for n, rec in enumerate(_records_in(path)):
            result = decoder.decode(rec, kafka=KafkaCoordinates(topic=str(path), partition=0, offset=n))
            out = event_to_json(result)
            failures += out["kind"] == "DecodeFailure"
            typer.echo(json.dumps(out, ensure_ascii=False))
    if failures:
        raise typer.Exit(1)


@events_app.command("produce")
def events_produce(
    files: Annotated[list[Path], typer.Argument(exists=True, dir_okay=False, readable=True,
                                                help="Files holding one event (JSON or Avro wire format) "
                                                     "or one JSON event per line")],
    topic: Annotated[str, typer.Option("--topic", help="e.g. oa.public.expense_claim")],
    key: Annotated[Optional[str], typer.Option("--key", help="record key (JSON), default: the event's "
                                                              "primary key as {\"id\": …} when it has one")] = None,
    config: ConfigOpt = None,
) -> None:
    """Publish event files to a topic as they are (for trying rules against a dev stack)."""
    from confluent_kafka import Producer

    from connector.config import load_settings

    settings = load_settings(config)
    producer = Producer({"log_level": "3", **settings.kafka.librdkafka(), "enable.idempotence": "true"})
    sent = 0
    for path in files:
        for rec in _records_in(path):
            k = key.encode() if key else _default_key(rec)
            producer.produce(topic, value=rec, key=k)
            sent += 1
    left = producer.flush(30)
    if left:
        _fail(f"{left} of {sent} records not acknowledged by Kafka at {settings.kafka.bootstrap_servers}")
    typer.echo(f"produced {sent} records to {topic}")


def _default_key(rec: bytes) -> bytes | None:
    try:
        doc = json.loads(rec)
    except ValueError:
        return None
    body = doc.get("payload", doc) if isinstance(doc, dict) else None
    row = (body or {}).get("after") or (body or {}).get("before") if isinstance(body, dict) else None
    if isinstance(row, dict) and "id" in row:
        return json.dumps({"id": row["id"]}).encode()
    return None


# --------------------------------------------------------------------------- run / journal
journal_app = typer.Typer(no_args_is_help=True, help="Manage the PostgreSQL journal.")
app.add_typer(journal_app, name="journal")


def _setup_logging(settings: Any) -> None:
    from connector import logs

    logs.setup(settings.log_level, settings.log_format, logs.secret_values(settings))


def _readiness(settings: Any, *, kafka: bool, kingdee: bool, assigned: Callable[[], str] | None = None
               ) -> Callable[[], tuple[bool, str]]:
    """/readyz: the journal answers, Kafka answers (if consumed), Kingdee's host accepts connections (if posting)."""
    import socket
    from urllib.parse import urlparse

    from connector.service import journal_dsn

    admin: list[Any] = []  # one librdkafka client for every probe, created on first use

    def ready() -> tuple[bool, str]:
        import psycopg

        try:
            with psycopg.connect(journal_dsn(settings), connect_timeout=2) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error as e:
            return False, f"journal unreachable: {type(e).__name__}"
        if kafka:
            from confluent_kafka.admin import AdminClient

            try:
                if not admin:
                    admin.append(AdminClient({**settings.kafka.librdkafka(), "log_level": "0"}))
                admin[0].list_topics(timeout=2)
            except Exception as e:
                return False, f"kafka unreachable: {type(e).__name__}"
        if kingdee and settings.kingdee.server_url:
            url = urlparse(str(settings.kingdee.server_url))
            try:
                socket.create_connection((url.hostname or "", url.port or (443 if url.scheme == "https" else 80)),
                                         timeout=2).close()
            except OSError as e:
                return False, f"kingdee unreachable: {e.strerror or type(e).__name__}"
        return True, "ok" + (f"; {assigned()}" if assigned else "")
    return ready


def _serve_ops(settings: Any, metrics: Any, ready: Callable[[], tuple[bool, str]]) -> Any:
    from connector.ops import JournalBacklog, OpsServer
    from connector.service import journal_dsn

    metrics.registry.register(JournalBacklog(journal_dsn(settings), settings.journal.schema_name))
    token = settings.metrics.token.get_secret_value() if settings.metrics.token else None
    return OpsServer(metrics, host=settings.metrics.host, port=settings.metrics.port, ready=ready,
                     token=token).start()


@app.command()
def run(
    config: ConfigOpt = None,
    exit_when_idle: Annotated[Optional[float], typer.Option(help="stop after this many idle seconds "
                                                                 "(backfills, tests)")] = None,
    with_poster: Annotated[bool, typer.Option("--post/--no-post", help="also post journaled vouchers to "
                                                                       "Kingdee in this process")] = False,
    with_feedback: Annotated[bool, typer.Option("--feedback/--no-feedback", help="also relay the feedback "
                                                                                 "outbox to Kafka")] = False,
) -> None:
    """Consume change events and journal every outcome exactly once (until SIGTERM/SIGINT).

    With --post and --feedback one process is the whole service (what the container image runs).
    """
    import threading

    from connector.config import load_settings
    from connector.ops import Metrics
    from connector.service import build_pipeline, build_poster, build_relay

    settings = load_settings(config)
    _setup_logging(settings)
    metrics = Metrics()
    pipeline = build_pipeline(settings, metrics=metrics)
    pipeline.install_signal_handlers()
    workers: list[tuple[Any, threading.Thread]] = []
    if with_poster:
        poster = build_poster(settings, metrics=metrics)
        workers.append((poster, threading.Thread(target=poster.run, name="poster", daemon=True)))
    if with_feedback:
        relay = build_relay(settings, metrics=metrics)
        workers.append((relay, threading.Thread(target=relay.run, name="feedback", daemon=True)))
    ops = _serve_ops(settings, metrics, _readiness(
        settings, kafka=True, kingdee=with_poster,
        assigned=lambda: f"{len(pipeline.assigned)} partitions assigned"))
    for _, th in workers:
        th.start()
    try:
        stats = pipeline.run(max_idle_s=exit_when_idle)
    finally:
        for worker, th in workers:
            worker.stop()
            th.join(30)
        ops.stop()
    typer.echo(f"stopped: {stats.records} records in {stats.batches} batches; {stats.vouchers} vouchers, "
               f"{stats.duplicates} duplicates skipped, {stats.rejected} rejected, {stats.dead_lettered} dead "
               f"letters, {stats.skipped} skipped, {stats.retries} retries, {stats.fenced} fenced batches")


@app.command()
def post(config: ConfigOpt = None,
         exit_when_idle: Annotated[bool, typer.Option(help="stop when nothing is left to post")] = False) -> None:
    """Post journaled vouchers to Kingdee (idempotent; several posters may run side by side). Every
    kingdee.duplicate_scan_every_s it also scans Kingdee for voucher keys held more than once."""
    import signal

    from connector.config import load_settings
    from connector.service import build_poster
    from connector.ops import Metrics

    settings = load_settings(config)
    _setup_logging(settings)
    metrics = Metrics()
    poster = build_poster(settings, metrics=metrics)
    ops = _serve_ops(settings, metrics, _readiness(settings, kafka=False, kingdee=True))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: poster.stop())
    try:
        stats = poster.run(exit_when_idle=exit_when_idle)
    finally:
        ops.stop()
    typer.echo(f"posted {stats.posted}, found after timeouts {stats.found_after_timeout}, rejected by Kingdee "
               f"{stats.rejected}, needs attention {stats.needs_attention}, ambiguous calls {stats.ambiguous_calls}, "
               f"outcomes unknown {stats.unknown}, leases taken over {stats.taken_over}, extra copies deleted "
               f"{stats.duplicates_deleted} / flagged {stats.duplicates_flagged}")


@app.command("scan-duplicates")
def scan_duplicates(config: ConfigOpt = None,
                    book: Annotated[Optional[str], typer.Option("--book", help="only this book")] = None,
                    period: Annotated[Optional[str], typer.Option("--period", help="only this period (YYYY-MM)")] = None,
                    flag_only: Annotated[bool, typer.Option("--flag-only", help="delete nothing, only flag "
                                                            "(as kingdee.delete_duplicates: false does)")] = False,
                    ) -> None:
    """Find vouchers Kingdee holds more than once (the same key marker or key field) in the periods the journal
    posted to: unaudited extra copies with the same lines are deleted, keeping the copy the journal recorded;
    audited ones are flagged for a person. Exit 1 while any copy waits for a person."""
    from dataclasses import replace

    from connector.config import load_settings
    from connector.service import build_poster

    if period is not None and not (len(period) == 7 and period[4] == "-" and period.replace("-", "").isdigit()):
        _fail(f"--period must be YYYY-MM, got {period!r}")
    settings = load_settings(config)
    _setup_logging(settings)
    poster = build_poster(settings)
    if flag_only:
        poster.opts = replace(poster.opts, delete_duplicates=False)
    try:
        poster.journal.migrate()
        periods = poster.periods(book=book, period=period)
        if not periods:
            typer.echo("the journal has posted nothing" + (f" to book {book}" if book else "")
                       + (f" in {period}" if period else ""))
            return
        scan = poster.scan_duplicates(periods)
    finally:
        poster.client.close()
        poster.journal.close()
    if scan.skipped:
        _fail(f"no scan: {scan.skipped}; try again shortly", code=3)
    typer.echo(f"scanned {len(scan.periods)} periods ({', '.join(f'{b} {p}' for b, p in scan.periods[:6])}"
               f"{' …' if len(scan.periods) > 6 else ''}): {scan.vouchers_seen} vouchers with keys, "
               f"{len(scan.duplicated)} keys held more than once")
    for key, vid, number in scan.deleted:
        typer.echo(f"deleted  {number} (id {vid}), an extra copy of {key}")
    for key, vid, number, reason in scan.flagged:
        typer.secho(f"flagged  {number} (id {vid}), a copy of {key}: {reason}", fg=typer.colors.YELLOW)
    if scan.in_flight:
        typer.echo(f"still being posted (settled by the poster's look-up): {', '.join(scan.in_flight[:10])}")
    if scan.error:
        _fail(f"the scan stopped early: {scan.error}")
    typer.echo(f"{scan.open_copies} extra copies wait for a person (kdcdc.duplicate_copies, state NEEDS_HUMAN)"
               if scan.open_copies else "no extra copies wait for a person")
    if scan.open_copies:
        raise typer.Exit(1)


@app.command()
def sandbox(
    sandbox_config: Annotated[Optional[Path], typer.Option("--sandbox-config", exists=True, dir_okay=False,
                                                           help="sandbox YAML (default: the built-in one)")] = None,
    host: str = "127.0.0.1",
    port: int = 8090,
) -> None:
    """Run the Kingdee-compatible sandbox server in the foreground (Ctrl-C stops it)."""
    from connector.sandbox import DEFAULT_CONFIG, SandboxConfig, SandboxServer

    cfg = SandboxConfig.load(sandbox_config or DEFAULT_CONFIG)
    server = SandboxServer((host, port), cfg)
    app_id = next(iter(cfg.apps), "")
    typer.echo(f"Kingdee sandbox on {server.url}  data centre {cfg.data_centre}  app {app_id}\n"
               f"admin: POST {server.url.replace('/k3cloud/', '')}/sandbox/admin/faults "
               f"{{\"latency_ms\": 20, \"http_5xx_rate\": 0.02}} (late commits: {{\"slow_ms\": 4000, "
               f"\"slow_every_s\": 2.5, \"slow_for_s\": 0.7}}); POST …/sandbox/admin/copy_voucher {{\"id\": …}}; "
               f"GET …/sandbox/admin/vouchers")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@journal_app.command("migrate")
def journal_migrate(config: ConfigOpt = None) -> None:
    """Apply pending journal migrations."""
    from connector.config import load_settings
    from connector.service import build_journal

    journal = build_journal(load_settings(config))
    applied = journal.migrate()
    typer.echo(f"applied migrations {applied}" if applied else "journal is up to date")


# --------------------------------------------------------------------------- feedback
feedback_app = typer.Typer(no_args_is_help=True, help="Feedback to the upstream systems.")
app.add_typer(feedback_app, name="feedback")


@feedback_app.command("relay")
def feedback_relay(config: ConfigOpt = None,
                   exit_when_idle: Annotated[bool, typer.Option(help="stop when the outbox is empty")] = False,
                   prefix: Annotated[Optional[str], typer.Option(
                       help="topic prefix; topic = PREFIX.<source system> (default: feedback.topic_prefix)")]
                   = None) -> None:
    """Relay the journal's feedback outbox to Kafka (one relay per journal)."""
    import signal

    from connector.config import load_settings
    from connector.service import build_relay

    settings = load_settings(config)
    _setup_logging(settings)
    relay = build_relay(settings)
    if prefix:
        relay.prefix = prefix
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: relay.stop())
    stats = relay.run(exit_when_idle=exit_when_idle)
    typer.echo(f"relayed {stats.sent} feedback events ({stats.failed} to retry)")


@feedback_app.command("tail")
def feedback_tail(source: Annotated[str, typer.Option("--source", help="source system, e.g. pos")],
                  config: ConfigOpt = None,
                  prefix: Annotated[Optional[str], typer.Option(help="default: feedback.topic_prefix")] = None,
                  follow: Annotated[bool, typer.Option(help="keep waiting for new events")] = False) -> None:
    """Print the posting statuses sent to one source system (a reference consumer for upstream teams)."""
    from connector.config import load_settings
    from connector.feedback import tail
    from connector.service import registry_client

    settings = load_settings(config)
    registry = registry_client(settings) if settings.feedback.format == "avro" else None

    def show(e: dict[str, Any]) -> None:
        k = e.get("kingdee") or {}
        reasons = "; ".join(r.get("message", "") for r in e.get("reasons") or [])
        src = e.get("source") or {}
        typer.echo(f"{e['status']:<20} {src.get('table')} {src.get('pk')} {e.get('voucher_key') or ''} "
                   f"{k.get('number') or ''} {reasons}".rstrip())

    tail({**settings.kafka.librdkafka(), "log_level": "3"}, f"{prefix or settings.feedback.topic_prefix}.{source}",
         timeout_s=10**9 if follow else 5.0, printer=show, registry=registry)


# --------------------------------------------------------------------------- replay
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
               f"{s.already_present} already journaled, {s.outcomes.get('REJECTED', 0)} rejected, "
               f"{s.outcomes.get('DEAD_LETTERED', 0)} dead letters, {s.outcomes.get('SKIPPED', 0)} skipped")


# --------------------------------------------------------------------------- reconcile
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
    src_head = f" {'source':>16}" if report.with_source else ""
    typer.echo(f"{'account':<28}{src_head} {'journal':>16} {'Kingdee':>16} {'difference':>14}  status")
    for a in report.accounts:
        src = f" {a.source:>16,.2f}" if a.source is not None else ""
        typer.echo(f"{a.account:<28}{src} {a.journal:>16,.2f} {a.kingdee:>16,.2f} {a.difference:>14,.2f}  "
                   f"{a.status}" + (f"  {' '.join(a.vouchers[:5])}" if a.status != "ok" else ""))
    for title, items in (("missing in Kingdee", report.missing_in_kingdee),
                         ("unknown to the journal", report.unknown_to_journal),
                         ("different amounts", report.amount_mismatch),
                         ("present more than once in Kingdee", report.duplicate_lines())):
        if items:
            typer.echo(f"{title}: {'; '.join(items[:20])}{' …' if len(items) > 20 else ''}")
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


# --------------------------------------------------------------------------- offsets
offsets_app = typer.Typer(no_args_is_help=True, help="Show or move the journal's stored offsets.")
app.add_typer(offsets_app, name="offsets")


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
    for o in show(journal, settings.kafka.librdkafka(), topic):
        typer.echo(f"{o.topic}[{o.partition}]  stored {o.stored if o.stored is not None else '-':>10}  "
                   f"log {o.low}..{o.high}  lag {o.lag if o.lag is not None else '-'}")


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


# --------------------------------------------------------------------------- dead letters
dlq_app = typer.Typer(no_args_is_help=True, help="Inspect and requeue dead letters.")
app.add_typer(dlq_app, name="dlq")


@dlq_app.command("list")
def dlq_list(config: ConfigOpt = None,
             status: Annotated[str, typer.Option(help="NEW, REQUEUED, RESOLVED or ALL")] = "NEW",
             stage: Annotated[Optional[str], typer.Option(help="e.g. TASK_PUT (rejected by rules), schema, json")] = None,
             limit: int = 100) -> None:
    """List dead letters of the configured consumer group."""
    from connector.config import load_settings
    from connector.dlq import list_dead_letters
    from connector.service import build_journal

    journal = build_journal(load_settings(config))
    letters = list_dead_letters(journal, status=None if status == "ALL" else status, stage=stage, limit=limit)
    for d in letters:
        typer.echo(f"{d.id:>8}  {d.where:<40} {d.stage:<10} {d.status:<9} {d.reason[:90]}")
    typer.echo(f"{len(letters)} dead letter(s)")


@dlq_app.command("show")
def dlq_show(dl_id: int, config: ConfigOpt = None) -> None:
    """Show one dead letter: reason, headers and the record as the decoder sees it now."""
    from connector.config import load_settings
    from connector.dlq import get_dead_letter
    from connector.events import Decoder, KafkaCoordinates, RegistrySchemas, event_to_json
    from connector.service import build_journal, registry_client

    settings = load_settings(config)
    d = get_dead_letter(build_journal(settings), dl_id)
    if d is None:
        _fail(f"no dead letter with id {dl_id}")
        return
    client = registry_client(settings)
    decoded = Decoder(RegistrySchemas(client) if client else None).decode(
        d.raw_value, key=d.raw_key, kafka=KafkaCoordinates(topic=d.topic, partition=d.partition, offset=d.offset))
    typer.echo(json.dumps({"id": d.id, "where": d.where, "stage": d.stage, "reason": d.reason, "status": d.status,
                           "created_at": d.created_at.isoformat(), "key": (d.raw_key or b"").decode("utf-8", "replace"),
                           "value_bytes": len(d.raw_value or b""),
                           "headers": {k: (v or b"").decode("utf-8", "replace") for k, v in d.headers},
                           "decoded_now": event_to_json(decoded)}, ensure_ascii=False, indent=2))


@dlq_app.command("requeue")
def dlq_requeue(ids: Annotated[Optional[list[int]], typer.Argument(help="dead letter ids (default: all NEW)")] = None,
                config: ConfigOpt = None,
                stage: Annotated[Optional[str], typer.Option(help="only this stage, e.g. TASK_PUT")] = None,
                to: Annotated[Optional[str], typer.Option("--to", help="topic to send to (default: the original)")] = None,
                dry_run: Annotated[bool, typer.Option("--dry-run")] = False) -> None:
    """Send dead letters back through the pipeline (after a rule fix). Replays never duplicate vouchers."""
    from connector.config import load_settings
    from connector.dlq import get_dead_letter, list_dead_letters, requeue
    from connector.service import build_journal

    settings = load_settings(config)
    journal = build_journal(settings)
    if ids:
        letters = [d for i in ids if (d := get_dead_letter(journal, i)) is not None]
    else:
        letters = list_dead_letters(journal, status="NEW", stage=stage, limit=100_000)
    for d in letters:
        typer.echo(f"{'would requeue' if dry_run else 'requeue'} {d.id} {d.where} {d.reason[:80]}")
    if not dry_run:
        n = requeue(journal, letters, producer_conf=settings.kafka.librdkafka(), to_topic=to)
        typer.echo(f"requeued {n} dead letter(s)")


# --------------------------------------------------------------------------- mapping
RulesDir = Annotated[Path, typer.Argument(help="directory of rule files (rule, lookups, ledger, golden)")]


@mapping_app.command("check")
def mapping_check(
    rules: RulesDir,
    schemas: Annotated[Optional[Path], typer.Option(
        "--schemas", exists=True, file_okay=False, metavar="DIR",
        help="directory of Debezium envelope schemas <system>.<table>.envelope.avsc: the columns rules may read "
             "(default: schemas/ next to the rules directory, else ./schemas, if either exists)")] = None,
    sample: Annotated[Optional[list[Path]], typer.Option(
        "--sample", exists=True, dir_okay=False, metavar="FILE",
        help="Debezium JSON event file (one event, or one per line) whose row images show a table's columns; "
             "repeatable")] = None,
) -> None:
    """Validate rule files: unknown keys, bad expressions, unknown accounts, then what loads but cannot post —
    unknown fields, missing required dimensions, accounts and books outside the source's permissions
    (file:line key in every message; exit 1 on any error)."""
    from connector.events import ChangeEvent, DecodeFailure, Decoder, KafkaCoordinates
    from connector.mapping import RuleError, load_rules
    from connector.mapping._lint import lint_rules, with_account_suggestions

    try:
        rs = load_rules(rules)
    except RuleError as e:
        raise RuleError(with_account_suggestions(rules, e.problems)) from None
    if schemas is None:
        schemas = next((d for d in (rules.resolve().parent / "schemas", Path("schemas")) if d.is_dir()), None)
    events: list[ChangeEvent] = []
    decoder = Decoder()
    for path in sample or ():
        for n, rec in enumerate(_records_in(path)):
            ev = decoder.decode(rec, kafka=KafkaCoordinates(topic=str(path), partition=0, offset=n))
            if isinstance(ev, DecodeFailure):
                _fail(f"--sample {path}: record {n + 1} is not a Debezium JSON event ({ev.stage}: {ev.reason})")
            if isinstance(ev, ChangeEvent):  # transaction markers and tombstones show no columns
                events.append(ev)
    problems = lint_rules(rs, schemas_dir=schemas, samples=events)
    colour = {"error": typer.colors.RED, "warning": typer.colors.YELLOW, "info": None}
    for p in problems:
        typer.secho(str(p), fg=colour[p.severity])
    errors = sum(p.severity == "error" for p in problems)
    warnings = sum(p.severity == "warning" for p in problems)
    if errors:
        typer.secho(f"{errors} error{'s' if errors != 1 else ''}, {warnings} warning{'s' if warnings != 1 else ''} "
                    f"in {len(rs.rules)} rules: these rules cannot post as written", fg=typer.colors.RED)
        raise typer.Exit(1)
    typer.echo(f"{len(rs.rules)} rules OK ({', '.join(r.id for r in rs.rules)}); "
               f"{len(rs.ledger.accounts)} accounts, {len(rs.ledger.books)} books, {len(rs.golden)} golden cases")


@mapping_app.command("chart")
def mapping_chart(config: ConfigOpt = None) -> None:
    """Fetch the chart of accounts from Kingdee (BD_Account) and show how it differs from ledger.yaml."""
    from connector.config import load_settings
    from connector.kingdee.chart import fetch_accounts, merge_chart
    from connector.mapping import load_rules
    from connector.service import build_kingdee_client

    settings = load_settings(config)
    rs = load_rules(settings.mapping.rules_dir)
    with build_kingdee_client(settings) as client:
        fetched = fetch_accounts(client)
    _, drift = merge_chart(rs.ledger, fetched)
    for a in sorted(fetched.values(), key=lambda a: a.number):
        typer.echo(f"{a.number:<14} {a.name:<16} {a.direction.value:<6} {'leaf' if a.leaf else 'parent':<6} "
                   f"{'FROZEN' if a.frozen else ''}")
    typer.echo(f"{len(fetched)} accounts in Kingdee; ledger.yaml: {len(rs.ledger.accounts)}")
    for line in drift.lines():
        typer.echo(f"drift: {line}")
    if not drift.empty:
        raise typer.Exit(1)


@mapping_app.command("preview")
def mapping_preview(
    files: Annotated[list[Path], typer.Argument(exists=True, dir_okay=False, help="event files (JSON, Avro with "
                                                                                   "--schema, or NDJSON)")],
    rules: Annotated[Path, typer.Option("--rules", exists=True, file_okay=False, help="rules directory")],
    schema: Annotated[Optional[Path], typer.Option("--schema", exists=True, dir_okay=False)] = None,
    key: Annotated[Optional[str], typer.Option("--key", help="JSON primary key for events without one, "
                                                             "e.g. '{\"id\":1}'")] = None,
) -> None:
    """Print the vouchers (or rejections) each event would produce, as JSON with amounts as strings."""
    from connector.events import ChangeEvent, Decoder, FixedSchemas, KafkaCoordinates, event_to_json
    from connector.ledger import to_kingdee
    from connector.mapping import InMemoryLedger, Mapper, load_rules
    from connector.mapping._golden import outcome

    rs = load_rules(rules)
    mapper = Mapper(rs)
    ledger = InMemoryLedger()
    decoder = Decoder(FixedSchemas(json.loads(schema.read_text())) if schema else None)
    for path in files:
        for n, rec in enumerate(_records_in(path)):
            ev = decoder.decode(rec, key=key.encode() if key else None,
                                kafka=KafkaCoordinates(topic=str(path), partition=0, offset=n))
            if not isinstance(ev, ChangeEvent):
                typer.echo(json.dumps({"event": f"{path}#{n}", "decoded": event_to_json(ev)}, ensure_ascii=False))
                continue
            result = mapper.map(ev, ledger)
            ledger.apply(result)
            out = {"event": f"{path}#{n}", **outcome(result)}
            if result.vouchers:
                from connector.events import to_jsonable

                out["kingdee"] = [to_jsonable(to_kingdee(v, rs.ledger.books.get(v.book))) for v in result.vouchers]
            typer.echo(json.dumps(out, ensure_ascii=False))


@mapping_app.command("test")
def mapping_test(
    rules: RulesDir,
    schemas: Annotated[Optional[Path], typer.Option(
        "--schemas", exists=True, file_okay=False,
        help="Avro envelope schemas (<system>.<table>.envelope.avsc): cases of these tables run in the precise, "
             "string and double decimal modes [default: schemas/ next to the rules directory]")] = None,
) -> None:
    """Run the golden files: every sample event, decoded like a real Debezium event, must produce exactly the
    expected vouchers — in every decimal mode where the table's schema is known."""
    from connector.mapping import load_rules
    from connector.mapping._golden import default_schemas_dir, load_table_schemas, run_golden

    rs = load_rules(rules)
    if not rs.golden:
        _fail(f"no golden cases (files with kind: golden) under {rules}")
    checked, failures = run_golden(rs, schemas=load_table_schemas(schemas or default_schemas_dir(rules)))
    for f in failures:
        typer.secho(f"FAIL {f}", fg=typer.colors.RED)
    typer.echo(f"{len(rs.golden)} cases, {checked} events: {checked - len({(f.case, f.event) for f in failures})} "
               f"passed, {len({(f.case, f.event) for f in failures})} failed")
    if failures:
        raise typer.Exit(1)


# --------------------------------------------------------------------------- config
@config_app.command("show")
def config_show(config: ConfigOpt = None) -> None:
    """Print the effective configuration with secrets redacted."""
    from connector.config import load_settings

    typer.echo(json.dumps(load_settings(config).redacted(), indent=2, ensure_ascii=False))


@config_app.command("check")
def config_check(config: ConfigOpt = None) -> None:
    """Validate the configuration; exit 2 with every problem listed."""
    from connector.config import load_settings

    load_settings(config)
    typer.echo("configuration OK")


def main(argv: list[str] | None = None) -> Any:
    """Console-script entry point."""
    try:
        return app(argv, standalone_mode=True)
    except ConnectorError as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
