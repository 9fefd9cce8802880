"""Issue 7, the hung-request watchdog: ``--request-timeout SECONDS``.

A request stuck in app code (a pure-Python busy loop, which no signal-free
timeout interrupts) must not take its worker out of service silently: a WSGI
client gets 503 after the timeout and the log names the request and where the
app is stuck; an ASGI worker whose loop is stuck stops sending heartbeats and
the master logs its stack and replaces it. A worker that is merely busy with
requests shorter than the timeout is never touched.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from http_support import in_background, timed_get
from processes import wait_until
from serve_support import ASGI_PID_APP, PID_APP, Server, StartServer, pids_gone, serving

# /stuck: a 60 s pure-Python busy loop (its pid noted in stuck.txt first);
# /work: 0.3 s of work; then the pid app's answer.
WSGI_APP = (
    PID_APP
    + """
import time

def stuck_wsgi_view():
    with open("stuck.txt", "a") as f:
        f.write(f"{os.getpid()}\\n")
    end = time.time() + 60
    while time.time() < end:
        pass

_pid_app = app

def app(environ, start_response):
    if environ["PATH_INFO"] == "/stuck":
        stuck_wsgi_view()
    elif environ["PATH_INFO"] == "/work":
        time.sleep(0.3)
    return _pid_app(environ, start_response)
"""
)

# The same for ASGI, where both /stuck and /work hold the event loop (CPU-bound).
ASGI_APP = (
    ASGI_PID_APP
    + """
import time

def spin(seconds):
    end = time.time() + seconds
    while time.time() < end:
        pass

async def stuck_asgi_handler():
    with open("stuck.txt", "a") as f:
        f.write(f"{os.getpid()}\\n")
    spin(60)

_pid_app = app

async def app(scope, receive, send):
    if scope["type"] == "http" and scope["path"] == "/stuck":
        await stuck_asgi_handler()
    elif scope["type"] == "http" and scope["path"] == "/work":
        spin(0.3)
    await _pid_app(scope, receive, send)
"""
)

APPS = {"wsgi": WSGI_APP, "asgi": ASGI_APP}


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[StartServer]:
    yield from serving(tmp_path)


def start(serve: StartServer, kind: str) -> Server:
    args = ["app:app", "--bind", "127.0.0.1:0", "-w", "2", "--request-timeout", "2"]
    server = serve([*args, "--no-access-log"], modules={"app": APPS[kind]})
    server.wait_listening()
    return server


def stuck_pid(server: Server) -> int:
    """Wait until a /stuck request is spinning in the app; its worker's pid."""
    path = server.directory / "stuck.txt"
    wait_until(lambda: path.exists() and path.read_text().strip(), 10, "/stuck in the app")
    return int(path.read_text().split()[0])


def served(server: Server, avoid: int = 0) -> int:
    """One GET / on a new connection answered 200 at once (not by ``avoid``); its pid."""
    status, took, body = timed_get(server.port, "/", timeout=5)
    assert status == 200, (status, body)
    pid = int(body.split()[0])
    assert pid != avoid, f"answered by the stuck worker {avoid}"
    assert took < 1.0, f"GET / took {took:.2f}s"
    return pid


@pytest.mark.slow
def test_a_stuck_wsgi_request_gets_503_and_its_stack_is_logged(serve: StartServer) -> None:
    server = start(serve, "wsgi")
    stuck, answers = in_background(server.port, "/stuck", timeout=15)
    stuck_pid(server)
    for _ in range(100):  # others are served while it spins (bounded: 100 x at most 5 s)
        if not stuck.is_alive():
            break
        served(server)
        time.sleep(0.05)
    stuck.join(15)
    assert answers, "the stuck request got no answer at all"
    status, took, _ = answers[0]
    print(f"\nstuck WSGI request answered {status} after {took:.2f}s")
    assert status == 503, (answers, server.output())
    assert took < 3.0, f"503 after {took:.2f}s"
    wait_until(lambda: "stuck_wsgi_view" in server.err, 5, "the stuck view's stack in the log")
    assert "GET /stuck" in server.err, server.err
    for _ in range(10):
        served(server)
    assert server.stop() == 0, server.output()


@pytest.mark.slow
def test_a_worker_whose_asgi_loop_is_stuck_is_logged_and_replaced(serve: StartServer) -> None:
    server = start(serve, "asgi")
    stuck, answers = in_background(server.port, "/stuck", timeout=15)
    pid = stuck_pid(server)
    (wid,) = [w for w, p in server.started().items() if p == pid]
    began = time.monotonic()
    for _ in range(200):  # the other worker serves meanwhile (bounded: 200 x at most 5 s)
        if server.started()[wid] != pid or time.monotonic() - began > 10:
            break
        served(server, avoid=pid)
        time.sleep(0.05)
    wait_until(lambda: server.started()[wid] != pid, 1, f"worker {wid} (pid {pid}) replaced")
    print(f"\nstuck ASGI worker {pid} replaced {time.monotonic() - began:.2f}s after it got stuck")
    pids_gone([pid])
    wait_until(lambda: "stuck_asgi_handler" in server.err, 5, "the stuck handler's stack logged")
    assert str(pid) in server.err
    stuck.join(15)
    assert answers, "the stuck request's client never finished"
    assert server.answering_pids(2) == set(server.started().values())
    assert server.stop() == 0, server.output()


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(APPS))
def test_a_busy_but_healthy_worker_is_never_touched(serve: StartServer, kind: str) -> None:
    """50 requests of 0.3 s each (4 at a time on 2 workers): every one is 200, no respawn."""
    server = start(serve, kind)
    workers = sorted(server.all_started_pids())
    statuses: list[int] = []
    for _ in range(13):
        batch = [in_background(server.port, "/work", timeout=10) for _ in range(4)]
        for thread, answers in batch:
            thread.join(15)
            statuses.extend(answer.status for answer in answers)
        if len(statuses) >= 50:
            break
    print(f"\n{kind}: {statuses.count(200)} of {len(statuses)} answered 200")
    assert statuses == [200] * len(statuses), statuses
    assert len(statuses) >= 50
    assert sorted(server.all_started_pids()) == workers, server.err
    assert server.stop() == 0, server.output()
