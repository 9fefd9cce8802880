"""The WSGI adapter (PEP 3333): serves one ``Exchange`` by calling a WSGI app.

How a request flows, and why:

- The loop builds the environ and, for a small body with ``Content-Length``
  (and no ``Expect: 100-continue``), reads the body before the app starts, so
  the app's ``wsgi.input`` reads never leave its thread. Larger or chunked
  bodies are pulled from the engine chunk by chunk as the app reads.
- The app call and the iteration of its result run in one pool thread (one
  hop there). The thread hands the response back through ``_Call``: a
  response whose body is complete (a list, or ``Content-Length`` bytes
  reached) goes back in one piece with one wake-up of the loop; anything else
  streams: chunks queue up and the loop writes whatever queued since its last
  write as one batch; the thread waits when more than ``_HIGH_WATER`` bytes
  are queued (backpressure from a slow client reaches the app).
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
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator
from types import TracebackType
from typing import Any, Protocol

from kamisama_server.http.exchange import (
    ClientDisconnected,
    Exchange,
    Headers,
    RequestBodyError,
)
from kamisama_server.http.wsgi_environ import Environ, EnvironBuilder
from kamisama_server.http.wsgi_file import FileWrapper
from kamisama_server.http.wsgi_input import InputStream
from kamisama_server.http.wsgi_pool import ThreadPool

log = logging.getLogger("kamisama_server.wsgi")

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
WriteCallable = Callable[[bytes], None]


class StartResponse(Protocol):
    def __call__(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: ExcInfo | None = ...,
        /,
    ) -> WriteCallable: ...


WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

# A body up to this size (with Content-Length) is read on the loop before the app starts.
_PRE_READ_MAX = 64 * 1024
# Bytes queued for the loop before the app's thread waits for the client to catch up.
_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024
# Above this a collected body is written chunk by chunk instead of joined.
_JOIN_MAX = 256 * 1024

_NO_BODY_STATUS = frozenset((204, 304))

# Inline or in the thread (threads == 1): the mean wall time of the first
# _DECIDE_AFTER inline calls decides (see WSGIAdapter). A sample is capped so
# that one slow first call (imports, warm-up) cannot decide alone. An app that
# blocks (sleeps, waits on a database) moves at once, after _BLOCKING_CALLS
# calls over _BLOCKING: meanwhile every connection of the worker waits for it,
# timers fire late, and a drain may close a keep-alive connection whose next
# request is already unread in its socket (a reset for that client).
_DECIDE_AFTER = 256
_POOL_ABOVE = 20e-6
_SAMPLE_MAX = 1e-3
_BLOCKING = 1e-3
_BLOCKING_CALLS = 8


class WSGIAdapter:
    """An ``AppHandler`` serving a WSGI app; one per worker process.

    ``threads`` app calls run at once (a pool of that many threads, started on
    first use). Call ``close()`` once the engine has drained, to stop them.

    With ``threads == 1`` (and ``inline`` left on) a request whose body is
    already complete runs its app call on the loop's thread, answered inside
    the parser's callback (``serve_now``): with one thread only one call runs
    at a time either way, and for a fast app the hop to a thread and back
    costs more than the app. For a slow app it costs nothing: the thread is
    seldom idle, so wake-ups are few, and the loop's reads and writes run
    while the app holds the GIL. So the adapter watches the app: if the mean
    wall time of its first ``_DECIDE_AFTER`` calls is over ``_POOL_ABOVE``,
    its calls move to the thread for good (one way, so that two calls never
    overlap). Measured with 2 workers, wrk -t2 -c64, 3
    interleaved rounds on the shared 2-core machine (server CPU per request;
    req/s): raw hello (~2 us of app) inline 15.4 us vs thread 26.7 us, req/s
    about equal; Flask's hello route (~45 us of app) inline 77.7 us vs thread
    76.0 us, 10.5k vs 16.3k req/s. Between them, ``_POOL_ABOVE``.
    What cannot run on the loop moves to the pool: an iterable that must
    stream (no ``Content-Length`` reached) continues in a thread, and an app
    that calls ``write()`` runs in threads from then on, since neither may
    wait for a slow client on the loop's thread.
    """

    def __init__(
        self, app: WSGIApp, *, threads: int = 1, inline: bool = True, adaptive: bool = True
    ) -> None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.app = app
        self.threads = threads
        self.inline = inline and threads == 1
        # Inline calls timed so far; with adaptive=False the placement is never revisited.
        self._calls_seen = 0 if adaptive else _DECIDE_AFTER
        self._call_time = 0.0  # their total wall time, seconds
        self._blocking_calls = 0  # of them, those over _BLOCKING
        self._pool = ThreadPool(threads)
        self._environ = EnvironBuilder(multithread=threads > 1, file_wrapper=FileWrapper)

    async def __call__(self, exchange: Exchange) -> None:
        await self._serve(exchange, self._environ.build(exchange.head, None))

    def serve_now(self, exchange: Exchange) -> Coroutine[Any, Any, None] | None:
        """The engine's task-free entry (``exchange.ServeNow``), for complete bodies.

        Inline, a body-less request is answered right here: the app call, its
        list result and the response in one ``send`` need no coroutine, task or
        extra loop iteration. Anything else returns the coroutine that does it.
        """
        if not self.inline:
            return self(exchange)
        environ = self._environ.build(exchange.head, None)
        if "CONTENT_LENGTH" in environ or "HTTP_TRANSFER_ENCODING" in environ:
            return self._serve(exchange, environ)
        stream = InputStream(None)
        environ["wsgi.input"] = stream
        call = _Call(self, environ, stream, exchange, None)  # inline: the loop is found if needed
        call.inline = True
        self._run_inline(call)
        if not call.done:
            return call.pump()
        if call.complete_now():
            return None
        return call.complete()

    async def _serve(self, exchange: Exchange, environ: Environ) -> None:
        loop = asyncio.get_running_loop()
        if "CONTENT_LENGTH" in environ or "HTTP_TRANSFER_ENCODING" in environ:
            stream = await _make_input(environ, exchange, loop)
        else:
            stream = InputStream(None)  # no body: the common case needs no coroutine
        environ["wsgi.input"] = stream
        call = _Call(self, environ, stream, exchange, loop)
        if self.inline and stream.complete:
            call.inline = True
            self._run_inline(call)
            if call.done:
                if not call.complete_now():
                    await call.complete()
                return
        else:
            self._pool.submit(call.run)
        await call.pump()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the app threads (after the engine drained in-flight requests)."""
        self._pool.shutdown(timeout)

    def _run_inline(self, call: _Call) -> None:
        """Run ``call`` on the loop's thread, timing it until the placement is decided."""
        seen = self._calls_seen
        if seen >= _DECIDE_AFTER:
            call.run()
            return
        start = time.perf_counter()
        call.run()
        took = time.perf_counter() - start
        if took > _BLOCKING:
            self._blocking_calls += 1
            if self._blocking_calls == _BLOCKING_CALLS:
                self._calls_seen = _DECIDE_AFTER
                self._stop_inline(
                    f"blocks (took over {_BLOCKING * 1e3:.0f} ms {_BLOCKING_CALLS} times)"
                )
                return
        self._call_time += min(took, _SAMPLE_MAX)
        self._calls_seen = seen = seen + 1
        if seen == _DECIDE_AFTER:
            mean = self._call_time / seen
            if mean > _POOL_ABOVE:
                self._stop_inline(
                    f"takes {mean * 1e6:.0f} us per call (over {_POOL_ABOVE * 1e6:.0f})"
                )

    def _stop_inline(self, why: str) -> None:
        if self.inline:
            self.inline = False
            log.info("the WSGI app %s: its calls run in a thread from now on", why)


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
        return future.result()

    return InputStream(pull)


