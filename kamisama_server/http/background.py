"""Run an ``HttpServer`` on its own event loop in a background thread.

For tests and embedding: the caller binds a socket, this serves it until
``stop()`` (which drains). The engine itself never needs a thread.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from types import TracebackType
from typing import Any, TypeVar

from .config import HttpConfig
from .exchange import AppHandler
from .server import HttpServer
from .state import WebSocketSupport

T = TypeVar("T")


class BackgroundServer:
    """``with BackgroundServer(handler) as srv: httpx.get(srv.url)``."""

    def __init__(
        self,
        handler: AppHandler | Callable[[], AppHandler],
        config: HttpConfig | None = None,
        *,
        sock: socket.socket | None = None,
        websocket: WebSocketSupport | Callable[[], WebSocketSupport] | None = None,
        before_start: Callable[[], Awaitable[None]] | None = None,
        after_drain: Callable[[], Awaitable[None]] | None = None,
        drain_timeout: float | None = 10.0,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._handler = handler
        self._websocket = websocket
        self.config = config or HttpConfig()
        if sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", 0))
            sock.listen(self.config.backlog)
        self.sock = sock
        self.host, self.port = sock.getsockname()[:2]
        self.url = f"http://{self.host}:{self.port}"
        self._before_start = before_start
        self._after_drain = after_drain
        self._drain_timeout = drain_timeout
        self.loop = loop or asyncio.new_event_loop()
        self.server: HttpServer | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._stopped = False

    def start(self) -> BackgroundServer:
        self._thread.start()
        self.call(self._start())
        return self

    async def _start(self) -> None:
        if self._before_start is not None:
            await self._before_start()
        handler: Any = self._handler
        websocket: Any = self._websocket
        self.server = HttpServer(handler, self.config, websocket=websocket)
        await self.server.start([self.sock])

    def call(self, coro: Awaitable[T], timeout: float = 30.0) -> T:
        """Run a coroutine on the server's loop and wait for its result."""

        async def wrap() -> T:
            return await coro

        future: Future[T] = asyncio.run_coroutine_threadsafe(wrap(), self.loop)
        return future.result(timeout)

    def drain(self, timeout: float = 30.0) -> None:
        """Graceful shutdown, as a worker's shutdown would do it."""
        server = self.server
        assert server is not None

        async def run() -> None:
            await server.drain(self._drain_timeout)
            if self._after_drain is not None:
                await self._after_drain()

        self.call(run(), timeout)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        try:
            if self.server is not None:
                self.drain()
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            if not self._thread.is_alive():
                self.loop.close()
            self.sock.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
