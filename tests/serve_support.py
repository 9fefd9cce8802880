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
import select
import signal
import socket
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from http_support import Reader
from processes import GroupProcess, pid_alive, wait_until

SERVE = str(Path(sys.executable).with_name("kamisama-serve"))
LISTENING = re.compile(
    r"^kamisama: listening on (?P<urls>.+) \((?P<n>\d+) workers?, pid (?P<pid>\d+)\)$"
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

ASGI_PID_APP = textwrap.dedent("""
    import os
    from kamisama_server import worker_id

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        body = f"{os.getpid()} {worker_id()}".encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
""")
"""The same as an ASGI app."""


class Server(GroupProcess):
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
        directory.mkdir(parents=True, exist_ok=True)
        for name, source in (modules or {}).items():
            path = directory / (name.replace(".", "/") + ".py")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(source))
        full_env = {k: v for k, v in os.environ.items() if not _ours(k)}
        full_env.update(env or {})
        argv = [*(command or [SERVE]), *args]
        super().__init__(directory, argv, full_env, tuple(pass_fds))
        self.port = 0
        self.workers = 0

    # ---- reading -----------------------------------------------------------

    def listening_lines(self) -> list[re.Match[str]]:
        return [m for line in self.out.splitlines() if (m := LISTENING.match(line))]

    def started(self) -> dict[int, int]:
        """``{worker id: latest pid}`` from the master's ``worker N (pid P) started`` lines."""
        return {int(m["wid"]): int(m["pid"]) for m in STARTED.finditer(self.err)}

    def all_started_pids(self) -> list[int]:
        return [int(m["pid"]) for m in STARTED.finditer(self.err)]

    def wait_for_log(self, text: str, count: int = 1, timeout: float = 10.0) -> None:
        try:
            wait_until(
                lambda: self.err.count(text) >= count or self._dead_early(),
                timeout,
                f"{count}x {text!r} on stderr",
            )
        except AssertionError as exc:  # say what the server did say
            raise AssertionError(f"{exc}; its stderr:\n{self.err[-4000:]}") from None
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

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        self.send_signal(sig)
        return self.wait(timeout)

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


def pids_gone(
    pids: Sequence[int], timeout: float = 10.0, output: Callable[[], str] | None = None
) -> None:
    """Wait until ``pids`` exited; on a timeout, ``output()`` (the server's log) says why."""
    try:
        wait_until(lambda: not any(pid_alive(p) for p in pids), timeout, f"pids {pids} to exit")
    except AssertionError as exc:
        alive = [p for p in pids if pid_alive(p)]
        raise AssertionError(f"{exc}; alive: {alive}\n{output() if output else ''}") from None


def elapsed(start: float) -> float:
    return time.monotonic() - start


# --------------------------------------------------------------------------- load


@dataclass
class LoadResult:
    """What the load's clients saw. ``lost`` lists every request written but not answered 200.

    ``lost_ids``: the ids of those requests, with ``Load(numbered=True)``.
    """

    sent: int = 0
    ok: int = 0
    lost: list[str] = field(default_factory=list)
    closed_before_send: int = 0
    connect_errors: list[str] = field(default_factory=list)
    closes_announced: int = 0
    pids: set[int] = field(default_factory=set)
    lost_ids: list[str] = field(default_factory=list)


