"""Summary vouchers (汇总凭证) through the real journal, the closer and the poster against the sandbox over HTTP.

Changes are mapped against what PostgreSQL holds for their rows (as the pipeline prefetches it) and journaled
with ``write_batch``; summaries are closed by the ``SummaryCloser`` and posted by the ``Poster``.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from connector.events import ChangeEvent, KafkaCoordinates
from connector.journal import Closed, EventRecord, Journal, Outcome, SummaryState, list_summaries
from connector.journal.views import JournalViews, SourceRow
from connector.kingdee.poster import Poster, PosterOptions
from connector.ledger import RowRef, Voucher, canonical_pk, voucher_from_json
from connector.mapping import Mapper, load_rules
from connector.ops import JournalBacklog
from connector.reconcile import reconcile
from connector.sandbox import RunningSandbox
from connector.summaries import SummaryCloser, drilldown, find_summary
from tests.integration.helpers import CLI, client_for, rows, tamper_lines
from tests.unit.helpers import ABAB, closing, event, order_row, rules_with, sale, stream_op, summarizing_pos_rule


@dataclass
class World:
    """A journal with summarizing rules: map and journal changes one by one, close, post."""

    dsn: str
    rules_dir: Path
    schema: str = "kdcdc"
    journal: Journal = field(init=False)
    mapper: Mapper = field(init=False)
    offset: int = 0
    lsn: int = 100
    db: dict[int, dict[str, Any] | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.journal = Journal(self.dsn, schema=self.schema, group="summaries")
        self.journal.migrate()
        self.mapper = Mapper(load_rules(self.rules_dir))

    def restart(self) -> None:
        """Nothing is remembered but what PostgreSQL holds."""
        self.journal.close()
        self.journal = Journal(self.dsn, schema=self.schema, group="summaries")

    def write(self, oid: int, **changes: Any) -> None:
        before = self.db.get(oid)
        self.put(oid, {**(before or sale(id=oid, order_no=f"SO{oid}")), **changes})

    def put(self, oid: int, after: dict[str, Any]) -> None:
        before = self.db.get(oid)
        self.db[oid] = after
        self.apply(event("pos", "sales_order", "u" if before else "c", after=after, before=before, lsn=self.next_lsn()))

    def delete(self, oid: int) -> None:
        before = self.db.pop(oid)
        self.db[oid] = None
        self.apply(event("pos", "sales_order", "d", before=before, lsn=self.next_lsn()))

    def next_lsn(self) -> int:
        self.lsn += 1
        return self.lsn

    def apply(self, ev: ChangeEvent) -> None:
        assert ev.key is not None
        row = RowRef(ev.source.name, ev.source.table_id, canonical_pk(ev.key))
        result = self.mapper.map(ev, self.journal.prefetch_active([row]))
        assert not result.rejections, result.rejections
        coords = KafkaCoordinates(topic="pos", partition=0, offset=self.offset)
        outcome = Outcome.VOUCHERED if result.vouchers else Outcome.SKIPPED
        self.journal.write_batch([EventRecord(kafka=coords, outcome=outcome, event=ev, vouchers=result.vouchers)],
                                 {("pos", 0): (self.offset, self.offset + 1)})
        self.offset += 1

    def closer(self) -> SummaryCloser:
        return SummaryCloser(self.journal, rules=self.mapper.rules, ledger=self.mapper.ledger)

    def close_all(self) -> list[Closed]:
        """Close every open summary now, due or not (``on command`` ones too)."""
        closer = self.closer()
        return [done for s in list_summaries(self.journal, state=SummaryState.OPEN, limit=10_000)
                if (done := closer.close(s.id)) is not None]

    def post(self, sb: RunningSandbox) -> None:
        with client_for(sb) as client:
            Poster(self.journal, client, books=self.mapper.ledger.books,
                   options=PosterOptions(unknown_grace_s=0.5)).run(idle_sleep_s=0.05, exit_when_idle=True)


def kingdee_lines(sb: RunningSandbox) -> dict[str, Decimal]:
    """Net local amount per account over every voucher in the sandbox."""
    net: dict[str, Decimal] = {}
    with sb.server.state.lock:
        vouchers = list(sb.server.state.vouchers.values())
    for rec in vouchers:
        for e in rec["model"]["FEntity"]:
            acct = e["FACCOUNTID"]["FNumber"]
            net[acct] = net.get(acct, Decimal(0)) + Decimal(str(e["FDEBIT"])) - Decimal(str(e["FCREDIT"]))
    return {a: n for a, n in net.items() if n}


def source_lines(world: World) -> dict[str, Decimal]:
    """What the rows in the source database book now, each mapped alone (the accountant's expectation)."""
    mapper = Mapper(world.mapper.rules)
    net: dict[str, Decimal] = {}
    for oid, row in world.db.items():
        if row is None:
            continue
        for v in mapper.map(event("pos", "sales_order", "c", after=row)).vouchers:
            for e in v.entries:
                net[e.account] = net.get(e.account, Decimal(0)) + (e.amount if e.side.value == "debit" else -e.amount)
    return {a: n for a, n in net.items() if n}


@pytest.fixture
def make_world(pg_dsn: str, tmp_path: Path) -> Iterator[Callable[..., World]]:
    """Worlds on the test's database with the POS rule summarizing (``summarizing_pos_rule`` options)."""
    made: list[World] = []

    def make(**rule: Any) -> World:
        made.append(World(pg_dsn, rules_with(tmp_path / str(len(made)), **{"pos-sale": summarizing_pos_rule(**rule)})))
        return made[-1]
    yield make
    for w in made:
        w.journal.close()


@pytest.fixture
def world(make_world: Callable[..., World]) -> World:
    return make_world()


def test_one_summary_voucher_per_key_with_drilldown_and_feedback(world: World, sandbox: RunningSandbox) -> None:
    for oid in range(1, 7):  # two payment methods, one day
        world.write(oid, payment_method="CASH" if oid % 2 else "WECHAT", net_amount=f"{oid}00.00",
                    tax_amount=f"{oid * 13}.00", gross_amount=f"{oid * 113}.00")
    world.write(3, net_amount="1000.00", tax_amount="130.00", gross_amount="1130.00")  # changed while open
    world.delete(5)  # deleted while open
    statuses = dict(rows(world.dsn, "SELECT status, count(*) FROM kdcdc.vouchers GROUP BY 1"))
    assert statuses == {"SUMMARIZED": 9}, statuses  # 6 + reversal and repost of 3 + reversal of 5
    assert rows(world.dsn, "SELECT count(*) FROM kdcdc.summaries WHERE state = 'OPEN'") == [(2,)]
    world.post(sandbox)
    assert not sandbox.server.state.vouchers, "nothing is posted before its summary closes"

    assert len(world.close_all()) == 2
    world.post(sandbox)
    assert len(sandbox.server.state.vouchers) == 2
    assert kingdee_lines(sandbox) == source_lines(world)

    cash = find_summary(world.journal, str(rows(world.dsn, "SELECT id FROM kdcdc.summaries WHERE key->>'payment_method'"
                                                          " = 'CASH'")[0][0]))
    assert cash is not None and cash.state == SummaryState.CLOSED
    down = drilldown(world.journal, cash)
    assert down.voucher_status == "POSTED" and down.kingdee_number
    assert sorted(json.loads(r.pk)["id"] for r in down.rows) == [1, 3]  # 5 was deleted before the close
    assert {r.pk: r.changes for r in down.rows}[canonical_pk({"id": 3})] == 3
    assert sum(r.debit_total for r in down.rows) == Decimal("1243.00")  # 113 + 1130
    by_number = find_summary(world.journal, down.kingdee_number)
    assert by_number is not None and by_number.id == cash.id
    rec = next(r for r in sandbox.server.state.vouchers.values() if r["FBillNo"] == down.kingdee_number)
    assert rec["model"]["FEntity"][0]["FEXPLANATION"].startswith(f"POS 日汇总 {cash.key['channel']} 2026-11-12 CASH 共2笔")

    posted = rows(world.dsn, "SELECT payload->>'voucher_key', payload->'kingdee'->>'number', payload->>'reason' "
                             "FROM kdcdc.outbox WHERE status = 'POSTED'")
    numbers = {n for _, n, _ in posted}
    assert len(posted) == 5 and len(numbers) == 2, posted  # rows 1, 2, 3 (new), 4, 6 — each told once
    assert all(reason.startswith("SUMMARY ") for _, _, reason in posted)


def test_changes_after_close_post_adjustments_naming_the_summary(world: World, sandbox: RunningSandbox) -> None:
    for oid in (1, 2, 3):
        world.write(oid)
    world.close_all()
    world.post(sandbox)
    number = rows(world.dsn, "SELECT kingdee_number FROM kdcdc.vouchers WHERE kind = 'summary'")[0][0]
    world.write(2, net_amount="200.00", tax_amount="26.00", gross_amount="226.00")  # changed after close
    world.delete(3)  # deleted after close
    world.write(4)  # a late row for the closed key (late: adjust)
    late = rows(world.dsn, "SELECT kind, status, summary_id IS NULL, adjusts_summary IS NOT NULL FROM kdcdc.vouchers "
                           "WHERE kind <> 'summary' AND status <> 'SUMMARIZED' ORDER BY seq")
    assert late == [("reversal", "JOURNALED", True, True), ("original", "JOURNALED", True, True),
                    ("reversal", "JOURNALED", True, True), ("original", "JOURNALED", True, True)], late
    world.post(sandbox)
    assert kingdee_lines(sandbox) == source_lines(world)
    reversals = [r for r in sandbox.server.state.vouchers.values()
                 if r["model"]["FEntity"][0]["FEXPLANATION"].startswith("冲销")]
    assert len(reversals) == 2
    assert all(e["FEXPLANATION"].startswith(f"冲销 {number} ") for r in reversals for e in r["model"]["FEntity"])
    # the summary voucher itself was never edited
    assert rows(world.dsn, "SELECT count(*) FROM kdcdc.vouchers WHERE kind = 'summary'") == [(1,)]


def test_late_rows_go_to_the_next_summary_when_the_rule_says_so(make_world: Callable[..., World],
                                                                sandbox: RunningSandbox) -> None:
    world = make_world(late="next_summary")
    world.write(1)
    world.close_all()
    world.write(2)
    world.write(1, net_amount="50.00", tax_amount="6.50", gross_amount="56.50")
    assert rows(world.dsn, "SELECT seq, state, contributions FROM kdcdc.summaries ORDER BY seq") == [
        (1, "CLOSED", 1), (2, "OPEN", 2)]  # the reversal of row 1's first version is posted on its own
    world.close_all()
    world.post(sandbox)
    assert len(sandbox.server.state.vouchers) == 3
    assert kingdee_lines(sandbox) == source_lines(world)


def test_a_summary_in_a_closed_period_is_held_with_the_reason(world: World) -> None:
    world.write(1)
    closed = replace(world.mapper.ledger, books={n: replace(b, reverse_in="original_period",
                                                            closed_periods=b.closed_periods | {"2026-11"})
                                                 for n, b in world.mapper.ledger.books.items()})
    closer = SummaryCloser(world.journal, rules=world.mapper.rules, ledger=closed)
    done = closer.close_due(now=datetime.now(timezone.utc) + timedelta(days=3650))
    assert [d.state for d in done] == [SummaryState.NEEDS_ATTENTION]
    assert done[0].problem and "CLOSED_PERIOD" in done[0].problem and "2026-11" in done[0].problem
    assert rows(world.dsn, "SELECT count(*) FROM kdcdc.vouchers WHERE kind = 'summary'") == [(0,)]
    # reopened: a retry closes it
    retried = SummaryCloser(world.journal, rules=world.mapper.rules, ledger=world.mapper.ledger).close(
        done[0].summary.id, retry=True)
    assert retried is not None and retried.state == SummaryState.CLOSED


def test_rows_of_one_summary_move_when_their_key_changes(world: World, sandbox: RunningSandbox) -> None:
    world.write(1, payment_method="CASH")
    world.write(1, payment_method="WECHAT")  # same amounts, another key: out of one summary into the other
    world.close_all()
    world.post(sandbox)
    assert rows(world.dsn, "SELECT key->>'payment_method', source_rows, voucher_key IS NOT NULL FROM kdcdc.summaries "
                           "ORDER BY id") == [("CASH", 0, False), ("WECHAT", 1, True)]
    assert kingdee_lines(sandbox) == source_lines(world)


# --------------------------------------------------------------------------- random streams in summary mode
summary_op = st.one_of(stream_op, st.tuples(st.just("summarize"), st.none(), st.none()),
                       st.tuples(st.just("restart"), st.none(), st.none()))
summary_rules = st.sampled_from([{}, {"late": "next_summary"}, {"close": "every 15 minutes"}, {"close": "on command"}])


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@example(rule={}, ops=[("write", 1, ABAB[0][2]), ("summarize", None, None), *ABAB[1:], ("summarize", None, None)])
@given(rule=summary_rules, ops=st.lists(summary_op, min_size=1, max_size=30))
def test_random_streams_in_summary_mode_book_what_the_source_holds(
        pg_server_dsn: str, tmp_path_factory: pytest.TempPathFactory, rule: dict[str, str],
        ops: list[tuple[str, Any, Any]]) -> None:
    """Whatever the order of writes, deletes, re-snapshots, reverts, month-end closes, summary closes and restarts:
    what goes to Kingdee (summary vouchers and vouchers posted on their own) books exactly what the source rows
    hold now; every contribution is in exactly one summary, which adds up to exactly its contributions; nothing
    is booked into a period that was closed when it was booked."""
    schema = f"s{uuid.uuid4().hex[:10]}"
    world = World(pg_server_dsn, rules_with(tmp_path_factory.mktemp("rules"), **{"pos-sale": summarizing_pos_rule(**rule)}),
                  schema=schema)
    closed: set[str] = set()
    summary_periods: list[tuple[str, frozenset[str]]] = []
    written: dict[int, list[dict[str, Any]]] = {}
    try:
        for kind, oid, arg in ops:
            if kind == "summarize":
                for done in world.close_all():
                    assert done.problem is None, done.problem
                    if done.voucher is not None:
                        summary_periods.append((f"{done.voucher.date:%Y-%m}", frozenset(closed)))
            elif kind == "restart":
                world.restart()
            elif kind == "close":
                if arg not in closed and not (arg == "2026-12" and "2026-11" not in closed):
                    closed.add(arg)
                    world.mapper = closing(world.mapper, arg)
            elif kind == "write" or (kind == "revert" and len(written.get(oid, [])) >= 2):
                row = order_row(oid, arg) if kind == "write" else written[oid][-2]
                written.setdefault(oid, []).append(row)
                world.put(oid, row)
            elif kind == "delete" and world.db.get(oid) is not None:
                world.delete(oid)
            elif kind == "resnapshot" and world.db.get(oid) is not None:
                world.apply(event("pos", "sales_order", "r", after=world.db[oid], lsn=world.next_lsn(), mode=arg,
                                  snapshot="true"))
        world.close_all()
        s = f'"{schema}"'
        payloads = rows(pg_server_dsn, f"SELECT v.payload, v.status, v.summary_id, s.state FROM {s}.vouchers v "
                                       f"LEFT JOIN {s}.summaries s ON s.id = v.summary_id")
        vouchers = [(voucher_from_json(bytes(p)), status, sid, state) for p, status, sid, state in payloads]
        to_kingdee = [v for v, status, _, _ in vouchers if status != "SUMMARIZED"]
        assert all(state == "CLOSED" for _, status, _, state in vouchers if status == "SUMMARIZED")
        assert net_lines(to_kingdee) == net_lines(fresh_vouchers(world)), "Kingdee would not book what the rows hold"
        for v in to_kingdee:
            assert v.debit_total == v.credit_total
        for period, closed_then in summary_periods:
            assert period not in closed_then, f"a summary voucher was dated in closed period {period}"
        by_summary: dict[int, list[Voucher]] = {}
        for v, status, sid, _ in vouchers:
            if sid is not None:
                by_summary.setdefault(int(sid), []).append(v)
        for sid, key in rows(pg_server_dsn, f"SELECT id, voucher_key FROM {s}.summaries WHERE voucher_key IS NOT NULL"):
            summary_voucher = next(v for v, _, _, _ in vouchers if v.key == key)
            assert net_lines([summary_voucher]) == net_lines(by_summary[int(sid)])
    finally:
        world.journal.close()
        with psycopg.connect(pg_server_dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def fresh_vouchers(world: World) -> list[Voucher]:
    mapper = Mapper(world.mapper.rules)
    out: list[Voucher] = []
    for row in world.db.values():
        if row is not None:
            out.extend(mapper.map(event("pos", "sales_order", "c", after=row, mode="precise")).vouchers)
    return out


def net_lines(vouchers: Sequence[Voucher]) -> dict[tuple[Any, ...], Decimal]:
    """Signed local and transaction amounts per account, dimensions and currency (zeros dropped)."""
    net: dict[tuple[Any, ...], Decimal] = {}
    for v in vouchers:
        for e in v.entries:
            sign = 1 if e.side.value == "debit" else -1
            k = (e.account, tuple(sorted(e.dimensions.items())), e.currency)
            net[(*k, "local")] = net.get((*k, "local"), Decimal(0)) + sign * e.amount
            net[(*k, "for")] = net.get((*k, "for"), Decimal(0)) + sign * e.amount_for
    return {k: x for k, x in net.items() if x}


def test_cli_lists_drills_down_traces_and_closes_on_command(make_world: Callable[..., World], sandbox: RunningSandbox,
                                                           tmp_path: Path) -> None:
    world = make_world(close="on command")
    for oid in (1, 2, 3):
        world.write(oid, payment_method="CASH")
    world.write(2, net_amount="50.00", tax_amount="6.50", gross_amount="56.50")
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"journal": {"dsn": world.dsn}, "mapping": {"rules_dir": str(world.rules_dir)},
                                   "kafka": {"group_id": "summaries"}}))

    def cli(*args: str, code: int = 0) -> str:
        done = subprocess.run([CLI, *args, "-c", str(cfg)], capture_output=True, text=True, timeout=60)
        assert done.returncode == code, done.stdout + done.stderr
        return done.stdout

    listed = cli("summaries", "list")
    assert "OPEN" in listed and "on command" in listed and "payment_method=CASH" in listed
    sid = rows(world.dsn, "SELECT id FROM kdcdc.summaries")[0][0]
    assert f"summary {sid} (pos-sale" in cli("summaries", "close", str(sid))
    assert "not open" in cli("summaries", "close", str(sid))
    world.post(sandbox)
    number = rows(world.dsn, "SELECT kingdee_number FROM kdcdc.vouchers WHERE kind = 'summary'")[0][0]
    shown = json.loads(cli("summaries", "show", number, "--json"))
    assert shown["summary"]["state"] == "CLOSED" and shown["summary"]["kingdee_number"] == number
    assert sorted(json.loads(r["pk"])["id"] for r in shown["rows"]) == [1, 2, 3]
    assert sum(Decimal(r["debit_total"]) for r in shown["rows"]) == Decimal("282.50")  # 113 + 56.50 + 113
    assert all(r["kafka"].startswith("pos[0]@") for r in shown["rows"])
    traced = json.loads(cli("trace", 'pos:posdb.public.sales_order:{"id": 2}', "--json"))
    kinds = [(v["kind"], v["status"], v["kingdee_number"]) for v in traced["vouchers"]]
    assert kinds == [("original", "SUMMARIZED", number), ("reversal", "SUMMARIZED", number),
                     ("original", "SUMMARIZED", number)], kinds
    assert {v["summary"]["id"] for v in traced["vouchers"]} == {sid}
    assert f"summary {sid}:" in cli("trace", number)  # a Kingdee number leads down to the rows
    cli("trace", "记-000000-nothing", code=2)


