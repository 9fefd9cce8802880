"""``HttpServer``: serve an ``AppHandler`` on listening sockets the master bound.

The worker calls ``start(sockets)`` in its ``run`` and ``drain()`` in its
``shutdown``. We never bind, listen or close the caller's sockets.

We accept ourselves (a reader callback per listening socket) rather than via
``loop.create_server``: closing an asyncio ``Server`` drops connections it had
accepted but not yet attached, and drain must lose none. Stopping is then just
``remove_reader``, after which we ``accept()`` what the kernel still holds.

A worker takes a connection off the shared queue only when it should serve it:
- capacity: a ``Threaded`` handler (the WSGI adapter: its ``capacity`` is its free app
  threads) caps the requests in flight; at the cap the worker stops accepting,
  so the kernel's queue hands new connections to an idle sibling. Idle
  keep-alive connections cost no thread and do not count.
- share: with a ``Seat`` on the ``LoadBoard``, a worker holding more than its
  share of the accepting workers' connections leaves new ones to them, and
  looks again shortly; a burst still queued after ``_QUEUE_AFTER`` counts in
  the share (each worker then takes its part of it at once); if nobody took
  them within ``_SHARE_GRACE`` (the others are busy), it takes them after all.
- hand-over: a worker whose app blocks (every thread busy, nothing finished for
  ``FULL_FOR``) passes the next request of a keep-alive connection, with the
  connection, to a sibling with a free thread (``handover.py``), or holds it
  back until one has (or its own thread is free): it never queues behind the
  blocking call while a sibling could serve it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import time
from collections.abc import Callable
from typing import Any, Final

from .balance import Seat, accept_queue_length, queue_reader
from .config import HttpConfig
from .exchange import AppHandler, Threaded
from .handover import Handover
from .protocol import HttpProtocol
from .state import EngineState, WebSocketSupport, error_log

_MAX_BACKLOG_ACCEPT: Final = 65536  # bound on the accept-what-is-queued loop of drain()
_ACCEPT_BATCH: Final = 64  # connections accepted per readable event before yielding to the loop
_ACCEPT_PAUSE: Final = 0.5  # out of file descriptors: stop accepting this long
_SHARE_SLACK: Final = 1  # connections a worker may hold over the mean before it defers
_SHARE_RECHECK: Final = 0.002  # seconds between looks at the queue while over its share
# past the grace, one connection this often (a slow sibling still gets some)
_SHARE_PACE: Final = 0.01
_SHARE_GRACE: Final = 1.0  # over its share this long with the queue still full: take them, one
# per recheck (the others may just be short of CPU; a stuck one drops off the board)
_QUEUE_AFTER: Final = 0.01  # deferring this long with a burst still queued: count the queue
_FULL_RECHECK: Final = 0.01  # at capacity, with requests queued inside or a --limit-concurrency:
_FULL_GRACE: Final = 0.05  # what nobody took within this is taken (to queue it fairly, or 503)
_HELD_RECHECK: Final = 0.002  # a blocked worker looks this often for a sibling to hand held ones

# Why accepting is paused (None: it is not). _ROOM: every thread busy, nothing queued
# inside yet: resume once a thread is free or requests start to queue (the rule changes).
_FULL: Final = "full"
_ROOM: Final = "room"
_OVER_SHARE: Final = "over share"
_NO_FDS: Final = "out of descriptors"


class HttpServer:
    """One worker's HTTP/1.1 engine over any number of listening sockets."""

    def __init__(
        self,
        handler: AppHandler,
        config: HttpConfig | None = None,
        *,
        websocket: WebSocketSupport | None = None,
        seat: Seat | None = None,
        on_tick: Callable[[float], None] | None = None,
    ) -> None:
        self.config = config or HttpConfig()
        state = self.state = EngineState(handler, self.config, websocket)
        self._sockets: list[socket.socket] = []
        # Listening sockets whose accept queue's length can be read (see within_share).
        self._queue_known: set[int] = set()
        self._accepting = False  # the readers are registered
        self._paused: str | None = None  # why accepting stopped while serving
        self._serving = False  # between start() and drain(): we want connections
        self._seat = seat
        self._over_since = 0.0  # when this spell of deferring to siblings began
        self._over_seen = 0.0  # the last time we deferred
        self._last_take = 0.0  # the last connection taken over our share
        self._on_tick_hook = on_tick
        # A handler with app threads (WSGI): its ``capacity`` is read at each change.
        self._threaded: Threaded | None = None
        if isinstance(handler, Threaded):
            self._threaded = handler
            state.load_changed = self._load_changed
            state.claims_enabled = True
        elif seat is not None:
            state.load_changed = self._publish
        self._handover: Handover | None = None  # see hand_over_with
        self._handover_watched = False
        # Requests a blocked worker holds back, reading paused (see _hand_over).
        self._held: list[tuple[HttpProtocol, bytes]] = []
        self._held_timer: asyncio.TimerHandle | None = None
        self._adopting: set[asyncio.Task[None]] = set()
        # Handed-over connections being set up. Not counted as load: their request,
        # fed in connection_made, counts from there on, and counted twice we would
        # look full to the siblings until the task's callback, after its answer.
        self._receiving: set[asyncio.Task[None]] = set()
        self._ticker: asyncio.TimerHandle | None = None
        self._second = 0
        config = self.config
        timers = [config.keep_alive, config.header_timeout]
        if config.stall_timeout:
            timers.append(config.stall_timeout)
        shortest = min(timers)
        self._tick = min(max(shortest / 4, 0.05), 0.5)
        self._drained = False
        self._stopped_taking_work = False

    # Public -------------------------------------------------------------

    @property
    def connection_count(self) -> int:
        """HTTP connections open now (WebSockets not included)."""
        return len(self.state.connections)

    @property
    def inflight(self) -> int:
        """Requests whose handler is running now."""
        return self.state.inflight

    @property
    def sockets(self) -> list[socket.socket]:
        """The listening sockets this server accepts on (as given to ``start``)."""
        return list(self._sockets)

    @property
    def total_requests(self) -> int:
        """Responses completed (including error answers) since start."""
        return self.state.total_requests

    def limit_requests(self, limit: int, reached: Callable[[], None]) -> None:
        """Call ``reached()`` once, when the ``limit``-th response completes (0: never)."""
        self.state.request_limit = limit
        self.state.on_request_limit = reached

    def hand_over_with(self, handover: Handover | None) -> None:
        """Before ``start``: pass keep-alive connections to siblings with a free app
        thread, and take theirs, through ``handover`` (see handover.py). Only with
        app threads and a seat (the board says who has a thread free), and not over
        TLS (its session cannot move to another process)."""
        usable = self._threaded is not None and self._seat is not None and self.config.ssl is None
        self._handover = handover if usable else None

    async def start(self, sockets: list[socket.socket]) -> None:
        """Begin accepting on already-bound, listening sockets."""
        loop = asyncio.get_running_loop()
        self.state.loop = loop
        self._schedule_tick()
        self._accepting = True
        self._serving = True
        for sock in sockets:
            sock.setblocking(False)
            self._sockets.append(sock)
            if self._seat is not None and queue_reader(sock):
                self._queue_known.add(sock.fileno())
            loop.add_reader(sock.fileno(), self._on_readable, sock)
        if self._handover is not None:
            self.state.hand_over = self._hand_over
            self._watch_handover(True)
        self._publish()

    def mark_draining(self) -> None:
        """Answer from now on with ``connection: close``; safe from any thread.

        For the moment a stop is decided while the loop is busy (an app running
        inline): the response in progress then already tells its client to go.
        ``drain()`` does the rest once the loop is free.
        """
        self.state.draining = True

    async def drain(
        self,
        timeout: float | None = None,
        *,
        close_sockets: bool = False,
        idle_grace: float | None = None,
    ) -> None:
        """Graceful stop: serve what was queued and in flight, then return.

        Begins with ``stop_taking_work`` (unless already called), lets in-flight
        requests finish (answered with ``connection: close``), asks WebSockets to
        close. After ``timeout`` seconds whatever is left is closed hard.
        """
        if self._drained:
            return
        self._drained = True
        self.stop_taking_work(close_sockets=close_sockets, idle_grace=idle_grace)
        state = self.state
        waits: list[asyncio.Future[None]] = [asyncio.ensure_future(self._adopted())]
        if state.websocket is not None:
            waits.append(asyncio.ensure_future(state.websocket.shutdown()))
        try:
            await asyncio.wait_for(self._wait_idle(waits), timeout)
        except asyncio.TimeoutError:
            error_log.warning("drain timed out with %d connection(s) open", len(state.connections))
            for conn in list(state.connections):
                conn.force_close()
            for task in list(state.tasks):
                task.cancel()
            for wait in waits:
                wait.cancel()
        finally:
            if self._ticker is not None:
                self._ticker.cancel()
                self._ticker = None

    def stop_taking_work(
        self, *, close_sockets: bool = False, idle_grace: float | None = None
    ) -> None:
        """The first, synchronous half of ``drain()``: no new connection after it returns.

        Stops accepting, accepts what the kernel already queued (then, with
        ``close_sockets``, closes the listening sockets at once: a connection
        queued after that last accept would otherwise wait on a socket nobody
        accepts on, and be reset when its last holder exits), closes idle
        keep-alive connections (after ``idle_grace``: see ``HttpProtocol.drain``).
        Separate so a worker can tell its master the moment it is done (a rolling
        restart's "done" waits for that). Idempotent.
        """
        if self._stopped_taking_work:
            return
        self._stopped_taking_work = True
        state = self.state
        state.draining = True
        self._serving = False
        if self._seat is not None:
            self._seat.release()
        self._stop_accepting()
        # What the kernel queued is served here, unless no app thread is left (the
        # watchdog gave up on every one): those would only get 503s, while the
        # successor or a sibling, which hold the socket too, can serve them.
        threaded = self._threaded
        take_queued = threaded is None or threaded.capacity > 0
        for sock in self._sockets:
            if take_queued:
                self._accept(sock, _MAX_BACKLOG_ACCEPT)
            if close_sockets:
                sock.close()
        if self._handover is not None:
            # Handed-over connections queued until now are ours to serve, as the
            # accept queue is: each worker takes what is queued once it passes no more.
            state.hand_over = None
            self._watch_handover(False)
            # What we held back goes on to the others if no thread is left here to
            # serve it (the watchdog gave up on them all), else it is served here.
            self._release_held(pass_all=not take_queued)
            if take_queued:
                self._take_handed_over(_MAX_BACKLOG_ACCEPT)
        state.idle_grace = idle_grace
        for conn in list(state.connections):
            conn.drain()

    # Accepting --------------------------------------------------------------

    def _on_readable(self, sock: socket.socket) -> None:
        self._accept(sock, _ACCEPT_BATCH, gated=True)

    def _accept(self, sock: socket.socket, limit: int, gated: bool = False) -> None:
        for _ in range(limit):
            if gated and not self._may_accept(sock):
                return
            try:
                conn, _addr = sock.accept()
            except (BlockingIOError, InterruptedError):
                self._over_seen = 0.0  # the queue is empty: any spell of deferring is over
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    error_log.error("accept failed (%s); pausing for %.1fs", exc, _ACCEPT_PAUSE)
                    self._pause(_NO_FDS, _ACCEPT_PAUSE)
                elif exc.errno not in (errno.ECONNABORTED, errno.EPROTO):
                    error_log.warning("accept failed: %s", exc)
                return
            conn.setblocking(False)
            self._begin_adoption(conn, b"", self._adopting)

    def _begin_adoption(
        self, conn: socket.socket, read_ahead: bytes, pending: set[asyncio.Task[None]]
    ) -> None:
        """Give ``conn`` its protocol in a task, kept in ``pending`` until it has one."""
        task = asyncio.ensure_future(self._adopt(conn, read_ahead))
        pending.add(task)
        task.add_done_callback(self._adoption_done)

    def _adoption_done(self, task: asyncio.Task[None]) -> None:
        """An accepted socket has its protocol (or failed): it no longer counts as load
        of its own, so a worker that paused for it may take the next one now (without
        this it waited for the next tick, up to half a second, while a burst queued)."""
        self._adopting.discard(task)
        self._receiving.discard(task)
        load_changed = self.state.load_changed
        if load_changed is not None:
            load_changed()

    def _may_accept(self, sock: socket.socket) -> bool:
        """Should this worker take the next queued connection now? (Else it pauses.)"""
        state = self.state
        threaded = self._threaded
        if threaded is not None and self._load() >= threaded.capacity:
            if self.config.limit_concurrency is not None:
                # A limit asks for a quick 503 rather than a wait in the queue: once no
                # sibling took the queued connections for a while, take them and answer.
                return self._defer(_FULL, _FULL_RECHECK, _FULL_GRACE, one_by_one=False)
            if state.inflight <= threaded.capacity:
                self._pause(_ROOM)  # the queue waits for a free thread (see _load_changed)
                return False
            # Requests already queue here for a thread (keep-alive clients keep every
            # thread busy): a new connection would wait for ever for a free thread, so
            # unless a sibling has room, it joins the queue here, in turn.
            seat = self._seat
            if seat is None:
                return self._defer(_FULL, _FULL_RECHECK, _FULL_GRACE, one_by_one=True)
            if seat.sibling_has_room():
                self._pause(_FULL, _FULL_RECHECK)
                return False
        seat = self._seat
        if seat is None:
            return True
        held = len(state.connections) + len(self._adopting)
        queued = 0
        if (
            state.inflight
            and self._deferring_for() >= _QUEUE_AFTER
            and sock.fileno() in self._queue_known
        ):
            # A burst outlasted the first looks while this worker serves requests
            # (looks 2-5 ms apart, each taking a few): take its part of what is
            # still queued. Not at once, nor while idle: a sibling that had no core
            # yet would lose its part (PERFORMANCE.md, "Session 7").
            queued = accept_queue_length(sock)
        if seat.within_share(held, _SHARE_SLACK, queued):
            return True
        return self._defer(
            _OVER_SHARE, _SHARE_RECHECK, _SHARE_GRACE, one_by_one=True, pace=_SHARE_PACE
        )

    def _defer(
        self, why: str, recheck: float, grace: float, *, one_by_one: bool, pace: float = 0.0
    ) -> bool:
        """Leave the queue to the siblings for now; True once it stayed full ``grace`` s
        (then, ``one_by_one``, for one connection per ``recheck``)."""
        loop = self.state.loop
        assert loop is not None
        now = loop.time()
        if not self._in_spell(now, recheck):
            self._over_since = now  # a new spell of deferring
        self._over_seen = now
        if now - self._over_since >= grace and (not one_by_one or now - self._last_take >= recheck):
            # The queue stayed full: the others are not taking them. One now, then
            # look again, so that siblings short of CPU still get their part.
            self._last_take = now
            return True
        self._pause(why, recheck)
        return False

    def _deferring_for(self) -> float:
        """Seconds this spell of leaving the queue to siblings has lasted (0: none now)."""
        loop = self.state.loop
        assert loop is not None
        now = loop.time()
        return now - self._over_since if self._in_spell(now, _SHARE_RECHECK) else 0.0

    def _in_spell(self, now: float, recheck: float) -> bool:
        """Did we defer recently enough (rechecking every ``recheck`` s) to still be in a spell?"""
        return now - self._over_seen <= 2 * recheck + 0.01

    def _load(self) -> int:
        """Requests in flight, plus new connections whose first request is on its way."""
        state = self.state
        return state.inflight + state.claims + len(self._adopting)

    def _has_room(self) -> bool:
        threaded = self._threaded
        return threaded is None or self._load() < threaded.capacity

    def _load_changed(self) -> None:
        """Requests in flight or connections changed: publish; resume if the pause is over."""
        if self._paused == _ROOM and self._room_or_queue():
            self._resume_accepting()
        if self._handover is not None and self._serving and self._has_room():
            if self._held:
                self._release_held()  # a thread is free here again: they queue here
            if not self._handover_watched:
                self._watch_handover(True)
        self._publish()

    def _room_or_queue(self) -> bool:
        """Is a thread free, or do requests queue inside? (Either ends a ``_ROOM`` pause.)

        With keep-alive clients a busy worker may never be idle for an instant; once
        its requests queue, ``_may_accept`` decides by its siblings instead, and
        without this look it stayed paused while a sibling over its share waited
        a whole ``_SHARE_GRACE`` for it (seen as connections left unaccepted ~1 s).
        """
        threaded = self._threaded
        return threaded is None or self._has_room() or self.state.inflight > threaded.capacity

    def _publish(self) -> None:
        seat = self._seat
        if seat is not None:
            state = self.state
            full = not self._has_room()
            seat.publish(len(state.connections), self._serving, full, state.total_requests)

    async def _adopt(self, conn: socket.socket, read_ahead: bytes = b"") -> None:
        loop = asyncio.get_running_loop()
        tls = self.config.ssl
        try:
            if read_ahead:  # handed over (never TLS): the protocol is fed it first
                state = self.state
                await loop.connect_accepted_socket(lambda: HttpProtocol(state, read_ahead), conn)
            elif tls is None:
                await loop.connect_accepted_socket(self._protocol, conn)
            else:  # a client that never starts its handshake is a slow request head
                await loop.connect_accepted_socket(
                    self._protocol, conn, ssl=tls, ssl_handshake_timeout=self.config.header_timeout
                )
        except Exception as exc:
            error_log.info("could not set up accepted connection: %s", exc)
            conn.close()

    async def _adopted(self) -> None:
        """Wait until every accepted socket has its protocol (drain counts them then).

        A TLS handshake still pending after ``drain_fresh_timeout`` is given up, as
        a plain connection that sent nothing is: one silent client must not hold
        the drain until the master's timeout kills the worker.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.drain_fresh_timeout
        while self._adopting or self._receiving:
            pending = [*self._adopting, *self._receiving]
            remaining = deadline - loop.time()
            if remaining <= 0:
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                return
            await asyncio.wait(pending, timeout=remaining)

    # Handing keep-alive connections over (see handover.py) ----------------------

    def _hand_over(self, conn: HttpProtocol, data: bytes) -> bool:
        """``data`` came on an idle connection. If our app blocks (no thread free, and no
        request finished for ``FULL_FOR``), it must not queue behind it: the
        connection goes to a sibling with a free thread, or waits, reading paused,
        for the first one (or for our thread). True: we took ``data``.

        A worker that keeps finishing requests keeps its connections: they wait a
        moment, and the balance stays as it is.
        """
        if self._has_room():
            return False
        seat = self._seat
        assert seat is not None
        if not seat.blocked():
            return False
        free = seat.siblings_with_room()
        if free and not self._held and self._pass_on(conn, data):
            return True
        limit = self.config.limit_concurrency
        if limit is not None and self.state.inflight + len(self._held) >= limit:
            return False  # it is answered 503 at once, as asked (held ones count too)
        conn.hold()
        self._held.append((conn, data))
        self._pass_held(free)
        return True

    def _on_held_timer(self) -> None:
        self._held_timer = None
        seat = self._seat
        assert seat is not None
        self._pass_held(seat.siblings_with_room())

    def _pass_held(self, free: int) -> None:
        """Hand held connections to the ``free`` siblings with a free thread (one
        each), oldest first, and look again shortly while some are left."""
        while free and self._held:
            conn, data = self._held[0]
            if not conn.closed:
                if not self._pass_on(conn, data):
                    break  # the queue is full: later
                free -= 1
            del self._held[0]
        if self._held and self._held_timer is None:
            loop = self.state.loop
            assert loop is not None
            self._held_timer = loop.call_later(_HELD_RECHECK, self._on_held_timer)

    def _pass_on(self, conn: HttpProtocol, data: bytes) -> bool:
        handover = self._handover
        assert handover is not None
        transport = conn.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is None or not handover.pass_on(sock.fileno(), data):
            return False
        conn.hand_over()
        return True

    def _release_held(self, pass_all: bool = False) -> None:
        """Serve the held requests here (or, ``pass_all``, queue them for the others)."""
        if self._held_timer is not None:
            self._held_timer.cancel()
            self._held_timer = None
        held, self._held = self._held, []
        for conn, data in held:
            if not conn.closed and not (pass_all and self._pass_on(conn, data)):
                conn.release(data)

    def _watch_handover(self, on: bool) -> None:
        """Take handed-over connections (``on``) or leave them to the others."""
        if on == self._handover_watched or self._handover is None:
            return
        self._handover_watched = on
        loop = self.state.loop
        assert loop is not None
        if on:
            loop.add_reader(self._handover.fileno(), self._on_handover)
        else:
            _remove_reader(loop, self._handover.fileno())

    def _on_handover(self) -> None:
        if not self._has_room():
            self._watch_handover(False)  # back on once a thread is free (_load_changed)
            return
        self._take_handed_over(1)

    def _take_handed_over(self, limit: int) -> None:
        assert self._handover is not None
        for _ in range(limit):
            got = self._handover.take()
            if got is None:
                return
            conn, read_ahead = got
            self._begin_adoption(conn, read_ahead, self._receiving)

    def _stop_accepting(self) -> None:
        if not self._accepting:
            return
        self._accepting = False
        loop = self.state.loop
        assert loop is not None
        for sock in self._sockets:
            _remove_reader(loop, sock.fileno())

    def _pause(self, why: str, seconds: float | None = None) -> None:
        """Stop taking connections: for ``seconds``, or until ``_resume_accepting``."""
        self._stop_accepting()
        self._paused = why
        if seconds is not None:
            loop = self.state.loop
            assert loop is not None
            loop.call_later(seconds, self._resume_accepting)

    def _resume_accepting(self) -> None:
        self._paused = None
        loop = self.state.loop
        assert loop is not None
        if self._accepting or not self._serving:
            return
        self._accepting = True
        for sock in self._sockets:
            loop.add_reader(sock.fileno(), self._on_readable, sock)

    # Internals ------------------------------------------------------------

    def _protocol(self) -> HttpProtocol:
        return HttpProtocol(self.state)

    async def _wait_idle(self, waits: list[asyncio.Future[None]]) -> None:
        await asyncio.gather(*waits)
        # Connections adopted during the drain arrived after the loop above.
        for conn in list(self.state.connections):
            conn.drain()
        await self.state.idle_event().wait()

    def _schedule_tick(self) -> None:
        loop = self.state.loop
        assert loop is not None
        self._ticker = loop.call_later(self._tick, self._on_tick)

    def _on_tick(self) -> None:
        state = self.state
        second = int(time.time())
        if second != self._second:
            self._second = second
            state.refresh_date()
        loop = state.loop
        assert loop is not None
        now = loop.time()
        for conn in list(state.connections):
            with contextlib.suppress(Exception):
                conn.check_timer(now)
        if self._paused == _ROOM and self._room_or_queue():
            self._resume_accepting()  # a backstop: room is normally noticed at once
        if self._seat is not None:
            self._seat.beat(accepting=self._serving)
        if self._on_tick_hook is not None:
            self._on_tick_hook(now)
        self._schedule_tick()


def _remove_reader(loop: Any, fd: int) -> None:
    """``loop.remove_reader``, its result unused. ``Any``: typeshed says it returns a
    bool, uvloop returns None, and the compiled build checks what typeshed says."""
    loop.remove_reader(fd)
