"""Issue 7, "WSGI that real apps can trust": real frameworks through the real server.

Each app (tests/apps/) runs on fresh workers with the default flags, the way a
user starts it, and must answer 12 requests in a row, each a 200 with the whole
body. Twelve, because the first calls of a fresh worker are the ones at risk
(they used to run on the event loop's thread): a framework that refuses a
running event loop in its thread (Django's ORM, asgiref's AsyncToSync,
``asyncio.run``) or expects the iteration of its body in the calling thread
(Flask's ``stream_with_context``) must work from the first request on.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest
from apps.notes import SCHEMA
from processes import wait_until
from serve_support import Server, StartServer, serving
from websockets.sync.client import connect

APPS = Path(__file__).parent / "apps"
DJANGO = ("djsite", "notes", "notes.models")
ROUNDS = 12


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[StartServer]:
    yield from serving(tmp_path)


def app_sources(*modules: str) -> dict[str, str]:
    """Sources of tests/apps modules (a package by its name), for ``serve(modules=...)``."""
    sources = {}
    for name in modules:
        path = APPS / name.replace(".", "/")
        file = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        sources[f"{name}.__init__" if path.is_dir() else name] = file.read_text()
    return sources


def start(
    serve: StartServer,
    spec: str,
    modules: Sequence[str],
    *args: str,
    env: dict[str, str] | None = None,
) -> Server:
    """``kamisama-serve SPEC`` with default flags (but a free port), listening."""
    server = serve([spec, "--bind", "127.0.0.1:0", *args], modules=app_sources(*modules), env=env)
    server.wait_listening()
    return server


def answers_every_time(server: Server, path: str, expected: str, rounds: int = ROUNDS) -> None:
    """``rounds`` requests in a row, each on a new connection: all 200 with ``expected``."""
    for i in range(rounds):
        what = f"request {i + 1} of {rounds} to {path}"
        try:
            response = server.get(path, timeout=10)
        except httpx.HTTPError as error:
            raise AssertionError(f"{what}: {error!r}\n{server.output()[-3000:]}") from error
        assert (response.status_code, response.text) == (200, expected), (
            f"{what}: {response.status_code} {response.text[:300]!r}\n{server.output()[-3000:]}"
        )


def notes_db(tmp_path: Path, *texts: str) -> dict[str, str]:
    """An SQLite file holding the notes table (with ``texts``); the env naming it for djsite."""
    path = tmp_path / "notes.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute(SCHEMA)
        db.executemany("INSERT INTO notes_note (text) VALUES (?)", [(t,) for t in texts])
    return {"NOTES_DB": str(path)}


# ---- Django ------------------------------------------------------------------------------


def test_django_wsgi_view_uses_the_database(serve: StartServer, tmp_path: Path) -> None:
    """A raw cursor and an ORM query in a plain sync view."""
    server = start(serve, "djsite:application", DJANGO, env=notes_db(tmp_path, "a", "b"))
    answers_every_time(server, "/", "raw=2 orm=a,b")
    assert server.stop() == 0, server.output()


def test_django_keeps_one_database_connection_per_app_thread(
    serve: StartServer, tmp_path: Path
) -> None:
    """CONN_MAX_AGE=None: a worker's app thread lives across requests, and Django's
    connection with it (a thread per request would open one per request)."""
    server = start(serve, "djsite:application", DJANGO, env=notes_db(tmp_path, "a"))
    opened: dict[str, set[str]] = {}
    for _ in range(ROUNDS):
        pid, count = server.get("/conn").text.split()
        opened.setdefault(pid, set()).add(count)
    assert all(counts == {"1"} for counts in opened.values()), opened  # one per thread
    assert server.stop() == 0, server.output()


def test_django_module_that_queries_the_database_at_import_starts(
    serve: StartServer, tmp_path: Path
) -> None:
    """``connection.cursor()`` at module level (a startup migration) must not stop the server."""
    env = {"NOTES_DB": str(tmp_path / "notes.sqlite3")}  # no table yet: the import creates it
    server = start(serve, "djimport:application", ("djimport", *DJANGO), env=env)
    answers_every_time(server, "/", "raw=1 orm=seeded")
    assert server.stop() == 0, server.output()


def test_django_asgi_runs_sync_and_async_views(serve: StartServer, tmp_path: Path) -> None:
    """As ASGI, Django runs the sync view in a thread (asgiref) and the async one on the loop."""
    env = notes_db(tmp_path, "first", "second")
    server = start(serve, "djsite:asgi_application", DJANGO, env=env)
    answers_every_time(server, "/", "raw=2 orm=first,second")
    answers_every_time(server, "/async", "async count=2 first=first")
    assert server.stop() == 0, server.output()


# ---- Flask, asyncio ---------------------------------------------------------------------


def test_flask_async_view(serve: StartServer) -> None:
    server = start(serve, "flask_site:app", ["flask_site"])
    answers_every_time(server, "/async?n=7", "async view, n=7")
    assert server.stop() == 0, server.output()


def test_asyncio_run_inside_a_wsgi_view(serve: StartServer) -> None:
    server = start(serve, "wsgi_asyncio_run:app", ["wsgi_asyncio_run"])
    answers_every_time(server, "/", "asyncio.run gave 42")
    assert server.stop() == 0, server.output()


def test_flask_stream_with_context_sends_every_chunk(serve: StartServer) -> None:
    server = start(serve, "flask_site:app", ["flask_site"])
    expected = "".join(f"chunk {i} of 5;" for i in range(5))
    answers_every_time(server, "/stream?n=5", expected)
    assert server.get("/stream?n=5").headers.get("transfer-encoding") == "chunked"
    assert server.stop() == 0, server.output()


# ---- the thread an app runs in ----------------------------------------------------------


def test_call_iteration_and_close_share_one_thread_and_its_state(
    serve: StartServer,
) -> None:
    """The app call, every ``next()`` of its body and ``close()``: one thread, no event loop."""
    server = start(serve, "wsgi_thread_state:app", ["wsgi_thread_state"])
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for rid in range(1, ROUNDS + 1):
            response = client.get(f"/?id={rid}")
            assert response.status_code == 200, server.output()
            lines = response.text.splitlines()
            assert [line.split()[0] for line in lines] == ["call", "next", "next", "next"]
            closed = server.directory / f"close-{rid}.txt"
            wait_until(closed.exists, 5, f"close() of request {rid}")
            lines.append(closed.read_text().strip())
            call = lines[0].split()
            thread = call[1]
            for line in lines:
                stage, *seen = line.split()
                want = [thread, f"local={rid}", f"var={rid}", "no-loop"]
                assert seen == want, f"request {rid}, {stage}: {line!r}, want {want}\n{lines}"
    assert server.stop() == 0, server.output()


@pytest.mark.parametrize(
    ("spec", "extra", "expected"),
    [
        ("loop_probe:app", [], "import=none run=none"),
        ("loop_probe:create_app", ["--factory"], "factory=none import=none run=none"),
    ],
    ids=["module", "factory"],
)
def test_app_import_factory_and_run_hook_see_no_running_loop(
    serve: StartServer, spec: str, extra: list[str], expected: str
) -> None:
    server = start(serve, spec, ["loop_probe"], *extra, "--run", "loop_probe:on_run")
    answers_every_time(server, "/", expected)
    assert server.stop() == 0, server.output()


# ---- ASGI keeps working -----------------------------------------------------------------


def test_fastapi_lifespan_streaming_and_websocket_with_two_workers(serve: StartServer) -> None:
    server = start(serve, "fastapi_site:app", ["fastapi_site"], "-w", "2")
    for _ in range(ROUNDS):
        state = json.loads(server.get("/state", timeout=10).text)
        assert state["started_by"] == state["pid"], state  # the lifespan ran in this worker
    answers_every_time(server, "/stream?n=6", "".join(f"part {i};" for i in range(6)))
    with connect(f"ws://127.0.0.1:{server.port}/echo", open_timeout=10) as websocket:
        for i in range(ROUNDS):
            websocket.send(f"hello {i}")
            assert websocket.recv(timeout=10) == f"echo hello {i}"
    assert server.stop() == 0, server.output()
