"""The operator console's pure parts: money and time formatting, labels in two languages, trace searches, the triage
statements, sign-in and CSRF rules, the status board's thresholds, the console settings, the vendored libraries."""

from __future__ import annotations

import base64
import re
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from psycopg import sql

from connector.config import ConsoleThresholds, ConsoleUser, load_settings
from connector.console._auth import LoginThrottle, Principal, Role, Users, csrf_ok, origin_ok, safe_next
from connector.console._board import board, crossed
from connector.console._format import format_age, format_count, format_decimal, format_money, minor_units
from connector.console._i18n import LABELS, translate
from connector.errors import ConfigError
from connector.journal import DeadLetterStatus, Outcome
from connector.journal.views import (
    BookActivity,
    KafkaPosition,
    PartitionPosition,
    ProblemKind,
    SourceActivity,
    SyncStatus,
    TraceBy,
    TriageFilter,
    ViewError,
    parse_trace_query,
    problem_events_query,
    source_key_candidates,
    triage_counts_query,
)
from connector.logs import secret_values
from harness.console_vendor import VENDOR_DIR, VENDORED, sha256

TEMPLATES = Path(__file__).resolve().parents[2] / "connector" / "console" / "templates"
NOW = datetime(2026, 12, 2, 6, 0, tzinfo=timezone.utc)


# ----------------------------------------------------------------------------------------------- money and time
@pytest.mark.parametrize(("amount", "currency", "shown"), [
    ("1234.5", "CNY", "¥1,234.50"),
    ("-1234.5", "CNY", "-¥1,234.50"),
    ("0", "USD", "US$0.00"),
    ("1234567.891", "USD", "US$1,234,567.891"),  # never rounds: the journal's 4-place foreign amount shows whole
    ("1500", "JPY", "JP¥1,500"),
    ("1500.5", "JPY", "JP¥1,500.5"),
    ("12.3", "KWD", "12.300 KWD"),
    ("99.90", "CHF", "99.90 CHF"),
    ("7", None, "7.00"),
    ("1E+3", "EUR", "€1,000.00"),
])
def test_money_is_formatted_per_currency_from_decimal(amount: str, currency: str | None, shown: str) -> None:
    assert format_money(Decimal(amount), currency) == shown


def test_money_refuses_floats_and_non_finite_values() -> None:
    with pytest.raises(TypeError, match="Decimal only, got float"):
        format_money(12.5, "CNY")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a finite amount"):
        format_decimal(Decimal("NaN"))
    assert minor_units("jpy") == 0 and minor_units("CNY") == 2 and minor_units("BHD") == 3
    assert format_count(None) == "—" and format_count(1234) == "1,234" and format_count(99, cap=100) == "99"
    assert format_count(100, cap=100) == "100+"  # a bounded count that reached its bound


@pytest.mark.parametrize(("seconds", "en", "zh"), [
    (None, "—", "—"), (0, "0 s", "0 秒"), (95, "1 min 35 s", "1 分钟 35 秒"), (3600 * 26 + 61, "1 d 2 h", "1 天 2 小时"),
])
def test_ages_in_both_languages(seconds: float | None, en: str, zh: str) -> None:
    assert format_age(seconds, "en") == en and format_age(seconds, "zh") == zh


# ----------------------------------------------------------------------------------------------- labels
def test_every_label_has_both_languages_with_the_same_placeholders() -> None:
    for key, (en, zh) in LABELS.items():
        assert en.strip() and zh.strip(), key
        assert set(re.findall(r"{(\w+)}", en)) == set(re.findall(r"{(\w+)}", zh)), key
    assert translate("trace.found", "zh", n=2) == "找到 2 个源数据行"
    assert translate("trace.found", "en", n=2) == "2 source row(s) found"
    with pytest.raises(KeyError):
        translate("no.such.label", "en")


