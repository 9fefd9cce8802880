"""Readiness: a server is ready when N distinct worker pids have answered GET /pid.

The same probe is used for every contender (no log-line parsing), so startup times compare.
Bursts of concurrent connections spread over the workers, so a ready worker shows up within
a burst or two (a bias of a few milliseconds, the same for everyone).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

from .http1 import HEAD_LIMIT, get, read_response, request_bytes
from .procs import Server


class StartFailed(Exception):
    """The server exited or did not become ready in time; the message says why."""

    def __init__(self, message: str, log_tail: str = "") -> None:
        super().__init__(message)
        self.log_tail = log_tail


async def _burst(port: int, size: int, timeout: float) -> tuple[set[int], bool]:
    """Fire `size` concurrent GET /pid; return the pids seen and whether any got an answer."""
    results = await asyncio.gather(
        *(get(port, "/pid", timeout) for _ in range(size)), return_exceptions=True
    )
    pids: set[int] = set()
    answered = False
    for result in results:
        if isinstance(result, BaseException):
            continue
        answered = True
        if result.status == 200 and result.body.strip().isdigit():
            pids.add(int(result.body))
    return pids, answered


async def _wait_workers(server: Server, workers: int, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    pids: set[int] = set()
    for _ in range(100_000):
        if not server.alive():
            raise StartFailed(f"exited with code {server.proc.returncode} before it was ready")
        left = deadline - time.monotonic()
        if left <= 0:
            raise StartFailed(f"not ready within {timeout:.0f} s ({len(pids)}/{workers} workers)")
        seen, answered = await _burst(server.port, 2 * workers, min(left, 5.0))
        pids |= seen
        server.worker_pids = set(pids)
        if len(pids) >= workers:
            return time.perf_counter() - server.started_at
        if not answered:
            await asyncio.sleep(0.005)
    raise StartFailed("probe loop exhausted")


async def _wait_answer(server: Server, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    for _ in range(100_000):
        if not server.alive():
            raise StartFailed(f"exited with code {server.proc.returncode} before it was ready")
        left = deadline - time.monotonic()
        if left <= 0:
            raise StartFailed(f"no answer within {timeout:.0f} s")
        try:
            response = await get(server.port, "/", min(left, 2.0))
        except (OSError, asyncio.TimeoutError, Exception):
            await asyncio.sleep(0.01)
            continue
        if response.status == 200:
            return time.perf_counter() - server.started_at
        raise StartFailed(f"GET / answered {response.status}")
    raise StartFailed("probe loop exhausted")


def wait_workers(server: Server, workers: int, timeout: float) -> float:
    """Seconds from launch until `workers` distinct pids answered; raises StartFailed."""
    return asyncio.run(_wait_workers(server, workers, timeout))


def wait_answer(server: Server, timeout: float) -> float:
    """Seconds from launch until GET / answered 200 (for servers without /pid: nginx)."""
    return asyncio.run(_wait_answer(server, timeout))


@dataclass
class WarmUp:
    """What the unrecorded warm-up requests got: a server that answers errors is caught here,
    before its error pages are timed as if they were the app's answer."""

    answered: int = 0
    ok: int = 0
    other: Counter[int] = field(default_factory=Counter)  # non-200 status -> count

    def healthy(self) -> bool:
        return self.answered > 0 and self.ok >= 0.99 * self.answered

    def describe(self) -> str:
        statuses = ", ".join(f"{n} x {status}" for status, n in self.other.most_common())
        return f"{self.ok} of {self.answered} GET / answered 200" + (
            f" ({statuses})" if statuses else ""
        )


async def _warm(port: int, total: int, connections: int, timeout: float) -> WarmUp:
    """`total` GET / over `connections` keep-alive connections, reconnecting when the server
    closes one (gunicorn sync closes after every answer)."""
    per_connection = max(1, total // connections)
    request = request_bytes("/", port)
    tally = WarmUp()

    async def one() -> None:
        writer: asyncio.StreamWriter | None = None
        try:
            for _ in range(per_connection):
                if writer is None:
                    reader, writer = await asyncio.open_connection(
                        "127.0.0.1", port, limit=HEAD_LIMIT
                    )
                writer.write(request)
                await writer.drain()
                response = await read_response(reader)
                tally.answered += 1
                if response.status == 200:
                    tally.ok += 1
                else:
                    tally.other[response.status] += 1
                if response.close:
                    writer.close()
                    writer = None
        finally:
            if writer is not None:
                writer.close()

    await asyncio.wait_for(
        asyncio.gather(*(one() for _ in range(connections)), return_exceptions=True), timeout
    )
    return tally


def warm_up(server: Server, total: int, connections: int = 8, timeout: float = 20.0) -> WarmUp:
    """Unrecorded requests before the first measured round (imports, lazy init, caches)."""
    return asyncio.run(_warm(server.port, total, connections, timeout))
