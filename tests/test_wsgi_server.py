"""The WSGI adapter end to end: a real engine on 127.0.0.1, real clients (httpx, raw sockets).

Most tests run twice: with ``threads=1`` (the default: one app thread, so
calls queue for it) and ``threads=4`` (calls overlap).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import io
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from wsgiref.validate import validator

import httpx
import pytest
from http_support import Reader, connect
from processes import wait_until

from kamisama_server.http.background import BackgroundServer
from kamisama_server.http.config import HttpConfig
from kamisama_server.http.wsgi import WSGIAdapter

StartResponse = Callable[..., Callable[[bytes], None]]
Environ = dict[str, Any]

# What the app saw, for the tests to check: keyed by the request's ?token=.
closed: dict[str, threading.Event] = {}
seen: dict[str, Any] = {}


def token(environ: Environ) -> str:
    return environ["QUERY_STRING"].partition("token=")[2].partition("&")[0]


def closed_event(name: str) -> threading.Event:
    return closed.setdefault(name, threading.Event())


class Tracked:
    """An iterable that records its close() in ``closed[name]``."""

    def __init__(self, chunks: Iterable[bytes], name: str) -> None:
        self.chunks = iter(chunks)
        self.name = name

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        return next(self.chunks)

    def close(self) -> None:
        closed_event(self.name).set()


def text(start_response: StartResponse, body: bytes, status: str = "200 OK") -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def read_all(environ: Environ) -> bytes:
    stream = environ["wsgi.input"]
    parts = []
    for _ in range(100_000):
        piece = stream.read(65536)
        if not piece:
            break
        parts.append(piece)
    return b"".join(parts)


def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    name = token(environ)
    if path == "/hello":
        return text(start_response, b"Hello, world!")
    if path == "/record":
        seen[name] = "called"
        return text(start_response, b"recorded")
    if path == "/bye":
        start_response("200 OK", [("Content-Length", "3"), ("Connection", "close")])
        return [b"bye"]
    if path == "/nolen":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"no ", b"length"]
    if path == "/environ":
        keys = {k: v for k, v in environ.items() if isinstance(v, (str, bool, int))}
        return text(start_response, json.dumps(keys).encode())
    if path == "/echo":
        body = read_all(environ)
        out = {"len": len(body), "sha": hashlib.sha256(body).hexdigest()}
        return text(start_response, json.dumps(out).encode())
    if path == "/lines":
        lines = list(environ["wsgi.input"])
        return text(start_response, json.dumps([x.decode() for x in lines]).encode())
    if path == "/gen":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Tracked((b"part%d;" % i for i in range(3)), name)
    if path == "/gen-len":
        start_response("200 OK", [("Content-Length", "12")])
        return Tracked(iter([b"abcdef", b"", b"ghijkl"]), name)
    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"one;")
        write(b"two;")
        return Tracked([b"three"], name)
    if path == "/exc-before":
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            raise ValueError("found a problem before the body")
        except ValueError:
            start_response("503 Service Unavailable", [("Content-Length", "7")], sys.exc_info())
        return [b"handled"]
    if path == "/exc-after":
        return exc_after(start_response, name)
    if path == "/raise":
        raise RuntimeError("the app failed")
    if path == "/raise-iter":
        return raise_iter(start_response, name)
    if path == "/bad-status":
        return text(start_response, b"x", "2000 OK")
    if path == "/crlf-status":
        return text(start_response, b"x", "200 OK\r\nX-Evil: 1")
    if path == "/crlf-header":
        start_response("200 OK", [("X-Evil", "a\r\nSet-Cookie: b=1")])
        return Tracked([b"x"], name)
    if path == "/bytes-header":
        start_response("200 OK", [(b"X-Bytes", b"1")])
        return [b"x"]
    if path == "/loose-types":  # valid enough for every WSGI server we know
        write = start_response("200 OK", [["Content-Type", "text/plain"]])  # type: ignore[list-item]
        write(bytearray(b"written;"))
        return iter([b"bytes;", bytearray(b"bytearray;"), memoryview(b"memoryview")])
    if path == "/loose-list":
        start_response("200 OK", [["Content-Length", "10"]])  # type: ignore[list-item]
        return [bytearray(b"bytearray;")]
    if path == "/tuple-headers":
        start_response("200 OK", (("Content-Length", "1"),))  # type: ignore[arg-type]
        return [b"x"]
    if path == "/not-bytes":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return ["text"]
    if path == "/too-long":
        start_response("200 OK", [("Content-Length", "5")])
        return Tracked([b"01234", b"56789"], name)
    if path == "/too-short":
        start_response("200 OK", [("Content-Length", "10")])
        return [b"01234"]
    if path == "/file":
        return serve_file(environ, start_response)
    if path == "/bytesio":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](io.BytesIO(b"x" * 20000), 4096)
    if path == "/read-error":
        try:
            read_all(environ)
        except OSError as exc:
            seen[name] = type(exc).__name__
            return text(start_response, b"the app caught it")
        return text(start_response, b"no error")
    if path == "/read-error-late":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"started;")
        read_all(environ)
        return [b"done"]
    if path == "/reject":
        return text(start_response, b"no thanks", "403 Forbidden")
    if path == "/sleep":
        time.sleep(float(environ["QUERY_STRING"].partition("s=")[2] or "0.3"))
        return text(start_response, b"slept")
    if path == "/big":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return Tracked(big(name), name)
    if path == "/endless":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Tracked(endless(), name)
    return text(start_response, b"not found", "404 Not Found")


def exc_after(start_response: StartResponse, name: str) -> Iterator[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"first;"
    try:
        raise ValueError("a problem after the body started")
    except ValueError:
        try:
            start_response("500 Internal Server Error", [], sys.exc_info())
        except ValueError:
            seen[name] = "re-raised"
            raise


def raise_iter(start_response: StartResponse, name: str) -> Iterable[bytes]:
    def gen() -> Iterator[bytes]:
        yield b"first;"
        raise RuntimeError("failed while iterating")

    start_response("200 OK", [("Content-Type", "text/plain")])
    return Tracked(gen(), name)


def big(name: str) -> Iterator[bytes]:
    chunk = b"b" * 65536
    seen[name] = 0
    for _ in range(BIG // len(chunk)):
        seen[name] += len(chunk)
        yield chunk


BIG = 64 * 1024 * 1024


def endless() -> Iterator[bytes]:
    for _ in range(100_000):
        yield b"x" * 1024
        time.sleep(0.001)


def serve_file(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    query = dict(p.split("=") for p in environ["QUERY_STRING"].split("&"))
    f = open(query["path"], "rb")  # noqa: SIM115 - the wrapper closes it
    f.seek(int(query.get("seek", "0")))
    headers = [("Content-Type", "application/octet-stream")]
    if "len" in query:
        headers.append(("Content-Length", query["len"]))
    start_response("200 OK", headers)
    return environ["wsgi.file_wrapper"](f)


@pytest.fixture(scope="module", params=[1, 4], ids=["threads1", "threads4"])
def server(request: pytest.FixtureRequest) -> Iterator[BackgroundServer]:
    adapter = WSGIAdapter(app, threads=request.param)
    config = HttpConfig(limit_request_body=1_000_000, access_log=False)
    with BackgroundServer(adapter, config) as srv:
        yield srv
    adapter.close()


@pytest.fixture
def client(server: BackgroundServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as c:
        yield c


def wait_for(event: threading.Event, what: str, timeout: float = 5.0) -> None:
    assert event.wait(timeout), f"timed out waiting for {what}"


def test_hello_and_keep_alive(client: httpx.Client) -> None:
    for _ in range(3):
        r = client.get("/hello")
        assert r.status_code == 200
        assert r.text == "Hello, world!"
        assert r.headers["content-length"] == "13"


def test_pipelined_in_one_packet_and_nothing_after_a_close(server: BackgroundServer) -> None:
    # Inline, body-less requests are answered inside the parser's callback: those
    # pipelined in the same packet still go in order (around one with a body, which
    # takes the task path), and a request after one whose response closes the
    # connection never reaches the app.
    hello = b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n"
    raw = b"".join(
        [
            hello,
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc",
            b"GET /nolen HTTP/1.1\r\nHost: t\r\n\r\n",
            hello,
        ]
    )
    with connect(server.port) as sock:
        sock.sendall(raw)
        reader = Reader(sock)
        bodies = [reader.response().body for _ in range(4)]
    assert bodies[0] == bodies[3] == b"Hello, world!"
    assert json.loads(bodies[1])["len"] == 3
    assert bodies[2] == b"no length"
    for i, last in enumerate(
        (
            b"GET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",  # the client closes
            b"GET /bye HTTP/1.1\r\nHost: t\r\n\r\n",  # the app closes
        )
    ):
        after = b"GET /record?token=after-close-%d HTTP/1.1\r\nHost: t\r\n\r\n" % i
        with connect(server.port) as sock:
            sock.sendall(hello + last + after)
            reader = Reader(sock)
            bodies = [reader.response().body for _ in range(2)]
            assert reader.closed()
            assert reader.buf == b"", "nothing is answered after a response that closes"
        assert bodies[0] == b"Hello, world!" and bodies[1] in (b"Hello, world!", b"bye")
        assert f"after-close-{i}" not in seen, "the app never sees a request after a close"


def test_call_iteration_and_close_run_on_one_app_thread_with_no_loop() -> None:
    """PEP 3333 apps (Django, asgiref, thread-locals, ContextVars) need one plain thread."""
    seen: list[tuple[str, int, bool, str]] = []
    var: contextvars.ContextVar[str] = contextvars.ContextVar("request", default="unset")

    def has_loop() -> bool:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return False
        return True

    class Body:
        def __iter__(self) -> Iterator[bytes]:
            for part in (b"a", b"b"):
                seen.append(("next", threading.get_ident(), has_loop(), var.get()))
                yield part

        def close(self) -> None:
            seen.append(("close", threading.get_ident(), has_loop(), var.get()))

    def streaming_app(environ: Environ, start_response: StartResponse) -> Body:
        var.set(environ["QUERY_STRING"])
        seen.append(("call", threading.get_ident(), has_loop(), var.get()))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Body()

    adapter = WSGIAdapter(streaming_app, threads=1)
    config = HttpConfig(access_log=False)
    with BackgroundServer(adapter, config) as srv, httpx.Client(base_url=srv.url) as client:
        for i in range(3):
            seen.clear()
            assert client.get(f"/s?r{i}").text == "ab"
            wait_until(lambda: len(seen) == 4, 5.0, "close()")
            assert [step for step, *_ in seen] == ["call", "next", "next", "close"]
            assert len({tid for _, tid, _, _ in seen}) == 1
            assert threading.get_ident() not in {tid for _, tid, _, _ in seen}
            assert not any(loop for _, _, loop, _ in seen)
            assert {value for *_, value in seen} == {f"r{i}"}
    adapter.close()


def test_one_content_length_header(server: BackgroundServer) -> None:
    with connect(server.port) as sock:
        sock.sendall(b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
        resp = Reader(sock).response()
    assert resp.raw_head.lower().count(b"content-length:") == 1


def test_a_complete_body_without_length_gets_one(client: httpx.Client) -> None:
    r = client.get("/nolen")
    assert r.text == "no length"
    assert r.headers["content-length"] == "9"
    assert "transfer-encoding" not in r.headers


def test_environ_over_the_wire(server: BackgroundServer, client: httpx.Client) -> None:
    r = client.get(
        "/environ",
        params={"a": "1 2"},
        headers=[("X-Dup", "one"), ("X-Dup", "two"), ("X_Dup", "smuggled")],
    )
    env = r.json()
    assert env["REQUEST_METHOD"] == "GET"
    assert env["PATH_INFO"] == "/environ"
    assert env["QUERY_STRING"] == "a=1+2"
    assert env["HTTP_X_DUP"] == "one,two"
    assert env["SERVER_PORT"] == str(server.port)
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert env["wsgi.multiprocess"] is True
    assert env["wsgi.run_once"] is False
    assert env["wsgi.input_terminated"] is True
    assert env["wsgi.multithread"] is (server.server.state.handler.threads > 1)  # type: ignore[union-attr, attr-defined]


def test_percent_encoded_path(client: httpx.Client) -> None:
    with connect(int(client.base_url.port or 0)) as sock:
        sock.sendall(b"GET /env%69ron?x=%2F HTTP/1.1\r\nHost: t\r\n\r\n")
        resp = Reader(sock).response()
    assert json.loads(resp.body)["QUERY_STRING"] == "x=%2F"


@pytest.mark.parametrize("size", [0, 10, 65536, 65537, 3_000_000 // 4])
def test_body_with_length(client: httpx.Client, size: int) -> None:
    body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    r = client.post("/echo", content=body)
    assert r.json() == {"len": size, "sha": hashlib.sha256(body).hexdigest()}


def test_chunked_body(client: httpx.Client) -> None:
    pieces = [b"a" * 1000, b"b" * 70000, b"c"]
    r = client.post("/echo", content=iter(pieces))
    body = b"".join(pieces)
    assert r.json() == {"len": len(body), "sha": hashlib.sha256(body).hexdigest()}


def test_input_iterates_lines(client: httpx.Client) -> None:
    r = client.post("/lines", content=iter([b"one\ntw", b"o\n", b"\nthree"]))
    assert r.json() == ["one\n", "two\n", "\n", "three"]


def test_generator_streams_chunked_and_is_closed(client: httpx.Client) -> None:
    r = client.get("/gen", params={"token": "gen"})
    assert r.text == "part0;part1;part2;"
    assert r.headers["transfer-encoding"] == "chunked"
    wait_for(closed_event("gen"), "close() of the iterable")


def test_generator_with_length(client: httpx.Client) -> None:
    r = client.get("/gen-len", params={"token": "genlen"})
    assert r.text == "abcdefghijkl"
    assert r.headers["content-length"] == "12"
    wait_for(closed_event("genlen"), "close()")


def test_write_callable() -> None:
    adapter = WSGIAdapter(app, threads=1)
    with BackgroundServer(adapter) as srv, httpx.Client(base_url=srv.url) as client:
        for i in range(2):
            r = client.get("/write", params={"token": f"write{i}"})
            assert r.text == "one;two;three"
            wait_for(closed_event(f"write{i}"), "close()")
        assert client.get("/hello").text == "Hello, world!"
    adapter.close()


def test_exc_info_before_the_body_replaces_the_head(client: httpx.Client) -> None:
    r = client.get("/exc-before")
    assert (r.status_code, r.text) == (503, "handled")


def test_exc_info_after_the_body_reraises_and_closes(server: BackgroundServer) -> None:
    with connect(server.port) as sock:
        sock.sendall(b"GET /exc-after?token=excafter HTTP/1.1\r\nHost: t\r\n\r\n")
        reader = Reader(sock)
        # The chunked body never ends (EOFError: closed), or, if nothing reached the
        # wire before the error, a clean 500.
        with contextlib.suppress(EOFError):
            assert reader.response().status == 500
    assert seen.get("excafter") == "re-raised"


def test_app_raising_gets_500_and_a_traceback(
    client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="kamisama.wsgi"):
        r = client.get("/raise")
    assert r.status_code == 500
    record = next(r for r in caplog.records if r.name == "kamisama.wsgi")
    assert record.exc_info is not None and "the app failed" in str(record.exc_info[1])
    assert client.get("/hello").status_code == 200


def test_app_raising_after_the_head_aborts(
    server: BackgroundServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="kamisama.wsgi"), connect(server.port) as s:
        s.sendall(b"GET /raise-iter?token=raiseiter HTTP/1.1\r\nHost: t\r\n\r\n")
        reader = Reader(s)
        # Closed mid-body (EOFError), or in a thread the error may come before the
        # loop wrote anything: then a clean 500.
        with contextlib.suppress(EOFError):
            assert reader.response().status == 500
    wait_for(closed_event("raiseiter"), "close() after the error")
    assert any(
        "failed while iterating" in str(r.exc_info and r.exc_info[1]) for r in caplog.records
    )


@pytest.mark.parametrize("path", ["/bad-status", "/crlf-status", "/crlf-header", "/bytes-header"])
def test_invalid_head_from_the_app_is_500(server: BackgroundServer, path: str) -> None:
    with connect(server.port) as sock:
        sock.sendall(f"GET {path}?token=bad{path[1:]} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        reader = Reader(sock)
        resp = reader.response()
        assert resp.status == 500
        assert b"Evil" not in resp.raw_head and b"Set-Cookie" not in resp.raw_head
        sock.sendall(b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
        assert reader.response().body == b"Hello, world!"
    if path == "/crlf-header":
        wait_for(closed_event("badcrlf-header"), "close()")


def test_app_values_of_any_accepted_type(client: httpx.Client) -> None:
    """List pairs, bytearray and memoryview chunks are served; a tuple of headers and a
    str chunk are refused with a 500. The same in both builds: the compiled one checks
    declared types at run time, so these values must reach our own checks."""
    loose = client.get("/loose-types")
    assert (loose.status_code, loose.text) == (200, "written;bytes;bytearray;memoryview")
    assert loose.headers["content-type"] == "text/plain"
    listed = client.get("/loose-list")
    assert (listed.status_code, listed.text) == (200, "bytearray;")
    assert client.get("/tuple-headers").status_code == 500
    assert client.get("/not-bytes").status_code == 500  # a list body is held: no head went out
    assert client.get("/hello").text == "Hello, world!"


def test_never_more_than_content_length(server: BackgroundServer) -> None:
    with connect(server.port) as sock:
        sock.sendall(b"GET /too-long?token=toolong HTTP/1.1\r\nHost: t\r\n\r\n")
        reader = Reader(sock)
        assert reader.response().body == b"01234"
        sock.sendall(b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
        assert reader.response().body == b"Hello, world!"  # nothing extra was on the wire
    wait_for(closed_event("toolong"), "close()")


def test_less_than_content_length_closes(server: BackgroundServer) -> None:
    with connect(server.port) as sock:
        sock.sendall(b"GET /too-short HTTP/1.1\r\nHost: t\r\n\r\n")
        reader = Reader(sock)
        with pytest.raises(EOFError):
            reader.response()
        assert reader.buf == b"01234"


def test_head_request(client: httpx.Client) -> None:
    r = client.head("/hello")
    assert r.status_code == 200 and r.content == b""
    assert r.headers["content-length"] == "13"
    assert client.get("/hello").text == "Hello, world!"


@pytest.mark.parametrize(
    ("query", "expect"),
    [("", slice(None)), ("&seek=100", slice(100, None)), ("&seek=10&len=50", slice(10, 60))],
)
def test_file_wrapper_sends_the_file(
    client: httpx.Client, tmp_path: Path, query: str, expect: slice
) -> None:
    data = bytes(range(256)) * 2000
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    r = client.get(f"/file?path={path}{query}")
    assert r.content == data[expect]
    assert r.headers["content-length"] == str(len(data[expect]))


def test_file_wrapper_over_a_non_file(client: httpx.Client) -> None:
    assert client.get("/bytesio").content == b"x" * 20000


def test_client_disconnect_closes_the_iterable(server: BackgroundServer) -> None:
    with connect(server.port) as sock:
        sock.sendall(b"GET /endless?token=endless HTTP/1.1\r\nHost: t\r\n\r\n")
        assert sock.recv(100)
    wait_for(closed_event("endless"), "close() after the client left", timeout=10)


def test_expect_continue_is_sent_when_the_app_reads(server: BackgroundServer) -> None:
    with connect(server.port) as sock:
        sock.sendall(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        reader = Reader(sock)
        interim = reader.response()
        assert interim.status == 100
        sock.sendall(b"hello")
        assert json.loads(reader.response().body)["len"] == 5


def test_expect_continue_not_sent_when_the_app_rejects(server: BackgroundServer) -> None:
    with connect(server.port) as sock:
        sock.sendall(
            b"POST /reject HTTP/1.1\r\nHost: t\r\nContent-Length: 500000\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        resp = Reader(sock).response()
        assert resp.status == 403


def chunked_request(path: str, chunks: list[bytes], trailer: bytes = b"0\r\n\r\n") -> bytes:
    out = [f"POST {path} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".encode()]
    for c in chunks:
        out.append(b"%x\r\n%b\r\n" % (len(c), c))
    out.append(trailer)
    return b"".join(out)


def test_body_over_the_limit_while_reading_is_413(server: BackgroundServer) -> None:
    # Chunked: the engine only learns of the size as the app reads.
    with connect(server.port) as sock:
        sock.sendall(chunked_request("/read-error?token=over", [b"x" * 300_000] * 4))
        resp = Reader(sock).response()
    assert resp.status == 413
    assert seen["over"] == "RequestBodyTooLarge"


def test_invalid_body_while_reading_is_400(server: BackgroundServer) -> None:
    with connect(server.port) as sock:
        sock.sendall(chunked_request("/read-error?token=invalid", [b"abc"], b"zz\r\n\r\n"))
        resp = Reader(sock).response()
    assert resp.status == 400
    assert seen["invalid"] == "RequestBodyError"


def test_body_error_after_the_head_closes(server: BackgroundServer) -> None:
    with connect(server.port) as sock:
        sock.sendall(chunked_request("/read-error-late", [b"abc"], b"zz\r\n\r\n"))
        reader = Reader(sock)
        with pytest.raises(EOFError):
            reader.response()


def test_validator_get_and_post() -> None:
    def inner(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        stream = environ["wsgi.input"]
        body = b""
        for _ in range(1000):
            piece = stream.read(1024)
            if not piece:
                break
            body += piece
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"got:", body]

    for threads in (1, 2):
        adapter = WSGIAdapter(validator(inner), threads=threads)
        with BackgroundServer(adapter) as srv, httpx.Client(base_url=srv.url) as c:
            assert c.get("/").text == "got:"
            assert c.post("/", content=b"x" * 5000).text == "got:" + "x" * 5000
            assert c.post("/", content=iter([b"ab", b"cd"])).text == "got:abcd"
        adapter.close()


def test_blocking_app_serves_threads_requests_at_once() -> None:
    adapter = WSGIAdapter(app, threads=4)
    with BackgroundServer(adapter, HttpConfig(access_log=False)) as srv:
        # Warm the pool so thread start-up is not in the measurement.
        httpx.get(srv.url + "/hello")

        def one(_: int) -> int:
            return httpx.get(srv.url + "/sleep?s=0.5", timeout=10).status_code

        start = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            statuses = list(pool.map(one, range(4)))
        elapsed = time.monotonic() - start
    adapter.close()
    assert statuses == [200] * 4
    # Four 0.5 s calls one after the other would take 2 s.
    assert elapsed < 1.6, elapsed


def test_root_path_sets_script_name() -> None:
    adapter = WSGIAdapter(app, threads=1)
    with BackgroundServer(adapter, HttpConfig(root_path="/api")) as srv:
        env = httpx.get(srv.url + "/api/environ").json()
        assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/api", "/environ")
        env = httpx.get(srv.url + "/environ").json()
        assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/api", "/environ")
    adapter.close()


def test_a_slow_reader_holds_back_a_streaming_app(server: BackgroundServer) -> None:
    # Backpressure: while the client reads nothing, the app's generator stops being
    # pulled once the buffers (ours, the transport's, the kernel's) are full.
    with connect(server.port, timeout=20) as sock:
        sock.sendall(b"GET /big?token=big HTTP/1.1\r\nHost: t\r\n\r\n")
        last, stable_since = -1, time.monotonic()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            produced = seen.get("big", 0)
            if produced != last:
                last, stable_since = produced, time.monotonic()
            elif time.monotonic() - stable_since > 0.5:
                break
            time.sleep(0.05)
        assert 0 < last < 24 * 1024 * 1024, last
        # Now read it all (the chunked framing adds a few bytes per 64 KiB chunk).
        received, tail = 0, b""
        while not tail.endswith(b"\r\n0\r\n\r\n"):
            data = sock.recv(1 << 20)
            assert data, "closed before the end of the body"
            received += len(data)
            tail = (tail + data)[-16:]
        assert BIG < received < BIG + 1024 * 1024
    wait_for(closed_event("big"), "close()")
