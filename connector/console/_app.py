"""The console's web application (Starlette): routes, sign-in, rendering, and the requeue action.

Pages are rendered on the server from Jinja2 templates; htmx swaps parts of them (filters, drill-downs, the
requeue result, the status page's refresh) and Chart.js draws the triage charts — both served from the package's
``static/vendor`` (decision 0008: no CDN at run time). Every page works without JavaScript too.

Reads go through ``connector.journal.views`` on a small pool of read-only connections (``statement_timeout`` 5 s);
the one action, requeueing dead letters, is ``connector.dlq.requeue`` — the same function as ``kingdee-cdc dlq
requeue`` — audited with the actor ``console:<user>``.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any, Final
from urllib.parse import urlencode, urlsplit
from zoneinfo import ZoneInfo

import psycopg
from jinja2 import Environment, PackageLoader, StrictUndefined
from psycopg_pool import ConnectionPool, PoolTimeout
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from connector.config import Settings
from connector.console import _format as fmt
from connector.console._auth import (
    SESSION_AT,
    SESSION_CSRF,
    SESSION_USER,
    LoginThrottle,
    Principal,
    Role,
    Users,
    csrf_ok,
    new_csrf,
    origin_ok,
    safe_next,
)
from connector.console._board import board, crossed
from connector.console._format import Lang
from connector.console._i18n import language, translator
from connector.console._lag import LogEnds
from connector.errors import ConfigError, ConnectorError
from connector.journal import AuditAction, DeadLetterStatus, Journal, Outcome
from connector.journal.views import (
    COUNT_CAP,
    JournalViews,
    ProblemKind,
    TraceBy,
    TriageCount,
    TriageFilter,
    ViewError,
    parse_trace_query,
)
from connector.ledger import Book

log = logging.getLogger("kingdee_cdc.console")

SESSION_COOKIE: Final = "kdcdc_console"
LANG_COOKIE: Final = "kdcdc_lang"
#: triage windows: name → (length, bucket)
RANGES: Final = {"24h": (timedelta(hours=24), "hour"), "7d": (timedelta(days=7), "day"),
                 "30d": (timedelta(days=30), "day")}
MAX_REQUEUE: Final = 1000
_SECURITY_HEADERS: Final = [
    (b"content-security-policy", b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                 b"connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"),
    (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"same-origin"), (b"x-frame-options", b"DENY")]


class _SecurityHeaders:
    """Adds the security headers (CSP: scripts and styles from the console itself only) to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_SECURITY_HEADERS]
            await send(message)
        await self.app(scope, receive, send_with_headers)


