"""A small FastAPI (ASGI) app to serve with kamisama-serve: routes, a lifespan
(run once in each worker, before it accepts) and a WebSocket echo.
From the repository root: ``kamisama-serve examples.fastapi_app.app:app --workers 2``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from pydantic import BaseModel

from kamisama_server import worker_id


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Per-worker resources go here (a database pool, an HTTP client...)."""
    app.state.resources = {"worker": worker_id(), "pid": os.getpid()}
    yield
    app.state.resources.clear()


app = FastAPI(title="kamisama-serve example", lifespan=lifespan)


class Item(BaseModel):
    name: str
    quantity: int = 1


@app.get("/")
async def home() -> dict[str, str]:
    return {"message": "Hello from FastAPI on kamisama-serve"}


@app.get("/lifespan")
async def resources() -> dict[str, Any]:
    """What this worker's lifespan startup set up: proof it ran before serving."""
    return dict(app.state.resources)


@app.get("/items/{item_id}")
async def read_item(item_id: int, q: str | None = None) -> dict[str, Any]:
    return {"item_id": item_id, "q": q}


@app.post("/echo")
async def echo(item: Item) -> Item:
    """The JSON body back, validated."""
    return item


@app.websocket("/ws")
async def websocket_echo(websocket: WebSocket) -> None:
    """Every text message back, prefixed, until the client closes."""
    await websocket.accept()
    try:
        while True:
            await websocket.send_text("echo: " + await websocket.receive_text())
    except WebSocketDisconnect:
        pass
