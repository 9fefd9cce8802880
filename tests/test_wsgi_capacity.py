"""Issue 8, capacity-aware accepting: a WSGI worker takes no more than it can run.

A WSGI worker runs ``--threads`` app calls at once (1 by default). A
connection it accepts beyond that waits behind a blocking app while another
worker sits idle, is lost with the worker if it is killed, and is answered 503
only late if its event loop is stuck in app code. These tests hold the server
to: idle workers get the new connections, ``--limit-concurrency`` rejects at
once, a killed worker fails only the requests its app had started, and the
event loop keeps its timers and signals while every app thread is busy.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from http_support import Reader, connect, in_background, timed_get
from processes import wait_until
from serve_support import Load, Server, StartServer, serving

from kamisama_server.http.balance import FULL_FOR

# ``?seconds=S&id=N``: logs "PID N" to started.log as the call starts (one O_APPEND
# write per request), notes its pid in busy.txt if the path is /busy, sleeps S seconds,
# then answers its pid.
BLOCKING_APP = """
import os, time
from urllib.parse import parse_qs

def app(environ, start_response):
    query = {k: v[0] for k, v in parse_qs(environ["QUERY_STRING"]).items()}
    if "id" in query:
        log = os.open("started.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(log, f"{os.getpid()} {query['id']}\\n".encode())
        os.close(log)
    if environ["PATH_INFO"] == "/busy":
        with open("busy.txt", "a") as f:
            f.write(f"{os.getpid()}\\n")
    time.sleep(float(query.get("seconds", 0)))
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]
"""


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[StartServer]:
    yield from serving(tmp_path)


def start(serve: StartServer, workers: int, *args: str) -> Server:
    argv = ["app:app", "--bind", "127.0.0.1:0", "-w", str(workers), "--no-access-log", *args]
    server = serve(argv, modules={"app": BLOCKING_APP})
    server.wait_listening()
    return server


def busy_pids(server: Server, count: int = 1) -> list[int]:
    """Wait until ``count`` /busy calls started in the app; their workers' pids."""
    path = server.directory / "busy.txt"
    wait_until(
        lambda: path.exists() and len(path.read_text().split()) >= count, 10, "/busy in the app"
    )
    return [int(pid) for pid in path.read_text().split()]


def test_new_connections_go_to_the_idle_worker(serve: StartServer) -> None:
    server = start(serve, 2)
    busy, answers = in_background(server.port, "/busy?seconds=2")
    (busy_pid,) = busy_pids(server)
    results = [timed_get(server.port, "/") for _ in range(10)]
    summary = [(status, round(took, 3), int(body)) for status, took, body in results]
    print(f"\nworker {busy_pid} busy; 10 new connections: {summary}")
    for status, took, body in results:
        assert status == 200, summary
        assert int(body) != busy_pid, f"answered by the busy worker: {summary}"
        assert took < 0.1, f"a new connection waited {took:.3f}s: {summary}"
    busy.join(10)
    assert answers and answers[0][0] == 200, answers
    assert server.stop() == 0, server.output()


class KeepAlive:
    """One keep-alive client connection: ``get`` sends a request on it and reads the answer."""

    def __init__(self, port: int) -> None:
        self.sock = connect(port, timeout=10)
        self.reader = Reader(self.sock)

    def send(self, path: str) -> None:
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())

    def get(self, path: str = "/") -> tuple[int, float]:
        """The answering worker's pid and the seconds it took."""
        began = time.monotonic()
        self.send(path)
        response = self.reader.response()
        assert response.status == 200, response
        return int(response.body), time.monotonic() - began


def keep_alive_pool(server: Server, per_worker: int) -> dict[int, list[KeepAlive]]:
    """Keep-alive connections, one request answered on each, until each of the two
    workers holds ``per_worker`` of them: ``{pid: its connections}``."""
    pool: dict[int, list[KeepAlive]] = {}
    for _ in range(64):  # each worker takes its share of new connections
        client = KeepAlive(server.port)
        pool.setdefault(client.get()[0], []).append(client)
        if len(pool) == 2 and min(map(len, pool.values())) >= per_worker:
            return pool
    raise AssertionError(f"connections per worker: { ({k: len(v) for k, v in pool.items()}) }")


