"""K/3 Cloud WebAPI client: authentication, sessions, response parsing, error classes, limits.

Every call is ``POST {server}/{service}.common.kdsvc`` with a JSON body. Errors are classified by what the
caller must do (``docs/reference/kingdee-webapi.md`` §3):

* ``KingdeeSessionLost`` (MsgCode 1): re-login once, then a configuration error if it persists;
* ``KingdeeRetryable`` (MsgCode 13 网控 / 14 调用限制, connection refused or not established in time):
  nothing happened — retry;
* ``KingdeeAmbiguous`` (timeout or connection lost after sending, HTTP 5xx): the server *may* have committed —
  for writes the caller must look the voucher up by its key before sending it again;
* ``KingdeeBusinessError`` (MsgCode 2, 9, 10, 11 …): a rejection to report, never retried.

Whether Kingdee answers at all is reported to the process's outages (``connector.ops.OUTAGES``, dependency
``kingdee``): a refused or timed-out connection is logged once per interval however many threads hit it, and the
line when it answers again says for how long it did not.

TLS certificate verification is always on unless the configuration says otherwise (Kingdee's own SDK
disables it; this client does not copy that). Credentials are never logged.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import httpx
import msgspec

from connector.errors import ConfigError, ConnectorError, InfraError
from connector.kingdee._auth import login_sign, signed_headers
from connector.ops import OUTAGES

FORM_SERVICE: Final = "Kingdee.BOS.WebApi.ServicesStub.DynamicFormService"
AUTH_SERVICE: Final = "Kingdee.BOS.WebApi.ServicesStub.AuthService"
SESSION_COOKIE: Final = "kdservice-sessionid"


def _enc_hook(o: Any) -> Any:
    if isinstance(o, Mapping):  # a read-only mapping (an entry's dimensions)
        return dict(o)
    raise NotImplementedError(f"not JSON serialisable: {type(o).__name__}")


#: Request bodies: every ``Decimal`` as an exact JSON number (its text, never through a float), non-ASCII as
#: UTF-8 — the bytes ``connector.ledger.kingdee_json`` writes, in one C call instead of ``json.dumps`` plus a
#: regular expression over the text (a BatchSave of 100 vouchers: ~4 ms → ~0.2 ms of the worker's time)
encode_body: Final = msgspec.json.Encoder(decimal_format="number", enc_hook=_enc_hook).encode
_decode: Final = msgspec.json.decode


class KingdeeError(ConnectorError):
    def __init__(self, message: str, *, msg_code: int | None = None, errors: Sequence[Mapping[str, Any]] = (),
                 operation: str = "") -> None:
        super().__init__(message)
        self.msg_code = msg_code
        self.errors = list(errors)
        self.operation = operation


class KingdeeBusinessError(KingdeeError):
    """Kingdee refused the request for a business reason (validation, permission, missing data)."""


class KingdeeSessionLost(KingdeeError):
    """MsgCode 1: 会话信息已丢失."""


class KingdeeRetryable(KingdeeError, InfraError):
    """The request had no effect (network control conflict, call limit, connection refused): retry later."""


class KingdeeAmbiguous(KingdeeError, InfraError):
    """The request may or may not have been applied (timeout after sending, HTTP 5xx, lost response)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class KingdeeCredentials:
    """How to reach and authenticate to one K/3 Cloud data centre.

    ``auth``: ``signed`` (SDK v3 signed headers, default), ``login_by_sign``, ``login_by_app_secret`` or
    ``password`` (ValidateUser, older servers).
    """

    server_url: str
    acct_id: str
    username: str
    app_id: str = ""
    app_secret: str = field(default="", repr=False)
    password: str = field(default="", repr=False)
    lcid: int = 2052
    org_num: int = 0
    auth: str = "signed"


@dataclass(frozen=True, slots=True, kw_only=True)
class ItemResult:
    """Outcome of one model of a Save/BatchSave, matched back by ``DIndex``."""

    index: int
    ok: bool
    id: str | None = None
    number: str | None = None
    messages: tuple[str, ...] = ()
    return_data: Mapping[str, Any] = field(default_factory=dict)


