"""ASGI 3 over the engine: HTTP scope and messages, errors, pathsend, lifespan, WebSockets."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets.sync.client
from fastapi import FastAPI, WebSocket
from fastapi.responses import StreamingResponse
from http_support import Reader, connect, request

from kamisama_server.http.asgi import AsgiAdapter
from kamisama_server.http.background import BackgroundServer
from kamisama_server.http.config import HttpConfig
from kamisama_server.http.lifespan import LifespanFailed


def serve(app: Any, config: HttpConfig | None = None, **adapter_options: Any) -> BackgroundServer:
    config = config or HttpConfig()
    adapter = AsgiAdapter(app, config, **adapter_options)
    return BackgroundServer(
        adapter,
        config,
        websocket=adapter.websocket,
        before_start=adapter.startup,
        after_drain=adapter.shutdown,
    )


async def raw_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Plain ASGI app: one behaviour per path."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                scope["state"]["answer"] = 42
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"].removeprefix(scope["root_path"])
    if path.startswith("/scope"):
        shown = {k: v for k, v in scope.items() if k not in ("headers", "raw_path", "query_string")}
        shown["headers"] = [[n.decode(), v.decode()] for n, v in scope["headers"]]
        shown["raw_path"] = scope["raw_path"].decode()
        shown["query_string"] = scope["query_string"].decode()
        body = json.dumps(shown).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})
    elif path == "/echo":
        chunks, messages = [], 0
        while True:
            message = await receive()
            messages += 1
            chunks.append(message["body"])
            if not message["more_body"]:
                break
        body = b"".join(chunks)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", b"%d" % len(body))],
            }
        )
        await send({"type": "http.response.body", "body": body})
    elif path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for i in range(3):
            await send({"type": "http.response.body", "body": b"%d" % i, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/raise":
        raise RuntimeError("app failed")
    elif path == "/bad-status":
        await send({"type": "http.response.start", "status": 99, "headers": []})
    elif path == "/crlf":
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"x", b"1\r\nx-injected: 1")],
            }
        )
    elif path == "/nothing":
        return
    elif path == "/disconnect-after-response":
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        assert (await receive())["type"] == "http.request"
        assert (await receive())["type"] == "http.disconnect"
    elif path == "/pathsend":
        file = Path(scope["query_string"].decode())
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", b"%d" % file.stat().st_size)],
            }
        )
        await send({"type": "http.response.pathsend", "path": str(file)})
    else:
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b"not found"})


@pytest.fixture(scope="module")
def server() -> Iterator[BackgroundServer]:
    with serve(raw_app, HttpConfig(root_path="/api")) as srv:
        yield srv


def test_http_scope_follows_asgi_spec(server: BackgroundServer) -> None:
    resp = httpx.get(f"{server.url}/scope%20x?a=1&b=%20", headers={"X-Test": "yes"})
    scope = resp.json()
    assert scope["type"] == "http"
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert scope["http_version"] == "1.1"
    assert scope["method"] == "GET"
    assert scope["scheme"] == "http"
    assert scope["root_path"] == "/api"
    assert scope["path"] == "/api/scope x"
    assert scope["raw_path"] == "/api/scope%20x"
    assert scope["query_string"] == "a=1&b=%20"
    assert ["x-test", "yes"] in scope["headers"]
    assert scope["server"] == ["127.0.0.1", server.port]
    assert scope["client"][0] == "127.0.0.1"
    assert scope["state"] == {"answer": 42}  # from lifespan startup
    assert "http.response.pathsend" in scope["extensions"]


def test_request_body_in_one_message_and_streamed(server: BackgroundServer) -> None:
    with httpx.Client(base_url=server.url) as client:
        assert client.post("/echo", content=b"hello").content == b"hello"
        big = [b"a" * 100_000, b"b" * 100_000]
        assert client.post("/echo", content=iter(big)).content == b"".join(big)
        resp = client.get("/stream")
        assert resp.text == "012" and resp.headers["transfer-encoding"] == "chunked"


async def bytes_like_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Valid ASGI that is not bytes-and-tuples: pairs as lists (ASGI says "iterable of
    [name, value]"), a tuple of pairs, bytearray values, bytearray and memoryview bodies,
    an ``http.HTTPStatus`` for the status (an int, as uvicorn takes it)."""
    if scope["path"] == "/whole":
        headers: Any = [[b"content-type", bytearray(b"text/plain")], [b"x-pair", b"list"]]
        status = HTTPStatus.CREATED
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": bytearray(b"one bytearray")})
    else:
        headers = ((b"x-pair", b"tuple"),)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": memoryview(b"view, "), "more_body": True})
        await send({"type": "http.response.body", "body": bytearray(b"bytearray")})


