"""How busy each worker is, in memory every worker shares: so a burst is split fairly.

On a shared listening socket the first worker the kernel wakes can take every
connection queued at that moment: a burst of keep-alive connections (a load
balancer's or a client pool's) then lands mostly on one worker and stays there
for the life of those connections. So before each ``accept()`` a worker looks
at the board: if it already holds more than its share of the connections of
the workers that are accepting now, it leaves the connection to them. A burst
that outlasts the first looks of busy workers is split by what the kernel
still queues too (``accept_queue_length``, Linux), so each takes its part at once.

The board is an anonymous shared ``mmap`` made in the master before any fork,
so every worker, respawned or added later, sees the same memory. Each worker
writes only its own seat (no locks: one aligned 8-byte store per figure), and
readers add up the others' seats. Each slot id owns a few seats, because
during a rolling restart or a SIGTTOU the old worker of a slot still drains
while its successor serves; a seat whose process is gone is taken over.
"""

from __future__ import annotations

import mmap
import os
import socket
import struct
import time
from typing import Final, NamedTuple

from kamisama_server.pids import pid_alive

# pid, accepting (0/1), open connections, full since (µs, 0: not full), last beat (µs)
_FIELDS: Final = 5
_PID: Final = 0
_ACCEPTING: Final = 1
_CONNECTIONS: Final = 2
_FULL_SINCE: Final = 3
_BEAT: Final = 4
SILENT_FOR: Final = 1.5
"""A worker whose loop has not beaten this long (stuck in CPU-bound code) counts as
not accepting: its siblings must not leave connections to it."""
FULL_FOR: Final = 0.05
"""A worker full (every app thread busy) this long with no request finished meanwhile
counts as not accepting (its app blocks): shorter spells are just a fast request in
progress. A full worker that keeps finishing requests (any worker under steady load)
is re-stamped at each one, so it keeps its place in the share."""
# struct tcp_info: on a listening socket Linux reports its accept queue's length in
# tcpi_unacked, the fifth u32 after eight one-byte fields.
_TCP_INFO: Final = getattr(socket, "TCP_INFO", None)
_QUEUE_AT: Final = 24
SEATS_PER_SLOT: Final = 4
MAX_SLOTS: Final = 1024
"""Slots above this take no seat: they accept as if alone (never refused)."""


def queue_reader(sock: socket.socket) -> bool:
    """Can :func:`accept_queue_length` read this listening socket's queue? (Linux TCP.)"""
    if _TCP_INFO is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    try:
        accept_queue_length(sock)
    except OSError:
        return False
    return True


def accept_queue_length(sock: socket.socket) -> int:
    """Connections the kernel holds for this listening socket, not yet accepted."""
    assert _TCP_INFO is not None
    info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _QUEUE_AT + 4)
    queued: int = struct.unpack_from("I", info, _QUEUE_AT)[0]
    return queued


class Others(NamedTuple):
    """The other workers on the board, as the share rule weighs them."""

    taking: int
    """Accepting now: not full for a while (an app that blocks), loop not stuck."""
    taking_held: int
    """Their open connections."""
    alive: int
    """Accepting, loop not stuck, full or not."""
    alive_held: int
    """Their open connections."""


def _within_part(connections: int, workers: int, total: int, slack: int) -> bool:
    """Is ``connections`` at most one of ``workers`` equal parts of ``total``, plus ``slack``?"""
    return connections * workers <= total + slack * workers


def _full_before(now: float) -> int:
    """A worker full since before this board time (µs) counts as blocked at ``now``."""
    return int((now - FULL_FOR) * 1e6)


def _blocked(full_since: int, full_before: int) -> bool:
    """Full (with nothing finished) since before ``full_before``: its app blocks."""
    return full_since != 0 and full_since < full_before


class LoadBoard:
    """The shared figures: one seat per worker process (pid, accepting, connections)."""

    def __init__(self, slots: int = MAX_SLOTS) -> None:
        self.seats = slots * SEATS_PER_SLOT
        # Word 0: how many seats were ever used (readers look no further).
        self._memory = mmap.mmap(-1, (1 + self.seats * _FIELDS) * 8)
        self._words = memoryview(self._memory).cast("q")

    def claim(self, slot: int) -> Seat | None:
        """In a worker: take a free seat of ``slot`` (one whose process is gone)."""
        if not 1 <= slot <= self.seats // SEATS_PER_SLOT:
            return None
        words = self._words
        first = (slot - 1) * SEATS_PER_SLOT
        for index in range(first, first + SEATS_PER_SLOT):
            base = 1 + index * _FIELDS
            pid = words[base + _PID]
            if pid == 0 or not pid_alive(pid):
                words[base + _ACCEPTING] = 0
                words[base + _CONNECTIONS] = 0
                words[base + _FULL_SINCE] = 0
                words[base + _BEAT] = 0
                words[base + _PID] = os.getpid()
                if words[0] < index + 1:
                    words[0] = index + 1
                return Seat(self, base)
        return None

    def others(self, own: int) -> Others:
        """What the workers other than seat ``own`` hold, for the share rule."""
        used = self._words[0]
        figures = self._words[1 : 1 + used * _FIELDS].tolist()
        taking = taking_held = alive = alive_held = 0
        now = time.monotonic()
        full_before = _full_before(now)
        silent_before = int((now - SILENT_FOR) * 1e6)
        for base in range(0, used * _FIELDS, _FIELDS):
            if figures[base + _ACCEPTING] and base + 1 != own and figures[base + _PID]:
                if figures[base + _BEAT] < silent_before:
                    continue  # its loop is stuck: it takes nothing now
                held = figures[base + _CONNECTIONS]
                alive += 1
                alive_held += held
                if _blocked(figures[base + _FULL_SINCE], full_before):
                    continue  # busy for a while: it takes nothing now
                taking += 1
                taking_held += held
        return Others(taking, taking_held, alive, alive_held)

    def sibling_has_room(self, own: int) -> bool:
        """Does a worker other than seat ``own`` accept now with an app thread free?"""
        return self.siblings_with_room(own, 1) > 0

    def siblings_with_room(self, own: int, enough: int = MAX_SLOTS) -> int:
        """How many workers other than seat ``own`` accept now with an app thread free
        (counting stops at ``enough``)."""
        used = self._words[0]
        figures = self._words[1 : 1 + used * _FIELDS].tolist()
        silent_before = int((time.monotonic() - SILENT_FOR) * 1e6)
        found = 0
        for base in range(0, used * _FIELDS, _FIELDS):
            if (
                base + 1 != own
                and figures[base + _PID]
                and figures[base + _ACCEPTING]
                and not figures[base + _FULL_SINCE]
                and figures[base + _BEAT] >= silent_before
            ):
                found += 1
                if found >= enough:
                    break
        return found

    def sweep(self) -> None:
        """Stop counting seats of processes that died without a word (SIGKILL)."""
        words = self._words
        for index in range(words[0]):
            base = 1 + index * _FIELDS
            pid = words[base + _PID]
            # Its successor may have claimed the seat since we read the pid: clear it
            # only if it is still the dead one's (the owner's beat re-asserts it anyway).
            if (
                pid
                and words[base + _ACCEPTING]
                and not pid_alive(pid)
                and words[base + _PID] == pid
            ):
                words[base + _ACCEPTING] = 0


