"""`kingdee-cdc mapping check|chart|preview|test`: the rules, before and without the service."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from connector.cli._app import ConfigOpt, fail as _fail, mapping_app
from connector.cli._events import records_in as _records_in

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
        schemas = next((d for d in (rules.parent / "schemas", Path("schemas")) if d.is_dir()), None)
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