# Apps answer with the same few status lines and header lists again and again:
# each is checked and encoded once. Bounded, since some carry per-response values.
_CACHE_MAX = 512
_STATUS_CODES: dict[str, int] = {}
_ENCODED: dict[tuple[tuple[str, str], ...], tuple[Headers, int | None]] = {}


def _parse_status(status: str) -> int:
    """The status code of a WSGI status line ("200 OK"); ValueError if malformed."""
    if type(status) is not str:
        raise TypeError(f"status must be a str, got {type(status).__name__}")
    value = _STATUS_CODES.get(status)
    if value is not None:
        return value
    code = status[:3]
    if (
        len(code) != 3
        or not code.isdigit()
        or (len(status) > 3 and status[3] != " ")
        or "\r" in status
        or "\n" in status
        or "\0" in status
    ):
        raise ValueError(f"invalid status line {status!r}")
    value = int(code)
    if value < 100:
        raise ValueError(f"invalid status code {status!r}")
    if len(_STATUS_CODES) >= _CACHE_MAX:
        _STATUS_CODES.clear()
    _STATUS_CODES[status] = value
    return value


def _encode_headers(headers: list[tuple[str, str]]) -> tuple[Headers, int | None]:
    """Response headers as latin-1 bytes (a fresh list), and the declared Content-Length."""
    if type(headers) is not list:
        raise TypeError(f"headers must be a list, got {type(headers).__name__}")
    try:
        key: tuple[tuple[str, str], ...] | None = tuple(headers)
        found = _ENCODED.get(key)  # type: ignore[arg-type]
    except TypeError:  # unhashable pairs: the loop below says what is wrong
        key = found = None
    if found is not None:
        return list(found[0]), found[1]  # a copy: the adapter may append Content-Length
    out: Headers = []
    declared: int | None = None
    for name, value in headers:
        if type(name) is not str or type(value) is not str:
            raise TypeError(f"header name and value must be str: {name!r}: {value!r}")
        raw_name = name.encode("latin-1")
        raw_value = value.encode("latin-1")
        if len(raw_name) == 14 and raw_name.lower() == b"content-length":
            declared = int(raw_value)
            if declared < 0:
                raise ValueError(f"negative Content-Length {value!r}")
        out.append((raw_name, raw_value))
    if key is not None:
        if len(_ENCODED) >= _CACHE_MAX:
            _ENCODED.clear()
        _ENCODED[key] = (out, declared)
        return list(out), declared
    return out, declared


