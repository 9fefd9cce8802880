"""Issue 8, "every worker gets its share": connections spread over the workers.

64 keep-alive connections opened at once (all connected first, then one
``GET /`` on each asking which worker holds it) must land within 0.4x-1.6x of
64/W on every worker, with the default flags, WSGI and ASGI, 2 and 4 workers,
in each of 3 rounds; and again after a worker was SIGKILLed and replaced, and
after SIGTTIN added one. A worker that grabs a whole burst makes those clients
wait on it while its siblings idle.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from http_support import Reader, connect
from processes import wait_until
from serve_support import (
    ASGI_PID_APP,
    PID_APP,
    Server,
    StartServer,
    connection_inodes,
    held_connections,
    pids_gone,
    serving,
)

CONNECTIONS = 64
ROUNDS = 3
LOW, HIGH = 0.4, 1.6

APPS = {"wsgi": PID_APP, "asgi": ASGI_PID_APP}


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[StartServer]:
    yield from serving(tmp_path)


def spread(port: int) -> Counter[int]:
    """Open ``CONNECTIONS`` connections, then one GET / on each: requests per worker pid."""
    counts: Counter[int] = Counter()
    with ExitStack() as stack:
        socks: list[socket.socket] = [
            stack.enter_context(connect(port, timeout=10)) for _ in range(CONNECTIONS)
        ]
        for sock in socks:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        for sock in socks:
            response = Reader(sock).response()
            assert response.status == 200, response
            counts[int(response.body.split()[0])] += 1
    return counts


def released(port: int, workers: list[int]) -> None:
    """Wait until no worker holds a connection of the last round any more.

    A round's clients close their connections just before the next round
    connects; a worker that had no CPU for that moment still counts its old
    connections on the board, so its siblings' share grows by them and the next
    burst goes to the others (seen: 20/6/18/20). That is the board being a few
    milliseconds late, not a burst taken unfairly, so each round starts clean.
    """
    if not Path("/proc/net/tcp").exists():
        return

    def none_held() -> bool:
        inodes = connection_inodes(port)
        return not any(held_connections(pid, port, inodes) for pid in workers)

    wait_until(
        none_held,
        10,
        "the workers closed the last round's connections",
    )


def rounds(server: Server, phase: str, slots: int | None = None) -> list[str]:
    """``ROUNDS`` rounds of :func:`spread`; a line per round, and a failure line if unfair.

    The workers are the latest of slots 1..``slots`` (default: every slot started).
    """
    started = server.started()
    workers = sorted(pid for wid, pid in started.items() if slots is None or wid <= slots)
    fair = CONNECTIONS / len(workers)
    lines = []
    released(server.port, workers)  # also the connections that found the workers' pids
    for n in range(1, ROUNDS + 1):
        counts = spread(server.port)
        released(server.port, workers)
        shares = [counts[pid] for pid in workers]
        line = f"{phase}, round {n}: {shares} (fair {fair:.0f} each)"
        assert set(counts) <= set(workers), f"{line}: answered by {sorted(counts)}"
        if not all(LOW * fair <= share <= HIGH * fair for share in shares):
            line += f"  UNFAIR: outside {LOW * fair:.1f}..{HIGH * fair:.1f}"
        lines.append(line)
    return lines


@pytest.mark.slow
@pytest.mark.xdist_group("balance")  # one at a time: each runs up to 5 workers on 2 cores
@pytest.mark.parametrize("workers", [2, 4])
@pytest.mark.parametrize("kind", sorted(APPS))
def test_every_worker_gets_its_share(serve: StartServer, kind: str, workers: int) -> None:
    args = ["app:app", "--bind", "127.0.0.1:0", "-w", str(workers), "--no-access-log"]
    server = serve(args, modules={"app": APPS[kind]})
    server.wait_listening()
    report = rounds(server, f"{workers} workers")

    victim = server.started()[1]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: server.started()[1] != victim, 10, "worker 1 respawned")
    assert server.answering_pids(workers) == set(server.started().values())
    report += rounds(server, "after a SIGKILL")

    server.send_signal(signal.SIGTTIN)
    server.wait_for_log(f"one worker more, now {workers + 1}")
    wait_until(lambda: workers + 1 in server.started(), 10, f"worker {workers + 1} started")
    assert server.answering_pids(workers + 1) == set(server.started().values())
    report += rounds(server, f"after SIGTTIN, {workers + 1} workers")

    removed = server.started()[workers + 1]
    server.send_signal(signal.SIGTTOU)
    server.wait_for_log(f"one worker fewer, now {workers}")
    pids_gone([removed])
    report += rounds(server, f"after SIGTTOU, {workers} workers", slots=workers)

    before = {pid for wid, pid in server.started().items() if wid <= workers}
    server.send_signal(signal.SIGUSR1)
    server.wait_for_log("rolling restart done", timeout=30)
    pids_gone(sorted(before), timeout=30)
    report += rounds(server, "after a rolling restart (SIGUSR1)", slots=workers)

    print(f"\n{kind}, {workers} workers:\n" + "\n".join(report))
    unfair = [line for line in report if "UNFAIR" in line]
    assert not unfair, "\n".join(report)
    assert server.stop() == 0, server.output()


@pytest.mark.parametrize("kind", sorted(APPS))
def test_a_burst_of_requests_on_64_connections_is_all_answered(
    serve: StartServer, kind: str
) -> None:
    """Every connection sends its request at once (a client pool): all 64 are answered
    promptly. (A response written from inside a loop callback once sat in uvloop's
    queued writes until some other event woke the loop: 56 of 64 never left.)"""
    args = ["app:app", "--bind", "127.0.0.1:0", "-w", "2", "--no-access-log"]
    server = serve(args, modules={"app": APPS[kind]})
    server.wait_listening()

    async def burst() -> list[bytes]:
        opened = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(64)]
        for _, writer in opened:
            writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        try:
            return await asyncio.wait_for(
                asyncio.gather(*(reader.readuntil(b"\r\n\r\n") for reader, _ in opened)), 5
            )
        finally:
            for _, writer in opened:
                writer.close()

    for _ in range(3):
        heads = asyncio.run(burst())
        assert all(head.startswith(b"HTTP/1.1 200 ") for head in heads), heads
    assert server.stop() == 0, server.output()


BUSY_PID_APP = textwrap.dedent("""
    import os, time

    def app(environ, start_response):
        time.sleep(0.001)  # a database call's worth of waiting (the GIL released)
        body = str(os.getpid()).encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
