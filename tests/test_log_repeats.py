"""Issue 9, point 6: repeated log lines from one cause are rate-limited (one line, then a count).

Through the engine with real sockets (50 slow heads answered 408), through
``kamisama-serve`` (its stderr), and the filter's own rules on plain records.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from http_support import connect, engine_app
from processes import wait_until
from serve_support import StartServer, serving

from kamisama_server.http.background import BackgroundServer
from kamisama_server.http.config import HttpConfig
from kamisama_server.http.ratelimit import RepeatFilter, limit_repeats
from kamisama_server.http.state import error_log

SLOW_HEAD = b"GET / HTTP/1.1\r\nHost: t\r\n"  # never finished


def slow_heads(port: int, count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        sock = connect(port, timeout=10)
        sock.sendall(SLOW_HEAD)
        socks.append(sock)
    return socks


def all_answered_408(port: int, count: int) -> bool:
    """``count`` slow heads at once: each is answered 408 and closed."""
    socks = slow_heads(port, count)
    try:
        return all(answered_and_closed(sock) for sock in socks)
    finally:
        for sock in socks:
            sock.close()


def answered_and_closed(sock: socket.socket) -> bool:
    """Read the 408 and the close (bounded by the socket's timeout)."""
    data = b""
    with contextlib.suppress(ConnectionResetError, TimeoutError):
        for _ in range(100):
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.startswith(b"HTTP/1.1 408")


@pytest.fixture
def short_window() -> Iterator[RepeatFilter]:
    """The engine's filter, its window shortened for the test."""
    repeat = limit_repeats(error_log)
    window = repeat.window
    repeat.window = 2.0
    try:
        yield repeat
    finally:
        repeat.window = window


def test_fifty_408s_log_one_line_then_a_count(
    short_window: RepeatFilter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kamisama.http")
    with BackgroundServer(engine_app, HttpConfig(header_timeout=0.3)) as srv:
        assert all_answered_408(srv.port, 50)
        logged = [r for r in caplog.records if "answered 408" in r.getMessage()]
        first = [r.getMessage() for r in logged]
        # After the window (from the line logged), the next 408 carries the count.
        time.sleep(max(0.0, logged[0].created + short_window.window - time.time()))
        (late,) = slow_heads(srv.port, 1)
        with late:
            assert answered_and_closed(late)
        wait_until(lambda: sum("answered 408" in r.getMessage() for r in caplog.records) > 1, 5)
    lines = [r.getMessage() for r in caplog.records if "answered 408" in r.getMessage()]
    print("\n" + "\n".join(lines))
    assert len(first) == 1
    assert len(lines) == 2 and lines[1].endswith("(and 49 more like it in the last 2 s)")


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[StartServer]:
    yield from serving(tmp_path)


def test_the_server_logs_one_408_line_for_fifty_slow_heads(serve: StartServer) -> None:
    server = serve(
        ["app:app", "-b", "127.0.0.1:0", "-w", "1", "--header-timeout", "0.5"],
        modules={"app": "def app(environ, start_response):\n    return []\n"},
    )
    server.wait_listening()
    assert all_answered_408(server.port, 50)
    server.wait_for_log("answered 408")
    count = server.err.count("answered 408")
    print(f"\n50 slow heads: {count} line(s) about a 408 on stderr")
    assert count == 1, server.err


def record(msg: str, *args: object, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord("t", level, __file__, 1, msg, args, None)


def test_causes_are_template_and_level_and_where_an_error_came_from() -> None:
    now = [0.0]
    repeat = RepeatFilter(window=10, clock=lambda: now[0])
    assert repeat.filter(record("%s answered %d", "a", 408))
    assert not repeat.filter(record("%s answered %d", "b", 408))
    assert repeat.filter(record("%s answered %d", "b", 408, level=logging.WARNING))
    assert repeat.filter(record("other %s", "x"))
    errors = []
    for raise_twice in (True, True, False):
        try:
            if raise_twice:
                raise ValueError("one place")
            raise KeyError("another place")
        except Exception as exc:
            errors.append(exc)
    records = [record("Exception in app") for _ in errors]
    for rec, exc in zip(records, errors, strict=True):
        rec.exc_info = (type(exc), exc, exc.__traceback__)
    assert [repeat.filter(rec) for rec in records] == [True, False, True]
    now[0] = 10.5
    late = record("%s answered %d", "c", 408)
    assert repeat.filter(late)
    assert late.getMessage() == "c answered 408 (and 1 more like it in the last 10 s)"
