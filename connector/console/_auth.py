"""Who is asking, and may they: users from ``console.users``, sessions, roles and CSRF tokens.

A request is signed in by one of:

1. the session cookie set by the login form (signed with ``console.session_secret``; it names the user and holds a
   random CSRF token for the session);
2. ``Authorization: Basic`` with a user's name and password;
3. ``Authorization: Bearer`` with a user's token.

Each user has a role: ``viewer`` reads every page, ``admin`` may also act (requeue dead letters). Every state-
changing request (POST) must carry the CSRF token of its session — the ``csrf_token`` form field or the
``X-CSRF-Token`` header — and, when the browser sends one, an ``Origin`` of the console itself. Secrets are compared
in constant time and never logged; the login form is throttled per client address.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import secrets
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol
from urllib.parse import urlsplit


class Role(enum.StrEnum):
    VIEWER = "viewer"  #: every page, no action
    ADMIN = "admin"  #: also requeues dead letters


class UserEntry(Protocol):
    """A configured user (``connector.config.ConsoleUser``): its secrets are read only to compare them."""

    @property
    def name(self) -> str: ...

    @property
    def role(self) -> str: ...

    def password_value(self) -> str | None: ...

    def token_value(self) -> str | None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Principal:
    """A signed-in user. ``via``: ``session``, ``basic`` or ``bearer``; ``csrf``: the token its POSTs must carry."""

    name: str
    role: Role
    via: str
    csrf: str

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN


def _same(given: str, expected: str | None) -> bool:
    return expected is not None and hmac.compare_digest(given.encode(), expected.encode())


class Users:
    """The configured users, looked up by name, password or token."""

    def __init__(self, users: Sequence[UserEntry], secret: bytes) -> None:
        self._users = {u.name: u for u in users}
        self._secret = secret

    def __bool__(self) -> bool:
        return bool(self._users)

    def role_of(self, name: str) -> Role | None:
        u = self._users.get(name)
        return Role(u.role) if u is not None else None

    def check_password(self, name: str, password: str) -> UserEntry | None:
        """The user ``name`` if ``password`` is its password or its token."""
        u = self._users.get(name)
        if u is None:
            _same(password, "x" * 32)  # the same work for an unknown name
            return None
        ok = _same(password, u.password_value()) | _same(password, u.token_value())
        return u if ok else None

    def check_token(self, token: str) -> UserEntry | None:
        """The user whose token ``token`` is (every user is compared: no early exit)."""
        found = None
        for u in self._users.values():
            if _same(token, u.token_value()):
                found = u
        return found

    def header_csrf(self, via: str, name: str) -> str:
        """The CSRF token of a user signed in by an Authorization header (no session to hold one)."""
        return hmac.new(self._secret, f"csrf|{via}|{name}".encode(), hashlib.sha256).hexdigest()

    def from_header(self, authorization: str | None) -> Principal | None:
        """The principal an ``Authorization`` header signs in, or None (absent, malformed or wrong)."""
        if not authorization:
            return None
        scheme, _, value = authorization.partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer" and value.strip():
            u = self.check_token(value.strip())
            via = "bearer"
        elif scheme == "basic":
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode()
            except (ValueError, UnicodeDecodeError):
                return None
            name, sep, password = decoded.partition(":")
            if not sep:
                return None
            u = self.check_password(name, password)
            via = "basic"
        else:
            return None
        if u is None:
            return None
        return Principal(name=u.name, role=Role(u.role), via=via, csrf=self.header_csrf(via, u.name))


def new_csrf() -> str:
    return secrets.token_urlsafe(32)


def csrf_ok(principal: Principal | None, given: str | None) -> bool:
    return principal is not None and bool(given) and _same(str(given), principal.csrf)


def origin_ok(origin: str | None, host: str | None, scheme: str) -> bool:
    """A POST's ``Origin`` (when the browser sends one) must be the console's own scheme://host[:port]."""
    if origin is None:
        return True
    if origin == "null" or not host:
        return False
    parts = urlsplit(origin)
    return parts.scheme == scheme and parts.netloc == host


def safe_next(target: str | None, default: str = "/status") -> str:
    """A redirect target after login: a path of this site only (``/trace?q=…``), never another site."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    parts = urlsplit(target)
    return default if parts.scheme or parts.netloc else target


class LoginThrottle:
    """At most ``max_failures`` failed sign-ins per client address in ``window_s``; then refused until they age out."""

    def __init__(self, max_failures: int = 10, window_s: float = 300.0) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, client: str, now: float) -> deque[float]:
        q = self._failures.setdefault(client, deque())
        while q and q[0] <= now - self.window_s:
            q.popleft()
        return q

    def allowed(self, client: str) -> bool:
        with self._lock:
            return len(self._recent(client, time.monotonic())) < self.max_failures

    def failed(self, client: str) -> None:
        with self._lock:
            self._recent(client, time.monotonic()).append(time.monotonic())
            if len(self._failures) > 10_000:  # bounded memory: forget the quietest addresses
                for key in [k for k, q in self._failures.items() if not q][:5_000]:
                    del self._failures[key]

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._failures.pop(client, None)


SESSION_USER: Final = "user"
SESSION_CSRF: Final = "csrf"
SESSION_AT: Final = "at"
