"""Issue 3, "One HTTP/1.1 engine": keep-alive, pipelining, framing, timers, limits, drain."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from http_support import Reader, connect, engine_app, good_request, request

from kamisama_server.http.background import BackgroundServer
from kamisama_server.http.config import HttpConfig
from kamisama_server.http.exchange import Exchange


@pytest.fixture(scope="module")
def server() -> Iterator[BackgroundServer]:
    with BackgroundServer(engine_app) as srv:
        yield srv


def wait_for(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.01)
    raise AssertionError("condition not met in time")


def test_keep_alive_serves_several_requests_on_one_connection(server: BackgroundServer) -> None:
    with connect(server.port) as sock:
        reader = Reader(sock)
        for i in range(3):
            sock.sendall(b"GET /k%d HTTP/1.1\r\nHost: t\r\n\r\n" % i)
            resp = reader.response()
            assert resp.status == 200 and resp.body == b"ok /k%d" % i
            assert resp.header("connection") is None
            assert resp.header("date") and resp.header("server") == "kamisama"
            assert [name for name, _ in resp.headers].count("content-length") == 1


def test_pipelined_requests_are_answered_in_order(server: BackgroundServer) -> None:
    raw = b"".join(
        [
            b"GET /sleep?0.2 HTTP/1.1\r\nHost: t\r\n\r\n",
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello",
            b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\nab\r\n0\r\n\r\n",
            b"GET /last HTTP/1.1\r\nHost: t\r\n\r\n",
        ]
    )
    with connect(server.port) as sock:
        sock.sendall(raw)
        reader = Reader(sock)
        bodies = [reader.response().body for _ in range(4)]
    assert bodies == [b"ok /sleep", b"hello", b"ab", b"ok /last"]


def test_http10_closes_unless_keep_alive_asked(server: BackgroundServer) -> None:
    resp, closed = request(server.port, b"GET /a HTTP/1.0\r\n\r\n")
    assert resp.status == 200 and resp.header("connection") == "close" and closed
    with connect(server.port) as sock:
        reader = Reader(sock)
        for _ in range(2):
            sock.sendall(b"GET /b HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            resp = reader.response()
            assert resp.status == 200 and resp.header("connection") == "keep-alive"


def test_each_request_gets_its_own_http_version(server: BackgroundServer) -> None:
    """The engine reads a request's version from its line in the bytes received
    when it can: a 1.0 request pipelined behind a 1.1 one, and a body that holds
    the text of a 1.0 request line, must not change which version a request has."""
    with connect(server.port) as sock:
        sock.sendall(b"GET /one HTTP/1.1\r\nHost: t\r\n\r\nGET /two HTTP/1.0\r\n\r\n")
        reader = Reader(sock)
        first, second = reader.response(), reader.response()
        assert first.body == b"ok /one" and first.header("connection") is None
        assert second.body == b"ok /two" and second.header("connection") == "close"
    fake = b"GET /b HTTP/1.0\r\n\r\n"
    body = b"abc" + fake
    with connect(server.port) as sock:
        # The body's second part likely arrives in a read of its own, which then
        # begins with the text of a request line: it is still body.
        head = b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body)
        sock.sendall(head + b"abc")
        time.sleep(0.05)
        sock.sendall(fake + b"GET /b HTTP/1.1\r\nHost: t\r\n\r\n")
        reader = Reader(sock)
        echoed, after = reader.response(), reader.response()
        assert echoed.body == body
        assert after.body == b"ok /b" and after.header("connection") is None
        sock.sendall(b"GET /c HTTP/1.1\r\nHost: t\r\n\r\n")
        assert reader.response().body == b"ok /c"


def test_non_websocket_upgrade_is_answered_then_closed(server: BackgroundServer) -> None:
    # What follows an upgrade head is not HTTP/1.1 we could parse: answer it, then close.
    raw = b"GET /up HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
    resp, closed = request(server.port, raw)
    assert resp.status == 200 and resp.body == b"ok /up"
    assert resp.header("connection") == "close" and closed
    # "Connection: upgrade" without an Upgrade header is no upgrade: the connection stays.
    with connect(server.port) as sock:
        reader = Reader(sock)
        for i in range(2):
            sock.sendall(b"GET /n%d HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\n\r\n" % i)
            resp = reader.response()
            assert resp.status == 200 and resp.body == b"ok /n%d" % i
            assert resp.header("connection") is None


def test_http10_streamed_response_is_close_delimited(server: BackgroundServer) -> None:
    resp, closed = request(server.port, b"GET /stream HTTP/1.0\r\n\r\n")
    assert resp.body == b"part0;part1;part2;" and closed


def test_chunked_response_and_chunked_request_with_httpx(server: BackgroundServer) -> None:
    with httpx.Client(base_url=server.url) as client:
        resp = client.get("/stream")
        assert resp.headers["transfer-encoding"] == "chunked"
        assert resp.text == "part0;part1;part2;"
        resp = client.post("/echo", content=iter([b"a" * 70000, b"b", b"c" * 3]))
        assert resp.content == b"a" * 70000 + b"b" + b"c" * 3


def test_head_has_no_body_but_keeps_length(server: BackgroundServer) -> None:
    with connect(server.port) as sock:
        reader = Reader(sock)
        sock.sendall(b"HEAD /x HTTP/1.1\r\nHost: t\r\n\r\nGET /y HTTP/1.1\r\nHost: t\r\n\r\n")
        head = reader.response(head_request=True)
        assert head.status == 200 and head.header("content-length") == "5"
        assert reader.response().body == b"ok /y"  # nothing of HEAD's body in between


def test_expect_100_continue_sent_only_when_app_reads(server: BackgroundServer) -> None:
    with connect(server.port) as sock:
        reader = Reader(sock)
        sock.sendall(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
        )
        interim = reader.response()
        assert interim.status == 100
        sock.sendall(b"data")
        assert reader.response().body == b"data"
    # An app that answers without reading: no 100, the client keeps its body.
    with connect(server.port) as sock:
        reader = Reader(sock)
        sock.sendall(
            b"POST /noread HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
        )
        resp = reader.response()
        assert resp.status == 403 and resp.header("connection") == "close"


def test_unread_small_body_is_discarded_and_connection_kept(server: BackgroundServer) -> None:
    with connect(server.port) as sock:
        reader = Reader(sock)
        sock.sendall(
            b"POST /noread HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"
            b"GET /z HTTP/1.1\r\nHost: t\r\n\r\n"
        )
        assert reader.response().status == 403
        assert reader.response().body == b"ok /z"


def test_idle_keep_alive_connection_is_closed_after_keep_alive_seconds() -> None:
    with BackgroundServer(engine_app, HttpConfig(keep_alive=0.3)) as srv, connect(srv.port) as sock:
        reader = Reader(sock)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert reader.response().status == 200
        started = time.monotonic()
        assert reader.closed(timeout=5)
        assert reader.buf == b""  # silent close, no 408 for an idle connection
        assert time.monotonic() - started < 4


def test_slow_clients_get_408_and_do_not_block_others() -> None:
    config = HttpConfig(header_timeout=1.5)
    with BackgroundServer(engine_app, config) as srv:
        slow = [connect(srv.port) for _ in range(8)]
        try:
            for sock in slow:
                sock.sendall(b"GET /slow HTTP/1.1\r\nHost: t\r\nX-Unfinished: ")
            # While they hang, a good client is served at once.
            assert good_request(srv.port).status == 200
            for sock in slow:
                resp = Reader(sock).response()
                assert resp.status == 408 and resp.header("connection") == "close"
            assert good_request(srv.port).status == 200
        finally:
            for sock in slow:
                sock.close()


def test_over_limit_concurrency_gets_503() -> None:
    release = threading.Event()

    async def app(ex: Exchange) -> None:
        if ex.head.raw_path == b"/hold":
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, release.wait, 10)
        await ex.send_head(200, [(b"content-length", b"2")])
        await ex.write(b"ok")
        await ex.end()

    with BackgroundServer(app, HttpConfig(limit_concurrency=1)) as srv:
        holder = connect(srv.port)
        try:
            holder.sendall(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n")
            assert srv.server is not None
            wait_for(lambda: srv.server.inflight == 1)  # type: ignore[union-attr]
            resp, closed = request(srv.port, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            assert resp.status == 503 and closed
            release.set()
            assert Reader(holder).response().status == 200
            assert good_request(srv.port).status == 200
        finally:
            release.set()
            holder.close()


def test_upload_is_streamed_with_backpressure() -> None:
    """A slow reader does not make the engine buffer the upload."""
    high_water = 64 * 1024
    seen: list[int] = []

    async def app(ex: Exchange) -> None:
        total = 0
        await asyncio.sleep(0.3)  # the client keeps sending meanwhile
        while chunk := await ex.receive():
            seen.append(len(chunk))
            total += len(chunk)
            if len(seen) < 20:
                await asyncio.sleep(0.01)
        body = b"%d" % total
        await ex.send_head(200, [(b"content-length", b"%d" % len(body))])
        await ex.write(body)
        await ex.end()

    size = 32 * 1024 * 1024
    with BackgroundServer(app, HttpConfig(body_high_water=high_water)) as srv:
        with connect(srv.port, timeout=30) as sock:
            sock.sendall(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % size)
            block = b"x" * 1024 * 1024
            for _ in range(32):
                sock.sendall(block)
            resp = Reader(sock).response()
        assert resp.body == b"%d" % size
    # Never more than the high-water mark plus one socket read was held for the app.
    assert max(seen) <= high_water + 512 * 1024, max(seen)


def test_drain_finishes_in_flight_closes_idle_and_serves_queued() -> None:
    srv = BackgroundServer(engine_app, HttpConfig(backlog=64)).start()
    try:
        idle = connect(srv.port)
        idle_reader = Reader(idle)
        idle.sendall(b"GET /idle HTTP/1.1\r\nHost: t\r\n\r\n")
        assert idle_reader.response().status == 200
        busy = connect(srv.port)
        busy.sendall(b"GET /sleep?0.5 HTTP/1.1\r\nHost: t\r\n\r\n")
        assert srv.server is not None
        wait_for(lambda: srv.server.inflight == 1)  # type: ignore[union-attr]
        # Block the loop so new connections stay queued in the kernel, then drain.
        srv.loop.call_soon_threadsafe(time.sleep, 0.5)
        queued = [connect(srv.port) for _ in range(5)]
        for sock in queued:
            sock.sendall(b"GET /queued HTTP/1.1\r\nHost: t\r\n\r\n")
        drained = threading.Thread(target=srv.drain)
        drained.start()
        busy_resp = Reader(busy).response()
        assert busy_resp.status == 200 and busy_resp.header("connection") == "close"
        for sock in queued:
            resp = Reader(sock).response()
            assert resp.status == 200 and resp.header("connection") == "close"
        assert idle_reader.closed()
        drained.join(15)
        assert not drained.is_alive()
        assert srv.server.connection_count == 0
        # Stopped accepting: a new connection is not served by this server any more.
        late = socket.create_connection(("127.0.0.1", srv.port), timeout=1)
        late.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        with pytest.raises(TimeoutError):
            late.recv(10)
        late.close()
        for sock in (idle, busy, *queued):
            sock.close()
    finally:
        srv.stop()


def test_engine_runs_on_uvloop(tmp_path: object) -> None:
    uvloop = pytest.importorskip("uvloop")

    async def app(ex: Exchange) -> None:
        if ex.head.raw_path == b"/file":
            import os
            import tempfile

            with tempfile.TemporaryFile() as file:
                file.write(b"0123456789" * 50_000)
                file.flush()
                await ex.send_head(200, [])
                await ex.sendfile(file.fileno(), 10, 400_000)
                await ex.end()
                assert os.fstat(file.fileno()).st_size == 500_000
            return
        await engine_app(ex)

    with BackgroundServer(app, loop=uvloop.new_event_loop()) as srv:
        with connect(srv.port) as sock:
            sock.sendall(
                b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n"
                b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi"
            )
            reader = Reader(sock)
            assert reader.response().body == b"ok /a"
            assert reader.response().body == b"hi"
            sock.sendall(b"GET /file HTTP/1.1\r\nHost: t\r\n\r\n")
            assert reader.response().body == (b"0123456789" * 50_000)[10:400_010]
        resp, closed = request(srv.port, b"GET / HTTP/1.1\r\nHost: t\r\nX: a\x00\r\n\r\n")
        assert resp.status == 400 and closed
