"""How evenly a burst of keep-alive connections lands on the workers.

One round: open `connections` TCP connections at once (all connect before any request is
sent), then one `GET /pid` (keep-alive) on each, and count which worker pid answered each.
Keep-alive servers hold a connection for its whole life, so this shows how the accept path
spreads a burst: a worker whose accept loop grabs most of it serves most of that traffic.

A server that answers `Connection: close` (gunicorn sync: one connection at a time) gets
its connection closed by us at once, as any client does (gunicorn waits for that close before
it accepts the next one); it never holds a connection, so its count only says which worker
was free to accept next.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field

from .http1 import HEAD_LIMIT, read_response, request_bytes

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@dataclass
class BalanceRound:
    connected: int = 0
    unanswered: int = 0  # connected, but no 200 with a pid before the deadline
    by_pid: Counter[int] = field(default_factory=Counter)
    seconds: float = 0.0


async def _ask_pid(streams: Streams, port: int, timeout: float) -> int:
    reader, writer = streams
    writer.write(request_bytes("/pid", port))
    await writer.drain()
    response = await asyncio.wait_for(read_response(reader), timeout)
    if response.close:
        writer.close()
    if response.status != 200 or not response.body.strip().isdigit():
        raise ValueError(f"GET /pid answered {response.status}")
    return int(response.body)


async def _round(port: int, connections: int, timeout: float) -> BalanceRound:
    result = BalanceRound()
    started = time.perf_counter()
    opened = await asyncio.gather(
        *(
            asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, limit=HEAD_LIMIT), timeout)
            for _ in range(connections)
        ),
        return_exceptions=True,
    )
    streams = [s for s in opened if not isinstance(s, BaseException)]
    result.connected = len(streams)
    try:
        answers = await asyncio.gather(
            *(_ask_pid(s, port, timeout) for s in streams), return_exceptions=True
        )
    finally:
        for _, writer in streams:
            writer.close()
        with contextlib.suppress(Exception):
            await asyncio.gather(*(w.wait_closed() for _, w in streams), return_exceptions=True)
    for answer in answers:
        if isinstance(answer, int):
            result.by_pid[answer] += 1
        else:
            result.unanswered += 1
    result.seconds = time.perf_counter() - started
    return result


def run_round(port: int, connections: int, timeout: float = 5.0) -> BalanceRound:
    """One burst against a ready server; every connect and answer waits `timeout` at most."""
    return asyncio.run(asyncio.wait_for(_round(port, connections, timeout), 3 * timeout))


def per_worker(by_pid: Counter[int], workers: set[int]) -> list[int]:
    """Connections per worker, busiest first; a known worker that got none counts as 0."""
    counts = Counter({pid: 0 for pid in workers})
    counts.update(by_pid)
    return sorted(counts.values(), reverse=True)
