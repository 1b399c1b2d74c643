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


def _serve_ops(settings: Settings, metrics: Metrics, *, kafka: Any = None, kingdee: bool = False,
               gate: Callable[[], str | None] = lambda: None, detail: Callable[[], str] | None = None
               ) -> tuple[Any, Any]:
    """The ops server and its journal collector. ``/readyz``: ``gate`` (starting, stopping), then the journal on
    the collector's pooled connection, Kafka through ``kafka`` (a ``KafkaProbe``), Kingdee's host when posting —
    checked at most once per ``metrics.ready_cache_s``, whoever asks."""
    from connector.ops import JournalBacklog, OpsServer, Readiness
    from connector.service import journal_dsn, kingdee_problem

    backlog = JournalBacklog(journal_dsn(settings), settings.journal.schema_name)
    metrics.registry.register(backlog)
    checks: list[tuple[str, Callable[[], str | None]]] = [("journal", backlog.ping)]
    if kafka is not None:
        checks.append(("kafka", kafka))
    if kingdee and settings.kingdee.server_url:
        checks.append(("kingdee", lambda: kingdee_problem(settings)))
    ready = Readiness(checks, cache_s=settings.metrics.ready_cache_s, gate=gate, detail=detail)
    token = settings.metrics.token.get_secret_value() if settings.metrics.token else None
    server = OpsServer(metrics, host=settings.metrics.host, port=settings.metrics.port, ready=ready, token=token,
                       timeout_s=settings.metrics.request_timeout_s).start()
    return server, backlog


def _supervised(name: str, target: Callable[[], object], shutdown: Any, failures: list[str]) -> Callable[[], None]:
    """A worker thread's body: if the worker ends with an exception (or ends at all before the service stops), say
    so in one line and stop the whole service, which then exits with status 1 — never a dead thread in a live
    process. (Outages of the journal, Kafka or Kingdee do not end a worker: it waits them out.)"""
    import logging

    log = logging.getLogger("kingdee_cdc")

    def body() -> None:
        try:
            target()
        except BaseException as e:
            failures.append(name)
            log.error("%s stopped by an error: %s: %s; stopping the service (exit status 1)", name,
                      type(e).__name__, e, exc_info=True)
            shutdown.begin(f"{name} failed")
            return
        if not shutdown.stopping:
            failures.append(name)
            log.error("%s ended although the service was not stopping; stopping the service (exit status 1)", name)
            shutdown.begin(f"{name} ended")
    return body


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

    With --post and --feedback one process is the whole service (what the container image runs). At start it
    waits up to service.startup_timeout_s for the journal and Kafka (exit status 3 if they do not answer); on
    SIGTERM it exits within service.shutdown_grace_s.
    """
    import threading

    from connector.config import load_settings
    from connector.ops import Metrics, Shutdown
    from connector.service import (
        KafkaProbe,
        StartupFailed,
        build_closer,
        build_pipeline,
        build_poster,
        build_relay,
        configure_outages,
        wait_for_dependencies,
    )

    settings = load_settings(config)
    setup_logging(settings)
    metrics = Metrics()
    configure_outages(settings, observer=metrics.dependency_state)
    shutdown = Shutdown(settings.service.shutdown_grace_s).install()
    pipeline = build_pipeline(settings, metrics=metrics)
    shutdown.on_stop(pipeline.stop)
    failures: list[str] = []
    workers: list[threading.Thread] = []
    if with_poster:
        poster = build_poster(settings, metrics=metrics)
        shutdown.on_stop(poster.stop)
        workers.append(threading.Thread(target=_supervised("poster", poster.run, shutdown, failures), name="poster",
                                        daemon=True))
    closer = build_closer(settings, pipeline.processor.mapper)  # rules with summarize: close what is due
    if closer is not None:
        shutdown.on_stop(closer.stop)
        workers.append(threading.Thread(target=_supervised("summary closer", closer.run, shutdown, failures),
                                        name="summaries", daemon=True))
    if with_feedback:
        relay = build_relay(settings, metrics=metrics)
        shutdown.on_stop(relay.stop)
        workers.append(threading.Thread(target=_supervised("feedback relay", relay.run, shutdown, failures),
                                        name="feedback", daemon=True))
    starting = ["starting"]
    kafka = KafkaProbe(settings)

    def gate() -> str | None:
        return "stopping" if shutdown.stopping else starting[0] or None
    ops, backlog = _serve_ops(settings, metrics, kafka=kafka, kingdee=with_poster, gate=gate,
                              detail=lambda: f"{len(pipeline.assigned)} partitions assigned")
    console = _console.start_if_enabled(settings)  # console.enabled: the operator console on console.port
    stats = None
    ran = False
    error: BaseException | None = None
    try:
        if wait_for_dependencies(settings, stop=shutdown.event, kafka=kafka,
                                 status=lambda text: starting.__setitem__(0, text or "starting")):
            starting[0] = ""
            for th in workers:
                shutdown.watch(th).start()
            ran = True
            stats = pipeline.run(max_idle_s=exit_when_idle)
    except StartupFailed as e:
        error = e
    finally:
        shutdown.begin("start-up failed" if error is not None else "the pipeline stopped")  # no-op after a signal
        still = shutdown.join()
        if still:
            shutdown.expire_now(f"{', '.join(still)} did not stop")
        ops.stop()
        kafka.close()
        if not ran:
            pipeline.discard()
        backlog.close()
        if console is not None:
            console.stop()
    if error is not None:
        _fail(str(error), code=3)
    if failures:
        _fail(f"stopped because {', '.join(failures)} failed (see the log above)", code=1)
    if stats is None:
        typer.echo("stopped before start-up completed")
        return
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
    from connector.config import load_settings
    from connector.ops import Metrics, Shutdown
    from connector.service import StartupFailed, build_poster, configure_outages, wait_for_dependencies

    settings = load_settings(config)
    setup_logging(settings)
    metrics = Metrics()
    configure_outages(settings, observer=metrics.dependency_state)
    shutdown = Shutdown(settings.service.shutdown_grace_s).install()
    poster = build_poster(settings, metrics=metrics)
    shutdown.on_stop(poster.stop)
    ops, backlog = _serve_ops(settings, metrics, kingdee=True, gate=lambda: "stopping" if shutdown.stopping else None)
    try:
        if not wait_for_dependencies(settings, stop=shutdown.event, kafka=None):
            return
        stats = poster.run(exit_when_idle=exit_when_idle)
    except StartupFailed as e:
        _fail(str(e), code=3)
    finally:
        shutdown.begin("the poster stopped")
        ops.stop()
        backlog.close()
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
