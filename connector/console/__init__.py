"""The operator console: sync status per source system and book, trace any row to Kingdee and back, triage
rejections and dead letters (requeue them as an admin), and the latest reconciliation per book and period — in the
browser, on the journal that holds every answer.

Served by ``kingdee-cdc console -c config.yaml`` (in the foreground), or by ``kingdee-cdc run`` when
``console.enabled`` is true (in a thread, on its own port ``console.port``, default 9109 — not the ops port: the
console has sign-in, sessions and an action, the ops endpoints are for probes and scrapers). See the "Console"
section of docs/operations.md and decision 0008.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading

from connector.config import Settings
from connector.console._app import Console
from connector.errors import ConfigError

__all__ = ["Console", "ConsoleServer", "serve"]

log = logging.getLogger("kingdee_cdc.console")


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound now: a port in use is a clear error at start, and the port is known at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named explicitly: asyncio sets TCP_NODELAY only on sockets whose protocol says TCP, and without it
    # a kept-alive connection waits for the client's delayed ACK (40 ms) between a response's header and body
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(128)
        return sock
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot serve the console on {host}:{port}: {e.strerror}; set console.port (0 = any free "
                          "port) or console.host") from None


class ConsoleServer:
    """The console on uvicorn: in a background thread (``start``/``stop``, for ``run``) or in the foreground
    (``serve_forever``, which stops on SIGINT/SIGTERM)."""

    def __init__(self, console: Console, *, host: str | None = None, port: int | None = None) -> None:
        import uvicorn

        cs = console.settings.console
        self.console = console
        self.socket = _bind(host if host is not None else cs.host, port if port is not None else cs.port)
        self.server = uvicorn.Server(uvicorn.Config(console.app, log_config=None, access_log=False, lifespan="off",
                                                    server_header=False, timeout_graceful_shutdown=5))
        self.thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.socket.getsockname()[1])

    @property
    def url(self) -> str:
        host = self.socket.getsockname()[0]
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{self.port}"

    def start(self) -> ConsoleServer:
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, name="console-http",
                                       daemon=True)
        self.thread.start()
        log.info("console on %s", self.url)
        return self

    def serve_forever(self) -> None:
        """Serve until SIGINT or SIGTERM, then return (uvicorn hands the signal back to the handlers it found when it
        is done: these do nothing, so the command ends normally, status 0)."""
        previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.server.run(sockets=[self.socket])
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.socket.close()
            self.console.close()

    def stop(self, timeout_s: float = 10.0) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout_s)
        self.socket.close()
        self.console.close()


def serve(settings: Settings) -> ConsoleServer:
    """A console server for the settings (not started)."""
    return ConsoleServer(Console(settings))