def test_every_label_a_template_names_exists() -> None:
    used: set[str] = set()
    prefixes: set[str] = set()
    for template in TEMPLATES.glob("*.html"):
        text = template.read_text(encoding="utf-8")
        used |= set(re.findall(r"""\bt\(\s*["']([a-z_.]+)["']\s*[,)]""", text))
        prefixes |= set(re.findall(r"""\bt\(\s*["']([a-z_.]+\.)["']\s*~""", text))
    assert used and prefixes
    assert used <= set(LABELS), sorted(used - set(LABELS))
    # labels built from a prefix and a value: every value the pages can put there
    values = {"trace.by.": [k.value for k in TraceBy], "triage.kind.": [k.value for k in ProblemKind],
              "triage.range.": ["24h", "7d", "30d"], "role.": [r.value for r in Role]}
    assert prefixes <= set(values), prefixes
    for prefix, names in values.items():
        for name in names:
            assert prefix + name in LABELS, prefix + name


# ----------------------------------------------------------------------------------------------- trace searches
def test_a_search_is_read_as_every_lookup_it_fits() -> None:
    q = parse_trace_query("  SO20261105000042 ")
    assert q.text == "SO20261105000042" and q.by is TraceBy.AUTO
    assert q.document == "SO20261105000042" and q.kingdee_number == "SO20261105000042"
    assert q.source_keys == ('{"id":"SO20261105000042"}',) and q.voucher_key is None and q.kafka is None
    key = parse_trace_query("3ED809891198FAC6F685ED2D299B4A82")
    assert key.voucher_key == "3ed809891198fac6f685ed2d299b4a82"
    assert parse_trace_query("[kdcdc:3ed80989]").voucher_key == "3ed80989"
    digits = parse_trace_query("20261105")  # a number: an id, a hex key prefix, a document number all at once
    assert digits.source_keys == ('{"id":20261105}', '{"id":"20261105"}') and digits.voucher_key == "20261105"


@pytest.mark.parametrize("text", ["pos.public.sales_order[0]@42", "pos.public.sales_order:0:42",
                                  "pos.public.sales_order/0/42"])
def test_kafka_coordinates_in_their_usual_spellings(text: str) -> None:
    q = parse_trace_query(text)
    assert q.kafka == KafkaPosition(topic="pos.public.sales_order", partition=0, offset=42)
    assert not q.source_keys and q.document is None  # coordinates are unambiguous: nothing else is looked up


@pytest.mark.parametrize(("text", "canonical"), [
    ("42", ('{"id":42}', '{"id":"42"}')),
    ("id=42", ('{"id":42}',)),
    ("order_no = SO-1, line=3", ('{"line":3,"order_no":"SO-1"}',)),
    ('{"sys": "pos", "id": 7}', ('{"id":7,"sys":"pos"}',)),
    ("订单号=甲1", ('{"订单号":"甲1"}',)),
])
def test_source_keys_become_the_journals_canonical_text(text: str, canonical: tuple[str, ...]) -> None:
    assert source_key_candidates(text) == canonical


@pytest.mark.parametrize(("text", "by", "message"), [
    ("", "auto", "type what to trace"),
    ("x" * 201, "auto", "at most 200"),
    ("a\tb", "auto", "control characters"),
    ("SO1", "kafka", "expected topic\\[partition\\]@offset"),
    ("xyz", "voucher_key", "8 to 32 hexadecimal digits"),
    ('{"id": ', "source_key", "not valid JSON"),
    ("[1, 2]", "source_key", None),
    ("1col=2", "source_key", "column=value"),
    ("a=1,b", "source_key", "column=value"),
    ("SO1", "everything", "unknown search kind 'everything'"),
])
def test_a_search_that_fits_nothing_says_what_was_expected(text: str, by: str, message: str | None) -> None:
    if message is None:  # not JSON, no "=": the value of an id column
        assert parse_trace_query(text, by).source_keys == ('{"id":"[1, 2]"}',)
        return
    with pytest.raises(ViewError, match=message):
        parse_trace_query(text, by)


