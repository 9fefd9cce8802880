"""Issue 9, point 8: WebSocket clients that flood and never read, against the real server.

``kamisama-serve`` runs a raw ASGI app; the clients speak WebSocket frames on
plain sockets (masked with a zero key, so a frame is built by concatenation),
bounded in count and time. Outcomes are read from outside: the worker's
resident size (``/proc/PID/status``), the close code the server sends, and
whether the worker still holds the connection (``/proc/net/tcp``).
"""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from http_support import connect
from serve_support import Server, StartServer, held_connections, serving
from test_hostile_clients import rss_kib, settles_at, worker_pid

pytestmark = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")

APP = """
BIG = b"x" * 65536


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return  # not spoken: the server goes on without it ("auto")
    if scope["type"] != "websocket":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    await receive()
    await send({"type": "websocket.accept"})
    if scope["path"] == "/firehose":
        while True:
            await send({"type": "websocket.send", "bytes": BIG})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        size = len(message.get("bytes") or message.get("text") or "")
        await send({"type": "websocket.send", "text": str(size)})
"""

MASK = b"\x00\x00\x00\x00"  # a zero key: the payload goes as it is


def frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """One client frame (masked, as a client's must be)."""
    first = (0x80 if fin else 0) | opcode
    size = len(payload)
    if size < 126:
        head = struct.pack("!BB", first, 0x80 | size)
    elif size < 65536:
        head = struct.pack("!BBH", first, 0x80 | 126, size)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, size)
    return head + MASK + payload


def fragments(count: int) -> bytes:
    """A binary message in ``count`` frames of two bytes each (one-byte ones would be
    CPython's cached single-byte objects, which cost nothing each)."""
    return (
        frame(0x2, b"xy", fin=False)
        + frame(0x0, b"xy", fin=False) * (count - 2)
        + frame(0x0, b"xy")
    )


def peak_rss_kib(pid: int) -> int:
    """The worker's resident high-water mark (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM for pid {pid}")


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[StartServer]:
    yield from serving(tmp_path)


def start(serve: StartServer, *flags: str) -> Server:
    server = serve(["ws_app:app", "-b", "127.0.0.1:0", "-w", "1", *flags], modules={"ws_app": APP})
    server.wait_listening()
    return server


def open_websocket(port: int, path: str = "/", rcvbuf: int | None = None) -> socket.socket:
    """A handshaken WebSocket on a plain socket; ``rcvbuf`` shrinks what the kernel takes."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16))
    sock.sendall(
        b"GET %b HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: %b\r\n\r\n" % (path.encode(), key)
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        assert chunk, f"closed during the handshake: {head!r}"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def read_frame(sock: socket.socket) -> tuple[int, bytes]:
    """The next server frame (unmasked): its opcode and payload."""

    def exactly(count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = sock.recv(count - len(data))
            if not chunk:
                raise EOFError("closed mid-frame")
            data += chunk
        return data

    first, second = exactly(2)
    size = second & 0x7F
    if size == 126:
        (size,) = struct.unpack("!H", exactly(2))
    elif size == 127:
        (size,) = struct.unpack("!Q", exactly(8))
    return first & 0x0F, exactly(size)


def send_for(sock: socket.socket, data: bytes, seconds: float) -> int:
    """Send ``data`` over and over for ``seconds`` or until the server stops taking it."""
    sock.setblocking(False)
    sent = 0
    deadline = time.monotonic() + seconds
    view = memoryview(data)
    position = 0
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        while time.monotonic() < deadline:
            try:
                count = sock.send(view[position:])
            except BlockingIOError:
                time.sleep(0.01)
                continue
            sent += count
            position = (position + count) % len(data)
    sock.setblocking(True)
    return sent


def test_a_message_in_tiny_fragments_costs_its_size(serve: StartServer) -> None:
    """uvicorn keeps a bytes object per fragment (~25 bytes for each byte); we assemble."""
    server = start(serve)
    pid = worker_pid(server)
    count = 1_000_000
    data = fragments(count)
    with open_websocket(server.port) as sock:
        before = max(rss_kib(pid), peak_rss_kib(pid))
        sock.sendall(data)
        opcode, payload = read_frame(sock)
        peak = peak_rss_kib(pid)
    grown = (peak - before) / 1024
    print(f"\n{count} two-byte fragments: worker peak RSS {before // 1024} -> {peak // 1024} MiB")
    assert opcode == 0x1 and payload == str(2 * count).encode()
    assert grown < 16, f"grew {grown:.1f} MiB for a {2 * count / 1e6:.1f} MB message"


def test_a_fragmented_message_over_ws_max_size_closes_with_1009(serve: StartServer) -> None:
    server = start(serve, "--ws-max-size", "65536")
    with open_websocket(server.port) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(frame(0x2, b"x" * 1000, fin=False))
            for _ in range(70):
                sock.sendall(frame(0x0, b"x" * 1000, fin=False))
        opcode, payload = read_frame(sock)
    assert opcode == 0x8 and struct.unpack("!H", payload[:2])[0] == 1009


def test_a_ping_flood_that_never_reads_is_bounded_and_cut(serve: StartServer) -> None:
    """Pongs pile up in the write buffer unless we stop reading pings while it is full."""
    server = start(serve, "--stall-timeout", "1")
    pid = worker_pid(server)
    pings = frame(0x9, b"p" * 125) * 2000
    with open_websocket(server.port, rcvbuf=4096) as sock:
        before = max(rss_kib(pid), peak_rss_kib(pid))
        sent = send_for(sock, pings, 3.0)
        peak = peak_rss_kib(pid)
        remaining = settles_at(lambda: held_connections(pid, server.port), 0, timeout=5.0)
    grown = (peak - before) / 1024
    cut = remaining == 0
    print(
        f"\nping flood: {sent / 1e6:.1f} MB of pings taken; peak RSS +{grown:.1f} MiB; cut: {cut}"
    )
    assert grown < 16, f"grew {grown:.1f} MiB"
    assert remaining == 0


def test_a_client_that_reads_nothing_is_cut_after_the_stall_timeout(serve: StartServer) -> None:
    """The app sends without end; the client reads nothing: closed after --stall-timeout."""
    server = start(serve, "--stall-timeout", "1")
    pid = worker_pid(server)
    with open_websocket(server.port, "/firehose", rcvbuf=4096):
        before = rss_kib(pid)
        began = time.monotonic()
        remaining = settles_at(lambda: held_connections(pid, server.port), 0, timeout=6.0)
        cut = time.monotonic() - began
        grown = (rss_kib(pid) - before) / 1024
    print(f"\nfirehose to a client not reading: cut after {cut:.1f} s; RSS +{grown:.1f} MiB")
    assert remaining == 0 and cut < 4.0
    assert grown < 16
    with connect(server.port) as sock:  # still serving
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 200")
