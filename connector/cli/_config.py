"""`kingdee-cdc config show|check`."""

from __future__ import annotations

import json

import typer

from connector.cli._app import ConfigOpt, config_app

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