class Seat:
    """One worker's figures on the board; only that worker writes them.

    It keeps the figures it last wrote and writes a word only when its value
    changed: a worker publishes several times per request, mostly the same
    figures, and a store through the board's memoryview is a generic item
    assignment (a few hundred instructions, 2-3% of a hello request).
    """

    __slots__ = (
        "_accepting",
        "_base",
        "_connections",
        "_finished",
        "_full_since",
        "_words",
        "board",
    )

    def __init__(self, board: LoadBoard, base: int) -> None:
        self.board = board
        self._base = base
        self._words = board._words
        self._finished = 0  # requests finished at the last publish
        # What this seat's words hold (claim() zeroed them); -1: never written.
        self._connections = -1
        self._accepting = -1
        self._full_since = 0

    def publish(self, connections: int, accepting: bool, full: bool, finished: int = 0) -> None:
        """The worker's figures now; ``finished`` counts the requests it ever answered
        (a full worker that answered one since the last look is busy, not blocked)."""
        words, base = self._words, self._base
        if self._accepting < 0:
            self.beat()  # the first publish: the beat starts now, not at the first tick
        if connections != self._connections:
            self._connections = connections
            words[base + _CONNECTIONS] = connections
        flag = 1 if accepting else 0
        if flag != self._accepting:
            self._accepting = flag
            words[base + _ACCEPTING] = flag
        progressed = finished != self._finished
        self._finished = finished
        if full:
            if progressed or not self._full_since:
                self._full_since = int(time.monotonic() * 1e6)
                words[base + _FULL_SINCE] = self._full_since
        elif self._full_since:
            self._full_since = 0
            words[base + _FULL_SINCE] = 0

    def siblings_with_room(self) -> int:
        """How many other workers accept now with an app thread free?"""
        return self.board.siblings_with_room(self._base)

    def blocked(self) -> bool:
        """Has this worker been full for ``FULL_FOR`` with no request finished (its
        app blocks), as its siblings judge it?"""
        return _blocked(self._full_since, _full_before(time.monotonic()))

    def sibling_has_room(self) -> bool:
        """Is another worker accepting now with an app thread free?"""
        return self.board.sibling_has_room(self._base)

    def within_share(self, connections: int, slack: int, queued: int = 0) -> bool:
        """May a worker holding ``connections`` take one more?

        Yes while it holds no more than the mean of the workers taking
        connections now (itself included) plus ``slack``: the slack keeps a lone
        connection from waiting for a sibling to wake, the mean keeps a burst
        spread. Or, given what the kernel still ``queued``, while it holds no
        more than its part of that and of what every accepting worker holds,
        plus ``slack``: so each worker takes its whole part of a burst in one
        look. By the mean alone a worker leads its siblings by ``slack`` only,
        and 64 connections opened at once went 2-3 per look, the last ones
        40-80 ms late.
        """
        others = self.board.others(self._base)
        if others.taking == 0:
            return True
        if _within_part(connections, others.taking + 1, others.taking_held + connections, slack):
            return True
        if not queued:
            return False
        # The queue is split among every worker that accepts, a full one too: one
        # that is only full for a moment (a connection whose first request has not
        # come yet) would otherwise see its part taken by the others at once
        # (seen: 18/19/23/4). For one whose app blocks, the mean above still lets
        # the others take its part, a few per look.
        total = others.alive_held + connections + queued
        return _within_part(connections, others.alive + 1, total, slack)

    def beat(self, accepting: bool | None = None) -> None:
        """The worker's loop still turns (called a few times a second); ``accepting``
        re-asserts its flag, which a sibling's sweep may have cleared by mistake."""
        words, base = self._words, self._base
        words[base + _BEAT] = int(time.monotonic() * 1e6)
        if accepting is not None:
            self._accepting = 1 if accepting else 0
            words[base + _ACCEPTING] = self._accepting

    def release(self) -> None:
        """The worker stops accepting for good (drain): its figures count no more."""
        self._accepting = 0
        self._words[self._base + _ACCEPTING] = 0
