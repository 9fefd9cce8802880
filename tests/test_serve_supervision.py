"""The supervisor's promises through the server: crash recovery, scaling, rolling restart."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from processes import pid_alive, wait_until
from serve_support import PID_APP, Load, Server, StartServer, pids_gone, serving


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[StartServer]:
    yield from serving(tmp_path)


CRASHY_APP = (
    PID_APP
    + """
_pid_app = app

def app(environ, start_response):
    if environ["PATH_INFO"] == "/crash":
        os._exit(1)
    return _pid_app(environ, start_response)
"""
)


def start(
    serve: StartServer, mode: str, workers: int = 2, source: str = PID_APP, hook: str = ""
) -> Server:
    args = ["app:app", "--bind", "127.0.0.1:0", "-w", str(workers), "--socket-mode", mode]
    if hook:
        args += ["--shutdown", hook]
    server = serve([*args, "--timeout", "5", "--no-access-log"], modules={"app": source})
    server.wait_listening()
    return server


def timed_gets(server: Server, count: int, timeout: float = 10.0) -> list[tuple[float, int]]:
    """``count`` concurrent fresh-connection GETs: (seconds to answer, answering pid) each."""
    results: list[tuple[float, int]] = []
    errors: list[str] = []
    lock = threading.Lock()

    def one() -> None:
        began = time.monotonic()
        try:
            response = server.get("/", timeout=timeout)
            with lock:
                results.append((time.monotonic() - began, int(response.text.split()[0])))
        except httpx.HTTPError as error:
            with lock:
                errors.append(repr(error))

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout + 5)
    assert not errors, f"{len(errors)} of {count} failed: {errors[:3]}"
    assert len(results) == count
    return results


@pytest.mark.parametrize("mode", ["reuseport", "shared"])
def test_a_crashed_worker_is_respawned_with_its_id_and_queued_connections_are_served(
    serve: StartServer, mode: str
) -> None:
    server = start(serve, mode, source=CRASHY_APP)
    before = server.started()
    with pytest.raises(httpx.HTTPError):
        server.get("/crash")
    crashed_at = time.monotonic()
    # Fresh connections right away: in reuseport mode some are hashed to the dead slot.
    results = timed_gets(server, 24)
    server.wait_for_log("exited with code 1; respawning")
    after = server.started()
    assert sorted(after) == [1, 2]
    (dead_wid,) = [w for w in before if before[w] != after[w]]
    assert not pid_alive(before[dead_wid])
    respawned = after[dead_wid]
    slot_latencies = sorted(t for t, pid in results if pid == respawned)
    worst = max(t for t, _ in results)
    print(
        f"\n{mode}: crash -> answers within {worst:.2f}s "
        f"({len(slot_latencies)} of 24 by the respawned worker, "
        f"worst {max(slot_latencies, default=0):.2f}s), "
        f"respawn seen {time.monotonic() - crashed_at:.2f}s after the crash"
    )
    assert worst < 3.0, results
    assert server.answering_pids(2) == {after[1], after[2]}
    assert len(server.listening_lines()) == 1, server.out
    assert server.stop() == 0, server.output()


@pytest.mark.parametrize("mode", ["reuseport", "shared"])
def test_sigttin_adds_a_worker_and_sigttou_removes_one(serve: StartServer, mode: str) -> None:
    server = start(serve, mode)
    server.send_signal(signal.SIGTTIN)
    server.wait_for_log("one worker more, now 3")
    wait_until(lambda: 3 in server.started(), 10, "worker 3 started")
    assert server.answering_pids(3) == set(server.started().values())
    third = server.started()[3]
    server.send_signal(signal.SIGTTOU)
    server.wait_for_log("one worker fewer, now 2")
    pids_gone([third])
    # Every fresh connection is still answered, none is stranded on the removed slot.
    # (Generous bound: one whose SYN races the slot socket's final close is retried
    # by the kernel after 1 s; 30 concurrent clients on a busy 2-core machine.)
    results = timed_gets(server, 30, timeout=5)
    assert {pid for _, pid in results} <= {server.started()[1], server.started()[2]}
    worst = max(t for t, _ in results)
    print(f"\n{mode}: after SIGTTOU, 30 fresh connections: worst {worst:.2f}s")
    assert worst < 6.0, results
    assert len(server.listening_lines()) == 1
    assert server.stop() == 0, server.output()


@pytest.mark.parametrize("fresh", [True, False], ids=["fresh", "keep-alive"])
@pytest.mark.parametrize("mode", ["reuseport", "shared"])
def test_sigusr1_replaces_every_worker_without_failing_a_request(
    serve: StartServer, mode: str, fresh: bool
) -> None:
    server = start(serve, mode)
    old = server.started()
    with Load(server.port, clients=4, fresh=fresh, pause=0.02, max_seconds=40) as load:
        load.wait_ok(20)
        server.send_signal(signal.SIGUSR1)
        server.wait_for_log("rolling restart done", timeout=20)
        new = server.started()
        pids_gone(list(old.values()))
        seen = load.result.ok
        load.wait_ok(seen + 20)
        result = load.stop()
    assert sorted(new) == [1, 2]
    assert not set(new.values()) & set(old.values())
    print(f"\n{mode}/{'fresh' if fresh else 'keep-alive'}: sent={result.sent} ok={result.ok}")
    assert result.lost == [], result.lost[:10]
    assert result.pids & set(new.values()), "no request reached a new worker"
    assert server.answering_pids(2) == set(new.values())
    assert len(server.listening_lines()) == 1, server.out
    assert server.stop() == 0, server.output()


FLAKY_SLOT_APP = (
    PID_APP
    + """