def _as_bytes(chunk: object) -> bytes:
    if isinstance(chunk, (bytearray, memoryview)):
        return bytes(chunk)
    raise TypeError(f"a WSGI app must produce bytes, got {type(chunk).__name__}")


class _Call:
    """One app call: the app's thread fills it, the loop's ``pump`` drains it.

    Shared between the two threads under ``lock``: ``items`` (body chunks not
    yet written), ``queued`` (their size), ``done`` (the app's side finished),
    ``wake_pending`` (a wake-up of the loop is already on its way, so the
    thread need not send another), ``loop_error`` (the loop cannot write any
    more: the thread stops the app with it). Until the response streams, only
    the app's side touches them, and the loop looks only once ``done``.
    """

    __slots__ = (
        "app_error",
        "committed",
        "declared",
        "done",
        "drained",
        "environ",
        "exchange",
        "file",
        "headers",
        "inline",
        "items",
        "lock",
        "loop",
        "loop_error",
        "owner",
        "queued",
        "sent",
        "status",
        "stream",
        "streaming",
        "waiter",
        "wake_pending",
    )

    def __init__(
        self,
        owner: WSGIAdapter,
        environ: Environ,
        stream: InputStream,
        exchange: Exchange,
        loop: asyncio.AbstractEventLoop | None,
    ) -> None:
        self.owner = owner
        self.environ: Environ | None = environ
        self.stream = stream
        self.exchange = exchange
        self.loop = loop
        self.status = 0
        self.headers: Headers = []
        self.declared: int | None = None
        self.sent = 0  # body bytes accepted from the app (after truncation)
        self.committed = False  # the first body byte was produced: the head is final
        self.streaming = False  # chunks go to the loop as they come
        self.inline = False  # running on the loop's thread: never wait for the loop
        self.items: list[bytes] = []
        self.queued = 0
        self.done = False
        self.wake_pending = False
        self.waiter: asyncio.Future[None] | None = None
        self.drained: threading.Event | None = None
        self.lock = threading.Lock()
        self.app_error: BaseException | None = None
        self.loop_error: BaseException | None = None
        self.file: FileWrapper | None = None

    # -- the app's side (a pool thread, or the loop's thread when inline) ------

    def run(self) -> None:
        """Call the app and consume its result; never raises."""
        app_iter: Iterable[bytes] | None = None
        environ = self.environ
        self.environ = None
        assert environ is not None
        try:
            app_iter = self.app_call(environ)
            if app_iter is not None:
                if type(app_iter) is list or type(app_iter) is tuple:
                    for chunk in app_iter:
                        if chunk:
                            self._add(chunk if type(chunk) is bytes else _as_bytes(chunk), True)
                else:
                    it = iter(app_iter)
                    if self._iterate(it, app_iter):
                        return  # a pool thread goes on with it
            if not self.status:
                raise RuntimeError("the WSGI app returned without calling start_response")
        except BaseException as exc:
            self.app_error = exc
        self._close(app_iter)

    def app_call(self, environ: Environ) -> Iterable[bytes] | None:
        """Call the app; None if its result is a file the loop will send."""
        app_iter = self.owner.app(environ, self.start_response)
        if type(app_iter) is FileWrapper:
            self._take_file(app_iter)
            if self.file is not None:
                return None  # the loop sends it, then closes it
        return app_iter

    def _iterate(self, it: Iterator[bytes], app_iter: Iterable[bytes]) -> bool:
        """Consume ``it``; True if the rest was handed to a pool thread."""
        for chunk in it:
            if chunk:
                self._add(chunk if type(chunk) is bytes else _as_bytes(chunk), False)
                if self.streaming and self.inline:
                    # Streaming may have to wait for the client: not on the loop's thread.
                    self.inline = False
                    self.running_loop()  # the pool thread will need it
                    self.owner._pool.submit(lambda: self._resume(it, app_iter))
                    return True
        return False

    def _resume(self, it: Iterator[bytes], app_iter: Iterable[bytes]) -> None:
        """Go on iterating in a pool thread; never raises."""
        try:
            self._iterate(it, app_iter)
        except BaseException as exc:
            self.app_error = exc
        self._close(app_iter)

    def _close(self, app_iter: Iterable[bytes] | None) -> None:
        """Call the iterable's ``close()`` (always), then tell the loop we are done."""
        try:
            close = getattr(app_iter, "close", None)
            if close is not None:
                close()
        except BaseException as exc:
            if self.app_error is None:
                self.app_error = exc
        finally:
            with self.lock:
                self.done = True
                wake = not self.wake_pending
                self.wake_pending = True
            if wake and not self.inline:  # inline, the loop looks once run() returns
                self._wake_loop()

    def _take_file(self, wrapper: FileWrapper) -> None:
        """Keep ``wrapper`` for ``os.sendfile`` if it wraps a regular file."""
        if not self.status:
            raise RuntimeError("the WSGI app returned without calling start_response")
        span = wrapper.sendfile_span()
        if span is None:
            return
        self.file = wrapper
        if self.declared is None and not self.committed:
            # Known length: the engine can use plain framing instead of chunks.
            self.declared = span[2]
            self.headers.append((b"Content-Length", str(span[2]).encode()))

    def start_response(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: ExcInfo | None = None,
    ) -> WriteCallable:
        """PEP 3333 ``start_response``; may replace the head until the body starts."""
        if exc_info is not None:
            try:
                if self.committed:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None  # no reference cycle through the traceback
        elif self.status:
            raise RuntimeError("start_response called twice without exc_info")
        code = _parse_status(status)
        self.headers, self.declared = _encode_headers(headers)
        self.status = code
        return self.write

    def write(self, data: bytes) -> None:
        """The legacy ``write()`` callable: sends ``data`` before the app goes on."""
        if not self.status:
            raise RuntimeError("write() called before start_response()")
        if type(data) is not bytes:
            data = _as_bytes(data)
        if self.inline:
            self.owner._stop_inline("calls write()")
        if data:
            self._add(data, False)

    def _add(self, chunk: bytes, hold: bool) -> None:
        """Take one body chunk: hold it until the end, or stream it now."""
        declared = self.declared
        if declared is None:
            if not self.status:
                raise RuntimeError("the WSGI app produced body data before start_response")
        else:
            room = declared - self.sent
            if len(chunk) >= room:  # never send more than the app declared
                if len(chunk) > room:
                    if room <= 0:
                        return
                    chunk = chunk[:room]
                hold = True  # the body is complete: nothing is gained by waking the loop early
        self.sent += len(chunk)
        self.committed = True
        if self.streaming:
            self._push(chunk)
        elif hold:
            self.items.append(chunk)
            self.queued += len(chunk)
        else:
            self.streaming = True
            self._push(chunk)

    def _push(self, chunk: bytes) -> None:
        """Queue a chunk for the loop; wait while too much is queued."""
        with self.lock:
            if self.loop_error is not None:
                raise self.loop_error
            self.items.append(chunk)
            self.queued += len(chunk)
            wake = not self.wake_pending
            self.wake_pending = True
            drained = None
            if self.queued > _HIGH_WATER and not self.inline:
                drained = self.drained = threading.Event()
        if wake:
            self._wake_loop()
        if drained is not None:
            drained.wait()
            if self.loop_error is not None:
                raise self.loop_error

    def _wake_loop(self) -> None:
        # RuntimeError: the loop is closed (the worker gave up waiting for us).
        with contextlib.suppress(RuntimeError):
            self.running_loop().call_soon_threadsafe(self._on_wake)

    def running_loop(self) -> asyncio.AbstractEventLoop:
        """The loop; looked up on first need (on the loop's thread), since an inline
        call that completes at once never needs it (``get_running_loop`` costs a
        ``getpid`` syscall per call on Python 3.11)."""
        loop = self.loop
        if loop is None:
            loop = self.loop = asyncio.get_running_loop()
        return loop

    # -- the loop's side -------------------------------------------------------

    def _on_wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def pump(self) -> None:
        """Write what the app's side produces until it is done, then finish."""
        while not self.done:
            with self.lock:
                items = self.items
                if items:
                    self.items = []
                elif not self.done:
                    self.wake_pending = False
                    waiter = self.waiter = self.running_loop().create_future()
            if items:
                if self.loop_error is None:
                    await self._write(items)
                self._release(items)
            elif not self.done:
                await waiter
        # The app's side is finished: nothing touches the state but us now.
        await self.complete()

    def _release(self, items: list[bytes]) -> None:
        """Account for written (or dropped) chunks; let a waiting thread go on."""
        size = sum(map(len, items)) if len(items) > 1 else len(items[0])
        with self.lock:
            self.queued -= size
            drained = self.drained
            if drained is not None and (self.queued <= _LOW_WATER or self.loop_error):
                self.drained = None
                drained.set()

    def _fail_loop(self, exc: BaseException) -> None:
        """The loop cannot go on writing: stop the thread's next push with ``exc``."""
        with self.lock:
            self.loop_error = exc
            drained, self.drained = self.drained, None
        if drained is not None:
            drained.set()

    async def _write(self, items: list[bytes]) -> None:
        """Write a batch of streamed chunks (the head first)."""
        exchange = self.exchange
        try:
            if not exchange.headers_sent:
                await exchange.send_head(self.status, self.headers)
            await _write_all(exchange, items)
        except (ValueError, OSError) as exc:
            self._fail_loop(exc)

    def complete_now(self) -> bool:
        """``complete()`` for the common case, without a coroutine; False: use that.

        The common case: no error, no file, nothing streamed yet, a body that
        fits one send, a client that is reading.
        """
        if (
            self.app_error is not None
            or self.loop_error is not None
            or self.file is not None
            or self.streaming
            or self.stream.body_error is not None
            or self.queued > _JOIN_MAX
        ):
            return False
        if self.declared is None:
            self._add_length(self.headers)
            self.declared = self.sent  # so that complete() does not add it again
        elif self._short():
            return False
        items = self.items
        body = items[0] if len(items) == 1 else b"".join(items)
        try:
            return self.exchange.send_now(self.status, self.headers, body)
        except ValueError:
            return False  # complete() answers 500 and logs why

    async def complete(self) -> None:
        """The app's side is done: send what is left and end, or answer the error."""
        exchange = self.exchange
        file, self.file = self.file, None
        try:
            if self.app_error is not None or self.loop_error is not None:
                await self._answer_error()
                return
            if self.stream.body_error is not None:
                await self._answer_body_error()
                return
            items = self.items
            if not exchange.headers_sent:
                headers = self.headers
                if not self.streaming and self.declared is None and file is None:
                    self._add_length(headers)
                try:
                    await exchange.send_head(self.status, headers)
                except ValueError as exc:
                    log.error("invalid response head from the WSGI app: %s", exc)
                    await _plain_response(exchange, 500, b"Internal Server Error")
                    return
            if items:
                await _write_all(exchange, items)
            if file is not None:
                await self._send_file(file)
            elif self._short():
                log.error(
                    "the WSGI app declared Content-Length %s but sent %s bytes; closing",
                    self.declared,
                    self.sent,
                )
                exchange.abort()
                return
            await exchange.end()
        except ClientDisconnected:
            exchange.abort()
        finally:
            if file is not None:
                try:
                    file.close()
                except Exception:
                    log.exception("error closing the wsgi.file_wrapper file")

    def _add_length(self, headers: Headers) -> None:
        """The whole body is here and its length unknown to the client: declare it."""
        status = self.status
        if status >= 200 and status not in _NO_BODY_STATUS and self.exchange.head.method != "HEAD":
            headers.append((b"Content-Length", str(self.sent).encode()))

    async def _answer_body_error(self) -> None:
        """The request body failed while the app read it: 400/413, or close."""
        exchange = self.exchange
        body_error = self.stream.body_error
        if isinstance(body_error, RequestBodyError) and not exchange.headers_sent:
            status = body_error.status
            reason = b"Request Entity Too Large" if status == 413 else b"Bad Request"
            await _plain_response(exchange, status, reason, close=True)
        else:
            exchange.abort()

    async def _answer_error(self) -> None:
        """The app raised, or the loop could not write: 500, or close."""
        exchange = self.exchange
        if self.stream.body_error is not None:
            # Whatever the app did after a failed read, the cause is the body.
            self.app_error = None
            await self._answer_body_error()
            return
        loop_error = self.loop_error
        if loop_error is not None:
            if isinstance(loop_error, ValueError) and not exchange.headers_sent:
                log.error("invalid response head from the WSGI app: %s", loop_error)
                await _plain_response(exchange, 500, b"Internal Server Error")
            else:
                exchange.abort()
            self.app_error = None
            return
        exc, self.app_error = self.app_error, None  # drop the traceback's frames with us
        if isinstance(exc, ClientDisconnected):
            exchange.abort()
            return
        log.error("Exception in WSGI application", exc_info=exc)
        if exchange.headers_sent:
            exchange.abort()
        else:
            await _plain_response(exchange, 500, b"Internal Server Error")

    def _short(self) -> bool:
        """The app declared a Content-Length and sent less: the response is broken."""
        declared = self.declared
        if declared is None or self.sent >= declared:
            return False
        status = self.status
        return not (
            status < 200 or status in _NO_BODY_STATUS or self.exchange.head.method == "HEAD"
        )

    async def _send_file(self, file: FileWrapper) -> None:
        span = file.sendfile_span()
        if span is None:  # closed or replaced since the app's side looked
            raise ClientDisconnected("the wsgi.file_wrapper file is no longer sendable")
        fd, offset, count = span
        declared = self.declared
        if declared is not None:
            count = min(count, declared - self.sent)
        if count > 0 and self.exchange.head.method != "HEAD":
            await self.exchange.sendfile(fd, offset, count)
        self.sent += max(count, 0)
        if self._short():
            log.error("the file sent by the WSGI app is shorter than its Content-Length")
            raise ClientDisconnected("short file")


async def _write_all(exchange: Exchange, items: list[bytes]) -> None:
    """Write chunks: joined while small (one send), one by one when large."""
    if len(items) == 1:
        await exchange.write(items[0])
    elif sum(map(len, items)) <= _JOIN_MAX:
        await exchange.write(b"".join(items))
    else:
        for item in items:
            await exchange.write(item)


async def _plain_response(
    exchange: Exchange, status: int, text: bytes, *, close: bool = False
) -> None:
    headers: Headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(text)).encode()),
    ]
    if close:
        headers.append((b"connection", b"close"))
    try:
        await exchange.send_head(status, headers)
        await exchange.write(text)
        await exchange.end()
    except ClientDisconnected:
        exchange.abort()
