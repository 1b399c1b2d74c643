"""``python -m harness``: the development harness's commands (``make demo``, ``make dev-up``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="kingdee-cdc development harness: the demo and a local Kafka + PostgreSQL stack.")
dev = typer.Typer(no_args_is_help=True, help="Run the local development stack (real Kafka + PostgreSQL).")
app.add_typer(dev, name="dev")

DevDir = Annotated[Path, typer.Option("--dir", help="where the stack keeps its data and state")]


@dev.command("up")
def dev_up(workdir: DevDir = Path(".devstack")) -> None:
    """Start Kafka and PostgreSQL in the background (they keep running until `dev down`)."""
    from harness import devstack

    info = devstack.dev_up(workdir.resolve())
    typer.echo(f"kafka      {info.bootstrap}\npostgresql {info.dsn}\n"
               f"for the other commands: source {workdir}/env   (or -c {workdir}/config.yaml); the ports stay the "
               "same on the next `dev up`")


@dev.command("down")
def dev_down(workdir: DevDir = Path(".devstack")) -> None:
    """Stop the stack started by `dev up`."""
    from harness import devstack

    typer.echo("stopped" if devstack.dev_down(workdir.resolve()) else "nothing running")


@dev.command("status")
def dev_status(workdir: DevDir = Path(".devstack")) -> None:
    """Show whether the stack is running."""
    from harness import devstack

    info = devstack.dev_status(workdir.resolve())
    if info is None:
        typer.echo("not running")
        raise typer.Exit(1)
    typer.echo(f"kafka      {info.bootstrap} (pid {info.kafka_pid})\n"
               f"postgresql {info.dsn} (pid {info.postgres_pid})")


@app.command()
def demo(
    events: Annotated[int, typer.Option(help="sample change events to stream")] = 5000,
    wire: Annotated[str, typer.Option("--format", help="avro or json (for the directly published systems)")
                    ] = "avro",
    source: Annotated[str, typer.Option(help="debezium: business databases captured by real Debezium; "
                                             "synthetic: every system's events published directly")] = "debezium",
    workdir: Annotated[Optional[Path], typer.Option("--dir", help="keep the stack's data here")] = None,
) -> None:
    """Start the stack on embedded defaults and stream business changes through the whole pipeline."""
    from harness.demo import run_demo

    if wire not in ("avro", "json"):
        raise typer.BadParameter(f"--format must be avro or json, got {wire!r}")
    if source not in ("debezium", "synthetic"):
        raise typer.BadParameter(f"--source must be debezium or synthetic, got {source!r}")
    code = run_demo(events=events, wire=wire, source=source, workdir=workdir)
    raise typer.Exit(code)


if __name__ == "__main__":
    app()
