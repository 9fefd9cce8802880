"""One WSGI app call: its app side runs on a pool thread, its loop side writes the response.

PEP 3333 and the frameworks built on it expect the app call, every ``next()``
on its response iterable and ``close()`` to run on one plain thread with no
event loop running in it (Django's ORM refuses to run where a loop runs;
asgiref, ``asyncio.run``, thread-locals and ``ContextVar`` values set in the
call all rely on it). So the whole app side of a call runs in ``run()``, on one
pool thread, start to finish. The loop only writes what it produced.

The two sides share the call's state under ``lock``: ``items`` (body chunks
not yet written), ``queued`` (their size), ``done`` (the app side finished),
``wake_pending`` (the loop has been told already), ``loop_error`` (the loop
cannot write any more: the thread stops the app with it). Until the response
streams only the app side touches them, and the loop looks once ``done``.

How the loop hears from the thread: a call that is not yet ``pumping`` is
posted to its adapter's outbox (one wake-up of the loop for a whole batch of
finished calls); once a ``pump()`` coroutine writes its stream, the thread
wakes that coroutine directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Protocol

from kamisama_server.http.errors import Abandoned, ClientDisconnected, RequestBodyError
from kamisama_server.http.exchange import Exchange
from kamisama_server.http.head import Headers
from kamisama_server.http.ratelimit import limit_repeats
from kamisama_server.http.state import STATUS_LINES
from kamisama_server.http.wsgi_environ import Environ
from kamisama_server.http.wsgi_file import FileWrapper
from kamisama_server.http.wsgi_input import InputStream

if TYPE_CHECKING:
    from kamisama_server.http.wsgi import WSGIAdapter

log = logging.getLogger("kamisama.wsgi")
limit_repeats(log)  # a traceback per dropped upload, per repeated app error: then a count

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
WriteCallable = Callable[[bytes], None]


class StartResponse(Protocol):
    def __call__(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: ExcInfo | None = None,
        /,
    ) -> WriteCallable: ...


WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

# Bytes queued for the loop before the app's thread waits for the client to catch up.
_HIGH_WATER: Final = 256 * 1024
_LOW_WATER: Final = 64 * 1024
# Above this a collected body is written chunk by chunk instead of joined.
_JOIN_MAX: Final = 256 * 1024

_NO_BODY_STATUS: Final = frozenset((204, 304))


# Apps answer with the same few status lines and header lists again and again:
# each is checked and encoded once. Bounded, since some carry per-response values.
_CACHE_MAX: Final = 512
_STATUS_CODES: Final[dict[str, tuple[int, bytes | None]]] = {}
# CR, LF, NUL and the other control characters (HTAB is allowed in a reason phrase).
_CONTROL: Final = re.compile("[\x00-\x08\x0a-\x1f\x7f]")
_ENCODED: Final[dict[tuple[tuple[str, str], ...], tuple[Headers, int | None]]] = {}


def _parse_status(status: Any) -> tuple[int, bytes | None]:
    """The code of a WSGI status line ("200 OK") and the status line to send; ValueError if bad.

    The app's reason phrase goes out as given (``299 Custom Thing``, Werkzeug's
    ``206 PARTIAL CONTENT``); the line is None when the status has no phrase
    (the engine then sends the standard one). A phrase with a control
    character, or one that is not latin-1, is refused (the app gets a 500).
    """
    if type(status) is not str:
        raise TypeError(f"status must be a str, got {type(status).__name__}")
    found = _STATUS_CODES.get(status)
    if found is not None:
        return found
    code = status[:3]
    if (
        len(code) != 3
        or not code.isdigit()
        or (len(status) > 3 and status[3] != " ")
        or _CONTROL.search(status)
    ):
        raise ValueError(f"invalid status line {status!r}")
    value = int(code)
    if value < 100:
        raise ValueError(f"invalid status code {status!r}")
    phrase = status[4:]
    line = b"HTTP/1.1 %d %b\r\n" % (value, phrase.encode("latin-1")) if phrase else None
    if len(_STATUS_CODES) >= _CACHE_MAX:
        _STATUS_CODES.clear()
    _STATUS_CODES[status] = found = (value, line)
    return found


def _encode_headers(headers: Any) -> tuple[Headers, int | None]:
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


class WsgiCall:
    """One app call: the app's thread fills it, the loop's ``pump`` or ``complete`` drains it."""

    __slots__ = (
        "abandoned",
        "app_error",
        "committed",
        "declared",
        "deferred",
        "done",
        "drained",
        "environ",
        "exchange",
        "file",
        "headers",
        "items",
        "lock",
        "loop",
        "loop_error",
        "owner",
        "pumping",
        "queued",
        "sent",
        "status",
        "status_line",
        "step_started",
        "stream",
        "streaming",
        "thread_id",
        "waiter",
        "wake_pending",
    )

    def __init__(
        self,
        owner: WSGIAdapter,
        environ: Environ,
        stream: InputStream,
        exchange: Exchange,
        loop: asyncio.AbstractEventLoop,
        *,
        deferred: bool,
    ) -> None:
        self.owner = owner
        self.environ: Environ | None = environ
        self.stream = stream
        self.exchange = exchange
        self.loop = loop
        self.status = 0
        self.status_line: bytes | None = None
        self.headers: Headers = []
        self.declared: int | None = None
        self.sent = 0  # body bytes accepted from the app (after truncation)
        self.committed = False  # the first body byte was produced: the head is final
        self.streaming = False  # chunks go to the loop as they come
        # Who finishes the exchange: the adapter (deferred, no task until one is
        # needed) or the engine's task awaiting ``pump()``.
        self.deferred = deferred
        self.pumping = not deferred  # a pump() coroutine is (or will be) writing the stream
        self.abandoned = False  # the watchdog answered for the app; ignore what follows
        # For the watchdog: when the app's current step (the call, or one next()) began.
        self.step_started: float | None = None
        self.thread_id = 0
        self.items: list[bytes] = []
        self.queued = 0
        self.done = False
        self.wake_pending = False
        self.waiter: asyncio.Future[None] | None = None
        self.drained: threading.Event | None = None
        self.lock = owner.call_lock
        self.app_error: BaseException | None = None
        self.loop_error: BaseException | None = None
        self.file: FileWrapper | None = None

    # -- the app's side: one pool thread, from the call to close() --------------

    def run(self) -> None:
        """Call the app, consume its result and close it, all here; never raises."""
        app_iter: Any = None  # whatever the app returned (checked as it is read)
        environ = self.environ
        self.environ = None
        assert environ is not None
        if self.abandoned:  # answered for while it waited for a thread
            return
        self.thread_id = threading.get_ident()
        monotonic = time.monotonic
        self.step_started = monotonic()
        try:
            app_iter = self.app_call(environ)
            if app_iter is not None:
                if type(app_iter) is list or type(app_iter) is tuple:
                    for chunk in app_iter:
                        if chunk:
                            self._add(chunk if type(chunk) is bytes else _as_bytes(chunk), True)
                else:
                    for chunk in app_iter:
                        self.step_started = monotonic()
                        if chunk:
                            self._add(chunk if type(chunk) is bytes else _as_bytes(chunk), False)
                    self.step_started = monotonic()
            if not self.status:
                raise RuntimeError("the WSGI app returned without calling start_response")
        except BaseException as exc:
            self.app_error = exc
        self._close(app_iter)

    def app_call(self, environ: Environ) -> Any:
        """Call the app; None if its result is a file the loop will send."""
        app: Any = self.owner.app
        app_iter = app(environ, self.start_response)
        if type(app_iter) is FileWrapper:
            self._take_file(app_iter)
            if self.file is not None:
                return None  # the loop sends it, then closes it
        return app_iter

    def _close(self, app_iter: Any) -> None:
        """Call the iterable's ``close()`` (always), then tell the loop we are done."""
        try:
            # A list or tuple has no close(): asking would build and drop an
            # AttributeError, its message formatted, on every such request.
            kind = type(app_iter)
            close = None if kind is list or kind is tuple else getattr(app_iter, "close", None)
            if close is not None:
                close()
        except BaseException as exc:
            if self.app_error is None:
                self.app_error = exc
        finally:
            self.step_started = None
            with self.lock:
                self.done = True
                wake = not self.wake_pending
                self.wake_pending = True
            if wake:
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

    def start_response(self, status: Any, headers: Any, exc_info: Any = None) -> WriteCallable:
        """PEP 3333 ``start_response``; may replace the head until the body starts.

        Its parameters (and every value the app hands us) are typed ``Any``
        here, ``StartResponse`` being the typed face: the compiled build checks
        declared types when a value arrives, and the checks below (their
        messages, and what they let through, such as list pairs) must be the
        ones that run, in both builds.
        """
        if exc_info is not None:
            try:
                if self.committed:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None  # no reference cycle through the traceback
        elif self.status:
            raise RuntimeError("start_response called twice without exc_info")
        code, self.status_line = _parse_status(status)
        self.headers, self.declared = _encode_headers(headers)
        self.status = code
        return self.write

    def write(self, data: Any) -> None:
        """The legacy ``write()`` callable: sends ``data`` before the app goes on."""
        if not self.status:
            raise RuntimeError("write() called before start_response()")
        if type(data) is not bytes:
            data = _as_bytes(data)
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
            if self.queued > _HIGH_WATER:
                drained = self.drained = threading.Event()
        if wake:
            self._wake_loop()
        if drained is not None:
            drained.wait()
            if self.loop_error is not None:
                raise self.loop_error

    def _wake_loop(self) -> None:
        """Tell the loop there is something to write (called once per ``wake_pending``)."""
        if not self.pumping or self.abandoned:
            self.owner.post(self)  # batched with other finished calls
            return
        # RuntimeError: the loop is closed (the worker gave up waiting for us).
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self._on_wake)

    # -- the loop's side -------------------------------------------------------

    def _on_wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def start_pumping(self) -> None:
        """On the loop: from now on the thread wakes ``pump()`` directly."""
        with self.lock:
            self.pumping = True

    async def pump(self) -> None:
        """Write what the app's side produces until it is done, then finish."""
        while not self.done and not self.abandoned:
            with self.lock:
                items = self.items
                if items:
                    self.items = []
                elif not self.done:
                    self.wake_pending = False
                    waiter = self.waiter = self.loop.create_future()
            if items:
                if self.loop_error is None:
                    await self._write(items)
                self._release(items)
            elif not self.done:
                await waiter
        if self.abandoned:
            return  # the watchdog answered (503 or a close) for the app
        # The app's side is finished: nothing touches the state but us now.
        await self.complete()

    def abandon(self) -> None:
        """On the loop, for the watchdog: stop writing; the app's next push raises."""
        self.abandoned = True
        self._fail_loop(Abandoned("the request timed out"))
        self._on_wake()

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
            if self.loop_error is None:
                self.loop_error = exc
            drained, self.drained = self.drained, None
        if drained is not None:
            drained.set()

    async def _write(self, items: list[bytes]) -> None:
        """Write a batch of streamed chunks (the head first)."""
        exchange = self.exchange
        try:
            if not exchange.headers_sent:
                await exchange.send_head(self.status, self.headers, self.status_line)
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
            return self.exchange.send_now(self.status, self.headers, body, self.status_line)
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
                    await exchange.send_head(self.status, headers, self.status_line)
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

    def release(self) -> None:
        """The call is answered: drop the errors kept, whose tracebacks hold frames that
        refer back to this call and its stream (a cycle only a GC pass would free)."""
        self.app_error = self.loop_error = None
        self.stream.forget_error()

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
            reason = STATUS_LINES[status][13:-2] or b"Bad Request"
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
