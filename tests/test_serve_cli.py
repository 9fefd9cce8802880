"""``kamisama-serve`` from the command line, as a user runs it: apps, flags, env, exit codes.

Every test starts the real console script in its own process group and talks
to it over real sockets; see serve_support.py.
"""

from __future__ import annotations

import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from serve_support import PID_APP, Server, StartServer, free_port, serving


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[StartServer]:
    yield from serving(tmp_path)


ASGI_APP = """
    import os

    async def app(scope, receive, send):
        assert scope["type"] in ("http", "lifespan")
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        body = f"asgi {os.getpid()}".encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
"""

# A sync function returning a coroutine: ASGI that auto-detection cannot see.
HIDDEN_ASGI_APP = """
    async def _real(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"6")]})
        await send({"type": "http.response.body", "body": b"hidden"})

    def app(scope, receive, send):
        return _real(scope, receive, send)
"""

BIND = ["--bind", "127.0.0.1:0"]
FAST = [*BIND, "-w", "2", "--timeout", "5"]


def start_and_get(serve: StartServer, args: list[str], **kwargs: Any) -> tuple[Server, str]:
    """Start, wait for the listening line, GET / once; return the server and the body."""
    server = serve(args, **kwargs)
    server.wait_listening()
    response = server.get("/")
    assert response.status_code == 200, server.output()
    return server, response.text


def stop_clean(server: Server) -> None:
    assert server.stop(signal.SIGTERM) == 0, server.output()
    assert len(server.listening_lines()) == 1, server.output()


# --------------------------------------------------------------------------- apps


def test_wsgi_app_is_served_with_the_interface_detected(serve: StartServer) -> None:
    server, body = start_and_get(serve, ["app:app", *FAST], modules={"app": PID_APP})
    assert int(body.split()[0]) in server.started().values()
    assert server.listening_lines()[0]["n"] == "2"
    stop_clean(server)


def test_asgi_app_is_served_with_the_interface_detected(serve: StartServer) -> None:
    server, body = start_and_get(serve, ["app:app", *FAST], modules={"app": ASGI_APP})
    assert body.startswith("asgi ")
    stop_clean(server)


def test_interface_flag_overrides_detection(serve: StartServer) -> None:
    server, body = start_and_get(
        serve, ["app:app", "--interface", "asgi", *FAST], modules={"app": HIDDEN_ASGI_APP}
    )
    assert body == "hidden"
    stop_clean(server)


def test_interface_wsgi_on_an_async_app_is_refused_with_exit_3(serve: StartServer) -> None:
    server = serve(["app:app", "--interface", "wsgi", *FAST], modules={"app": ASGI_APP})
    assert server.wait(15) == 3, server.output()
    assert "--interface wsgi, but the app is an async callable" in server.err


def test_dotted_attribute_is_walked(serve: StartServer) -> None:
    source = PID_APP + "\nfrom types import SimpleNamespace as NS\nholder = NS(inner=NS(app=app))\n"
    server, body = start_and_get(serve, ["app:holder.inner.app", *FAST], modules={"app": source})
    assert len(body.split()) == 2
    stop_clean(server)


def test_factory_is_called_to_get_the_app(serve: StartServer) -> None:
    source = """
        def create():
            def app(environ, start_response):
                start_response("200 OK", [("Content-Length", "7")])
                return [b"factory"]
            return app
    """
    server, body = start_and_get(serve, ["app:create", "--factory", *FAST], modules={"app": source})
    assert body == "factory"
    stop_clean(server)


def test_app_dir_is_put_on_sys_path(serve: StartServer) -> None:
    server = serve(
        ["pkg.web:app", "--app-dir", "src", *FAST],
        modules={"src/pkg/__init__": "", "src/pkg/web": PID_APP},
    )
    server.wait_listening()
    assert server.get("/").status_code == 200
    stop_clean(server)


def test_python_dash_m_kamisama_server_serves_too(serve: StartServer) -> None:
    server, _ = start_and_get(
        serve,
        ["app:app", *FAST],
        modules={"app": PID_APP},
        command=[sys.executable, "-m", "kamisama_server"],
    )
    stop_clean(server)


# --------------------------------------------------------------------------- environment


def test_kamisama_workers_env_gives_that_many_workers_answering(serve: StartServer) -> None:
    server = serve(["app:app", *BIND], modules={"app": PID_APP}, env={"KAMISAMA_WORKERS": "3"})
    server.wait_listening()
    assert server.workers == 3
    assert server.answering_pids(3) == set(server.started().values())
    stop_clean(server)


def test_flags_win_over_environment(serve: StartServer) -> None:
    # A broken KAMISAMA_WORKERS is not even read when -w is given.
    env = {"KAMISAMA_WORKERS": "lots", "KAMISAMA_BIND": "127.0.0.1:1"}
    server = serve(["app:app", "-w", "2", *BIND], modules={"app": PID_APP}, env=env)
    server.wait_listening()
    assert server.workers == 2 and server.port not in (0, 1)
    stop_clean(server)


