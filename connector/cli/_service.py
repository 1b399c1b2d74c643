"""The service and its parts: `run`, `post`, `scan-duplicates`, `sandbox` (ops endpoints, readiness, logging)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from connector.cli import _console
from connector.cli._app import ConfigOpt, app, fail as _fail
from connector.config import Settings

if TYPE_CHECKING:
    from connector.ops import Metrics



def setup_logging(settings: Settings) -> None:
    """Log lines in the configured format and level, with every configured secret scrubbed; a warning for each
    connection that would travel in plain text (``profile: production`` refuses to start instead)."""
    import logging

    from connector import logs
    from connector.config import transport_warnings

    logs.setup(settings.log_level, settings.log_format, logs.secret_values(settings))
    for problem in transport_warnings(settings):
        logging.getLogger("kingdee_cdc").warning("insecure transport: %s", problem)


def _readiness(settings: Settings, *, kafka: bool, kingdee: bool, assigned: Callable[[], str] | None = None
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


def _serve_ops(settings: Settings, metrics: Metrics, ready: Callable[[], tuple[bool, str]]) -> Any:
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
    setup_logging(settings)
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
    console = _console.start_if_enabled(settings)  # console.enabled: the operator console on console.port
    for _, th in workers:
        th.start()
    try:
        stats = pipeline.run(max_idle_s=exit_when_idle)
    finally:
        for worker, th in workers:
            worker.stop()
            th.join(30)
        ops.stop()
        if console is not None:
            console.stop()
    letters = stats.rejected + stats.dead_lettered
    typer.echo(f"stopped: {stats.records} records in {stats.batches} batches; {stats.vouchers} vouchers, "
               f"{stats.duplicates} duplicates skipped, {stats.rejected} rejected, {stats.dead_lettered} "
               f"undecodable ({letters} dead letters: kingdee-cdc dlq list), {stats.skipped} skipped, "
               f"{stats.retries} retries, {stats.fenced} fenced batches")


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
    setup_logging(settings)
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
    setup_logging(settings)
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
