"""The engine's ``Exchange``: one request body in, one response out, on one connection.

The connection (``HttpProtocol``) feeds the body in with ``feed``/``finish``;
the adapter pulls it with ``receive`` and answers with ``send_head``/``write``/
``end``. The response head is held back until the first body bytes (or the end
of the current loop iteration) so a small response leaves in one ``send()``.
"""

from __future__ import annotations

import asyncio
import os
import re
from time import perf_counter
from typing import TYPE_CHECKING, Any, Final

from .errors import ClientDisconnected, RequestBodyError
from .exchange import Body, Exchange, ResponseHeaders
from .head import RequestHead
from .state import STATUS_LINES

if TYPE_CHECKING:
    from .protocol import HttpProtocol

_TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE: Final = re.compile(rb"[\x00\r\n]")
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_LAST_CHUNK: Final = b"0\r\n\r\n"
_BIG: Final = 64 * 1024  # above this, body bytes are not copied into a chunk frame
_KEEP_ALIVE_UNREAD: Final = 64 * 1024  # unread request body we are willing to discard to keep alive
_SENDFILE_CHUNK: Final = 256 * 1024

# Response framing.
_NONE: Final = 0
_LENGTH: Final = 1
_CHUNKED: Final = 2
_CLOSE: Final = 3


# What _scan_headers found: the validated header lines we pass on as they are, the
# app's Content-Length, whether it asked to close, whether it set Server and Date.
_Scanned = tuple[bytes, "int | None", bool, bool, bool]
# Apps answer with the same few header lists again and again: scan each once.
_SCANNED: Final[dict[tuple[tuple[bytes, bytes], ...], _Scanned]] = {}
_SCANNED_MAX: Final = 512  # bounded: headers with per-response values only churn it


def _check_status(status: int) -> None:
    """``ValueError`` unless ``status`` is a final status (an int, an ``HTTPStatus`` too)."""
    if not isinstance(status, int) or not 200 <= status <= 599:
        raise ValueError(f"invalid response status {status!r}")


def _scan_headers(headers: ResponseHeaders) -> _Scanned:
    """Validate the app's headers; ``ValueError`` for a bad name/value/length."""
    pairs: Any = tuple(headers)  # read once (any iterable); Any: see exchange.ResponseHeaders
    key: Any = pairs  # the cache key, if the pairs are hashable
    try:
        found = _SCANNED.get(key)
    except TypeError:  # unhashable (lists for pairs, bytearray values): no caching
        key = found = None
    if found is not None:
        return found
    lines: list[bytes] = []
    length: int | None = None
    close = own_server = own_date = False
    token = _TOKEN.fullmatch
    bad = _BAD_VALUE.search
    name: Any
    value: Any
    for name, value in pairs:
        if not token(name) or bad(value):
            raise ValueError(f"invalid response header {name!r}: {value!r}")
        lname = name.lower()
        if lname == b"content-length":
            value = value.strip()
            if not value.isdigit() or (length is not None and int(value) != length):
                raise ValueError(f"invalid content-length {value!r}")
            length = int(value)
            continue  # written once by _build_head, after the framing is decided
        elif lname == b"connection":
            if b"close" in value.lower():
                close = True
            continue  # ours decides
        elif lname == b"transfer-encoding":
            continue  # we frame the body ourselves
        elif lname == b"server":
            own_server = True
        elif lname == b"date":
            own_date = True
        lines.append(name)
        lines.append(b": ")
        lines.append(value.strip(b" \t"))  # as gunicorn: `Set-Cookie:  x` goes out as `x`
        lines.append(b"\r\n")
    found = (b"".join(lines), length, close, own_server, own_date)
    if key is not None:
        if len(_SCANNED) >= _SCANNED_MAX:
            _SCANNED.clear()
        _SCANNED[key] = found
    return found


