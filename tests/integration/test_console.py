"""The operator console in a real browser (Debian's Chromium, driven by Playwright) against a journal filled by the real
service: `kingdee-cdc run --post --feedback` with the console enabled consumes sample change events from Kafka,
posts to the Kingdee sandbox and relays feedback; then an operator finds a receipt by its number and follows it to the
voucher number the sandbox gave it, filters rejections by reason, and an admin requeues a dead letter and sees the
service journal it again. A viewer cannot requeue, a POST without the CSRF token is refused, and nobody reads a page
without signing in.

Screenshots of every page go to ``$KDCDC_CONSOLE_SCREENSHOTS`` (``make console-screenshots`` → docs/console/), else to
the test's temporary directory.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import yaml
from psycopg import sql

from connector.journal import Journal
from connector.reconcile import reconcile, record
from connector.sandbox import RunningSandbox, start_sandbox
from harness.devstack import free_port
from tests.integration.helpers import CLI, RULES, client_for, keys_in_sandbox, produce, rows, wait_for

os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")  # never fetch a browser: Debian's Chromium is used

from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
#: flags that work in this sandboxed machine (without the background-networking ones, connections get refused)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
APP_SECRET = "kdcdc-console-test-app-secret-41c2"
ADMIN = ("admin", "admin-password-9d1f")
VIEWER = ("viewer", "viewer-password-2b7e")
VIEWER_TOKEN = "viewer-token-4f0c2a9e81d3b7c6"
BOOK, PERIOD = "001", "2026-11"


@dataclass
class Service:
    url: str
    dsn: str
    group: str
    topic: str
    produced: int
    sandbox: RunningSandbox
    config: Path
    shots: Path


@pytest.fixture(scope="module")
def service(kafka_bootstrap: str, pg_server_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The whole service with its console, run to a settled journal, plus one recorded reconciliation."""
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    tmp = tmp_path_factory.mktemp("console")
    db = f"console_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_server_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
    info = psycopg.conninfo.conninfo_to_dict(pg_server_dsn)
    info["dbname"] = db
    dsn = psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in info.items() if v is not None})
    topic = f"console-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])[topic].result(30)
    produced = produce(kafka_bootstrap, topic, 500, seed=19, poison_every=90)
    sb = start_sandbox(seed=11)
    app_id = next(iter(sb.server.state.config.apps))
    sb.server.state.config.apps[app_id]["secret"] = APP_SECRET
    port, group = free_port(), f"console-{uuid.uuid4().hex[:6]}"
    cfg = tmp / "config.yaml"
    cfg.write_text(yaml.safe_dump({
        "kafka": {"bootstrap_servers": kafka_bootstrap, "group_id": group, "topics": [topic],
                  "dead_letter_topic": f"{topic}.dlq", "client": {"log_level": "3"}},
        "journal": {"dsn": dsn}, "mapping": {"rules_dir": str(RULES)},
        "kingdee": {"server_url": sb.url, "acct_id": sb.server.state.config.data_centre, "username": "integration",
                    "app_id": app_id, "app_secret": APP_SECRET},
        "metrics": {"port": free_port()},
        "console": {"enabled": True, "port": port, "language": "en", "users": [
            {"name": ADMIN[0], "password": ADMIN[1], "role": "admin"},
            {"name": VIEWER[0], "password": VIEWER[1], "token": VIEWER_TOKEN}]}}))
    log = tmp / "service.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([CLI, "run", "-c", str(cfg), "--post", "--feedback"], stdout=out,
                                stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        def settled() -> bool:
            assert proc.poll() is None, log.read_text()[-3000:]
            if httpx.get(f"{url}/healthz", timeout=2).status_code != 200:
                return False
            (journaled,), = rows(dsn, "SELECT count(*) FROM kdcdc.event_log")
            (waiting,), = rows(dsn, "SELECT count(*) FROM kdcdc.vouchers WHERE status IN ('JOURNALED', 'POSTING')")
            (unsent,), = rows(dsn, "SELECT count(*) FROM kdcdc.outbox WHERE sent_at IS NULL")
            return bool(journaled == produced.count and waiting == 0 and unsent == 0)
        wait_for(settled, 120, "the service to journal, post and relay every record (console up)",
                 ignore=(httpx.HTTPError, psycopg.Error), interval_s=0.2, observe=lambda: log.read_text()[-2000:])
        # Kingdee loses one voucher of the book's period: the reconciliation has a difference to highlight.
        with sb.server.state.lock:
            victim = next(vid for vid, rec in sorted(sb.server.state.vouchers.items(), reverse=True)
                          if rec["model"].get("FAccountBookID", {}).get("FNumber") == BOOK
                          and not rec["model"]["FEntity"][0]["FEXPLANATION"].startswith("POS"))
            sb.server.state.vouchers.pop(victim)
        journal = Journal(dsn, group=group)
        with client_for(sb) as client:
            record(journal, reconcile(journal, client, book=BOOK, period=PERIOD))
        journal.close()
        shots = Path(os.environ.get("KDCDC_CONSOLE_SCREENSHOTS") or tmp / "screenshots")
        shots.mkdir(parents=True, exist_ok=True)
        yield Service(url=url, dsn=dsn, group=group, topic=topic, produced=produced.count, sandbox=sb, config=cfg,
                      shots=shots)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        sb.stop()
        for f in admin.delete_topics([topic, f"{topic}.dlq"]).values():
            try:
                f.result(30)
            except Exception:
                pass
        with psycopg.connect(pg_server_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"the console tests drive Debian's Chromium at {CHROMIUM}: run `make browser` (apt-get install "
                    "chromium) first")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _context(browser: Browser, service: Service) -> BrowserContext:
    ctx = browser.new_context(base_url=service.url, viewport={"width": 1440, "height": 900}, locale="en-US")
    ctx.set_default_timeout(15_000)
    return ctx


