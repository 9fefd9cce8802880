"""The worker's side: run(id), the control channel, and shutdown exactly once.

A worker learns that it must stop from three places: a signal sent to it (a
terminal's Ctrl+C reaches the whole process group), a ``stop NAME`` line from
the master on its channel, or the channel's end-of-file (the master died).
All three funnel into one control thread, which decides once. That thread
exists because ``run`` may block the main thread in sync code forever, and the
hook must run whatever ``run`` is doing.

Where the hook runs:
- sync ``run`` (blocking or returned): in the control thread, which then ends
  the process. A hook like ``httpd.shutdown()`` works because it is called from
  a thread other than the one blocked in ``serve_forever()``.
- async ``run``: on the worker's event loop, so the hook may touch loop objects;
  ``run``'s task is cancelled after the hook returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import inspect
import json
import logging
import os
import selectors
import signal
import socket
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, NoReturn

from kamisama_server.options import KamisamaOptions
from kamisama_server.signals import (
    PARENT_GONE,
    RESTART_SIGNAL,
    SCALE_DOWN_SIGNAL,
    SCALE_UP_SIGNAL,
    SHUTDOWN_SIGNALS,
    signal_name,
)

_current_id: int | None = None
_channel: socket.socket | None = None
_once_lock = threading.Lock()
_sent_once: set[bytes] = set()  # the lines a worker sends at most once ("ready", "draining")

_MASTER_ONLY_SIGNALS = tuple(
    sig for sig in (RESTART_SIGNAL, SCALE_UP_SIGNAL, SCALE_DOWN_SIGNAL) if sig is not None
)
_GRACE_AFTER_MASTER_DEADLINE = 1.0
"""The master kills (and names) a worker at ``timeout``; the worker's own watchdog
fires this much later, as a backstop should the master be gone."""


def worker_id() -> int | None:
    """The current worker's id (1..N), or ``None`` outside a worker (in the master)."""
    return _current_id


def ready() -> None:
    """Tell the master this worker is ready to work.

    Needed only with ``manual_ready=True`` (the server calls it once it accepts);
    otherwise it is sent for you just before ``run`` is called. Idempotent.
    """
    _send_once(b"ready")


def draining() -> None:
    """Tell the master this worker takes no new work any more (e.g. its listeners
    are closed), though it may still finish what it has.

    Needed only with ``announces_draining=True``: a rolling restart then says
    "done" only once every predecessor has sent it (or exited). Idempotent.
    """
    _send_once(b"draining")


def _send_once(line: bytes) -> None:
    with _once_lock:
        if _channel is None or line in _sent_once:
            return
        _sent_once.add(line)
        with contextlib.suppress(OSError):
            _channel.sendall(line + b"\n")


def request_replacement(reason: str) -> None:
    """Ask the master to replace this worker: a successor starts, then this one drains.

    For a worker that can no longer serve well (a thread stuck in app code);
    the master logs ``reason``. Idempotent per worker from the master's side.
    """
    if _channel is None:
        return
    line = "replace " + reason.replace("\n", " ")[:200]
    with contextlib.suppress(OSError):
        _channel.sendall(line.encode("utf-8", "replace") + b"\n")


def report_failure(reason: str, detail: str = "") -> None:
    """Tell the master why this worker cannot start, before exiting non-zero.

    The master names ``reason`` once in its fail-fast line (``detail``, e.g. a
    traceback, goes below it at debug level), so N workers failing alike give
    one line, not N.
    """
    if _channel is None:
        return
    payload = json.dumps({"reason": reason[:1000], "detail": detail[:50_000]})
    with contextlib.suppress(OSError):
        _channel.sendall(b"failed " + payload.encode("ascii") + b"\n")


STACK_SIGNAL = getattr(signal, "SIGURG", None)
"""The master sends it to a worker whose loop stopped beating: ``faulthandler``
then writes every thread's stack to stderr, even while Python code is stuck.
(SIGURG: ignored by default, and nobody sends it to a process group.)"""


_master_log = logging.getLogger("kamisama.master")
_worker_log = logging.getLogger("kamisama.worker")


def log(message: str, level: int = logging.INFO, exc_info: bool = False) -> None:
    """One grep-able line per event, under ``kamisama.master`` or ``kamisama.worker``.

    ``kamisama_server.logs`` says where those loggers write (stderr by default).
    """
    logger = _master_log if _current_id is None else _worker_log
    logger.log(level, message, exc_info=exc_info)


