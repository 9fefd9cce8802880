"""The small SQLite table the Flask-SQLite and Django-SQLite apps read from.

One file, one table `items` (id, name, value) of ROWS rows. The harness creates it once
before any server starts (BENCH_SQLITE_PATH names the file); each app also calls `ensure()`
at import so it works on its own. Creation holds an exclusive lock on a side file and only
adds what is missing, so workers that start at the same moment never clash.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import sqlite3
from pathlib import Path

ROWS = 1000
DEFAULT_PATH = Path(__file__).resolve().parent.parent / "results" / "tmp" / "bench.sqlite3"
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS items "
    "(id INTEGER PRIMARY KEY, name TEXT NOT NULL, value INTEGER NOT NULL)"
)


def db_path() -> Path:
    """The database file: $BENCH_SQLITE_PATH (set by the harness), else one in results/tmp."""
    return Path(os.environ.get("BENCH_SQLITE_PATH") or DEFAULT_PATH)


def ensure(path: Path | None = None) -> Path:
    """Create the table and its rows if they are missing; safe to call from many processes."""
    path = path or db_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        with contextlib.closing(sqlite3.connect(path)) as db, db:
            db.execute(SCHEMA)
            if db.execute("SELECT count(*) FROM items").fetchone()[0] < ROWS:
                db.executemany(
                    "INSERT OR IGNORE INTO items (id, name, value) VALUES (?, ?, ?)",
                    ((i, f"item-{i}", i * 7) for i in range(1, ROWS + 1)),
                )
    return path


def random_key() -> int:
    """The key a request looks up: spread over the table, the same way in both apps."""
    return random.randint(1, ROWS)