def test_response_status_pairs_and_bodies_of_any_valid_type() -> None:
    # Both builds must take them: the compiled one checks declared types at run time.
    with serve(bytes_like_app) as srv, httpx.Client(base_url=srv.url) as client:
        for _ in range(2):  # the second time from the scanned-headers cache, if cached
            whole = client.get("/whole")
            assert (whole.status_code, whole.content) == (201, b"one bytearray")
            assert whole.headers["content-type"] == "text/plain"
            assert whole.headers["x-pair"] == "list"
            streamed = client.get("/streamed")
            assert (streamed.status_code, streamed.content) == (200, b"view, bytearray")
            assert streamed.headers["x-pair"] == "tuple"


@pytest.mark.parametrize("path", ["/raise", "/bad-status", "/crlf", "/nothing"])
def test_app_errors_give_500(
    server: BackgroundServer, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="kamisama.http")
    resp, closed = request(server.port, f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    assert resp.status == 500 and closed
    assert b"x-injected" not in resp.raw_head
    assert caplog.records
    assert httpx.get(f"{server.url}/echo").status_code == 200


def test_http_disconnect_after_response(server: BackgroundServer) -> None:
    with connect(server.port) as sock:
        sock.sendall(
            b"GET /disconnect-after-response HTTP/1.1\r\nHost: t\r\n\r\n"
            b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\n"
        )
        reader = Reader(sock)
        assert reader.response().status == 204
        assert reader.response().status == 200


def test_pathsend_sends_the_file(server: BackgroundServer, tmp_path: Path) -> None:
    file = tmp_path / "data.bin"
    file.write_bytes(bytes(range(256)) * 4000)
    resp = httpx.get(f"{server.url}/pathsend?{file}", timeout=10)
    assert resp.status_code == 200 and resp.content == file.read_bytes()


def test_http_disconnect_reaches_app_when_client_leaves() -> None:
    seen = threading.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        assert (await receive())["type"] == "http.request"
        message = await asyncio.wait_for(receive(), 10)
        if message["type"] == "http.disconnect":
            seen.set()

    with serve(app, lifespan="off") as srv:
        sock = connect(srv.port)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert srv.server is not None
        deadline_ok = False
        for _ in range(500):
            if srv.server.inflight == 1:
                deadline_ok = True
                break
            threading.Event().wait(0.01)
        assert deadline_ok
        sock.close()
        assert seen.wait(10)


def test_lifespan_startup_failure_raises() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no database"})

    adapter = AsgiAdapter(app)
    with pytest.raises(LifespanFailed):
        asyncio.run(adapter.startup())


def test_fastapi_app_with_lifespan_streaming_and_websocket() -> None:
    events: list[str] = []
    api = FastAPI(
        on_startup=[lambda: events.append("startup")],
        on_shutdown=[lambda: events.append("shutdown")],
    )

    @api.get("/items/{item}")
    async def item(item: int, q: str = "") -> dict[str, Any]:
        return {"item": item, "q": q}

    @api.get("/stream")
    async def stream() -> StreamingResponse:
        async def gen() -> Any:
            for i in range(3):
                yield f"{i},"

        return StreamingResponse(gen())

    @api.websocket("/ws")
    async def ws(socket: WebSocket) -> None:
        await socket.accept()
        while True:
            text = await socket.receive_text()
            await socket.send_text(f"echo {text}")

    srv = serve(api).start()
    try:
        assert events == ["startup"]
        with httpx.Client(base_url=srv.url) as client:
            assert client.get("/items/3", params={"q": "x"}).json() == {"item": 3, "q": "x"}
            assert client.get("/stream").text == "0,1,2,"
            assert client.head("/items/3").status_code in (200, 405)
        ws_url = f"ws://127.0.0.1:{srv.port}/ws"
        with websockets.sync.client.connect(ws_url, open_timeout=5, close_timeout=5) as conn:
            conn.send("hi")
            assert conn.recv(timeout=5) == "echo hi"
            # Drain asks open WebSockets to go away (1012), then lifespan shutdown runs.
            drain = threading.Thread(target=srv.drain)
            drain.start()
            with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
                conn.recv(timeout=10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
            drain.join(15)
            assert not drain.is_alive()
        assert events == ["startup", "shutdown"]
    finally:
        srv.stop()
