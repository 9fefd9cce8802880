"""Raw-socket HTTP client helpers and an engine-level test app for tests/test_http_*.py."""

from __future__ import annotations

import asyncio
import select
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import NamedTuple

from kamisama_server.http.exchange import Exchange


@dataclass
class Response:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    raw_head: bytes = b""
    extra: list[int] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


def connect(port: int, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.settimeout(timeout)
    return sock


class Reader:
    """Reads HTTP/1.1 responses off a socket, keeping leftover bytes between them."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _more(self) -> bool:
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            return False
        if not data:
            return False
        self.buf += data
        return True

    def _until(self, marker: bytes) -> bytes:
        deadline = time.monotonic() + 10
        while marker not in self.buf:
            if time.monotonic() > deadline or not self._more():
                raise EOFError(f"no {marker!r} before close; got {self.buf[:200]!r}")
        head, _, self.buf = self.buf.partition(marker)
        return head

    def _exactly(self, size: int) -> bytes:
        deadline = time.monotonic() + 10
        while len(self.buf) < size:
            if time.monotonic() > deadline or not self._more():
                raise EOFError(f"wanted {size} bytes, have {len(self.buf)}")
        data, self.buf = self.buf[:size], self.buf[size:]
        return data

    def read_to_close(self) -> bytes:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self._more():
            pass
        data, self.buf = self.buf, b""
        return data

    def response(self, head_request: bool = False) -> Response:
        head = self._until(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        version, status, *reason = lines[0].decode("latin-1").split(" ", 2)
        assert version == "HTTP/1.1", lines[0]
        headers = []
        for line in lines[1:]:
            name, _, value = line.decode("latin-1").partition(":")
            headers.append((name.strip().lower(), value.strip()))
        resp = Response(int(status), reason[0] if reason else "", headers, b"", head)
        if resp.status < 200:
            return resp
        if head_request or resp.status in (204, 304):
            return resp
        length = resp.header("content-length")
        if resp.header("transfer-encoding") == "chunked":
            body = b""
            while True:
                size = int(self._until(b"\r\n").split(b";")[0], 16)
                if size == 0:
                    self._until(b"\r\n")
                    break
                body += self._exactly(size)
                assert self._exactly(2) == b"\r\n"
            resp.body = body
        elif length is not None:
            resp.body = self._exactly(int(length))
        else:
            resp.body = self.read_to_close()
        return resp

    def closed(self, timeout: float = 5.0) -> bool:
        """True if the server closes the connection (EOF or reset) within ``timeout``."""
        self.sock.settimeout(timeout)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
                self.buf += data
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False


def request(port: int, raw: bytes, timeout: float = 5.0) -> tuple[Response, bool]:
    """Send ``raw`` on a fresh connection; return the first response and whether it closed."""
    with connect(port, timeout) as sock:
        sock.sendall(raw)
        reader = Reader(sock)
        resp = reader.response()
        return resp, reader.closed(timeout)


class Timed(NamedTuple):
    """One answer and how long it took; status 0 (and the error in ``body``): no answer."""

    status: int
    seconds: float
    body: bytes


def timed_get(port: int, path: str, timeout: float = 10.0) -> Timed:
    """GET on a new connection: the status, seconds from connect to the whole answer, body."""
    began = time.monotonic()
    with connect(port, timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        response = Reader(sock).response()
    return Timed(response.status, time.monotonic() - began, response.body)


def in_background(
    port: int, path: str, timeout: float = 10.0
) -> tuple[threading.Thread, list[Timed]]:
    """``timed_get`` in a thread; its answer (or status 0 and the error) lands in the list."""
    answers: list[Timed] = []

    def get() -> None:
        began = time.monotonic()
        try:
            answers.append(timed_get(port, path, timeout))
        except (OSError, EOFError) as error:
            answers.append(Timed(0, time.monotonic() - began, repr(error).encode()))

    thread = threading.Thread(target=get, daemon=True)
    thread.start()
    return thread, answers


def stream_until_answered(port: int, head: bytes, piece: bytes, most: int) -> tuple[int, int]:
    """Send ``head``, then ``piece`` again and again until the server answers (at most
    ``most`` bytes); the status and how many bytes went out before it.

    A server that buffers without bound never answers: the read then times out.
    """
    with connect(port) as sock:
        sock.sendall(head)
        sent = 0
        sock.setblocking(False)
        while sent < most:
            try:
                if sock.recv(1, socket.MSG_PEEK):
                    break
            except BlockingIOError:
                pass
            except OSError:
                break
            try:
                sent += sock.send(piece)
            except BlockingIOError:
                select.select([sock], [sock], [], 1.0)
            except OSError:
                break
        sock.setblocking(True)
        sock.settimeout(5)
        reader = Reader(sock)
        status = reader.response().status
        assert reader.closed()
        return status, sent


def good_request(port: int) -> Response:
    with connect(port) as sock:
        sock.sendall(b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\n")
        return Reader(sock).response()


async def engine_app(ex: Exchange) -> None:
    """An app written straight against the engine contract, one behaviour per path."""
    path = ex.head.raw_path
    if path == b"/raise":
        raise RuntimeError("boom before head")
    if path == b"/raise-after-head":
        await ex.send_head(200, [(b"content-length", b"100")])
        await ex.write(b"partial")
        raise RuntimeError("boom after head")
    if path == b"/bad-status":
        await ex.send_head(1000, [])
        return
    if path == b"/bad-header":
        await ex.send_head(200, [(b"x-evil", b"a\r\nset-cookie: x=1")])
        return
    if path == b"/noread":
        await ex.send_head(403, [(b"content-length", b"2")])
        await ex.write(b"no")
        await ex.end()
        return
    if path.startswith(b"/sleep"):
        await asyncio.sleep(float(ex.head.query_string or b"0.2"))
    if path == b"/stream":
        await ex.send_head(200, [(b"content-type", b"text/plain")])
        for i in range(3):
            await ex.write(b"part%d;" % i)
        await ex.end()
        return
    body = b""
    while True:
        chunk = await ex.receive()
        if not chunk:
            break
        body += chunk
    out = body if path == b"/echo" else b"ok " + path
    await ex.send_head(
        200, [(b"content-length", b"%d" % len(out)), (b"x-method", ex.head.method.encode())]
    )
    await ex.write(out)
    await ex.end()