from kamisama_server import worker_id

_pid_app = app

def app(environ, start_response):
    if environ["PATH_INFO"] == "/crash-1":
        if worker_id() == 1:
            os._exit(1)
        start_response("409 Conflict", [("Content-Length", "0")])
        return [b""]
    return _pid_app(environ, start_response)
"""
)


@pytest.mark.parametrize("mode", ["reuseport", "shared"])
def test_no_connection_waits_on_a_slot_that_is_backing_off(serve: StartServer, mode: str) -> None:
    """Crash slot 1 again and again until its respawn backs off 1.6 s; nobody waits for it.

    A healthy worker's crash is respawned at once, so the backoff comes only from
    repeated crashes (see the supervisor): it takes a handful of them. Whether each
    new worker dies as a start-up crash or a healthy one depends on when this
    test's request reaches it; both kinds count toward the backoff (when each kind
    restarted the other's count, 1 run in 8 never reached 1.6 s in 20 crashes).
    """
    server = start(serve, mode, source=FLAKY_SLOT_APP)

    def respawned(crashes: int) -> Callable[[], bool]:
        return lambda: sum(p not in old_pids for p in server.all_started_pids()) == crashes + 1

    old_pids = {server.started()[2]}
    crashes = 0
    for _ in range(600):
        if "respawning in 1.6s" in server.err or crashes == 20:
            break
        wait_until(respawned(crashes), 10, "worker 1 respawned")
        try:
            server.get("/crash-1", timeout=5)  # 409 from worker 2: try another connection
        except httpx.HTTPError:
            crashes += 1
            server.wait_for_log("exited with code 1; respawning in", count=crashes)
    assert "respawning in 1.6s" in server.err, server.err
    # One at a time (so load from this test does not blur the number): each fresh
    # connection, wherever the kernel puts it, is answered without waiting for slot 1.
    latencies = []
    for _ in range(12):
        began = time.monotonic()
        assert server.get("/", timeout=5).status_code == 200
        latencies.append(time.monotonic() - began)
    worst = max(latencies)
    print(f"\n{mode}: during a 1.6 s backoff of slot 1, 12 fresh connections: worst {worst:.2f}s")
    assert worst < 1.0, latencies
    assert server.stop() == 0, server.output()


def test_workers_do_not_outlive_a_killed_master(serve: StartServer) -> None:
    server = start(serve, "reuseport")
    workers = list(server.started().values())
    began = time.monotonic()
    server.send_signal(signal.SIGKILL)
    server.wait(5)
    pids_gone(workers, timeout=5)
    print(f"\nworkers gone {time.monotonic() - began:.2f}s after the master's SIGKILL")


SLOW_HOOK_APP = (
    PID_APP
    + """