""")
"""A WSGI app that keeps its one thread busy about 1 ms per request, answering its pid."""


async def _keep_busy(port: int, seconds: float) -> tuple[float, int, int]:
    """One client of a pool that starts at full speed (wrk's pattern): connect, then
    requests back to back; (seconds to the first answer, answering pid, requests)."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    first = 0.0
    pid = done = 0
    try:
        while time.monotonic() - started < seconds:
            writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 "), head
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            answered_by = int(await reader.readexactly(length))
            if not done:
                first, pid = time.monotonic() - started, answered_by
            # The connection counts for the worker that answered first. (It may move
            # later: a worker that finishes nothing for a while hands its connections
            # to one with a free thread, e.g. when it got no CPU on a loaded machine.)
            done += 1
    finally:
        writer.close()
    return first, pid, done


@pytest.mark.slow
@pytest.mark.xdist_group("balance")
def test_a_pool_that_connects_at_full_speed_is_spread_and_served_at_once(
    serve: StartServer,
) -> None:
    """64 clients connect and at once send requests back to back, so every worker is
    busy while the rest of the pool still connects (wrk does this). Each worker must
    get its share of the connections, and each connection its first answer promptly.

    Before: a worker busy for 50 ms counted as absent on the board, so under load the
    share rule fell away and one worker took all 64 (half the CPU idle); and a worker
    paused "until a thread is free" stayed paused while its keep-alive requests kept
    its thread busy, so its sibling, over its share, held connections unaccepted ~1 s.
    """
    args = ["app:app", "--bind", "127.0.0.1:0", "-w", "2", "--no-access-log"]
    server = serve(args, modules={"app": BUSY_PID_APP})
    server.wait_listening()
    workers = sorted(server.answering_pids(2))

    async def pool() -> list[tuple[float, int, int]]:
        return await asyncio.wait_for(
            asyncio.gather(*(_keep_busy(server.port, 1.5) for _ in range(CONNECTIONS))), 30
        )

    report = []
    for n in range(1, ROUNDS + 1):
        clients = asyncio.run(pool())
        held = Counter(pid for _, pid, _ in clients)
        slowest = max(first for first, _, _ in clients)
        shares = [held[pid] for pid in workers]
        report.append(
            f"round {n}: connections per worker {shares}, slowest first answer "
            f"{slowest * 1000:.0f} ms, {sum(done for _, _, done in clients)} requests"
        )
        assert set(held) <= set(workers), report[-1]
        fair = CONNECTIONS / len(workers)
        assert all(LOW * fair <= share <= HIGH * fair for share in shares), report
        # Was 1.5 s (the 1 s grace), then 0.15-0.5 s; 70-90 ms here since a burst's
        # queue counts in the share (balance.py). The bound is for a busy CI machine.
        assert slowest < 0.9, report
    print("\n" + "\n".join(report))
    assert server.stop() == 0, server.output()
