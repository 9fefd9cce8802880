"""A small Flask (WSGI) app with a SQLite table. From the repository root:
``kamisama-serve examples.flask_app.app:app --workers 2``.

The database is the file ``$EXAMPLE_DB`` (default: ``kamisama-flask-example.sqlite3``
in the temporary directory). Every worker opens one connection per request:
SQLite connections must not cross threads (``--threads``) or processes (forks).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import tempfile
from pathlib import Path

from flask import Flask, Response, jsonify, request

from kamisama_server import worker_id

DB = os.environ.get("EXAMPLE_DB") or str(
    Path(tempfile.gettempdir()) / "kamisama-flask-example.sqlite3"
)


def connect() -> sqlite3.Connection:
    """A fresh connection; waits up to 10 s for another worker's write to finish."""
    return sqlite3.connect(DB, timeout=10)


def create_table() -> None:
    """Run at import, in each worker, one worker at a time (a lock on a side file).

    Workers start together: two switching a new database to WAL at the same
    moment get "database is locked" at once (SQLite's busy timeout does not
    cover that switch; 73 of 400 forked pairs failed so), and the worker that
    cannot import stops the server.
    """
    with open(f"{DB}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        with connect() as db:
            db.execute("PRAGMA journal_mode=WAL")  # readers do not wait for a writer
            db.execute(
                "CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, text TEXT NOT NULL)"
            )


create_table()
app = Flask(__name__)


@app.get("/")
def home() -> str:
    return "Hello from Flask on kamisama-serve\n"


@app.get("/json")
def info() -> Response:
    """Which worker process answered: repeat it to see the load spread."""
    return jsonify(framework="flask", worker=worker_id(), pid=os.getpid())


@app.get("/hello/<name>")
def hello(name: str) -> Response:
    return jsonify(greeting=f"Hello, {name}!")


@app.post("/echo")
def echo() -> Response:
    """The request body back, with its content type."""
    return Response(
        request.get_data(),
        content_type=request.content_type or "application/octet-stream",
    )


@app.get("/notes")
def list_notes() -> Response:
    """Every note, oldest first."""
    with connect() as db:
        rows = db.execute("SELECT id, text FROM notes ORDER BY id").fetchall()
    return jsonify([{"id": row[0], "text": row[1]} for row in rows])


@app.post("/notes")
def add_note() -> tuple[Response, int]:
    """Store the JSON body's ``text``; 201 with the new note."""
    text = (request.get_json(silent=True) or {}).get("text")
    if not isinstance(text, str) or not text:
        return jsonify(error="expected a JSON body with a non-empty 'text'"), 400
    with connect() as db:  # commits on leaving the block
        note_id = db.execute("INSERT INTO notes (text) VALUES (?)", (text,)).lastrowid
    return jsonify(id=note_id, text=text, worker=worker_id()), 201
