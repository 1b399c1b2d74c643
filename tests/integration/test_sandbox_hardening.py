"""The sandbox listens on a network: request bodies are bounded and its admin endpoints are not open to all."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest

from connector.sandbox import DEFAULT_CONFIG, RunningSandbox, SandboxConfig, start_sandbox


@pytest.fixture
def small_sandbox() -> Iterator[RunningSandbox]:
    cfg = SandboxConfig.load(DEFAULT_CONFIG)
    cfg.max_body_bytes = 4096
    cfg.admin_token = "s3cret-admin"
    sb = start_sandbox(cfg)
    yield sb
    sb.stop()


def _base(sb: RunningSandbox) -> str:
    return sb.url.replace("/k3cloud/", "")


def test_an_oversized_body_is_refused_before_it_is_read(small_sandbox: RunningSandbox) -> None:
    host, port = small_sandbox.server.server_address[:2]
    with socket.create_connection((str(host), int(port)), timeout=10) as s:
        # announce 1 GB and send only the headers: the answer comes at once, nothing waits for the body
        s.sendall(b"POST /k3cloud/Kingdee.BOS.WebApi.ServicesStub.AuthService.ValidateUser.common.kdsvc HTTP/1.1\r\n"
                  b"Host: x\r\nContent-Type: application/json\r\nContent-Length: 1073741824\r\n\r\n")
        head = s.recv(200).decode("latin-1")
    assert head.startswith("HTTP/1.1 413"), head
    r = httpx.post(f"{small_sandbox.url}Kingdee.BOS.WebApi.ServicesStub.AuthService.ValidateUser.common.kdsvc",
                   content=b"{" + b" " * 8000 + b"}", timeout=10)
    assert r.status_code == 413 and "4,096" in r.json()["error"]


def test_admin_endpoints_need_the_token_when_one_is_set(small_sandbox: RunningSandbox) -> None:
    base = _base(small_sandbox)
    assert httpx.post(f"{base}/sandbox/admin/faults", json={"latency_ms": 5}, timeout=10).status_code == 403
    assert httpx.get(f"{base}/sandbox/admin/vouchers", timeout=10).status_code == 403
    assert httpx.post(f"{base}/sandbox/admin/faults", json={"latency_ms": 5}, timeout=10,
                      headers={"Authorization": "Bearer wrong"}).status_code == 403
    ok = httpx.post(f"{base}/sandbox/admin/faults", json={"latency_ms": 5}, timeout=10,
                    headers={"Authorization": "Bearer s3cret-admin"})
    assert ok.status_code == 200 and ok.json()["latency_ms"] == 5
    assert small_sandbox.server.state.config.faults.latency_ms == 5


def _non_loopback_address() -> str | None:
    """An address of this machine other than loopback (the one a route to the outside would use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # no packet is sent: this only picks the outgoing interface
            addr = str(s.getsockname()[0])
        except OSError:
            return None
    return None if addr.startswith("127.") else addr


def test_without_a_token_admin_endpoints_answer_loopback_clients_only() -> None:
    addr = _non_loopback_address()
    if addr is None:
        pytest.skip("this machine has no non-loopback IPv4 address to call from")
    sb = start_sandbox(SandboxConfig.load(DEFAULT_CONFIG), host="0.0.0.0")
    try:
        port = sb.server.server_address[1]
        assert httpx.get(f"http://127.0.0.1:{port}/sandbox/admin/vouchers", timeout=10).status_code == 200
        remote = httpx.get(f"http://{addr}:{port}/sandbox/admin/vouchers", timeout=10)
        assert remote.status_code == 403 and "loopback" in remote.json()["error"]
        # the WebAPI itself answers everyone (it authenticates like Kingdee)
        api = httpx.post(f"http://{addr}:{port}/k3cloud/Kingdee.BOS.WebApi.ServicesStub.AuthService."
                         "ValidateUser.common.kdsvc", json={"parameters": []}, timeout=10)
        assert api.status_code == 200
    finally:
        sb.stop()