def make_busy(server: Server, client: KeepAlive, seconds: float, count: int) -> None:
    """Start a blocking request on ``client`` and wait for it to be the ``count``-th in
    an app, then until its worker counts as blocked (full ``FULL_FOR`` with nothing
    finished: a fast request in progress is no reason to move a connection)."""
    client.send(f"/busy?seconds={seconds}")
    busy_pids(server, count)
    time.sleep(2 * FULL_FOR)


def both_busy(
    serve: StartServer, first: float, second: float, *args: str
) -> tuple[Server, dict[int, list[KeepAlive]]]:
    """Two workers, two keep-alive connections each; the first connection of each
    worker in a blocking request (``first`` and ``second`` seconds, in pool order)."""
    server = start(serve, 2, *args)
    pool = keep_alive_pool(server, 2)
    for count, (clients, seconds) in enumerate(zip(pool.values(), (first, second), strict=True), 1):
        make_busy(server, clients[0], seconds, count)
    return server, pool


def test_keep_alive_requests_go_to_the_idle_worker_while_theirs_is_busy(
    serve: StartServer,
) -> None:
    """A keep-alive connection held by a worker whose app blocks (a 2 s request): its
    next request is answered at once by the idle worker, which it is handed to."""
    server = start(serve, 2)
    pool = keep_alive_pool(server, 4)
    busy_pid = next(iter(pool))
    mine = pool[busy_pid]
    make_busy(server, mine[0], 2, 1)
    answers = [client.get() for client in mine[1:] for _ in range(3)]
    summary = [(pid, round(took, 3)) for pid, took in answers]
    print(f"\nworker {busy_pid} busy; its other keep-alive connections, 3 requests each: {summary}")
    for pid, took in answers:
        assert pid != busy_pid, f"answered by the busy worker: {summary}"
        # Not behind the 2 s call (here 0-4 ms; the bound is for a busy CI machine).
        assert took < 0.5, f"a request waited {took:.3f}s: {summary}"
    assert int(mine[0].reader.response().body) == busy_pid
    assert server.stop() == 0, server.output()


def test_a_request_held_by_a_blocked_worker_goes_to_the_sibling_that_frees_first(
    serve: StartServer,
) -> None:
    """Both workers busy, one for 3 s, the other for 1 s: a request on the first one's
    keep-alive connection waits for the second, not behind the 3 s call."""
    server, pool = both_busy(serve, 3, 1)
    slow_pid, quick_pid = pool
    pid, took = pool[slow_pid][1].get()
    print(f"\nheld on worker {slow_pid} (3 s call), answered by {pid} after {took:.3f}s")
    assert pid == quick_pid, f"answered by {pid} after {took:.3f}s"
    assert took < 1.5, f"answered after {took:.3f}s"
    assert server.stop() == 0, server.output()


def test_a_request_held_longer_than_the_keep_alive_timeout_is_still_served(
    serve: StartServer,
) -> None:
    """Both workers blocked for 1.5 s, ``--keep-alive 0.5``: a request held back on an
    idle connection is no idle connection (its keep-alive timeout must not close it)."""
    server, pool = both_busy(serve, 1.5, 1.5, "--keep-alive", "0.5")
    pid, took = next(iter(pool.values()))[1].get()
    print(f"\nheld {took:.3f}s, answered by {pid}")
    assert took > 0.5, f"not held: answered after {took:.3f}s"
    assert server.stop() == 0, server.output()


def test_a_request_held_by_a_blocked_worker_is_served_through_a_shutdown(
    serve: StartServer,
) -> None:
    """Both workers blocked, a request held back on one of them, then SIGTERM: the
    held request is served (the drain serves what it holds), and the exit is clean."""
    server, pool = both_busy(serve, 1.5, 1.5)
    held = next(iter(pool.values()))[1]
    held.send("/")
    time.sleep(2 * FULL_FOR)  # a moment to be held (nobody has a free thread)
    server.send_signal(signal.SIGTERM)
    response = held.reader.response()
    assert response.status == 200, response
    assert response.header("connection") == "close", response
    assert server.wait(20) == 0, server.output()


