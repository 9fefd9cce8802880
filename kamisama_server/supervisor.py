"""The master: fork, watch, respawn with backoff, signals, shutdown, timeout.

Respawning: a worker that was healthy (ready for ``HEALTHY_AFTER`` seconds)
and then died is replaced at once, so a request that kills its worker costs
that worker only. A slot backs off (0.1 s doubling to 4 s) when its workers die
before they were healthy (a start-up crash loop), or when its healthy workers
die ``CRASH_LIMIT`` times within ``CRASH_WINDOW`` seconds; even then a healthy
worker is replaced at once if no other slot has a worker running, so a server
that served never sits with every slot backing off.

One thread, one loop. Signal handlers only record the signal; the loop wakes on
a self-pipe (``signal.set_wakeup_fd``) or on a worker's channel, then handles
signals before reaping, so a worker that exits because of a Ctrl+C sent to the
whole group is never mistaken for a crash.

Each worker has a socketpair to the master: the master writes ``stop NAME``,
the worker writes ``ready``; when the master dies, the worker reads end-of-file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from kamisama_server import worker as worker_side
from kamisama_server.logs import ensure_default_handler
from kamisama_server.options import KamisamaOptions, resolve_options
from kamisama_server.signals import (
    RESTART_SIGNAL,
    SCALE_DOWN_SIGNAL,
    SCALE_UP_SIGNAL,
    SHUTDOWN_SIGNALS,
    signal_name,
)
from kamisama_server.worker import log

EXIT_OK = 0
EXIT_WORKER_FAILED = 1
EXIT_NEVER_READY = 3

BACKOFF_FIRST = 0.1
BACKOFF_CAP = 4.0
HEALTHY_AFTER = 0.1
"""A worker ready this long is healthy: its death is no start-up crash."""
CRASH_WINDOW = 10.0
"""Seconds over which a slot's crashes after readiness are counted."""
CRASH_LIMIT = 3
"""The crash of healthy workers (within ``CRASH_WINDOW``) from which a slot backs off."""
_DUMP_TIME = 0.5
"""Seconds a worker whose loop is stuck gets to write its stack before it is killed."""
MAX_SLEEP = 1.0
"""The loop wakes at least this often, whatever happens (a missed wakeup costs 1 s)."""
_RESTART_NAME = RESTART_SIGNAL.name if RESTART_SIGNAL else "SIGUSR1"


def backoff_delay(consecutive_failures: int) -> float:
    """0.1, 0.2, 0.4 ... seconds, capped: a crash loop must not spin the CPU."""
    if consecutive_failures <= 0:
        return 0.0
    return min(BACKOFF_CAP, BACKOFF_FIRST * 2.0 ** (consecutive_failures - 1))


def describe_exit(status: int) -> str:
    """``"exited with code 1"`` or ``"was killed by SIGKILL"``, from a wait status."""
    if os.WIFSIGNALED(status):
        return f"was killed by {signal_name(os.WTERMSIG(status))}"
    return f"exited with code {os.waitstatus_to_exitcode(status)}"


def _failure(payload: bytes) -> tuple[str, str]:
    """A ``failed`` line's reason and detail (see ``worker.report_failure``)."""
    try:
        data = json.loads(payload)
        return str(data["reason"]), str(data.get("detail", ""))
    except (ValueError, KeyError, TypeError):
        return payload.decode("utf-8", "replace"), ""


@dataclass
class _Process:
    """One forked worker, as the master sees it."""

    wid: int
    pid: int
    channel: socket.socket
    started: float
    ready: bool = False
    ready_at: float = 0.0
    stopping: bool = False
    deadline: float | None = None
    killed: bool = False
    replacing: bool = False  # a rolling restart's new worker, not ready yet
    inbox: bytes = b""
    last_beat: float | None = None  # its event loop's last heartbeat (heartbeat_timeout)
    being_replaced: bool = False  # asked for, or given, a successor
    draining: bool = False  # said it takes no new work (announces_draining)
    loop_stuck: float | None = None  # when its heartbeat was found stopped (its stack dumped)
    failure: str | None = None  # why it cannot start, as the worker said (``failed ...``)
    failure_detail: str = ""  # and its traceback, if any


@dataclass
class _RollingRestart:
    """Replace each slot's worker in turn: start the new one, retire the old once ready."""

    queue: list[int]
    signal_name: str = _RESTART_NAME  # what the retired workers' hooks receive
    whole: bool = True  # every worker (told to on_rolling_restart), not one replacement
    current: _Process | None = None
    old_pid: int | None = None  # the worker ``current`` replaces
    retired: list[int] = field(default_factory=list)  # pids told to stop so far