def _sign_in(browser: Browser, service: Service, who: tuple[str, str]) -> Page:
    page = _context(browser, service).new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(f"{m.text} at {m.location}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto("/status")
    expect(page).to_have_url(re.compile(r"/login\?next=%2Fstatus$"))
    page.get_by_label("User").fill(who[0])
    page.get_by_label("Password or token").fill(who[1])
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/status$"))
    page.errors = errors  # type: ignore[attr-defined]  # checked by _no_errors: CSP violations, script errors
    return page


def _no_errors(page: Page) -> None:
    errors: list[str] = page.errors  # type: ignore[attr-defined]
    assert not errors, errors


def _shot(page: Page, service: Service, name: str) -> None:
    page.screenshot(path=str(service.shots / f"{name}.png"), full_page=True)


def test_nothing_is_shown_without_signing_in(service: Service, browser: Browser) -> None:
    page = _context(browser, service).new_page()
    page.goto("/trace?q=SO1")
    expect(page).to_have_url(re.compile(r"/login\?next=%2Ftrace%3Fq%3DSO1$"))
    _shot(page, service, "login")
    r = httpx.get(f"{service.url}/status")
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic")
    assert httpx.get(f"{service.url}/status", auth=(VIEWER[0], "wrong-password")).status_code == 401
    assert httpx.get(f"{service.url}/status", auth=VIEWER).status_code == 200
    assert httpx.get(f"{service.url}/status", headers={"Authorization": f"Bearer {VIEWER_TOKEN}"}).status_code == 200
    page.get_by_label("User").fill(VIEWER[0])
    page.get_by_label("Password or token").fill("not-the-password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text("Wrong user, password or token.")


def test_a_receipt_traced_to_the_voucher_number_kingdee_gave_it(service: Service, browser: Browser) -> None:
    (key, explanation), = rows(service.dsn, "SELECT key, explanation FROM kdcdc.vouchers WHERE source_system = 'pos' "
                                            "AND kind = 'original' AND status = 'POSTED' ORDER BY seq LIMIT 1")
    receipt = explanation.split()[1]  # "POS SO20261105000042 销售收入"
    assert re.fullmatch(r"SO\d{14}", receipt), explanation
    # the number as the sandbox (Kingdee) has it, not as the journal recorded it
    (sandbox_id,) = keys_in_sandbox(service.sandbox)[key]
    with service.sandbox.server.state.lock:
        number = service.sandbox.server.state.vouchers[sandbox_id]["FBillNo"]
    page = _sign_in(browser, service, VIEWER)
    page.get_by_role("link", name="Trace").click()
    page.get_by_role("searchbox").fill(receipt)
    page.get_by_role("searchbox").press("Enter")
    voucher = page.locator(f"#v-{key}")
    expect(voucher.locator("[data-kingdee-number]")).to_have_text(number)
    expect(voucher.locator(".badge.posted")).to_have_text("POSTED")
    expect(voucher).to_contain_text("sent")  # the POSTED feedback went to the upstream system
    article = page.locator("article.trace").filter(has=voucher)
    expect(article.locator("ol.chain")).to_contain_text(number)
    (topic, part, offset), = rows(service.dsn, "SELECT topic, kafka_partition, kafka_offset FROM kdcdc.vouchers "
                                               "WHERE key = %s", key)
    coordinates = f"{topic}[{part}]@{offset}"
    expect(article.get_by_role("link", name=coordinates)).to_be_visible()
    _shot(page, service, "trace")
    # from the change event's Kafka coordinates back to the same voucher
    article.get_by_role("link", name=coordinates).click()
    expect(page).to_have_url(re.compile(r"by=kafka"))
    expect(page.locator(f"#v-{key} [data-kingdee-number]")).to_have_text(number)
    # and from the Kingdee number, in Chinese
    page.goto(f"/trace?by=kingdee_number&q={number}")
    page.get_by_role("link", name="中文").click()
    expect(page.get_by_role("heading", name="追溯", exact=True)).to_be_visible()
    expect(page.locator(f"#v-{key} [data-kingdee-number]")).to_have_text(number)
    _shot(page, service, "trace-zh")
    _no_errors(page)


def test_rejections_filtered_by_reason(service: Service, browser: Browser) -> None:
    found = rows(service.dsn, "SELECT code, count(*) FROM kdcdc.rejections GROUP BY 1 ORDER BY 2 DESC, 1")
    assert found, "the sample stream has rejected changes"
    code, expected = found[0]
    page = _sign_in(browser, service, VIEWER)
    page.goto("/triage?range=24h")
    expect(page.locator("#chart-time")).to_be_visible()
    page.wait_for_function("() => window.Chart && Chart.getChart(document.getElementById('chart-time')) !== undefined")
    _shot(page, service, "triage")
    page.get_by_test_id("reason").select_option(code)
    expect(page).to_have_url(re.compile(f"reason={code}"))
    table_rows = page.locator("table.events tbody tr")
    expect(table_rows).to_have_count(min(expected, 200))
    assert set(table_rows.evaluate_all("rs => rs.map(r => r.dataset.reason)")) == {code}
    expect(page.locator("form.filters .total")).to_have_text(f"{expected} in the window")
    # drill-down from the chart: a click on the bar loads the events behind it
    page.get_by_test_id("reason").select_option("")
    expect(page).to_have_url(re.compile(r"reason=(&|$)"))
    page.wait_for_function("() => window.Chart && Chart.getChart(document.getElementById('chart-source')) !== undefined")
    box = page.locator("#chart-source").bounding_box()
    assert box is not None
    bar = page.evaluate("""() => { const c = Chart.getChart(document.getElementById('chart-source'));
        const m = c.getDatasetMeta(0); const el = m.data.find(e => e.width > 4); return el ? [el.x - 2, el.y] : null; }""")
    assert bar is not None
    page.mouse.click(box["x"] + bar[0], box["y"] + bar[1])
    expect(page.locator("#events")).to_contain_text("Filtered:")
    _no_errors(page)


def test_an_admin_requeues_a_dead_letter_and_the_service_journals_it_again(service: Service, browser: Browser) -> None:
    page = _sign_in(browser, service, ADMIN)
    page.goto("/triage?range=24h&kind=undecodable&status=NEW")
    first = page.locator("table.events tbody tr").first
    letter = int(first.get_attribute("data-dead-letter") or 0)
    assert letter
    (topic, part, offset), = rows(service.dsn, "SELECT topic, kafka_partition, kafka_offset FROM kdcdc.dead_letters "
                                               "WHERE id = %s", letter)
    first.get_by_role("checkbox").check()
    page.get_by_test_id("requeue").click()
    expect(page.get_by_test_id("requeued")).to_contain_text("Requeued 1 dead letter(s); audit entries #")
    expect(page.locator(f'tr[data-dead-letter="{letter}"]')).to_have_count(0)  # the NEW filter no longer lists it
    assert rows(service.dsn, "SELECT status FROM kdcdc.dead_letters WHERE id = %s", letter) == [("REQUEUED",)]
    audit = rows(service.dsn, "SELECT actor, detail->>'from' FROM kdcdc.audit WHERE action = 'DLQ_REQUEUED' "
                              "AND (detail->>'dead_letter')::int = %s", letter)
    assert audit == [("console:admin", f"{topic}[{part}]@{offset}")]
    # the running service consumes the requeued record and journals it again (still undecodable: a new dead letter
    # whose headers say where it came from)
    where = f"{topic}[{part}]@{offset}"

    def journaled_again() -> Any:
        found = rows(service.dsn, "SELECT d.id FROM kdcdc.dead_letters d, jsonb_array_elements(d.headers) h "
                                  "WHERE h->>0 = 'kdcdc.requeued-from' AND convert_from(decode(h->>1, 'base64'), "
                                  "'UTF8') = %s", where)
        return found[0][0] if found else None
    again = wait_for(journaled_again, 60, f"the service to journal the requeued record {where} again")
    page.goto("/triage?range=24h&kind=undecodable")
    expect(page.locator(f'tr[data-dead-letter="{letter}"] [data-testid=dl-status]')).to_have_text("REQUEUED")
    expect(page.locator(f'tr[data-dead-letter="{again}"] [data-testid=dl-status]')).to_have_text("NEW")
    _shot(page, service, "triage-requeued")
    _no_errors(page)


def test_a_viewer_may_not_requeue_and_a_post_needs_its_csrf_token(service: Service, browser: Browser) -> None:
    (letter,), = rows(service.dsn, "SELECT id FROM kdcdc.dead_letters WHERE status = 'NEW' ORDER BY id LIMIT 1")
    viewer = _sign_in(browser, service, VIEWER)
    viewer.goto("/triage?range=24h")
    expect(viewer.get_by_test_id("requeue")).to_have_count(0)  # no action offered
    token = viewer.locator("input[name=csrf_token]").first.input_value()
    refused = viewer.request.post("/triage/requeue", form={"csrf_token": token, "id": str(letter)})
    assert refused.status == 403 and "needs the admin role" in refused.text()
    admin = _sign_in(browser, service, ADMIN)
    admin.goto("/triage?range=24h")
    no_token = admin.request.post("/triage/requeue", form={"id": str(letter)})
    assert no_token.status == 403 and "CSRF" in no_token.text()
    wrong = admin.request.post("/triage/requeue", form={"csrf_token": token, "id": str(letter)})  # the viewer's
    assert wrong.status == 403 and "CSRF" in wrong.text()
    basic = httpx.post(f"{service.url}/triage/requeue", auth=ADMIN, data={"id": str(letter)})
    assert basic.status_code == 403  # HTTP Basic is ambient too: it needs the token as well
    assert rows(service.dsn, "SELECT status FROM kdcdc.dead_letters WHERE id = %s", letter) == [("NEW",)]


def test_status_and_reconciliation_pages(service: Service, browser: Browser) -> None:
    page = _sign_in(browser, service, VIEWER)
    table = page.locator("table.status-table")
    systems = {s for (s,) in rows(service.dsn, "SELECT DISTINCT source_system FROM kdcdc.event_log "
                                               "WHERE source_system IS NOT NULL")}
    for system in systems:
        expect(table.locator("tr.system-row th", has_text=system)).to_have_count(1)
    expect(table).to_contain_text("records without a change event")
    (rejected,), = rows(service.dsn, "SELECT count(*) FROM kdcdc.event_log WHERE outcome = 'REJECTED' "
                                     "AND source_system = 'pos'")
    pos = table.locator("tr.system-row", has=page.locator("th", has_text="pos"))
    if rejected:  # one rejection today crosses the default threshold: red
        expect(pos.locator("td.bad").first).to_have_text(str(rejected))
    expect(page.locator(".card", has_text="Kafka lag").locator("b")).to_have_text("0")
    expect(table).to_contain_text("华东商贸有限公司")  # the book's name from the ledger file
    _shot(page, service, "status")
    page.get_by_role("link", name="中文").click()
    expect(page.get_by_role("heading", name="同步状态")).to_be_visible()
    _shot(page, service, "status-zh")
    page.get_by_role("link", name="English").click()
    page.get_by_role("link", name="Reconciliation").click()
    run = page.locator("table.grid tbody tr", has_text=PERIOD)
    expect(run.locator("td.bad").first).to_be_visible()  # flagged: Kingdee lost a voucher
    run.get_by_role("link", name="details").click()
    expect(page.get_by_role("heading", name="Missing in Kingdee")).to_be_visible()
    expect(page.locator("table.recon td.bad").first).to_contain_text("¥")
    _shot(page, service, "reconciliation")
    _no_errors(page)


def test_kingdee_cdc_console_serves_alone(service: Service) -> None:
    proc = subprocess.Popen([CLI, "console", "-c", str(service.config), "--port", "0"], stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "KDCDC_CONSOLE__ENABLED": "false"})
    try:
        assert proc.stderr is not None
        stderr = proc.stderr

        def announced() -> str | None:  # log lines (warnings about plain-text connections) may come first
            line = stderr.readline()
            assert line or proc.poll() is None, "kingdee-cdc console exited"
            return line if "console on" in line else None
        line = wait_for(announced, 30, "the console to say its address")
        url = re.search(r"on (http://\S+)", line)
        assert url, line
        r = httpx.get(f"{url.group(1)}/status", auth=ADMIN, timeout=10)
        assert r.status_code == 200 and "Sync status" in r.text
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        if proc.stderr is not None:
            proc.stderr.close()
    assert code == 0  # SIGTERM: a normal end


def test_the_console_indexes_apply_before_or_after_the_summaries_migration(pg_dsn: str,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from connector.journal import _migrate

    everything = _migrate.available()
    assert [v for v, _, _ in everything if v in (7, 8)] == [7, 8]
    # a journal that took 0008 before 0007 (and before the migrations after 0008, which may build on 0007)
    monkeypatch.setattr(_migrate, "available", lambda: [m for m in everything if m[0] <= 8 and m[0] != 7])
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        assert _migrate.migrate(conn, "kdcdc")[-1] == 8
        monkeypatch.setattr(_migrate, "available", lambda: everything)
        later = _migrate.migrate(conn, "kdcdc")
        assert later[0] == 7 and 8 not in later  # 0007 landing later still applies, and everything after it
        names = {n for (n,) in conn.execute("SELECT indexname FROM pg_indexes WHERE schemaname = 'kdcdc' "
                                            "AND indexname LIKE 'console_%'").fetchall()}
    assert len(names) == 11, names
