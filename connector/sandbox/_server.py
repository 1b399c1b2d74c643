"""A Kingdee K/3 Cloud compatible sandbox: the WebAPI endpoints kingdee-cdc uses, for ``GL_VOUCHER``.

Same URL scheme (``{server}/{service}.common.kdsvc``), request bodies, response envelopes and MsgCodes as
K/3 Cloud (``docs/reference/kingdee-webapi.md``); verifies the SDK's signed headers and issues
``kdservice-sessionid`` sessions; enforces what Kingdee enforces on a voucher (known book, voucher group,
leaf accounts, required dimensions, known base data, open period, balance); numbers vouchers per
book/period/group; Submit/Audit/UnAudit/Delete status transitions; ExecuteBillQuery/BillQuery filters.
Faults can be injected from the config or ``POST /sandbox/admin/faults``: latency, HTTP 5xx, timeout after
commit (saved, response dropped), late commit (a slow server that commits after the client gave up), session
expiry, MsgCode 13/14. State is in memory.

Kingdee's exact texts for imbalance, closed period and unknown accounts are not public (reference §8);
the sandbox's wording for those is its own and says so in docs/kingdee.md.
"""

from __future__ import annotations

import base64
import json
import random
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any, Final

import msgspec
import yaml

from connector.kingdee._auth import app_data, client_secret, encoded_path, hmac_b64hex, login_sign
from connector.sandbox._filter import FilterError, compile_filter
from connector.ledger import Account, Book, Side, kingdee_json
from connector.ledger._checks import DIMENSION_LABELS
from connector.ledger._serde import slot_of

SESSION_LOST = "会话信息已丢失，请重新登录"
DEFAULT_CONFIG = Path(__file__).resolve().parent / "sandbox.yaml"
#: the ledger file of the rules shipped in the package (``rules/ledger.yaml`` in the repository)
SHIPPED_LEDGER: Final = resources.files("connector.rules").joinpath("ledger.yaml")


@dataclass
class Faults:
    """Fault injection switches (rates are probabilities per call).

    Late commit (a slow or locked server): a write request (Save, BatchSave, Draft, Submit, Audit, UnAudit,
    Delete) that *arrives* during a slow window waits ``slow_ms`` before it is applied, then answers — by
    which time a client with a shorter timeout has given up, although the write still commits. Slow windows
    last ``slow_for_s`` out of every ``slow_every_s`` seconds (``slow_every_s`` 0: every write is slow).
    """

    latency_ms: float = 0.0
    http_5xx_rate: float = 0.0
    timeout_after_commit_rate: float = 0.0
    session_ttl_s: float = 0.0
    msgcode13_rate: float = 0.0
    msgcode14_rate: float = 0.0
    slow_ms: float = 0.0
    slow_every_s: float = 0.0
    slow_for_s: float = 0.0

    def update(self, values: Mapping[str, Any]) -> None:
        for k, v in values.items():
            if not hasattr(self, k):
                raise ValueError(f"unknown fault {k!r}")
            try:
                value = float(v)
            except (TypeError, ValueError):
                raise ValueError(f"fault {k!r} must be a number, got {v!r}") from None
            if value < 0:
                raise ValueError(f"fault {k!r} must not be negative, got {value}")
            setattr(self, k, value)

    def slow_at(self, seconds: float) -> bool:
        """Whether a write arriving ``seconds`` after the sandbox started falls into a slow window."""
        if self.slow_ms <= 0:
            return False
        return self.slow_every_s <= 0 or seconds % self.slow_every_s < self.slow_for_s