# ----------------------------------------------------------------------------------------------- triage statements
def _text(query: sql.Composed) -> str:
    return query.as_string(None)


def test_triage_counts_are_an_index_only_scan_of_the_window() -> None:
    f = TriageFilter(since=NOW - timedelta(days=7), bucket="day", tz="Asia/Shanghai", source="pos", reason="UNMATCHED")
    query, args = triage_counts_query("kdcdc", "g1", f, ProblemKind.REJECTED)
    text = _text(query)
    assert text.startswith("SELECT date_bin(%s::interval, created_at, %s::timestamptz) AS bucket")
    assert 'FROM "kdcdc"."rejections" WHERE "consumer_group" = %s AND "created_at" >= %s' in text
    assert '"source_system" = %s AND "code" = %s GROUP BY 1, 2, 3' in text
    origin = datetime(2026, 11, 25, tzinfo=ZoneInfo("Asia/Shanghai"))  # buckets start at the zone's midnight
    assert args == ["1 day", origin, "g1", f.since, "pos", "UNMATCHED"] and f.origin() == origin
    assert text.count("%s") == len(args)
    query, args = triage_counts_query("kdcdc", "g1", TriageFilter(since=f.since, status=None), ProblemKind.UNDECODABLE)
    text = _text(query)
    assert '"dead_letters" WHERE "consumer_group" = %s AND "stage" <> \'TASK_PUT\' AND "created_at" >= %s' in text
    assert text.count("%s") == len(args) == 4


def test_the_problem_list_unions_both_kinds_newest_first() -> None:
    f = TriageFilter(since=NOW - timedelta(hours=24), until=NOW, reason="json")
    query, args = problem_events_query("s1", "g", f, limit=50)
    text = _text(query)
    assert text.count("(SELECT") == 2 and " UNION ALL " in text and text.endswith("ORDER BY at DESC, kafka_offset DESC LIMIT %s")
    assert text.count("%s") == len(args) and args[-1] == 50
    with_status = TriageFilter(since=f.since, kind=ProblemKind.REJECTED, status=None)
    only, _ = problem_events_query("s1", "g", with_status, limit=5)
    assert "UNION" not in _text(only) and '"s1".rejections r LEFT JOIN "s1".dead_letters d' in _text(only)
    new_only = TriageFilter(since=f.since, kind=ProblemKind.REJECTED, status=DeadLetterStatus.NEW, reason="X")
    counted, args = triage_counts_query("s1", "g", new_only, ProblemKind.REJECTED)
    assert "dead_letters" not in _text(counted) and "NEW" not in args  # counts: every problem of the window
    listed, args = problem_events_query("s1", "g", new_only, limit=5)
    assert ('FROM "s1".dead_letters d JOIN "s1".rejections r' in _text(listed)
            and "d.stage = 'TASK_PUT' AND d.status = %s" in _text(listed) and "r.code = %s" in _text(listed))
    assert args == ["g", "NEW", new_only.since, "X", 5, 5] and _text(listed).count("%s") == len(args)
    with pytest.raises(ViewError, match="limit must be between 1 and 10000"):
        problem_events_query("s1", "g", f, limit=0)


def test_a_triage_window_must_make_sense() -> None:
    with pytest.raises(ViewError, match="must carry a time zone"):
        TriageFilter(since=datetime(2026, 12, 1))
    with pytest.raises(ViewError, match="ends .* before it starts"):
        TriageFilter(since=NOW, until=NOW - timedelta(hours=1))
    with pytest.raises(ViewError, match="bucket must be hour or day"):
        TriageFilter(since=NOW, bucket="week")  # type: ignore[arg-type]
    with pytest.raises(ViewError, match="unknown time zone 'Mars/Olympus'"):
        TriageFilter(since=NOW, tz="Mars/Olympus")


