"""The WSGI adapter (PEP 3333): serves one ``Exchange`` by calling a WSGI app.

How a request flows, and why:

- The loop builds the environ. Every app call runs on a pool thread
  (``--threads`` of them), never on the loop's thread: the call, the iteration
  of its result and ``close()`` happen on that one thread (see ``wsgi_call``),
  so the loop stays free to enforce timeouts, answer 503s and drain.
- A request whose body is already complete (most requests: no body, or a
  small one that came with the head) is handed to a thread straight from the
  parser's callback, with no task or coroutine (``serve_now`` returns
  ``DEFERRED``). Finished calls come back through one outbox: a thread that
  finishes a call appends it, and the loop, woken once for the whole batch,
  sends each complete response in one ``send``. Only a call that streams, or
  whose client reads slowly, gets a coroutine of its own.
- A body still arriving is pulled from the engine chunk by chunk as the app
  reads it; a small one with ``Content-Length`` (and no ``Expect:
  100-continue``) is read on the loop first, so its reads never leave the
  app's thread.
- ``wsgi.file_wrapper`` over a regular file is sent with ``Exchange.sendfile``.

Errors: an app that raises gets a logged traceback and a 500, or the
connection is aborted once the head went out. A body that turned out invalid
or too large (``RequestBodyError`` from ``wsgi.input.read``) answers 400/413
in place of whatever the app answered, if no head was sent yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any, Final

from kamisama_server.http.errors import ClientDisconnected
from kamisama_server.http.exchange import DEFERRED, Exchange, Threaded
from kamisama_server.http.wsgi_call import (
    ExcInfo,
    StartResponse,
    WriteCallable,
    WSGIApp,
    WsgiCall,
)
from kamisama_server.http.wsgi_environ import Environ, EnvironBuilder
from kamisama_server.http.wsgi_file import FileWrapper
from kamisama_server.http.wsgi_input import InputStream
from kamisama_server.http.wsgi_pool import ThreadPool

__all__ = ["ExcInfo", "StartResponse", "WSGIAdapter", "WSGIApp", "WriteCallable"]

log = logging.getLogger("kamisama.wsgi")

# Seconds the loop's thread waits for a batch of calls before it goes on without it.
_LEND: Final = 0.005
# A body up to this size (with Content-Length) is read on the loop before the app starts.
_PRE_READ_MAX: Final = 64 * 1024

StuckReport = Callable[[str], None]
"""Called on the loop with a description once the watchdog gave up on a call."""


class WSGIAdapter(Threaded):
    """An ``AppHandler`` serving a WSGI app; one per worker process.

    ``threads`` app calls run at once (a pool of that many threads, started on
    first use): ``capacity`` is what the engine may have in flight before it
    stops taking new connections. Call ``close()`` once the engine has
    drained, to stop the threads.
    """

    def __init__(self, app: WSGIApp, *, threads: int = 1) -> None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.app = app
        self.threads = threads
        self._pool = ThreadPool(threads)
        self._environ = EnvironBuilder(multithread=threads > 1, file_wrapper=FileWrapper)
        self._loop: asyncio.AbstractEventLoop | None = None
        # Calls handed to a thread and not finished yet, as the loop sees them.
        self.running: set[WsgiCall] = set()
        # Threads held by calls the watchdog gave up on (they may never come back).
        self.stuck = 0
        # Finished (or newly streaming) calls from the threads, for the loop.
        self._outbox: list[WsgiCall] = []
        self._outbox_lock = threading.Lock()
        # Guards each call's hand-over fields (WsgiCall.lock): one for all calls, not
        # one made per request, since every section under it is a few field updates.
        self.call_lock = threading.Lock()
        self._outbox_wake = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._batch: list[WsgiCall] = []  # calls of this loop iteration (one thread)

    @property
    def capacity(self) -> int:
        """App calls that can run now: the threads not held by a stuck call."""
        return self.threads - self.stuck

    # -- the engine's entry points -----------------------------------------------

    async def __call__(self, exchange: Exchange) -> None:
        await self._serve(exchange, self._environ.build(exchange.head, None))

    def serve_now(self, exchange: Exchange) -> Any:
        """The engine's task-free entry (``exchange.ServeNow``), for complete bodies.

        A body-less request goes to a thread at once (``DEFERRED``: the adapter
        finishes the exchange); one with a body returns the coroutine that
        reads it first.
        """
        environ = self._environ.build(exchange.head, None)
        if "CONTENT_LENGTH" in environ or "HTTP_TRANSFER_ENCODING" in environ:
            return self._serve(exchange, environ)
        environ["wsgi.input"] = InputStream(None)
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        call = WsgiCall(self, environ, environ["wsgi.input"], exchange, loop, deferred=True)
        self._submit(call)
        return DEFERRED

    async def _serve(self, exchange: Exchange, environ: Environ) -> None:
        loop = asyncio.get_running_loop()
        if "CONTENT_LENGTH" in environ or "HTTP_TRANSFER_ENCODING" in environ:
            stream = await _make_input(environ, exchange, loop)
        else:
            stream = InputStream(None)
        environ["wsgi.input"] = stream
        call = WsgiCall(self, environ, stream, exchange, loop, deferred=False)
        self._submit(call)
        try:
            await call.pump()
        finally:
            self.running.discard(call)
            call.release()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the app threads (after the engine drained in-flight requests)."""
        self._pool.shutdown(timeout)

    # -- threads -> loop ------------------------------------------------------------

    def _submit(self, call: WsgiCall) -> None:
        self.running.add(call)
        if self.threads > 1:
            self._pool.submit(call.run)
            return
        # One app thread: hand the calls of one loop iteration over together, so
        # the thread and the loop trade the GIL once per batch, not per request.
        batch = self._batch
        batch.append(call)
        if len(batch) == 1:
            call.loop.call_soon(self._hand_over)

    def _hand_over(self) -> None:
        """Hand this loop turn's calls to the app thread, and lend it the GIL a while.

        The loop's thread waits (GIL released) up to ``_LEND`` seconds for the
        batch: meanwhile it does not compete for the GIL, so every time the app
        releases it (a database call, a file read) the app gets it straight back
        instead of waiting for the loop's turn. A longer batch (a slow or
        blocking app) goes on alone: the loop is never held longer than that.
        The finished responses still come back through the outbox's wake-up
        (written from this callback, uvloop would queue them until its next
        poll returned: seen as answers that never left).
        """
        batch, self._batch = self._batch, []
        finished = threading.Lock()
        finished.acquire()
        self._pool.submit(lambda: _run_all(batch, finished))
        finished.acquire(timeout=_LEND)

    def post(self, call: WsgiCall) -> None:
        """From a thread: ``call`` finished (or began to stream); wake the loop once."""
        with self._outbox_lock:
            self._outbox.append(call)
            wake = not self._outbox_wake
            self._outbox_wake = True
        if wake:
            # RuntimeError: the loop is closed: the worker is going away.
            with contextlib.suppress(RuntimeError):
                call.loop.call_soon_threadsafe(self._flush)

    def _flush(self) -> None:
        """On the loop: send every finished call's response, start pumps for streams."""
        with self._outbox_lock:
            calls, self._outbox = self._outbox, []
            self._outbox_wake = False
        for call in calls:
            if call.abandoned:
                self._forget_stuck(call)
                continue
            if call.done:
                try:
                    finished = call.complete_now()
                except Exception as exc:
                    self._finish(call, exc)
                    continue
                if finished:
                    self._finish(call, None)
                else:
                    self._spawn(call, call.complete())
            else:
                call.start_pumping()
                self._spawn(call, call.pump())

    def _spawn(self, call: WsgiCall, work: Any) -> None:
        task: asyncio.Task[None] = call.loop.create_task(work)
        self._tasks.add(task)

        def done(task: asyncio.Task[None]) -> None:
            self._tasks.discard(task)
            if task.cancelled():
                call.exchange.abort()
                self._finish(call, None)
            else:
                self._finish(call, task.exception())

        task.add_done_callback(done)

    def _finish(self, call: WsgiCall, error: BaseException | None) -> None:
        """A deferred call is answered: tell the engine (once)."""
        if call in self.running:
            self.running.discard(call)
            call.release()
            call.exchange.handler_done(error)

    def _forget_stuck(self, call: WsgiCall) -> None:
        """An abandoned call's thread came back at last: its thread serves again."""
        if call.done and call.thread_id:
            self.stuck -= 1
            call.thread_id = 0

    # -- the watchdog ------------------------------------------------------------------

    def check_stuck(self, now: float, limit: float, report: StuckReport) -> None:
        """On the loop: give up on calls whose current step ran over ``limit`` seconds.

        The client gets a 503 if no head went out yet, else its connection is
        closed; ``report`` gets the request line and the stuck thread's stack.
        A thread cannot be stopped from outside, so it stays counted in
        ``stuck`` (capacity shrinks) until the app returns, if ever.
        """
        for call in list(self.running):
            started = call.step_started
            if started is None or now - started < limit or call.abandoned:
                continue
            head = call.exchange.head
            query = b"?" + head.query_string if head.query_string else b""
            line = f"{head.method} {(head.raw_path + query).decode('latin-1')}"
            frame = sys._current_frames().get(call.thread_id)
            stack = "".join(traceback.format_stack(frame)) if frame is not None else "?\n"
            self.stuck += 1
            self._give_up(call)
            report(
                f'request "{line}" ran over --request-timeout {limit:g}s '
                f"({now - started:.1f}s); its thread's stack:\n{stack.rstrip()}"
            )
        if self.capacity <= 0:
            # No thread is left to run what waits for one: answer it now.
            for call in list(self.running):
                if call.step_started is None and not call.done and not call.abandoned:
                    self._give_up(call)

    def _give_up(self, call: WsgiCall) -> None:
        exchange = call.exchange
        pumping = call.pumping
        call.abandon()
        if not exchange.headers_sent:
            exchange.respond_error(503, "Service Unavailable")
        else:
            exchange.abort()
        if call.deferred and not pumping:
            self._finish(call, None)


