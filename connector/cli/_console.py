"""The operator console: ``console`` serves it in the foreground; ``start_if_enabled`` is how ``run`` serves it
beside the pipeline when ``console.enabled`` is true."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Optional

import typer

from connector.cli._app import ConfigOpt, app
from connector.config import Settings

if TYPE_CHECKING:
    from connector.console import ConsoleServer


@app.command()
def console(config: ConfigOpt = None,
            host: Annotated[Optional[str], typer.Option(help="address to listen on (default: console.host)")] = None,
            port: Annotated[Optional[int], typer.Option(help="port (default: console.port; 0 = any free port)")]
            = None) -> None:
    """Serve the operator console — sync status, trace, triage (requeue as admin), reconciliation — until Ctrl-C or
    SIGTERM. Users, roles and thresholds come from the console section of the configuration."""
    from connector.cli._service import setup_logging
    from connector.config import load_settings
    from connector.console import Console, ConsoleServer

    settings = load_settings(config)
    setup_logging(settings)
    server = ConsoleServer(Console(settings), host=host, port=port)
    admins = sum(u.role == "admin" for u in settings.console.users)
    typer.echo(f"kingdee-cdc console on {server.url}  ({len(settings.console.users)} users, {admins} admin; "
               f"journal schema {settings.journal.schema_name}, group {settings.kafka.group_id})", err=True)
    server.serve_forever()


def start_if_enabled(settings: Settings) -> ConsoleServer | None:
    """The console in a background thread when ``console.enabled`` (``run``); stop it with ``stop()``."""
    if not settings.console.enabled:
        return None
    from connector.console import Console, ConsoleServer

    return ConsoleServer(Console(settings)).start()
