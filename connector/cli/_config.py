"""`kingdee-cdc config show|check`: the effective configuration, and whether everything it names is there."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated

import typer

from connector.cli._app import ConfigOpt, config_app
from connector.config import Settings


@config_app.command("show")
def config_show(config: ConfigOpt = None) -> None:
    """Print the effective configuration with secrets redacted."""
    from connector.config import load_settings

    typer.echo(json.dumps(load_settings(config).redacted(), indent=2, ensure_ascii=False))


@config_app.command("check")
def config_check(
    config: ConfigOpt = None,
    connect: Annotated[bool, typer.Option("--connect", help="also reach Kafka, PostgreSQL, Kingdee and the schema "
                                                            "registry, and say which one fails")] = False,
    timeout_s: Annotated[float, typer.Option("--timeout", help="seconds per connection attempt")] = 10.0,
) -> None:
    """Validate the configuration (exit 2 with every problem listed) and the rules directory; with --connect,
    try every service it names (exit 1 when any cannot be reached)."""
    from connector.config import load_settings, transport_warnings

    settings = load_settings(config)
    checks: list[tuple[str, Callable[[], str]]] = [("rules", lambda: _rules(settings))]
    if connect:
        checks += [("postgresql", lambda: _postgresql(settings, timeout_s)),
                   ("kafka", lambda: _kafka(settings, timeout_s))]
        if settings.kingdee.server_url:
            checks.append(("kingdee", lambda: _kingdee(settings, timeout_s)))
        if settings.schema_registry.url:
            checks.append(("schema registry", lambda: _registry(settings, timeout_s)))
    failed = 0
    for name, check in checks:
        try:
            typer.echo(f"{name:<16} ok    {check()}")
        except Exception as e:  # every failure is reported, the other checks still run
            failed += 1
            typer.secho(f"{name:<16} FAIL  {_reason(e)}", fg=typer.colors.RED)
    for warning in transport_warnings(settings):
        typer.echo(f"{'warning':<16}       {warning}")
    if failed:
        raise typer.Exit(1)
    typer.echo("configuration OK" + ("" if connect else " (services not contacted: add --connect)"))


def _reason(e: Exception) -> str:
    from connector.logs import scrub
    from connector.mapping import RuleError

    if isinstance(e, RuleError) and e.problems:
        more = len(e.problems) - 1
        return scrub(e.problems[0]) + (f" (and {more} more: kingdee-cdc mapping check)" if more else "")
    text = scrub(str(e)).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _rules(settings: Settings) -> str:
    from connector.mapping import load_rules

    rules = load_rules(settings.mapping.rules_dir)
    return f"{settings.mapping.rules_dir}: {len(rules.rules)} rules, {len(rules.ledger.books)} books"


def _postgresql(settings: Settings, timeout_s: float) -> str:
    import psycopg

    from connector.service import journal_dsn

    with psycopg.connect(journal_dsn(settings), connect_timeout=max(1, int(timeout_s))) as conn:
        row = conn.execute("SELECT current_setting('server_version')").fetchone()
    return f"PostgreSQL {row[0] if row else '?'}"


def _kafka(settings: Settings, timeout_s: float) -> str:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({**settings.kafka.librdkafka(), "log_level": "0"})
    meta = admin.list_topics(timeout=timeout_s)
    missing = [t for t in settings.kafka.topics if t not in meta.topics]
    if missing:
        raise RuntimeError(f"reachable, but these kafka.topics do not exist: {', '.join(missing)}")
    return f"{len(meta.brokers)} broker(s), the {len(settings.kafka.topics)} configured topics exist"


def _kingdee(settings: Settings, timeout_s: float) -> str:
    from connector.service import build_kingdee_client

    with build_kingdee_client(settings) as client:
        client.query_business_info("GL_VOUCHER")  # an authenticated call: the credentials work, not only DNS
    return f"GL_VOUCHER answers in data centre {settings.kingdee.acct_id} as {settings.kingdee.username}"


def _registry(settings: Settings, timeout_s: float) -> str:
    from confluent_kafka.schema_registry import SchemaRegistryClient

    client = SchemaRegistryClient({**settings.schema_registry.client_conf(), "timeout": int(timeout_s)})
    return f"{len(client.get_subjects())} subjects"
