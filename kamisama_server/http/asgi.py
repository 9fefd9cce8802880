"""The ASGI 3 adapter: one engine ``Exchange`` -> one ``app(scope, receive, send)`` call.

The engine already validated the request and enforces framing, limits and
keep-alive; this module only translates messages. Errors are left to the
engine: an exception before ``http.response.start`` becomes a 500 (or the
400/413 of a bad body), after it a close.

Wiring in a worker::

    adapter = AsgiAdapter(app, http_config)
    server = HttpServer(adapter, http_config, websocket=adapter.websocket)
    await adapter.startup()          # lifespan startup, before accepting
    await server.start(sockets)
    ...
    await server.drain(timeout)
    await adapter.shutdown()         # lifespan shutdown, after the drain
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote

from .config import HttpConfig
from .errors import ClientDisconnected
from .exchange import Exchange, ResponseHeaders
from .head import PERCENT
from .lifespan import Lifespan, LifespanMode
from .websocket import UvicornWebSockets, websockets_available

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class AsgiAdapter:
    """Serve an ASGI 3 app on the engine; also owns its lifespan and WebSockets."""

    def __init__(
        self,
        app: ASGIApp,
        config: HttpConfig | None = None,
        *,
        lifespan: LifespanMode = "auto",
        websockets: bool = True,
    ) -> None:
        self.app = app
        self.config = config = config or HttpConfig()
        self.lifespan = Lifespan(app, config, lifespan)
        self.websocket: UvicornWebSockets | None = None
        if websockets and websockets_available():
            self.websocket = UvicornWebSockets(app, config, self.lifespan.state)
        self._root_path = config.root_path
        self._root_raw = config.root_path.encode("ascii")
        # The lifespan's state dict (one object for the worker's life), copied per request.
        self._state = self.lifespan.state if self.lifespan.enabled else None

    async def startup(self) -> None:
        """Lifespan startup; raises ``LifespanFailed`` if the app says it failed."""
        await self.lifespan.startup()

    async def shutdown(self) -> None:
        """Lifespan shutdown; call after ``HttpServer.drain()``."""
        await self.lifespan.shutdown()

    async def __call__(self, exchange: Exchange) -> None:
        head = exchange.head
        raw_path = head.raw_path
        path = raw_path.decode("latin-1")
        if PERCENT in raw_path:  # an int: see head.PERCENT
            path = unquote(path)
        scope: Scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": head.http_version,
            "server": head.server,
            "client": head.client,
            "scheme": head.scheme,
            "method": head.method,
            "root_path": self._root_path,
            "path": self._root_path + path,
            "raw_path": self._root_raw + raw_path,
            "query_string": head.query_string,
            "headers": head.headers,
            "extensions": {"http.response.pathsend": {}},
        }
        state = self._state
        if state is not None:
            scope["state"] = state.copy()
        cycle = _Cycle(exchange)
        await self.app(scope, cycle.receive, cycle.send)


class _Cycle:
    """The receive/send pair of one request.

    The response head is held back until the first body message (ASGI: the
    server must not start the response before one), so the common response,
    one start and one body, leaves in one ``send_now``: one write, no waiting.
    """

    __slots__ = ("complete", "exchange", "headers", "request_done", "started", "status")

    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self.request_done = False
        self.started = False
        self.complete = False
        self.status = 0
        self.headers: ResponseHeaders = []

    async def receive(self) -> Message:
        exchange = self.exchange
        if not self.request_done:
            try:
                body = await exchange.receive()
            except ClientDisconnected:
                self.request_done = True
                return {"type": "http.disconnect"}
            more = bool(body) and not exchange.body_complete
            if not more:
                self.request_done = True
            return {"type": "http.request", "body": body, "more_body": more}
        await exchange.wait_disconnect()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        kind = message["type"]
        exchange = self.exchange
        if not self.started:
            if kind != "http.response.start":
                raise RuntimeError(f"Expected 'http.response.start', got {kind!r}")
            self.started = True
            status = message["status"]
            headers = message.get("headers") or []
            if type(headers) is not list:
                headers = list(headers)  # any iterable of pairs; we read it twice
            exchange.check_head(status, headers)
            self.status = status
            self.headers = headers
        elif self.complete:
            raise RuntimeError(f"Unexpected ASGI message {kind!r} after the response completed")
        elif kind == "http.response.body":
            body = message.get("body", b"")
            more = message.get("more_body", False)
            if not exchange.headers_sent:
                if not more:
                    self.complete = True
                    if exchange.send_now(self.status, self.headers, body):
                        return
                await exchange.send_head(self.status, self.headers)
            if body:
                await exchange.write(body)
            if not more:
                self.complete = True
                await exchange.end()
        elif kind == "http.response.pathsend":
            self.complete = True
            if not exchange.headers_sent:
                await exchange.send_head(self.status, self.headers)
            fd = os.open(message["path"], os.O_RDONLY)
            try:
                await exchange.sendfile(fd, 0, None)
            finally:
                os.close(fd)
            await exchange.end()
        else:
            raise RuntimeError(f"Unexpected ASGI message {kind!r}")
