"""An ``httptools.HttpRequestParser`` look-alike built on h11: the fallback parser.

``protocol.py`` drives httptools: it feeds bytes and gets callbacks
(``on_message_begin``, ``on_url``, ``on_header``, ``on_headers_complete``,
``on_body``, ``on_message_complete``, and ``on_chunk_header``/``on_chunk_complete``
if it has them), asks ``get_method``/``get_http_version``/``should_keep_alive``/
``should_upgrade``, and catches httptools' exceptions. :class:`H11RequestParser`
gives it exactly that over h11, so the engine cannot tell which one it runs on.

h11 is a connection state machine that waits for our response before it reads
the next request; the engine parses pipelined requests ahead of its answers, so
each request gets a fresh ``h11.Connection``, fed with what the last one left.
h11 is handed the data in 8 KB slices, so that leftover stays small: many tiny
pipelined requests in one read cost linear time, not a copy of the rest each.

Where h11 and llhttp judge a request differently, this class gives llhttp's
verdict, because the engine's rules (issue 3) and its tests are written against
it. The parsing stays h11's; these are checks on what it parsed:

- blank lines before a request are skipped (RFC 9112 2.2; h11 refuses them);
- an HTTP/1.1 request without ``Host`` is parsed as llhttp does (h11 refuses
  it): again, with an empty ``Host`` that the callbacks never see; the engine
  then refuses it itself (400, RFC 9112 3.2), on either parser;
- refused although h11 accepts them: a line ending in a bare LF in the head
  or in the trailers,
  obsolete line folding (h11 unfolds),
  ``Content-Length`` sent twice or as a list (h11 merges equal ones),
  ``Content-Length`` together with ``Transfer-Encoding`` (h11 ignores the
  length), a method outside llhttp's list (h11 takes any token), a chunk size
  over 64 bits (h11 reads up to 80), control bytes in a header value (h11
  refuses only NUL, CR, LF and the like);
- keep-alive and upgrade are llhttp's: HTTP/1.0 keeps the connection with
  ``Connection: keep-alive`` (h11 never does); an upgrade needs ``Upgrade`` and
  ``Connection: upgrade``, or ``CONNECT``, and happens right after the head;
  bytes after a request that closes the connection are an error.

Differences that remain (h11's verdict stands; h11 consumes chunk lines itself):
a chunk size followed by whitespace, and any byte after ``;`` in a chunk line
(a bare CR too) are accepted;
``Transfer-Encoding`` with a coding before ``chunked`` (``gzip, chunked``) and
extra spaces in the request line are refused, which llhttp passes (the engine
refuses both itself, so the server's answer is the same). The request line is
not seen until its line ends, so an endless one meets the head-size limit
(431), not 414.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import h11
from h11._receivebuffer import ReceiveBuffer

try:  # The engine catches httptools' classes; raise the very same ones when it is there.
    from httptools import (
        HttpParserCallbackError,
        HttpParserError,
        HttpParserInvalidMethodError,
        HttpParserInvalidURLError,
        HttpParserUpgrade,
    )
except ImportError:  # pragma: no cover - exercised where httptools is not installed

    class HttpParserError(Exception):  # type: ignore[no-redef]
        """The request is not valid HTTP/1.x."""

    class HttpParserCallbackError(HttpParserError):  # type: ignore[no-redef]
        """A callback raised; the exception it raised is the ``__context__``."""

    class HttpParserInvalidMethodError(HttpParserError):  # type: ignore[no-redef]
        """The method is not one llhttp knows."""

    class HttpParserInvalidURLError(HttpParserError):  # type: ignore[no-redef]
        """``parse_url`` could not split the URL."""

    class HttpParserUpgrade(Exception):  # type: ignore[no-redef]
        """The connection switches protocol; ``args[0]`` is where in the fed data."""


__all__ = [
    "METHODS",
    "H11RequestParser",
    "HttpParserCallbackError",
    "HttpParserError",
    "HttpParserInvalidMethodError",
    "HttpParserInvalidURLError",
    "HttpParserUpgrade",
    "parse_url",
]

# The request methods llhttp accepts on an HTTP/1.x request line.
METHODS = frozenset(
    b"DELETE GET HEAD POST PUT CONNECT OPTIONS TRACE COPY LOCK MKCOL MOVE PROPFIND "
    b"PROPPATCH SEARCH UNLOCK BIND REBIND UNBIND ACL REPORT MKACTIVITY CHECKOUT MERGE "
    b"M-SEARCH NOTIFY SUBSCRIBE UNSUBSCRIBE PATCH PURGE MKCALENDAR LINK UNLINK SOURCE "
    b"QUERY".split()
)
_METHOD_ROOM = 1 + max(len(method) for method in METHODS)  # a space must come by then
_MAX_CHUNK = (1 << 64) - 1
_SLICE = 8192  # bytes handed to h11 at a time
_HEAD_END = re.compile(rb"\n\r?\n")  # where h11 ends a head (its blank-line rule)
_BARE_LF = re.compile(rb"(?<!\r)\n")  # llhttp wants CRLF line ends; h11 takes a bare LF
_FOLD = re.compile(rb"\n[ \t]")  # a line starting with whitespace continues the last one
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # in a field value: only HTAB may be
_CONTENT_LENGTH = re.compile(rb"\ncontent-length:([^\n]*)", re.IGNORECASE)
_MISSING_HOST = "Missing mandatory Host: header"
_PLACEHOLDER_HOST = b"Host: \r\n"
_HOST_PORT = re.compile(rb"(.*[^\]]|\[.*\]):(\d+)")


class _UrlParts:
    """What ``parse_url`` gives the engine: the path, the query, the host and port."""

    __slots__ = ("host", "path", "port", "query")

    def __init__(self, path: bytes, query: bytes, host: bytes, port: int | None) -> None:
        self.path = path
        self.query = query
        self.host = host
        self.port = port


def parse_url(url: bytes) -> _UrlParts:
    """Split an absolute-form request target, as ``httptools.parse_url`` would for us."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise HttpParserInvalidURLError(str(exc)) from None
    if not parts.scheme or not parts.netloc:
        raise HttpParserInvalidURLError("not an absolute URL")
    host, port = parts.netloc.rpartition(b"@")[2], None
    match = _HOST_PORT.fullmatch(host)
    if match is not None:
        host, port = match[1], int(match[2])
    return _UrlParts(parts.path, parts.query, host, port)