def test_reconciliation_ties_summaries_to_their_rows_and_to_kingdee(world: World, sandbox: RunningSandbox) -> None:
    for oid in (1, 2, 3):
        world.write(oid, payment_method="CASH" if oid < 3 else "CARD")
    world.close_all()
    world.post(sandbox)
    book = next(iter(world.mapper.ledger.books))
    with client_for(sandbox) as client:
        report = reconcile(world.journal, client, book=book, period="2026-11")
        assert not report.is_flagged and not report.summary_mismatch, report.as_json()
        assert any(a.kingdee for a in report.accounts)
        # a line slipped into one contribution after its summary froze: the summary no longer adds up
        key = rows(world.dsn, "SELECT key FROM kdcdc.vouchers WHERE status = 'SUMMARIZED' LIMIT 1")[0][0]
        tamper_lines(world.dsn, key, lambda lines: lines.append(
            ["1001", "debit", "1.00", "", "CNY", "HLTX01_SYS", "1", "1.00", None, None, None, None, None, None]))
        report = reconcile(world.journal, client, book=book, period="2026-11")
    assert report.is_flagged and len(report.summary_mismatch) == 1, report.summary_mismatch
    assert "1001 debit CNY contributions" in report.summary_mismatch[0]


def test_metrics_show_open_held_and_overdue_summaries(make_world: Callable[..., World]) -> None:
    world = make_world(close="every 1 minute")
    world.write(1)
    world.write(2, channel="ONLINE")
    backlog = JournalBacklog(world.dsn)
    try:
        def gauges() -> dict[tuple[str, tuple[str, ...]], float]:
            return {(m.name, tuple(s.labels.values())): s.value for m in backlog.collect() for s in m.samples
                    if m.name.startswith("kingdee_cdc_summaries")}
        assert gauges()[("kingdee_cdc_summaries", ("OPEN",))] == 2
        assert gauges()[("kingdee_cdc_summaries_overdue", ())] == 0
        with psycopg.connect(world.dsn, autocommit=True) as conn:  # nobody closed them for an hour
            conn.execute("UPDATE kdcdc.summaries SET close_due = now() - interval '1 hour'")
        assert gauges()[("kingdee_cdc_summaries_overdue", ())] == 2
    finally:
        backlog.close()


def test_the_console_trace_shows_the_summary_voucher_carrying_a_row(world: World, sandbox: RunningSandbox) -> None:
    world.write(1)
    world.write(2)
    with psycopg.connect(world.dsn, autocommit=True) as conn:
        views = JournalViews(conn, group="summaries")
        row = SourceRow(system="pos", table="posdb.public.sales_order", pk=canonical_pk({"id": 1}))
        (before,) = views.row_trace(row).vouchers
        assert before.carried_by == ()  # its summary is still open
        world.close_all()
        world.post(sandbox)
        (after,) = views.row_trace(row).vouchers
    number = rows(world.dsn, "SELECT kingdee_number FROM kdcdc.vouchers WHERE kind = 'summary'")[0][0]
    assert [(c.status, c.kingdee_number) for c in after.carried_by] == [("POSTED", number)]
    assert after.carried_by[0].at is not None