def test_kamisama_bind_env_is_used_without_a_flag(serve: StartServer) -> None:
    env = {"KAMISAMA_BIND": "127.0.0.1:0", "KAMISAMA_WORKERS": "1"}
    server = serve(["app:app"], modules={"app": PID_APP}, env=env)
    server.wait_listening()
    assert server.get("/").status_code == 200
    stop_clean(server)


def test_web_concurrency_sets_workers_below_kamisama_workers(serve: StartServer) -> None:
    server = serve(["app:app", *BIND], modules={"app": PID_APP}, env={"WEB_CONCURRENCY": "3"})
    server.wait_listening()
    assert server.workers == 3 and len(server.started()) == 3
    stop_clean(server)
    env = {"WEB_CONCURRENCY": "3", "KAMISAMA_WORKERS": "1"}
    server = serve(["app:app", *BIND], modules={"app": PID_APP}, env=env)
    server.wait_listening()
    assert server.workers == 1
    stop_clean(server)


def test_port_env_binds_all_interfaces_on_that_port(serve: StartServer) -> None:
    port = free_port()
    server = serve(["app:app", "-w", "1"], modules={"app": PID_APP}, env={"PORT": str(port)})
    assert server.wait_listening() == port
    assert "0.0.0.0" in server.listening_lines()[0]["urls"]
    assert server.get("/").status_code == 200
    stop_clean(server)


# --------------------------------------------------------------------------- exit codes


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["app:app", "--workers", "zero"], {}, "--workers"),
        (["app:app", "--no-such-flag"], {}, "--no-such-flag"),
        (["not-a-spec"], {}, "MODULE:ATTRIBUTE"),
        (["app:app"], {"KAMISAMA_WORKERS": "abc"}, "KAMISAMA_WORKERS"),
        (["app:app"], {"KAMISAMA_TIMEOUT": "-1"}, "KAMISAMA_TIMEOUT"),
        (["app:app"], {"WEB_CONCURRENCY": "0"}, "WEB_CONCURRENCY"),
        (["app:app"], {"PORT": "http"}, "PORT"),
    ],
)
def test_usage_error_exits_2_naming_the_flag_or_variable(
    serve: StartServer, args: list[str], env: dict[str, str], named: str
) -> None:
    server = serve(args, modules={"app": PID_APP}, env=env)
    assert server.wait(10) == 2, server.output()
    assert named in server.err
    assert not server.started()


def expect_cannot_start(server: Server, cause: str) -> None:
    """Exit 3 quickly, one line naming ``cause``, no respawn loop, no listening line."""
    begun = time.monotonic()
    code = server.wait(15)
    assert code == 3, server.output()
    assert time.monotonic() - begun < 15
    assert any(cause in line for line in server.err.splitlines()), server.output()
    assert "respawning" not in server.err, server.output()
    assert len(server.all_started_pids()) <= 2, server.output()
    assert not server.listening_lines()


BROKEN_IMPORT = """
    import json
    raise RuntimeError("database url missing")
    def app(environ, start_response): ...
"""
FAILING_LIFESPAN = """
    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            await receive()
            await send({"type": "lifespan.startup.failed", "message": "no cache today"})
"""
RAISING_HOOK = (
    PID_APP
    + """
def on_run(wid):
    raise ValueError(f"worker {wid} cannot reach the queue")
"""
)


@pytest.mark.parametrize(
    ("args", "source", "cause"),
    [
        (["nope:app"], PID_APP, "module 'nope' not found"),
        (["app:missing"], PID_APP, "'app' has no attribute 'missing'"),
        (["app:app"], BROKEN_IMPORT, "RuntimeError: database url missing"),
        (["app:app"], FAILING_LIFESPAN, "no cache today"),
        (["app:app", "--run", "app:on_run"], RAISING_HOOK, "cannot reach the queue"),
        (["app:app", "--preload"], BROKEN_IMPORT, "RuntimeError: database url missing"),
    ],
    ids=[
        "missing-module",
        "missing-attribute",
        "import-error",
        "lifespan-failed",
        "run-hook-raises",
        "preload-import-error",
    ],
)
def test_app_that_cannot_start_exits_3_with_the_cause(
    serve: StartServer, args: list[str], source: str, cause: str
) -> None:
    server = serve([*args, *FAST], modules={"app": source})
    expect_cannot_start(server, cause)


def test_port_in_use_exits_4_naming_address_and_reason(serve: StartServer) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = serve(
            ["app:app", "--bind", f"127.0.0.1:{port}", "-w", "2"], modules={"app": PID_APP}
        )
        assert server.wait(10) == 4, server.output()
    assert f"127.0.0.1:{port}" in server.err
    assert "in use" in server.err
    assert not server.started()