def _run_all(calls: list[WsgiCall], finished: threading.Lock) -> None:
    # Each call runs in its thread's own context, as in other threaded WSGI
    # servers (a ContextVar set in a call stays visible through its iteration
    # and close(), which run here too).
    try:
        for call in calls:
            call.run()
    finally:
        finished.release()


async def _make_input(
    environ: Environ, exchange: Exchange, loop: asyncio.AbstractEventLoop
) -> InputStream:
    """The ``wsgi.input`` for this request: empty, pre-read, or streaming."""
    length = environ.get("CONTENT_LENGTH")
    if length is None:
        if "HTTP_TRANSFER_ENCODING" not in environ:
            return InputStream(None)
    elif length == "0":
        return InputStream(None)
    elif "HTTP_EXPECT" not in environ and length.isdigit() and int(length) <= _PRE_READ_MAX:
        chunks: list[bytes] = []
        try:
            while True:
                chunk = await exchange.receive()
                if not chunk:
                    break
                chunks.append(chunk)
        except OSError as exc:
            # Raised to the app when it reads past the data that did arrive.
            return InputStream(None, b"".join(chunks), exc)
        return InputStream(None, chunks[0] if len(chunks) == 1 else b"".join(chunks))

    def pull() -> bytes:
        try:
            future = asyncio.run_coroutine_threadsafe(exchange.receive(), loop)
        except RuntimeError as exc:  # the loop is closed: the worker is going away
            raise ClientDisconnected("the server is shutting down") from exc
        try:
            return future.result()
        finally:
            # The future holds the error it raises, whose traceback holds this frame.
            del future

    return InputStream(pull)
