"""The contract between the HTTP/1.1 engine and the two app adapters (WSGI, ASGI).

One ``Exchange`` is one request and its response on one connection. The engine
(``kamisama_server.http.protocol``) creates it once the request head is parsed
and valid, and hands it to an adapter. Adapters never touch sockets or the
parser: everything they need is here (the request head in ``head.py``, the
errors in ``errors.py``), so both interfaces obey the same limits, keep-alive,
pipelining and drain rules.

All methods are coroutines on the worker's event loop. A WSGI adapter running
the app in a thread reaches them with ``asyncio.run_coroutine_threadsafe``.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from .head import RequestHead

# What an app may answer with: response header pairs as any iterable of
# (name, value) byte strings (ASGI allows lists for pairs and bytearray values)
# and a body as any bytes-like object. Typed loosely on purpose: the compiled
# build (mypyc, see README "Speed") checks declared types at run time and must
# take whatever the Python build takes.
ResponseHeaders = Iterable[Any]
Body = bytes | bytearray | memoryview


class Exchange(abc.ABC):
    """One request/response pair; implemented by the engine, used by adapters."""

    head: RequestHead

    @property
    @abc.abstractmethod
    def headers_sent(self) -> bool:
        """True once ``send_head`` succeeded: after that an error can only close."""

    @abc.abstractmethod
    async def receive(self) -> bytes:
        """The next chunk of the request body; ``b""`` once it is complete.

        The first call sends ``100 Continue`` when the client asked for it.
        Raises ``RequestBodyError`` (400) / ``RequestBodyTooLarge`` (413) for a
        body that is invalid or over the limit, ``ClientDisconnected`` if the
        client left.
        """

    @property
    def body_complete(self) -> bool:
        """True once the whole request body arrived; the next ``receive`` then drains it.

        Optional for implementations (the default says "don't know"): it only
        saves an adapter one ``receive`` call that would return ``b""``.
        """
        return False

    @abc.abstractmethod
    async def wait_disconnect(self) -> None:
        """Return once the client has disconnected (for ASGI ``http.disconnect``).

        The engine also returns once the response is complete: nothing more can
        reach the client then, which is what ASGI's ``http.disconnect`` means.
        """

    @abc.abstractmethod
    async def send_head(
        self, status: int, headers: ResponseHeaders, status_line: bytes | None = None
    ) -> None:
        """Validate and send the status line and headers.

        ``status_line`` (``b"HTTP/1.1 299 Custom Thing\\r\\n"``, already checked
        by the adapter) replaces the standard line for ``status``.

        Raises ``ValueError`` for an invalid status or a header name/value with
        CR, LF or NUL (the adapter then answers 500). The engine adds ``Date``,
        ``Server`` and ``Connection`` and picks the framing: the app's
        ``Content-Length``, else chunked on HTTP/1.1, else close-delimited.
        """

    def check_head(self, status: int, headers: ResponseHeaders) -> None:
        """Raise ``ValueError`` now for what ``send_head`` would refuse later.

        For adapters that hold the head back until the body is known (ASGI
        allows that) but want the app to see its error where it made it.
        Optional for implementations (the default checks nothing).
        """
        return None

    def send_now(
        self, status: int, headers: ResponseHeaders, body: Body, status_line: bytes | None = None
    ) -> bool:
        """Send a whole response (head, ``body``, end) at once, without waiting.

        Returns False, having sent nothing, when that cannot be done without
        waiting (the client reads slowly, or the head already went out): the
        adapter then goes the ``send_head``/``write``/``end`` way. Raises
        ``ValueError`` like ``send_head``. Optional for implementations (the
        default always says False); the engine's saves a coroutine per call.
        """
        return False

    @abc.abstractmethod
    async def write(self, data: Body) -> None:
        """Send body bytes, waiting while the transport is paused (backpressure)."""

    @abc.abstractmethod
    async def sendfile(self, fd: int, offset: int, count: int | None) -> None:
        """Send ``count`` bytes of an open file (``os.sendfile`` where possible)."""

    @abc.abstractmethod
    async def end(self) -> None:
        """Finish the response (last chunk); the connection may serve the next request."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Close the connection now: an error after the head was sent."""

    def respond_error(self, status: int, reason: str = "") -> None:
        """Answer a plain error and close; only before any of the response went out."""
        raise NotImplementedError

    def handler_done(self, error: BaseException | None) -> None:
        """For an exchange ``serve_now`` took (``DEFERRED``): the adapter is done with it.

        Called once, on the loop, after ``end()``/``abort()`` (or with the
        error the handler raised, which the engine answers as for a handler task).
        """
        raise NotImplementedError


AppHandler = Callable[[Exchange], Coroutine[Any, Any, None]]
"""What an adapter gives the engine: serve one exchange, then return.

The engine guarantees ``end()`` or ``abort()`` happened when the handler
returns (it sends 500 itself if the handler raised before ``send_head``).
"""


class Threaded(abc.ABC):
    """An ``AppHandler`` whose requests each need one of its app threads (WSGI).

    The engine reads ``capacity`` at each change of its load and stops taking
    connections while no thread is free, so the kernel hands them to a sibling.
    """

    @property
    @abc.abstractmethod
    def capacity(self) -> int:
        """Requests it can run at once now."""


class Deferred:
    """The type of ``DEFERRED``."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "DEFERRED"


DEFERRED = Deferred()
"""What ``serve_now`` returns when it took the exchange and will call ``handler_done``."""

ServeNow = Callable[[Exchange], "Coroutine[Any, Any, None] | Deferred | None"]
"""Optional, as an adapter's ``serve_now`` attribute: serve without a task.

For an exchange whose request body is already complete the engine calls
``adapter.serve_now(exchange)`` instead of the ``AppHandler``, on the loop,
inside the parser's callback. It must never block. It returns None once the
exchange is answered, a coroutine that finishes it (the engine runs that as
the handler's task), or ``DEFERRED``: the adapter handed the work elsewhere
(the WSGI adapter: to an app thread) and calls ``exchange.handler_done()`` on
the loop once it has answered. Raising is handled as for ``AppHandler``.
"""