class Supervisor:
    """Runs the master's loop for one ``kamisama()`` call."""

    def __init__(self, options: KamisamaOptions) -> None:
        self.options = options
        self.target = options.workers or 1
        self.processes: dict[int, _Process] = {}
        self.failures: dict[int, int] = {}  # per slot: start-up crashes in a row
        self.crashes: dict[int, list[float]] = {}  # per slot: when its healthy workers died
        self.respawn_at: dict[int, float] = {}
        self.stopping = False
        self.status = EXIT_OK
        self.announced_ready = False
        self.rolling: _RollingRestart | None = None
        self.down: set[int] = set()  # slots whose worker died and is not ready again
        self.pending_signals: list[int] = []
        self.pending_restarts: list[tuple[str, str]] = []  # from restart(), any thread
        self.restart_after: tuple[str, str] | None = None  # asked for during a restart
        self.lame_duck: tuple[str, float] | None = None  # (signal name, shutdown at)
        self.selector = selectors.DefaultSelector()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.previous_handlers: dict[int, Any] = {}
        self.previous_wakeup_fd = -1

    # ---- the loop -------------------------------------------------------------

    def run(self) -> int:
        ensure_default_handler()
        self._install_signal_handlers()
        self.selector.register(self.wake_r, selectors.EVENT_READ)
        try:
            for wid in range(1, self.target + 1):
                self._spawn(wid)
            while True:
                self._handle_signals()
                self._handle_restarts()
                self._end_lame_duck()
                self._reap()
                if self.stopping and not self.processes:
                    return self.status
                self._respawn_due()
                self._enforce_deadlines()
                self._check_heartbeats()
                self._advance_rolling_restart()
                self._wait(self._next_wakeup())
        finally:
            self._restore_signal_handlers()
            for process in self.processes.values():
                process.channel.close()
            self.selector.close()
            os.close(self.wake_r)
            os.close(self.wake_w)

    def _next_wakeup(self) -> float:
        now = time.monotonic()
        moments = list(self.respawn_at.values())
        if self.lame_duck is not None:
            moments.append(self.lame_duck[1])
        moments += [p.deadline for p in self.processes.values() if p.deadline and not p.killed]
        soonest = min(moments, default=now + MAX_SLEEP)
        return max(0.0, min(MAX_SLEEP, soonest - now))

    def _wait(self, timeout: float) -> None:
        for key, _ in self.selector.select(timeout):
            if key.fileobj == self.wake_r:
                with contextlib.suppress(BlockingIOError):
                    while os.read(self.wake_r, 512):
                        pass
            else:
                self._read_channel(key.data)

    def _read_channel(self, process: _Process, exited: bool = False) -> bool:
        """Handle what the worker wrote; False once nothing more is there to read.

        Of an ``exited`` worker's last lines only ``failed`` and ``ready`` still
        matter (how it ended, and whether it had been ready: see the backoff).
        """
        try:
            data = process.channel.recv(4096)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            data = b""
        if not data:  # the worker is exiting; the reaper takes it from here
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(process.channel)
            return False
        process.inbox += data
        while b"\n" in process.inbox:
            line, process.inbox = process.inbox.split(b"\n", 1)
            if exited:
                if line.startswith(b"failed "):
                    process.failure, process.failure_detail = _failure(line[7:])
                elif line == b"ready" and not process.ready:
                    process.ready = True
                    process.ready_at = time.monotonic()
                continue
            if line == b"beat":
                process.last_beat = time.monotonic()
            elif line == b"draining":
                process.draining = True
            elif line.startswith(b"replace "):
                self._replace(process, line[8:].decode("utf-8", "replace"))
            elif line.startswith(b"failed "):
                process.failure, process.failure_detail = _failure(line[7:])
            elif line == b"ready" and not process.ready:
                process.ready = True
                if process.last_beat is not None:  # heartbeats count from here on
                    process.last_beat = time.monotonic()
                process.ready_at = time.monotonic()
                if process.wid in self.down and not process.stopping:
                    self.down.discard(process.wid)
                    self._tell_siblings(process.wid, "up")
                self._check_all_ready()
        return True

    def _check_all_ready(self) -> None:
        if self.announced_ready or self.stopping:
            return
        serving = {p.wid for p in self.processes.values() if p.ready and not p.stopping}
        if serving.issuperset(range(1, self.target + 1)):
            self.announced_ready = True
            if self.options.on_ready is not None:
                self.options.on_ready()

    # ---- signals ----------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        wanted = [*SHUTDOWN_SIGNALS, signal.SIGCHLD]
        wanted += [s for s in (RESTART_SIGNAL, SCALE_UP_SIGNAL, SCALE_DOWN_SIGNAL) if s]
        for sig in wanted:
            self.previous_handlers[sig] = signal.signal(sig, self._record_signal)
        self.previous_wakeup_fd = signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)

    def _restore_signal_handlers(self) -> None:
        signal.set_wakeup_fd(self.previous_wakeup_fd)
        for sig, handler in self.previous_handlers.items():
            signal.signal(sig, handler)

    def _record_signal(self, signum: int, frame: object) -> None:
        self.pending_signals.append(signum)

    def _handle_signals(self) -> None:
        while self.pending_signals:
            signum = self.pending_signals.pop(0)
            if signum in SHUTDOWN_SIGNALS:
                self._shutdown_signal(signal_name(signum))
            elif self.stopping or signum == signal.SIGCHLD:
                continue
            elif signum == RESTART_SIGNAL:
                self._begin_rolling_restart()
            elif signum == SCALE_UP_SIGNAL:
                self.target += 1
                log(f"{signal_name(signum)}: one worker more, now {self.target}")
                self._spawn(self.target)
            elif signum == SCALE_DOWN_SIGNAL:
                self._scale_down(signal_name(signum))

    # ---- restarts requested from other threads ---------------------------------------

    def restart(self, reason: str, signal_name: str = _RESTART_NAME) -> None:
        """Ask for a rolling restart; safe from any thread (e.g. a file watcher).

        The loop does the work; the retired workers' hooks get ``signal_name``.
        Asked for while a restart runs, another starts once that one is done.
        """
        self.pending_restarts.append((reason, signal_name))
        with contextlib.suppress(OSError):
            os.write(self.wake_w, b"r")

    def _handle_restarts(self) -> None:
        while self.pending_restarts:
            reason, name = self.pending_restarts.pop(0)
            if self.stopping:
                continue
            if self.rolling is not None:
                self.restart_after = (reason, name)
                continue
            log(f"{reason}: rolling restart of {self.target} worker(s)")
            self._start_rolling(list(range(1, self.target + 1)), name)

    # ---- shutdown -----------------------------------------------------------------

    def _shutdown_signal(self, name: str) -> None:
        """A shutdown signal: shut down now, or after ``shutdown_delay`` (lame duck)."""
        delay = self.options.shutdown_delay
        if self.lame_duck is not None:
            log(f"{name} received during the shutdown delay; ignored")
            return
        if self.stopping or not delay:
            self._begin_shutdown(name)
            return
        self.lame_duck = (name, time.monotonic() + delay)
        log(f"{name} received: still serving for {delay}s (shutdown delay), then shutting down")

    def _end_lame_duck(self) -> None:
        if self.lame_duck is not None and time.monotonic() >= self.lame_duck[1]:
            name, _ = self.lame_duck
            self.lame_duck = None
            self._begin_shutdown(name)

    def _begin_shutdown(self, name: str, why: str | None = None) -> None:
        """Tell every worker to stop; ``why`` replaces "NAME received" in the log."""
        if self.stopping:
            log(f"{name} received while already shutting down; ignored")
            return
        self.lame_duck = None
        self.stopping = True
        self.rolling = None
        self.respawn_at.clear()
        deadline = time.monotonic() + self.options.timeout
        count = len(self.processes)
        cause = why or f"{name} received"
        log(f"{cause}: shutting down {count} worker(s), timeout {self.options.timeout}s")
        if self.options.on_shutdown is not None:
            try:
                self.options.on_shutdown(name)
            except Exception as error:
                log(f"on_shutdown failed: {error!r}", logging.ERROR)
        for process in self.processes.values():
            self._stop_process(process, name, deadline)

    def _stop_process(self, process: _Process, name: str, deadline: float) -> None:
        process.deadline = min(deadline, process.deadline or deadline)
        if process.stopping:
            return
        process.stopping = True
        self._send(process, f"stop {name}")

    def _enforce_deadlines(self) -> None:
        now = time.monotonic()
        for process in self.processes.values():
            if process.deadline is None or process.killed or now < process.deadline:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            process.killed = True
            who = f"worker {process.wid} (pid {process.pid})"
            log(f"{who} killed after timeout {self.options.timeout}s", logging.WARNING)
            if self.stopping:
                self.status = max(self.status, EXIT_WORKER_FAILED)

    # ---- processes --------------------------------------------------------------------

    def _spawn(self, wid: int) -> _Process | None:
        self.respawn_at.pop(wid, None)
        if self.options.before_fork is not None:
            try:
                self.options.before_fork(wid)
            except Exception as error:
                self.failures[wid] = self.failures.get(wid, 0) + 1
                delay = backoff_delay(self.failures[wid])
                log(
                    f"worker {wid} could not be prepared ({error}); retrying in {delay:.1f}s",
                    logging.ERROR,
                )
                self.respawn_at[wid] = time.monotonic() + delay
                return None
        master_end, worker_end = socket.socketpair()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()  # else the child would print the master's buffer again
        pid = os.fork()
        if pid == 0:
            master_end.close()
            self._become_worker(wid, worker_end)
        worker_end.close()
        master_end.setblocking(False)
        process = _Process(wid=wid, pid=pid, channel=master_end, started=time.monotonic())
        self.processes[pid] = process
        self.selector.register(master_end, selectors.EVENT_READ, process)
        log(f"worker {wid} (pid {pid}) started")
        if self.options.on_sibling is not None:
            for other in sorted(self.down - {wid}):
                self._tell_sibling(process, other, "down")
        return process

    def _send(self, process: _Process, line: str, fds: Sequence[int] = ()) -> None:
        with contextlib.suppress(OSError):
            data = line.encode("ascii") + b"\n"
            if fds:
                socket.send_fds(process.channel, [data], list(fds))
            else:
                process.channel.sendall(data)

    def _tell_siblings(self, wid: int, change: str) -> None:
        """Broadcast a slot's change to the other workers (``on_sibling``)."""
        if self.options.on_sibling is None or self.stopping:
            return
        for process in self.processes.values():
            if process.wid != wid and not process.stopping:
                self._tell_sibling(process, wid, change)

    def _tell_sibling(self, process: _Process, wid: int, change: str) -> None:
        """``sibling ID CHANGE N``: N descriptors ride along (lent with a "down")."""
        lend = self.options.lend_fds
        fds = list(lend(wid)) if lend is not None and change == "down" else []
        self._send(process, f"sibling {wid} {change} {len(fds)}", fds)

    def _become_worker(self, wid: int, channel: socket.socket) -> NoReturn:
        """In the child: drop everything that is the master's, then run the worker."""
        code = EXIT_WORKER_FAILED
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            for process in self.processes.values():
                process.channel.close()  # a sibling's channel must see EOF only from us
            self.selector.close()
            os.close(self.wake_r)
            os.close(self.wake_w)
            code = worker_side.worker_main(wid, channel, self.options)
        except SystemExit as exit_request:
            code = exit_request.code if isinstance(exit_request.code, int) else 1
        except BaseException:
            log(f"worker {wid} (pid {os.getpid()}) crashed", logging.ERROR, exc_info=True)
        worker_side.exit_now(code)

    def _reap(self) -> None:
        if os.getpid() == 1:
            self._reap_orphans()
        for pid, process in list(self.processes.items()):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done:
                del self.processes[pid]
                self._drain_channel(process)
                self._forget(process)
                self._on_exit(process, status)

    def _reap_orphans(self) -> None:
        """As PID 1 (a container's init) orphans are re-parented to us: reap them too."""
        for _ in range(1024):
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            process = self.processes.pop(pid, None)
            if process is not None:
                self._drain_channel(process)
                self._forget(process)
                self._on_exit(process, status)

    def _drain_channel(self, process: _Process) -> None:
        """Read what an exited worker left unread: its ``failed ...`` line, or a
        ``ready`` it sent just before dying (which still counts)."""
        for _ in range(64):  # bounded: report_failure writes at most ~100 kB
            if not self._read_channel(process, exited=True):
                return

    def _forget(self, process: _Process) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(process.channel)
        process.channel.close()

    def _on_exit(self, process: _Process, status: int) -> None:
        who = f"worker {process.wid} (pid {process.pid})"
        reason = describe_exit(status)
        clean = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        if process.stopping or self.stopping:
            if process.killed:
                return
            if clean:
                log(f"{who} shut down")
            else:
                # A sibling that failed to start too was already told about: no repeat.
                level = logging.DEBUG if process.failure else logging.WARNING
                log(f"{who} {reason} during shutdown; not respawned", level)
                if self.stopping:
                    self.status = max(self.status, EXIT_WORKER_FAILED)
            return
        if process.replacing:
            why = process.failure and f"cannot start: {process.failure}"
            log(
                f"{who} {why or reason + ' before it became ready'}; rolling restart abandoned",
                logging.ERROR,
            )
            self._tell_rolling("done")
            self.rolling = None
            return
        if self.options.fail_fast and not process.ready:
            why = process.failure and f"cannot start: {process.failure}"
            log(f"{who} {why or reason + ' before it became ready'}; stopping", logging.ERROR)
            if process.failure_detail:
                log(process.failure_detail, logging.DEBUG)
            self.status = EXIT_NEVER_READY
            self._begin_shutdown("SIGTERM", why="a worker could not start")
            return
        delay = self._respawn_delay(process)
        log(f"{who} {reason}; respawning in {delay:.1f}s", logging.WARNING)
        self.respawn_at[process.wid] = time.monotonic() + delay
        if process.wid not in self.down and self._serving(process.wid) is None:
            self.down.add(process.wid)
            self._tell_siblings(process.wid, "down")

    def _respawn_delay(self, process: _Process) -> float:
        """How long the slot of ``process`` (which died unasked) waits for its successor.

        Every unasked death counts in the slot's ``CRASH_WINDOW``, a start-up one
        too: workers killed now just before, now just after ``HEALTHY_AFTER`` (a
        query of death that meets each new worker at a different age) must still
        back off more and more, not restart the count at each change of kind.
        """
        wid = process.wid
        now = time.monotonic()
        recent = [t for t in self.crashes.get(wid, []) if now - t < CRASH_WINDOW]
        recent.append(now)
        self.crashes[wid] = recent
        repeated = backoff_delay(len(recent) - CRASH_LIMIT + 1)
        if not process.ready or now - process.ready_at < HEALTHY_AFTER:
            self.failures[wid] = self.failures.get(wid, 0) + 1
            return max(backoff_delay(self.failures[wid]), repeated)
        self.failures.pop(wid, None)
        if repeated and not self._any_running(besides=wid):
            return 0.0  # it was healthy: never leave every slot backing off
        return repeated

    def _any_running(self, besides: int) -> bool:
        """True if a slot other than ``besides`` has a worker that is not stopping."""
        return any(p.wid != besides and not p.stopping for p in self.processes.values())

    def _respawn_due(self) -> None:
        now = time.monotonic()
        for wid, when in list(self.respawn_at.items()):
            if wid > self.target:
                del self.respawn_at[wid]
            elif when <= now and not self._serving(wid):
                self._spawn(wid)

    def _serving(self, wid: int) -> _Process | None:
        """The worker currently serving slot ``wid`` (not one on its way out)."""
        for process in self.processes.values():
            if process.wid == wid and not process.stopping and not process.replacing:
                return process
        return None

    # ---- stuck workers --------------------------------------------------------------

    def _check_heartbeats(self) -> None:
        """A ready worker whose event loop stopped beating: dump its stack, replace it."""
        limit = self.options.heartbeat_timeout
        if not limit or self.stopping:
            return
        now = time.monotonic()
        for process in list(self.processes.values()):
            beat = process.last_beat
            if beat is None or not process.ready or process.stopping or process.being_replaced:
                continue  # a slow start (ASGI lifespan, say) is not a stuck loop
            if now - beat > limit:
                who = f"worker {process.wid} (pid {process.pid})"
                log(
                    f"{who}: no heartbeat for {now - beat:.1f}s (its event loop is stuck); "
                    "its threads' stacks follow",
                    logging.WARNING,
                )
                if worker_side.STACK_SIGNAL is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(process.pid, worker_side.STACK_SIGNAL)
                process.loop_stuck = now
                self._replace(process, "its event loop is stuck")

    def _replace(self, process: _Process, reason: str) -> None:
        """Give ``process`` a successor (started first), then drain it: a one-slot restart."""
        if process.being_replaced or process.stopping or self.stopping:
            return
        process.being_replaced = True
        log(f"worker {process.wid} (pid {process.pid}) is replaced: {reason}", logging.WARNING)
        if self.rolling is None:
            self._start_rolling([process.wid], _RESTART_NAME, whole=False)
        elif process.wid not in self.rolling.queue:
            self.rolling.queue.append(process.wid)

    # ---- scaling and rolling restart -------------------------------------------

    def _scale_down(self, name: str) -> None:
        if self.target <= 1:
            log(f"{name}: already at one worker; ignored")
            return
        wid = self.target
        self.target -= 1
        self.respawn_at.pop(wid, None)
        log(f"{name}: one worker fewer, now {self.target}")
        # The slot stays, served by its siblings from now on, as a down slot is:
        # closing a SO_REUSEPORT socket would reset what the kernel queued on it.
        # They start covering it before its worker even begins to drain.
        if wid not in self.down:
            self.down.add(wid)
            self._tell_siblings(wid, "down")
        deadline = time.monotonic() + self.options.timeout
        for process in list(self.processes.values()):
            if process.wid == wid:
                self._stop_process(process, name, deadline)

    def _begin_rolling_restart(self) -> None:
        if self.rolling is not None:
            log("rolling restart already under way; ignored")
            return
        log(f"rolling restart of {self.target} worker(s)")
        self._start_rolling(list(range(1, self.target + 1)), _RESTART_NAME)

    def _start_rolling(self, queue: list[int], name: str, whole: bool = True) -> None:
        self.rolling = _RollingRestart(queue=queue, signal_name=name, whole=whole)
        self._tell_rolling("begin")

    def _tell_rolling(self, phase: str) -> None:
        if self.rolling is not None and not self.rolling.whole:
            return
        if self.options.on_rolling_restart is not None:
            try:
                self.options.on_rolling_restart(phase)
            except Exception as error:
                log(f"on_rolling_restart failed: {error!r}")

    def _advance_rolling_restart(self) -> None:
        rolling = self.rolling
        if rolling is None or self.stopping:
            return
        current = rolling.current
        if current is not None:
            if current.pid not in self.processes:  # died before ready: handled in _on_exit
                return
            if not current.ready:
                return
            old = self.processes.get(rolling.old_pid or 0)
            now = time.monotonic()
            if old is not None and old.loop_stuck and now - old.loop_stuck < _DUMP_TIME:
                return  # let it write its stack first (the loop looks again within 1 s)
            current.replacing = False
            deadline = now + self.options.timeout
            if old is not None and old.loop_stuck:
                # Its loop cannot drain anything: once the successor serves, it goes.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(old.pid, signal.SIGKILL)
                old.stopping = old.killed = True
                log(
                    f"worker {old.wid} (pid {old.pid}) killed: its event loop is stuck",
                    logging.WARNING,
                )
            elif old is not None:
                self._stop_process(old, rolling.signal_name, deadline)
            if old is not None:
                rolling.retired.append(old.pid)
            rolling.current = None
        while rolling.queue:
            wid = rolling.queue.pop(0)
            if wid > self.target:
                continue
            old = self._serving(wid)
            fresh = self._spawn(wid)
            if fresh is None:
                continue
            if old is None:  # nothing to replace: the slot was down
                continue
            fresh.replacing = True
            rolling.current = fresh
            rolling.old_pid = old.pid
            return
        if any(self._takes_work(pid) for pid in rolling.retired):
            return  # the loop looks again when its "draining" line comes, or it exits
        log("rolling restart done")
        self._tell_rolling("done")
        self.rolling = None
        if self.restart_after is not None:
            reason, name = self.restart_after
            self.restart_after = None
            self.restart(reason, name)

    def _takes_work(self, pid: int) -> bool:
        """Whether a retired worker may still take new work: only one announcing its
        drain says so (``announces_draining``); killed, it is as good as gone."""
        process = self.processes.get(pid)
        if process is None or process.killed or not self.options.announces_draining:
            return False
        return not process.draining


def kamisama(*args: Any, **kwargs: Any) -> int:
    """Fork the workers, supervise them, and return the exit status after shutdown.

    ``kamisama(run)``, ``kamisama(workers=3, run=..., shutdown=..., timeout=5.0)``,
    ``kamisama({"run": run})`` or ``kamisama(KamisamaOptions(...))``. Blocks in
    the master until every worker has exited after a shutdown signal; returns 0
    when all shut down cleanly, 1 when one had to be killed or its hook failed,
    3 when ``fail_fast`` stopped a worker that never became ready.
    """
    options = resolve_options(args, kwargs)
    check_platform()
    return Supervisor(options).run()


def check_platform() -> None:
    """Fail clearly where forking supervision cannot work."""
    if not hasattr(os, "fork"):
        raise RuntimeError(
            "kamisama needs os.fork(), which this platform lacks (Windows); "
            "run it on Linux or macOS"
        )
    if worker_side.worker_id() is not None:
        raise RuntimeError("kamisama() was called inside a worker; call it once, in the master")