import time

def slow_hook(wid, signal_name):
    time.sleep(1)
"""
)


# Workers hold only their own slot's socket (the master lends a down slot's to its
# siblings), so a removed slot's last close is its own worker's accept-then-close.
@pytest.mark.parametrize("mode", ["reuseport", "shared"])
def test_sigttou_under_load_loses_no_request(serve: StartServer, mode: str) -> None:
    """Removing a slot must not reset the connections the kernel queued on its socket.

    The removed worker's shutdown hook takes 1 s (closing a pool, say): its exit
    comes 1 s after its drain stopped accepting.
    """
    server = start(serve, mode, workers=3, source=SLOW_HOOK_APP, hook="app:slow_hook")
    with Load(server.port, clients=8, fresh=True, max_seconds=40) as load:
        load.wait_ok(100)
        server.send_signal(signal.SIGTTOU)
        server.wait_for_log("one worker fewer, now 2")
        pids_gone([server.started()[3]])
        seen = load.result.ok
        load.wait_ok(seen + 100)
        result = load.stop()
    print(
        f"\n{mode}: SIGTTOU under load: sent={result.sent} ok={result.ok} lost={len(result.lost)}"
    )
    assert result.lost == [], result.lost[:10]
    assert server.stop() == 0, server.output()


BUSY_SIBLINGS_APP = (
    PID_APP
    + """
import time
from kamisama_server import worker_id

_pid_app = app

def app(environ, start_response):
    if environ["PATH_INFO"] == "/busy" and worker_id() != 3:
        open(f"busy-{worker_id()}", "w").close()
        time.sleep(2)  # one thread: this worker's event loop is blocked meanwhile
    return _pid_app(environ, start_response)
"""
)


def make_busy(server: Server, wids: set[int]) -> list[threading.Thread]:
    """Fresh ``/busy`` requests until each worker in ``wids`` is inside a 2 s blocking call."""
    busy = [server.directory / f"busy-{wid}" for wid in wids]
    threads: list[threading.Thread] = []
    for _ in range(60):
        if all(path.exists() for path in busy):
            return threads
        before = sum(path.exists() for path in busy)
        thread = threading.Thread(target=lambda: server.get("/busy", timeout=15), daemon=True)
        thread.start()
        threads.append(thread)
        with contextlib.suppress(AssertionError):  # answered by worker 3 at once: try again
            wait_until(_moved(busy, before, thread), 1, "a worker busy or the request answered")
    raise AssertionError(f"could not make workers {wids} busy: {server.output()}")


def _moved(busy: list[Path], before: int, thread: threading.Thread) -> Callable[[], bool]:
    return lambda: sum(p.exists() for p in busy) > before or not thread.is_alive()


@pytest.mark.parametrize("mode", ["reuseport", "shared"])
def test_sigttou_while_the_other_workers_are_busy_loses_no_request(
    serve: StartServer, mode: str
) -> None:
    """Connections made while slot 3 is being removed are all answered, once 1 and 2 are free."""
    server = start(serve, mode, workers=3, source=BUSY_SIBLINGS_APP)
    busy = make_busy(server, {1, 2})
    server.send_signal(signal.SIGTTOU)
    pids_gone([server.started()[3]])
    with Load(server.port, clients=0) as probes:
        probes.signal_server(lambda: None, queued=20)  # 20 fresh connections, one request each
        result = probes.stop()
    for thread in busy:
        thread.join(15)
    print(f"\n{mode}: SIGTTOU, siblings busy: sent={result.sent} lost={len(result.lost)}")
    assert result.lost == [], result.lost[:5]
    assert server.stop() == 0, server.output()
