"""Where ``kamisama-serve`` listens: both socket modes, unix sockets, ``fd://N``."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from serve_support import PID_APP, Server, StartServer, serving


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[StartServer]:
    yield from serving(tmp_path)


@pytest.mark.parametrize("mode", ["reuseport", "shared"])
def test_every_worker_answers_in_each_socket_mode(serve: StartServer, mode: str) -> None:
    args = ["app:app", "--bind", "127.0.0.1:0", "-w", "3", "--socket-mode", mode]
    server = serve([*args, "--timeout", "5"], modules={"app": PID_APP})
    server.wait_listening()
    assert server.answering_pids(3, timeout=20) == set(server.started().values())
    assert server.stop() == 0, server.output()


def unix_get(path: Path) -> httpx.Response:
    transport = httpx.HTTPTransport(uds=str(path))
    with httpx.Client(transport=transport, timeout=5) as client:
        return client.get("http://unix/", headers={"Connection": "close"})


def start_unix(serve: StartServer, path: Path) -> Server:
    server = serve(["app:app", "--bind", f"unix:{path}", "-w", "2"], modules={"app": PID_APP})
    server.wait_listening()
    assert f"unix:{path}" in server.listening_lines()[0]["urls"]
    return server


def test_unix_socket_serves_and_its_file_is_removed_on_clean_exit(
    serve: StartServer, tmp_path: Path
) -> None:
    path = tmp_path / "app.sock"
    server = start_unix(serve, path)
    assert unix_get(path).status_code == 200
    assert path.exists()
    assert server.stop() == 0, server.output()
    assert not path.exists()


def test_a_stale_unix_socket_file_is_replaced_at_start(serve: StartServer, tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as dead:  # bound, then closed: nobody listens on it
        dead.bind(str(path))
    assert path.exists()
    server = start_unix(serve, path)
    assert unix_get(path).status_code == 200
    assert server.stop() == 0, server.output()
    assert not path.exists()


def test_a_live_unix_socket_is_not_stolen(serve: StartServer, tmp_path: Path) -> None:
    path = tmp_path / "live.sock"
    with socket.socket(socket.AF_UNIX) as live:
        live.bind(str(path))
        live.listen()
        server = serve(["app:app", "--bind", f"unix:{path}", "-w", "1"], modules={"app": PID_APP})
        assert server.wait(10) == 4, server.output()
        assert str(path) in server.err
        assert path.exists()


def test_an_inherited_listening_socket_is_served_with_fd_bind(serve: StartServer) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        port = listener.getsockname()[1]
        fd = listener.fileno()
        server = serve(
            ["app:app", "--bind", f"fd://{fd}", "-w", "2"],
            modules={"app": PID_APP},
            pass_fds=[fd],
        )
        server.wait_listening()
        server.port = port
        assert server.answering_pids(2, timeout=20) == set(server.started().values())
        assert server.stop() == 0, server.output()


def test_fd_bind_of_a_closed_descriptor_exits_4(serve: StartServer) -> None:
    read_end, write_end = os.pipe()
    os.close(write_end)
    os.close(read_end)  # now a number that is surely not open in the child
    server = serve(["app:app", "--bind", f"fd://{read_end}", "-w", "1"], modules={"app": PID_APP})
    assert server.wait(10) == 4, server.output()
    assert f"fd://{read_end}" in server.err