class _LineEndBuffer(ReceiveBuffer):
    """h11's receive buffer, noting whether the lines it last took all ended in CRLF.

    h11 splits a head or trailer section on LF and drops the CRs, so the raw
    bytes are gone by the time the trailers are reported: what the lines and
    the bytes taken say is kept instead. (A private class of h11: if it moves,
    the import fails loudly.)
    """

    bare_lf = False

    def maybe_extract_lines(self) -> list[bytearray] | None:
        before = len(self)
        lines = super().maybe_extract_lines()
        if lines is not None:
            # Each line and the blank one after them lost exactly "\r\n" if it had one.
            taken = before - len(self)
            self.bare_lf = taken != sum(map(len, lines)) + 2 * (len(lines) + 1)
        return lines


def _connection(max_buffer: int) -> h11.Connection:
    """A fresh server-side h11 connection whose buffer notes bare LFs (see _LineEndBuffer)."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_buffer)
    conn._receive_buffer = _LineEndBuffer()
    return conn


class H11RequestParser:
    """Parses requests with h11 and reports them through httptools' callbacks."""

    def __init__(self, callbacks: Any, max_head: int = 1 << 20) -> None:
        self._cb = callbacks
        self._on_chunk_header = getattr(callbacks, "on_chunk_header", None)
        self._on_chunk_complete = getattr(callbacks, "on_chunk_complete", None)
        # h11 refuses a head larger than this; the engine answers 431 well before.
        self._max_buffer = max_head + (1 << 20)
        self._conn: h11.Connection | None = None  # None between requests
        self._carry = b""  # what the last request's connection left over
        self._data = b""  # being fed
        self._pos = 0  # how much of it h11 has been given
        self._head = bytearray()  # this request's bytes until its head is parsed
        self._head_done = False
        self._host_added = False
        self._method_checked = False
        self._failed: str | None = None
        self._method = b""
        self._version = "1.1"
        self._keep_alive = True
        self._upgrade = False
        self._chunked = False
        self._new_chunk = True
        self._last_chunk_told = False

    # What the engine asks about the current request -----------------------------------------

    def get_method(self) -> bytes:
        return self._method

    def get_http_version(self) -> str:
        return self._version

    def should_keep_alive(self) -> bool:
        return self._keep_alive

    def should_upgrade(self) -> bool:
        return self._upgrade

    # Feeding -----------------------------------------------------------------------------------

    def feed_data(self, data: bytes) -> None:
        """Parse ``data``; callbacks run as requests (and their parts) complete."""
        if self._failed is not None:
            raise HttpParserError(self._failed)
        self._data, self._pos = data, 0
        try:
            self._run()
        except HttpParserCallbackError as exc:
            self._failed = str(exc)
            raise
        except h11.RemoteProtocolError as exc:
            self._fail(str(exc))
        finally:
            self._data = b""

    def _fail(self, reason: str, error: type[HttpParserError] = HttpParserError) -> None:
        self._failed = reason
        raise error(reason)

    def _call(self, callback: Any, *args: Any) -> None:
        """Run an engine callback; what it raises reaches the engine as httptools wraps it."""
        try:
            callback(*args)
        except Exception:
            name = getattr(callback, "__name__", "a")
            raise HttpParserCallbackError(f"the {name} callback failed") from None

    def _run(self) -> None:
        """Turn h11's events into callbacks until the fed data is used up.

        Each pass handles an event or gives h11 more bytes, so the loop ends.
        """
        while True:
            conn = self._conn
            if conn is None:
                if not self._begin():
                    return
                continue
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                if str(exc) != _MISSING_HOST or self._host_added:
                    raise
                self._reparse_with_host()
                continue
            if event is h11.NEED_DATA:
                if not self._head_done and not self._method_checked:
                    self._check_method_early()
                elif self._chunked and not self._last_chunk_told:
                    self._tell_last_chunk(conn)
                if not self._feed(conn):
                    return
            elif isinstance(event, h11.Request):
                self._on_request(event, conn)
            elif isinstance(event, h11.Data):
                self._on_data(event, conn)
            elif isinstance(event, h11.EndOfMessage):
                self._on_end(event, conn)
            else:  # PAUSED or ConnectionClosed cannot come before EndOfMessage
                self._fail(f"unexpected h11 event {event!r}")

    def _feed(self, conn: h11.Connection) -> bool:
        """Give h11 the next slice of the data; False when there is none left.

        Slices keep what a finished request leaves over (and the next request's
        connection copies) small, so many tiny pipelined requests cost linear time.
        """
        start = self._pos
        piece = self._data[start : start + _SLICE]
        if not piece:
            return False
        self._pos = start + len(piece)
        if not self._head_done:
            self._head += piece
        conn.receive_data(piece)
        return True

    def _begin(self) -> bool:
        """Start the next request once a byte of it is here (blank lines before it are skipped)."""
        carry = self._carry.lstrip(b"\r\n")
        self._carry = b""
        if not carry:
            data = self._data
            while self._pos < len(data):  # each pass moves on by up to a slice
                piece = data[self._pos : self._pos + _SLICE]
                rest = piece.lstrip(b"\r\n")
                self._pos += len(piece) - len(rest)
                if rest:
                    break
            else:
                return False
        if not self._keep_alive:
            self._fail("Data after `Connection: close`")  # as llhttp: the last one closed
        conn = self._conn = _connection(self._max_buffer)
        self._head = bytearray(carry)
        self._head_done = False
        self._host_added = False
        self._method_checked = False
        if carry:
            conn.receive_data(carry)
        self._call(self._cb.on_message_begin)
        return True

    def _check_method_early(self) -> None:
        """Refuse an unknown method once it is here, as llhttp does, not when the head ends."""
        head = self._head
        space = head.find(b" ", 0, _METHOD_ROOM)
        if space < 0:
            if len(head) >= _METHOD_ROOM:
                self._fail("Invalid method encountered", HttpParserInvalidMethodError)
            return
        self._method_checked = True
        if bytes(head[:space]) not in METHODS:
            self._fail("Invalid method encountered", HttpParserInvalidMethodError)

    def _reparse_with_host(self) -> None:
        """HTTP/1.1 without Host: llhttp parses it, so parse it with one the engine won't see."""
        head = self._head
        line_end = head.index(b"\n") + 1
        self._conn = _connection(self._max_buffer)
        self._conn.receive_data(bytes(head[:line_end]) + _PLACEHOLDER_HOST + head[line_end:])
        self._host_added = True

    def _on_request(self, event: h11.Request, conn: h11.Connection) -> None:
        head = self._head
        match = _HEAD_END.search(head)
        assert match is not None, "h11 parsed a head that has no end"
        raw = bytes(head[: match.end()])
        method = event.method
        if method not in METHODS:
            self._fail("Invalid method encountered", HttpParserInvalidMethodError)
        if _BARE_LF.search(raw):
            self._fail("Expected CRLF")
        if _FOLD.search(raw):
            self._fail("Obsolete line folding is not allowed")
        lengths = _CONTENT_LENGTH.findall(raw)
        if len(lengths) > 1 or (lengths and b"," in lengths[0]):
            self._fail("Duplicate Content-Length")
        headers = event.headers.raw_items()
        connection: list[bytes] = []
        upgrade = chunked = False
        for name, value in headers:
            if _CONTROL.search(value):
                self._fail("Invalid header value char")
            lower = name.lower()
            if lower == b"connection":
                connection += (token.strip().lower() for token in value.split(b","))
            elif lower == b"upgrade":
                upgrade = True
            elif lower == b"transfer-encoding":
                chunked = True
        if chunked and lengths:
            self._fail("Content-Length can't be present with Transfer-Encoding")
        self._method = method
        version = self._version = event.http_version.decode("ascii")
        if version[0] != "0" and version[2] != "0":  # llhttp's rule: 1.1 and up
            self._keep_alive = b"close" not in connection
        else:
            self._keep_alive = b"keep-alive" in connection
        self._upgrade = method == b"CONNECT" or (upgrade and b"upgrade" in connection)
        self._chunked = chunked
        self._new_chunk = True
        self._last_chunk_told = False
        self._head_done = True
        self._head = bytearray()
        cb = self._cb
        self._call(cb.on_url, event.target)
        for name, value in headers:
            if self._host_added and name.lower() == b"host":
                continue
            self._call(cb.on_header, name, value)
        self._call(cb.on_headers_complete)
        if self._upgrade:
            # llhttp hands the connection over right after the head: a body is not read.
            self._call(cb.on_message_complete)
            rest, _ = conn.trailing_data
            self._conn = None
            self._failed = "upgraded"
            raise HttpParserUpgrade(self._pos - len(rest))

    def _on_data(self, event: h11.Data, conn: h11.Connection) -> None:
        if self._chunked and self._new_chunk:
            # h11's chunk_start is lost when a chunk's header and data come apart, so we
            # track chunks ourselves. The chunk's announced size is the first piece's
            # length plus what h11 still expects (a private attribute: if h11 renames it,
            # test_h11_fallback's overflow case fails rather than this check going quiet).
            self._new_chunk = False
            remaining = getattr(getattr(conn, "_reader", None), "_bytes_in_chunk", 0)
            if len(event.data) + remaining > _MAX_CHUNK:
                self._fail("Chunk size overflow")
            if self._on_chunk_header is not None:
                self._call(self._on_chunk_header)
        self._call(self._cb.on_body, bytes(event.data))
        if event.chunk_end:
            self._new_chunk = True
            if self._on_chunk_complete is not None:
                self._call(self._on_chunk_complete)

    def _tell_last_chunk(self, conn: h11.Connection) -> None:
        """h11 waits for the trailers: report the last chunk now, as llhttp does.

        The engine times and bounds trailers from there. h11 has no event for it,
        so its reader's private flag is read (if h11 renames it, the trailer tests
        of test_h11_http_bad_input fail rather than this going quiet).
        """
        if getattr(getattr(conn, "_reader", None), "_reading_trailer", False):
            self._last_chunk_told = True
            if self._on_chunk_header is not None:
                self._call(self._on_chunk_header)

    def _on_end(self, event: h11.EndOfMessage, conn: h11.Connection) -> None:
        cb = self._cb
        buffer = conn._receive_buffer
        if self._chunked and isinstance(buffer, _LineEndBuffer) and buffer.bare_lf:
            self._fail("Missing expected CR after header value")  # llhttp's words
        # The last, empty chunk has no Data event; llhttp reports it around the trailers.
        if self._chunked and self._on_chunk_header is not None and not self._last_chunk_told:
            self._call(self._on_chunk_header)
        for name, value in event.headers.raw_items():
            self._call(cb.on_header, name, value)
        if self._chunked and self._on_chunk_complete is not None:
            self._call(self._on_chunk_complete)
        self._call(cb.on_message_complete)
        self._carry, _ = conn.trailing_data  # at most a slice: the next request's start
        self._conn = None
