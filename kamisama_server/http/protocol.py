"""One HTTP/1.1 connection: httptools parses, we enforce issue 3's rules, exchanges answer.

The hot path is ``data_received`` -> httptools callbacks -> ``HttpExchange``:
no per-request objects beyond the head, the exchange and its handler task.
httptools (llhttp) already rejects most malformed input; what it lets through
and issue 3 forbids (HTTP/0.9, HTTP/2.0 lines, chunked on HTTP/1.0, endless
request lines and headers) is checked here.

Requests are answered strictly in order: one handler runs per connection, the
requests pipelined behind it wait in ``pipeline`` (their bodies buffered up to
a high-water mark, then we stop reading).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections import deque
from typing import Any, Final, cast

# httptools' names, and its parser or the h11 one as HttpConfig.parser says (see parser_choice).
from . import parser_choice as httptools
from .errors import ClientDisconnected, RequestBodyError, RequestBodyTooLarge
from .exchange import DEFERRED, Deferred
from .exchange_impl import HttpExchange
from .head import RequestHead
from .state import EngineState, error_log

# What the per-connection timer is waiting for (_TRAILERS: the end of a chunked body's trailers).
_NO_TIMER: Final = 0
_IDLE: Final = 1
_HEAD: Final = 2
_TRAILERS: Final = 3

_METHODS: Final = {
    m.encode(): m
    for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE")
}
# Headers we look at while parsing; the last two must not appear twice (RFC 9112 3.2).
_SINGLE: Final = frozenset(
    (b"content-length", b"transfer-encoding", b"expect", b"upgrade", b"host", b"content-type")
)
_UNLIMITED: Final = sys.maxsize
# Fields --proxy-headers reads: a head without them skips the proxy check.
_FORWARDED: Final = frozenset((b"x-forwarded-for", b"x-forwarded-proto"))
# The fields on_header looks at beyond counting them (one set lookup per field).
_NOTED: Final = _SINGLE | _FORWARDED
_FORBIDDEN_TRAILERS: Final = frozenset(
    (
        b"host",
        b"content-length",
        b"transfer-encoding",
        b"connection",
        b"expect",
        b"trailer",
        b"te",
        b"upgrade",
    )
)
_LINGER: Final = 2.0  # seconds we keep reading (and dropping) after an error before closing
_TLS_CLOSE_WAIT: Final = 0.1  # seconds a draining TLS close waits for the client's close_notify
_CLAIM: Final = 0.01  # seconds a new connection's first request may take to start counting
_SILENT_CLAIMS: Final = 8  # this many claims in a row expired silent: claim nothing (slowloris)


class _Stop(Exception):
    """Raised inside a parser callback: the connection is closing, parse nothing more."""


class _Reject(Exception):
    """Raised inside a parser callback: answer ``status`` and stop parsing."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class HttpProtocol(asyncio.Protocol):
    """The engine's side of one client connection."""

    def __init__(self, state: EngineState, read_ahead: bytes = b"") -> None:
        self.state = state
        # Bytes another worker read from this connection before handing it to us.
        self._read_ahead = read_ahead
        self.config = config = state.config
        loop = state.loop
        assert loop is not None, "EngineState.loop is set by HttpServer.start()"
        self.loop = loop
        # Holds our bound methods: dropped on close (see _release), so no cycle outlives us.
        self.parser: Any = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.client: tuple[str, int] | None = None
        self.server: tuple[str, int] | None = None
        self.scheme = "https" if config.ssl is not None else "http"
        self.closed = False
        self.reading_paused = False
        self.writing_paused = False
        self._write_waiters: list[asyncio.Future[None]] = []
        # The exchange whose handler runs, the ones parsed behind it, the one being fed a body.
        self.exchange: HttpExchange | None = None
        self.pipeline: deque[HttpExchange] = deque()
        self._handling: dict[asyncio.Task[None], HttpExchange] = {}  # the running handler
        self.parsing: HttpExchange | None = None
        self.requests = 0
        # Parser state for the request being parsed.
        self.eof = False
        self._dead = False  # parser stopped (error, upgrade, linger): drop further bytes
        self._pending_error: tuple[int, str] | None = None
        self._in_head = True
        self._mid_head = False
        self._head_bytes = 0
        self._held = 0  # of them, counted in EngineState.head_bytes (see _hold)
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._content_length: int | None = None
        self._chunked = False
        self._expect = False
        self._upgrade: bytes | None = None
        self._host_seen = False
        self._type_seen = False
        self._forwarded = False
        # The header limits, "none" (0) as a size no head reaches: one compare per field.
        self._max_fields = config.limit_request_fields or _UNLIMITED
        self._max_field_line = config.limit_request_field_size or _UNLIMITED
        self._ws_request: tuple[bytes, bytes, list[tuple[bytes, bytes]]] | None = None
        # Chunked framing: trailers seen, a chunk opened and no data of it yet (the last
        # chunk's trailers follow), a callback since the feed began, framing bytes fed
        # in a row without any callback (an endless chunk line or trailer field).
        self._trailers = 0
        self._chunk_open = False
        self._moved = False
        self._frame_bytes = 0
        # What was fed, for the request line check (see _check_request_line).
        self._feed = b""
        self._feed_pos = 0
        self._line_tail: bytes | None = None
        # The feed began between two messages: a request line found at its start is
        # this request's own (not bytes of a body), so its version can be read there.
        self._fed_between = False
        # Stall watch (see _check_stall): progress events seen, since when none came.
        self._progress = 0
        self._progress_seen = -1
        self._stalled_since = 0.0
        # Timer, checked by HttpServer's ticker.
        self.timer = _HEAD
        self.deadline = loop.time() + config.header_timeout
        self._max_head = config.max_head_bytes
        self._claim: asyncio.TimerHandle | None = None  # see EngineState.claims

    # asyncio.Protocol -----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, so cast, not check.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        state = self.state
        state.connections.add(self)
        if state.claims_enabled and state.silent_claims < _SILENT_CLAIMS:
            # A new connection's first request is on its way: it holds an app
            # thread's place a moment, so a burst is not accepted all at once.
            state.claims += 1
            self._claim = self.loop.call_later(_CLAIM, self._claim_expired)
        if state.load_changed is not None:
            state.load_changed()
        self.client = _address(transport.get_extra_info("peername"))
        self.server = _address(transport.get_extra_info("sockname"))
        if self.state.draining:
            self.deadline = min(self.deadline, self.loop.time() + self.config.drain_fresh_timeout)
        if self._read_ahead:  # taken because a thread is free here: served here
            data, self._read_ahead = self._read_ahead, b""
            self.feed(data)

    def hand_over(self) -> None:
        """Another worker serves this connection now: close our end and say nothing."""
        self._dead = True
        assert self.transport is not None
        self.transport.abort()

    def hold(self) -> None:
        """The server holds the bytes of our next request back for now (its app
        blocks): read nothing more meanwhile, and let no timer end the wait (the
        keep-alive timeout must not close a connection whose request came)."""
        self.timer = _NO_TIMER
        assert self.transport is not None
        self.transport.pause_reading()

    def release(self, data: bytes) -> None:
        """Serve the held ``data`` here after all: as if it had just come."""
        self.timer = _IDLE  # its head's own timeout starts with it (on_message_begin)
        assert self.transport is not None
        self.transport.resume_reading()
        self.feed(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        self.timer = _NO_TIMER
        state = self.state
        state.connections.discard(self)
        if self._claim is not None:
            self._release_claim()
        if state.load_changed is not None:
            state.load_changed()
        for waiter in self._write_waiters:
            if not waiter.done():
                waiter.set_exception(ClientDisconnected("client disconnected"))
        self._write_waiters.clear()
        if self.exchange is not None:
            self.exchange.disconnected()
        if self.parsing is not None and self.parsing is not self.exchange:
            self.parsing.disconnected()
        self.pipeline.clear()
        self._release()
        state.check_idle()

    def _release(self) -> None:
        """Closed: drop what refers back to us, so reference counting alone frees us.

        The parser holds our bound methods (a cycle); nothing is parsed after a close.
        """
        self._unhold()
        self.parser = None
        self.parsing = None  # the exchange whose body was being read: it refers to us
        self._feed = b""
        self._line_tail = None

    def data_received(self, data: bytes) -> None:
        if self._dead:
            return
        hand_over = self.state.hand_over
        if (
            hand_over is not None
            and self.exchange is None
            and self.parsing is None
            and not self._mid_head
            and not self.pipeline
            and hand_over(self, data)
        ):
            return  # the server took it: to pass it on, or hold it a moment (see feed)
        self.feed(data)

    def feed(self, data: bytes) -> None:
        """Parse ``data``: what ``data_received`` does once the server keeps the bytes."""
        if self._in_head:
            self._head_bytes += len(data)
        self._moved = False
        self._feed, self._feed_pos = data, 0
        self._fed_between = self._in_head and not self._mid_head
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._on_upgrade(data[exc.args[0] :])
        except httptools.HttpParserCallbackError as exc:
            # A helper, so no local outlives the except clause: the cause's traceback
            # holds the callback's frame (and so us) in a cycle through this frame.
            self._callback_failed(exc.__context__)
        except httptools.HttpParserError as exc:
            if self._dead:
                return  # e.g. llhttp refusing data after a "Connection: close" request we answered
            message = str(exc)
            status = 505 if message == "Invalid HTTP version" else 400
            self._on_bad_input(status, message)
        else:
            if self._in_head:
                if self._head_bytes > self._max_head:
                    self._on_bad_input(431, "Request Header Fields Too Large")
                    return
                if self._mid_head:
                    self._keep_line_tail(data)
                    # Still incomplete after this feed: count it worker-wide (a head
                    # that completes within one read, the usual case, costs nothing).
                    self._hold(len(data))
            elif self._chunked and self.parsing is not None:
                self._check_framing(len(data))

    def _callback_failed(self, cause: BaseException | None) -> None:
        """A parser callback raised ``cause``: a ``_Reject`` answers its status, else 500."""
        if self._dead:
            return  # a response inside this feed closed the connection (_Stop)
        if isinstance(cause, _Reject):
            self._on_bad_input(cause.status, cause.reason)
        else:
            error_log.error("HTTP parser callback failed", exc_info=cause)
            self._on_bad_input(500, "Internal Server Error")

    def _hold(self, size: int) -> None:
        """``size`` more bytes of an incomplete head are held: count them worker-wide.

        Over ``limit_incomplete_heads`` the oldest incomplete heads are dropped
        (408) until the total is under it again: many slow, large heads cannot
        make the worker hold more than that, whatever each one's own limit.
        """
        state = self.state
        if not self._held:
            state.heads[self] = None  # insertion order: the oldest first
        self._held += size
        state.head_bytes += size
        limit = self.config.limit_incomplete_heads
        if limit and state.head_bytes > limit:
            for protocol in list(state.heads):
                if state.head_bytes <= limit:
                    break
                protocol._drop_head()

    def _unhold(self) -> None:
        """The head completed or the connection closes: its bytes no longer count."""
        if self._held:
            self.state.head_bytes -= self._held
            self._held = 0
            self.state.heads.pop(self, None)

    def _drop_head(self) -> None:
        """The worker holds too many incomplete heads and this one is the oldest: 408."""
        self._unhold()
        if self.closed or self._dead:
            return
        self._dead = True
        if self.exchange is None:
            self._send_error(408, "Request Timeout")
        else:
            self._pending_error = (408, "Request Timeout")

    def _keep_line_tail(self, data: bytes) -> None:
        """A head goes on in the next feed: keep where its request line may be."""
        keep = (self.config.limit_request_line or 8190) + 16
        tail = self._line_tail
        self._line_tail = data[-keep:] if tail is None else (tail + data)[-keep:]

    def eof_received(self) -> bool | None:
        # The client half-closed: answer what it sent, then close.
        self.eof = True
        if not self._dead:
            if self.parsing is not None:
                self._on_bad_input(400, "Request body incomplete")
            elif self._mid_head:
                self._on_bad_input(400, "Request head incomplete")
        if self.exchange is not None:
            self.exchange.client_gone()  # ASGI's http.disconnect; its response still goes out
        if self.exchange is None and not self.pipeline and not self.closed:
            self._close()
        return True

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._progress += 1
        waiters, self._write_waiters = self._write_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # httptools callbacks ----------------------------------------------------

    def on_message_begin(self) -> None:
        if self._dead:
            # A response served inside this very feed closed the connection.
            raise _Stop
        if self._claim is not None:
            self.state.silent_claims = 0
            self._release_claim()
        self._mid_head = True
        self._line_tail = None
        self._url = b""
        self._headers = []
        self._content_length = None
        self._chunked = False
        self._expect = False
        self._upgrade = None
        self._host_seen = False
        self._type_seen = False
        self._forwarded = False
        if self.timer == _IDLE:
            self.timer = _HEAD
            self.deadline = self.loop.time() + self.config.header_timeout

    def on_url(self, url: bytes) -> None:
        self._url += url
        limit = self.config.limit_request_line
        if limit and len(self._url) > limit:
            raise _Reject(414, "Request-URI Too Long")

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._mid_head:
            self._on_trailer(name, value)
            return
        headers = self._headers
        if len(headers) >= self._max_fields:
            raise _Reject(431, "Too many request header fields")
        # The field line as sent: name ": " value CRLF (gunicorn's measure).
        if len(name) + len(value) + 4 > self._max_field_line:
            raise _Reject(431, "Request header field too large")
        if value and value[-1] in (9, 32):
            value = value.rstrip(b" \t")
        name = name.lower()
        if name in _NOTED:
            if name == b"content-length":
                self._content_length = int(value)  # llhttp validated the digits
            elif name == b"transfer-encoding":
                if value.lower() != b"chunked":  # a coding we cannot decode (RFC 9112 6.1)
                    raise _Reject(400, "Unsupported Transfer-Encoding")
                self._chunked = True
            elif name == b"expect":
                self._expect = value.lower() == b"100-continue"
            elif name == b"upgrade":
                self._upgrade = value
            elif name == b"host":
                if self._host_seen:
                    raise _Reject(400, "Duplicate Host header")
                self._host_seen = True
            elif name == b"content-type":
                if self._type_seen:
                    raise _Reject(400, "Duplicate Content-Type header")
                self._type_seen = True
            else:  # X-Forwarded-For / -Proto
                self._forwarded = True
        headers.append((name, value))

    def _on_trailer(self, name: bytes, value: bytes) -> None:
        """Trailer fields are not passed on, but limited as header fields are (431).

        Those that could smuggle framing are refused (400).
        """
        self._moved = True
        config = self.config
        self._trailers += 1
        if config.limit_request_fields and self._trailers > config.limit_request_fields:
            raise _Reject(431, "Too many request trailer fields")
        size = config.limit_request_field_size
        if size and len(name) + len(value) + 4 > size:
            raise _Reject(431, "Request trailer field too large")
        if name.lower() in _FORBIDDEN_TRAILERS:
            raise _Reject(400, "Forbidden trailer field")

    def on_chunk_header(self) -> None:
        self._moved = True
        self._chunk_open = True

    def on_chunk_complete(self) -> None:
        self._moved = True
        self._chunk_open = False

    def _check_framing(self, fed: int) -> None:
        """After a feed inside a chunked body: bound chunk lines and trailers.

        Body bytes, a complete chunk line or trailer field each make a callback.
        Parsers keep no position, so what is measured is whole feeds without
        one: over ``limit_request_field_size`` of them in a row is an endless
        chunk extension (400) or trailer field (431). A chunk opened with no
        data after it is the last one, whose trailers must end within
        ``header_timeout``, as a head must.
        """
        if self._moved:
            self._frame_bytes = 0
        else:
            self._frame_bytes += fed
            limit = self.config.limit_request_field_size or self._max_head
            if self._frame_bytes > limit:
                if self._chunk_open:
                    self._on_bad_input(431, "Request trailer field too large")
                else:
                    self._on_bad_input(400, "Chunk line too long")
                return
        if self._chunk_open and self.timer == _NO_TIMER:
            self.timer = _TRAILERS
            self.deadline = self.loop.time() + self.config.header_timeout

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._mid_head = False
        self._head_bytes = 0
        self._unhold()
        parser = self.parser
        config = self.config
        raw_method = parser.get_method()
        url = self._url
        line = b"%b %b HTTP/" % (raw_method, url)
        line_end = self._find_request_line(line)
        version = self._version_at(line_end, line) or parser.get_http_version()
        if version != "1.1" and version != "1.0":
            if version == "0.9":
                raise _Reject(400, "HTTP/0.9 is not supported")
            raise _Reject(505, "HTTP Version Not Supported")
        if self._chunked and version == "1.0":
            raise _Reject(400, "Transfer-Encoding on HTTP/1.0")
        if not self._host_seen and version == "1.1":
            raise _Reject(400, "Missing Host header")  # RFC 9112 3.2: a server MUST refuse
        # (GET compared first: most requests are, and a compare is cheaper than a hash.)
        method = "GET" if raw_method == b"GET" else _METHODS.get(raw_method)
        if method is None:
            method = raw_method.decode("ascii")
        limit = config.limit_request_line
        if limit and len(raw_method) + len(url) + 10 > limit:
            raise _Reject(414, "Request-URI Too Long")
        length = self._content_length
        body_limit = config.limit_request_body
        if length is not None and body_limit is not None and length > body_limit:
            raise _Reject(413, "Content Too Large")
        if url[:1] == b"/":
            path, _, query = url.partition(b"?")
        elif url == b"*":
            if method != "OPTIONS":
                raise _Reject(400, "Request target * is only for OPTIONS")
            path, query = url, b""
        elif method == "CONNECT":
            path, query = url, b""
        else:
            try:
                parsed = httptools.parse_url(url)
            except httptools.HttpParserInvalidURLError:
                raise _Reject(400, "Invalid request target") from None
            path, query = parsed.path or b"/", parsed.query or b""
            _use_target_host(self._headers, parsed.host, parsed.port)
        if line_end < 0:
            self._check_line_tail(line)
        headers = self._headers
        client, scheme = self.client, self.scheme
        if self._forwarded:
            proxies = self.state.proxies
            if proxies is not None:
                client, scheme = proxies.apply(headers, client, scheme)
        head = RequestHead(
            method, path, query, version, headers, scheme, client, self.server, config.root_path
        )
        keep_alive = parser.should_keep_alive()
        # llhttp flags an upgrade only for an Upgrade header or CONNECT: ask only then.
        if (self._upgrade is not None or method == "CONNECT") and parser.should_upgrade():
            upgrade = self._upgrade
            websocket = self.state.websocket
            if (
                upgrade is not None
                and upgrade.lower() == b"websocket"
                and websocket is not None
                and self.exchange is None
                and not self.pipeline
                and not self.state.draining
                and not length
                and not self._chunked
            ):
                # A handshake has no body (one that has is served as a plain request).
                self._ws_request = (raw_method, url, headers)
                return
            keep_alive = False  # bytes after this head are not HTTP we can parse
        exchange = HttpExchange(self, head, keep_alive, self._expect, length)
        if not length and not self._chunked:
            exchange.finish()  # no body: complete now, not at on_message_complete
        self.parsing = exchange
        self.timer = _NO_TIMER
        if self.exchange is None:
            self._start(exchange)
        else:
            self.pipeline.append(exchange)
            if len(self.pipeline) >= config.pipeline_depth:
                self.update_reading()

    def _find_request_line(self, line: bytes) -> int:
        """Where the version after ``line`` (``b"GET / HTTP/"``) begins in the feed; -1: not in it.

        The request line must have one space, exactly, between method, target and
        version (RFC 9112 3). llhttp skips extra spaces and gives no byte
        positions, so the line it parsed is looked for in what was fed; not found
        there, ``_check_line_tail`` decides. h11 refuses extra spaces itself.
        """
        feed, pos = self._feed, self._feed_pos
        # Usually the line starts right where the search would: a slice compare is
        # cheaper than bytes.find (a method call) then.
        if feed[pos : pos + len(line)] == line:
            found = pos
        else:
            found = feed.find(line, pos)
            if found < 0:
                return -1
        self._feed_pos = found + len(line)
        return self._feed_pos

    def _version_at(self, line_end: int, line: bytes) -> str | None:
        """The HTTP version written at ``line_end`` of the feed, if 1.1 or 1.0.

        Cheaper than the parser's ``get_http_version`` (a ``str.format`` per
        call). Only for a line at the very start of a feed that began between
        two messages: anywhere else the bytes found could be a request line
        inside the previous request's body.
        """
        if not self._fed_between or line_end != len(line):  # found at the feed's start
            return None
        version = self._feed[line_end : line_end + 3]
        if version == b"1.1":
            return "1.1"
        if version == b"1.0":
            return "1.0"
        return None

    def _check_line_tail(self, line: bytes) -> None:
        """The request line was not in this feed: look in the kept tail of the last one.

        A head that began in an earlier feed has its line in that feed's kept
        tail; not found there means extra spaces (400). A head whose line is
        further back than the tail goes unchecked.
        """
        feed = self._feed
        tail, self._line_tail = self._line_tail, None
        if tail is None or (len(tail) > len(line) and (tail + feed).find(line) < 0):
            raise _Reject(400, "Invalid request line")

    def on_body(self, body: bytes) -> None:
        self._moved = True
        self._progress += 1
        if self.timer == _TRAILERS:
            self.timer = _NO_TIMER  # it was a chunk's data that was late, not trailers
        self._chunk_open = False
        exchange = self.parsing
        if exchange is None:
            return
        exchange.feed(body)
        limit = self.config.limit_request_body
        if limit is not None and exchange._received > limit:
            raise _Reject(413, "Content Too Large")
        if exchange.buffered >= self.config.body_high_water and not self.reading_paused:
            self.update_reading()

    def on_message_complete(self) -> None:
        self._in_head = True
        self._moved = True
        self._chunk_open = False
        self._trailers = 0
        self._frame_bytes = 0
        if self.timer == _TRAILERS:
            self.timer = _NO_TIMER
        exchange = self.parsing
        if exchange is not None:
            self.parsing = None
            if not exchange.body_complete:  # a request without a body finished at its head
                exchange.finish()
            if exchange.finished and self.reading_paused and not self.closed:
                # Its response went out before the body was read to its end.
                self.update_reading()

    # Serving ------------------------------------------------------------------

    def _start(self, exchange: HttpExchange) -> None:
        state = self.state
        self.exchange = exchange
        limit = self.config.limit_concurrency
        if limit is not None and state.inflight >= limit:
            exchange.respond_error(503, "Service Unavailable")
            return
        serve_now = state.serve_now
        if serve_now is not None and exchange.body_complete:
            # The handler may take it from here without a task (see exchange.ServeNow).
            try:
                rest = serve_now(exchange)
            except Exception as exc:
                self._handler_failed(exchange, exc)
                return
            if rest is DEFERRED:
                state.deferred += 1
                state.request_started()
                return
            if rest is None:
                if not exchange.finished:
                    self._handler_returned(exchange)
                return
            assert not isinstance(rest, Deferred)
        else:
            rest = state.handler(exchange)
        state.request_started()
        # The task runs the handler itself; _task_done checks the outcome (no wrapper coroutine).
        task = self.loop.create_task(rest)
        self._handling[task] = exchange
        state.tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        """The handler's task ended: make sure a response (or a close) follows."""
        state = self.state
        state.tasks.discard(task)
        exchange = self._handling.pop(task)
        state.request_ended()
        if task.cancelled():
            exchange.abort()
        else:
            self._handler_outcome(exchange, task.exception())
        state.check_idle()

    def deferred_done(self, exchange: HttpExchange, error: BaseException | None) -> None:
        """The adapter finished an exchange ``serve_now`` took (``DEFERRED``)."""
        state = self.state
        state.deferred -= 1
        state.request_ended()
        self._handler_outcome(exchange, error)
        state.check_idle()

    def _handler_outcome(self, exchange: HttpExchange, exc: BaseException | None) -> None:
        """The handler ended: make sure a response (or a close) follows."""
        if exc is None:
            if not exchange.finished:
                self._handler_returned(exchange)
        elif isinstance(exc, Exception):
            self._handler_failed(exchange, exc)
        else:  # KeyboardInterrupt, SystemExit: not ours to swallow
            exchange.abort()
            raise exc

    def _handler_failed(self, exchange: HttpExchange, exc: Exception) -> None:
        """The handler raised: answer the error, or close if the head went out."""
        if isinstance(exc, ClientDisconnected):
            exchange.abort()
        elif isinstance(exc, RequestBodyError):
            if exchange.headers_sent:
                exchange.abort()
            else:
                exchange.respond_error(exc.status, str(exc) or "")
        else:
            if not self.closed:
                error_log.error(
                    "Exception in app for %s %s",
                    exchange.head.method,
                    exchange.head.raw_path,
                    exc_info=exc,
                )
            if exchange.headers_sent:
                exchange.abort()
            else:
                exchange.respond_error(500, "Internal Server Error")

    def _handler_returned(self, exchange: HttpExchange) -> None:
        """The handler returned without finishing its response."""
        if self.closed:
            exchange.abort()
        elif exchange.headers_sent:
            error_log.error("App returned without completing its response; closing")
            exchange.abort()
        else:
            error_log.error("App returned without sending a response")
            exchange.respond_error(500, "Internal Server Error")

    def response_done(self, exchange: HttpExchange) -> None:
        """The exchange's response is complete: log, then serve the next or close."""
        state = self.state
        state.count_response()
        self.requests += 1
        if state.access is not None:
            state.access.log(exchange)
        if self.exchange is exchange:
            self.exchange = None
        if self.closed:
            return
        if not exchange.keep_alive:
            self._close(linger=not exchange.body_complete)
            return
        if not exchange.body_complete:
            exchange.discard_rest()
        if self.pipeline:
            self._start(self.pipeline.popleft())
            self.update_reading()
            return
        if self._pending_error is not None:
            status, reason = self._pending_error
            self._send_error(status, reason)
            return
        if self._mid_head:
            self.timer = _HEAD
            self.deadline = self.loop.time() + self.config.header_timeout
        elif self.eof:
            self._close()
            return
        elif state.draining:
            # The stop came after this response promised keep-alive: its client may
            # send the next request right now; closing at once would lose it.
            self.timer = _IDLE
            self.drain()
        else:
            self.timer = _IDLE
            self.deadline = self.loop.time() + self.config.keep_alive
        if self.reading_paused:
            self.update_reading()

    # Bad input, upgrade, timers, drain ------------------------------------------

    def _on_bad_input(self, status: int, reason: str) -> None:
        self._dead = True
        exchange = self.parsing
        if exchange is not None:
            # The error is in this request's body: its reader gets it (400/413 or a close).
            self.parsing = None
            exchange.fail(_body_error(status, reason))
            if exchange.finished:
                self._close(linger=True)
            elif self.reading_paused:
                self.update_reading()
            return
        if self.exchange is None:
            self._send_error(status, reason)
        else:
            self._pending_error = (status, reason)

    def _send_error(self, status: int, reason: str) -> None:
        self.state.count_response()
        if status >= 500 or status == 408:
            error_log.info("%s answered %d: %s", _peer(self.client), status, reason)
        else:
            error_log.debug("%s answered %d: %s", _peer(self.client), status, reason)
        self.write(self.state.error_response(status, reason))
        self._close(linger=True)

    def _on_upgrade(self, rest: bytes) -> None:
        self._dead = True  # no more HTTP/1.1 on this connection
        request = self._ws_request
        websocket = self.state.websocket
        transport = self.transport
        if request is None or websocket is None or transport is None:
            return  # served as a plain request whose response closes the connection
        self._ws_request = None
        method, url, headers = request
        parts = [method, b" ", url, b" HTTP/1.1\r\n"]
        for name, value in headers:
            parts += (name, b": ", value, b"\r\n")
        parts.append(b"\r\n")
        parts.append(rest)
        # From here on the connection is the WebSocket protocol's, not ours.
        self.closed = True
        self.timer = _NO_TIMER
        self.state.connections.discard(self)
        self.state.check_idle()
        protocol = websocket.protocol()
        protocol.connection_made(transport)
        try:
            protocol.data_received(b"".join(parts))
        except Exception:  # the WebSocket protocol refused the handshake without closing
            error_log.exception("WebSocket handshake failed")
            transport.abort()
            return
        transport.set_protocol(protocol)
        self._release()

    def _claim_expired(self) -> None:
        """The first request did not come within the claim: a slow client, maybe many."""
        state = self.state
        state.silent_claims += 1
        self._release_claim()
        if state.load_changed is not None:
            state.load_changed()

    def _release_claim(self) -> None:
        claim = self._claim
        if claim is not None:
            self._claim = None
            claim.cancel()
            self.state.claims -= 1

    def check_timer(self, now: float) -> None:
        """Called by the server's ticker: enforce header, keep-alive and stall timeouts."""
        if self.config.stall_timeout and not self.closed:
            self._check_stall(now)
        timer = self.timer
        if timer == _NO_TIMER or now < self.deadline or self.closed:
            return
        self.timer = _NO_TIMER
        if timer == _HEAD and self._mid_head and self.exchange is None:
            self._dead = True
            self._send_error(408, "Request Timeout")
        elif timer == _TRAILERS and self.parsing is not None:
            self._on_bad_input(408, "Request trailers timeout")
        else:
            self._close()

    def _waits_on_client(self) -> bool:
        """True while only the client can move us on: a body we read, a response it must read.

        Not while we paused reading ourselves (the app is slow to take the body).
        """
        if self.writing_paused:
            return True
        return self.parsing is not None and not self.reading_paused and not self._dead

    def _check_stall(self, now: float) -> None:
        """Close a connection that made no progress for ``stall_timeout`` seconds.

        Closing wakes whatever waits on it (an app reading the body or writing
        the response gets ``ClientDisconnected``), so the app's thread is freed.
        """
        if not self._waits_on_client() or self._progress != self._progress_seen:
            self._progress_seen = self._progress
            self._stalled_since = now
            return
        if now - self._stalled_since < self.config.stall_timeout:
            return
        error_log.info(
            "%s made no progress for %.0fs; closed", _peer(self.client), now - self._stalled_since
        )
        transport = self.transport
        if transport is not None:
            transport.abort()

    def drain(self) -> None:
        """The worker is shutting down: close when idle, else after the current response.

        An idle keep-alive connection gets the drain's ``idle_grace`` (default
        ``drain_idle_grace``) to send one more request, answered with
        ``connection: close``: the longer, the smaller the chance of closing it
        just as its client sends one.
        """
        if self.closed:
            return
        if self.exchange is not None or self.pipeline or self._mid_head:
            return  # its response will carry ``connection: close``
        if self.requests == 0:
            # Accepted but silent so far: its first request is probably on the way.
            self.deadline = min(self.deadline, self.loop.time() + self.config.drain_fresh_timeout)
            return
        # Idle keep-alive: a request may already be in flight; give it a moment.
        self.timer = _IDLE
        grace = self.state.idle_grace
        grace = self.config.drain_idle_grace if grace is None else grace
        self.deadline = min(self.deadline, self.loop.time() + grace)

    def force_close(self) -> None:
        """Drain timed out: drop the connection now."""
        if self.transport is not None and not self.closed:
            self.transport.abort()

    # Transport helpers ---------------------------------------------------------

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not self.closed:
            transport.write(data)

    async def wait_writable(self) -> None:
        if self.closed:
            raise ClientDisconnected("client disconnected")
        if not self.writing_paused:
            return
        waiter: asyncio.Future[None] = self.loop.create_future()
        self._write_waiters.append(waiter)
        await waiter

    async def sendfile(self, fd: int, offset: int, count: int) -> None:
        """Send a file's bytes; ``os.sendfile`` via the loop where it can, else pread."""
        transport = self.transport
        if transport is None or self.closed:
            raise ClientDisconnected("client disconnected")
        sendfile = getattr(self.loop, "sendfile", None)
        if sendfile is not None and self.config.ssl is None:
            with os.fdopen(os.dup(fd), "rb") as file:
                try:
                    await sendfile(transport, file, offset, count, fallback=True)
                    return
                except NotImplementedError:
                    pass
                except (ConnectionError, RuntimeError) as exc:
                    if self.closed or transport.is_closing():
                        raise ClientDisconnected("client disconnected") from exc
                    raise
        end = offset + count
        while offset < end:
            data = os.pread(fd, min(256 * 1024, end - offset), offset)
            if not data:
                raise ValueError("file shorter than the count to send")
            offset += len(data)
            self.write(data)
            await self.wait_writable()

    def update_reading(self) -> None:
        """Pause reading while bodies or pipelined requests pile up; resume when drained."""
        transport = self.transport
        if transport is None or self.closed:
            return
        parsing = self.parsing
        pause = not self._dead and (
            len(self.pipeline) >= self.config.pipeline_depth
            or (parsing is not None and parsing.buffered >= self.config.body_high_water)
        )
        if pause and not self.reading_paused:
            self.reading_paused = True
            transport.pause_reading()
        elif not pause and self.reading_paused:
            self.reading_paused = False
            transport.resume_reading()

    def _close(self, linger: bool = False) -> None:
        """Close; with ``linger``, first half-close and drop input for a while.

        Closing a socket with unread input makes the kernel send RST, which can
        destroy the error response before the client reads it.
        """
        transport = self.transport
        if transport is None or self.closed or transport.is_closing():
            return
        self.timer = _NO_TIMER
        self._dead = True  # nothing after this is parsed (see on_message_begin)
        self._unhold()
        # A head's fields parsed so far go now, not after the linger (RequestHeads keep theirs).
        self._headers = []
        self._line_tail = None
        if linger and transport.can_write_eof():
            if self.reading_paused:
                self.reading_paused = False
                transport.resume_reading()
            try:
                transport.write_eof()
            except OSError:  # the peer is gone already (ENOTCONN): nothing to linger for
                transport.abort()
                return
            self.loop.call_later(_LINGER, transport.close)
        else:
            transport.close()
            if self.config.ssl is not None and self.state.draining:
                self.loop.call_later(_TLS_CLOSE_WAIT, self._abort_tls_close)

    def _abort_tls_close(self) -> None:
        """A TLS close waits for the client's ``close_notify``; an idle client holding
        its connection open never sends it, and would hold the drain until the
        master's timeout. Once what we wrote is flushed, drop the connection."""
        transport = self.transport
        if transport is None or self.closed:
            return
        if transport.get_write_buffer_size():
            self.loop.call_later(_TLS_CLOSE_WAIT, self._abort_tls_close)
            return
        transport.abort()


def _use_target_host(headers: list[tuple[bytes, bytes]], host: bytes | None, port: Any) -> None:
    """An absolute-form target names the host: it replaces ``Host`` (RFC 9112 3.2.2)."""
    if not host:
        return
    authority = host if not port else b"%b:%d" % (host, int(port))
    for index, (name, _) in enumerate(headers):
        if name == b"host":
            headers[index] = (b"host", authority)
            return
    headers.append((b"host", authority))


def _body_error(status: int, reason: str) -> RequestBodyError:
    """What a reader of the failed body gets; ``status`` is the answer if none went out yet."""
    if status == 413:
        return RequestBodyTooLarge(reason)
    error = RequestBodyError(reason)
    if status != RequestBodyError.status:
        error.status = status
    return error


def _address(value: Any) -> tuple[str, int] | None:
    if isinstance(value, tuple) and len(value) >= 2:
        return (str(value[0]), int(value[1]))
    return None


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "-"
