"""Hostile clients against the real server, WSGI and ASGI: nothing leaks, nothing hangs.

Each attack runs for a bounded count and time against ``kamisama-serve`` on
127.0.0.1 and checks the outcome from outside: the worker's descriptors
(``/proc/PID/fd``) and resident size (``/proc/PID/status``), how soon the
attacking connections are cut, and that good clients are served alongside
(their share and latency are printed; run with ``-s`` to see them).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from http_support import Reader, connect, stream_until_answered
from processes import wait_until
from serve_support import Server, StartServer, held_connections, serving

from kamisama_server.http.background import BackgroundServer
from kamisama_server.http.wsgi import WSGIAdapter

pytestmark = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")

APP = """
import asyncio, os

BIG = b"x" * 65536


def wsgi(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/die":
        os._exit(1)
    if path == "/echo":
        body = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
    if path == "/big":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (BIG for _ in range(1024))
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]


async def asgi(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
    path = scope["path"]
    if path == "/die":
        os._exit(1)
    body = b"ok"
    if path == "/echo":
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
    start = {"type": "http.response.start", "status": 200, "headers": []}
    if path == "/big":
        await send(start)
        for _ in range(1024):
            await send({"type": "http.response.body", "body": BIG, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    start["headers"] = [(b"content-length", str(len(body)).encode())]
    await send(start)
    await send({"type": "http.response.body", "body": body})
"""

INTERFACES = ("wsgi", "asgi")


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[StartServer]:
    yield from serving(tmp_path)


def start(serve: StartServer, interface: str, *flags: str, workers: int = 1) -> Server:
    """One server for ``interface`` on a free port; waits until it listens."""
    args = [f"hostile_app:{interface}", "-b", "127.0.0.1:0", "-w", str(workers), *flags]
    server = serve(args, modules={"hostile_app": APP})
    server.wait_listening()
    assert good(server.port), server.output()
    return server


def worker_pid(server: Server) -> int:
    (pid,) = server.started().values()
    return pid


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def quiet_fd_count(server: Server, pid: int) -> int:
    """The worker's descriptors once it holds no client connection (the baseline)."""
    wait_until(lambda: held_connections(pid, server.port) == 0, 10.0, "no connection held")
    return fd_count(pid)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def good(port: int, path: str = "/", timeout: float = 5.0) -> bool:
    """One request on a fresh connection; True if answered 200."""
    try:
        with connect(port, timeout) as sock:
            sock.sendall(b"GET %b HTTP/1.1\r\nHost: t\r\n\r\n" % path.encode())
            return Reader(sock).response().status == 200
    except (OSError, EOFError, AssertionError, ValueError):
        return False


def aborted_uploads(port: int, count: int) -> None:
    """``count`` clients announce a 1 MB body, send one byte of it, and close."""
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\nx")


def settles_at(count: Callable[[], int], baseline: int, timeout: float) -> int:
    """Wait until ``count()`` is back to ``baseline`` or below; the last value seen."""
    seen = [count()]

    def back() -> bool:
        seen.append(count())
        return seen[-1] <= baseline

    with contextlib.suppress(AssertionError):
        wait_until(back, timeout, "the count to come back")
    return seen[-1]


# 1. Aborted uploads ---------------------------------------------------------------------


@pytest.mark.parametrize("interface", INTERFACES)
def test_aborted_uploads_leave_no_descriptor_behind(serve: StartServer, interface: str) -> None:
    server = start(serve, interface)
    pid = worker_pid(server)
    baseline = quiet_fd_count(server, pid)
    aborted_uploads(server.port, 50)
    # Each connection may linger 2 s after its 400 before it is closed.
    after = settles_at(lambda: fd_count(pid), baseline, timeout=8.0)
    print(f"\n{interface}: worker descriptors {baseline} before, {after} after 50 aborted uploads")
    assert after <= baseline, server.output()
    assert "Exception in app" not in server.err
    assert good(server.port)


def test_aborted_uploads_on_the_asyncio_loop_close_every_transport() -> None:
    """The same attack in process, on asyncio's own loop, whose ``write_eof`` raises
    ENOTCONN for a peer that is gone (uvloop reports it to the transport instead)."""

    def app(environ: dict[str, object], start_response: Callable[..., object]) -> list[bytes]:
        body = environ["wsgi.input"].read()  # type: ignore[attr-defined]
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]

    with BackgroundServer(WSGIAdapter(app)) as srv:
        assert good(srv.port)
        baseline = fd_count(os.getpid())
        aborted_uploads(srv.port, 50)
        assert srv.server is not None
        state = srv.server.state
        wait_until(lambda: not state.connections, 8.0, "every connection to close")
        after = settles_at(lambda: fd_count(os.getpid()), baseline, timeout=8.0)
        assert after <= baseline


# 3. Endless trailers ----------------------------------------------------------------------


@pytest.mark.parametrize("interface", INTERFACES)
def test_endless_trailers_are_cut_with_431(serve: StartServer, interface: str) -> None:
    server = start(serve, interface)
    pid = worker_pid(server)
    before = rss_kib(pid)
    head = b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n"
    fields = b"".join(b"X-Trailer-%d: %s\r\n" % (i, b"v" * 60) for i in range(64))
    status, sent = stream_until_answered(server.port, head, fields, 64 * 1024 * 1024)
    grown = rss_kib(pid) - before
    print(f"\n{interface}: 431 after {sent} bytes of trailers, worker RSS +{grown} KiB")
    assert status == 431
    assert grown < 16 * 1024
    assert good(server.port)


# 4. A query of death ----------------------------------------------------------------------


class GoodClients:
    """``count`` threads sending ``GET /`` on fresh connections until stopped: served
    or not, and how long each took."""

    def __init__(self, port: int, count: int = 2, most: int = 5000) -> None:
        self.port = port
        self.most = most
        self.latencies: list[float] = []
        self.failed = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(count)]

    def __enter__(self) -> GoodClients:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(15)

    def _run(self) -> None:
        for _ in range(self.most):
            if self.stopping.is_set():
                return
            began = time.monotonic()
            ok = good(self.port, timeout=5.0)
            with self.lock:
                if ok:
                    self.latencies.append(time.monotonic() - began)
                else:
                    self.failed += 1
            self.stopping.wait(0.005)

    def report(self, what: str) -> float:
        """Print the share served and the latencies; return the share."""
        with self.lock:
            served, failed = len(self.latencies), self.failed
            ordered = sorted(self.latencies) or [0.0]
        share = served / max(1, served + failed)
        p50, worst = ordered[len(ordered) // 2], ordered[-1]
        print(
            f"\n{what}: good clients served {served}/{served + failed} ({share:.1%}), "
            f"p50 {p50 * 1000:.1f} ms, max {worst * 1000:.0f} ms"
        )
        return share


def query_of_death(port: int) -> None:
    """A request that kills the worker serving it."""
    errors = (OSError, EOFError, AssertionError, ValueError)
    with contextlib.suppress(*errors), connect(port, 2.0) as sock:
        sock.sendall(b"GET /die HTTP/1.1\r\nHost: t\r\n\r\n")
        Reader(sock).response()


@pytest.mark.parametrize("interface", INTERFACES)
def test_a_query_of_death_every_300ms_leaves_the_server_serving(
    serve: StartServer, interface: str
) -> None:
    server = start(serve, interface, "--timeout", "3", workers=2)
    with GoodClients(server.port) as clients:
        for _ in range(10):  # 3 s of attack
            query_of_death(server.port)
            time.sleep(0.3)  # the attacker's pace, not a wait for the server
        ended = time.monotonic()
        answered = good(server.port, timeout=2.0)
        first_answer = time.monotonic() - ended
    share = clients.report(f"{interface}, a worker killed every 0.3 s")
    print(f"{interface}: first answer {first_answer * 1000:.0f} ms after the attack")
    deaths = server.err.count("exited with code 1")
    assert deaths >= 8, server.output()
    assert share >= 0.9
    assert answered and first_answer < 0.2
    assert server.stop() == 0, server.output()


# 2. Stalled clients -----------------------------------------------------------------------

STALL = ("--stall-timeout", "1", "--header-timeout", "1")


def closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closes ``sock`` (reading and dropping what comes), or None."""
    began = time.monotonic()
    sock.settimeout(0.2)
    while time.monotonic() - began < seconds:
        try:
            if not sock.recv(65536):
                return time.monotonic() - began
        except TimeoutError:
            continue
        except OSError:
            return time.monotonic() - began
    return None


def upload_is_served(port: int, size: int = 1_000_000) -> bool:
    """A whole upload the app reads in a thread (WSGI): answered with its length."""
    with connect(port, 10.0) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % size)
        sock.sendall(b"u" * size)
        response = Reader(sock).response()
        return response.status == 200 and len(response.body) == size


@pytest.mark.parametrize("interface", INTERFACES)
def test_a_stalled_upload_is_cut_after_the_stall_timeout(
    serve: StartServer, interface: str
) -> None:
    server = start(serve, interface, *STALL)
    with connect(server.port) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n")
        sock.sendall(b"x" * 1000)  # then nothing: the app waits in its read
        assert good(server.port)  # served alongside
        cut = closed_within(sock, 5.0)
    print(f"\n{interface}: stalled upload cut after {cut} s (--stall-timeout 1)")
    assert cut is not None and cut < 3.0
    # The app's reader got an error and let its thread go: an upload is served again.
    assert upload_is_served(server.port)


@pytest.mark.parametrize("interface", INTERFACES)
def test_a_client_that_does_not_read_is_cut_after_the_stall_timeout(
    serve: StartServer, interface: str
) -> None:
    server = start(serve, interface, *STALL)
    pid = worker_pid(server)
    quiet_fd_count(server, pid)
    with connect(server.port) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")  # 64 MiB it never reads
        began = time.monotonic()
        wait_until(lambda: held_connections(pid, server.port), 5.0, "the connection accepted")
        assert good(server.port)
        after = settles_at(lambda: held_connections(pid, server.port), 0, timeout=5.0)
        cut = time.monotonic() - began
    print(f"\n{interface}: a client not reading 64 MiB cut after {cut:.1f} s (--stall-timeout 1)")
    assert after == 0 and cut < 4.0
    assert upload_is_served(server.port)  # the app's writer was stopped, its thread freed


def test_a_websocket_handshake_with_a_body_is_not_held(serve: StartServer) -> None:
    """A handshake has no body: such a request is answered as plain HTTP, then closed."""
    server = start(serve, "asgi", *STALL)
    with connect(server.port) as sock:
        sock.sendall(
            b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Content-Length: 10\r\n\r\n"
        )
        cut = closed_within(sock, 5.0)
    print(f"\nwebsocket handshake with a body that never comes: closed after {cut} s")
    assert cut is not None and cut < 3.0