class HttpError(Exception):
    """A request the console refuses, with the status and a message for the person."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


Handler = Callable[[Request, Principal], Awaitable[Response]]


class Console:
    """The console over one journal and consumer group, from the settings. ``app`` is the ASGI application."""

    def __init__(self, settings: Settings, *, books: Mapping[str, Book] | None = None,
                 log_ends: LogEnds | None = None) -> None:
        from connector.service import journal_dsn

        cs = settings.console
        if not cs.users:
            raise ConfigError("console.users is empty: add a user with a password or a token (role viewer or admin) "
                              "— the console never serves anonymously")
        self.settings = settings
        self.tz = ZoneInfo(cs.timezone)
        self.dsn = journal_dsn(settings)
        self.schema = settings.journal.schema_name
        self.group = settings.kafka.group_id
        secret = cs.session_secret.get_secret_value() if cs.session_secret else secrets.token_urlsafe(48)
        self.users = Users(cs.users, secret.encode())
        self.throttle = LoginThrottle()
        self.books: Mapping[str, Book] = books if books is not None else _ledger_books(settings)
        self.log_ends = log_ends if log_ends is not None else LogEnds(
            settings.kafka.librdkafka() if settings.kafka.topics else None)
        #: triage counts run a query per kind side by side (their own pooled connections)
        self.workers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="console-query")
        self.pool = ConnectionPool(
            self.dsn, min_size=1, max_size=8, open=False, name="kingdee-cdc-console",
            check=ConnectionPool.check_connection, reconnect_timeout=0,
            kwargs={"autocommit": True, "connect_timeout": 3, "application_name": "kingdee-cdc-console",
                    "options": "-c statement_timeout=5000 -c default_transaction_read_only=on"})
        self.env = Environment(loader=PackageLoader("connector.console", "templates"), autoescape=True,
                               undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        self.env.filters["money"] = fmt.format_money
        self.env.filters["count"] = fmt.format_count
        self.env.filters["decimal"] = fmt.format_decimal
        self.env.policies["json.dumps_kwargs"] = {"sort_keys": True, "ensure_ascii": False}
        self.app = Starlette(routes=[
            Route("/", self._root),
            Route("/healthz", self._healthz),
            Route("/login", self._login_form, methods=["GET"]),
            Route("/login", self._login, methods=["POST"]),
            Route("/logout", self._guard(self._logout), methods=["POST"]),
            Route("/lang", self._language),
            Route("/status", self._guard(self._status)),
            Route("/trace", self._guard(self._trace)),
            Route("/triage", self._guard(self._triage)),
            Route("/triage/events", self._guard(self._triage_events)),
            Route("/triage/requeue", self._guard(self._requeue, admin=True), methods=["POST"]),
            Route("/reconciliation", self._guard(self._reconciliations)),
            Route("/reconciliation/{run_id:int}", self._guard(self._reconciliation)),
            Mount("/static", StaticFiles(packages=[("connector.console", "static")]), name="static"),
        ], middleware=[
            Middleware(_SecurityHeaders),
            Middleware(SessionMiddleware, secret_key=secret, session_cookie=SESSION_COOKIE, same_site="strict",
                       https_only=cs.secure_cookies, max_age=int(cs.session_hours * 3600)),
        ], exception_handlers={404: self._not_found})

    def close(self) -> None:
        self.workers.shutdown(wait=False, cancel_futures=True)
        self.pool.close()

    # ------------------------------------------------------------------ plumbing
    @contextmanager
    def views(self) -> Iterator[JournalViews]:
        if self.pool.closed:
            self.pool.open(wait=False)
        try:
            with self.pool.connection(timeout=5) as conn:
                yield JournalViews(conn, schema=self.schema, group=self.group)
        except (PoolTimeout, psycopg.OperationalError) as e:
            raise HttpError(503, f"the journal does not answer ({type(e).__name__}); the page will work again "
                                 "when PostgreSQL is back") from None

    def lang(self, request: Request) -> Lang:
        return language(request.cookies.get(LANG_COOKIE), self.settings.console.language)

    def principal(self, request: Request) -> Principal | None:
        session = request.session
        name = session.get(SESSION_USER)
        if isinstance(name, str):
            role = self.users.role_of(name)
            at = session.get(SESSION_AT)
            fresh = isinstance(at, (int, float)) and time.time() - at < self.settings.console.session_hours * 3600
            if role is not None and fresh:
                return Principal(name=name, role=role, via="session", csrf=str(session.get(SESSION_CSRF, "")))
            session.clear()
        return self.users.from_header(request.headers.get("authorization"))

    def _guard(self, handler: Handler, *, admin: bool = False) -> Callable[[Request], Awaitable[Response]]:
        """Sign-in (else: a browser goes to /login, htmx is told to, anything else gets 401), CSRF and Origin on
        POST, the admin role for actions; errors become pages with their status."""
        async def endpoint(request: Request) -> Response:
            principal = self.principal(request)
            try:
                if principal is None:
                    return self._unauthenticated(request)
                if request.method == "POST":
                    form = await request.form()
                    token = request.headers.get("x-csrf-token") or _text(form, "csrf_token")
                    if not origin_ok(request.headers.get("origin"), request.headers.get("host"), request.url.scheme):
                        raise HttpError(403, "the request comes from another site (Origin does not match); refused")
                    if not csrf_ok(principal, token):
                        raise HttpError(403, "missing or invalid CSRF token: reload the page and try again")
                if admin and principal.role is not Role.ADMIN:
                    raise HttpError(403, f"this action needs the admin role; {principal.name} is a "
                                         f"{principal.role.value}")
                return await handler(request, principal)
            except HttpError as e:
                return self._error(request, principal, e.status, e.message)
            except ViewError as e:
                return self._error(request, principal, 400, str(e))
            except ConnectorError as e:
                log.warning("console: %s %s failed: %s", request.method, request.url.path, e)
                return self._error(request, principal, 503, str(e))
        return endpoint

    def _unauthenticated(self, request: Request) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        login = "/login?" + urlencode({"next": target})
        if request.headers.get("hx-request"):
            return PlainTextResponse("sign in first\n", status_code=401, headers={"HX-Redirect": login})
        if request.method == "GET" and "text/html" in request.headers.get("accept", ""):
            return RedirectResponse(login, status_code=303)
        return PlainTextResponse("sign in first (a session, HTTP Basic or a Bearer token)\n", status_code=401,
                                 headers={"WWW-Authenticate": 'Basic realm="kingdee-cdc console", charset="UTF-8"'})

    def render(self, request: Request, principal: Principal | None, template: str, *, status: int = 200,
               **context: Any) -> HTMLResponse:
        lang = self.lang(request)
        now = datetime.now(timezone.utc)
        t = translator(lang)
        html = self.env.get_template(template).render(
            t=t, lang=lang, user=principal, csrf=principal.csrf if principal else "", path=request.url.path,
            here=request.url.path + (f"?{request.url.query}" if request.url.query else ""), now=now, tz=self.tz,
            tz_name=self.settings.console.timezone, time=lambda at: fmt.format_time(at, self.tz),
            age=lambda seconds: fmt.format_age(seconds, lang),
            ago=lambda at: t("common.ago", age=fmt.format_age(fmt.age_seconds(at, now), lang)) if at else "—",
            currency=self.currency, th=self.settings.console.thresholds, crossed=crossed, outcome=Outcome, **context)
        return HTMLResponse(html, status_code=status)

    def currency(self, book: str) -> str | None:
        b = self.books.get(book)
        return b.local_currency if b is not None else None

    def _error(self, request: Request, principal: Principal | None, status: int, message: str) -> Response:
        if request.headers.get("hx-request"):
            return HTMLResponse(f'<div class="flash bad" role="alert">{_escape(message)}</div>', status_code=status,
                                headers={"HX-Reswap": "innerHTML", "HX-Retarget": "#flash"})
        title = {400: "error.bad_request", 403: "error.forbidden", 404: "error.not_found",
                 503: "error.unavailable"}.get(status, "error.title")
        return self.render(request, principal, "error.html", status=status, title=title, message=message)

    async def _not_found(self, request: Request, exc: Exception) -> Response:
        return self._error(request, self.principal(request), 404, f"no page at {request.url.path}")

    # ------------------------------------------------------------------ sign-in
    async def _root(self, request: Request) -> Response:
        return RedirectResponse("/status", status_code=303)

    async def _healthz(self, request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def _login_form(self, request: Request) -> Response:
        if SESSION_CSRF not in request.session:
            request.session[SESSION_CSRF] = new_csrf()
        return self.render(request, None, "login.html", next=safe_next(request.query_params.get("next")), failed=None,
                           login_csrf=request.session[SESSION_CSRF])

    async def _login(self, request: Request) -> Response:
        form = await request.form()
        client = request.client.host if request.client else "?"
        target = safe_next(_text(form, "next"))
        expected = request.session.get(SESSION_CSRF)
        given = _text(form, "csrf_token")
        if not (isinstance(expected, str) and given and secrets.compare_digest(given, expected)):
            return self._error(request, None, 403, "missing or invalid CSRF token: reload the sign-in page")
        if not origin_ok(request.headers.get("origin"), request.headers.get("host"), request.url.scheme):
            return self._error(request, None, 403, "the request comes from another site (Origin does not match)")

        def again(failed: str, status: int) -> Response:
            request.session[SESSION_CSRF] = new_csrf()
            return self.render(request, None, "login.html", status=status, next=target, failed=failed,
                               login_csrf=request.session[SESSION_CSRF])
        if not self.throttle.allowed(client):
            return again("login.throttled", 429)
        name, secret = _text(form, "user").strip(), _text(form, "secret")
        user = (self.users.check_password(name, secret) if name else self.users.check_token(secret)) if secret else None
        if user is None:
            self.throttle.failed(client)
            log.warning("console: failed sign-in for %r from %s", name or "(token)", client)
            return again("login.failed", 401)
        self.throttle.succeeded(client)
        request.session.clear()
        request.session.update({SESSION_USER: user.name, SESSION_CSRF: new_csrf(), SESSION_AT: time.time()})
        log.info("console: %s signed in from %s", user.name, client)
        return RedirectResponse(target, status_code=303)

    async def _logout(self, request: Request, principal: Principal) -> Response:
        request.session.clear()
        return RedirectResponse("/login", status_code=303)

    async def _language(self, request: Request) -> Response:
        lang = language(request.query_params.get("to"), self.settings.console.language)
        target = request.query_params.get("next")
        referer = urlsplit(request.headers.get("referer", ""))
        if target is None and referer.netloc == request.headers.get("host"):  # back to the page the link was on
            target = referer.path + (f"?{referer.query}" if referer.query else "")
        response = RedirectResponse(safe_next(target), status_code=303)
        response.set_cookie(LANG_COOKIE, lang, max_age=365 * 86400, samesite="lax",
                            secure=self.settings.console.secure_cookies, httponly=True)
        return response

    # ------------------------------------------------------------------ pages
    def today(self) -> datetime:
        return datetime.now(self.tz).replace(hour=0, minute=0, second=0, microsecond=0)

    async def _status(self, request: Request, principal: Principal) -> Response:
        def page() -> Response:
            with self.views() as v:
                status = v.sync_status(since=self.today())
                flagged = sum(r.flagged for r in v.reconciliations())
            ends = self.log_ends.get({(p.topic, p.partition): p.next_offset for p in status.positions})
            b = board(status, ends, self.books, self.settings.console.thresholds, datetime.now(timezone.utc),
                      reconciliation_flagged=flagged)
            return self.render(request, principal, "status.html", board=b, books=self.books, cap=COUNT_CAP)
        return await run_in_threadpool(page)

    async def _trace(self, request: Request, principal: Principal) -> Response:
        text = request.query_params.get("q", "")
        by = request.query_params.get("by", TraceBy.AUTO.value)

        def page() -> Response:
            trace, problem = None, None
            if text.strip():
                try:
                    query = parse_trace_query(text, by)
                except ViewError as e:
                    problem = str(e)
                else:
                    with self.views() as v:
                        trace = v.trace(query)
            return self.render(request, principal, "trace.html", q=text, by=by, kinds=list(TraceBy), trace=trace,
                               problem=problem, feedback_prefix=self.settings.feedback.topic_prefix,
                               status=400 if problem else 200)
        return await run_in_threadpool(page)

    def triage_filter(self, params: Mapping[str, str]) -> tuple[str, TriageFilter]:
        """The filter a triage request names (``range``, ``kind``, ``source``, ``reason``, ``status``, and a drill-down
        ``at`` = one bucket's local start); raises ``ViewError`` naming a bad value."""
        name = params.get("range") or "7d"
        if name not in RANGES:
            raise ViewError(f"range must be one of {', '.join(RANGES)}, got {name!r}")
        length, bucket = RANGES[name]
        now = datetime.now(self.tz)
        since = (now - length).replace(minute=0, second=0, microsecond=0)
        if bucket == "day":
            since = since.replace(hour=0)
        until = None
        at = params.get("at")
        if at:
            try:
                start = datetime.fromisoformat(at)
            except ValueError:
                raise ViewError(f"at must be a local time such as 2026-12-01T13:00, got {at!r}") from None
            start = start.replace(tzinfo=self.tz) if start.tzinfo is None else start
            since, until = start, start + (timedelta(hours=1) if bucket == "hour" else timedelta(days=1))
        kind = params.get("kind") or None
        if kind is not None and kind not in {k.value for k in ProblemKind}:
            raise ViewError(f"kind must be rejected or undecodable, got {kind!r}")
        status = params.get("status") or None
        if status is not None and status not in {s.value for s in DeadLetterStatus}:
            raise ViewError(f"status must be one of {', '.join(s.value for s in DeadLetterStatus)}, got {status!r}")
        return name, TriageFilter(
            since=since, until=until, bucket=bucket, tz=self.settings.console.timezone,  # type: ignore[arg-type]
            kind=ProblemKind(kind) if kind else None, source=params.get("source") or None,
            reason=params.get("reason") or None, status=DeadLetterStatus(status) if status else None)

    async def _triage(self, request: Request, principal: Principal) -> Response:
        params = dict(request.query_params)

        def page() -> Response:
            name, f = self.triage_filter(params)
            # one count of the whole window (the choices offered; filtered, the charts), a kind per connection, side
            # by side with the list of events
            whole = TriageFilter(since=f.since, until=f.until, bucket=f.bucket, tz=f.tz)
            counted = [self.workers.submit(self._counts, replace(whole, kind=k)) for k in ProblemKind]
            with self.views() as v:
                events = v.problem_events(f, limit=200)
            choices = sorted((c for job in counted for c in job.result()),
                             key=lambda c: (c.bucket, c.kind, c.source, c.reason))
            counts = [c for c in choices if f.admits(c)]
            return self.render(request, principal, "triage.html", range_name=name, ranges=list(RANGES), f=f,
                               params=params, chart=_script_json(self.chart(f, counts, params)),
                               total=sum(c.count for c in counts), matrix=_matrix(counts),
                               sources=sorted({c.source for c in choices}), reasons=_reasons(choices),
                               events=events, statuses=list(DeadLetterStatus), message=None, query=urlencode(params))
        return await run_in_threadpool(page)

    def _counts(self, f: TriageFilter) -> list[TriageCount]:
        with self.views() as v:
            return v.triage_counts(f)

    async def _triage_events(self, request: Request, principal: Principal) -> Response:
        params = dict(request.query_params)

        def fragment() -> Response:
            _, f = self.triage_filter(params)
            with self.views() as v:
                events = v.problem_events(f, limit=200)
            return self.render(request, principal, "_events.html", events=events, f=f, params=params, message=None,
                               query=urlencode(params))
        return await run_in_threadpool(fragment)

    def chart(self, f: TriageFilter, counts: list[TriageCount], params: Mapping[str, str]) -> dict[str, Any]:
        """What the triage charts draw (``static/console.js``): every bucket of the window, a series per reason."""
        step = timedelta(hours=1) if f.bucket == "hour" else timedelta(days=1)
        buckets: list[datetime] = []
        at = f.since.astimezone(self.tz).replace(tzinfo=None)
        end = (f.until or datetime.now(self.tz)).astimezone(self.tz).replace(tzinfo=None)
        while at <= end and len(buckets) < 800:
            buckets.append(at)
            at += step
        index = {b: i for i, b in enumerate(buckets)}
        series: dict[str, list[int]] = {}
        by_source: dict[str, dict[str, int]] = {}
        sources = sorted({c.source for c in counts})
        for c in counts:
            label = _reason_label(c.kind, c.reason)
            series.setdefault(label, [0] * len(buckets))
            if c.bucket in index:
                series[label][index[c.bucket]] += c.count
            by_source.setdefault(label, {})
            by_source[label][c.source] = by_source[label].get(c.source, 0) + c.count
        base = {k: v for k, v in params.items() if k in ("range", "kind", "source", "reason", "status")}
        return {
            "labels": [b.strftime("%m-%d %H:00" if f.bucket == "hour" else "%m-%d") for b in buckets],
            "keys": [b.strftime("%Y-%m-%dT%H:%M") for b in buckets],
            "series": [{"label": label, "kind": label.split(":", 1)[0] if ":" in label else ProblemKind.REJECTED.value,
                        "reason": label.split(": ", 1)[1] if ": " in label else label, "data": data}
                       for label, data in sorted(series.items())],
            "sources": sources,
            "bySource": [{"label": label, "data": [by_source[label].get(s, 0) for s in sources]}
                         for label in sorted(by_source)],
            "eventsUrl": "/triage/events", "base": base,
        }

    async def _requeue(self, request: Request, principal: Principal) -> Response:
        form = await request.form()
        ids = _ids(form)
        params = {k: _text(form, k) for k in ("range", "kind", "source", "reason", "status", "at") if _text(form, k)}

        def act() -> Response:
            from connector.dlq import get_dead_letter, requeue

            with self.views() as v:
                found = dict(v.dead_letter_ids(ids))
            unknown = [i for i in ids if i not in found]
            if unknown:
                raise HttpError(400, f"dead letter(s) {', '.join(map(str, unknown))} are not in consumer group "
                                     f"{self.group}")
            done = [i for i in ids if found[i] is not DeadLetterStatus.NEW]
            if done:
                raise HttpError(409, "only new dead letters are requeued; "
                                     + ", ".join(f"{i} is {found[i].value}" for i in done))
            actor = f"console:{principal.name}"
            journal = Journal(self.dsn, schema=self.schema, group=self.group)
            try:
                letters = [d for i in ids if (d := get_dead_letter(journal, i)) is not None]
                n = requeue(journal, letters, producer_conf=self.settings.kafka.producer_conf(), actor=actor)
            finally:
                journal.close()
            log.info("console: %s requeued dead letters %s", principal.name, ids)
            _, f = self.triage_filter(params)
            with self.views() as v:
                audit = v.recent_audit(AuditAction.DLQ_REQUEUED, actor, limit=n)
                events = v.problem_events(f, limit=200)
            message = translator(self.lang(request))(
                "triage.requeued", n=n, audit=", ".join(f"#{a.id}" for a in reversed(audit)))
            return self.render(request, principal, "_events.html", events=events, f=f, params=params,
                               message=message, query=urlencode(params))
        return await run_in_threadpool(act)

    async def _reconciliations(self, request: Request, principal: Principal) -> Response:
        def page() -> Response:
            with self.views() as v:
                runs = v.reconciliations()
            return self.render(request, principal, "reconciliation.html", runs=runs, run=None)
        return await run_in_threadpool(page)

    async def _reconciliation(self, request: Request, principal: Principal) -> Response:
        run_id = int(request.path_params["run_id"])

        def page() -> Response:
            with self.views() as v:
                run = v.reconciliation(run_id)
            if run is None:
                raise HttpError(404, f"no reconciliation run {run_id}")
            return self.render(request, principal, "reconciliation.html", runs=[], run=run)
        return await run_in_threadpool(page)


def _text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


def _ids(form: FormData) -> list[int]:
    raw = [v for v in form.getlist("id") if isinstance(v, str)]
    if not raw:
        raise HttpError(400, "no dead letter selected")
    if len(raw) > MAX_REQUEUE:
        raise HttpError(400, f"{len(raw)} dead letters selected; at most {MAX_REQUEUE} at once")
    bad = [v for v in raw if not v.isdigit()]
    if bad:
        raise HttpError(400, f"dead letter ids are numbers; got {', '.join(repr(b) for b in bad[:5])}")
    return list(dict.fromkeys(int(v) for v in raw))


def _reason_label(kind: ProblemKind, reason: str) -> str:
    return reason if kind is ProblemKind.REJECTED else f"{kind.value}: {reason}"


def _reasons(counts: list[TriageCount]) -> list[tuple[str, str, int]]:
    """(kind, reason, count) of the window, most frequent first."""
    totals: dict[tuple[str, str], int] = {}
    for c in counts:
        totals[(c.kind.value, c.reason)] = totals.get((c.kind.value, c.reason), 0) + c.count
    return sorted(((k, r, n) for (k, r), n in totals.items()), key=lambda x: (-x[2], x[0], x[1]))


def _matrix(counts: list[TriageCount]) -> dict[str, Any]:
    """Source × reason totals for the table under the charts."""
    cells: dict[tuple[str, str, str], int] = {}
    for c in counts:
        cells[(c.source, c.kind.value, c.reason)] = cells.get((c.source, c.kind.value, c.reason), 0) + c.count
    columns = sorted({(k, r) for _, k, r in cells})
    rows = sorted({s for s, _, _ in cells})
    return {"columns": columns, "rows": [(s, [cells.get((s, k, r), 0) for k, r in columns]) for s in rows]}


def _script_json(value: object) -> str:
    """JSON to put inside ``<script type="application/json">``: ``<`` escaped, so no text can close the element."""
    return json.dumps(value, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _escape(text: str) -> str:
    from markupsafe import escape

    return str(escape(text))


def _ledger_books(settings: Settings) -> Mapping[str, Book]:
    """The books of the rules' ledger file (names, currencies, periods); none when the rules do not load."""
    from connector.mapping import load_rules

    try:
        return dict(load_rules(settings.mapping.rules_dir).ledger.books)
    except ConnectorError as e:
        log.warning("console: the rules in %s do not load (%s); books are shown without names, currencies or "
                    "periods", settings.mapping.rules_dir, e)
        return {}
