"""The Typer application and what every command shares: the sub-command groups, the ``--config`` option and
how a user's mistake is reported (one red line, exit 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer

#: Rich tracebacks are off: they print local variables (settings, DSNs) and bypass the secret scrubbing of
#: the exception hook (connector.logs.install_excepthook).
app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="kingdee-cdc: Debezium change events → balanced Kingdee K/3 Cloud vouchers, exactly once.")
events_app = typer.Typer(no_args_is_help=True, help="Decode and publish Debezium change events.")
config_app = typer.Typer(no_args_is_help=True, help="Inspect the configuration.")
mapping_app = typer.Typer(no_args_is_help=True, help="Validate, preview and test mapping rules.")
journal_app = typer.Typer(no_args_is_help=True, help="Manage the PostgreSQL journal.")
feedback_app = typer.Typer(no_args_is_help=True, help="Feedback to the upstream systems.")
offsets_app = typer.Typer(no_args_is_help=True, help="Show or move the journal's stored offsets.")
dlq_app = typer.Typer(no_args_is_help=True, help="Inspect and requeue dead letters.")
for _name, _group in (("mapping", mapping_app), ("events", events_app), ("config", config_app),
                      ("journal", journal_app), ("feedback", feedback_app), ("offsets", offsets_app),
                      ("dlq", dlq_app)):
    app.add_typer(_group, name=_name)

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML configuration file "
                                                   "(default: $KDCDC_CONFIG)")]


def fail(message: str, code: int = 2) -> NoReturn:
    """Report a problem the user can fix and exit (no traceback)."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)