class HttpExchange(Exchange):
    """One request/response pair; created by ``HttpProtocol`` once the head is valid."""

    __slots__ = (
        "_body_done",
        "_body_error",
        "_body_waiter",
        "_buffered",
        "_chunks",
        "_disc_waiter",
        "_discard",
        "_finished",
        "_framing",
        "_head_sent",
        "_no_body",
        "_pending_head",
        "_proto",
        "_received",
        "_remaining",
        "content_length",
        "expect_continue",
        "head",
        "keep_alive",
        "sent",
        "started",
        "status",
    )

    def __init__(
        self,
        proto: HttpProtocol,
        head: RequestHead,
        keep_alive: bool,
        expect_continue: bool,
        content_length: int | None,
    ) -> None:
        self._proto = proto
        self.head = head
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.content_length = content_length
        self.status = 0
        self.sent = 0  # response body bytes, for the access log
        self.started = perf_counter()
        self._chunks: list[bytes] = []  # a list: cheaper to make than a deque, drained whole
        self._buffered = 0
        self._received = 0
        self._body_done = False
        self._body_error: RequestBodyError | None = None
        self._body_waiter: asyncio.Future[None] | None = None
        self._disc_waiter: asyncio.Future[None] | None = None
        self._discard = False
        self._head_sent = False
        self._pending_head: bytes | None = None
        self._finished = False
        self._framing = _NONE
        self._remaining = 0
        self._no_body = False

    # Request body: the connection's side --------------------------------

    def feed(self, data: bytes) -> None:
        """Body bytes parsed for this request (called by the connection)."""
        self._received += len(data)
        if self._discard:
            return
        self._chunks.append(data)
        self._buffered += len(data)
        self._wake_body()

    def finish(self) -> None:
        """The request body is complete."""
        self._body_done = True
        self._wake_body()

    def fail(self, error: RequestBodyError) -> None:
        """The body turned out invalid or too large; the next ``receive`` raises."""
        self._body_error = error
        self.keep_alive = False
        self._wake_body()

    def discard_rest(self) -> None:
        """The response is done but the body is not: drop what is left of it."""
        self._discard = True
        self._chunks.clear()
        self._buffered = 0

    def disconnected(self) -> None:
        """The client left: wake everything that waits on it."""
        self._wake_body()
        self._wake_disconnect()

    def client_gone(self) -> None:
        """The client half-closed: as far as we can tell, it is gone."""
        self._wake_disconnect()

    def _wake_body(self) -> None:
        waiter = self._body_waiter
        if waiter is not None:
            self._body_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _wake_disconnect(self) -> None:
        waiter = self._disc_waiter
        if waiter is not None:
            self._disc_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    @property
    def buffered(self) -> int:
        return self._buffered

    @property
    def body_complete(self) -> bool:
        return self._body_done

    @property
    def finished(self) -> bool:
        """The response is complete (ended, aborted or answered with an error)."""
        return self._finished

    # Request body: the adapter's side ------------------------------------

    async def receive(self) -> bytes:
        proto = self._proto
        while True:
            if self._body_error is not None:
                raise self._body_error
            chunks = self._chunks
            if chunks:
                data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self._buffered = 0
                if proto.reading_paused:
                    proto.update_reading()
                return data
            if self._body_done:
                return b""
            if proto.closed:
                raise ClientDisconnected("client disconnected")
            if self.expect_continue:
                self.expect_continue = False
                if not self._head_sent:
                    proto.write(_CONTINUE)
            waiter = self._body_waiter = proto.loop.create_future()
            await waiter

    async def wait_disconnect(self) -> None:
        """Return once the client is gone, or the response is complete.

        After the response nothing more can reach the app, which is what ASGI's
        ``http.disconnect`` means there.
        """
        proto = self._proto
        if proto.closed or proto.eof or self._finished:
            return
        waiter = self._disc_waiter
        if waiter is None:
            waiter = self._disc_waiter = self._proto.loop.create_future()
        await asyncio.shield(waiter)

    # Response ------------------------------------------------------------

    @property
    def headers_sent(self) -> bool:
        return self._head_sent

    async def send_head(
        self, status: int, headers: ResponseHeaders, status_line: bytes | None = None
    ) -> None:
        if self._head_sent:
            raise RuntimeError("response head already sent")
        if self._proto.closed:
            raise ClientDisconnected("client disconnected")
        self._pending_head = self._build_head(status, headers, status_line)
        self._head_sent = True
        self.status = status
        self._proto.loop.call_soon(self._flush_head)

    def check_head(self, status: int, headers: ResponseHeaders) -> None:
        _check_status(status)
        _scan_headers(headers)  # cached: _build_head finds it again for free

    def send_now(
        self, status: int, headers: ResponseHeaders, body: Body, status_line: bytes | None = None
    ) -> bool:
        proto = self._proto
        if self._head_sent or proto.closed or proto.writing_paused:
            return False
        if type(body) is not bytes:
            body = bytes(body)  # a bytearray or memoryview from the app
        head = self._build_head(status, headers, status_line)
        framing = self._framing
        size = len(body)
        if framing == _LENGTH:
            if size > self._remaining:
                raise ValueError("response body longer than its content-length")
            if size < self._remaining:
                self.keep_alive = False  # as in end(): only the close tells the client
        self._head_sent = True
        self.status = status
        if self._no_body or framing == _NONE:
            proto.write(head)
            size = 0
        elif framing == _CHUNKED:
            if size:
                proto.write(b"%b%x\r\n%b\r\n0\r\n\r\n" % (head, size, body))
            else:
                proto.write(head + _LAST_CHUNK)
        elif size < _BIG:
            proto.write(head + body)
        else:
            proto.write(head)
            proto.write(body)
        self.sent = size
        self._complete()
        return True

    def _build_head(
        self, status: int, headers: ResponseHeaders, status_line: bytes | None
    ) -> bytes:
        _check_status(status)
        proto = self._proto
        state = proto.state
        fields, length, close, own_server, own_date = _scan_headers(headers)
        parts = [status_line or STATUS_LINES[status], fields]
        head = self.head
        version_10 = head.http_version == "1.0"
        if status in (204, 304) or head.method == "HEAD":
            self._no_body = True
            self._framing = _NONE
            if length is not None and status != 204:
                parts.append(b"content-length: %d\r\n" % length)
        elif length is not None:
            self._framing = _LENGTH
            self._remaining = length
            parts.append(b"content-length: %d\r\n" % length)
        elif version_10:
            self._framing = _CLOSE
            close = True
        else:
            self._framing = _CHUNKED
            parts.append(b"transfer-encoding: chunked\r\n")
        if not self._body_done and self._body_error is None:
            # Keep the connection only if what is left of the body is small and coming.
            cl = self.content_length
            if self.expect_continue or cl is None or cl - self._received > _KEEP_ALIVE_UNREAD:
                close = True
        keep = self.keep_alive and not close and not state.draining
        self.keep_alive = keep
        if not keep:
            parts.append(b"connection: close\r\n")
        elif version_10:
            parts.append(b"connection: keep-alive\r\n")
        if not own_server:
            parts.append(state.server_line)
        if not own_date:
            parts.append(state.date_line)
        parts.append(b"\r\n")
        return b"".join(parts)

    def _flush_head(self) -> None:
        head = self._pending_head
        if head is not None:
            self._pending_head = None
            self._proto.write(head)

    async def write(self, data: Body) -> None:
        if not self._head_sent:
            raise RuntimeError("write() before send_head()")
        if self._finished:
            if self._proto.closed:
                raise ClientDisconnected("client disconnected")
            raise RuntimeError("write() after end()")
        proto = self._proto
        if proto.closed:
            raise ClientDisconnected("client disconnected")
        if not data or self._no_body:
            return
        if type(data) is not bytes:
            data = bytes(data)  # a bytearray or memoryview from the app
        size = len(data)
        self.sent += size
        framing = self._framing
        if framing == _LENGTH:
            if size > self._remaining:
                raise ValueError("response body longer than its content-length")
            self._remaining -= size
        head = self._pending_head
        if head is not None:
            self._pending_head = None
        else:
            head = b""
        if framing == _CHUNKED:
            if size < _BIG:
                proto.write(b"%b%x\r\n%b\r\n" % (head, size, data))
            else:
                proto.write(b"%b%x\r\n" % (head, size))
                proto.write(data)
                proto.write(b"\r\n")
        elif head and size < _BIG:
            proto.write(head + data)
        else:
            if head:
                proto.write(head)
            proto.write(data)
        if proto.writing_paused:
            await proto.wait_writable()

    async def sendfile(self, fd: int, offset: int, count: int | None) -> None:
        if not self._head_sent:
            raise RuntimeError("sendfile() before send_head()")
        proto = self._proto
        if proto.closed:
            raise ClientDisconnected("client disconnected")
        self._flush_head()
        if self._no_body:
            return
        if count is None:
            count = max(0, os.fstat(fd).st_size - offset)
        if count == 0:
            return
        if self._framing == _LENGTH:
            if count > self._remaining:
                raise ValueError("response body longer than its content-length")
            self._remaining -= count
        self.sent += count
        chunked = self._framing == _CHUNKED
        if chunked:
            proto.write(b"%x\r\n" % count)
        await proto.sendfile(fd, offset, count)
        if chunked:
            proto.write(b"\r\n")

    async def end(self) -> None:
        if self._finished:
            return
        if not self._head_sent:
            raise RuntimeError("end() before send_head()")
        proto = self._proto
        head = self._pending_head
        self._pending_head = None
        out = head or b""
        if self._framing == _CHUNKED:
            out += _LAST_CHUNK
        elif self._framing == _LENGTH and self._remaining:
            # The app promised more than it sent: the client can only tell by the close.
            self.keep_alive = False
        if out and not proto.closed:
            proto.write(out)
        self._complete()

    def abort(self) -> None:
        if self._finished:
            return
        self._pending_head = None
        self.keep_alive = False
        self._complete()

    def respond_error(self, status: int, reason: str = "") -> None:
        """Answer with a plain error and close (nothing of a response was sent yet)."""
        if self._finished:
            return
        self.status = status
        self.keep_alive = False
        self._head_sent = True
        proto = self._proto
        if not proto.closed:
            proto.write(proto.state.error_response(status, reason))
        self._complete()

    def handler_done(self, error: BaseException | None) -> None:
        self._proto.deferred_done(self, error)

    def _complete(self) -> None:
        self._finished = True
        self._wake_disconnect()
        self._proto.response_done(self)
