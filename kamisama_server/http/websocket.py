"""WebSockets for ASGI apps: the engine hands the upgraded transport to uvicorn's protocol.

The engine parses and validates the ``Upgrade: websocket`` request head like any
other, then replays it into a fresh uvicorn WebSocket protocol (the
``websockets`` sans-I/O one, else ``wsproto``) and steps aside.

On the ``websockets`` one we add what issue 9 asks of a hostile client
(:class:`GuardedWebSockets`): a fragmented message is assembled in one buffer
(uvicorn keeps a ``bytes`` object per fragment: 16 MiB in one-byte fragments
cost ~500 MiB), its size bounded by ``ws_max_size`` as ``websockets`` already
does; reading stops while the transport's writing is paused (a client flooding
pings and never reading made pongs pile up without bound); and a client that
reads nothing for ``stall_timeout`` while we have data for it is cut.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.websockets.auto import AutoWebSocketsProtocol
from uvicorn.server import ServerState

from .config import HttpConfig
from .state import error_log
from .uvicorn_glue import uvicorn_config

try:
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
except ImportError:  # pragma: no cover - no websockets package: wsproto runs unguarded
    WebSocketsSansIOProtocol = None  # type: ignore[assignment,misc]

_SHUTDOWN_POLL = 0.02

if WebSocketsSansIOProtocol is not None:

    class GuardedWebSockets(WebSocketsSansIOProtocol):
        """uvicorn's sans-I/O WebSocket protocol, bounded against clients that do not read."""

        def __init__(self, *, stall_timeout: float, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._stall_timeout = stall_timeout
            self._stall_timer: asyncio.TimerHandle | None = None
            self._paused_for_writes = False

        # Fragments: one growing buffer, not a bytes object each.

        def handle_cont(self, event: Any) -> None:
            message = self.frames[0] if self.frames else None
            if isinstance(message, bytearray):
                message += event.data
                if event.fin:
                    self.send_receive_event_to_app()
            else:
                super().handle_cont(event)

        def handle_text(self, event: Any) -> None:
            super().handle_text(event)
            if not event.fin:
                self.frames = [bytearray(event.data)]  # type: ignore[list-item]

        def handle_bytes(self, event: Any) -> None:
            super().handle_bytes(event)
            if not event.fin:
                self.frames = [bytearray(event.data)]  # type: ignore[list-item]

        def send_receive_event_to_app(self) -> None:
            if self.frames and isinstance(self.frames[0], bytearray):
                self.frames = [bytes(self.frames[0])]
            super().send_receive_event_to_app()

        # Writes the client does not take: stop reading, and cut it after stall_timeout.

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if not self.writable.is_set() and not self.disconnected:
                self._pause_for_writes()  # uvicorn resumed reading meanwhile (a receive)

        def pause_writing(self) -> None:
            super().pause_writing()
            self._pause_for_writes()
            if self._stall_timeout and self._stall_timer is None:
                self._stall_timer = self.loop.call_later(self._stall_timeout, self._stalled)

        def resume_writing(self) -> None:
            super().resume_writing()
            if self._stall_timer is not None:
                self._stall_timer.cancel()
                self._stall_timer = None
            if self._paused_for_writes:
                self._paused_for_writes = False
                if not self.read_paused and not self.disconnected:
                    self.transport.resume_reading()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._stall_timer is not None:
                self._stall_timer.cancel()
                self._stall_timer = None
            super().connection_lost(exc)

        def _pause_for_writes(self) -> None:
            if not self._paused_for_writes:
                self._paused_for_writes = True
                self.transport.pause_reading()

        def _stalled(self) -> None:
            self._stall_timer = None
            if self.disconnected:
                return
            peer = f"{self.client[0]}:{self.client[1]}" if self.client else "-"
            error_log.info("%s WebSocket read nothing for %.0fs; closed", peer, self._stall_timeout)
            self.transport.abort()


def websockets_available() -> bool:
    return AutoWebSocketsProtocol is not None


class UvicornWebSockets:
    """``WebSocketSupport`` for ``HttpServer``, backed by uvicorn."""

    def __init__(self, app: Any, config: HttpConfig, app_state: dict[str, Any]) -> None:
        if AutoWebSocketsProtocol is None:
            raise RuntimeError("WebSockets need the 'websockets' or 'wsproto' package")
        self._protocol_class = AutoWebSocketsProtocol
        self._extra: dict[str, Any] = {}
        if (
            WebSocketsSansIOProtocol is not None
            and AutoWebSocketsProtocol is WebSocketsSansIOProtocol
        ):
            self._protocol_class = GuardedWebSockets
            self._extra = {"stall_timeout": config.stall_timeout}
        self._config = uvicorn_config(app, config)
        self._state = ServerState()
        if config.server_header:
            self._state.default_headers = [(b"server", config.server_name.encode("latin-1"))]
        self._app_state = app_state

    @property
    def connection_count(self) -> int:
        return len(self._state.connections)

    def protocol(self) -> asyncio.Protocol:
        return self._protocol_class(
            config=self._config, server_state=self._state, app_state=self._app_state, **self._extra
        )

    async def shutdown(self) -> None:
        """Send every open WebSocket a 1012 close; return once they are gone.

        The caller (``HttpServer.drain``) bounds this with its own timeout.
        """
        for connection in list(self._state.connections):
            connection.shutdown()
        while self._state.connections or self._state.tasks:
            await asyncio.sleep(_SHUTDOWN_POLL)
