"""A small FastAPI (ASGI) app to serve with kamisama-serve: routes, a lifespan
(run once in each worker, before it accepts), a WebSocket echo and a SQLite table.
From the repository root: ``kamisama-serve examples.fastapi_app.app:app --workers 2``.

The database is the file ``$EXAMPLE_DB`` (default: ``kamisama-fastapi-example.sqlite3``
in the temporary directory). ``sqlite3`` blocks, so its routes are plain ``def``:
FastAPI runs them in its thread pool and the event loop keeps serving meanwhile.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from pydantic import BaseModel

from kamisama_server import worker_id

DB = os.environ.get("EXAMPLE_DB") or str(
    Path(tempfile.gettempdir()) / "kamisama-fastapi-example.sqlite3"
)


def connect() -> sqlite3.Connection:
    """A fresh connection per call: SQLite connections must not cross threads."""
    return sqlite3.connect(DB, timeout=10)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Per-worker resources go here (a database pool, an HTTP client...)."""
    # Every worker, one at a time: two switching a new database to WAL together get
    # "database is locked" at once (the busy timeout does not cover that switch).
    with open(f"{DB}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        with connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, text TEXT NOT NULL)"
            )
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


class NoteIn(BaseModel):
    text: str


@app.get("/notes")
def list_notes() -> list[dict[str, Any]]:
    """Every note, oldest first (a sync route: run in FastAPI's thread pool)."""
    with connect() as db:
        rows = db.execute("SELECT id, text FROM notes ORDER BY id").fetchall()
    return [{"id": row[0], "text": row[1]} for row in rows]


@app.post("/notes", status_code=201)
def add_note(note: NoteIn) -> dict[str, Any]:
    """Store a note; the new row back."""
    with connect() as db:  # commits on leaving the block
        note_id = db.execute("INSERT INTO notes (text) VALUES (?)", (note.text,)).lastrowid
    return {"id": note_id, "text": note.text, "worker": worker_id()}


@app.websocket("/ws")
async def websocket_echo(websocket: WebSocket) -> None:
    """Every text message back, prefixed, until the client closes."""
    await websocket.accept()
    try:
        while True:
            await websocket.send_text("echo: " + await websocket.receive_text())
    except WebSocketDisconnect:
        pass