@dataclass
class SandboxConfig:
    data_centre: str = "sandbox"
    data_centre_name: str = "kingdee-cdc sandbox"
    apps: dict[str, dict[str, Any]] = field(default_factory=dict)  # app_id → {secret, users}
    passwords: dict[str, str] = field(default_factory=dict)
    books: dict[str, Book] = field(default_factory=dict)
    accounts: dict[str, Account] = field(default_factory=dict)
    voucher_groups: dict[str, str] = field(default_factory=lambda: {"PRE001": "记"})
    currencies: dict[str, str] = field(default_factory=lambda: {"PRE001": "CNY"})
    rate_types: set[str] = field(default_factory=lambda: {"HLTX01_SYS"})
    dimension_values: dict[str, set[str]] = field(default_factory=dict)
    dimension_labels: dict[str, str] = field(default_factory=dict)
    key_fields: set[str] = field(default_factory=set)  # custom header fields accepted (e.g. F_KDCDC_KEY)
    faults: Faults = field(default_factory=Faults)
    #: optional PostgreSQL DSN: vouchers survive sandbox restarts (table ``kdcdc_sandbox.vouchers``)
    persist_dsn: str | None = None
    #: requests with a larger body are refused (HTTP 413) before it is read
    max_body_bytes: int = 16 * 1024 * 1024
    #: ``/sandbox/admin/…`` needs ``Authorization: Bearer <token>``; without a token only loopback clients may
    #: use it
    admin_token: str | None = None

    @classmethod
    def load(cls, path: str | Path) -> SandboxConfig:
        """Read a sandbox configuration. ``ledger:`` is a ledger file relative to it, or ``shipped`` for the
        ledger of the rules shipped in the package (what the demo and the tests use)."""
        from connector.mapping._load import ledger_context
        from connector.mapping._spec import LedgerSpec

        path = Path(path)
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        cfg = cls(data_centre=str(raw.get("data_centre", "sandbox")),
                  data_centre_name=str(raw.get("data_centre_name", "kingdee-cdc sandbox")))
        for app in raw.get("apps", []):
            cfg.apps[str(app["app_id"])] = {"secret": str(app["app_secret"]), "users": set(app.get("users", []))}
        cfg.passwords = {str(k): str(v) for k, v in (raw.get("passwords") or {}).items()}
        if raw.get("ledger"):
            ledger_file = SHIPPED_LEDGER if raw["ledger"] == "shipped" else path.parent / raw["ledger"]
            spec = LedgerSpec.model_validate(yaml.safe_load(ledger_file.read_text("utf-8")))
            ctx = ledger_context([spec])
            cfg.books, cfg.accounts = dict(ctx.books), dict(ctx.accounts)
            cfg.dimension_labels = dict(ctx.dimension_labels)
        cfg.voucher_groups.update({str(k): str(v) for k, v in (raw.get("voucher_groups") or {}).items()})
        cfg.currencies.update({str(k): str(v) for k, v in (raw.get("currencies") or {}).items()})
        cfg.rate_types |= set(raw.get("rate_types") or [])
        cfg.dimension_values = {str(k).upper(): set(map(str, v)) for k, v in (raw.get("dimension_values") or {}).items()}
        cfg.key_fields = set(raw.get("key_fields") or [])
        cfg.persist_dsn = raw.get("persist_dsn") or None
        cfg.max_body_bytes = int(raw.get("max_body_bytes") or cfg.max_body_bytes)
        cfg.admin_token = str(raw["admin_token"]) if raw.get("admin_token") else None
        cfg.faults.update(raw.get("faults") or {})
        return cfg


