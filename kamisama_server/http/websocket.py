"""WebSockets for ASGI apps: the engine hands the upgraded transport to uvicorn's protocol.

The engine parses and validates the ``Upgrade: websocket`` request head like any
other, then replays it into a fresh uvicorn WebSocket protocol (the
``websockets`` sans-I/O one, else ``wsproto``) and steps aside.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.websockets.auto import AutoWebSocketsProtocol
from uvicorn.server import ServerState

from .config import HttpConfig
from .uvicorn_glue import uvicorn_config

_SHUTDOWN_POLL = 0.02


def websockets_available() -> bool:
    return AutoWebSocketsProtocol is not None


class UvicornWebSockets:
    """``WebSocketSupport`` for ``HttpServer``, backed by uvicorn."""

    def __init__(self, app: Any, config: HttpConfig, app_state: dict[str, Any]) -> None:
        if AutoWebSocketsProtocol is None:
            raise RuntimeError("WebSockets need the 'websockets' or 'wsproto' package")
        self._protocol_class = AutoWebSocketsProtocol
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
            config=self._config, server_state=self._state, app_state=self._app_state
        )

    async def shutdown(self) -> None:
        """Send every open WebSocket a 1012 close; return once they are gone.

        The caller (``HttpServer.drain``) bounds this with its own timeout.
        """
        for connection in list(self._state.connections):
            connection.shutdown()
        while self._state.connections or self._state.tasks:
            await asyncio.sleep(_SHUTDOWN_POLL)