@pytest.mark.slow
def test_limit_concurrency_rejects_at_once_what_is_over_the_limit(serve: StartServer) -> None:
    server = start(serve, 2, "--limit-concurrency", "2")
    barrier = threading.Barrier(16)
    results: list[tuple[int, float]] = []
    errors: list[str] = []

    def one() -> None:
        barrier.wait(10)
        try:
            status, took, _ = timed_get(server.port, "/?seconds=1.5", timeout=8)
            results.append((status, took))
        except (OSError, EOFError) as error:
            errors.append(repr(error))

    threads = [threading.Thread(target=one, daemon=True) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    ok = sorted(took for status, took in results if status == 200)
    rejected = sorted(took for status, took in results if status == 503)
    print(f"\n200 after {[round(t, 2) for t in ok]}\n503 after {[round(t, 2) for t in rejected]}")
    assert all(took < 1.0 for took in rejected), f"a 503 came late: {rejected}"
    assert not errors, f"{len(errors)} requests hung or failed: {errors}"
    assert len(ok) + len(rejected) == 16, results  # nothing but 200 and 503
    assert len(ok) >= 2, results
    assert max(ok) < 6.0, f"a request hung: {ok}"
    assert server.stop() == 0, server.output()


@pytest.mark.slow
def test_killing_a_worker_fails_only_the_requests_its_app_had_started(
    serve: StartServer,
) -> None:
    """32 clients, a new connection per request (what gunicorn's sync worker sees).

    Connections the victim had not taken yet stay in the kernel's queue for the
    other worker. (Not so with keep-alive clients: a request already sent on a
    connection the victim held, queued behind its running call, dies with it,
    13-17 of 32 clients' in a typical run. A blocked worker hands such
    connections over, but a saturated one that keeps answering queues them.)
    """
    server = start(serve, 2)
    victim = server.started()[1]
    load = Load(server.port, clients=32, path="/?seconds=0.05", numbered=True, fresh=True)
    with load:
        load.wait_ok(100)
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: server.started()[1] != victim, 10, "worker 1 respawned")
        seen = load.result.ok
        load.wait_ok(seen + 100)
        result = load.stop()
    started_by_victim = set()
    for line in (server.directory / "started.log").read_text().splitlines():
        pid, rid = line.split()
        if int(pid) == victim:
            started_by_victim.add(rid)
    never_started = sorted(set(result.lost_ids) - started_by_victim, key=int)
    print(
        f"\nSIGKILL of worker pid {victim}: sent={result.sent} ok={result.ok} "
        f"failed={len(result.lost)} (of which never started by its app: {len(never_started)})"
    )
    assert not result.connect_errors, result.connect_errors
    assert len(result.lost_ids) == len(result.lost), result.lost
    # One at most may be a request the victim had taken but its app not yet started:
    # the kill can land in the instant between the two (gunicorn's sync worker has
    # the same instant). With its one app thread it takes a connection only when
    # that thread is free, so there is never more than one such; before capacity-
    # aware accepting a typical run lost 6 here. (Asking for none failed, rarely,
    # in full suites: on a busy machine that instant lasts longer.)
    assert len(never_started) <= 1, f"failed but never started by the killed app: {result.lost}"
    assert server.stop() == 0, server.output()


@pytest.mark.slow
def test_the_loop_keeps_timing_out_heads_and_handling_sigterm_while_the_app_blocks(
    serve: StartServer,
) -> None:
    """One worker, its only app thread in a 4 s call: the 1 s header timeout still fires."""
    server = start(serve, 1, "--header-timeout", "1")
    slow = connect(server.port, timeout=10)
    slow.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n")  # half a head, never finished
    began = time.monotonic()
    busy, answers = in_background(server.port, "/busy?seconds=4")
    busy_pids(server)
    with slow:
        response = Reader(slow).response()
    took = time.monotonic() - began
    print(f"\n408 after {took:.2f}s (header timeout 1 s, the app blocking for 4 s)")
    assert response.status == 408
    assert 0.9 <= took < 2.0, f"408 after {took:.2f}s"
    assert busy.is_alive(), "the blocking call ended first: nothing was busy"
    server.send_signal(signal.SIGTERM)
    busy.join(10)
    assert answers and answers[0][0] == 200, answers
    assert server.wait(10) == 0, server.output()