class SandboxState:
    """Vouchers and sessions of one sandbox (thread-safe)."""

    def __init__(self, config: SandboxConfig, seed: int | None = None) -> None:
        self.config = config
        self.lock = threading.Lock()
        self.vouchers: dict[int, dict[str, Any]] = {}
        self.next_id = 100001
        self.numbers: dict[tuple[str, str, str], int] = {}
        self.sessions: dict[str, float] = {}
        self.rng = random.Random(seed)
        self.calls: dict[str, int] = {}
        self.started = time.monotonic()  #: slow windows (late-commit fault) are counted from here
        self.late_commits = 0  #: writes that arrived in a slow window (they commit after slow_ms)
        self._db: Any = None
        if config.persist_dsn:
            self._load(config.persist_dsn)

    # ------------------------------------------------------------------ optional persistence
    def _load(self, dsn: str) -> None:
        import psycopg

        self._db = psycopg.connect(dsn, autocommit=True)
        self._db.execute("CREATE SCHEMA IF NOT EXISTS kdcdc_sandbox")
        self._db.execute("CREATE TABLE IF NOT EXISTS kdcdc_sandbox.vouchers (id bigint PRIMARY KEY, "
                         "record jsonb NOT NULL)")
        for (rec,) in self._db.execute("SELECT record FROM kdcdc_sandbox.vouchers ORDER BY id").fetchall():
            self._index(rec)
            self.vouchers[int(rec["FVOUCHERID"])] = rec
            self.next_id = max(self.next_id, int(rec["FVOUCHERID"]) + 1)
            k = (rec["book"], rec["FDate"][:7], rec["group"])
            self.numbers[k] = max(self.numbers.get(k, 0), int(rec["FVOUCHERGROUPNO"]))

    def persist(self, rec: dict[str, Any] | None = None, *, deleted: int | None = None) -> None:
        """Write one voucher (or its deletion) through to PostgreSQL when persistence is on (caller holds the lock)."""
        if self._db is None:
            return
        if deleted is not None:
            self._db.execute("DELETE FROM kdcdc_sandbox.vouchers WHERE id = %s", (deleted,))
        elif rec is not None:
            body = json.dumps({k: v for k, v in rec.items() if not k.startswith("_")}, default=str)
            self._db.execute("INSERT INTO kdcdc_sandbox.vouchers (id, record) VALUES (%s, %s) ON CONFLICT (id) DO "
                             "UPDATE SET record = EXCLUDED.record", (rec["FVOUCHERID"], body))

    def close(self) -> None:
        if self._db is not None:
            self._db.close()

    # ------------------------------------------------------------------ sessions
    def new_session(self) -> str:
        sid = secrets.token_hex(16)
        with self.lock:
            self.sessions[sid] = time.monotonic()
        return sid

    def session_valid(self, sid: str) -> bool:
        with self.lock:
            started = self.sessions.get(sid)
        if started is None:
            return False
        ttl = self.config.faults.session_ttl_s
        return not ttl or time.monotonic() - started < ttl

    # ------------------------------------------------------------------ vouchers
    def validate(self, model: Mapping[str, Any]) -> list[tuple[str, str]]:
        """Kingdee-like validation of one GL_VOUCHER model: [(FieldName, Message)]."""
        cfg = self.config
        errs: list[tuple[str, str]] = []
        book_no = _num(model.get("FAccountBookID"))
        book = cfg.books.get(book_no or "")
        if book is None:
            errs.append(("FAccountBookID", f"字段“账簿”是必填项或值“{book_no}”不存在"))
        group = _num(model.get("FVOUCHERGROUPID"))
        if group not in cfg.voucher_groups:
            errs.append(("FVOUCHERGROUPID", f"凭证字“{group}”不存在"))
        try:
            day = date.fromisoformat(str(model.get("FDate", ""))[:10])
        except ValueError:
            errs.append(("FDate", "字段“日期”是必填项"))
            day = None
        if book is not None and day is not None and not book.period_open(f"{day:%Y-%m}"):
            errs.append(("FDate", f"{day:%Y}年第{day.month}期已结账，不能保存凭证 (period closed)"))
        entries = model.get("FEntity") or []
        if not isinstance(entries, list) or len(entries) < 2:
            errs.append(("FEntity", "凭证分录至少需要两行 (at least two entries)"))
            return errs
        debit = credit = Decimal(0)
        for i, e in enumerate(entries, 1):
            acct_no = _num(e.get("FACCOUNTID"))
            acct = cfg.accounts.get(acct_no or "")
            if acct is None:
                errs.append(("FACCOUNTID", f"第{i}行分录：科目编码“{acct_no}”不存在"))
                continue
            if not acct.leaf:
                errs.append(("FACCOUNTID", f"第{i}行分录：科目（{acct.label}）不是明细科目，不能录入凭证"))
            if acct.frozen:
                errs.append(("FACCOUNTID", f"第{i}行分录：科目（{acct.label}）已禁用"))
            detail = e.get("FDetailID") or {}
            if not isinstance(detail, Mapping):
                errs.append(("FDetailID", '无法将类型为"Kingdee.BOS.JSON.JSONArray"的对象强制转换为类型"Dictionary"'))
                detail = {}
            have = {slot_of(k): _num(v) for k, v in detail.items() if "__" in k}
            missing = [s for s in sorted(acct.required_dimensions)
                       if not have.get(s) or (s in cfg.dimension_values and have[s] not in cfg.dimension_values[s])]
            if missing:
                names = "、".join(cfg.dimension_labels.get(s) or DIMENSION_LABELS.get(s, s) for s in missing)
                errs.append(("FVOUCHERID", f"第{i}行分录：科目（{acct.label}）设置的下列必录维度未录入或不可用：{names}"))
            cur = _num(e.get("FCURRENCYID"))
            if cur not in cfg.currencies:
                errs.append(("FCURRENCYID", f"第{i}行分录：币别“{cur}”不存在"))
            if _num(e.get("FEXCHANGERATETYPE")) not in cfg.rate_types:
                errs.append(("FEXCHANGERATETYPE", f"第{i}行分录：汇率类型“{_num(e.get('FEXCHANGERATETYPE'))}”不存在"))
            d, c = _dec(e.get("FDEBIT")), _dec(e.get("FCREDIT"))
            debit += d
            credit += c
        if debit != credit:
            errs.append(("FEntity", f"借贷不平衡：借方合计 {debit}，贷方合计 {credit} (debits and credits differ)"))
        return errs

    def store(self, model: Mapping[str, Any], status: str) -> dict[str, Any]:
        model = _plain(model)  # (outside the lock: the server's other requests need not wait for it)
        book = _num(model.get("FAccountBookID")) or ""
        group = _num(model.get("FVOUCHERGROUPID")) or ""
        day = date.fromisoformat(str(model["FDate"])[:10])
        with self.lock:
            vid = self.next_id
            self.next_id += 1
            k = (book, f"{day:%Y-%m}", group)
            self.numbers[k] = self.numbers.get(k, 0) + 1
            no = self.numbers[k]
            rec = {"FVOUCHERID": vid, "FBillNo": f"{self.config.voucher_groups.get(group, group)}-{day:%Y%m}-{no:05d}",
                   "FVOUCHERGROUPNO": str(no), "FDocumentStatus": status if status in ("Z", "A") else "A",
                   "FDate": day.isoformat(), "FYEAR": day.year, "FPERIOD": day.month, "book": book, "group": group,
                   "model": model, "FInvalid": 0}
            self._index(rec)
            self.vouchers[vid] = rec
            self.persist(rec)
        return rec

    def copy(self, vid: int, status: str | None = None) -> dict[str, Any] | None:
        """A second copy of stored voucher ``vid`` (same model, its own id and number), optionally in
        document status ``status`` (A/B/C/D/Z): what a client that sent a voucher twice leaves behind."""
        with self.lock:
            rec = self.vouchers.get(vid)
        if rec is None:
            return None
        new = self.store(rec["model"], "A")
        if status:
            if status not in ("A", "B", "C", "D", "Z"):
                raise ValueError(f"document status must be one of A, B, C, D, Z, got {status!r}")
            with self.lock:
                new["FDocumentStatus"] = status
                for view in (new["_head"], *new["_rows"]):
                    view["fdocumentstatus"] = status
                self.persist(new)
        return new

    def account_rows(self) -> list[dict[str, Any]]:
        """The chart of accounts as ``BD_Account`` query rows (lower-cased field keys)."""
        out = []
        for i, a in enumerate(sorted(self.config.accounts.values(), key=lambda a: a.number), 1):
            out.append({"facctid": 100000 + i, "fnumber": a.number, "fname": a.name,
                        "fdc": 1 if a.direction is Side.DEBIT else -1, "fisdetail": a.leaf,
                        "fforbidstatus": "B" if a.frozen else "A", "fdocumentstatus": "C"})
        return out

    def rows(self, entry_level: bool) -> list[dict[str, Any]]:
        """Flattened, lower-cased field views for queries (one per entry, or one per voucher)."""
        with self.lock:
            vouchers = list(self.vouchers.values())
        out: list[dict[str, Any]] = []
        for v in vouchers:
            if entry_level:
                out.extend(v["_rows"])
            else:
                out.append(v["_head"])
        return out

    @staticmethod
    def _index(v: dict[str, Any]) -> None:
        """Precompute the query views of a stored voucher (queries run often, stores once)."""
        m = v["model"]
        head: dict[str, Any] = {
            "fvoucherid": v["FVOUCHERID"], "fbillno": v["FBillNo"], "fvouchergroupno": v["FVOUCHERGROUPNO"],
            "fdate": v["FDate"], "fyear": v["FYEAR"], "fperiod": v["FPERIOD"], "fdocumentstatus": v["FDocumentStatus"],
            "faccountbookid.fnumber": v["book"], "faccountbookid": v["book"], "fvouchergroupid.fnumber": v["group"],
            "finvalid": v["FInvalid"]}
        for k, val in m.items():
            if k.upper().startswith("F_"):
                head[k.lower()] = val
        per_entry = []
        for seq, e in enumerate(m.get("FEntity") or [], 1):
            row = dict(head)
            row.update({"fentity_fentryid": v["FVOUCHERID"] * 1000 + seq, "fentity_fseq": seq,
                        "fexplanation": e.get("FEXPLANATION"), "faccountid.fnumber": _num(e.get("FACCOUNTID")),
                        "fdebit": _dec(e.get("FDEBIT")), "fcredit": _dec(e.get("FCREDIT")),
                        "famountfor": _dec(e.get("FAMOUNTFOR")), "fdc": e.get("FDC"),
                        "fcurrencyid.fnumber": _num(e.get("FCURRENCYID")),
                        "fexchangerate": _dec(e.get("FEXCHANGERATE"))})
            for dk, dv in (e.get("FDetailID") or {}).items():
                row[f"fdetailid.{dk.lower()}.fnumber"] = _num(dv)
                # the dotted path integrations use in queries: FDetailID.FFLEX4.FNumber (reference §4)
                row[f"fdetailid.{dk.split('__', 1)[-1].lower()}.fnumber"] = _num(dv)
            per_entry.append(row)
        head["_entries"] = per_entry
        v["_head"], v["_rows"] = head, per_entry


