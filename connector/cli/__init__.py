"""The ``kingdee-cdc`` command line (Typer), one module per job.

Each command is a thin shell around the package: parse arguments, load settings, call one function,
print. Errors that are the user's to fix (``ConnectorError``) print one clear message and exit 2; anything
else is a bug and keeps its traceback.

``_app`` (the application, groups, shared options) · ``_service`` (run, post, scan-duplicates, sandbox) ·
``_journal`` (journal, replay, reconcile, offsets, dlq) · ``_feedback`` · ``_mapping`` · ``_events`` ·
``_config`` · ``_console`` (the operator console) · ``_summaries`` (summary vouchers, trace) · ``_vouchers``
(vouchers Kingdee refused: list, send again).
"""

from __future__ import annotations

import sys
from typing import Any

import typer

from connector import __version__
from connector.cli import (  # noqa: F401  (registers)
    _config, _console, _events, _feedback, _journal, _mapping, _service, _summaries, _vouchers)
from connector.cli._app import app
from connector.errors import ConnectorError

__all__ = ["app", "main"]


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


def main(argv: list[str] | None = None) -> Any:
    """Console-script entry point. Every message and traceback it prints is scrubbed of the settings'
    secrets and of passwords inside URLs."""
    from connector.logs import install_excepthook, scrub

    install_excepthook()
    try:
        return app(argv, standalone_mode=True)
    except ConnectorError as e:
        typer.secho(f"error: {scrub(str(e))}", fg=typer.colors.RED, err=True)
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