# ----------------------------------------------------------------------------------------------- sign-in
def _users() -> Users:
    return Users([ConsoleUser(name="ada", password="correct-horse", role="admin"),  # type: ignore[arg-type]
                  ConsoleUser(name="bob", token="bob-token-0123456789")], b"k" * 32)  # type: ignore[arg-type]


def _basic(name: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()


def test_users_sign_in_by_password_token_or_header() -> None:
    users = _users()
    assert users.check_password("ada", "correct-horse") is not None
    assert users.check_password("ada", "wrong") is None and users.check_password("nobody", "correct-horse") is None
    assert users.check_password("bob", "bob-token-0123456789") is not None  # a token works as a password too
    assert users.check_token("bob-token-0123456789") is not None and users.check_token("correct-horse") is None
    ada = users.from_header(_basic("ada", "correct-horse"))
    assert ada is not None and ada.role is Role.ADMIN and ada.via == "basic" and ada.is_admin
    bob = users.from_header("Bearer bob-token-0123456789")
    assert bob is not None and bob.role is Role.VIEWER and not bob.is_admin
    for bad in (None, "", "Basic !!!", _basic("ada", "nope"), "Basic " + base64.b64encode(b"no-colon").decode(),
                "Bearer ", "Digest x", "Bearer correct-horse"):
        assert users.from_header(bad) is None, bad
    assert users.role_of("ada") is Role.ADMIN and users.role_of("carol") is None


def test_csrf_tokens_belong_to_their_principal() -> None:
    users = _users()
    ada = users.from_header(_basic("ada", "correct-horse"))
    bob = users.from_header("Bearer bob-token-0123456789")
    assert ada is not None and bob is not None and ada.csrf != bob.csrf
    assert csrf_ok(ada, ada.csrf) and not csrf_ok(ada, bob.csrf) and not csrf_ok(ada, "") and not csrf_ok(ada, None)
    assert not csrf_ok(None, ada.csrf)
    session = Principal(name="ada", role=Role.ADMIN, via="session", csrf="s3cr3t")
    assert csrf_ok(session, "s3cr3t") and not csrf_ok(session, "s3cr3")


def test_origins_and_redirects_stay_on_the_console() -> None:
    assert origin_ok(None, "console:9109", "http")  # no Origin sent (same-origin form posts in some browsers)
    assert origin_ok("http://console:9109", "console:9109", "http")
    assert not origin_ok("http://evil.example", "console:9109", "http")
    assert not origin_ok("https://console:9109", "console:9109", "http") and not origin_ok("null", "c", "http")
    assert safe_next("/trace?q=SO1") == "/trace?q=SO1"
    for bad in (None, "", "https://evil.example/", "//evil.example/x", "/\\evil", "trace"):
        assert safe_next(bad) == "/status", bad


def test_failed_sign_ins_are_throttled_per_address() -> None:
    throttle = LoginThrottle(max_failures=3, window_s=60)
    for _ in range(3):
        assert throttle.allowed("10.0.0.1")
        throttle.failed("10.0.0.1")
    assert not throttle.allowed("10.0.0.1") and throttle.allowed("10.0.0.2")
    throttle.succeeded("10.0.0.1")
    assert throttle.allowed("10.0.0.1")


# ----------------------------------------------------------------------------------------------- the status board
def _status(**books: Any) -> SyncStatus:
    return SyncStatus(
        since=NOW.replace(hour=0),
        sources=(SourceActivity(system="pos", last_event_at=NOW - timedelta(minutes=30), topics=("pos.t",),
                                outcomes={Outcome.VOUCHERED: 90, Outcome.REJECTED: 3}),
                 SourceActivity(system=None, last_event_at=NOW, topics=("pos.t",), outcomes={Outcome.DEAD_LETTERED: 1})),
        books=(BookActivity(system="pos", book="001", posted=80, waiting=2, oldest_waiting_at=NOW - timedelta(hours=1),
                            oldest_waiting_key="k1", **books),
               BookActivity(system="bank", book="002", posted=5)),
        positions=(PartitionPosition(topic="pos.t", partition=0, next_offset=100, updated_at=NOW),
                   PartitionPosition(topic="pos.t", partition=1, next_offset=50, updated_at=NOW)),
        dead_letters_new=4, feedback_unsent=0, feedback_oldest_unsent_at=None)


def test_numbers_past_their_thresholds_are_red() -> None:
    th = ConsoleThresholds(lag_records=100, silence_s=600, rejected_by_kingdee=1)  # type: ignore[call-arg]
    b = board(_status(rejected_by_kingdee=1), {("pos.t", 0): 180, ("pos.t", 1): 70}, {}, th, NOW,
              reconciliation_flagged=2)
    pos, undecodable, bank = b.sources
    assert pos.lag == 100 and b.total_lag == 100 and pos.vouchered == 90
    assert pos.red == {"lag", "last_event", "rejected"} and undecodable.red == {"lag", "dead_lettered"}
    assert pos.books[0].red == {"oldest_waiting", "rejected_by_kingdee"} and pos.books[0].oldest_age_s == 3600
    assert bank.activity.system == "bank" and bank.lag is None  # vouchers without events in this group still show
    assert b.waiting == 2 and b.oldest_key == "k1" and b.red == {"lag", "oldest", "reconciliation"}


def test_without_kafka_the_lag_is_unknown_not_zero() -> None:
    b = board(_status(), None, {}, ConsoleThresholds(), NOW)  # type: ignore[call-arg]
    assert not b.kafka_answered and b.total_lag is None and b.sources[0].lag is None and "lag" not in b.red
    assert crossed(None, 1) is False and crossed(5, None) is False and crossed(5, 5) is True


# ----------------------------------------------------------------------------------------------- settings
def test_console_settings_are_checked_and_their_secrets_hidden(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from-a-file-pw\n")
    s = load_settings(None, console={"enabled": True, "users": [
        {"name": "ops", "password": f"file:{secret}", "role": "admin"}, {"name": "dash", "token": "t" * 20}]})
    assert s.console.users[0].password_value() == "from-a-file-pw" and s.console.users[1].role == "viewer"
    assert {"from-a-file-pw", "t" * 20} <= set(secret_values(s))  # scrubbed from every log line
    shown = s.redacted()["console"]["users"]
    assert shown[0]["password"] == "**********" and shown[1]["token"] == "**********"
    for console, message in [
        ({"enabled": True}, "console.users is empty"),
        ({"users": [{"name": "a"}]}, "needs a password or a token"),
        ({"users": [{"name": "a", "password": "short"}]}, "at least 8 characters"),
        ({"users": [{"name": "a", "token": "short-token"}]}, "at least 16 characters"),
        ({"users": [{"name": "a", "password": "p" * 8}, {"name": "a", "password": "q" * 8}]}, "a given twice"),
        ({"users": [{"name": "a b", "password": "p" * 8}]}, "should match pattern"),
        ({"timezone": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
        ({"session_secret": "too-short"}, "at least 32 characters"),
        ({"thresholds": {"lag_records": 0}}, "greater than or equal to 1"),
    ]:
        with pytest.raises(ConfigError, match=message) as e:
            load_settings(None, console=console)
        assert "short-token" not in str(e.value) and "'short'" not in str(e.value)  # secrets never echoed


# ----------------------------------------------------------------------------------------------- vendored files
def test_the_vendored_libraries_are_the_pinned_npm_files() -> None:
    for v in VENDORED:
        for name, (_, expected) in v.files.items():
            path = VENDOR_DIR / name
            assert path.is_file(), f"{name} of {v.package}@{v.version} is missing (python -m harness.console_vendor)"
            if expected:
                assert sha256(path) == expected, f"{name} is not {v.package}@{v.version} as npm ships it"