def _num(ref: Any) -> str | None:
    if type(ref) is dict or isinstance(ref, Mapping):  # (a parsed body holds dicts: no ABC check for them)
        v = ref.get("FNumber") if "FNumber" in ref else ref.get("FNUMBER")
        return None if v is None else str(v)
    return None if ref is None else str(ref)


_ZERO: Final = Decimal(0)


def _dec(v: Any) -> Decimal:
    if type(v) is Decimal:  # (parsed amounts already are: no round trip through their text)
        return v
    try:
        return Decimal(str(v)) if v not in (None, "") else _ZERO
    except Exception:
        return _ZERO


def _status(ok: bool, *, errors: list[dict[str, Any]] | None = None, success: list[dict[str, Any]] | None = None,
            msg_code: int = 0) -> dict[str, Any]:
    return {"ErrorCode": "" if ok else 500, "IsSuccess": ok, "Errors": errors or [],
            "SuccessEntitys": success or [], "SuccessMessages": [], "MsgCode": msg_code}


def envelope(ok: bool, **kw: Any) -> dict[str, Any]:
    extra = {k: kw.pop(k) for k in ("Id", "Number", "NeedReturnData") if k in kw}
    return {"Result": {"ResponseStatus": _status(ok, **kw), **extra}}


#: A request body with every JSON number that has a fraction or exponent as a ``Decimal`` (amounts stay exact, as in
#: Kingdee). msgspec, with the standard library for what it refuses (NaN, integers beyond 64 bits): the same values
#: at a fraction of the sandbox's CPU — on one host with the poster it competed with the client it measures.
_DECODE: Final = msgspec.json.Decoder(float_hook=Decimal)


def _parse(raw: bytes) -> Any:
    try:
        return _DECODE.decode(raw)
    except msgspec.DecodeError:
        return json.loads(raw, parse_float=Decimal)


#: A stored model: plain JSON values, amounts as their exact text (what ``json.dumps(model, default=str)`` wrote)
_STORE: Final = msgspec.json.Encoder(enc_hook=str)


