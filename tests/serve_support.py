"""Run ``kamisama-serve`` as a user does, for the black-box tests in tests/test_serve_*.py.

A :class:`Server` writes the app's source into its own directory, starts the
real console script (or ``python -m kamisama_server``) in a new process group,
waits for the ``kamisama: listening on ...`` line with a deadline, and is
always killed (whole group, by pid) in the fixture's teardown.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import httpx
from processes import pid_alive, wait_until

SERVE = str(Path(sys.executable).with_name("kamisama-serve"))
LISTENING = re.compile(
    r"^kamisama: listening on (?P<urls>.+) \((?P<n>\d+) workers, pid (?P<pid>\d+)\)$"
)
STARTED = re.compile(r"worker (?P<wid>\d+) \(pid (?P<pid>\d+)\) started")

PID_APP = textwrap.dedent("""
    import os
    from kamisama_server import worker_id

    def app(environ, start_response):
        body = f"{os.getpid()} {worker_id()}".encode()
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", str(len(body)))])
        return [body]
""")
"""A WSGI app answering ``"PID WORKER_ID"``: who served the request."""


class Server:
    """One ``kamisama-serve`` master process and the files it reads and writes."""

    def __init__(
        self,
        directory: Path,
        args: Sequence[str],
        *,
        modules: dict[str, str] | None = None,
        env: dict[str, str] | None = None,
        command: Sequence[str] | None = None,
        pass_fds: Sequence[int] = (),
    ) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        for name, source in (modules or {}).items():
            path = directory / (name.replace(".", "/") + ".py")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(source))
        self.stdout_path = directory / "stdout.txt"
        self.stderr_path = directory / "stderr.txt"
        full_env = {k: v for k, v in os.environ.items() if not _ours(k)}
        full_env.update(env or {})
        argv = [*(command or [SERVE]), *args]
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen(
                argv,
                cwd=directory,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=full_env,
                start_new_session=True,
                pass_fds=tuple(pass_fds),
            )
        self.pid = self.process.pid
        self.port = 0
        self.workers = 0

    # ---- reading -----------------------------------------------------------

    @property
    def out(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    @property
    def err(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def output(self) -> str:
        return f"--- stdout:\n{self.out}\n--- stderr:\n{self.err}"

    def listening_lines(self) -> list[re.Match[str]]:
        return [m for line in self.out.splitlines() if (m := LISTENING.match(line))]

    def started(self) -> dict[int, int]:
        """``{worker id: latest pid}`` from the master's ``worker N (pid P) started`` lines."""
        return {int(m["wid"]): int(m["pid"]) for m in STARTED.finditer(self.err)}

    def all_started_pids(self) -> list[int]:
        return [int(m["pid"]) for m in STARTED.finditer(self.err)]

    def wait_for_log(self, text: str, count: int = 1, timeout: float = 10.0) -> None:
        wait_until(
            lambda: self.err.count(text) >= count or self._dead_early(),
            timeout,
            f"{count}x {text!r} on stderr",
        )
        assert self.err.count(text) >= count, f"server exited first\n{self.output()}"

    def _dead_early(self) -> bool:
        return self.process.poll() is not None

    # ---- lifecycle -----------------------------------------------------------

    def wait_listening(self, timeout: float = 20.0) -> int:
        """Wait for the listening line; return the first URL's TCP port (0 for unix)."""

        def seen() -> bool:
            return bool(self.listening_lines()) or self.process.poll() is not None

        try:
            wait_until(seen, timeout, "the listening line")
        except AssertionError:
            raise AssertionError(f"no listening line in {timeout}s\n{self.output()}") from None
        lines = self.listening_lines()
        assert lines, f"server exited ({self.process.returncode}) before listening\n{self.output()}"
        match = lines[0]
        self.workers = int(match["n"])
        assert int(match["pid"]) == self.pid
        port = re.search(r":(\d+)(?:/|$|,)", match["urls"].split(", ")[0])
        self.port = int(port.group(1)) if port else 0
        return self.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait(self, timeout: float = 20.0) -> int:
        """The master's exit code, or fail with its output after ``timeout``."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"master did not exit within {timeout}s\n{self.output()}"
            ) from None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        self.send_signal(sig)
        return self.wait(timeout)

    def cleanup(self) -> None:
        """Kill whatever is left of this server's own process group."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)

    # ---- talking -----------------------------------------------------------

    def get(self, path: str = "/", timeout: float = 5.0) -> httpx.Response:
        """One request on a fresh connection (so the kernel picks a worker each time)."""
        with httpx.Client(timeout=timeout) as client:
            return client.get(self.url + path, headers={"Connection": "close"})

    def answering_pids(self, want: int, timeout: float = 15.0, path: str = "/") -> set[int]:
        """Fresh connections until ``want`` distinct worker pids answered (or fail)."""
        pids: set[int] = set()

        def enough() -> bool:
            pids.add(int(self.get(path).text.split()[0]))
            return len(pids) >= want

        wait_until(enough, timeout, f"{want} distinct worker pids answering (saw {pids})")
        return pids


def _ours(name: str) -> bool:
    """Variables that would change the server's behaviour behind a test's back."""
    return name.startswith("KAMISAMA_") or name in ("WEB_CONCURRENCY", "PORT", "LISTEN_FDS")


StartServer = Callable[..., Server]


def serving(tmp_path: Path) -> Iterator[StartServer]:
    """Body of each test file's ``serve`` fixture: ``serve(args, modules=..., ...)`` -> Server.

    Every server started is killed (its whole process group) at teardown.
    """
    started: list[Server] = []

    def start(
        args: Sequence[str],
        *,
        modules: dict[str, str] | None = None,
        env: dict[str, str] | None = None,
        command: Sequence[str] | None = None,
        pass_fds: Sequence[int] = (),
    ) -> Server:
        directory = tmp_path / f"server{len(started)}"
        server = Server(
            directory, args, modules=modules, env=env, command=command, pass_fds=pass_fds
        )
        started.append(server)
        return server

    yield start
    for server in started:
        server.cleanup()


def free_port() -> int:
    """A port nothing listens on right now (bound and released on 127.0.0.1)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pids_gone(pids: Sequence[int], timeout: float = 10.0) -> None:
    wait_until(lambda: not any(pid_alive(p) for p in pids), timeout, f"pids {pids} to exit")


def elapsed(start: float) -> float:
    return time.monotonic() - start
