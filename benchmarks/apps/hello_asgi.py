"""Raw ASGI hello world: the floor of what an ASGI server costs per request.

Same routes as hello_wsgi: "/" hello, "/pid" the worker's pid, "/slow" the pid after a
50 ms asyncio sleep. Lifespan is answered so every server starts it the same way.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Any

BODY = b"Hello, world!"
HEADERS = [(b"content-type", b"text/plain"), (b"content-length", str(len(BODY)).encode())]

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """Answer one request (or run the lifespan protocol)."""
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    path = scope.get("path", "/")
    body = BODY
    headers = HEADERS
    if path in ("/pid", "/slow"):
        if path == "/slow":
            await asyncio.sleep(0.05)
        body = str(os.getpid()).encode()
        headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
