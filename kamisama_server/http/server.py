"""``HttpServer``: serve an ``AppHandler`` on listening sockets the master bound.

The worker calls ``start(sockets)`` in its ``run`` and ``drain()`` in its
``shutdown``. We never bind and never close the caller's sockets: asyncio
gets a ``dup`` of each, so on drain we can stop the loop from accepting and
still ``accept()`` ourselves what the kernel had already queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time

from .config import HttpConfig
from .exchange import AppHandler
from .protocol import HttpProtocol
from .state import EngineState, WebSocketSupport, error_log

_MAX_BACKLOG_ACCEPT = 65536  # bound on the accept-what-is-queued loop of drain()


class HttpServer:
    """One worker's HTTP/1.1 engine over any number of listening sockets."""

    def __init__(
        self,
        handler: AppHandler,
        config: HttpConfig | None = None,
        *,
        websocket: WebSocketSupport | None = None,
    ) -> None:
        self.config = config or HttpConfig()
        self.state = EngineState(handler, self.config, websocket)
        self._sockets: list[socket.socket] = []
        self._servers: list[asyncio.AbstractServer] = []
        self._ticker: asyncio.TimerHandle | None = None
        self._second = 0
        shortest = min(self.config.keep_alive, self.config.header_timeout)
        self._tick = min(max(shortest / 4, 0.05), 0.5)
        self._drained = False

    # Public -------------------------------------------------------------

    @property
    def connection_count(self) -> int:
        """HTTP connections open now (WebSockets not included)."""
        return len(self.state.connections)

    @property
    def inflight(self) -> int:
        """Requests whose handler is running now."""
        return self.state.inflight

    @property
    def total_requests(self) -> int:
        """Responses completed (including error answers) since start."""
        return self.state.total_requests

    async def start(self, sockets: list[socket.socket]) -> None:
        """Begin accepting on already-bound, listening sockets."""
        loop = asyncio.get_running_loop()
        self.state.loop = loop
        self._schedule_tick()
        for sock in sockets:
            self._sockets.append(sock)
            server = await loop.create_server(
                self._protocol,
                sock=sock.dup(),
                backlog=self.config.backlog,
                ssl=self.config.ssl,
            )
            self._servers.append(server)

    async def drain(self, timeout: float | None = None) -> None:
        """Graceful stop: serve what was queued and in flight, then return.

        Stops accepting, accepts what the kernel already queued, closes idle
        keep-alive connections, lets in-flight requests finish (answered with
        ``connection: close``), asks WebSockets to close. After ``timeout``
        seconds whatever is left is closed hard.
        """
        if self._drained:
            return
        self._drained = True
        state = self.state
        state.draining = True
        for server in self._servers:
            server.close()
        accepting = self._accept_queued()
        for conn in list(state.connections):
            conn.drain()
        waits: list[asyncio.Future[None]] = [asyncio.ensure_future(accepting)]
        if state.websocket is not None:
            waits.append(asyncio.ensure_future(state.websocket.shutdown()))
        try:
            await asyncio.wait_for(self._wait_idle(waits), timeout)
        except asyncio.TimeoutError:
            error_log.warning("drain timed out with %d connection(s) open", len(state.connections))
            for conn in list(state.connections):
                conn.force_close()
            for task in list(state.tasks):
                task.cancel()
            for wait in waits:
                wait.cancel()
        finally:
            if self._ticker is not None:
                self._ticker.cancel()
                self._ticker = None

    # Internals ------------------------------------------------------------

    def _protocol(self) -> HttpProtocol:
        return HttpProtocol(self.state)

    async def _wait_idle(self, waits: list[asyncio.Future[None]]) -> None:
        await asyncio.gather(*waits)
        await self.state.idle_event().wait()

    async def _accept_queued(self) -> None:
        """Accept every connection already queued on our sockets; serve each once."""
        loop = asyncio.get_running_loop()
        pending = []
        for sock in self._sockets:
            sock.setblocking(False)
            for _ in range(_MAX_BACKLOG_ACCEPT):
                try:
                    conn, _addr = sock.accept()
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    error_log.warning("accept during drain failed: %s", exc)
                    break
                conn.setblocking(False)
                pending.append(
                    loop.connect_accepted_socket(self._protocol, conn, ssl=self.config.ssl)
                )
        if pending:
            results = await asyncio.gather(*pending, return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    error_log.info("connection accepted during drain failed: %s", result)

    def _schedule_tick(self) -> None:
        loop = self.state.loop
        assert loop is not None
        self._ticker = loop.call_later(self._tick, self._on_tick)

    def _on_tick(self) -> None:
        state = self.state
        second = int(time.time())
        if second != self._second:
            self._second = second
            state.refresh_date()
        loop = state.loop
        assert loop is not None
        now = loop.time()
        for conn in list(state.connections):
            with contextlib.suppress(Exception):
                conn.check_timer(now)
        self._schedule_tick()
