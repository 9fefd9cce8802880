"""What every connection of one worker shares: config, handler, counters, cached bytes.

Owned by ``HttpServer``; read on the hot path by ``HttpProtocol`` and
``HttpExchange``, so the bytes they stamp on every response (status lines,
``server``/``date`` headers) are built here once, not per request.
"""

from __future__ import annotations

import asyncio
import http
import logging
from collections.abc import Callable
from email.utils import formatdate
from typing import TYPE_CHECKING, Final, Protocol

from .access import AccessLog
from .config import HttpConfig
from .exchange import AppHandler, ServeNow
from .proxy import TrustedProxies
from .ratelimit import limit_repeats

if TYPE_CHECKING:
    from .protocol import HttpProtocol

error_log = logging.getLogger("kamisama.http")
# 408s, stalls, accept errors repeat under attack: one line per cause, then a count.
limit_repeats(error_log)


class WebSocketSupport(Protocol):
    """What the engine needs to hand an ``Upgrade: websocket`` connection over."""

    def protocol(self) -> asyncio.Protocol:
        """A fresh protocol that will receive the request head and then the transport."""

    async def shutdown(self) -> None:
        """Ask every open WebSocket to close (drain); return when they have."""


def _status_line(code: int) -> bytes:
    try:
        phrase = http.HTTPStatus(code).phrase
    except ValueError:
        phrase = ""
    return b"HTTP/1.1 %d %s\r\n" % (code, phrase.encode("latin-1"))


STATUS_LINES: Final[dict[int, bytes]] = {code: _status_line(code) for code in range(100, 600)}


class EngineState:
    """Shared by all connections of one ``HttpServer``."""

    def __init__(
        self,
        handler: AppHandler,
        config: HttpConfig,
        websocket: WebSocketSupport | None = None,
    ) -> None:
        self.handler = handler
        # The adapter's task-free entry point, if it has one (see exchange.ServeNow).
        self.serve_now: ServeNow | None = getattr(handler, "serve_now", None)
        self.config = config
        self.websocket = websocket
        self.loop: asyncio.AbstractEventLoop | None = None
        self.connections: set[HttpProtocol] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.inflight = 0  # requests whose handler runs (or waits for an app thread)
        self.deferred = 0  # of them, those an adapter took without a task (DEFERRED)
        # New connections whose first request has not started yet, counted against
        # capacity while claims_enabled (a server with capacity: WSGI) for _CLAIM
        # seconds; after a run of silent ones (slow clients) no more are counted.
        self.claims_enabled = False
        self.claims = 0
        self.silent_claims = 0
        # Set by the server: called when connections or requests in flight change.
        self.load_changed: Callable[[], None] | None = None
        # Set by a server that may pass a connection to another worker (see
        # handover.py): called with the bytes that arrived on an idle connection;
        # True means the connection went and the caller drops them.
        self.hand_over: Callable[[HttpProtocol, bytes], bool] | None = None
        self.total_requests = 0
        self.access = AccessLog(config.access_log_format) if config.access_log else None
        self.request_limit = 0  # on_request_limit() once total_requests reaches it
        self.on_request_limit: Callable[[], None] | None = None
        # Bytes of incomplete request heads held, and by whom, oldest first (see
        # HttpProtocol._hold): bounded by config.limit_incomplete_heads.
        self.head_bytes = 0
        self.heads: dict[HttpProtocol, None] = {}
        self.draining = False
        self.idle_grace: float | None = None  # the drain's, for idle keep-alive connections
        self.proxies = TrustedProxies(config.forwarded_allow_ips) if config.proxy_headers else None
        self.server_line = (
            b"server: " + config.server_name.encode("latin-1") + b"\r\n"
            if config.server_header
            else b""
        )
        self.date_line = b""
        self.default_headers = b""
        self.refresh_date()
        self._idle: asyncio.Event | None = None

    def count_response(self) -> None:
        """A response completed (error answers too)."""
        self.total_requests += 1
        if self.total_requests == self.request_limit and self.on_request_limit is not None:
            self.on_request_limit()

    def refresh_date(self) -> None:
        """Called about once a second: the ``date`` header all responses share."""
        if self.config.date_header:
            self.date_line = b"date: " + formatdate(usegmt=True).encode("ascii") + b"\r\n"
        self.default_headers = self.server_line + self.date_line

    def error_response(self, status: int, reason: str = "") -> bytes:
        """A complete plain-text response that closes the connection."""
        body = (reason or STATUS_LINES[status][13:-2].decode("latin-1") or str(status)).encode()
        return b"".join(
            (
                STATUS_LINES[status],
                b"content-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n" % len(body),
                b"connection: close\r\n",
                self.default_headers,
                b"\r\n",
                body,
            )
        )

    # Drain bookkeeping -------------------------------------------------

    def idle_event(self) -> asyncio.Event:
        if self._idle is None:
            self._idle = asyncio.Event()
        self.check_idle()
        return self._idle

    def check_idle(self) -> None:
        """Wake ``drain()`` once no connection and no handler is left."""
        if self._idle is not None and not self.connections and not self.tasks and not self.deferred:
            self._idle.set()

    # Requests in flight ------------------------------------------------

    def request_started(self) -> None:
        self.inflight += 1
        if self.load_changed is not None:
            self.load_changed()

    def request_ended(self) -> None:
        self.inflight -= 1
        if self.load_changed is not None:
            self.load_changed()
