"""A Flask route that reads one row from SQLite: a framework plus a real (if small) query.

"/" looks up a random row of the `items` table (bench_db.py) and answers it as JSON;
"/pid" and "/slow" as in hello_wsgi. Each thread of each worker opens its own connection
(read-only) on first use and keeps it: sqlite3 connections must not cross threads or forks.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time

import bench_db
from flask import Flask, Response, jsonify

DB_PATH = bench_db.ensure()
app = Flask(__name__)
_local = threading.local()


def _db() -> sqlite3.Connection:
    """This thread's connection, opened on first use (after the fork, never before)."""
    conn: sqlite3.Connection | None = getattr(_local, "conn", None)
    if conn is None:
        conn = sqlite3.connect(f"file:{DB_PATH}?mode=ro", uri=True)
        _local.conn = conn
    return conn


@app.route("/")
def item() -> Response:
    row = (
        _db()
        .execute("SELECT id, name, value FROM items WHERE id = ?", (bench_db.random_key(),))
        .fetchone()
    )
    return jsonify(id=row[0], name=row[1], value=row[2])


@app.route("/pid")
def pid() -> Response:
    return Response(str(os.getpid()), mimetype="text/plain")


@app.route("/slow")
def slow() -> Response:
    time.sleep(0.05)
    return Response(str(os.getpid()), mimetype="text/plain")
