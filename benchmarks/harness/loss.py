"""Requests lost when the master gets a signal under load.

32 keep-alive clients loop on GET /slow (50 ms; the body is the worker's pid). A request is
*sent* once written; it is *lost* when it gets no complete 200 (reset, closed before or in
the response, timeout). A refused connect is not a request; it is counted apart, because
during a rolling restart it is downtime, while after SIGTERM it is just "the server is gone".

- terminate: SIGTERM mid-load; each client stops at its first refused connect; the test
  ends when the whole process group has exited.
- restart: the rolling-restart signal mid-load; the load goes on until as many new worker
  pids as workers have answered and no old worker has answered for OLD_QUIET_S (or until a
  deadline: then "all workers replaced" is no; hypercorn's old workers, for instance, keep
  serving their keep-alive connections), plus a short tail.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import Counter
from dataclasses import dataclass, field

from .http1 import HEAD_LIMIT, NoResponse, Truncated, read_response, request_bytes
from .procs import Server

OLD_QUIET_S = 0.5  # a restart is done when all new workers answered and no old one for this long


@dataclass
class LossResult:
    scenario: str  # "terminate" | "restart"
    signal: str
    sent: int = 0
    ok: int = 0
    lost: int = 0
    refused: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    restart_done: bool | None = None  # restart: all workers replaced in time
    seconds: float = 0.0  # signal -> end of the scenario


@dataclass
class _Load:
    port: int
    stop: asyncio.Event
    result: LossResult
    pids_before: set[int] = field(default_factory=set)
    pids_after: set[int] = field(default_factory=set)
    last_old_answer: float = 0.0  # when a pre-signal worker last answered
    signalled: bool = False
    stop_on_refusal: bool = False
    in_flight: int = 0


async def _one_connection(load: _Load, timeout: float) -> bool:
    """Serve requests on one connection until it closes; False when the connect was refused."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", load.port, limit=HEAD_LIMIT), timeout
        )
    except (OSError, asyncio.TimeoutError):
        load.result.refused += 1
        return False
    request = request_bytes("/slow", load.port)
    try:
        while not load.stop.is_set():
            load.result.sent += 1
            load.in_flight += 1
            try:
                writer.write(request)
                await writer.drain()
                response = await asyncio.wait_for(read_response(reader), timeout)
            except (NoResponse, Truncated, OSError, asyncio.TimeoutError) as exc:
                load.result.lost += 1
                load.result.reasons[type(exc).__name__] += 1
                return True
            finally:
                load.in_flight -= 1
            if response.status != 200:
                load.result.lost += 1
                load.result.reasons[f"status {response.status}"] += 1
            else:
                load.result.ok += 1
                pid = int(response.body) if response.body.strip().isdigit() else 0
                if not load.signalled:
                    load.pids_before.add(pid)
                elif pid in load.pids_before:
                    load.last_old_answer = time.monotonic()
                else:
                    load.pids_after.add(pid)
            if response.close:
                return True
    finally:
        writer.close()
    return True


async def _client(load: _Load, timeout: float) -> None:
    for _ in range(1_000_000):
        if load.stop.is_set():
            return
        connected = await _one_connection(load, timeout)
        if not connected:
            if load.stop_on_refusal:
                return
            await asyncio.sleep(0.01)


async def _scenario(
    server: Server,
    scenario: str,
    sig: signal.Signals,
    clients: int,
    warm_s: float,
    workers: int,
    deadline_s: float,
) -> LossResult:
    result = LossResult(scenario, sig.name)
    load = _Load(server.port, asyncio.Event(), result)
    tasks = [asyncio.create_task(_client(load, timeout=10.0)) for _ in range(clients)]
    try:
        await asyncio.sleep(warm_s)
        load.signalled = True
        load.stop_on_refusal = scenario == "terminate"
        os.kill(server.pid, sig)
        signalled_at = time.monotonic()
        deadline = signalled_at + deadline_s
        while time.monotonic() < deadline:
            if scenario == "terminate":
                if server.gone():
                    break
            elif (
                len(load.pids_after) >= workers
                and time.monotonic() - load.last_old_answer > OLD_QUIET_S
            ):
                result.restart_done = True
                await asyncio.sleep(0.3)  # a tail: the last old workers are exiting now
                break
            await asyncio.sleep(0.02)
        else:
            if scenario == "restart":
                result.restart_done = False
        result.seconds = time.monotonic() - signalled_at
        load.stop.set()
        # In-flight requests finish (or fail) on their own; bounded.
        _, pending = await asyncio.wait(tasks, timeout=12.0)
    finally:
        load.stop.set()
        for task in tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*tasks, return_exceptions=True)
    if pending:
        result.lost += load.in_flight
        result.reasons["unfinished"] += load.in_flight
    return result


def run(
    server: Server,
    scenario: str,
    sig: signal.Signals,
    clients: int,
    warm_s: float,
    workers: int,
    deadline_s: float = 15.0,
) -> LossResult:
    """Run one scenario against a ready server (the caller stops it afterwards)."""
    return asyncio.run(_scenario(server, scenario, sig, clients, warm_s, workers, deadline_s))
