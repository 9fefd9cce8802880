"""Operations, end to end with the real ``kamisama-serve``: recycling under load
(--max-requests), the lame-duck delay (--shutdown-delay), process titles and the
pid file, unix socket permissions, and systemd's notify protocol.

Traffic comes from serve_support.Load (strict sent/ok/lost accounting); each
test under load prints its counts.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from processes import REPO, wait_until
from serve_support import (
    ASGI_PID_APP,
    PID_APP,
    SERVE,
    Load,
    Server,
    StartServer,
    elapsed,
    pids_gone,
    serving,
)

APPS = {"wsgi": PID_APP, "asgi": ASGI_PID_APP}


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[StartServer]:
    yield from serving(tmp_path)


def start(serve: StartServer, kind: str, *extra: str, **kwargs: object) -> Server:
    server = serve(
        ["app:app", "-b", "127.0.0.1:0", "-w", "2", "--timeout", "10", *extra],
        modules={"app": APPS[kind]},
        **kwargs,
    )
    server.wait_listening()
    return server


def usage_error(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    (cwd / "app.py").write_text(PID_APP)
    return subprocess.run(
        [SERVE, "app:app", "-b", "127.0.0.1:0", "-w", "1", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
    )


# --------------------------------------------------------------------------- recycling


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["wsgi", "asgi"])
def test_max_requests_recycles_workers_under_32_keep_alive_clients_without_a_failure(
    serve: StartServer, kind: str
) -> None:
    server = start(serve, kind, "--max-requests", "200", "--max-requests-jitter", "50")
    first = set(server.started().values())
    with Load(server.port, clients=32, max_seconds=60) as load:
        # Four recycles at least: each worker past its own limit got a successor.
        server.wait_for_log("requests (--max-requests", count=4, timeout=40)
        server.wait_for_log("rolling restart done", count=4, timeout=40)
        result = load.stop()
    recycled = server.err.count("(--max-requests")
    print(
        f"\n{kind}: sent={result.sent} ok={result.ok} lost={len(result.lost)} "
        f"recycles={recycled} workers seen={len(result.pids)}"
    )
    assert result.lost == [], f"{result.lost[:10]}\n{server.output()}"
    assert result.sent == result.ok
    limits = [int(n) for n in re.findall(r"--max-requests (\d+)\)", server.err)]
    assert all(200 <= n <= 250 for n in limits), limits
    assert len(set(server.all_started_pids())) >= 6  # 2 first + at least 4 successors
    pids_gone(list(first), output=server.output)
    assert server.stop() == 0, server.output()


def test_max_requests_jitter_without_max_requests_is_a_usage_error(tmp_path: Path) -> None:
    done = usage_error(["--max-requests-jitter", "10"], tmp_path)
    assert done.returncode == 2
    assert (
        done.stderr.strip().splitlines()[-1].endswith("--max-requests-jitter needs --max-requests")
    ), done.stderr


# --------------------------------------------------------------------------- lame duck


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["wsgi", "asgi"])
def test_shutdown_delay_keeps_serving_new_connections_then_drains_without_a_failure(
    serve: StartServer, kind: str
) -> None:
    delay = 2.5
    server = start(serve, kind, "--shutdown-delay", str(delay))
    with Load(server.port, clients=8, max_seconds=60) as load:
        load.wait_ok(200)
        signalled = time.monotonic()
        server.send_signal(signal.SIGTERM)
        server.wait_for_log("still serving for 2.5s")
        before = load.result.ok
        fresh = 0
        while elapsed(signalled) < 1.2:  # new connections, as a load balancer's would be
            assert one_request(server.port).startswith(b"HTTP/1.1 200 ")
            fresh += 1
        assert "shutting down 2 worker(s)" not in server.err, server.err
        served_in_delay = load.result.ok - before
        result = load.stop(finish=False)  # clients go on until the drain closes them
    code = server.wait(20)
    took = elapsed(signalled)
    print(
        f"\n{kind}: sent={result.sent} ok={result.ok} lost={len(result.lost)} "
        f"fresh during delay={fresh} keep-alive during delay={served_in_delay} "
        f"exit {code} after {took:.2f}s"
    )
    assert result.lost == [], result.lost[:10]
    assert fresh >= 3 and served_in_delay > 0
    assert code == 0, server.output()
    assert took >= delay
    assert server.err.index("still serving for") < server.err.index("shutting down 2 worker(s)")


def one_request(port: int) -> bytes:
    """A request on a new connection; the whole answer (the server closes after it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        answer = b""
        for _ in range(100):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    return answer


# --------------------------------------------------------------------------- identity


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads /proc")
def test_process_titles_and_pid_file(serve: StartServer, tmp_path: Path) -> None:
    pytest.importorskip("setproctitle")
    pid_path = tmp_path / "run" / "server.pid"
    pid_path.parent.mkdir()
    server = start(serve, "wsgi", "--pid", str(pid_path))
    assert pid_path.read_text() == f"{server.pid}\n"
    assert _cmdline(server.pid) == "kamisama: master app:app"
    for wid, pid in server.started().items():
        assert _cmdline(pid) == f"kamisama: worker {wid} app:app"

    second = serve(
        ["app:app", "-b", "127.0.0.1:0", "-w", "1", "--pid", str(pid_path)],
        modules={"app": PID_APP},
    )
    assert second.wait(20) == 4
    (line,) = second.err.strip().splitlines()  # one line, with time and level first
    assert line.endswith(
        f"ERROR [kamisama] cannot start: pid file {pid_path} names process {server.pid}, "
        "which is running"
    ), line
    assert pid_path.read_text() == f"{server.pid}\n", "the refused server left it alone"

    assert server.stop() == 0, server.output()
    assert not pid_path.exists()


def test_a_stale_pid_file_is_replaced(serve: StartServer, tmp_path: Path) -> None:
    pid_path = tmp_path / "server.pid"
    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait(10)
    pid_path.write_text(f"{gone.pid}\n")
    server = start(serve, "wsgi", "--pid", str(pid_path))
    assert pid_path.read_text() == f"{server.pid}\n"
    assert server.stop() == 0, server.output()
    assert not pid_path.exists()


# --------------------------------------------------------------------------- unix sockets


def test_unix_socket_mode_applies_to_every_unix_bind(serve: StartServer, tmp_path: Path) -> None:
    paths = [tmp_path / "a.sock", tmp_path / "b.sock"]
    server = serve(
        ["app:app", "-w", "1", "--unix-socket-mode", "0660"]
        + [arg for path in paths for arg in ("-b", f"unix:{path}")],
        modules={"app": PID_APP},
    )
    server.wait_listening()
    for path in paths:
        assert stat.S_IMODE(path.stat().st_mode) == 0o660
        transport = httpx.HTTPTransport(uds=str(path))
        with httpx.Client(transport=transport) as client:
            assert client.get("http://localhost/").status_code == 200
    assert server.stop() == 0, server.output()


def test_unix_socket_mode_must_be_octal(tmp_path: Path) -> None:
    done = usage_error(["--unix-socket-mode", "0680"], tmp_path)
    assert done.returncode == 2
    assert "--unix-socket-mode: expected an octal mode (0660), got '0680'" in done.stderr


# --------------------------------------------------------------------------- systemd


class NotifySocket:
    """What systemd does for ``Type=notify``: a datagram socket the service reports to."""

    def __init__(self, path: Path, abstract: bool) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"kamisama-test-{os.getpid()}-{id(self)}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            self.sock.bind(str(path))
            self.address = str(path)
        self.sock.settimeout(0.2)
        self.messages: list[str] = []

    def wait_for(self, key: str, count: int = 1, timeout: float = 15.0) -> None:
        def seen() -> bool:
            with contextlib.suppress(TimeoutError):
                self.messages.append(self.sock.recv(4096).decode())
            return sum(key in m.splitlines() for m in self.messages) >= count

        wait_until(seen, timeout, f"{count}x {key} (got {self.messages})")

    def close(self) -> None:
        self.sock.close()


ACTIVATE = (
    "import os, sys; fd = int(sys.argv[1]); os.dup2(fd, 3); os.close(fd); "
    "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1'); "
    "os.execv(sys.argv[2], sys.argv[2:])"
)
"""As systemd's socket activation does: the socket on fd 3, LISTEN_PID = the server."""


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_sd_notify_ready_reloading_stopping_with_socket_activation(
    serve: StartServer, tmp_path: Path, abstract: bool
) -> None:
    notify = NotifySocket(tmp_path / "notify", abstract)
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen()
    port = listening.getsockname()[1]
    try:
        server = serve(
            ["app:app", "-w", "2"],
            modules={"app": PID_APP},
            env={"NOTIFY_SOCKET": notify.address},
            command=[sys.executable, "-c", ACTIVATE, str(listening.fileno()), SERVE],
            pass_fds=[listening.fileno()],
        )
        listening.close()  # the server holds it now
        assert server.wait_listening() == port
        notify.wait_for("READY=1")
        ready = next(m for m in notify.messages if "READY=1" in m.splitlines())
        assert f"STATUS=2 workers serving http://127.0.0.1:{port}" in ready.splitlines()
        assert server.get().status_code == 200

        server.send_signal(signal.SIGUSR1)
        notify.wait_for("RELOADING=1")
        notify.wait_for("READY=1", count=2)
        reload = next(m for m in notify.messages if "RELOADING=1" in m.splitlines())
        assert any(line.startswith("MONOTONIC_USEC=") for line in reload.splitlines())

        server.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING=1")
        assert server.wait(20) == 0, server.output()
        keys = [m.splitlines()[0] for m in notify.messages]
        assert keys == ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"]
    finally:
        listening.close()
        notify.close()


def test_systemd_units_reload_with_sigusr1_and_outwait_the_drain() -> None:
    unit = (REPO / "deploy" / "systemd" / "kamisama.service").read_text()
    lines = {
        line.split("=", 1)[0]: line.split("=", 1)[1] for line in unit.splitlines() if "=" in line
    }
    assert lines["Type"] == "notify"
    assert lines["ExecReload"] == "/bin/kill -USR1 $MAINPID"
    assert lines["KillMode"] == "mixed"
    timeout = float(lines["ExecStart"].split("--timeout ")[1].split()[0])
    delay = float(lines["ExecStart"].split("--shutdown-delay ")[1].split()[0])
    assert float(lines["TimeoutStopSec"]) > timeout + delay
    socket_unit = (REPO / "deploy" / "systemd" / "kamisama.socket").read_text()
    assert "ListenStream=" in socket_unit
    assert "Requires=kamisama.socket" in unit


# --------------------------------------------------------------------------- reload

RELOAD_APP = """
    import os
    from kamisama_server import worker_id

    VERSION = "one"

    def app(environ, start_response):
        body = f"{VERSION} {os.getpid()}".encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
"""

HOOK = """
    def shutdown(wid, signal):
        with open("hooks.txt", "a") as f:
            f.write(f"{wid} {signal}\\n")
"""


def _version(server: Server) -> str:
    return one_request(server.port).split(b"\r\n\r\n", 1)[1].split()[0].decode()


@pytest.mark.slow
@pytest.mark.parametrize("preload", [False, True], ids=["fork-imports", "preload"])
def test_reload_replaces_workers_on_a_change_and_keeps_serving_broken_code(
    serve: StartServer, preload: bool
) -> None:
    pytest.importorskip("watchfiles")
    extra = ["--preload"] if preload else []
    server = serve(
        ["app:app", "-b", "127.0.0.1:0", "-w", "2", "--reload", "--shutdown=hook:shutdown", *extra],
        modules={"app": RELOAD_APP, "hook": HOOK},
    )
    server.wait_listening()
    app = server.directory / "app.py"
    assert _version(server) == "one"

    # Each version has another length: an edit in the same second, of the same size,
    # looks unchanged to Python's bytecode cache (mtime in whole seconds, and size).
    first = list(server.started().values())
    app.write_text(app.read_text().replace('"one"', '"second"'))
    server.wait_for_log("reload: app.py changed: rolling restart", timeout=20)
    server.wait_for_log("rolling restart done", timeout=20)
    pids_gone(first)  # "done" once the last successor is ready; its predecessor drains on
    assert {_version(server) for _ in range(6)} == {"second"}
    hooks = (server.directory / "hooks.txt").read_text().split("\n")
    assert sorted(h for h in hooks if h) == ["1 SIGUSR2", "2 SIGUSR2"]

    app.write_text(app.read_text().replace('VERSION = "second"', "VERSION = (", 1))
    server.wait_for_log("but the app does not load; old workers keep serving", timeout=20)
    # The error follows that line in a write of its own: wait for it too.
    server.wait_for_log("failed: SyntaxError: '(' was never closed (app.py, line 5)", timeout=5)
    assert server.err.count("does not load") == 1, server.err
    assert {_version(server) for _ in range(6)} == {"second"}
    assert server.err.count("rolling restart done") == 1

    second = list(server.started().values())
    app.write_text(app.read_text().replace("VERSION = (", 'VERSION = "third!"', 1))
    server.wait_for_log("rolling restart done", count=2, timeout=20)
    pids_gone(second)
    assert {_version(server) for _ in range(6)} == {"third!"}
    assert server.stop() == 0, server.output()


def test_reload_notices_an_edit_saved_the_moment_the_server_says_listening(
    serve: StartServer,
) -> None:
    """The watch is in place before "listening" is printed: an edit right after it
    reloads. (The watcher thread used to start after that line and could miss it.)"""
    pytest.importorskip("watchfiles")
    server = serve(
        ["app:app", "-b", "127.0.0.1:0", "-w", "1", "--reload"], modules={"app": RELOAD_APP}
    )
    server.wait_listening()
    app = server.directory / "app.py"
    app.write_text(app.read_text().replace('"one"', '"second"'))
    server.wait_for_log("reload: app.py changed: rolling restart", timeout=10)
    server.wait_for_log("rolling restart done", timeout=20)
    # "done": the successor is ready and the predecessor takes no new connection.
    assert _version(server) == "second", server.output()
    assert server.stop() == 0, server.output()


LOOP_BLOCKING_APP = """
    import os, time
    from pathlib import Path

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["path"] == "/block":  # CPU-bound on the loop: it cannot see its stop
            Path("blocking").touch()
            time.sleep(1.5)
            Path("unblocked").touch()
        body = str(os.getpid()).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
"""


def test_rolling_restart_done_means_no_predecessor_takes_a_connection_any_more(
    serve: StartServer,
) -> None:
    """ "rolling restart done" waits until every predecessor has stopped accepting (it
    says so on its channel), even one whose loop is busy when it is told to stop:
    every connection made after the line is the successors'."""
    server = serve(["app:app", "-b", "127.0.0.1:0", "-w", "1"], modules={"app": LOOP_BLOCKING_APP})
    server.wait_listening()
    (predecessor,) = server.started().values()
    with ThreadPoolExecutor(1) as pool:
        blocked = pool.submit(server.get, "/block")
        wait_until(lambda: (server.directory / "blocking").exists(), 10, "the blocking request")
        server.send_signal(signal.SIGUSR1)
        server.wait_for_log("rolling restart done", timeout=20)
        assert (server.directory / "unblocked").exists(), server.output()
        assert blocked.result(timeout=10).text == str(predecessor)
    answered = {server.get().text for _ in range(6)}
    assert str(predecessor) not in answered, server.output()
    assert server.stop() == 0, server.output()


def test_reload_without_watchfiles_names_the_extra(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "watchfiles.py").write_text("raise ImportError('not installed (test)')\n")
    (tmp_path / "app.py").write_text(PID_APP)
    done = subprocess.run(
        [SERVE, "app:app", "-b", "127.0.0.1:0", "-w", "1", "--reload"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(blocker)},
    )
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()  # one line, with time and level first
    assert line.endswith(
        "ERROR [kamisama] cannot start: --reload needs the watchfiles package: "
        "pip install 'kamisama-server[reload]'"
    ), line