def _is_success(status: Mapping[str, Any]) -> bool:
    v = status.get("IsSuccess")
    return v is True or (isinstance(v, str) and v.lower() == "true")


class _RateLimiter:
    """Token bucket shared by the threads of one client (calls per second)."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.capacity = burst or max(1.0, rate)
        self.tokens = self.capacity
        self.last = time.monotonic()
        self.lock = threading.Lock()

    def acquire(self) -> None:
        while True:
            with self.lock:
                now = time.monotonic()
                self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
                self.last = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                wait = (1 - self.tokens) / self.rate
            time.sleep(wait)


class KingdeeClient:
    """Thread-safe WebAPI client for one Kingdee instance (connection pool, concurrency and rate limits)."""

    def __init__(self, creds: KingdeeCredentials, *, timeout_s: float = 30.0, verify_tls: bool = True,
                 max_concurrency: int = 4, rate_limit_per_s: float = 50.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        if not creds.server_url.startswith(("http://", "https://")):
            raise ConfigError(f"kingdee.server_url must be an http(s) URL, got {creds.server_url!r}")
        self.creds = creds
        self.base = creds.server_url if creds.server_url.endswith("/") else creds.server_url + "/"
        self._http = httpx.Client(timeout=httpx.Timeout(timeout_s, connect=min(10.0, timeout_s)),
                                  verify=verify_tls, transport=transport,
                                  limits=httpx.Limits(max_connections=max_concurrency * 2,
                                                      max_keepalive_connections=max_concurrency))
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._rate = _RateLimiter(rate_limit_per_s)
        self._session: str | None = None
        self._session_lock = threading.RLock()  # login() holds it while its own call may set the session
        self.calls = 0
        self.relogins = 0
        #: called after every HTTP call with (operation, seconds, outcome): ok | msgcode_N | unavailable |
        #: ambiguous | error — connector.ops.Metrics.kingdee_request fits
        self.observer: Callable[[str, float, str], None] | None = None

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> KingdeeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ transport
    def _url(self, service: str) -> str:
        return f"{self.base}{service}.common.kdsvc"

    def _headers(self, url: str) -> dict[str, str]:
        c = self.creds
        h = {"Content-Type": "application/json", "Accept-Charset": "utf-8", "User-Agent": "kingdee-cdc"}
        if c.auth == "signed":
            h.update(signed_headers(url, acct_id=c.acct_id, username=c.username, app_id=c.app_id,
                                    app_secret=c.app_secret, lcid=c.lcid, org_num=c.org_num,
                                    timestamp=int(time.time())))
        if self._session:
            h[SESSION_COOKIE] = self._session
        return h

    def _post(self, service: str, body: Mapping[str, Any], *, write: bool) -> Any:
        """One HTTP call, timed and reported to ``observer`` (operation, seconds, outcome) when set."""
        if self.observer is None:
            return self._post_raw(service, body, write=write)
        op = service.rsplit(".", 1)[-1]
        started = time.monotonic()
        outcome = "ok"
        try:
            result = self._post_raw(service, body, write=write)
            st = self._status(result)
            if st is not None and not _is_success(st):
                code = st.get("MsgCode")
                outcome = f"msgcode_{code}" if str(code).lstrip("-").isdigit() else "error"
            return result
        except KingdeeAmbiguous:
            outcome = "ambiguous"
            raise
        except KingdeeRetryable:
            outcome = "unavailable"
            raise
        except KingdeeError:
            outcome = "error"
            raise
        finally:
            self.observer(op, time.monotonic() - started, outcome)

    def _post_raw(self, service: str, body: Mapping[str, Any], *, write: bool) -> Any:
        url = self._url(service)
        payload = encode_body(body)
        self._rate.acquire()
        with self._slots:
            self.calls += 1
            sent_with = self._session
            try:
                resp = self._http.post(url, content=payload, headers=self._headers(url))
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as e:
                # nothing was sent: safe to retry, even for a write
                if not isinstance(e, httpx.PoolTimeout):  # our own pool being busy says nothing about Kingdee
                    OUTAGES.failed("kingdee", f"{self.base} unreachable ({type(e).__name__}): {e}")
                raise KingdeeRetryable(f"Kingdee unreachable ({type(e).__name__}): {e}", operation=service) from e
            except (httpx.TimeoutException, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as e:
                OUTAGES.failed("kingdee", f"{self.base} gave no answer ({type(e).__name__})")
                cls = KingdeeAmbiguous if write else KingdeeRetryable
                raise cls(f"no answer from Kingdee ({type(e).__name__}); outcome unknown", operation=service) from e
        if OUTAGES.problem("kingdee") is not None:
            OUTAGES.ok("kingdee")
        sid = resp.cookies.get(SESSION_COOKIE)
        if sid:
            with self._session_lock:  # a slow answer must not replace a session another call got meanwhile
                if self._session == sent_with:
                    self._session = sid
        # The session travels in the kdservice-sessionid header (as the SDK does), never via httpx's cookie jar:
        # a jar would keep sending a lost session after we dropped it.
        self._http.cookies.clear()
        if resp.status_code >= 500:
            cls = KingdeeAmbiguous if write else KingdeeRetryable
            raise cls(f"Kingdee HTTP {resp.status_code}: {resp.text[:300]}", operation=service)
        if resp.status_code not in (200, 206):
            raise KingdeeError(f"Kingdee HTTP {resp.status_code}: {resp.text[:300]}", operation=service)
        content = resp.content
        if content.startswith(b"response_error:"):
            text = resp.text
            raise KingdeeError(text[len("response_error:"):].strip() or "empty error", operation=service)
        try:
            return _decode(content)
        except ValueError:  # (msgspec.DecodeError is one) not UTF-8 JSON: the answer's own charset, a BOM
            pass
        try:
            return json.loads(resp.text.lstrip("\ufeff"))
        except ValueError:
            raise KingdeeError(f"Kingdee answered non-JSON: {resp.text[:200]!r}", operation=service) from None

    def call(self, service: str, body: Mapping[str, Any], *, write: bool = False) -> Any:
        """POST ``body`` to ``service``; re-login once on a lost session; classify failures."""
        # Three attempts: with several threads a call can lose a session that another thread's re-login
        # or a slow answer handed it; a session that is lost three times in a row is a configuration problem.
        for attempt in (1, 2, 3):
            if self._session is None and self.creds.auth != "signed":
                self.login()
            result = self._post(service, body, write=write)
            try:
                self._raise_for_status(result, service)
                return result
            except KingdeeSessionLost:
                with self._session_lock:
                    self._session = None
                    self.relogins += 1
                if attempt == 3:
                    raise ConfigError("Kingdee keeps answering 会话信息已丢失 after a fresh login: check the "
                                      "user, the app's allowed users and the app link validity (see docs/kingdee.md)")
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _status(result: Any) -> Mapping[str, Any] | None:
        if isinstance(result, Mapping):
            inner = result.get("Result")
            if isinstance(inner, Mapping):
                st = inner.get("ResponseStatus")
                return st if isinstance(st, Mapping) else None
        if isinstance(result, list) and result and isinstance(result[0], list) and result[0] \
                and isinstance(result[0][0], Mapping):  # ExecuteBillQuery's nested error form
            return KingdeeClient._status(result[0][0])
        return None

    def _raise_for_status(self, result: Any, service: str) -> None:
        st = self._status(result)
        if st is None or _is_success(st):
            return
        code = st.get("MsgCode")
        code = int(code) if isinstance(code, (int, str)) and str(code).lstrip("-").isdigit() else None
        errors = [e for e in st.get("Errors") or [] if isinstance(e, Mapping)]
        text = "; ".join(str(e.get("Message", "")) for e in errors) or str(st.get("ErrorCode", "error"))
        if code == 1:
            raise KingdeeSessionLost(text, msg_code=1, errors=errors, operation=service)
        if code in (13, 14):
            raise KingdeeRetryable(text, msg_code=code, errors=errors, operation=service)
        if isinstance(result, list) or not self._has_items(st):
            raise KingdeeBusinessError(text, msg_code=code, errors=errors, operation=service)

    @staticmethod
    def _has_items(st: Mapping[str, Any]) -> bool:
        """Per-item (DIndex) results are returned to the caller instead of raised."""
        return bool(st.get("SuccessEntitys")) or any("DIndex" in e for e in st.get("Errors") or [])

    # ------------------------------------------------------------------ login (non-signed modes)
    def login(self) -> None:
        c = self.creds
        with self._session_lock:
            if c.auth == "login_by_sign":
                ts = int(time.time())
                params = [c.acct_id, c.username, c.app_id, ts, login_sign(c.acct_id, c.username, c.app_id,
                                                                           c.app_secret, ts), c.lcid]
                service = f"{AUTH_SERVICE}.LoginBySign"
            elif c.auth == "login_by_app_secret":
                params = [c.acct_id, c.username, c.app_id, c.app_secret, c.lcid]
                service = f"{AUTH_SERVICE}.LoginByAppSecret"
            elif c.auth == "password":
                params = [c.acct_id, c.username, c.password, c.lcid]
                service = f"{AUTH_SERVICE}.ValidateUser"
            else:
                return
            res = self._post(service, {"parameters": params}, write=False)
            if not isinstance(res, Mapping) or res.get("LoginResultType") != 1:
                msg = res.get("Message") if isinstance(res, Mapping) else res
                raise ConfigError(f"Kingdee login failed ({c.auth}): {msg}")
            sid = res.get("KDSVCSessionId")
            if sid:
                self._session = str(sid)

    # ------------------------------------------------------------------ operations
    def _form(self, op: str, form_id: str, data: Mapping[str, Any], *, write: bool) -> Any:
        return self.call(f"{FORM_SERVICE}.{op}", {"formid": form_id, "data": data}, write=write)

    def save(self, form_id: str, model: Mapping[str, Any], **options: Any) -> ItemResult:
        res = self._form("Save", form_id, {"Model": model, **options}, write=True)
        return self._items(res, 1)[0]

    def batch_save(self, form_id: str, models: Sequence[Mapping[str, Any]], *, batch_count: int = 4,
                   **options: Any) -> list[ItemResult]:
        res = self._form("BatchSave", form_id, {"Model": list(models), "BatchCount": batch_count, **options},
                         write=True)
        return self._items(res, len(models))

    def _items(self, res: Any, n: int) -> list[ItemResult]:
        st = self._status(res) or {}
        ok = {int(e.get("DIndex", 0)): e for e in st.get("SuccessEntitys") or []}
        errs: dict[int, list[str]] = {}
        for e in st.get("Errors") or []:
            errs.setdefault(int(e.get("DIndex", 0)), []).append(str(e.get("Message", "")))
        returned = (res.get("Result") or {}).get("NeedReturnData") or [] if isinstance(res, Mapping) else []
        out = []
        for i in range(n):
            if i in ok and i not in errs:
                data = returned[i] if i < len(returned) and isinstance(returned[i], Mapping) else {}
                out.append(ItemResult(index=i, ok=True, id=str(ok[i].get("Id")), number=str(ok[i].get("Number")),
                                      return_data=data))
            else:
                out.append(ItemResult(index=i, ok=False, messages=tuple(errs.get(i, ["no result for this item"]))))
        return out

    def batch_save_async(self, form_id: str, models: Sequence[Mapping[str, Any]], *, poll_s: float = 1.0,
                         timeout_s: float = 300.0, **options: Any) -> list[ItemResult]:
        """BatchSave in the server's async mode (``BeginQueryImpl``), polling ``QueryAsyncResult`` until done."""
        body = {"formid": form_id, "data": {"Model": list(models), **options},
                "beginmethod": "BeginQueryImpl", "querymethod": "QueryAsyncResult"}
        res = self.call(f"{FORM_SERVICE}.BatchSave", body, write=True)
        deadline = time.monotonic() + timeout_s
        while isinstance(res, Mapping) and res.get("Status") in (0, 1):
            if time.monotonic() > deadline:
                raise KingdeeAmbiguous(f"async BatchSave task {res.get('TaskId')} not complete after {timeout_s}s",
                                       operation="BatchSave")
            time.sleep(poll_s)
            res = self.call(f"{FORM_SERVICE}.QueryAsyncResult",
                            {"queryInfo": json.dumps({"TaskId": res.get("TaskId"), "Cancelled": False})})
        result = res.get("Result") if isinstance(res, Mapping) and "Status" in res else res
        self._raise_for_status(result, "BatchSave")
        return self._items(result, len(models))

    def submit(self, form_id: str, *, ids: Sequence[str] = (), numbers: Sequence[str] = ()) -> Any:
        return self._form("Submit", form_id, _targets(ids, numbers), write=True)

    def audit(self, form_id: str, *, ids: Sequence[str] = (), numbers: Sequence[str] = ()) -> Any:
        return self._form("Audit", form_id, _targets(ids, numbers), write=True)

    def unaudit(self, form_id: str, *, ids: Sequence[str] = (), numbers: Sequence[str] = ()) -> Any:
        return self._form("UnAudit", form_id, _targets(ids, numbers), write=True)

    def delete(self, form_id: str, *, ids: Sequence[str] = (), numbers: Sequence[str] = ()) -> Any:
        return self._form("Delete", form_id, _targets(ids, numbers), write=True)

    @staticmethod
    def operation_outcome(res: Any) -> tuple[list[str], list[str]]:
        """(ids that succeeded, error messages) of a Submit/Audit/UnAudit/Delete answer: Kingdee reports
        per item (``SuccessEntitys`` / ``Errors`` with ``DIndex``) and the call itself does not fail."""
        st = KingdeeClient._status(res) or {}
        ok = [str(e.get("Id")) for e in st.get("SuccessEntitys") or [] if isinstance(e, Mapping)]
        errors = [str(e.get("Message", "")) for e in st.get("Errors") or [] if isinstance(e, Mapping)]
        return ok, errors

    def view(self, form_id: str, *, id: str | None = None, number: str | None = None) -> Any:
        data: dict[str, Any] = {"Id": id} if id else {"Number": number}
        return self._form("View", form_id, data, write=False)

    def execute_bill_query(self, form_id: str, field_keys: Sequence[str], filter_string: str = "", *,
                           order: str = "", limit: int = 2000, start_row: int = 0) -> list[list[Any]]:
        res = self.call(f"{FORM_SERVICE}.ExecuteBillQuery", {"data": {
            "FormId": form_id, "FieldKeys": ",".join(field_keys), "FilterString": filter_string,
            "OrderString": order, "TopRowCount": 0, "StartRow": start_row, "Limit": limit}})
        if not isinstance(res, list):
            raise KingdeeError(f"ExecuteBillQuery answered {type(res).__name__}", operation="ExecuteBillQuery")
        return res

    def bill_query(self, form_id: str, field_keys: Sequence[str], filter_string: str = "", *,
                   limit: int = 2000) -> list[dict[str, Any]]:
        res = self.call(f"{FORM_SERVICE}.BillQuery", {"data": {
            "FormId": form_id, "FieldKeys": ",".join(field_keys), "FilterString": filter_string, "Limit": limit}})
        return list(res) if isinstance(res, list) else []

    def query_business_info(self, form_id: str) -> Any:
        return self.call(f"{FORM_SERVICE}.QueryBusinessInfo", {"data": {"FormId": form_id}})


def _targets(ids: Sequence[str], numbers: Sequence[str]) -> dict[str, Any]:
    if ids:
        return {"Ids": ",".join(ids)}  # a comma-separated string, per the official doc
    return {"Numbers": list(numbers)}