def exit_now(code: int) -> NoReturn:
    """Flush what the user printed, then leave without running the master's atexit."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def is_async_callable(fn: object) -> bool:
    """``async def`` functions, and objects whose ``__call__`` is one."""
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - we need the bound method itself
    return call is not None and inspect.iscoroutinefunction(call)


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _report_task_failure(task: asyncio.Future[Any]) -> None:
    error = None if task.cancelled() else task.exception()
    if error is not None:
        _worker_log.error("on_sibling task failed", exc_info=error)


class Worker:
    """One worker process's life: run, then shut down exactly once."""

    def __init__(self, wid: int, channel: socket.socket, options: KamisamaOptions) -> None:
        self.wid = wid
        self.channel = channel
        self.options = options
        self.lock = threading.Lock()
        self.stopping = False
        self.async_mode = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop_future: asyncio.Future[str] | None = None
        self.pending_stop: str | None = None
        self.pending_siblings: list[tuple[int, str, list[int]]] = []
        self.lent_fds: list[int] = []  # received with "sibling" lines, in order
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)

    # ---- life ---------------------------------------------------------------

    def main(self) -> int:
        """Run the user's ``run``; return the exit code (sync paths never return)."""
        self._install_signal_handlers()
        run = self.options.run
        # Decided before the control thread starts: a "sibling" or "stop" line read
        # before the loop exists must wait for it, not run a sync callback (whose
        # asyncio.run would wait on the loop-to-be's events forever).
        self.async_mode = is_async_callable(run)
        threading.Thread(target=self._control, name="kamisama-control", daemon=True).start()
        if self.options.setup is not None:
            self.options.setup(self.wid)
        if not self.options.manual_ready:
            ready()
        if is_async_callable(run):
            return self._run_async(lambda: run(self.wid))
        try:
            result = run(self.wid)
        except Exception:
            if not self._is_stopping():
                raise
            # run failed because the hook tore its work down: the hook decides the exit.
            self._idle_forever()
        if inspect.isawaitable(result):
            awaitable = result
            return self._run_async(lambda: _await(awaitable))
        self._idle_forever()

    def _idle_forever(self) -> NoReturn:
        """``run`` returned: stay alive until the control thread ends the process."""
        while True:
            threading.Event().wait(3600)

    def _is_stopping(self) -> bool:
        with self.lock:
            return self.stopping

    # ---- async run ----------------------------------------------------------

    def _run_async(self, make_coro: Callable[[], Coroutine[Any, Any, Any]]) -> int:
        with self.lock:
            if self.stopping and not self.async_mode:  # a sync-style stop owns the process
                self._idle_forever()
            self.async_mode = True
        factory = self.options.loop_factory or asyncio.new_event_loop
        loop = factory()
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(self._async_main(make_coro))

    async def _async_main(self, make_coro: Callable[[], Coroutine[Any, Any, Any]]) -> int:
        loop = asyncio.get_running_loop()
        stop_future: asyncio.Future[str] = loop.create_future()
        with self.lock:
            self.loop = loop
            self.stop_future = stop_future
            if self.pending_stop is not None:
                stop_future.set_result(self.pending_stop)
            for wid, state, fds in self.pending_siblings:
                loop.call_soon(self._start_sibling_task, wid, state, fds)
            self.pending_siblings.clear()
        run_task: asyncio.Future[Any] = asyncio.ensure_future(make_coro())
        if self.options.heartbeat_timeout:
            self._beat(loop, min(1.0, self.options.heartbeat_timeout / 4))
        await asyncio.wait({run_task, stop_future}, return_when=asyncio.FIRST_COMPLETED)
        if run_task.done() and not stop_future.done():
            run_task.result()  # a crash in run: re-raise it, the worker exits 1
            await stop_future  # run finished: idle until told to stop
        code = await self._call_hook_async(stop_future.result())
        if not run_task.done():
            run_task.cancel()
        with contextlib.suppress(BaseException):
            await run_task
        return code

    def _beat(self, loop: asyncio.AbstractEventLoop, every: float) -> None:
        """Tell the master this loop still turns; a stuck loop stops beating."""
        if STACK_SIGNAL is not None:
            faulthandler.register(STACK_SIGNAL, all_threads=True, chain=False)
        channel = self.channel

        def beat() -> None:
            with contextlib.suppress(OSError):
                channel.sendall(b"beat\n")
            loop.call_later(every, beat)

        beat()

    async def _call_hook_async(self, name: str) -> int:
        hook = self.options.shutdown
        if hook is None:
            return 0
        try:
            result = hook(self.wid, name)
            if inspect.isawaitable(result):
                await result
        except Exception:
            self._report_hook_failure()
            return 1
        return 0

    # ---- sync run -----------------------------------------------------------

    def _call_hook_sync(self, name: str) -> int:
        hook = self.options.shutdown
        if hook is None:
            return 0
        try:
            result = hook(self.wid, name)
            if inspect.isawaitable(result):
                asyncio.run(_await(result))
        except Exception:
            self._report_hook_failure()
            return 1
        return 0

    def _report_hook_failure(self) -> None:
        log(f"worker {self.wid} (pid {os.getpid()}) shutdown hook raised", logging.ERROR, True)

    # ---- stop requests --------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        for sig in _MASTER_ONLY_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        for sig in SHUTDOWN_SIGNALS:
            signal.signal(sig, self._on_signal)
        # The wakeup fd reaches the control thread even while the main thread is
        # stuck in C code and cannot run Python handlers.
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)

    def _on_signal(self, signum: int, frame: object) -> None:
        # Also written by hand: an event loop (uvloop) may replace the wakeup fd.
        with contextlib.suppress(OSError):
            os.write(self.wake_w, bytes([signum]))

    def _control(self) -> None:
        """The one place that decides to stop; reads signals and the master."""
        selector = selectors.DefaultSelector()
        selector.register(self.channel, selectors.EVENT_READ)
        selector.register(self.wake_r, selectors.EVENT_READ)
        pending = b""
        while True:
            for key, _ in selector.select():
                if key.fileobj is self.channel:
                    try:
                        data, fds, _flags, _addr = socket.recv_fds(self.channel, 4096, 64)
                    except OSError:
                        data, fds = b"", []
                    self.lent_fds.extend(fds)
                    if not data:
                        selector.unregister(self.channel)
                        self._stop(PARENT_GONE, parent_gone=True)
                        continue
                    pending += data
                    while b"\n" in pending:
                        line, pending = pending.split(b"\n", 1)
                        verb, _, arg = line.decode("ascii", "replace").partition(" ")
                        if verb == "stop":
                            self._stop(arg)
                        elif verb == "sibling":
                            wid, state, count = arg.split(" ")
                            lent = self.lent_fds[: int(count)]
                            del self.lent_fds[: int(count)]
                            self._sibling(int(wid), state, lent)
                else:
                    for signum in os.read(self.wake_r, 64):
                        if any(signum == sig for sig in SHUTDOWN_SIGNALS):
                            self._stop(signal_name(signum))

    def _stop(self, name: str, parent_gone: bool = False) -> None:
        with self.lock:
            if self.stopping:
                return
            self.stopping = True
            self._arm_watchdog(parent_gone)
            if self.options.on_stop_requested is not None:
                try:
                    self.options.on_stop_requested(name)
                except Exception:
                    log("on_stop_requested raised", logging.ERROR, exc_info=True)
            if self.async_mode:
                if self.loop is None:
                    self.pending_stop = name
                else:
                    self.loop.call_soon_threadsafe(self._resolve_stop, name)
                return
        exit_now(self._call_hook_sync(name))

    def _sibling(self, wid: int, state: str, fds: list[int]) -> None:
        """Hand a sibling's change to ``on_sibling``, in the order they came."""
        callback = self.options.on_sibling
        with self.lock:
            if callback is None or self.stopping:
                for fd in fds:
                    os.close(fd)
                return
            if self.async_mode:
                if self.loop is None:
                    self.pending_siblings.append((wid, state, fds))
                else:
                    self.loop.call_soon_threadsafe(self._start_sibling_task, wid, state, fds)
                return
        try:
            result = callback(wid, state, fds)
            if inspect.isawaitable(result):
                asyncio.run(_await(result))
        except Exception:
            log("on_sibling raised", logging.ERROR, exc_info=True)

    def _start_sibling_task(self, wid: int, state: str, fds: list[int]) -> None:
        callback = self.options.on_sibling
        if callback is None:
            return
        try:
            result = callback(wid, state, fds)
        except Exception:
            log("on_sibling raised", logging.ERROR, exc_info=True)
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            task.add_done_callback(_report_task_failure)

    def _resolve_stop(self, name: str) -> None:
        if self.stop_future is not None and not self.stop_future.done():
            self.stop_future.set_result(name)

    def _arm_watchdog(self, parent_gone: bool) -> None:
        """Enforce ``timeout`` on ourselves: the master does it too, unless it died."""
        timeout = self.options.timeout
        delay = timeout if parent_gone else timeout + _GRACE_AFTER_MASTER_DEADLINE

        def expire() -> None:
            who = f"worker {self.wid} (pid {os.getpid()})"
            log(f"{who} still running after timeout {timeout}s; exiting", logging.WARNING)
            exit_now(1)

        timer = threading.Timer(delay, expire)
        timer.daemon = True
        timer.start()


def worker_main(wid: int, channel: socket.socket, options: KamisamaOptions) -> int:
    """Entry point in a freshly forked worker; returns its exit code."""
    global _current_id, _channel
    _current_id = wid
    _channel = channel
    _sent_once.clear()
    return Worker(wid, channel, options).main()