class Load:
    """``clients`` threads sending ``GET path`` over raw sockets until told to stop.

    Keep-alive by default (``fresh=True``: a new connection per request); each
    client waits ``pause`` seconds between requests (light load). The
    accounting is strict: a request counts as lost if it was written and no full
    200 came back, whatever the reason (reset, EOF, timeout, other status). The
    only excused case is a connection the server had already closed before the
    request was written (seen as end-of-file just before writing).

    New connections are opened under a lock that :meth:`signal_server` takes, so
    every connection was established before the signal or not at all.

    ``numbered``: each request carries a unique ``id=N`` in its query string, so
    a test can tell which of the lost requests the app had seen.
    """

    def __init__(
        self,
        port: int,
        *,
        clients: int = 32,
        path: str = "/",
        fresh: bool = False,
        pause: float = 0.0,
        max_seconds: float = 60.0,
        max_requests: int = 20_000,
        numbered: bool = False,
    ) -> None:
        self.port = port
        self.path = path
        self.numbered = numbered
        self.request = f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode()
        self.fresh = fresh
        self.pause = pause
        self.max_seconds = max_seconds
        self.max_requests = max_requests
        self.result = LoadResult()
        self.lock = threading.Lock()  # guards result and connecting
        self.stopping = False
        self.finished = threading.Event()
        self.threads = [
            threading.Thread(target=self._client, name=f"load-{i}", daemon=True)
            for i in range(clients)
        ]
        self.queued: list[tuple[socket.socket, str]] = []

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_ok(self, count: int, timeout: float = 20.0) -> None:
        wait_until(lambda: self.result.ok >= count, timeout, f"{count} answered requests")

    def signal_server(self, send: Callable[[], None], queued: int = 0) -> None:
        """Stop opening connections, open ``queued`` fresh one-request connections, then send.

        The extra connections are in the kernel's queue (or just accepted) when
        the signal lands: the drain must answer each of them.
        """
        with self.lock:
            self.stopping = True
            for _ in range(queued):
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
                self.result.sent += 1
                rid = self._id()
                sock.sendall(self._request(rid))
                self.queued.append((sock, rid))
            send()

    def stop(self, timeout: float = 30.0, finish: bool = True) -> LoadResult:
        """Read the queued connections' answers and wait for every client to end.

        ``finish``: each client ends after its current request; else each goes
        on over its open connection until the server closes it (after a signal).
        """
        with self.lock:
            self.stopping = True
        if finish:
            self.finished.set()
        for sock, rid in self.queued:
            self._answer(sock, Reader(sock), "queued", rid)
            sock.close()
        self.queued.clear()
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self.threads if t.is_alive()]
        assert not alive, f"load clients still running after {timeout}s: {alive}"
        return self.result

    # ---- one client ----------------------------------------------------------

    def _client(self) -> None:
        sock: socket.socket | None = None
        reader: Reader | None = None
        deadline = time.monotonic() + self.max_seconds
        try:
            for _ in range(self.max_requests):
                if time.monotonic() > deadline or self.finished.is_set():
                    break
                if sock is not None and _peer_closed(sock):
                    with self.lock:
                        self.result.closed_before_send += 1
                    sock.close()
                    sock = None
                if sock is None:
                    with self.lock:
                        if self.stopping:
                            break
                        try:
                            sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
                        except OSError as error:
                            self.result.connect_errors.append(repr(error))
                            break
                    reader = Reader(sock)
                assert reader is not None
                keep = self._one(sock, reader)
                if self.pause and self.finished.wait(self.pause):  # pacing (light load)
                    break
                if not keep or self.fresh:
                    sock.close()
                    sock = None
                    if self.stopping:
                        break
        finally:
            if sock is not None:
                sock.close()

    def _one(self, sock: socket.socket, reader: Reader) -> bool:
        """Send one request and read its answer; False when the connection is done."""
        with self.lock:
            self.result.sent += 1
            rid = self._id()
        try:
            sock.sendall(self._request(rid))
        except OSError as error:
            with self.lock:
                self._lose(f"send: {error!r}", rid)
            return False
        return self._answer(sock, reader, "request", rid)

    def _id(self) -> str:
        """A unique id for the request being sent (called under the lock, after counting it)."""
        return str(self.result.sent) if self.numbered else ""

    def _request(self, rid: str) -> bytes:
        if not rid:
            return self.request
        path = f"{self.path}{'&' if '?' in self.path else '?'}id={rid}"
        return f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode()

    def _lose(self, why: str, rid: str) -> None:
        self.result.lost.append(f"{why} (id {rid})" if rid else why)
        if rid:
            self.result.lost_ids.append(rid)

    def _answer(self, sock: socket.socket, reader: Reader, kind: str, rid: str = "") -> bool:
        try:
            response = reader.response()
        except (EOFError, OSError, AssertionError, ValueError) as error:
            with self.lock:
                self._lose(f"{kind}: {type(error).__name__}: {error}", rid)
            return False
        close = response.header("connection") == "close"
        with self.lock:
            if response.status != 200:
                self._lose(f"{kind}: status {response.status}", rid)
                return False
            self.result.ok += 1
            self.result.closes_announced += close
            with contextlib.suppress(ValueError, IndexError):
                self.result.pids.add(int(response.body.split()[0]))
        return not close


def _peer_closed(sock: socket.socket) -> bool:
    """True if the server closed this idle connection (EOF or reset waiting to be read)."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def connection_inodes(port: int) -> set[str]:
    """Socket inodes of the TCP connections to ``port`` (not its listening socket)."""
    local = f":{port:04X} "
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        if local in line:  # cheap first look: the file can hold thousands of TIME_WAITs
            fields = line.split()
            if fields[1].endswith(local.rstrip()) and fields[3] != "0A":  # 0A: LISTEN
                inodes.add(fields[9])
    return inodes


def held_connections(pid: int, port: int, inodes: set[str] | None = None) -> int:
    """TCP connections to ``port`` among ``pid``'s descriptors (``inodes``: see
    :func:`connection_inodes`, when the caller looks at several processes)."""
    if inodes is None:
        inodes = connection_inodes(port)
    held = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            held += link.startswith("socket:[") and link[8:-1] in inodes
    return held
