"""Graceful drain, the key promise: SIGTERM under load loses no request.

32 keep-alive clients hit a 50 ms endpoint; SIGTERM lands mid-load together
with a few fresh connections still in the kernel's queue. Every request that was
written gets its full 200 (see serve_support.Load for the exact accounting),
and the server exits 0.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from processes import wait_until
from serve_support import Load, Server, StartServer, serving


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[StartServer]:
    yield from serving(tmp_path)


WSGI_SLEEPY = """
import os, time

def app(environ, start_response):
    seconds = float(environ.get("QUERY_STRING") or 0.05)
    if seconds >= 1:  # tell the test the slow request reached the app
        with open("in-flight.txt", "a") as f:
            f.write(f"{os.getpid()}\\n")
    time.sleep(seconds)
    body = f"{os.getpid()} slept".encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]
"""

ASGI_SLEEPY = """
import asyncio, os

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    seconds = float(scope["query_string"] or 0.05)
    if seconds >= 1:  # tell the test the slow request reached the app
        with open("in-flight.txt", "a") as f:
            f.write(f"{os.getpid()}\\n")
    await asyncio.sleep(seconds)
    body = f"{os.getpid()} slept".encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
"""

APPS = {
    "wsgi-threads": (WSGI_SLEEPY, ["--threads", "4"]),
    "asgi": (ASGI_SLEEPY, []),
}


@pytest.mark.parametrize("mode", ["reuseport", "shared"])
@pytest.mark.parametrize("kind", sorted(APPS))
def test_sigterm_under_load_loses_no_request(serve: StartServer, kind: str, mode: str) -> None:
    source, extra = APPS[kind]
    args = ["app:app", "--bind", "127.0.0.1:0", "-w", "2", "--socket-mode", mode]
    server = serve([*args, "--timeout", "10", "--no-access-log", *extra], modules={"app": source})
    port = server.wait_listening()
    with Load(port, clients=32, max_seconds=40) as load:
        load.wait_ok(150)
        load.signal_server(lambda: server.send_signal(signal.SIGTERM), queued=8)
        result = load.stop(finish=False)
    code = server.wait()
    summary = (
        f"sent={result.sent} ok={result.ok} lost={len(result.lost)} "
        f"closed_before_send={result.closed_before_send} closes={result.closes_announced}"
    )
    print(f"\n{kind}/{mode}: {summary}")
    assert not result.connect_errors, result.connect_errors
    assert result.lost == [], f"{summary}\n{result.lost[:10]}\n{server.output()}"
    assert result.ok == result.sent
    assert result.closes_announced >= 8, summary  # the queued ones at least
    assert code == 0, server.output()


@pytest.mark.parametrize("threads", ["1", "2"], ids=["on-the-loop", "in-a-thread"])
def test_slow_in_flight_request_finishes_during_drain_with_connection_close(
    serve: StartServer, threads: str
) -> None:
    """With one thread the first call runs on the event loop, which the stop then
    cannot reach until the app returns: the worker's control thread marks the
    server draining at once, so the answer still says ``Connection: close``."""
    args = ["app:app", "--bind", "127.0.0.1:0", "-w", "2", "--timeout", "10", "--threads", threads]
    server = serve(args, modules={"app": WSGI_SLEEPY})
    server.wait_listening()
    answers: list[httpx.Response] = []
    with httpx.Client(timeout=10) as client:
        slow = threading.Thread(target=lambda: answers.append(client.get(server.url + "/?2")))
        began = time.monotonic()
        slow.start()
        in_flight(server)
        server.send_signal(signal.SIGTERM)
        slow.join(10)
    assert answers, server.output()
    assert answers[0].status_code == 200
    assert answers[0].headers["connection"] == "close"
    assert time.monotonic() - began >= 2.0
    assert server.wait() == 0, server.output()


def in_flight(server: Server, count: int = 1) -> int:
    """Wait until ``count`` slow requests reached the app; the pid of the first one's worker."""
    path = server.directory / "in-flight.txt"

    def arrived() -> bool:
        return path.exists() and path.read_text().count("\n") >= count

    wait_until(arrived, 10, f"{count} slow request(s) in the app")
    return int(path.read_text().split()[0])


@pytest.mark.parametrize("kind", sorted(APPS))
def test_request_longer_than_timeout_is_killed_at_the_timeout_exit_1(
    serve: StartServer, kind: str
) -> None:
    source, extra = APPS[kind]
    args = ["app:app", "--bind", "127.0.0.1:0", "-w", "2", "--timeout", "1", *extra]
    server = serve(args, modules={"app": source})
    server.wait_listening()
    outcome: list[object] = []

    def long_request() -> None:
        try:
            outcome.append(httpx.get(server.url + "/?30", timeout=20))
        except httpx.HTTPError as error:
            outcome.append(error)

    client = threading.Thread(target=long_request)
    client.start()
    pid = in_flight(server)
    began = time.monotonic()
    server.send_signal(signal.SIGTERM)
    code = server.wait(10)
    took = time.monotonic() - began
    client.join(10)
    print(f"\nkilled after {took:.2f}s")
    assert code == 1, server.output()
    assert 0.9 <= took < 4.0, f"exit after {took:.2f}s\n{server.output()}"
    assert "killed after timeout 1.0s" in server.err
    killed = [line for line in server.err.splitlines() if "killed after timeout" in line]
    wid = next(w for w, p in server.started().items() if p == pid)
    assert len(killed) == 1, server.err
    assert killed[0].endswith(f"[kamisama] worker {wid} (pid {pid}) killed after timeout 1.0s")
    assert outcome and isinstance(outcome[0], httpx.HTTPError)


def test_the_load_client_does_count_lost_requests(serve: StartServer) -> None:
    """The harness itself: requests cut off by a hard kill are reported as lost."""
    args = ["app:app", "--bind", "127.0.0.1:0", "-w", "2", "--timeout", "0.3"]
    server = serve([*args, "--no-access-log"], modules={"app": ASGI_SLEEPY})
    port = server.wait_listening()
    with Load(port, clients=8, path="/?1.5", max_seconds=20) as load:
        in_flight(server, count=8)
        load.signal_server(lambda: server.send_signal(signal.SIGTERM))
        result = load.stop()
    assert server.wait() == 1, server.output()
    assert len(result.lost) == 8, result
