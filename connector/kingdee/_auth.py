"""K/3 Cloud WebAPI authentication, exactly as Kingdee's official SDK 8.2 computes it.

Signed headers (SDK v3, ``BuildHeader``): every request carries ``X-Api-Signature`` (HMAC-SHA256 over the
method, percent-encoded path, nonce and timestamp, keyed by a client secret derived from the AppID) and
``X-Kd-Signature`` (HMAC-SHA256 of AppID + app data, keyed by the AppSecret). Both the client and the
sandbox use these functions, and a test proves them equal to the SDK's output.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Final
from urllib.parse import quote

_SEED: Final = "0054s397p6234378o09pn7q3r5qropr7"  # the SDK's default x-kdapi-secpwd, ROT13-encoded


def _rot13(s: str) -> str:
    out = []
    for ch in s:
        if "a" <= ch <= "z":
            out.append(chr((ord(ch) - 97 + 13) % 26 + 97))
        elif "A" <= ch <= "Z":
            out.append(chr((ord(ch) - 65 + 13) % 26 + 65))
        else:
            out.append(ch)
    return "".join(out)


def client_secret(app_id: str) -> str:
    """The ``X-Api-Signature`` key: base64(base64decode(AppID's 2nd segment) XOR ROT13(seed)); ``""`` if malformed."""
    parts = app_id.split("_")
    if len(parts) != 2 or len(parts[1]) != 32:
        return ""
    try:
        raw = base64.b64decode(parts[1])
    except ValueError:
        return ""
    pad = _rot13(_SEED).encode()
    return base64.b64encode(bytes(b ^ pad[i] for i, b in enumerate(raw))).decode()


def hmac_b64hex(content: str, key: str) -> str:
    """base64( lower-hex( HMAC-SHA256(key, content) ) ) — the SDK's ``HmacSHA256``."""
    digest = hmac.new(key.encode(), content.encode(), hashlib.sha256).hexdigest()
    return base64.b64encode(digest.encode()).decode()


def encoded_path(url_or_path: str) -> str:
    path = url_or_path
    if url_or_path.startswith("http"):
        idx = url_or_path.find("/", 10)
        if idx > -1:
            path = url_or_path[idx:]
    return quote(path, encoding="utf-8").replace("/", "%2F")


def app_data(acct_id: str, username: str, lcid: int, org_num: int = 0) -> str:
    return f"{acct_id},{username},{lcid},{org_num}"


def signed_headers(url: str, *, acct_id: str, username: str, app_id: str, app_secret: str, lcid: int = 2052,
                   org_num: int = 0, timestamp: int) -> dict[str, str]:
    ts = str(timestamp)
    data = app_data(acct_id, username, lcid, org_num)
    sign = f"POST\n{encoded_path(url)}\n\nx-api-nonce:{ts}\nx-api-timestamp:{ts}\n"
    return {
        "X-Api-ClientID": app_id.split("_")[0],
        "X-Api-Auth-Version": "2.0",
        "x-api-timestamp": ts,
        "x-api-nonce": ts,
        "x-api-signheaders": "x-api-timestamp,x-api-nonce",
        "X-Api-Signature": hmac_b64hex(sign, client_secret(app_id)),
        "X-Kd-Appkey": app_id,
        "X-Kd-Appdata": base64.b64encode(data.encode()).decode(),
        "X-Kd-Signature": hmac_b64hex(app_id + data, app_secret),
    }


def login_sign(acct_id: str, username: str, app_id: str, app_secret: str, timestamp: int) -> str:
    """``LoginBySign`` signature: lower-hex SHA-256 of the ordinal-sorted concatenation of the five values."""
    parts = sorted([acct_id, username, app_id, app_secret, str(timestamp)])
    return hashlib.sha256("".join(parts).encode()).hexdigest()
