"""``--run``/``--shutdown`` hooks, ASGI lifespan and ``--preload``, seen from outside.

The apps write one line per event into ``events.txt`` in the server's directory
(O_APPEND writes of one short line each, so lines from several processes never
interleave); the tests read the order of events from it.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from processes import wait_until
from serve_support import Server, StartServer, serving


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[StartServer]:
    yield from serving(tmp_path)


ARGS = ["--bind", "127.0.0.1:0", "-w", "2", "--timeout", "5"]

EVENTS = """
import os

def event(text):
    with open("events.txt", "a") as f:
        f.write(f"{text} {os.getpid()}\\n")
"""

WSGI_HOOKS = (
    EVENTS
    + """
import asyncio, time

RAN = []

def on_run(wid):
    RAN.append(wid)
    event(f"run {wid}")

def on_shutdown(wid, signal_name):
    event(f"shutdown {wid} {signal_name}")

async def on_shutdown_async(wid, signal_name):
    await asyncio.sleep(0.01)
    event(f"ashutdown {wid} {signal_name}")

def app(environ, start_response):
    if environ["PATH_INFO"] == "/slow":
        event("slow-begin")
        time.sleep(0.5)
        event("slow-end")
    body = f"{os.getpid()} {RAN}".encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]
"""
)

ASGI_LIFESPAN = (
    EVENTS
    + """
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            event(message["type"])
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    body = str(os.getpid()).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})

def on_shutdown(wid, signal_name):
    event(f"shutdown {wid} {signal_name}")
"""
)


def events(server: Server) -> list[list[str]]:
    path = server.directory / "events.txt"
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def test_run_hook_is_called_with_the_worker_id_in_each_worker_before_it_serves(
    serve: StartServer,
) -> None:
    server = serve(["app:app", "--run", "app:on_run", *ARGS], modules={"app": WSGI_HOOKS})
    server.wait_listening()
    # Every worker ran its hook before the master announced it listening.
    runs = {(int(e[1]), int(e[2])) for e in events(server) if e[0] == "run"}
    assert runs == set(server.started().items())
    # ... in the very process that serves: each answer names its pid and [its id].
    wid_of = {pid: wid for wid, pid in server.started().items()}
    seen: set[int] = set()

    def both_answered() -> bool:
        pid, ran = server.get("/").text.split(" ", 1)
        assert ran == f"[{wid_of[int(pid)]}]"
        seen.add(int(pid))
        return len(seen) == 2

    wait_until(both_answered, 15, "both workers answering")
    assert server.stop() == 0, server.output()


@pytest.mark.parametrize("hook", ["on_shutdown", "on_shutdown_async"])
def test_shutdown_hook_gets_id_and_signal_name_after_the_drain(
    serve: StartServer, hook: str
) -> None:
    server = serve(
        ["app:app", "--shutdown", f"app:{hook}", "--threads", "2", *ARGS],
        modules={"app": WSGI_HOOKS},
    )
    server.wait_listening()
    result: list[httpx.Response] = []
    slow = threading.Thread(target=lambda: result.append(server.get("/slow")))
    slow.start()
    _wait_for_event(server, "slow-begin")
    server.send_signal(signal.SIGTERM)
    slow.join(10)
    assert server.wait() == 0, server.output()
    assert result and result[0].status_code == 200
    assert result[0].headers["connection"] == "close"
    log = events(server)
    name = "shutdown" if hook == "on_shutdown" else "ashutdown"
    stops = sorted((int(e[1]), e[2]) for e in log if e[0] == name)
    assert stops == [(1, "SIGTERM"), (2, "SIGTERM")], log
    slow_pid = next(e[1] for e in log if e[0] == "slow-end")
    order = [e[0] for e in log if e[-1] == slow_pid]
    assert order.index("slow-end") < order.index(name), log


def _wait_for_event(server: Server, name: str) -> None:
    wait_until(lambda: any(e[0] == name for e in events(server)), 10, f"event {name}")


def test_asgi_lifespan_runs_in_each_worker_startup_before_ready_shutdown_before_hook(
    serve: StartServer,
) -> None:
    server = serve(
        ["app:app", "--shutdown", "app:on_shutdown", *ARGS], modules={"app": ASGI_LIFESPAN}
    )
    server.wait_listening()
    pids = {str(p) for p in server.started().values()}
    started = {e[1] for e in events(server) if e[0] == "lifespan.startup"}
    assert started == pids
    assert server.stop() == 0, server.output()
    log = events(server)
    for pid in pids:
        mine = [e[0] for e in log if e[-1] == pid]
        assert mine == ["lifespan.startup", "lifespan.shutdown", "shutdown"], log


PRELOAD_APP = (
    EVENTS
    + """
event("imported")

def app(environ, start_response):
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]
"""
)


@pytest.mark.parametrize("preload", [True, False])
def test_preload_imports_the_app_once_in_the_master(serve: StartServer, preload: bool) -> None:
    flags = ["--preload"] if preload else []
    server = serve(["app:app", *flags, *ARGS], modules={"app": PRELOAD_APP})
    server.wait_listening()
    assert server.get("/").text == "ok"
    imported = [int(e[1]) for e in events(server) if e[0] == "imported"]
    if preload:
        assert imported == [server.pid]
    else:
        assert sorted(imported) == sorted(server.started().values())
    assert server.stop() == 0, server.output()


def test_ctrl_c_to_the_whole_group_calls_each_shutdown_hook_once(serve: StartServer) -> None:
    server = serve(["app:app", "--shutdown", "app:on_shutdown", *ARGS], modules={"app": WSGI_HOOKS})
    server.wait_listening()
    os.killpg(server.pid, signal.SIGINT)  # as a terminal's Ctrl+C: master and workers
    assert server.wait() == 0, server.output()
    stops = sorted((int(e[1]), e[2]) for e in events(server) if e[0] == "shutdown")
    assert stops == [(1, "SIGINT"), (2, "SIGINT")], events(server)