def _plain(model: Mapping[str, Any]) -> Any:
    return msgspec.json.decode(_STORE.encode(model))


class _DropConnection(Exception):
    """Fault: the request was applied but the response is lost."""


_WRITES = frozenset({"Save", "BatchSave", "Draft", "Submit", "Audit", "UnAudit", "Delete"})


class SandboxHandler(BaseHTTPRequestHandler):
    server: SandboxServer
    protocol_version = "HTTP/1.1"
    #: a client that stops sending (or never sends its body) is dropped instead of holding a thread forever
    timeout = 60
    #: TCP_NODELAY: a reply is written as headers, then body; with Nagle on, the body waited for the client's
    #: delayed ACK of the headers (40 ms on Linux) on every kept-alive call — a stall Kingdee's IIS does not have,
    #: which made each call 60+ ms instead of the configured latency
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # quiet by default
        return

    def _admin_allowed(self) -> bool:
        """Admin endpoints change or reveal the whole sandbox: a configured token, or loopback clients only."""
        token = self.server.state.config.admin_token
        if token:
            given = self.headers.get("Authorization", "")
            if secrets.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return True
        elif self.client_address[0] in ("127.0.0.1", "::1"):
            return True
        self._reply(403, {"error": "admin endpoints need the sandbox's admin token (Authorization: Bearer …)"
                                   if token else "admin endpoints answer loopback clients only (or set admin_token)"})
        return False

    def do_GET(self) -> None:
        if self.path.startswith("/sandbox/admin/") and not self._admin_allowed():
            return
        if self.path.startswith("/sandbox/admin/vouchers"):
            with self.server.state.lock:
                body = [{k: v for k, v in rec.items() if not k.startswith("_")}
                        for rec in self.server.state.vouchers.values()]
            self._reply(200, body)
        elif self.path.startswith("/sandbox/health"):
            self._reply(200, {"ok": True})
        else:
            self._reply(404, {"error": "not found"})

    def do_POST(self) -> None:
        arrived = time.monotonic()
        length_text = self.headers.get("Content-Length") or "0"
        if not length_text.isdigit():
            self.close_connection = True
            self._reply(400, {"error": f"Content-Length {length_text[:20]!r} is not a number"})
            return
        length = int(length_text)
        if length > self.server.state.config.max_body_bytes:
            self.close_connection = True  # the body is not read: the connection cannot be reused
            self._reply(413, {"error": f"request body of {length:,} bytes is larger than the sandbox accepts "
                                       f"({self.server.state.config.max_body_bytes:,})"})
            return
        raw = self.rfile.read(length)
        try:
            body = _parse(raw or b"{}")  # amounts stay exact, as in Kingdee
        except ValueError:
            self._reply(200, envelope(False, errors=[{"FieldName": "", "Message": "请求不是合法的JSON", "DIndex": 0}],
                                      msg_code=8))
            return
        if self.path.startswith("/sandbox/admin/"):
            if self._admin_allowed():
                self._admin(self.path.rsplit("/", 1)[-1], body)
            return
        service = self.path.rsplit("/", 1)[-1].removesuffix(".common.kdsvc")
        state = self.server.state
        state.calls[service.rsplit(".", 1)[-1]] = state.calls.get(service.rsplit(".", 1)[-1], 0) + 1
        faults = state.config.faults
        if faults.latency_ms:
            time.sleep(faults.latency_ms / 1000)
        try:
            if ".AuthService." in service:
                self._auth(service.rsplit(".", 1)[-1], body)
                return
            cookie = self._authenticate()
            if cookie is None:
                self._reply(200, envelope(False, errors=[{"FieldName": None, "Message": SESSION_LOST, "DIndex": 0}],
                                          msg_code=1))
                return
            r = state.rng.random()
            if r < faults.msgcode13_rate:
                self._reply(200, envelope(False, errors=[{"FieldName": "", "Message": "网控冲突，请稍后再试",
                                                          "DIndex": 0}], msg_code=13), cookie)
                return
            if r < faults.msgcode13_rate + faults.msgcode14_rate:
                self._reply(200, envelope(False, errors=[{"FieldName": "", "Message": "调用频率超过限制", "DIndex": 0}],
                                          msg_code=14), cookie)
                return
            if state.rng.random() < faults.http_5xx_rate:
                self._reply(503, {"error": "Service Unavailable (injected)"}, cookie)
                return
            op = service.rsplit(".", 1)[-1]
            if op in _WRITES and faults.slow_at(arrived - state.started):
                with state.lock:
                    state.late_commits += 1
                time.sleep(faults.slow_ms / 1000)  # a locked or slow server: the write is applied late
            result = self._dispatch(op, body)
            if state.rng.random() < faults.timeout_after_commit_rate and service.endswith(("Save", "BatchSave")):
                raise _DropConnection()
            self._reply(200, result, cookie)
        except _DropConnection:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        except (FilterError, KeyError, TypeError, ValueError) as e:
            self._reply(200, envelope(False, errors=[{"FieldName": "", "Message": f"参数错误: {e}", "DIndex": 0}],
                                      msg_code=8))

    # ------------------------------------------------------------------ plumbing
    def _reply(self, code: int, body: Any, cookie: str | None = None) -> None:
        data = kingdee_json(body)
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            if cookie:
                self.send_header("Set-Cookie", f"kdservice-sessionid={cookie}; path=/")
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting (late commit)
            self.close_connection = True

    def _authenticate(self) -> str | None:
        """Return the session id to use (new or existing) or None when the caller is not authenticated."""
        state = self.server.state
        sid = self.headers.get("kdservice-sessionid") or self._cookie_sid()
        if sid and state.session_valid(sid):
            return sid
        if sid and state.config.faults.session_ttl_s:
            return None  # an expired session is reported as lost, even on a signed request
        if self.headers.get("X-Kd-Appkey") and self._signature_ok():
            return state.new_session()
        return None

    def _cookie_sid(self) -> str | None:
        for part in (self.headers.get("Cookie") or "").split(";"):
            k, _, v = part.strip().partition("=")
            if k == "kdservice-sessionid":
                return v
        return None

    def _signature_ok(self) -> bool:
        cfg = self.server.state.config
        h = self.headers
        app_id = h.get("X-Kd-Appkey", "")
        app = cfg.apps.get(app_id)
        if app is None:
            return False
        try:
            data = base64.b64decode(h.get("X-Kd-Appdata", "")).decode()
            acct, user, lcid, org = data.split(",")
        except (ValueError, UnicodeDecodeError):
            return False
        if acct != cfg.data_centre or (app["users"] and user not in app["users"]):
            return False
        ts = h.get("x-api-timestamp", "0")
        if not ts.isdigit() or abs(time.time() - int(ts)) > 900:
            return False
        sign = f"POST\n{encoded_path(self.path)}\n\nx-api-nonce:{h.get('x-api-nonce', '')}\nx-api-timestamp:{ts}\n"
        ok_api = h.get("X-Api-Signature") == hmac_b64hex(sign, client_secret(app_id))
        ok_kd = h.get("X-Kd-Signature") == hmac_b64hex(app_id + app_data(acct, user, int(lcid), int(org)),
                                                        app["secret"])
        return ok_api and ok_kd

    def _auth(self, op: str, body: Mapping[str, Any]) -> None:
        cfg, state = self.server.state.config, self.server.state
        p = list(body.get("parameters") or [])
        ok = False
        if op == "LoginBySign" and len(p) >= 5:
            acct, user, app_id, ts, sign = str(p[0]), str(p[1]), str(p[2]), int(p[3]), str(p[4])
            app = cfg.apps.get(app_id)
            ok = bool(app) and acct == cfg.data_centre and abs(time.time() - ts) < 900 and \
                sign == login_sign(acct, user, app_id, app["secret"] if app else "", ts)
        elif op == "LoginByAppSecret" and len(p) >= 4:
            app = cfg.apps.get(str(p[2]))
            ok = bool(app) and str(p[0]) == cfg.data_centre and app is not None and app["secret"] == str(p[3])
        elif op == "ValidateUser" and len(p) >= 3:
            ok = str(p[0]) == cfg.data_centre and cfg.passwords.get(str(p[1])) == str(p[2])
        elif op == "Logout":
            self._reply(200, {"Message": "", "LoginResultType": 1})
            return
        if not ok:
            self._reply(200, {"Message": "用户或密码错误", "MessageCode": "", "LoginResultType": 0,
                              "IsSuccessByAPI": False})
            return
        sid = state.new_session()
        self._reply(200, {"Message": "", "MessageCode": "CheckPasswordPolicy", "LoginResultType": 1,
                          "KDSVCSessionId": sid, "Context": {"UserName": str(p[1]), "DBid": cfg.data_centre,
                                                             "SessionId": sid}, "IsSuccessByAPI": True}, sid)

    def _admin(self, op: str, body: Mapping[str, Any]) -> None:
        state = self.server.state
        if op == "faults":
            try:
                state.config.faults.update(body)
            except ValueError as e:
                self._reply(400, {"error": str(e)})
                return
            self._reply(200, state.config.faults.__dict__)
        elif op == "reset":
            with state.lock:
                for vid in list(state.vouchers):
                    state.persist(deleted=vid)
                state.vouchers.clear()
                state.numbers.clear()
                state.sessions.clear()
            self._reply(200, {"ok": True})
        elif op == "expire_sessions":
            with state.lock:
                state.sessions.clear()
            self._reply(200, {"ok": True})
        elif op == "copy_voucher":  # duplicate drills: {"id": 100001, "status": "C"} puts a voucher in twice
            try:
                copied = state.copy(int(body["id"]), body.get("status"))
            except (KeyError, TypeError, ValueError) as e:
                self._reply(400, {"error": f"copy_voucher needs id (an FVOUCHERID) and optionally status "
                                           f"(A, B, C, D or Z): {e}"})
                return
            if copied is None:
                self._reply(404, {"error": f"no voucher with id {body['id']}"})
                return
            self._reply(200, {"id": copied["FVOUCHERID"], "number": copied["FBillNo"],
                              "status": copied["FDocumentStatus"]})
        elif op == "delete_voucher":  # for reconciliation drills: a voucher vanishes from Kingdee
            with state.lock:
                removed = state.vouchers.pop(int(body["id"]), None)
                if removed is not None:
                    state.persist(deleted=int(body["id"]))
            self._reply(200, {"removed": removed is not None})
        else:
            self._reply(404, {"error": f"unknown admin operation {op}"})

    # ------------------------------------------------------------------ operations
    def _dispatch(self, op: str, body: Mapping[str, Any]) -> Any:
        state = self.server.state
        data = body.get("data") or {}
        form = body.get("formid") or data.get("FormId")
        if op in ("Save", "BatchSave", "Draft"):
            if form != "GL_VOUCHER":
                return envelope(False, errors=[{"FieldName": "", "Message": f"表单{form}不受沙箱支持", "DIndex": 0}],
                                msg_code=5)
            models = data.get("Model")
            models = models if isinstance(models, list) else [models]
            success, errors, returned = [], [], []
            for i, m in enumerate(models):
                errs = state.validate(m) if isinstance(m, Mapping) else [("Model", "数据包不是对象")]
                if errs:
                    errors += [{"FieldName": f, "Message": msg, "DIndex": i} for f, msg in errs]
                    continue
                rec = state.store(m, "Z" if op == "Draft" else str(m.get("FDocumentStatus") or "A"))
                success.append({"Id": str(rec["FVOUCHERID"]), "Number": rec["FBillNo"], "DIndex": i})
                returned.append({"FVOUCHERID": rec["FVOUCHERID"], "FBillNo": rec["FBillNo"],
                                 "FVOUCHERGROUPNO": rec["FVOUCHERGROUPNO"], "DIndex": i})
            ok = not errors
            extra: dict[str, Any] = {"NeedReturnData": returned}
            if op != "BatchSave" and success:
                extra.update(Id=success[0]["Id"], Number=success[0]["Number"])
            result = envelope(ok, errors=errors, success=success, msg_code=0 if ok else 11, **extra)
            if body.get("beginmethod") == "BeginQueryImpl":
                return {"Status": 2, "TaskId": secrets.token_hex(8), "Result": result}
            return result
        if op in ("Submit", "Audit", "UnAudit", "Delete"):
            return self._transition(op, data)
        if op == "View":
            found = self._find(data)
            if found is None:
                return envelope(False, errors=[{"FieldName": "", "Message": "未找到对应数据", "DIndex": 0}], msg_code=10)
            return {"Result": {"ResponseStatus": _status(True), "Result": {
                "Id": found["FVOUCHERID"], "BillNo": found["FBillNo"], "VOUCHERGROUPNO": found["FVOUCHERGROUPNO"],
                "DocumentStatus": found["FDocumentStatus"], "Date": found["FDate"], **found["model"]}}}
        if op in ("ExecuteBillQuery", "BillQuery"):
            return self._query(op, data)
        if op == "QueryBusinessInfo":
            return {"Result": {"ResponseStatus": _status(True), "NeedReturnData": [{
                "Id": "GL_VOUCHER", "Name": "凭证", "Operations": ["Save", "Draft", "View", "Submit", "Audit", "UnAudit",
                                                                 "Delete", "BatchSave", "ExecuteBillQuery"]}]}}
        if op == "GetDataCenterList":
            return [{"Id": state.config.data_centre, "Name": state.config.data_centre_name}]
        if op == "QueryAsyncResult":
            return {"Status": 2, "Result": envelope(True)}
        return envelope(False, errors=[{"FieldName": "", "Message": f"不支持的操作 {op}", "DIndex": 0}], msg_code=3)

    def _find(self, data: Mapping[str, Any]) -> dict[str, Any] | None:
        state = self.server.state
        with state.lock:
            if data.get("Id"):
                return state.vouchers.get(int(data["Id"]))
            for rec in state.vouchers.values():
                if rec["FBillNo"] == data.get("Number"):
                    return rec
        return None

    def _transition(self, op: str, data: Mapping[str, Any]) -> Any:
        state = self.server.state
        ids = [int(x) for x in str(data.get("Ids") or "").split(",") if x.strip()]
        numbers = set(data.get("Numbers") or [])
        allowed = {"Submit": ({"A", "D", "Z"}, "B"), "Audit": ({"B"}, "C"), "UnAudit": ({"C"}, "D"),
                   "Delete": ({"A", "D", "Z"}, None)}[op]
        success, errors = [], []
        with state.lock:
            targets = [v for v in state.vouchers.values() if v["FVOUCHERID"] in ids or v["FBillNo"] in numbers]
            found = {v["FVOUCHERID"] for v in targets} | {v["FBillNo"] for v in targets}
            for i, missing in enumerate([x for x in [*ids, *numbers] if x not in found]):
                errors.append({"FieldName": "", "Message": f"未找到对应数据 {missing}", "DIndex": i})
            for i, v in enumerate(targets):
                if v["FDocumentStatus"] not in allowed[0]:
                    errors.append({"FieldName": "FDocumentStatus",
                                   "Message": f"凭证{v['FBillNo']}当前状态{v['FDocumentStatus']}不允许{op}", "DIndex": i})
                    continue
                if allowed[1] is None:
                    del state.vouchers[v["FVOUCHERID"]]
                    state.persist(deleted=v["FVOUCHERID"])
                else:
                    v["FDocumentStatus"] = allowed[1]
                    for view in (v["_head"], *v["_rows"]):
                        view["fdocumentstatus"] = allowed[1]
                    state.persist(v)
                success.append({"Id": str(v["FVOUCHERID"]), "Number": v["FBillNo"], "DIndex": i})
        return envelope(not errors, errors=errors, success=success, msg_code=0 if not errors else 12)

    def _query(self, op: str, data: Mapping[str, Any]) -> Any:
        form = data.get("FormId")
        if form not in ("GL_VOUCHER", "BD_Account"):
            return [[envelope(False, errors=[{"FieldName": "FormId", "Message": "表单不存在", "DIndex": 0}],
                              msg_code=5)]]
        keys = [k.strip() for k in str(data.get("FieldKeys") or "").split(",") if k.strip()]
        flt = str(data.get("FilterString") or "")
        pred = compile_filter(flt)
        # The poster's look-up by key ("FEXPLANATION like '%kdcdc:K%' or …", up to a chunk of keys) would
        # evaluate every term on every entry of every voucher: narrow to the entries carrying one of the
        # keys first (Kingdee answers it from its database), then apply the full filter to those.
        markers = _marker_keys(flt)
        if markers is not None and form == "GL_VOUCHER":
            pred = _narrowed(pred, markers)
        rows = []
        if form == "BD_Account":
            rows = [r for r in self.server.state.account_rows() if pred(r)]
        else:
            entry_level = any(k.lower() not in _HEADER_FIELDS and not k.upper().startswith("F_") for k in keys)
            for r in self.server.state.rows(entry_level):
                if entry_level:
                    if pred(r):
                        rows.append(r)
                elif pred(r) or any(pred(e) for e in r["_entries"]):
                    rows.append(r)
        start = int(data.get("StartRow") or 0)
        limit = int(data.get("Limit") or 0) or len(rows)
        rows = rows[start:start + limit]
        if op == "BillQuery":
            return [{k: r.get(k.lower()) for k in keys} for r in rows]
        return [[r.get(k.lower()) for k in keys] for r in rows]


