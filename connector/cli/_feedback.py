"""`kingdee-cdc feedback relay|tail`: posting status back to the source systems."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from connector.cli._app import ConfigOpt, feedback_app
from connector.cli._service import setup_logging as _setup_logging



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

    tail({**settings.kafka.consumer_conf(), "log_level": "3"}, f"{prefix or settings.feedback.topic_prefix}.{source}",
         timeout_s=10**9 if follow else 5.0, printer=show, registry=registry)
