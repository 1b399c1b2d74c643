"""Vouchers Kingdee refused: `vouchers refused` lists them, `vouchers resend` sends them again after a fix in
Kingdee (connector.resend)."""

from __future__ import annotations

import getpass
from typing import Annotated, Optional

import typer

from connector.cli._app import ConfigOpt, app, fail as _fail

vouchers_app = typer.Typer(no_args_is_help=True, help="Vouchers Kingdee refused: list, send again after a fix.")
app.add_typer(vouchers_app, name="vouchers")

_PERIOD = typer.Option(help="only vouchers dated in this period (YYYY-MM)")


def _check_period(period: str | None) -> None:
    if period is not None and (len(period) != 7 or period[4] != "-" or not (period[:4] + period[5:]).isdigit()):
        _fail(f"--period {period!r}: expected YYYY-MM, e.g. 2026-11")


@vouchers_app.command("refused")
def vouchers_refused(config: ConfigOpt = None,
                     book: Annotated[Optional[str], typer.Option(help="only this book")] = None,
                     period: Annotated[Optional[str], _PERIOD] = None,
                     rule: Annotated[Optional[str], typer.Option(help="only this rule")] = None,
                     limit: int = 200) -> None:
    """Vouchers Kingdee refused (REJECTED_BY_KINGDEE) with Kingdee's messages, by book and date; those that
    `vouchers resend` would not send say why."""
    from connector.config import load_settings
    from connector.resend import list_refused
    from connector.service import build_journal

    _check_period(period)
    found = list_refused(build_journal(load_settings(config)), book=book, period=period, rule=rule, limit=limit)
    typer.echo(f"{'key':<32}  {'book':<5} {'date':<10} {'rule':<16} {'debit total':>14}  source row")
    for r in found:
        typer.echo(f"{r.key:<32}  {r.book:<5} {r.voucher_date.isoformat():<10} {r.rule_id[:16]:<16} "
                   f"{r.debit_total:>14,}  {r.source_system}/{r.source_table}/{r.source_pk}")
        typer.echo(f"{'':<34}Kingdee: {(r.kingdee_messages or '—')[:200]}")
        if r.blocked:
            typer.echo(f"{'':<34}not sent again: {r.blocked}")
    typer.echo(f"{len(found)} voucher{'' if len(found) == 1 else 's'} refused by Kingdee"
               + (f" (the first {limit}: --limit shows more)" if len(found) == limit else ""))


@vouchers_app.command("resend")
def vouchers_resend(keys: Annotated[Optional[list[str]], typer.Argument(help="voucher keys")] = None,
                    config: ConfigOpt = None,
                    all_refused: Annotated[bool, typer.Option("--all", help="every refused voucher (with --book, "
                                                             "--period, --rule: those)")] = False,
                    book: Annotated[Optional[str], typer.Option(help="with --all: only this book")] = None,
                    period: Annotated[Optional[str], _PERIOD] = None,
                    rule: Annotated[Optional[str], typer.Option(help="with --all: only this rule")] = None,
                    dry_run: Annotated[bool, typer.Option("--dry-run", help="say what would be sent")] = False) -> None:
    """Send vouchers Kingdee refused again, once the cause is fixed in Kingdee (a period reopened, an account or
    dimension set up): they go back to JOURNALED for the poster, audited VOUCHER_RESENT. Never one whose source
    change was reversed meanwhile. Exit 1 when a named voucher is not sent."""
    from connector.config import load_settings
    from connector.resend import list_refused, resend
    from connector.service import build_journal

    _check_period(period)
    if bool(keys) == all_refused:
        _fail("name the voucher keys, or give --all (with --book / --period / --rule to narrow it)")
    journal = build_journal(load_settings(config))
    if all_refused:
        keys = [r.key for r in list_refused(journal, book=book, period=period, rule=rule, limit=100_000)
                if r.blocked is None]
    try:
        user = getpass.getuser()
    except Exception:  # no user name in this environment (a container without a passwd entry)
        user = "unknown"
    result = resend(journal, keys or [], actor=f"cli:{user}", dry_run=dry_run)
    for key in result.resent:
        typer.echo(f"{'would send again' if dry_run else 'sent again'} {key}")
    for key, why in result.refused.items():
        typer.echo(f"not sent {key}: {why}")
    typer.echo(f"{len(result.resent)} voucher(s) {'would go' if dry_run else 'went'} back to the poster"
               + ("" if dry_run else " (JOURNALED; a running poster picks them up)"))
    if result.refused and not all_refused:
        raise typer.Exit(1)