_MARKER_TERM = re.compile(r"\s*FEXPLANATION\s+like\s+'%kdcdc:([^%']+)%'\s*", re.IGNORECASE)
_MARKER_IN_TEXT = re.compile(r"kdcdc:([^\]\s]+)")


def _marker_keys(flt: str) -> frozenset[str] | None:
    """The keys of a filter that is only ``FEXPLANATION like '%kdcdc:<key>%'`` terms joined by ``or``."""
    terms = re.split(r"\s+or\s+", flt, flags=re.IGNORECASE) if flt.strip() else []
    found = [_MARKER_TERM.fullmatch(t) for t in terms]
    if not found or not all(found):
        return None
    return frozenset(m.group(1) for m in found if m is not None)


def _narrowed(pred: Callable[[Mapping[str, Any]], bool], keys: frozenset[str]
              ) -> Callable[[Mapping[str, Any]], bool]:
    def check(row: Mapping[str, Any]) -> bool:
        # LIKE '%kdcdc:K%' holds when K is a prefix of the marker's key: test the prefixes, not every term
        m = _MARKER_IN_TEXT.search(str(row.get("fexplanation") or ""))
        if m is None:
            return False
        marker = m.group(1)
        return any(marker[:i] in keys for i in range(1, len(marker) + 1)) and pred(row)
    return check


