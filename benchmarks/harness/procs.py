"""Server processes: launch each in its own session, measure its whole process tree, and make
sure every process the harness started is gone when it exits (normally, on error or Ctrl+C).

Only processes started here are ever signalled: by the master's pid, or by the process group
that the harness created for it (start_new_session), never by name.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil

_PR_SET_PDEATHSIG = 1


def _die_with_harness() -> None:
    """In the child before exec: get SIGKILL if the harness dies without cleaning up."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port() -> int:
    """A free 127.0.0.1 port below the ephemeral range, so other tests' port-0 binds and
    outgoing connections cannot take it between our check and the server's bind."""
    for _ in range(200):
        port = random.randint(20000, 30999)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-30999")


@dataclass
class Server:
    """One launched server: its master process, port and log."""

    name: str
    argv: list[str]
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    started_at: float
    seen_pids: set[int] = field(default_factory=set)
    worker_pids: set[int] = field(default_factory=set)  # pids that answered GET /pid

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def gone(self) -> bool:
        """The master has exited and no process is left in its group."""
        return self.proc.poll() is not None and not _group_alive(self.pid)

    def tree(self) -> list[psutil.Process]:
        """The master and all its descendants (empty when the master is gone)."""
        try:
            master = psutil.Process(self.pid)
            procs = [master, *master.children(recursive=True)]
        except psutil.Error:
            return []
        self.seen_pids.update(p.pid for p in procs)
        return procs

    def cpu_by_pid(self) -> dict[int, float]:
        """User+system CPU seconds of each live process of the tree."""
        out: dict[int, float] = {}
        for proc in self.tree():
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                out[proc.pid] = times.user + times.system
        return out

    def cpu_seconds(self) -> float:
        """User+system CPU of the live tree. Only deltas over a steady state mean anything."""
        return sum(self.cpu_by_pid().values())

    def memory(self) -> tuple[float, float]:
        """Summed (USS, PSS) of the tree in bytes: USS is what the tree alone holds, PSS
        splits shared pages fairly, so copy-on-write sharing after fork shows in both."""
        uss = pss = 0.0
        for proc in self.tree():
            with contextlib.suppress(psutil.Error):
                info = proc.memory_full_info()
                uss += info.uss
                pss += getattr(info, "pss", 0.0)
        return uss, pss

    def log_tail(self, lines: int = 12) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def last_exception(self) -> str:
        """The last line of its log that names a Python exception (``pkg.SomeError: why``),
        so a report can say why an app failed under this server; empty if there is none."""
        lines = self.log_tail(400).splitlines()
        return next((line for line in reversed(lines) if _EXCEPTION_LINE.match(line)), "")


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Operation|Exit)(: .*)?$")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Registry:
    """Every server started by this run; `close()` leaves none of them running."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.servers: list[Server] = []

    def launch(
        self, name: str, argv: list[str], port: int, cwd: Path, env: dict[str, str]
    ) -> Server:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}-{port}.log"
        with log_path.open("wb") as log:
            log.write(("$ " + " ".join(argv) + "\n").encode())
            log.flush()
            started_at = time.perf_counter()
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_harness,
            )
        server = Server(name, argv, port, proc, log_path, started_at)
        self.servers.append(server)
        return server

    def wait_exit(self, server: Server, timeout: float) -> bool:
        """Wait (bounded) until the master and its whole group are gone."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if server.gone():
                return True
            time.sleep(0.02)
        return False

    def stop(self, server: Server, grace: float = 8.0, signalled: bool = False) -> float | None:
        """SIGTERM the master, wait up to `grace` s, then SIGKILL the group and any tree
        member seen. Returns how long a clean stop took, or None if it had to be killed."""
        pids = {p.pid for p in server.tree()} | server.seen_pids
        start = time.perf_counter()
        if server.proc.poll() is None and not signalled:
            with contextlib.suppress(ProcessLookupError):
                os.kill(server.pid, signal.SIGTERM)
        clean = self.wait_exit(server, grace)
        took = time.perf_counter() - start
        if not clean:
            self._kill(server, pids)
        if server in self.servers:
            self.servers.remove(server)
        return took if clean else None

    def stop_many(self, servers: list[Server], grace: float = 8.0) -> None:
        """SIGTERM all first, then wait for each: stopping 20 idle servers takes one grace."""
        for server in servers:
            if server.proc.poll() is None:
                server.tree()  # remember the pids, for the SIGKILL fallback
                with contextlib.suppress(ProcessLookupError):
                    os.kill(server.pid, signal.SIGTERM)
        for server in servers:
            self.stop(server, grace, signalled=True)

    def _kill(self, server: Server, pids: set[int]) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(server.pid, signal.SIGKILL)
        for pid in pids:
            with contextlib.suppress(psutil.Error, OSError):
                proc = psutil.Process(pid)
                # Only kill a pid that is still in the group we created (not a reused pid).
                if os.getpgid(pid) == server.pid:
                    proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.proc.wait(timeout=5)

    def close(self) -> None:
        """Stop everything still registered: a short grace, then SIGKILL."""
        for server in list(self.servers):
            with contextlib.suppress(Exception):
                self.stop(server, grace=2.0)

    @contextlib.contextmanager
    def running(self) -> Iterator[Registry]:
        try:
            yield self
        finally:
            self.close()
