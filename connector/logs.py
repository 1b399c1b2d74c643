"""Logging: text or one JSON object per line, event context as fields, secrets scrubbed from every line.

Lines that concern an event carry ``source_key`` (system/table/pk@position) and ``voucher_key`` (when
there is one) plus the Kafka coordinates, passed with ``extra=event_context(...)`` — so a log search for a
voucher key finds its whole story. The secret filter replaces every configured secret value wherever it
appears (a DSN in an exception text, a header echoed by a library) before any handler sees the line.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import traceback
from types import TracebackType
from collections.abc import Iterable, Mapping
from typing import Any, Final

from pydantic import BaseModel

CONTEXT_FIELDS: Final = ("source_key", "voucher_key", "topic", "partition", "offset", "rule", "reason")

#: ``scheme://user:password@host`` anywhere in a text: the password is masked whether or not it is known
_URL_USERINFO: Final = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^/@\s:'\"]*):(?P<pw>[^/@\s'\"]+)@")
#: every secret of the loaded settings (``register_secrets``), scrubbed from log lines, error messages and
#: tracebacks alike
_KNOWN: set[str] = set()


def register_secrets(values: Iterable[str]) -> None:
    """Remember secret values (≥ 4 characters) so that every later output path can scrub them."""
    _KNOWN.update(v for v in values if v and len(v) >= 4)


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every known secret replaced by ``***`` and every URL's password masked."""
    for s in sorted(_KNOWN.union(secrets), key=len, reverse=True):
        if s in text:
            text = text.replace(s, "***")
    return _URL_USERINFO.sub(r"\g<head>:***@", text)


def event_context(record: Any, voucher_key: str | None = None, **more: Any) -> dict[str, Any]:
    """``extra=`` fields for a log line about one journal record (an ``EventRecord``)."""
    out: dict[str, Any] = {}
    k = getattr(record, "kafka", None)
    if k is not None:
        out |= {"topic": k.topic, "partition": k.partition, "offset": k.offset}
    ev = getattr(record, "event", None)
    if ev is not None:
        pk = ",".join(f"{a}={b}" for a, b in (ev.key or {}).items())
        out["source_key"] = f"{ev.source.name}/{ev.source.table_id}/{pk}@{ev.source.position}"
    vouchers = getattr(record, "vouchers", ())
    if voucher_key is None and vouchers:
        voucher_key = ",".join(v.key for v in vouchers)
    if voucher_key:
        out["voucher_key"] = voucher_key
    return out | more


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {"ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
                                "level": record.levelname, "logger": record.name, "msg": record.getMessage()}
        for f in CONTEXT_FIELDS:
            v = record.__dict__.get(f)
            if v is not None:
                body[f] = v
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return json.dumps(body, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ctx = " ".join(f"{f}={record.__dict__[f]}" for f in CONTEXT_FIELDS if record.__dict__.get(f) is not None)
        return f"{line} [{ctx}]" if ctx else line


class SecretFilter(logging.Filter):
    """Replaces each secret value (≥ 4 characters) with ``***`` in the message, its arguments and tracebacks."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def _scrub(self, text: str) -> str:
        return scrub(text, self.secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self._scrub(record.getMessage())
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = self._scrub(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
            record.msg = f"{record.msg}\n{record.exc_text}"
            record.exc_text = None
        return True


def secret_values(settings: BaseModel) -> list[str]:
    """Every secret in the settings (SecretStr fields, secret-looking passthrough keys, DSN passwords)."""
    from urllib.parse import urlparse

    from pydantic import SecretStr

    found: list[str] = []

    def url_password(value: str) -> None:
        if "://" not in value:
            return
        m = _URL_USERINFO.search(value)
        if m:
            found.append(m.group("pw"))
        try:
            pw = urlparse(value).password
        except ValueError:  # not a parseable URL: the regex above still found its password
            return
        if pw:
            found.append(pw)

    def walk(obj: Any) -> None:
        if isinstance(obj, SecretStr):
            value = obj.get_secret_value()
            found.append(value)
            url_password(value)
        elif isinstance(obj, str):
            url_password(obj)  # a plain URL setting with credentials in it (schema_registry.url …)
        elif isinstance(obj, BaseModel):
            for name in type(obj).model_fields:
                walk(getattr(obj, name))
        elif isinstance(obj, Mapping):  # librdkafka passthrough: secret keys are SecretStr already
            for v in obj.values():
                walk(v)
        elif isinstance(obj, (list, tuple)):  # lists of sections (console.users) and of plain settings
            for v in obj:
                walk(v)
    walk(settings)
    return found


def install_excepthook() -> None:
    """Uncaught exceptions print scrubbed tracebacks (they bypass the logging filter otherwise)."""
    def hook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        sys.stderr.write(scrub("".join(traceback.format_exception(kind, value, tb))))
    sys.excepthook = hook


def setup(level: str = "INFO", fmt: str = "text", secrets: Iterable[str] = ()) -> None:
    register_secrets(secrets)
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(SecretFilter(secrets))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
    # One line per HTTP request is noise at INFO; the Kingdee metrics carry the same facts.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