_HEADER_FIELDS = {"fvoucherid", "fbillno", "fvouchergroupno", "fdate", "fyear", "fperiod", "fdocumentstatus",
                  "faccountbookid.fnumber", "faccountbookid", "fvouchergroupid.fnumber", "finvalid"}


class SandboxServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], config: SandboxConfig, seed: int | None = None) -> None:
        super().__init__(address, SandboxHandler)
        self.state = SandboxState(config, seed)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host_text = host.decode() if isinstance(host, bytes) else str(host)
        return f"http://{host_text}:{port}/k3cloud/"


@dataclass
class RunningSandbox:
    server: SandboxServer
    thread: threading.Thread

    @property
    def url(self) -> str:
        return self.server.url

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.server.state.close()


def start_sandbox(config: SandboxConfig | str | Path | None = None, *, host: str = "127.0.0.1", port: int = 0,
                  seed: int | None = None) -> RunningSandbox:
    """Start a sandbox in a background thread (tests, the demo); ``kingdee-cdc sandbox`` runs it in the foreground."""
    cfg = config if isinstance(config, SandboxConfig) else SandboxConfig.load(config or DEFAULT_CONFIG)
    server = SandboxServer((host, port), cfg, seed)
    thread = threading.Thread(target=server.serve_forever, name="kingdee-sandbox", daemon=True)
    thread.start()
    return RunningSandbox(server, thread)
